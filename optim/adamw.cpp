// See adamw.h.
#include "optim/adamw.h"

#include <cmath>
#include <stdexcept>

#include "autograd/node.h"
#include "autograd/ops.h"

namespace ssmtrain {

AdamW::AdamW(std::vector<NamedParameter> parameters, AdamWOptions options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const NamedParameter& p : parameters_) {
    if (state_.count(p.name)) throw std::invalid_argument("AdamW: parameter " + p.name + " given twice");
    const Tensor& v = *p.value;
    state_[p.name] = {Tensor::zeros(v.shape(), v.dtype(), v.device()), Tensor::zeros(v.shape(), v.dtype(), v.device())};
  }
}

void AdamW::step(double lr) {
  NoGradGuard no_grad;
  ++step_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double correction1 = 1.0 - std::pow(b1, double(step_));
  const double correction2 = 1.0 - std::pow(b2, double(step_));
  for (const NamedParameter& p : parameters_) {
    const Tensor grad = p.value->grad();
    if (!grad.defined()) continue;
    Moments& m = state_.at(p.name);
    const Tensor g = grad.dtype() == p.value->dtype() ? grad : cast(grad, p.value->dtype());
    // m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    copy_into(m.exp_avg, add(mul(m.exp_avg, b1), mul(g, 1.0 - b1)));
    copy_into(m.exp_avg_sq, add(mul(m.exp_avg_sq, b2), mul(square(g), 1.0 - b2)));
    // p -= lr (m / c1) / (sqrt(v / c2) + eps) + lr wd p
    const Tensor denom = add(sqrt(mul(m.exp_avg_sq, 1.0 / correction2)), options_.eps);
    Tensor update = div(mul(m.exp_avg, 1.0 / correction1), denom);
    if (p.weight_decay && options_.weight_decay != 0.0) update = add(update, mul(*p.value, options_.weight_decay));
    add_(*p.value, mul(update, -lr));
  }
}

double global_grad_norm(const std::vector<NamedParameter>& parameters) {
  NoGradGuard no_grad;
  double total = 0.0;
  for (const NamedParameter& p : parameters) {
    const Tensor g = p.value->grad();
    if (g.defined()) total += sum(square(g.dtype() == DType::f64 ? g : cast(g, DType::f32))).item();
  }
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<NamedParameter>& parameters, double max_norm) {
  const double norm = global_grad_norm(parameters);
  if (max_norm > 0 && norm > max_norm) {
    NoGradGuard no_grad;
    const double scale = max_norm / (norm + 1e-6);
    for (const NamedParameter& p : parameters) {
      const Tensor g = p.value->grad();
      if (g.defined()) copy_into(g, mul(g, scale));
    }
  }
  return norm;
}

}  // namespace ssmtrain
