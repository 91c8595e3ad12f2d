// The Mamba-2 mixer (Dao & Gu 2024): in_proj -> (z, xBC, dt); causal conv1d + SiLU on xBC;
// split xBC -> (x, B, C); SSD over heads of size headdim with ngroups shared B/C, the D skip,
// softplus(dt + dt_bias); gated RMSNorm norm(y * silu(z)) per group; out_proj.
//
// Glossary: b batch, l sequence length, d d_model, e d_inner = expand * d, h heads = e / p,
// p headdim, g ngroups, n d_state, w d_conv.
#pragma once

#include <vector>

#include "layers/basic.h"

namespace ssmtrain {

struct Mamba2Options {
  int64_t d_model = 256;
  int64_t d_state = 64;
  int64_t d_conv = 4;
  int64_t expand = 2;
  int64_t headdim = 64;
  int64_t ngroups = 1;
  int64_t chunk_size = 256;
  double dt_min = 0.001, dt_max = 0.1, dt_init_floor = 1e-4;
  double A_init_min = 1.0, A_init_max = 16.0;  // A = -U(A_init_min, A_init_max)
  double norm_eps = 1e-5;
  int64_t n_layers = 1;  // out_proj is scaled by 1 / sqrt(n_layers) at init
  int64_t d_inner() const { return expand * d_model; }
  int64_t nheads() const { return d_inner() / headdim; }
};

class Mamba2Mixer : public Mixer {
 public:
  // Throws std::invalid_argument when d_inner is not a multiple of headdim or ngroups does
  // not divide the heads.
  Mamba2Mixer(const Mamba2Options& options, Generator& gen, DType dtype = DType::f32);
  Tensor forward(const Tensor& x, const Tensor& doc_index) const override;  // (b, l, d) -> (b, l, d)
  MixerCache new_cache(int64_t batch, int64_t max_len, DType dtype, Device device) const override;
  Tensor prefill(const Tensor& x, const MixerCache& cache) const override;
  Tensor step(const Tensor& x, const MixerCache& cache, const std::vector<int64_t>& positions) const override;

 private:
  // forward; with a cache, also the final conv window and SSM state written into it.
  Tensor run(const Tensor& x, const Tensor& doc_index, const MixerCache* cache) const;

 private:
  Mamba2Options options_;
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
