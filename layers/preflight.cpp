// See preflight.h. The shapes come from the derived sizes of configs::ModelConfig the layers
// are built with, so the sizes checked are the sizes the kernels will see.
#include "layers/preflight.h"

#include <fmt/core.h>

#include <map>
#include <string>

#include "autograd/device.h"
#include "configs/layout.h"
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
  const configs::ModelConfig& m = recipe.config.model;
  const configs::Layout layout = configs::resolve_layout(m);
  if (layout.count(configs::Mixer::mamba2) > 0) {
    kernels::SsdShape s;
    s.n_heads = m.mamba2_n_heads();
    s.head_dim = m.mamba2.head_dim;
    s.d_state = m.mamba2.d_state;
    s.ngroups = m.mamba2.ngroups;
    s.chunk_size = m.mamba2.chunk_size;
    check(recipe, kernels::ssd_support(s, cuda),
          {{"head_dim", "model.mamba2.head_dim"}, {"d_state", "model.mamba2.d_state"},
           {"ngroups", "model.mamba2.ngroups"}, {"chunk_size", "model.mamba2.chunk_size"}},
          {{"head_dim", s.head_dim}, {"d_state", s.d_state}, {"ngroups", s.ngroups}, {"chunk_size", s.chunk_size}}, cuda);
    kernels::Conv1dShape c;
    c.width = m.mamba2.d_conv;
    check(recipe, kernels::conv1d_support(c, cuda), {{"width", "model.mamba2.d_conv"}}, {{"width", c.width}}, cuda);
  }
  if (layout.count(configs::Mixer::mamba1) > 0) {
    kernels::ScanShape s;
    s.dim = m.mamba1_d_inner();
    s.d_state = m.mamba1.d_state;
    check(recipe, kernels::selective_scan_support(s, cuda), {{"d_state", "model.mamba1.d_state"}},
          {{"d_state", s.d_state}}, cuda);
    kernels::Conv1dShape c;
    c.width = m.mamba1.d_conv;
    check(recipe, kernels::conv1d_support(c, cuda), {{"width", "model.mamba1.d_conv"}}, {{"width", c.width}}, cuda);
  }
  if (layout.count(configs::Mixer::attention) > 0) {
    kernels::AttentionShape s;
    s.n_heads = m.attention.n_heads;
    s.n_kv_heads = m.attention_n_kv_heads();
    s.head_dim = m.attention_head_dim();
    check(recipe, kernels::attention_support(s, cuda),
          {{"head_dim", "model.attention.head_dim"}, {"n_kv_heads", "model.attention.n_kv_heads"}},
          {{"head_dim", s.head_dim}, {"n_kv_heads", s.n_kv_heads}}, cuda);
  }
  if (layout.count(configs::Ffn::moe) > 0) {
    kernels::MoeExpertShape s;
    s.experts = m.moe.n_experts;
    s.d_model = m.d_model;
    s.d_ff = m.moe_d_ff();
    check(recipe, kernels::moe_support(s, cuda), {{"experts", "model.moe.n_experts"}}, {{"experts", s.experts}}, cuda);
  }
}

MemoryEstimate estimate_training_memory(const configs::Config& config, bool bf16) {
  const configs::ModelConfig& o = config.model;
  const ParameterCounts counts = parameter_counts(model_options(o));
  MemoryEstimate m;
  m.state = uint64_t(counts.total) * (16 + (bf16 ? 2 : 0));
  const double tokens = double(config.training.micro_batch) * double(config.training.seq_len);
  const double bytes = bf16 ? 2 : 4;
  double per_token = 0;  // elements saved for the backward per token
  for (const configs::LayerSpec& k : configs::resolve_layout(o).layers) {
    per_token += 4.0 * double(o.d_model);  // norms and residual stream
    if (k.mixer == configs::Mixer::mamba1) per_token += 8.0 * double(o.mamba1_d_inner());
    if (k.mixer == configs::Mixer::mamba2)
      per_token += 6.0 * double(o.mamba2_d_inner()) + 4.0 * double(o.mamba2.ngroups * o.mamba2.d_state);
    if (k.mixer == configs::Mixer::attention) per_token += 6.0 * double(o.d_model);
    if (k.ffn == configs::Ffn::mlp) per_token += 3.0 * double(o.mlp_d_ff());
    if (k.ffn == configs::Ffn::moe) per_token += 3.0 * double(o.moe.top_k * o.moe_d_ff()) + double(o.moe.n_experts);
  }
  m.activations = uint64_t(tokens * (per_token * bytes + double(o.vocab_size) * 8.0));
  return m;
}

std::string check_memory_fits(const configs::Recipe& recipe, bool cuda) {
  const bool bf16 = cuda && recipe.config.training.precision != configs::Precision::fp32;
  const MemoryEstimate need = estimate_training_memory(recipe.config, bf16);
  const MemoryInfo have = cuda ? cuda_memory_info(0) : host_memory_info();
  if (have.free == 0) return "";  // unknown: nothing to compare with
  const std::string where = cuda ? fmt::format("the GPU ({})", cuda_device_name(0)) : std::string("this machine");
  const auto gib = [](uint64_t b) { return double(b) / double(1ull << 30); };
  const int64_t params = parameter_counts(model_options(recipe.config.model)).total;
  if (need.state > have.free) {
    throw configs::ConfigError(
        recipe.locate("model.d_model"), "model.d_model",
        fmt::format("the model's {} parameters need {:.1f} GiB for weights, gradients and AdamW state ({} bytes "
                    "each) before any activation, but {} has {:.1f} GiB free: make the model smaller",
                    params, gib(need.state), bf16 ? 18 : 16, where, gib(have.free)));
  }
  if (need.state + need.activations > have.free) {
    return fmt::format("warning: this run may not fit: {:.1f} GiB of training state and an estimated {:.1f} GiB of "
                       "activations per micro-batch against {:.1f} GiB free on {} (lower training.micro_batch or "
                       "set training.activation_checkpointing: true)",
                       gib(need.state), gib(need.activations), gib(have.free), where);
  }
  return "";
}

}  // namespace ssmtrain
