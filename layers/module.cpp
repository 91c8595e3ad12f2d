// See module.h.
#include "layers/module.h"

#include "autograd/node.h"
#include "autograd/ops.h"

namespace ssmtrain {

std::vector<NamedParameter> Module::named_parameters(const std::string& prefix) {
  std::vector<NamedParameter> out;
  for (Parameter& p : parameters_) out.push_back({prefix + p.name, &p.value, p.weight_decay});
  for (auto& [name, child] : children_) {
    std::vector<NamedParameter> sub = child->named_parameters(prefix + name + ".");
    out.insert(out.end(), sub.begin(), sub.end());
  }
  return out;
}

int64_t Module::num_parameters() {
  int64_t n = 0;
  for (const NamedParameter& p : named_parameters()) n += p.value->numel();
  return n;
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  for (const NamedParameter& p : named_parameters()) {
    if (p.value->device() == device) continue;
    Tensor moved = p.value->to(device).detach();
    moved.set_requires_grad();
    *p.value = moved;
  }
}

void Module::zero_grad() {
  for (const NamedParameter& p : named_parameters()) p.value->zero_grad();
}

Tensor& Module::register_parameter(const std::string& name, Tensor value, bool weight_decay) {
  value.set_requires_grad();
  parameters_.push_back({name, std::move(value), weight_decay});
  return parameters_.back().value;
}

void AuxLosses::add(const Tensor& loss) { total = total.defined() ? ssmtrain::add(total, loss) : loss; }

Tensor weight_for(const Tensor& weight, const Tensor& x) {
  return weight.dtype() == x.dtype() ? weight : cast(weight, x.dtype());
}

MixerCache MixerCache::row(int64_t i) const {
  auto at = [i](const Tensor& t) { return t.defined() ? narrow(t, 0, i, 1) : Tensor(); };
  return {at(conv), at(ssm), at(k), at(v)};
}

}  // namespace ssmtrain
