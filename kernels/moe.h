// Dropless top-k routed SwiGLU mixture of experts (Jamba / Mixtral style), as separate pieces:
// router (softmax + top-k), load-balancing and z losses, dispatch into expert-contiguous rows,
// gather / weighted combine, and the experts' SwiGLU as one GEMM per expert over its rows.
//
// Glossary: t tokens, d model width, e experts (<= 64), f expert hidden width, k experts per
// token (<= 8), a = t * k assignments (assignment a is token a / k, slot a % k), rows: the a
// assignments sorted by (expert, token, slot), so expert g owns rows [offsets[g], offsets[g+1]).
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace ssmtrain::kernels {

constexpr int64_t kMoeMaxExperts = 64;
constexpr int64_t kMoeMaxTopK = 8;

struct MoeShape {
  int64_t tokens = 0;   // t
  int64_t experts = 0;  // e
  int64_t top_k = 0;    // k
  bool normalize_topk = false;  // renormalise the k routing weights to sum to 1 (Mixtral)
  SSM_HD int64_t assignments() const { return tokens * top_k; }
};

// Throws KernelError naming `op` unless t >= 0, 1 <= e <= 64 and 1 <= k <= min(8, e).
void check_moe_shape(const char* op, const MoeShape& s);

// Sizes of the expert SwiGLU: w_gate, w_up (e, f, d); w_down (e, d, f).
struct MoeExpertShape {
  int64_t experts = 0;  // e
  int64_t d_model = 0;  // d
  int64_t d_ff = 0;     // f
};

// Host row offsets (e + 1) from host counts (e): offsets[0] = 0, offsets[g+1] = offsets[g] + counts[g].
void moe_offsets_from_counts(int64_t experts, const int32_t* counts, int64_t* offsets);

namespace cpu {

// Router. logits (t, e) -> probs (t, e) = softmax(logits), lse (t) = logsumexp(logits),
// topk_index (t, k): the k largest logits (= largest probabilities), largest first, equal
// values taken in increasing expert index; topk_weight (t, k): their probabilities, divided by
// their sum when normalize_topk.
template <typename T>
void moe_router_forward(const MoeShape& s, const T* logits, T* probs, T* lse, int32_t* topk_index,
                        T* topk_weight);
// dlogits (t, e) (written) from dweight (t, k), the gradient of topk_weight.
template <typename T>
void moe_router_backward(const MoeShape& s, const T* probs, const int32_t* topk_index, const T* topk_weight,
                         const T* dweight, T* dlogits);

// counts (e): assignments per expert; offsets (e + 1) exclusive sums; row_of_assignment (a):
// each assignment's row; assignment_of_row (a): its inverse. Stable: rows of one expert are in
// assignment order (token, then slot).
void moe_dispatch(const MoeShape& s, const int32_t* topk_index, int32_t* counts, int32_t* offsets,
                  int32_t* row_of_assignment, int32_t* assignment_of_row);

// aux_loss = e * sum_i f_i * P_i, f_i = counts_i / (t k), P_i = mean_t probs[t, i];
// z_loss = mean_t lse_t^2. mean_probs (e) receives P. Both losses are 0 when t == 0.
template <typename T>
void moe_router_losses(const MoeShape& s, const T* probs, const T* lse, const int32_t* counts, T* mean_probs,
                       T* aux_loss, T* z_loss);
// dlogits (t, e) (written) = daux * d aux / d logits + dz * d z / d logits (counts held fixed).
template <typename T>
void moe_router_losses_backward(const MoeShape& s, const T* probs, const T* lse, const int32_t* counts, T daux,
                                T dz, T* dlogits);

// xp (a, d): xp[row] = x[assignment_of_row[row] / k]. x (t, d).
template <typename T>
void moe_permute(const MoeShape& s, int64_t d, const T* x, const int32_t* assignment_of_row, T* xp);
// dx (t, d) (written) = sum over slots, in slot order, of dxp[row_of_assignment[t k + slot]].
template <typename T>
void moe_permute_backward(const MoeShape& s, int64_t d, const T* dxp, const int32_t* row_of_assignment, T* dx);
// out (t, d) = sum over slots, in slot order, of weight[t, slot] * yp[row_of_assignment[t k + slot]].
template <typename T>
void moe_unpermute(const MoeShape& s, int64_t d, const T* yp, const int32_t* row_of_assignment, const T* weight,
                   T* out);
// dyp (a, d): dyp[row of (t, slot)] = weight[t, slot] * dout[t]; dweight (t, k) = <dout[t], yp[row]>.
template <typename T>
void moe_unpermute_backward(const MoeShape& s, int64_t d, const T* dout, const T* yp, const int32_t* row_of_assignment,
                            const T* weight, T* dyp, T* dweight);

// Expert SwiGLU over expert-contiguous rows (host offsets (e + 1), rows = offsets[e]):
// gate_up (rows, 2f) = [xp w_gate[g]^T, xp w_up[g]^T] (packed as in kernels/swiglu.h);
// yp (rows, d) = swiglu(gate_up) w_down[g]^T. act (rows, f) is scratch.
template <typename T>
void moe_experts_forward(const MoeExpertShape& s, const int64_t* offsets, const T* xp, const T* w_gate,
                         const T* w_up, const T* w_down, T* gate_up, T* act, T* yp);
// From dyp (rows, d): dxp (rows, d), dw_gate, dw_up (e, f, d), dw_down (e, d, f), all written
// (experts with no rows get zero weight gradients). act (rows, f) and dgate_up (rows, 2f) are
// scratch.
template <typename T>
void moe_experts_backward(const MoeExpertShape& s, const int64_t* offsets, const T* xp, const T* w_gate,
                          const T* w_up, const T* w_down, const T* gate_up, const T* dyp, T* act, T* dgate_up,
                          T* dxp, T* dw_gate, T* dw_up, T* dw_down);

}  // namespace cpu

namespace cuda {

// Same contracts as cpu::, with f32 router arithmetic: logits, probs, lse, topk_weight,
// dweight, mean_probs and the losses are f32; x, xp, yp, out, dout, dyp, dx, weights and
// expert activations have `dtype` (f32 or bf16), with f32 accumulation. Every reduction has a
// fixed order and integer counting is exact, so repeated runs give the same bits.
void moe_router_forward(const MoeShape& s, const float* logits, float* probs, float* lse, int32_t* topk_index,
                        float* topk_weight, cudaStream_t stream);
void moe_router_backward(const MoeShape& s, const float* probs, const int32_t* topk_index, const float* topk_weight,
                         const float* dweight, float* dlogits, cudaStream_t stream);

// scratch: moe_dispatch_scratch_elems(s) i32 elements.
int64_t moe_dispatch_scratch_elems(const MoeShape& s);
void moe_dispatch(const MoeShape& s, const int32_t* topk_index, int32_t* counts, int32_t* offsets,
                  int32_t* row_of_assignment, int32_t* assignment_of_row, int32_t* scratch, cudaStream_t stream);

// aux_loss, z_loss: device pointers to one f32 each. daux, dz: device pointers (the incoming
// gradients of the losses; either may be null for 0).
void moe_router_losses(const MoeShape& s, const float* probs, const float* lse, const int32_t* counts,
                       float* mean_probs, float* aux_loss, float* z_loss, cudaStream_t stream);
void moe_router_losses_backward(const MoeShape& s, const float* probs, const float* lse, const int32_t* counts,
                                const float* daux, const float* dz, float* dlogits, cudaStream_t stream);

void moe_permute(const MoeShape& s, int64_t d, DType dtype, const void* x, const int32_t* assignment_of_row,
                 void* xp, cudaStream_t stream);
void moe_permute_backward(const MoeShape& s, int64_t d, DType dtype, const void* dxp,
                          const int32_t* row_of_assignment, void* dx, cudaStream_t stream);
void moe_unpermute(const MoeShape& s, int64_t d, DType dtype, const void* yp, const int32_t* row_of_assignment,
                   const float* weight, void* out, cudaStream_t stream);
void moe_unpermute_backward(const MoeShape& s, int64_t d, DType dtype, const void* dout, const void* yp,
                            const int32_t* row_of_assignment, const float* weight, void* dyp, float* dweight,
                            cudaStream_t stream);

// How the per-expert GEMMs are issued: one cublasGemmGroupedBatchedEx call per product, or
// one cuBLASLt call per expert through kernels/gemm.h.
enum class MoeGemm : uint8_t { grouped, per_expert };

// offsets: HOST (e + 1) row offsets (the caller copies the counts back once per step).
void moe_experts_forward(const MoeExpertShape& s, DType dtype, const int64_t* offsets, const void* xp,
                         const void* w_gate, const void* w_up, const void* w_down, void* gate_up, void* act,
                         void* yp, cudaStream_t stream, MoeGemm gemm = MoeGemm::grouped);
void moe_experts_backward(const MoeExpertShape& s, DType dtype, const int64_t* offsets, const void* xp,
                          const void* w_gate, const void* w_up, const void* w_down, const void* gate_up,
                          const void* dyp, void* act, void* dgate_up, void* dxp, void* dw_gate, void* dw_up,
                          void* dw_down, cudaStream_t stream, MoeGemm gemm = MoeGemm::grouped);

}  // namespace cuda

}  // namespace ssmtrain::kernels
