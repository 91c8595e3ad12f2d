// Pieces every SSD file shares (kernels/cuda/ssd.cu has the overview): the problem's sizes
// (Dims), the per-chunk token quantities (ChunkTokens, prep_chunk), the scratch the host carves
// for the kernels, and the launchers each kernel file gives ssd.cu's dispatch.
// Included only from the kernels/cuda/ssd*.cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/activations.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/ssd.h"

namespace ssmtrain::kernels::ssd_detail {

using cuda_detail::from_f32;
using cuda_detail::to_f32;
using bf16 = __nv_bfloat16;
// The activations (kernels/cuda/activations.cuh): the f32 path and the per-token quantities
// use Math::accurate; the tensor-core kernels Math::fast for values rounded to bf16 next.
using cuda_detail::Math;
using cuda_detail::sigmoid;
using cuda_detail::silu;
using cuda_detail::silu_grad;
using cuda_detail::silu_grad_from;
using cuda_detail::softplus;

constexpr int kThreads = 256;  // every kernel but the step
constexpr int kTile = 64;      // tokens per tile of the chunk-scan kernels
constexpr int kSeg = 64;       // state columns per shared-memory segment
constexpr int kPad = kTile + 1;
constexpr int kMaxChunk = 256;

struct Dims {
  int64_t b, l, h, p, n, g, hpg;  // hpg: heads per group
  int64_t Q, nc, ntt;             // chunk length, chunks, 64-token tiles per chunk
  int64_t cbld;                   // row stride of C B^T in shared memory: ntt * 64 + 1
  bool softplus, limit, D_hp;
  float dt_min, dt_max;
  __host__ __device__ int64_t x(int64_t bi, int64_t t, int64_t hh) const { return ((bi * l + t) * h + hh) * p; }
  __host__ __device__ int64_t bc(int64_t bi, int64_t t, int64_t gg) const { return ((bi * l + t) * g + gg) * n; }
  // (b, nc, h, p, n) states of chunk c of head hh
  __host__ __device__ int64_t st(int64_t bi, int64_t c, int64_t hh) const { return ((bi * nc + c) * h + hh) * p * n; }
  // (b, h, nc * Q) per-token scratch
  __host__ __device__ int64_t tok(int64_t bi, int64_t hh, int64_t c) const { return ((bi * h + hh) * nc + c) * Q; }
};

// Per-token scratch (b, h, nc * Q), filled by tokens_kernel from ChunkTokens.
struct TokenInfo {
  float* dt;     // dt after bias, softplus and clamp; 0 past the chunk's end
  float* grad;   // d dt / d raw dt
  double* cum;   // inclusive sum of dt * A from the chunk start
  int* first;    // first token of the token's document in the chunk, | kCarries when the entering state reaches it
  // (cum - cum at the start of the token's 64-token tile) * log2(e) in f32: exp(cum_t - cum_s)
  // = exp2(tr - crel_s) with tr = (cum_t - cum at the start of s's tile) * log2(e) from f64.
  float* crel;
};
constexpr double kLog2e = 1.4426950408889634;
constexpr int kCarries = 1 << 16;

// Backward scratch, per-token arrays (b, h, nc * Q) and per-chunk partials.
struct BwdScratch {
  float* dstates;      // (b, nc, h, p, n): gradient of the state leaving each chunk
  float* decay;        // (b, nc, h)
  float* dot_partial;  // (b, h, nc, splits)
  float* dcum_t;       // d cum, the part computed on the output-tile side
  float* dcum_s;       // d cum, the input-tile side
  float* ddt_expl;     // d dt through the explicit dt_s factors
  float* vend;         // v_s: d cum_last from the chunk's own state
  float* dA_part;      // (b, nc, h)
  float* dbias_part;   // (b, nc, h)
  float* dD_part;      // (b, nc, ntt, h, p)
  float* dD_hp;        // (h, p): dD_part summed over (b, nc, ntt)
  int splits;
};

// C B^T tiles of the tensor-core path (kernels/cuda/ssd_tc.cuh describes their layout).
constexpr int kCbTile = kTile * kTile;  // floats per product tile
__host__ __device__ inline int64_t cb_pairs(int64_t ntt) { return ntt * (ntt + 1) / 2; }

// Calls fn(integral_constant<int, P>) for the head dim.
template <typename Fn> void dispatch_p(int64_t p, Fn&& fn) {
  switch (p) {
    case 32: fn(std::integral_constant<int, 32>{}); return;
    case 64: fn(std::integral_constant<int, 64>{}); return;
    default: fn(std::integral_constant<int, 128>{}); return;
  }
}
// Calls fn(integral_constant<int, NSEG>) for the 64-column segments of the state.
template <typename Fn> void dispatch_seg(int64_t n, Fn&& fn) {
  if (n <= 64) fn(std::integral_constant<int, 1>{});
  else if (n <= 128) fn(std::integral_constant<int, 2>{});
  else fn(std::integral_constant<int, 4>{});
}

template <typename K> void allow_smem(K kernel, size_t bytes) {
  SSM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// ---------------------------------------------------------------------------------------
// Launchers, one per kernel file; ssd.cu chooses among them and orders them.

// kernels/cuda/ssd_simt.cu: the f32 CUDA-core path (f32, and the bf16 shapes the tensor-core
// kernels do not take). kGrad: forward (1) or backward (1).
template <bool kGrad, typename T>
void launch_chunk_state(const Dims& d, const SsdArgs<T, float>& a, const T* dout, float* out, float* decay,
                        cudaStream_t stream);
template <typename T>
void launch_chunk_scan(const Dims& d, const SsdArgs<T, float>& a, const float* chunk_states, T* out,
                       cudaStream_t stream);
template <typename T>
void launch_bwd_rows_cols(const Dims& d, const SsdArgs<T, float>& a, const SsdGrads<T, float>& g,
                          const float* chunk_states, const BwdScratch& sc, cudaStream_t stream);

// kernels/cuda/ssd_tc_forward.cu: the tensor-core forward, and the pieces the tensor-core
// backward shares with it (the token quantities, backward (1), C B^T).
void launch_tokens(const Dims& d, const SsdArgs<bf16, float>& a, const TokenInfo& ti, float* decay,
                   cudaStream_t stream);
template <bool kGrad>
void launch_chunk_state_tc(const Dims& d, const SsdArgs<bf16, float>& a, const bf16* dout, const TokenInfo& ti,
                           float* out, cudaStream_t stream);
void launch_cb(const Dims& d, const SsdArgs<bf16, float>& a, bool both, float* cb, cudaStream_t stream);
void launch_chunk_scan_tc(const Dims& d, const SsdArgs<bf16, float>& a, const TokenInfo& ti,
                          const float* chunk_states, const float* cbt, bf16* out, cudaStream_t stream);

// kernels/cuda/ssd_tc_backward.cu: the tensor-core backward (3a, 3b).
void launch_dy(const Dims& d, const bf16* dout, const bf16* z, bf16* dy, cudaStream_t stream);
void launch_bwd_rows_cols_tc(const Dims& d, const SsdArgs<bf16, float>& a, const SsdGrads<bf16, float>& g,
                             const bf16* dy, const TokenInfo& ti, const float* chunk_states, const BwdScratch& sc,
                             int hslice, int64_t nslices, float* dB_part, float* dC_part, const float* cbt,
                             cudaStream_t stream);

// ---------------------------------------------------------------------------------------
// Device helpers. They keep internal linkage in every file that includes them, as they had
// when all SSD kernels lived in one file, so the compiler treats them as it did then.
namespace {

// Per-token quantities of one chunk of one head, in shared memory.
struct ChunkTokens {
  float dt[kMaxChunk];   // dt after bias, softplus and clamp; 0 past the end
  float grad[kMaxChunk];  // d dt / d raw dt
  // Sum of dt * A from the chunk start through the token, in f64: it reaches -100s over a
  // chunk, and f32 would put errors of 1e-5 into every exp(cum_t - cum_s).
  double cum[kMaxChunk];
  int first[kMaxChunk];   // local index of the first token of the token's document in the chunk
  int len;                // valid tokens in this chunk
  int reset0;             // a document starts at the chunk's first token
};

// Fills tk for chunk c of (bi, hh). Every thread of the (kThreads-wide) block calls it.
template <typename T>
__device__ void prep_chunk(const Dims& d, const SsdArgs<T, float>& a, int64_t bi, int64_t c, int64_t hh,
                           ChunkTokens& tk) {
  const int tid = threadIdx.x;
  const int64_t c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  float dtv = 0.0f, gr = 0.0f;
  int fst = 0;
  bool rst = false;
  if (tid < len) {
    const int64_t t = c0 + tid;
    const float raw = to_f32(a.dt[(bi * d.l + t) * d.h + hh]) + (a.dt_bias ? a.dt_bias[hh] : 0.0f);
    float v = raw;
    gr = 1.0f;
    if (d.softplus) {
      v = softplus(raw);
      gr = sigmoid(raw);
    }
    if (d.limit) {
      if (!(v > d.dt_min && v < d.dt_max)) gr = 0.0f;
      v = fminf(fmaxf(v, d.dt_min), d.dt_max);
    }
    dtv = v;
    rst = a.doc_index && t > 0 && a.doc_index[bi * d.l + t] != a.doc_index[bi * d.l + t - 1];
    fst = rst ? tid : 0;
  }
  __syncthreads();  // a previous use of tk may still be read
  tk.dt[tid] = dtv;
  tk.grad[tid] = gr;
  tk.cum[tid] = static_cast<double>(dtv * a.A[hh]);
  tk.first[tid] = fst;
  if (tid == 0) {
    tk.len = len;
    tk.reset0 = rst;
  }
  __syncthreads();
  // Inclusive sum of cum and max of first (Hillis-Steele: a fixed order of additions).
  for (int off = 1; off < kThreads; off *= 2) {
    const double cv = tid >= off ? tk.cum[tid - off] : 0.0;
    const int fv = tid >= off ? tk.first[tid - off] : 0;
    __syncthreads();
    if (tid >= off) {
      tk.cum[tid] += cv;
      tk.first[tid] = max(tk.first[tid], fv);
    }
    __syncthreads();
  }
}

// The entering state reaches token tl (no document starts in [chunk start, tl]).
__device__ __forceinline__ bool carries(const ChunkTokens& tk, int tl) { return tk.first[tl] == 0 && !tk.reset0; }
// exp(cum_t - cum_s) where s reaches t inside the chunk (s <= t, same document), else 0.
__device__ __forceinline__ float decay_mask(const ChunkTokens& tk, int tl, int sl) {
  return (sl <= tl && sl >= tk.first[tl]) ? expf(static_cast<float>(tk.cum[tl] - tk.cum[sl])) : 0.0f;
}
// Weight of token sl in the chunk's own state: exp(cum_last - cum_s) where s reaches the end.
__device__ __forceinline__ float to_end(const ChunkTokens& tk, int sl) {
  const int last = tk.len - 1;
  return (sl <= last && sl >= tk.first[last]) ? expf(static_cast<float>(tk.cum[last] - tk.cum[sl])) : 0.0f;
}
// The chunk's decay of the entering state.
__device__ __forceinline__ float chunk_decay(const ChunkTokens& tk) {
  return carries(tk, tk.len - 1) ? expf(static_cast<float>(tk.cum[tk.len - 1])) : 0.0f;
}

}  // namespace
}  // namespace ssmtrain::kernels::ssd_detail
