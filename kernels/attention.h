// Causal scaled-dot-product attention with grouped-query heads and document masking: the
// forward saves the softmax log-sum-exp for the backward; plus a decode step over a KV cache.
//   s_ij  = scale * q_i . k_j           for j <= i (and doc[j] == doc[i] when documents given)
//   lse_i = log sum_j exp(s_ij),   p_ij = exp(s_ij - lse_i),   out_i = sum_j p_ij v_j
// Query head hh reads kv head hh / (h / h_kv).
//
// Glossary: b batch, l sequence length, h query heads, h_kv key/value heads (divides h),
// dh head dim, L the KV cache's capacity (max_len).
#pragma once

#include <cstdint>
#include <string>

#include "kernels/common.h"

namespace ssmtrain::kernels {

struct AttentionShape {
  int64_t batch = 0;     // b
  int64_t seq_len = 0;    // l
  int64_t n_heads = 0;     // h
  int64_t n_kv_heads = 0;  // h_kv, divides h
  int64_t head_dim = 0;  // dh (1..128 on the GPU)
  double scale = 0.0;    // 0 means 1 / sqrt(dh)
  // false lets the GPU backward use a faster kernel whose float atomics make dq differ in its
  // last bits from run to run (cuDNN's atomic-dQ backward; the fallback is always deterministic).
  bool deterministic = true;
};

// The scale actually applied (resolves 0 to 1 / sqrt(dh)).
double attention_scale(const AttentionShape& s);
// Throws KernelError naming what is wrong with the shape (sizes, h_kv not dividing h).
void check_attention_shape(const AttentionShape& s);

namespace cpu {
// q (b, l, h, dh); k, v (b, l, h_kv, dh); doc_index (b, l) or null; out (b, l, h, dh);
// lse (b, h, l). T = float or double; OpenMP over (b, h).
template <typename T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v,
                       const int32_t* doc_index, T* out, T* lse);
// dout (b, l, h, dh) in; dq like q; dk, dv like k (overwritten): the contributions of the
// h / h_kv query heads sharing a kv head are summed in head order. OpenMP over (b, h_kv).
template <typename T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v,
                        const int32_t* doc_index, const T* out, const T* lse, const T* dout, T* dq,
                        T* dk, T* dv);
// One decoding step: q (b, h, dh) is the token at position lengths[bi] - 1 of sequence bi;
// k_cache, v_cache (b, L, h_kv, dh) hold positions 0 .. lengths[bi] - 1 (the new token's
// key and value included); out (b, h, dh). s.seq_len is L.
template <typename T>
void attention_decode(const AttentionShape& s, const T* q, const T* k_cache, const T* v_cache,
                      const int32_t* lengths, T* out);
}  // namespace cpu

namespace cuda {
// Which implementation runs. automatic: cuDNN's fused SDPA when it covers the case (bf16,
// dh 64 or 128, no documents, and cuDNN accepts the graph), else the flash-style fallback.
// Forward and backward of one call must use the same choice (the lse is compatible, but the
// tests compare paths one at a time).
enum class AttentionBackend : uint8_t { automatic, cudnn, fallback };

// True when cuDNN would run this case under `automatic` (builds and caches the plans).
bool attention_cudnn_supported(const AttentionShape& s, DType dtype, bool has_doc_index);

// The cuDNN engines chosen for this case (see kernels/cuda/attention_cudnn.cu), as text for logs
// and benchmark reports: "forward: engine ..., 0.1420 ms (fastest of 3 timed); backward ...".
// Before the first forward / backward call it lists the candidates; where cuDNN does not run
// the case it says why. Environment: SSMTRAIN_ATTENTION_TUNE=0 takes the heuristics' first
// engine instead of timing the candidates on first use; SSMTRAIN_ATTENTION_VERBOSE=1 prints every
// candidate and its time to stderr.
std::string attention_cudnn_engines(const AttentionShape& s, DType dtype);

// dtype (f32 or bf16) of q, k, v, out, dout, dq, dk, dv; lse (b, h, l) f32; doc_index
// (b, l) i32 or null. Asking for cudnn where it does not apply throws. Deterministic unless
// s.deterministic is false: the same inputs give the same bits on the same GPU (and, for cuDNN,
// the same engine choice: the first call of a shape times the candidate engines and keeps the
// fastest, so two processes may pick different engines when they are about equally fast).
void attention_forward(const AttentionShape& s, DType dtype, const void* q, const void* k,
                       const void* v, const int32_t* doc_index, void* out, float* lse,
                       cudaStream_t stream, AttentionBackend backend = AttentionBackend::automatic);
void attention_backward(const AttentionShape& s, DType dtype, const void* q, const void* k,
                        const void* v, const int32_t* doc_index, const void* out,
                        const float* lse, const void* dout, void* dq, void* dk, void* dv,
                        cudaStream_t stream, AttentionBackend backend = AttentionBackend::automatic);
// As cpu::attention_decode; lengths (b) i32 on the device, each in 1..L.
void attention_decode(const AttentionShape& s, DType dtype, const void* q, const void* k_cache,
                      const void* v_cache, const int32_t* lengths, void* out, cudaStream_t stream);
}  // namespace cuda

}  // namespace ssmtrain::kernels
