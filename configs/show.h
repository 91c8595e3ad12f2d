// What `ssmtrain config show RECIPE` prints (DESIGN.md section 4): the resolved config as YAML,
// then, as YAML comments so the text still loads as a recipe, the layer layout, the derived
// sizes, and the parameter count and FLOPs per token, which the caller computes with layers/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "configs/config.h"

namespace ssmtrain::configs {

// The model's size, from layers/ (configs/ cannot build a model).
struct ModelCost {
  int64_t parameters = 0;         // all parameters
  int64_t active_parameters = 0;  // those one token uses (fewer than all with MoE)
  double flops_per_token = 0;     // training (forward + backward) FLOPs per token
};

// `config` must be loaded (validated and resolved). Without `cost`, that line says where the
// numbers come from.
std::string render_config_show(const Config& config,
                               const std::optional<ModelCost>& cost = std::nullopt);

}  // namespace ssmtrain::configs
