// The feed-forwards of a block (DESIGN.md section 3): the SwiGLU MLP, and the mixture of
// experts (router softmax, top-k, dropless dispatch to SwiGLU experts) with its
// load-balancing and router z-losses.
//
// Glossary: b batch, l sequence length, t = b l tokens, d d_model, f hidden width,
// e experts, k experts per token.
#pragma once

#include "configs/config.h"
#include "layers/basic.h"

namespace ssmtrain {

// down(silu(gate x) * up x), with gate and up packed in one projection (d -> 2f).
class Mlp : public FeedForward {
 public:
  // d_model -> model.mlp_d_ff() -> d_model; down is scaled by 1 / sqrt(n_layers) at init.
  Mlp(const configs::ModelConfig& model, Generator& gen, DType dtype = DType::f32);
  Tensor forward(const Tensor& x, AuxLosses* aux) const override;  // (b, l, d) -> (b, l, d)

 private:
  Linear& gate_up_;  // d -> 2f: [gate; up]
  Linear& down_;     // f -> d
};

class Moe : public FeedForward {
 public:
  // model.moe's experts of hidden width model.moe_d_ff(); the top-k probabilities are kept as
  // they are (Jamba; Mixtral renormalises them). Throws std::invalid_argument when top_k is
  // not in 1..n_experts or n_experts > 64.
  Moe(const configs::ModelConfig& model, Generator& gen, DType dtype = DType::f32);
  // Adds aux_loss_coef * load-balancing + z_loss_coef * z-loss and the expert counts to aux.
  Tensor forward(const Tensor& x, AuxLosses* aux) const override;  // (b, l, d) -> (b, l, d)
  // Expert parameters a token does not use: those of n_experts - top_k experts.
  int64_t inactive_parameters() const;

 private:
  configs::ModelConfig model_;
  Tensor& router_;  // (e, d)
  Tensor& w_gate_;  // (e, f, d)
  Tensor& w_up_;    // (e, f, d)
  Tensor& w_down_;  // (e, d, f)
};

}  // namespace ssmtrain
