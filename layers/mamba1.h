// The Mamba-1 mixer (Gu & Dao 2023): in_proj -> (x, z); causal depthwise conv1d + SiLU on x;
// x_proj -> (dt, B, C); dt_proj; selective scan with softplus(dt + dt_bias), the D skip and
// the SiLU(z) gate; out_proj. Optional RMSNorms on dt, B and C (the Jamba variant).
//
// Glossary: b batch, l sequence length, d d_model, e d_inner = expand * d, n d_state,
// r dt_rank, w d_conv.
#pragma once

#include <memory>
#include <vector>

#include "configs/config.h"
#include "layers/basic.h"

namespace ssmtrain {

class Mamba1Mixer : public Mixer {
 public:
  // Built from model.mamba1, d_model, n_layers (out_proj is scaled by 1 / sqrt(n_layers) at
  // init) and the derived sizes model.mamba1_d_inner() and mamba1_dt_rank().
  Mamba1Mixer(const configs::ModelConfig& model, Generator& gen, DType dtype = DType::f32);
  // x (b, l, d) -> (b, l, d); doc_index (b, l) i32 or undefined resets the state and the
  // convolution window at document starts.
  Tensor forward(const Tensor& x, const Tensor& doc_index) const override;
  MixerCache new_cache(int64_t batch, int64_t max_len, DType dtype, Device device) const override;
  Tensor prefill(const Tensor& x, const MixerCache& cache) const override;
  Tensor step(const Tensor& x, const MixerCache& cache, const std::vector<int64_t>& positions) const override;

 private:
  // forward; with a cache, also the final conv window and SSM state written into it.
  Tensor run(const Tensor& x, const Tensor& doc_index, const MixerCache* cache) const;

 private:
  configs::ModelConfig model_;
  Linear& in_proj_;   // d -> 2e
  Tensor& conv_weight_;  // (e, w)
  Tensor& conv_bias_;    // (e)
  Linear& x_proj_;    // e -> r + 2n
  Linear& dt_proj_;   // r -> e, its bias is dt_bias (inverse softplus of dt in [dt_min, dt_max])
  Tensor& A_log_;     // (e, n): A = -exp(A_log), S4D-real init log(1..n)
  Tensor& D_;         // (e)
  Linear& out_proj_;  // e -> d
  RMSNorm* dt_norm_ = nullptr;
  RMSNorm* B_norm_ = nullptr;
  RMSNorm* C_norm_ = nullptr;
};

}  // namespace ssmtrain
