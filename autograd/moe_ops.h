// Differentiable dropless top-k routed SwiGLU mixture of experts (Jamba / Mixtral style): one
// fused node with a hand-written backward over the kernels of kernels/moe.h.
// Glossary: t tokens, d model width, e experts, f expert hidden width, k experts per token.
#pragma once

#include <cstdint>

#include "autograd/tensor.h"

namespace ssmtrain {

struct MoeOptions {
  int64_t top_k = 2;
  bool normalize_topk = false;  // renormalise the k routing weights to sum to 1
};

struct MoeOutputs {
  Tensor out;            // (t, d), x's dtype
  Tensor aux_loss;       // {} f32: e * sum_i f_i * P_i (differentiable w.r.t. the router)
  Tensor z_loss;         // {} f32: mean over tokens of logsumexp(router logits)^2
  Tensor expert_counts;  // (e) i32 on x's device, no gradient: assignments per expert
};

// x (t, d); router_weight (e, d); w_gate, w_up (e, f, d); w_down (e, d, f).
// out_t = sum_k weight_tk * down_k(silu(gate_k x_t) * up_k x_t).
// Router logits are x @ router_weight^T, softmax in f32; the k largest probabilities are taken
// per token (ties: the lower expert index wins). f_i counts assignments (no gradient), P_i is the
// mean probability of expert i. On the CPU the losses take x's dtype (f64 for gradient checks).
MoeOutputs moe_swiglu(const Tensor& x, const Tensor& router_weight, const Tensor& w_gate,
                      const Tensor& w_up, const Tensor& w_down, const MoeOptions& options);

}  // namespace ssmtrain
