// See from_config.h.
#include "layers/from_config.h"

#include "configs/layout.h"

namespace ssmtrain {
namespace {
MixerKind mixer_kind(configs::Mixer m) {
  switch (m) {
    case configs::Mixer::mamba1: return MixerKind::mamba1;
    case configs::Mixer::mamba2: return MixerKind::mamba2;
    case configs::Mixer::attention: return MixerKind::attention;
  }
  return MixerKind::mamba2;
}
FfnKind ffn_kind(configs::Ffn f) {
  switch (f) {
    case configs::Ffn::none: return FfnKind::none;
    case configs::Ffn::mlp: return FfnKind::mlp;
    case configs::Ffn::moe: return FfnKind::moe;
  }
  return FfnKind::none;
}
}  // namespace

ModelOptions model_options(const configs::ModelConfig& m) {
  ModelOptions o;
  o.vocab_size = m.vocab_size;
  o.d_model = m.d_model;
  o.n_layers = m.n_layers;
  o.tie_embeddings = m.tie_embeddings;
  o.norm_eps = m.norm_eps;
  o.mixer = mixer_kind(m.mamba_mixer());
  for (const configs::LayerSpec& layer : configs::resolve_layout(m).layers)
    o.layers.push_back({mixer_kind(layer.mixer), ffn_kind(layer.ffn)});

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

  o.attention.n_heads = m.attention.n_heads;
  o.attention.n_kv_heads = m.attention.n_kv_heads;
  o.attention.head_dim = m.attention.head_dim;
  o.attention.rope = m.attention.rope;
  o.attention.rope_theta = m.attention.rope_theta;
  o.mlp.d_ff = swiglu_hidden(m.d_model, m.mlp.d_ff, m.mlp.multiplier);
  o.moe.n_experts = m.moe.n_experts;
  o.moe.top_k = m.moe.top_k;
  o.moe.d_ff = m.moe.d_ff_expert > 0 ? m.moe.d_ff_expert : o.mlp.d_ff;
  o.moe.aux_loss_coef = m.moe.aux_loss_coef;
  o.moe.z_loss_coef = m.moe.z_loss_coef;
  return o;
}

}  // namespace ssmtrain
