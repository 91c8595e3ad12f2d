// Values derived from the typed recipe (configs/config.h): the Mamba mixer of a layout's M
// layers, the layers' derived sizes, the run's step count and gradient accumulation, and sweep
// variant names.
#include "configs/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>

namespace ssmtrain::configs {

Mixer ModelConfig::mamba_mixer() const {
  switch (ssm) {
    case Ssm::mamba1: return Mixer::mamba1;
    case Ssm::mamba2: return Mixer::mamba2;
    case Ssm::from_family: break;
  }
  return family == Family::mamba2 ? Mixer::mamba2 : Mixer::mamba1;
}

int64_t ModelConfig::mamba1_dt_rank() const {
  return mamba1.dt_rank > 0 ? mamba1.dt_rank : (d_model + 15) / 16;
}

int64_t ModelConfig::mamba2_n_heads() const {
  return mamba2.head_dim > 0 ? mamba2_d_inner() / mamba2.head_dim : 0;
}

int64_t ModelConfig::attention_n_kv_heads() const {
  return attention.n_kv_heads > 0 ? attention.n_kv_heads : attention.n_heads;
}

int64_t ModelConfig::attention_head_dim() const {
  if (attention.head_dim > 0) return attention.head_dim;
  return attention.n_heads > 0 && d_model % attention.n_heads == 0 ? d_model / attention.n_heads : 0;
}

int64_t ModelConfig::mlp_d_ff() const {
  if (mlp.d_ff > 0) return mlp.d_ff;
  const auto raw = static_cast<int64_t>(std::ceil(mlp.multiplier * static_cast<double>(d_model)));
  return (raw + 63) / 64 * 64;
}

int64_t ModelConfig::moe_d_ff() const { return moe.d_ff_expert > 0 ? moe.d_ff_expert : mlp_d_ff(); }

int64_t TrainingConfig::total_steps() const {
  if (max_steps > 0) return max_steps;
  if (global_batch_tokens <= 0) return 0;
  return (token_budget + global_batch_tokens - 1) / global_batch_tokens;
}

int64_t TrainingConfig::grad_accum(int64_t world_size) const {
  const int64_t tokens_per_round = micro_batch * seq_len * world_size;
  if (tokens_per_round <= 0 || global_batch_tokens % tokens_per_round != 0) return 0;
  return global_batch_tokens / tokens_per_round;
}

std::string sweep_variant_name(const SweepVariant& variant) {
  // A value as the recipe meant it: the text of a scalar, else its flow YAML.
  const auto value_text = [](const std::string& flow_yaml) {
    const YAML::Node value = YAML::Load(flow_yaml);
    return value.IsScalar() ? value.Scalar() : flow_yaml;
  };
  std::string name;
  for (const auto& [key, value] : variant.overrides) {
    if (key == "run.name") return value_text(value);
    if (!name.empty()) name += ',';
    name.append(key, key.rfind('.') + 1);  // the last part of the key path
    name += '=';
    name += value_text(value);
  }
  return name.empty() ? "base" : name;
}

}  // namespace ssmtrain::configs
