// See preflight.h. The shapes are built from the same ModelOptions the layers are built from,
// so the sizes checked are the sizes the kernels will see.
#include "layers/preflight.h"

#include <fmt/core.h>

#include <map>
#include <string>

#include "kernels/support.h"
#include "layers/from_config.h"

namespace ssmtrain {
namespace {

[[noreturn]] void reject(const configs::Recipe& recipe, const std::string& key, const std::string& value,
                         const kernels::Unsupported& why, bool cuda) {
  throw configs::ConfigError(recipe.locate(key), key,
                             fmt::format("{} is not supported by the {} kernels: it must be {}", value,
                                         cuda ? "GPU" : "CPU", why.allowed));
}

// The recipe key of each shape field, per kernel family.
void check(const configs::Recipe& recipe, const kernels::Unsupported& why, const std::map<std::string, std::string>& keys,
           const std::map<std::string, int64_t>& values, bool cuda) {
  if (!why) return;
  const auto key = keys.find(why.field);
  const std::string name = key == keys.end() ? why.field : key->second;
  const auto value = values.find(why.field);
  reject(recipe, name, value == values.end() ? "this value" : std::to_string(value->second), why, cuda);
}

}  // namespace

void check_kernels_support(const configs::Recipe& recipe, bool cuda) {
  const ModelOptions o = model_options(recipe.config.model);
  bool mamba1 = false, mamba2 = false, attention = false, moe = false;
  for (const LayerKind& layer : o.layers) {
    mamba1 = mamba1 || layer.mixer == MixerKind::mamba1;
    mamba2 = mamba2 || layer.mixer == MixerKind::mamba2;
    attention = attention || layer.mixer == MixerKind::attention;
    moe = moe || layer.ffn == FfnKind::moe;
  }
  if (o.layers.empty()) {
    mamba1 = o.mixer == MixerKind::mamba1;
    mamba2 = o.mixer == MixerKind::mamba2;
    attention = o.mixer == MixerKind::attention;
  }
  if (mamba2) {
    const Mamba2Options& m = o.mamba2;
    kernels::SsdShape s;
    s.nheads = m.headdim > 0 ? m.expand * o.d_model / m.headdim : 0;
    s.headdim = m.headdim;
    s.dstate = m.d_state;
    s.ngroups = m.ngroups;
    s.chunk_size = m.chunk_size;
    check(recipe, kernels::ssd_support(s, cuda),
          {{"headdim", "model.mamba2.headdim"}, {"dstate", "model.mamba2.d_state"},
           {"ngroups", "model.mamba2.ngroups"}, {"chunk_size", "model.mamba2.chunk_size"}},
          {{"headdim", s.headdim}, {"dstate", s.dstate}, {"ngroups", s.ngroups}, {"chunk_size", s.chunk_size}}, cuda);
    kernels::Conv1dShape c;
    c.width = m.d_conv;
    check(recipe, kernels::conv1d_support(c, cuda), {{"width", "model.mamba2.d_conv"}}, {{"width", c.width}}, cuda);
  }
  if (mamba1) {
    const Mamba1Options& m = o.mamba1;
    kernels::ScanShape s;
    s.dim = m.expand * o.d_model;
    s.dstate = m.d_state;
    check(recipe, kernels::selective_scan_support(s, cuda), {{"dstate", "model.mamba1.d_state"}},
          {{"dstate", s.dstate}}, cuda);
    kernels::Conv1dShape c;
    c.width = m.d_conv;
    check(recipe, kernels::conv1d_support(c, cuda), {{"width", "model.mamba1.d_conv"}}, {{"width", c.width}}, cuda);
  }
  if (attention) {
    AttentionOptions a = o.attention;
    a.d_model = o.d_model;
    kernels::AttentionShape s;
    s.heads = a.n_heads;
    s.kv_heads = a.kv_heads();
    s.head_dim = a.dim_per_head();
    check(recipe, kernels::attention_support(s, cuda),
          {{"head_dim", "model.attention.head_dim"}, {"kv_heads", "model.attention.n_kv_heads"}},
          {{"head_dim", s.head_dim}, {"kv_heads", s.kv_heads}}, cuda);
  }
  if (moe) {
    kernels::MoeExpertShape s;
    s.experts = o.moe.n_experts;
    s.d_model = o.d_model;
    s.d_ff = o.moe.d_ff;
    check(recipe, kernels::moe_support(s, cuda), {{"experts", "model.moe.n_experts"}}, {{"experts", s.experts}}, cuda);
  }
}

}  // namespace ssmtrain
