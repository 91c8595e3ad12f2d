// The model a recipe describes, in layers/ terms: its `model` section as it is (the layers read
// configs::ModelConfig directly), the resolved layer layout (configs/layout.h), and the
// training switches that change how the layers compute.
#pragma once

#include "configs/config.h"
#include "layers/model.h"

namespace ssmtrain {

// `model` must be loaded (validated, auto values resolved); throws configs::ConfigError for a
// layout that does not resolve. The training switches keep their defaults.
ModelOptions model_options(const configs::ModelConfig& model);
// The same with training.activation_checkpointing and training.deterministic.
ModelOptions model_options(const configs::Config& config);

}  // namespace ssmtrain
