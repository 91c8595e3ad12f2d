// Mamba-1 selective scan. For each batch b and channel d, with the state x (n) kept in f32:
//   dt_t  = delta[t] + delta_bias          (softplus(dt_t) when delta_softplus)
//   x_t   = exp(dt_t * A[d]) * x_{t-1} + dt_t * B[:, t] * u[t]
//   y_t   = C[:, t] . x_t + D[d] * u[t]    (times silu(z[t]) when z is given)
// B and C are shared by the d / g channels of a group. A per-token document index resets the
// state to zero where it changes, so packed sequences do not leak into each other.
//
// Glossary: b batch, d channels (d_inner), l sequence length, n state size, g groups of B/C.
#pragma once

#include <cstdint>

#include "kernels/common.h"

namespace ssmtrain::kernels {

struct ScanShape {
  int64_t batch = 0;    // b
  int64_t dim = 0;      // d
  int64_t seq_len = 0;   // l
  int64_t d_state = 0;   // n, 1..64 on the GPU
  int64_t ngroups = 1;  // g, divides d
  bool delta_softplus = false;
};

// Optional pointers may be null. T is the dtype of u, delta, z, B, C, out and their
// gradients (on the GPU: f32 or bf16); A, D, delta_bias and the states are f32 on the GPU.
template <typename T, typename P>
struct ScanArgs {
  const T* u = nullptr;              // (b, d, l)
  const T* delta = nullptr;          // (b, d, l)
  const P* A = nullptr;              // (d, n)
  const T* B = nullptr;              // (b, g, n, l)
  const T* C = nullptr;              // (b, g, n, l)
  const P* D = nullptr;              // (d), optional
  const T* z = nullptr;              // (b, d, l), optional
  const P* delta_bias = nullptr;     // (d), optional
  const P* initial_state = nullptr;  // (b, d, n), optional
  const int32_t* doc_index = nullptr;  // (b, l), optional: state resets where it changes
};

template <typename T, typename P>
struct ScanGrads {
  const T* dout = nullptr;            // (b, d, l), in
  const P* dfinal_state = nullptr;    // (b, d, n), in, optional
  T* du = nullptr;                    // (b, d, l)
  T* ddelta = nullptr;                // (b, d, l)
  P* dA = nullptr;                    // (d, n), overwritten
  T* dB = nullptr;                    // (b, g, n, l)
  T* dC = nullptr;                    // (b, g, n, l)
  P* dD = nullptr;                    // (d), overwritten; required when D is given
  T* dz = nullptr;                    // (b, d, l); required when z is given
  P* ddelta_bias = nullptr;           // (d), overwritten; required when delta_bias is given
  P* dinitial_state = nullptr;        // (b, d, n); required when initial_state is given
};

namespace cpu {
// out (b, d, l); final_state (b, d, n) when not null. T = P = float or double.
template <typename T>
void selective_scan_forward(const ScanShape& s, const ScanArgs<T, T>& a, T* out, T* final_state);
// The sequential recurrence run backwards with stored states.
template <typename T>
void selective_scan_backward(const ScanShape& s, const ScanArgs<T, T>& a, const ScanGrads<T, T>& g);
// One decoding step: state (b, d, n) is updated in place; u, delta, z, out are (b, d);
// B, C are (b, g, n).
template <typename T>
void selective_scan_step(const ScanShape& s, const ScanArgs<T, T>& a, T* state, T* out);
}  // namespace cpu

namespace cuda {
// dtype (f32 or bf16) is the type of u, delta, z, B, C, out and their gradients; A, D,
// delta_bias and the states are f32. The forward can save the state at the start of every
// chunk of the sequence, chunk_states (b, d, selective_scan_num_chunks(s), n), which the
// backward needs; the chunk length depends on the shape alone (32 tokens on the
// sequential path, n = 16 in groups of 32 channels, else 128 x tokens per thread).
// n <= 64. The backward recomputes states chunk by chunk, never holding (b, d, l, n), and
// reduces dA, dB, dC, dD, ddelta_bias in a fixed order (no atomics).
int64_t selective_scan_num_chunks(const ScanShape& s);
// How forward and backward run a shape on the current GPU (for tests and benchmarks):
// block_scan (n != 16 or channels not in groups of 32: per-state block scans over chunks of
// 128 x tokens per thread), sequential (n = 16: lanes own 4 states of a channel and walk the
// sequence in tiles of 32 tokens, one pass when b * d / 8 warps fill the GPU), or
// sequential_segmented (the same over `segments` segments of `segment_len` tokens run in
// parallel, with passes over the segments for the carried state and state gradient).
enum class ScanPath { block_scan, sequential, sequential_segmented };
struct ScanPlan {
  ScanPath path = ScanPath::block_scan;
  int64_t segments = 1;
  int64_t segment_len = 0;  // tokens; the sequence length when there is one segment
  int64_t chunk_len = 0;    // tokens between the states the forward saves
};
ScanPlan selective_scan_plan(const ScanShape& s);
void selective_scan_forward(const ScanShape& s, DType dtype, const ScanArgs<void, float>& a, void* out,
                            float* final_state, float* chunk_states, cudaStream_t stream);
void selective_scan_backward(const ScanShape& s, DType dtype, const ScanArgs<void, float>& a,
                             const ScanGrads<void, float>& g, const float* chunk_states,
                             cudaStream_t stream);
// One decoding step, as cpu::selective_scan_step; state (b, d, n) f32 in place.
void selective_scan_step(const ScanShape& s, DType dtype, const ScanArgs<void, float>& a, float* state,
                         void* out, cudaStream_t stream);
}  // namespace cuda

}  // namespace ssmtrain::kernels
