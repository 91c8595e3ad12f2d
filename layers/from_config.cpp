// See from_config.h.
#include "layers/from_config.h"

#include "configs/layout.h"

namespace ssmtrain {

ModelOptions model_options(const configs::ModelConfig& model) {
  ModelOptions o;
  o.config = model;
  o.layers = configs::resolve_layout(model).layers;
  return o;
}

ModelOptions model_options(const configs::Config& config) {
  ModelOptions o = model_options(config.model);
  o.activation_checkpointing = config.training.activation_checkpointing;
  o.deterministic = config.training.deterministic;
  return o;
}

}  // namespace ssmtrain
