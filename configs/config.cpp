// Values derived from the typed recipe (configs/config.h): the Mamba mixer of a layout's M
// layers, the run's step count and gradient accumulation, and sweep variant names.
#include "configs/config.h"

#include <yaml-cpp/yaml.h>

namespace ssmtrain::configs {

Mixer ModelConfig::mamba_mixer() const {
  switch (ssm) {
    case Ssm::mamba1: return Mixer::mamba1;
    case Ssm::mamba2: return Mixer::mamba2;
    case Ssm::from_family: break;
  }
  return family == Family::mamba2 ? Mixer::mamba2 : Mixer::mamba1;
}

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
