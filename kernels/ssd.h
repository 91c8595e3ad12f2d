// Mamba-2 SSD (state-space dual) scan. For each batch b and head h, with the state S (p, n):
//   dt_t = clamp(softplus(dt[t] + dt_bias[h]), dt_min, dt_max)   (softplus, clamp optional)
//   S_t  = exp(dt_t * A[h]) * S_{t-1} + dt_t * x_t ⊗ B_t             (x_t (p), B_t (n))
//   y_t  = S_t C_t + D * x_t                                       (times silu(z_t) when z is given)
// Heads share B and C within a group: head hh reads group hh / (h / g). A per-token document
// index resets the state to zero where it changes, so packed sequences do not leak.
// The chunked form computes the same thing in four steps per chunk of chunk_size tokens:
// intra-chunk (C Bᵀ ∘ decay mask) x, each chunk's own state, state passing between chunks,
// and the passed state's contribution to the chunk's outputs.
//
// Glossary: b batch, l sequence length, h heads, p head dim (head_dim), n state size (d_state),
// g groups of B/C (ngroups, divides h).
#pragma once

#include <cstdint>
#include <limits>

#include "kernels/common.h"

namespace ssmtrain::kernels {

struct SsdShape {
  int64_t batch = 0;         // b
  int64_t seq_len = 0;        // l
  int64_t n_heads = 0;        // h
  int64_t head_dim = 0;       // p; 32, 64 or 128 on the GPU
  int64_t d_state = 0;        // n; 16..256 on the GPU
  int64_t ngroups = 1;       // g, divides h
  int64_t chunk_size = 256;  // tokens per chunk of the chunked forms; 64..256 on the GPU
  bool D_has_head_dim = false;  // D is (h, p) rather than (h)
  bool dt_softplus = false;
  // dt is clamped to [dt_min, dt_max] after softplus when the range is narrower than the
  // default (0, inf), as mamba_chunk_scan_combined's dt_limit. The clamp passes no gradient
  // to values outside (dt_min, dt_max).
  double dt_min = 0.0;
  double dt_max = std::numeric_limits<double>::infinity();
  bool has_dt_limit() const { return dt_min > 0.0 || dt_max < std::numeric_limits<double>::infinity(); }
};

// Optional pointers may be null. T is the dtype of x, dt, B, C, z, out and their gradients
// (on the GPU: f32 or bf16); A, D, dt_bias and the states are f32 on the GPU.
template <typename T, typename P>
struct SsdArgs {
  const T* x = nullptr;                // (b, l, h, p)
  const T* dt = nullptr;               // (b, l, h)
  const P* A = nullptr;                // (h)
  const T* B = nullptr;                // (b, l, g, n)
  const T* C = nullptr;                // (b, l, g, n)
  const P* D = nullptr;                // (h), or (h, p) when D_has_head_dim; optional
  const T* z = nullptr;                // (b, l, h, p), optional
  const P* dt_bias = nullptr;          // (h), optional
  const P* initial_states = nullptr;   // (b, h, p, n), optional
  const int32_t* doc_index = nullptr;  // (b, l), optional: the state resets where it changes
};

template <typename T, typename P>
struct SsdGrads {
  const T* dout = nullptr;            // (b, l, h, p), in
  const P* dfinal_states = nullptr;   // (b, h, p, n), in, optional
  T* dx = nullptr;                    // (b, l, h, p)
  T* ddt = nullptr;                   // (b, l, h)
  P* dA = nullptr;                    // (h), overwritten
  T* dB = nullptr;                    // (b, l, g, n)
  T* dC = nullptr;                    // (b, l, g, n)
  P* dD = nullptr;                    // like D, overwritten; required when D is given
  T* dz = nullptr;                    // (b, l, h, p); required when z is given
  P* ddt_bias = nullptr;              // (h), overwritten; required when dt_bias is given
  P* dinitial_states = nullptr;       // (b, h, p, n); required when initial_states is given
};

namespace cpu {
// out (b, l, h, p); final_states (b, h, p, n) when not null. T = P = float or double.
// The plain recurrence, token by token.
template <typename T>
void ssd_forward_sequential(const SsdShape& s, const SsdArgs<T, T>& a, T* out, T* final_states);
// The chunked decomposition (chunks of s.chunk_size tokens, any l): the same result up to
// rounding; the reference the GPU kernels follow step by step.
template <typename T>
void ssd_forward_chunked(const SsdShape& s, const SsdArgs<T, T>& a, T* out, T* final_states);
// The sequential recurrence run backwards with stored states. Sums over heads (dB, dC) and
// over the batch (dA, dD, ddt_bias) run in a fixed order.
template <typename T>
void ssd_backward(const SsdShape& s, const SsdArgs<T, T>& a, const SsdGrads<T, T>& g);
// One decoding step: states (b, h, p, n) are updated in place; x, z, out are (b, h, p); dt is
// (b, h); B, C are (b, g, n). seq_len, initial_states and doc_index are not read.
template <typename T>
void ssd_step(const SsdShape& s, const SsdArgs<T, T>& a, T* states, T* out);
}  // namespace cpu

namespace cuda {
// kernels/cuda/ssd.cu. dtype (f32 or bf16) is the type of x, dt, B, C, z, out and their
// gradients; A, D, dt_bias and the states are f32. p in {32, 64, 128}, n in {16, 32, 64, 128,
// 256}, chunk_size in 64..256. The forward saves the state entering every chunk,
// chunk_states (b, ssd_num_chunks(s), h, p, n), which the backward reads (null: the forward
// keeps them in a temporary buffer); the backward reduces dA, dB, dC, dD and ddt_bias in a
// fixed order (no float atomics), so repeated runs give the same bits.
int64_t ssd_num_chunks(const SsdShape& s);
void ssd_forward(const SsdShape& s, DType dtype, const SsdArgs<void, float>& a, void* out,
                 float* final_states, float* chunk_states, cudaStream_t stream);
void ssd_backward(const SsdShape& s, DType dtype, const SsdArgs<void, float>& a,
                  const SsdGrads<void, float>& g, const float* chunk_states, cudaStream_t stream);
// One decoding step, as cpu::ssd_step; states (b, h, p, n) f32 in place.
void ssd_step(const SsdShape& s, DType dtype, const SsdArgs<void, float>& a, float* states,
              void* out, cudaStream_t stream);
}  // namespace cuda

}  // namespace ssmtrain::kernels
