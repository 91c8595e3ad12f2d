// Causal depthwise conv1d of the Mamba mixers. For batch b, channel c and token t, width w:
//   out[b, c, t] = act(bias[c] + sum_{k=0}^{w-1} weight[c, k] * x[b, c, t - (w-1) + k])
// act is SiLU or the identity. Inputs before t = 0 come from the initial state (the last w-1
// inputs of the previous segment) or are zero. With a per-token document index, the window
// never reaches across a document boundary: x[s] counts for out[t] only when the index does
// not change in (s, t]. The initial state belongs to the document of token 0 (a caller whose
// segment starts a new document passes a zero state or none).
//
// Two layouts of x, out, dout and dx (weight, bias and the states keep theirs in both):
//   channel-major  (b, d, l), dense: the Mamba-1 mixer's;
//   channel-last   (b, l, d), x with a row stride (x_stride >= d elements between consecutive
//                  tokens), so a slice of a wider (b, l, .) tensor, such as the xBC columns of
//                  Mamba-2's in_proj output, is read in place; out, dout and dx dense (b, l, d).
//
// Glossary: b batch, d channels (d_inner), l sequence length, w width (2..4).
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace ssmtrain::kernels {

struct Conv1dShape {
  int64_t batch = 0;   // b
  int64_t dim = 0;     // d
  int64_t seq_len = 0;  // l
  int64_t width = 4;   // w, 2..4
  bool silu = false;   // fused SiLU on the output
  bool channel_last = false;  // x, out and their gradients (b, l, d) instead of (b, d, l)
  int64_t x_stride = 0;       // channel-last: elements between consecutive tokens of x; 0 means d
};

// Optional pointers may be null. T is the dtype of x, out, the states and their gradients
// (on the GPU: f32 or bf16); P is the dtype of weight and bias (on the GPU always f32: the
// parameters stay f32 master copies while the activations are bf16).
template <typename T, typename P>
struct Conv1dArgs {
  const T* x = nullptr;                // (b, d, l), or (b, l, d) with row stride x_stride
  const P* weight = nullptr;           // (d, w)
  const P* bias = nullptr;             // (d), optional
  const T* initial_state = nullptr;    // (b, d, w-1), optional: inputs at t = -(w-1) .. -1
  const int32_t* doc_index = nullptr;  // (b, l), optional
};

template <typename T, typename P>
struct Conv1dGrads {
  const T* dout = nullptr;       // (b, d, l) or (b, l, d), dense, in
  T* dx = nullptr;               // (b, d, l) or (b, l, d), dense
  P* dweight = nullptr;          // (d, w), overwritten
  P* dbias = nullptr;            // (d), overwritten; required when bias is given
  T* dinitial_state = nullptr;   // (b, d, w-1); required when initial_state is given
};

namespace cpu {
// out (b, d, l) or (b, l, d); final_state (b, d, w-1) when not null: the inputs the next segment's first
// token sees (the last w-1 tokens, zero before the start of the last document). The final
// state is for decoding after a prefill and carries no gradient. T = P = float or double.
template <typename T>
void causal_conv1d_forward(const Conv1dShape& s, const Conv1dArgs<T, T>& a, T* out, T* final_state);
// dweight and dbias sum over b and l in a fixed order.
template <typename T>
void causal_conv1d_backward(const Conv1dShape& s, const Conv1dArgs<T, T>& a, const Conv1dGrads<T, T>& g);
// One decoding step: state (b, d, w-1) holds the last w-1 inputs and is shifted in place
// (oldest out, x in); x and out are (b, d). a.x, a.initial_state and a.doc_index are unused.
template <typename T>
void causal_conv1d_step(const Conv1dShape& s, const Conv1dArgs<T, T>& a, const T* x, T* state, T* out);
}  // namespace cpu

namespace cuda {
// dtype (f32 or bf16) is the type of x, out, the states and their gradients; weight and bias
// are f32. Each thread owns 32 bytes of consecutive tokens of one channel (16 bf16 or 8 f32,
// two 16-byte loads); the w-1 token halos come from the neighbouring lanes. The backward computes dx and the
// dweight / dbias partials in one pass (one partial per block) and sums the partials in
// block order in a second kernel (sum_partials): no atomics, the same bits on every run.
// Channel-last: threads over channels (16 bytes of consecutive channels each, coalesced along
// d), 32 x 4 threads per block, each walking a run of 32 tokens with the w-1 halo before it;
// the backward walks its run backwards and writes one (dweight, dbias) partial per block.
void causal_conv1d_forward(const Conv1dShape& s, DType dtype, const Conv1dArgs<void, float>& a, void* out,
                           void* final_state, cudaStream_t stream);
void causal_conv1d_backward(const Conv1dShape& s, DType dtype, const Conv1dArgs<void, float>& a,
                            const Conv1dGrads<void, float>& g, cudaStream_t stream);
// One decoding step, as cpu::causal_conv1d_step; state (b, d, w-1) of dtype, in place.
void causal_conv1d_step(const Conv1dShape& s, DType dtype, const Conv1dArgs<void, float>& a, const void* x,
                        void* state, void* out, cudaStream_t stream);
}  // namespace cuda

}  // namespace ssmtrain::kernels
