// The model a recipe's `model` section describes, in layers/ terms.
#pragma once

#include <optional>

#include "configs/config.h"
#include "layers/model.h"

namespace ssmtrain {

// ModelOptions for a pure Mamba-1 or Mamba-2 stack; nullopt for layouts with attention or
// MoE layers, which layers/ does not build yet.
std::optional<ModelOptions> model_options(const configs::ModelConfig& model);

}  // namespace ssmtrain
