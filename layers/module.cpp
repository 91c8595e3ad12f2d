// See module.h.
#include "layers/module.h"

#include <map>

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

struct WeightCastCache::Entries {
  // (parameter, dtype) -> (the parameter, kept so its address is not reused; its cast)
  std::map<std::pair<const TensorImpl*, DType>, std::pair<Tensor, Tensor>> casts;
};

namespace {
thread_local WeightCastCache::Entries* active_casts = nullptr;
}  // namespace

WeightCastCache::WeightCastCache() {
  if (!active_casts) {
    entries_ = std::make_unique<Entries>();
    active_casts = entries_.get();
  }
}
WeightCastCache::~WeightCastCache() {
  if (entries_) active_casts = nullptr;
}
size_t WeightCastCache::size() const { return active_casts ? active_casts->casts.size() : 0; }

Tensor weight_for(const Tensor& weight, const Tensor& x) {
  if (weight.dtype() == x.dtype()) return weight;
  if (!active_casts || grad_enabled()) return cast(weight, x.dtype());
  auto [it, fresh] = active_casts->casts.try_emplace({weight.impl(), x.dtype()});
  if (fresh) it->second = {weight, cast(weight, x.dtype())};
  return it->second.second;
}

MixerCache MixerCache::row(int64_t i) const {
  auto at = [i](const Tensor& t) { return t.defined() ? narrow(t, 0, i, 1) : Tensor(); };
  return {at(conv), at(ssm), at(k), at(v)};
}

}  // namespace ssmtrain
