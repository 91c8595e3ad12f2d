// The feed-forwards of a block (DESIGN.md section 3): the SwiGLU MLP, and the mixture of
// experts (router softmax, top-k, dropless dispatch to SwiGLU experts) with its
// load-balancing and router z-losses.
//
// Glossary: b batch, l sequence length, t = b l tokens, d d_model, f hidden width,
// e experts, k experts per token.
#pragma once

#include "layers/basic.h"

namespace ssmtrain {

// d_ff rounded: multiplier * d_model up to a multiple of 64 when d_ff is not given.
int64_t swiglu_hidden(int64_t d_model, int64_t d_ff, double multiplier);

struct MlpOptions {
  int64_t d_model = 256;
  int64_t d_ff = 1024;
  int64_t n_layers = 1;  // down is scaled by 1 / sqrt(n_layers) at init
};

// down(silu(gate x) * up x), with gate and up packed in one projection (d -> 2f).
class Mlp : public FeedForward {
 public:
  Mlp(const MlpOptions& options, Generator& gen, DType dtype = DType::f32);
  Tensor forward(const Tensor& x, AuxLosses* aux) const override;  // (b, l, d) -> (b, l, d)

 private:
  Linear& gate_up_;  // d -> 2f: [gate; up]
  Linear& down_;     // f -> d
};

struct MoeLayerOptions {
  int64_t d_model = 256;
  int64_t n_experts = 16;
  int64_t top_k = 2;
  int64_t d_ff = 1024;  // each expert's hidden width
  double aux_loss_coef = 0.01;
  double z_loss_coef = 0.001;
  bool normalize_topk = false;  // Jamba keeps the top-k probabilities as they are; Mixtral renormalises
  int64_t n_layers = 1;
};

class Moe : public FeedForward {
 public:
  // Throws std::invalid_argument when top_k is not in 1..n_experts or n_experts > 64.
  Moe(const MoeLayerOptions& options, Generator& gen, DType dtype = DType::f32);
  // Adds aux_loss_coef * load-balancing + z_loss_coef * z-loss and the expert counts to aux.
  Tensor forward(const Tensor& x, AuxLosses* aux) const override;  // (b, l, d) -> (b, l, d)
  // Expert parameters a token does not use: those of n_experts - top_k experts.
  int64_t inactive_parameters() const;

 private:
  MoeLayerOptions options_;
  Tensor& router_;  // (e, d)
  Tensor& w_gate_;  // (e, f, d)
  Tensor& w_up_;    // (e, f, d)
  Tensor& w_down_;  // (e, d, f)
};

}  // namespace ssmtrain
