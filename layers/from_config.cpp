// See from_config.h.
#include "layers/from_config.h"

#include "configs/layout.h"

namespace ssmtrain {

std::optional<ModelOptions> model_options(const configs::ModelConfig& m) {
  const configs::Layout layout = configs::resolve_layout(m);
  for (const auto& layer : layout.layers)
    if (layer.mixer == configs::Mixer::attention || layer.ffn != configs::Ffn::none) return std::nullopt;
  ModelOptions o;
  o.vocab_size = m.vocab_size;
  o.d_model = m.d_model;
  o.n_layers = m.n_layers;
  o.tie_embeddings = m.tie_embeddings;
  o.norm_eps = m.norm_eps;
  o.mixer = m.mamba_mixer() == configs::Mixer::mamba1 ? MixerKind::mamba1 : MixerKind::mamba2;
  o.mamba1.d_state = m.mamba1.d_state;
  o.mamba1.d_conv = m.mamba1.d_conv;
  o.mamba1.expand = m.mamba1.expand;
  o.mamba1.dt_rank = m.mamba1.dt_rank;
  o.mamba1.dt_min = m.mamba1.dt_min;
  o.mamba1.dt_max = m.mamba1.dt_max;
  o.mamba1.dt_init_floor = m.mamba1.dt_init_floor;
  o.mamba1.dt_bc_norm = m.mamba1.dt_bc_norm;
  o.mamba2.d_state = m.mamba2.d_state;
  o.mamba2.d_conv = m.mamba2.d_conv;
  o.mamba2.expand = m.mamba2.expand;
  o.mamba2.headdim = m.mamba2.headdim;
  o.mamba2.ngroups = m.mamba2.ngroups;
  o.mamba2.chunk_size = m.mamba2.chunk_size;
  o.mamba2.dt_min = m.mamba2.dt_min;
  o.mamba2.dt_max = m.mamba2.dt_max;
  o.mamba2.dt_init_floor = m.mamba2.dt_init_floor;
  o.mamba2.norm_eps = m.norm_eps;
  return o;
}

}  // namespace ssmtrain
