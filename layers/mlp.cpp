// See mlp.h.
#include "layers/mlp.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "autograd/swiglu_ops.h"
#include "autograd/moe_ops.h"
#include "autograd/ops.h"

namespace ssmtrain {
namespace {
double depth_scale(int64_t n_layers) { return 1.0 / std::sqrt(double(std::max<int64_t>(n_layers, 1))); }

const configs::ModelConfig& checked(const configs::ModelConfig& model) {
  const configs::MoeConfig& o = model.moe;
  if (o.n_experts < 1 || o.n_experts > 64)
    throw std::invalid_argument("moe: n_experts must be in 1..64, got " + std::to_string(o.n_experts));
  if (o.top_k < 1 || o.top_k > std::min<int64_t>(o.n_experts, 8))
    throw std::invalid_argument("moe: top_k must be in 1..min(n_experts, 8), got " + std::to_string(o.top_k));
  return model;
}
}  // namespace

Mlp::Mlp(const configs::ModelConfig& model, Generator& gen, DType dtype)
    : gate_up_(register_module("gate_up", std::make_unique<Linear>(model.d_model, 2 * model.mlp_d_ff(), false, gen, dtype))),
      down_(register_module("down", std::make_unique<Linear>(model.mlp_d_ff(), model.d_model, false, gen, dtype))) {
  copy_into(down_.weight, mul(down_.weight, depth_scale(model.n_layers)));
}

Tensor Mlp::forward(const Tensor& x, AuxLosses*) const {
  return down_.forward(swiglu(gate_up_.forward(x)));  // (b, l, 2f) -> (b, l, f) -> (b, l, d)
}

Moe::Moe(const configs::ModelConfig& model, Generator& gen, DType dtype)
    : model_(checked(model)),
      // The router and the experts' projections draw like nn.Linear: U(+-1/sqrt(fan_in)).
      router_(register_parameter("router", uniform_init({model.moe.n_experts, model.d_model}, 1.0 / std::sqrt(double(model.d_model)), gen, dtype))),
      w_gate_(register_parameter("w_gate", uniform_init({model.moe.n_experts, model.moe_d_ff(), model.d_model}, 1.0 / std::sqrt(double(model.d_model)), gen, dtype))),
      w_up_(register_parameter("w_up", uniform_init({model.moe.n_experts, model.moe_d_ff(), model.d_model}, 1.0 / std::sqrt(double(model.d_model)), gen, dtype))),
      w_down_(register_parameter("w_down", uniform_init({model.moe.n_experts, model.d_model, model.moe_d_ff()},
                                                        depth_scale(model.n_layers) / std::sqrt(double(model.moe_d_ff())), gen, dtype))) {}

Tensor Moe::forward(const Tensor& x, AuxLosses* aux) const {
  const Shape shape = x.shape();
  const Tensor tokens = reshape(x, {-1, model_.d_model});  // (t, d)
  MoeOptions moe;
  moe.top_k = model_.moe.top_k;
  moe.normalize_topk = false;  // Jamba's routing weights
  const MoeOutputs r = moe_swiglu(tokens, weight_for(router_, tokens), weight_for(w_gate_, tokens),
                                  weight_for(w_up_, tokens), weight_for(w_down_, tokens), moe);
  if (aux) {
    aux->add(add(mul(r.aux_loss, model_.moe.aux_loss_coef), mul(r.z_loss, model_.moe.z_loss_coef)));
    aux->expert_counts.push_back(r.expert_counts);
  }
  return reshape(r.out, shape);  // (b, l, d)
}

int64_t Moe::inactive_parameters() const {
  return (model_.moe.n_experts - model_.moe.top_k) * 3 * model_.d_model * model_.moe_d_ff();
}

}  // namespace ssmtrain
