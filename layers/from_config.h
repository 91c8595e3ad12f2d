// The model a recipe's `model` section describes, in layers/ terms: the resolved layer layout
// (configs/layout.h) and every kind's settings.
#pragma once

#include "configs/config.h"
#include "layers/model.h"

namespace ssmtrain {

// `model` must be loaded (validated, auto values resolved); throws configs::ConfigError for a
// layout that does not resolve.
ModelOptions model_options(const configs::ModelConfig& model);

}  // namespace ssmtrain
