// The Mamba-2 mixer (Dao & Gu 2024): in_proj -> (z, xBC, dt); causal conv1d + SiLU on xBC;
// split xBC -> (x, B, C); SSD over heads of size head_dim with ngroups shared B/C, the D skip,
// softplus(dt + dt_bias); gated RMSNorm norm(y * silu(z)) per group; out_proj.
//
// Glossary: b batch, l sequence length, d d_model, e d_inner = expand * d, h heads = e / p,
// p head_dim, g ngroups, n d_state, w d_conv.
#pragma once

#include <vector>

#include "configs/config.h"
#include "layers/basic.h"

namespace ssmtrain {

class Mamba2Mixer : public Mixer {
 public:
  // Built from model.mamba2, d_model, norm_eps (the gated RMSNorm), n_layers (out_proj is
  // scaled by 1 / sqrt(n_layers) at init) and the derived sizes model.mamba2_d_inner(),
  // mamba2_n_heads() and mamba2_conv_dim(). Throws std::invalid_argument when d_inner is not a
  // multiple of head_dim or ngroups does not divide the heads.
  Mamba2Mixer(const configs::ModelConfig& model, Generator& gen, DType dtype = DType::f32);
  Tensor forward(const Tensor& x, const Tensor& doc_index) const override;  // (b, l, d) -> (b, l, d)
  MixerCache new_cache(int64_t batch, int64_t max_len, DType dtype, Device device) const override;
  Tensor prefill(const Tensor& x, const MixerCache& cache) const override;
  Tensor step(const Tensor& x, const MixerCache& cache, const std::vector<int64_t>& positions) const override;

 private:
  // forward; with a cache, also the final conv window and SSM state written into it.
  Tensor run(const Tensor& x, const Tensor& doc_index, const MixerCache* cache) const;

 private:
  configs::ModelConfig model_;
  Linear& in_proj_;      // d -> 2e + 2gn + h
  Tensor& conv_weight_;  // (e + 2gn, w)
  Tensor& conv_bias_;    // (e + 2gn)
  Tensor& dt_bias_;      // (h)
  Tensor& A_log_;        // (h)
  Tensor& D_;            // (h)
  Tensor& norm_weight_;  // (e)
  Linear& out_proj_;     // e -> d
};

}  // namespace ssmtrain
