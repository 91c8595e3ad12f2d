// CUDA Mamba-2 SSD (kernels/ssd.h), the chunked form of kernels/cpu/ssd.cpp step by step.
// Forward: (1) chunk_state: each chunk's own state (p, n) = x^T diag(decay-to-end * dt) B;
// (2) pass_states: the state entering each chunk, sequential over chunks, saved to
// chunk_states; (3) chunk_scan: per 64-token tile, y = (C B^T ∘ L ∘ dt) x + e_t C S_in + D x,
// times silu(z). C B^T is the same for every head of a group, so one block computes it once
// and loops over the group's heads.
// Backward: (1) the chunk-local part of the state gradient, sum_t e_t dy_t ⊗ C_t; (2) the
// reverse state passing (state gradient leaving each chunk, dinitial_states); (3a) per
// output tile t: dz, dC, dD and the row part of d cum; (3b) per input tile s: dx, dB, the
// explicit part of ddt and the column part of d cum; (4) per chunk: the reverse cumsum of
// d cum into ddt and dA. dB and dC add the heads of a group inside one block in head order;
// dA, dD and ddt_bias are per-block partials summed in a fixed order (no float atomics).
// Matrix products run on f32 CUDA cores from shared memory (both dtypes).
// Glossary: b batch, l length, h heads, p head dim, n state size, g groups, Q chunk length.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/ssd.h"

namespace ssmtrain::kernels {
namespace {

using cuda_detail::from_f32;
using cuda_detail::to_f32;

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

__device__ __forceinline__ float sigmoidf_(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ float softplusf_(float v) { return v > 20.0f ? v : log1pf(expf(v)); }
__device__ __forceinline__ float siluf_(float v) { return v * sigmoidf_(v); }
__device__ __forceinline__ float silu_gradf_(float v) {
  const float sg = sigmoidf_(v);
  return sg * (1.0f + v * (1.0f - sg));
}

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
      v = softplusf_(raw);
      gr = sigmoidf_(raw);
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

// acc[i] += sum_k A(r, k) * M(k, q + 4 i) for the thread's row r = tid / 4 and q = tid % 4;
// A(r, k) = A[r * ar + k * ak], M(k, c) = M[k * mk + c * mc]. Both in shared memory.
template <int NI>
__device__ __forceinline__ void mm_rows(float (&acc)[NI], const float* A, int ar, int ak, const float* M, int mk,
                                        int mc, int K) {
  const int r = threadIdx.x >> 2, q = threadIdx.x & 3;
  const float* arow = A + r * ar;
  for (int k = 0; k < K; ++k) {
    const float av = arow[k * ak];
    const float* mrow = M + k * mk + q * mc;
#pragma unroll
    for (int i = 0; i < NI; ++i) acc[i] = fmaf(av, mrow[4 * i * mc], acc[i]);
  }
}

// Sum of v over the 4 threads of a row (tid / 4).
__device__ __forceinline__ float row_sum4(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// rows x cols of a (b, l, ..., cols) tensor into dst (row stride ld), tokens from t0, zeros
// past the chunk's valid tokens or past cols_valid. src_row(t) gives the row's offset.
template <typename T, typename RowFn>
__device__ __forceinline__ void load_tile(float* dst, int ld, const T* src, RowFn src_row, int64_t t0, int rows,
                                          int valid_rows, int col0, int cols, int cols_valid) {
  for (int i = threadIdx.x; i < rows * cols; i += kThreads) {
    const int r = i / cols, cc = i % cols;
    float v = 0.0f;
    if (r < valid_rows && col0 + cc < cols_valid) v = to_f32(src[src_row(t0 + r) + col0 + cc]);
    dst[r * ld + cc] = v;
  }
}

// The C B^T tile block of a 64-token tile against all tiles of a chunk, shared by the heads of
// a group: cb[t][s] (t in the tile, s in the chunk) when rows_are_t, else cbT[s][t] for the
// tile as s against all t. Computed in 32-column steps of the state.
template <typename T>
__device__ void compute_cb(const Dims& d, const SsdArgs<T, float>& a, int64_t bi, int64_t c, int64_t gg, int tile,
                           int len, bool rows_are_t, float* cb, float* buf_a, float* buf_b) {
  const int64_t c0 = c * d.Q;
  const int ntiles = static_cast<int>((len + kTile - 1) / kTile);
  const int r = threadIdx.x >> 2, q = threadIdx.x & 3;
  auto bc_row = [&](int64_t t) { return d.bc(bi, t, gg); };
  const int mine0 = tile * kTile;
  const int mine_valid = min(kTile, len - mine0);
  const int lo = rows_are_t ? 0 : tile, hi = rows_are_t ? tile : ntiles - 1;
  for (int other = lo; other <= hi; ++other) {
    const int other0 = other * kTile, other_valid = min(kTile, len - other0);
    float acc[16] = {};
    for (int k0 = 0; k0 < d.n; k0 += 32) {
      __syncthreads();
      // buf_a (64 x 33): the block's own rows; buf_b (64 x 33): the other tile.
      load_tile(buf_a, 33, rows_are_t ? a.C : a.B, bc_row, c0 + mine0, kTile, mine_valid, static_cast<int>(k0), 32,
                static_cast<int>(d.n));
      load_tile(buf_b, 33, rows_are_t ? a.B : a.C, bc_row, c0 + other0, kTile, other_valid, static_cast<int>(k0), 32,
                static_cast<int>(d.n));
      __syncthreads();
      mm_rows(acc, buf_a, 33, 1, buf_b, 1, 33, 32);
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) cb[r * d.cbld + other0 + q + 4 * i] = acc[i];
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------
// Forward (1) and backward (1): a state-shaped sum over the chunk's tokens,
//   out (p, n) = sum_t w_t v_t ⊗ k_t,
// forward: v = x, k = B, w = exp(cum_last - cum_t) dt_t (the chunk's own state);
// backward: v = dy = dout * silu(z), k = C, w = e_t = exp(cum_t) where the entering state
// carries (the chunk's part of the entering state's gradient).
// Grid (h * p / 32, nc, b); the block owns 32 rows of p. Also writes the chunk decay (b, nc, h).
template <typename T, bool kGrad>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(Dims d, SsdArgs<T, float> a, const T* dout, float* out,
                                                               float* decay) {
  extern __shared__ float smem[];
  ChunkTokens& tk = *reinterpret_cast<ChunkTokens*>(smem);
  float* vt = smem + sizeof(ChunkTokens) / 4;  // (32 tokens, 33): w_t v_t[p0 + j]
  float* kt = vt + 32 * 33;                    // (32 tokens, n + 1)
  const int64_t ptiles = d.p / 32;
  const int64_t hh = blockIdx.x / ptiles, p0 = (blockIdx.x % ptiles) * 32;
  const int64_t c = blockIdx.y, bi = blockIdx.z, gg = hh / d.hpg, c0 = c * d.Q;
  prep_chunk(d, a, bi, c, hh, tk);
  if (threadIdx.x == 0 && p0 == 0) decay[(bi * d.nc + c) * d.h + hh] = chunk_decay(tk);
  const int row = threadIdx.x >> 3, lane = threadIdx.x & 7;  // row of p; columns lane + 8 i
  const int ld = static_cast<int>(d.n) + 1;
  float acc[32] = {};
  for (int s0 = 0; s0 < tk.len; s0 += 32) {
    __syncthreads();
    for (int i = threadIdx.x; i < 32 * 32; i += kThreads) {
      const int sl = s0 + i / 32, j = i % 32;
      float v = 0.0f;
      if (sl < tk.len) {
        const int64_t off = d.x(bi, c0 + sl, hh) + p0 + j;
        if (kGrad) {
          const float e = carries(tk, sl) ? expf(static_cast<float>(tk.cum[sl])) : 0.0f;
          float dy = to_f32(dout[off]);
          if (a.z) dy *= siluf_(to_f32(a.z[off]));
          v = e * dy;
        } else {
          v = to_end(tk, sl) * tk.dt[sl] * to_f32(a.x[off]);
        }
      }
      vt[(i / 32) * 33 + j] = v;
    }
    for (int i = threadIdx.x; i < 32 * d.n; i += kThreads) {
      const int sl = s0 + static_cast<int>(i / d.n), k = static_cast<int>(i % d.n);
      kt[(i / d.n) * ld + k] = sl < tk.len ? to_f32((kGrad ? a.C : a.B)[d.bc(bi, c0 + sl, gg) + k]) : 0.0f;
    }
    __syncthreads();
    for (int s = 0; s < 32; ++s) {
      const float v = vt[s * 33 + row];
#pragma unroll
      for (int i = 0; i < 32; ++i)
        if (lane + 8 * i < d.n) acc[i] = fmaf(v, kt[s * ld + lane + 8 * i], acc[i]);
    }
  }
  float* dst = out + d.st(bi, c, hh) + (p0 + row) * d.n;
#pragma unroll
  for (int i = 0; i < 32; ++i)
    if (lane + 8 * i < d.n) dst[lane + 8 * i] = acc[i];
}

// ---------------------------------------------------------------------------------------
// Forward (2): states (b, nc, h, p, n) hold each chunk's own state on entry and the state
// entering each chunk on exit; the final state is the one leaving the last chunk.
// Backward (2): states hold each chunk's gradient part on entry and the gradient of the state
// leaving each chunk on exit; dinit gets the gradient of the initial state. dot_partial
// (b, h, nc, gridDim.x) gets this block's share of <dS_out, S_in> per chunk.
// Grid (p n / 256, h, b), one element per thread.
template <bool kGrad>
__global__ void __launch_bounds__(kThreads) pass_states_kernel(Dims d, float* states, const float* decay,
                                                               const float* init, float* last,
                                                               const float* chunk_states, float* dot_partial) {
  const int64_t hh = blockIdx.y, bi = blockIdx.z;
  const int64_t e = blockIdx.x * int64_t(kThreads) + threadIdx.x;  // element of (p, n)
  const int64_t pn = d.p * d.n;
  float running = init ? init[(bi * d.h + hh) * pn + e] : 0.0f;
  for (int64_t i = 0; i < d.nc; ++i) {
    const int64_t c = kGrad ? d.nc - 1 - i : i;
    float* slot = states + d.st(bi, c, hh) + e;
    const float own = *slot;
    *slot = running;
    if (kGrad) {
      const float prod = running * chunk_states[d.st(bi, c, hh) + e];
      const float sum = cuda_detail::block_sum(prod);
      if (threadIdx.x == 0) dot_partial[((bi * d.h + hh) * d.nc + c) * gridDim.x + blockIdx.x] = sum;
    }
    running = fmaf(decay[(bi * d.nc + c) * d.h + hh], running, own);
  }
  if (last) last[(bi * d.h + hh) * pn + e] = running;
}

// ---------------------------------------------------------------------------------------
// Shared memory of the chunk-scan kernels (floats, after ChunkTokens).
struct ScanSmem {
  int64_t cb, tileA, tileB, xt, seg, total;  // offsets in floats
};
__host__ __device__ inline ScanSmem scan_smem(int64_t cbld, int64_t p) {
  ScanSmem s;
  s.cb = sizeof(ChunkTokens) / 4;  // (64, cbld) C B^T against the chunk
  s.tileA = s.cb + kTile * cbld;      // (64, 65)
  s.tileB = s.tileA + kTile * kPad;  // (64, 65)
  s.xt = s.tileB + kTile * kPad;     // (64, p + 1) or (p, 65): rows of x or dy, or a state segment
  s.seg = s.xt + std::max<int64_t>(kTile * (p + 1), p * kPad);  // (max(64, p), 65): a second operand
  s.total = s.seg + std::max<int64_t>(kTile, p) * kPad + kTile * (p + 1);  // plus a (64, p + 1) tile
  return s;
}

// Loads the rows [t0, t0 + 64) of dy = dout * silu(z) (or dout) of head hh into dst (64, p + 1).
template <typename T>
__device__ void load_dy(const Dims& d, const SsdArgs<T, float>& a, const T* dout, int64_t bi, int64_t hh, int64_t t0,
                        int valid, float* dst) {
  const int ld = static_cast<int>(d.p) + 1;
  for (int i = threadIdx.x; i < kTile * d.p; i += kThreads) {
    const int r = static_cast<int>(i / d.p), j = static_cast<int>(i % d.p);
    float v = 0.0f;
    if (r < valid) {
      const int64_t off = d.x(bi, t0 + r, hh) + j;
      v = to_f32(dout[off]);
      if (a.z) v *= siluf_(to_f32(a.z[off]));
    }
    dst[r * ld + j] = v;
  }
}

template <typename T>
__device__ void load_x(const Dims& d, const SsdArgs<T, float>& a, int64_t bi, int64_t hh, int64_t t0, int valid,
                       float* dst) {
  auto row = [&](int64_t t) { return d.x(bi, t, hh); };
  load_tile(dst, static_cast<int>(d.p) + 1, a.x, row, t0, kTile, valid, 0, static_cast<int>(d.p),
            static_cast<int>(d.p));
}

// A (p, 64) segment [k0, k0 + 64) of a (p, n) state into dst (p, 65), zeros past n.
__device__ void load_state_seg(const Dims& d, const float* S, int k0, float* dst) {
  for (int i = threadIdx.x; i < d.p * kSeg; i += kThreads) {
    const int pi = i / kSeg, k = i % kSeg;
    dst[pi * kPad + k] = k0 + k < d.n ? S[pi * d.n + k0 + k] : 0.0f;
  }
}

// y_pre of the tile (before D and z): acc (row t, columns of p) += sum_{s} CB L dt_s x_s
// + e_t C_t S_in. Used by the forward and, for dz, by the backward.
template <int P, typename T>
__device__ void tile_output(const Dims& d, const SsdArgs<T, float>& a, const float* chunk_states, int64_t bi,
                            int64_t c, int64_t hh, int tile, const ChunkTokens& tk, float* smem, const ScanSmem& L,
                            float (&acc)[P / 4]) {
  const int64_t c0 = c * d.Q, gg = hh / d.hpg;
  float* cb = smem + L.cb;
  float* Pm = smem + L.tileA;
  float* xs = smem + L.xt;
  for (int st = 0; st <= tile; ++st) {
    const int s0 = st * kTile;
    __syncthreads();
    for (int i = threadIdx.x; i < kTile * kTile; i += kThreads) {
      const int rr = i / kTile, ss = i % kTile;
      const int t = tile * kTile + rr, s = s0 + ss;
      Pm[rr * kPad + ss] = t < tk.len ? cb[rr * d.cbld + s] * decay_mask(tk, t, s) * tk.dt[s] : 0.0f;
    }
    load_x(d, a, bi, hh, c0 + s0, min(kTile, tk.len - s0), xs);
    __syncthreads();
    mm_rows(acc, Pm, kPad, 1, xs, P + 1, 1, kTile);
  }
  // The entering state: e_t C_t S_in, over segments of the state.
  if (!carries(tk, tile * kTile)) return;  // no later token of the tile carries either
  const float* S = chunk_states + d.st(bi, c, hh);
  float* Ct = smem + L.tileB;  // (64, 65): e_t C_t
  float* Sg = smem + L.seg;    // (p, 65)
  for (int k0 = 0; k0 < d.n; k0 += kSeg) {
    __syncthreads();
    for (int i = threadIdx.x; i < kTile * kSeg; i += kThreads) {
      const int rr = i / kSeg, k = i % kSeg, t = tile * kTile + rr;
      float v = 0.0f;
      if (t < tk.len && k0 + k < d.n && carries(tk, t)) v = expf(static_cast<float>(tk.cum[t])) * to_f32(a.C[d.bc(bi, c0 + t, gg) + k0 + k]);
      Ct[rr * kPad + k] = v;
    }
    load_state_seg(d, S, k0, Sg);
    __syncthreads();
    mm_rows(acc, Ct, kPad, 1, Sg, 1, kPad, kSeg);
  }
}

// Forward (3): grid (ntt, nc * g, b); the block loops over the heads of its group.
template <int P, typename T>
__global__ void __launch_bounds__(kThreads) chunk_scan_kernel(Dims d, SsdArgs<T, float> a, const float* chunk_states,
                                                              T* out) {
  constexpr int NI = P / 4;
  extern __shared__ float smem[];
  const ScanSmem L = scan_smem(d.cbld, P);
  ChunkTokens& tk = *reinterpret_cast<ChunkTokens*>(smem);
  const int tile = blockIdx.x;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  if (tile * kTile >= len) return;
  compute_cb(d, a, bi, c, gg, tile, len, true, smem + L.cb, smem + L.tileA, smem + L.tileB);
  const int r = threadIdx.x >> 2, q = threadIdx.x & 3;
  const int tl = tile * kTile + r;
  for (int64_t hh = gg * d.hpg; hh < (gg + 1) * d.hpg; ++hh) {
    prep_chunk(d, a, bi, c, hh, tk);
    float acc[NI] = {};
    tile_output<P>(d, a, chunk_states, bi, c, hh, tile, tk, smem, L, acc);
    if (tl < tk.len) {
      const int64_t off = d.x(bi, c0 + tl, hh);
#pragma unroll
      for (int i = 0; i < NI; ++i) {
        const int pi = q + 4 * i;
        float y = acc[i];
        if (a.D) y = fmaf(d.D_hp ? a.D[hh * P + pi] : a.D[hh], to_f32(a.x[off + pi]), y);
        if (a.z) y *= siluf_(to_f32(a.z[off + pi]));
        out[off + pi] = from_f32<T>(y);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
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
  int splits;
};

// Backward (3a): grid (ntt, nc * g, b). Rows are output tokens t of the tile. Per head:
// dz; dD's partial; d cum_t (the row sums of Z = W ∘ CB plus the entering state's term);
// dC accumulated over the group's heads: dC_t = sum_s W[t, s] B_s + e_t S_in^T dy_t, with
// W[t, s] = L[t, s] dt_s (dy_t . x_s).
template <int P, int NSEG, typename T>
__global__ void __launch_bounds__(kThreads) bwd_rows_kernel(Dims d, SsdArgs<T, float> a, SsdGrads<T, float> gr,
                                                            const float* chunk_states, BwdScratch sc) {
  constexpr int NI = P / 4, NJ = NSEG * 16;
  extern __shared__ float smem[];
  const ScanSmem L = scan_smem(d.cbld, P);
  ChunkTokens& tk = *reinterpret_cast<ChunkTokens*>(smem);
  const int tile = blockIdx.x;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  if (tile * kTile >= len) return;
  compute_cb(d, a, bi, c, gg, tile, len, true, smem + L.cb, smem + L.tileA, smem + L.tileB);
  float* cb = smem + L.cb;
  float* Wm = smem + L.tileA;  // (64, 65) W
  float* Bs = smem + L.tileB;  // (64, 65) a segment of B_s, later of e_t C_t
  float* xs = smem + L.xt;     // (64, P + 1) x_s; later (P, 65) a state segment
  float* dyt = smem + L.seg + std::max<int64_t>(kTile, P) * kPad;  // (64, P + 1) dy_t
  const int r = threadIdx.x >> 2, q = threadIdx.x & 3;
  const int tl = tile * kTile + r;
  const int t0 = tile * kTile, tvalid = min(kTile, len - t0);
  float dC[NJ] = {};
  for (int64_t hh = gg * d.hpg; hh < (gg + 1) * d.hpg; ++hh) {
    prep_chunk(d, a, bi, c, hh, tk);
    load_dy(d, a, gr.dout, bi, hh, c0 + t0, tvalid, dyt);
    float rowZ = 0.0f;
    for (int st = 0; st <= tile; ++st) {
      const int s0 = st * kTile;
      __syncthreads();
      load_x(d, a, bi, hh, c0 + s0, min(kTile, tk.len - s0), xs);
      __syncthreads();
      float dx16[16] = {};  // DX[t][s] = dy_t . x_s
      mm_rows(dx16, dyt, P + 1, 1, xs, 1, P + 1, P);
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int s = s0 + q + 4 * i;
        const float w = tl < tk.len ? decay_mask(tk, tl, s) * tk.dt[s] * dx16[i] : 0.0f;
        Wm[r * kPad + q + 4 * i] = w;
        rowZ = fmaf(w, cb[r * d.cbld + s], rowZ);
      }
      // dC += W B_s, segment by segment of n.
#pragma unroll
      for (int j = 0; j < NSEG; ++j) {
        __syncthreads();
        auto row = [&](int64_t t) { return d.bc(bi, t, gg); };
        load_tile(Bs, kPad, a.B, row, c0 + s0, kTile, min(kTile, tk.len - s0), j * kSeg, kSeg, static_cast<int>(d.n));
        __syncthreads();
        float part[16] = {};
        mm_rows(part, Wm, kPad, 1, Bs, kPad, 1, kTile);
#pragma unroll
        for (int i = 0; i < 16; ++i) dC[16 * j + i] += part[i];
      }
    }
    // The entering state: dC_t += e_t S_in^T dy_t; d cum_t += e_t dy_t . (S_in C_t).
    const float e = tl < tk.len && carries(tk, tl) ? expf(static_cast<float>(tk.cum[tl])) : 0.0f;
    float sc_dot = 0.0f;
    if (carries(tk, t0)) {
      const float* S = chunk_states + d.st(bi, c, hh);
      float sc[NI] = {};  // (S_in C_t)[p]
#pragma unroll
      for (int j = 0; j < NSEG; ++j) {
        __syncthreads();
        load_state_seg(d, S, j * kSeg, xs);  // (P, 65)
        auto row = [&](int64_t t) { return d.bc(bi, t, gg); };
        load_tile(Bs, kPad, a.C, row, c0 + t0, kTile, tvalid, j * kSeg, kSeg, static_cast<int>(d.n));
        __syncthreads();
        mm_rows(sc, Bs, kPad, 1, xs, 1, kPad, kSeg);
        float part[16] = {};
        mm_rows(part, dyt, P + 1, 1, xs, kPad, 1, P);
#pragma unroll
        for (int i = 0; i < 16; ++i) dC[16 * j + i] = fmaf(e, part[i], dC[16 * j + i]);
      }
#pragma unroll
      for (int i = 0; i < NI; ++i) sc_dot = fmaf(dyt[r * (P + 1) + q + 4 * i], sc[i], sc_dot);
    }
    const float dcum = row_sum4(rowZ) + e * row_sum4(sc_dot);
    if (q == 0 && tl < tk.len) sc.dcum_t[d.tok(bi, hh, c) + tl] = dcum;
    // dz needs the forward's pre-gate output; dD sums dy x over the tile's tokens.
    float ypre[NI] = {};
    if (a.z) tile_output<P>(d, a, chunk_states, bi, c, hh, tile, tk, smem, L, ypre);
    __syncthreads();
    float* prod = xs;  // (64, P + 1): dy x per element, for dD's column sums
    if (tl < tk.len) {
      const int64_t off = d.x(bi, c0 + tl, hh);
#pragma unroll
      for (int i = 0; i < NI; ++i) {
        const int pi = q + 4 * i;
        const float xv = to_f32(a.x[off + pi]);
        const float Dv = a.D ? (d.D_hp ? a.D[hh * P + pi] : a.D[hh]) : 0.0f;
        if (a.z) {
          const float zv = to_f32(a.z[off + pi]);
          gr.dz[off + pi] = from_f32<T>(to_f32(gr.dout[off + pi]) * fmaf(Dv, xv, ypre[i]) * silu_gradf_(zv));
        }
        prod[r * (P + 1) + pi] = dyt[r * (P + 1) + pi] * xv;
      }
    } else {
#pragma unroll
      for (int i = 0; i < NI; ++i) prod[r * (P + 1) + q + 4 * i] = 0.0f;
    }
    __syncthreads();
    if (a.D)
      for (int pi = threadIdx.x; pi < P; pi += kThreads) {
        float sum = 0.0f;
        for (int rr = 0; rr < kTile; ++rr) sum += prod[rr * (P + 1) + pi];
        sc.dD_part[(((bi * d.nc + c) * d.ntt + tile) * d.h + hh) * P + pi] = sum;
      }
  }
  if (tl < len) {
    T* dst = gr.dC + d.bc(bi, c0 + tl, gg);
#pragma unroll
    for (int i = 0; i < NJ; ++i) {
      const int k = (i / 16) * kSeg + q + 4 * (i % 16);
      if (k < d.n) dst[k] = from_f32<T>(dC[i]);
    }
  }
}

// Backward (3b): grid (ntt, nc * g, b). Rows are input tokens s of the tile. Per head:
// q_s = M^T dy + f_s dS_out B_s with M = CB ∘ L; dx_s = dt_s q_s + D dy_s; the explicit part
// of ddt_s = x_s . q_s; d cum_s = -(column sums of Z) - v_s with v_s = f_s dt_s x_s . dS_out B_s;
// dB accumulated over the group's heads: dB_s = sum_t W[t, s] C_t + f_s dt_s dS_out^T x_s.
template <int P, int NSEG, typename T>
__global__ void __launch_bounds__(kThreads) bwd_cols_kernel(Dims d, SsdArgs<T, float> a, SsdGrads<T, float> gr,
                                                            BwdScratch sc) {
  constexpr int NI = P / 4, NJ = NSEG * 16;
  extern __shared__ float smem[];
  const ScanSmem L = scan_smem(d.cbld, P);
  ChunkTokens& tk = *reinterpret_cast<ChunkTokens*>(smem);
  const int tile = blockIdx.x;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  if (tile * kTile >= len) return;
  // cbT[s][t] = C_t . B_s for s in this tile, t in the chunk.
  compute_cb(d, a, bi, c, gg, tile, len, false, smem + L.cb, smem + L.tileA, smem + L.tileB);
  float* cbT = smem + L.cb;
  float* Wm = smem + L.tileA;  // (64, 65) W^T [s][t], later M^T
  float* Cs = smem + L.tileB;  // (64, 65) a segment of C_t or B_s
  float* xs = smem + L.seg + std::max<int64_t>(kTile, P) * kPad;  // (64, P + 1) x_s
  float* dyt = smem + L.xt;    // (64, P + 1) dy_t; later (P, 65) a segment of dS_out
  float* Mt = smem + L.seg;    // (64, 65) M^T [s][t]
  const int r = threadIdx.x >> 2, q = threadIdx.x & 3;
  const int sl = tile * kTile + r;
  const int s0 = tile * kTile, svalid = min(kTile, len - s0);
  const int ntiles = (len + kTile - 1) / kTile;
  float dB[NJ] = {};
  for (int64_t hh = gg * d.hpg; hh < (gg + 1) * d.hpg; ++hh) {
    prep_chunk(d, a, bi, c, hh, tk);
    load_x(d, a, bi, hh, c0 + s0, svalid, xs);
    float colZ = 0.0f;
    float mtdy[NI] = {};
    const float dts = tk.dt[sl];
    for (int tt = tile; tt < ntiles; ++tt) {
      const int t0 = tt * kTile;
      __syncthreads();
      load_dy(d, a, gr.dout, bi, hh, c0 + t0, min(kTile, tk.len - t0), dyt);
      __syncthreads();
      float dx16[16] = {};  // DX[s][t] = x_s . dy_t
      mm_rows(dx16, xs, P + 1, 1, dyt, 1, P + 1, P);
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int t = t0 + q + 4 * i;
        const float m = t < tk.len && sl < tk.len ? decay_mask(tk, t, sl) * cbT[r * d.cbld + t] : 0.0f;
        const float w = t < tk.len && sl < tk.len ? decay_mask(tk, t, sl) * dts * dx16[i] : 0.0f;
        Wm[r * kPad + q + 4 * i] = w;
        Mt[r * kPad + q + 4 * i] = m;
        colZ = fmaf(m * dts, dx16[i], colZ);
      }
      __syncthreads();
      mm_rows(mtdy, Mt, kPad, 1, dyt, P + 1, 1, kTile);
#pragma unroll
      for (int j = 0; j < NSEG; ++j) {
        __syncthreads();
        auto row = [&](int64_t t) { return d.bc(bi, t, gg); };
        load_tile(Cs, kPad, a.C, row, c0 + t0, kTile, min(kTile, tk.len - t0), j * kSeg, kSeg, static_cast<int>(d.n));
        __syncthreads();
        float part[16] = {};
        mm_rows(part, Wm, kPad, 1, Cs, kPad, 1, kTile);
#pragma unroll
        for (int i = 0; i < 16; ++i) dB[16 * j + i] += part[i];
      }
    }
    // The chunk's own state: dSB_s = dS_out B_s (p); dB_s += f_s dt_s dS_out^T x_s.
    const float f = sl < tk.len ? to_end(tk, sl) : 0.0f;
    const float* dS = sc.dstates + d.st(bi, c, hh);
    float dsb[NI] = {};
#pragma unroll
    for (int j = 0; j < NSEG; ++j) {
      __syncthreads();
      load_state_seg(d, dS, j * kSeg, dyt);  // (P, 65)
      auto row = [&](int64_t t) { return d.bc(bi, t, gg); };
      load_tile(Cs, kPad, a.B, row, c0 + s0, kTile, svalid, j * kSeg, kSeg, static_cast<int>(d.n));
      __syncthreads();
      mm_rows(dsb, Cs, kPad, 1, dyt, 1, kPad, kSeg);
      float part[16] = {};
      mm_rows(part, xs, P + 1, 1, dyt, kPad, 1, P);
#pragma unroll
      for (int i = 0; i < 16; ++i) dB[16 * j + i] = fmaf(f * dts, part[i], dB[16 * j + i]);
    }
    float xq = 0.0f, xdsb = 0.0f;
    if (sl < tk.len) {
      const int64_t off = d.x(bi, c0 + sl, hh);
#pragma unroll
      for (int i = 0; i < NI; ++i) {
        const int pi = q + 4 * i;
        const float xv = xs[r * (P + 1) + pi];
        const float qv = fmaf(f, dsb[i], mtdy[i]);
        float dy = to_f32(gr.dout[off + pi]);
        if (a.z) dy *= siluf_(to_f32(a.z[off + pi]));
        const float Dv = a.D ? (d.D_hp ? a.D[hh * P + pi] : a.D[hh]) : 0.0f;
        gr.dx[off + pi] = from_f32<T>(fmaf(dts, qv, Dv * dy));
        xq = fmaf(xv, qv, xq);
        xdsb = fmaf(xv, dsb[i], xdsb);
      }
    }
    xq = row_sum4(xq);
    xdsb = row_sum4(xdsb);
    colZ = row_sum4(colZ);
    if (q == 0 && sl < tk.len) {
      const float v = f * dts * xdsb;
      const int64_t at = d.tok(bi, hh, c) + sl;
      sc.ddt_expl[at] = xq;
      sc.vend[at] = v;
      sc.dcum_s[at] = -colZ - v;
    }
  }
  if (sl < len) {
    T* dst = gr.dB + d.bc(bi, c0 + sl, gg);
#pragma unroll
    for (int i = 0; i < NJ; ++i) {
      const int k = (i / 16) * kSeg + q + 4 * (i % 16);
      if (k < d.n) dst[k] = from_f32<T>(dB[i]);
    }
  }
}

// Backward (4): grid (h, nc, b), one thread per token of the chunk. d cum_t from both sides,
// plus at the chunk's last token sum_s v_s and the chunk decay's term d_c <dS_out, S_in>; its
// reverse cumsum r_u = sum_{t >= u} d cum_t gives ddt_u = ddt_expl_u + A r_u and dA's share
// dt_u r_u; the raw ddt goes through softplus and the clamp.
template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_dt_kernel(Dims d, SsdArgs<T, float> a, SsdGrads<T, float> gr,
                                                          BwdScratch sc) {
  __shared__ ChunkTokens tk;
  __shared__ float rev[kThreads];
  const int64_t hh = blockIdx.x, c = blockIdx.y, bi = blockIdx.z, c0 = c * d.Q;
  prep_chunk(d, a, bi, c, hh, tk);
  const int tid = threadIdx.x;
  const int64_t at = d.tok(bi, hh, c) + tid;
  const bool valid = tid < tk.len;
  const float vsum = cuda_detail::block_sum(valid ? sc.vend[at] : 0.0f);
  float dcum = valid ? sc.dcum_t[at] + sc.dcum_s[at] : 0.0f;
  if (tid == tk.len - 1) {
    float dot = 0.0f;
    for (int i = 0; i < sc.splits; ++i) dot += sc.dot_partial[((bi * d.h + hh) * d.nc + c) * sc.splits + i];
    dcum += vsum + chunk_decay(tk) * dot;
  }
  // Reverse inclusive sum (Hillis-Steele).
  rev[tid] = dcum;
  __syncthreads();
  for (int off = 1; off < kThreads; off *= 2) {
    const float v = tid + off < kThreads ? rev[tid + off] : 0.0f;
    __syncthreads();
    rev[tid] += v;
    __syncthreads();
  }
  const float A = a.A[hh];
  float dA = 0.0f, dbias = 0.0f;
  if (valid) {
    const float r = rev[tid];
    const float ddt = fmaf(A, r, sc.ddt_expl[at]);
    const float raw = ddt * tk.grad[tid];
    gr.ddt[(bi * d.l + c0 + tid) * d.h + hh] = from_f32<T>(raw);
    dA = tk.dt[tid] * r;
    dbias = raw;
  }
  dA = cuda_detail::block_sum(dA);
  dbias = cuda_detail::block_sum(dbias);
  if (tid == 0) {
    sc.dA_part[(bi * d.nc + c) * d.h + hh] = dA;
    sc.dbias_part[(bi * d.nc + c) * d.h + hh] = dbias;
  }
}

// out[i] = sum over `outer` partials in order: part[o * inner + i]. With fold > 1, output i
// also sums the `fold` consecutive inputs i * fold ... (D of shape (h) from (h, p) partials).
__global__ void sum_partials_kernel(const float* part, int64_t outer, int64_t inner, int64_t fold, float* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i * fold >= inner) return;
  float sum = 0.0f;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t f = 0; f < fold; ++f) sum += part[o * inner + i * fold + f];
  out[i] = sum;
}

// ---------------------------------------------------------------------------------------
// Decode step: one thread per (b, h, p) row of the state.
template <typename T>
__global__ void ssd_step_kernel(Dims d, SsdArgs<T, float> a, float* states, T* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= d.b * d.h * d.p) return;
  const int64_t pi = i % d.p, hh = (i / d.p) % d.h, bi = i / (d.p * d.h), gg = hh / d.hpg;
  float dt = to_f32(a.dt[bi * d.h + hh]) + (a.dt_bias ? a.dt_bias[hh] : 0.0f);
  if (d.softplus) dt = softplusf_(dt);
  if (d.limit) dt = fminf(fmaxf(dt, d.dt_min), d.dt_max);
  const float decay = expf(dt * a.A[hh]);
  const float xv = to_f32(a.x[i]);
  const T* Bv = a.B + (bi * d.g + gg) * d.n;
  const T* Cv = a.C + (bi * d.g + gg) * d.n;
  float* S = states + i * d.n;
  float y = 0.0f;
  for (int64_t k = 0; k < d.n; ++k) {
    const float s = fmaf(decay, S[k], dt * xv * to_f32(Bv[k]));
    S[k] = s;
    y = fmaf(s, to_f32(Cv[k]), y);
  }
  if (a.D) y = fmaf(d.D_hp ? a.D[hh * d.p + pi] : a.D[hh], xv, y);
  if (a.z) y *= siluf_(to_f32(a.z[i]));
  out[i] = from_f32<T>(y);
}

Dims make_dims(const SsdShape& s, const char* op) {
  const bool p_ok = s.headdim == 32 || s.headdim == 64 || s.headdim == 128;
  const bool n_ok = s.dstate == 16 || s.dstate == 32 || s.dstate == 64 || s.dstate == 128 || s.dstate == 256;
  if (s.batch < 0 || s.seqlen < 0 || s.nheads < 1 || s.ngroups < 1 || s.nheads % s.ngroups != 0 || !p_ok || !n_ok ||
      s.chunk_size < 64 || s.chunk_size > kMaxChunk || !(s.dt_min <= s.dt_max))
    throw KernelError(std::string("cuda::") + op + ": unsupported shape (h " + std::to_string(s.nheads) + ", p " +
                      std::to_string(s.headdim) + ", n " + std::to_string(s.dstate) + ", g " +
                      std::to_string(s.ngroups) + ", chunk " + std::to_string(s.chunk_size) +
                      "); needs p in {32, 64, 128}, n in {16, 32, 64, 128, 256}, g dividing h, chunk in 64..256 and "
                      "dt_min <= dt_max");
  Dims d{};
  d.b = s.batch;
  d.l = s.seqlen;
  d.h = s.nheads;
  d.p = s.headdim;
  d.n = s.dstate;
  d.g = s.ngroups;
  d.hpg = s.nheads / s.ngroups;
  d.Q = s.chunk_size;
  d.nc = (s.seqlen + d.Q - 1) / d.Q;
  d.ntt = (d.Q + kTile - 1) / kTile;
  d.cbld = d.ntt * kTile + 1;
  d.softplus = s.dt_softplus;
  d.limit = s.has_dt_limit();
  d.D_hp = s.D_has_headdim;
  d.dt_min = static_cast<float>(s.dt_min);
  d.dt_max = static_cast<float>(std::min(s.dt_max, 3.0e38));
  return d;
}

template <typename T> SsdArgs<T, float> typed(const SsdArgs<void, float>& a) {
  return {static_cast<const T*>(a.x), static_cast<const T*>(a.dt), a.A, static_cast<const T*>(a.B),
          static_cast<const T*>(a.C), a.D, static_cast<const T*>(a.z), a.dt_bias, a.initial_states, a.doc_index};
}
template <typename T> SsdGrads<T, float> typed(const SsdGrads<void, float>& g) {
  return {static_cast<const T*>(g.dout), g.dfinal_states, static_cast<T*>(g.dx), static_cast<T*>(g.ddt), g.dA,
          static_cast<T*>(g.dB), static_cast<T*>(g.dC), g.dD, static_cast<T*>(g.dz), g.ddt_bias,
          g.dinitial_states};
}

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

size_t state_smem(const Dims& d) { return sizeof(ChunkTokens) + sizeof(float) * (32 * 33 + 32 * (d.n + 1)); }

}  // namespace

namespace cuda {

int64_t ssd_num_chunks(const SsdShape& s) { return make_dims(s, "ssd_num_chunks").nc; }

void ssd_forward(const SsdShape& shape, DType dtype, const SsdArgs<void, float>& a, void* out, float* final_states,
                 float* chunk_states, cudaStream_t stream) {
  const Dims d = make_dims(shape, "ssd_forward");
  const int64_t state_elems = d.b * d.h * d.p * d.n;
  if (d.b == 0 || d.l == 0) {
    if (final_states && state_elems > 0)
      SSM_CUDA_CHECK(a.initial_states ? cudaMemcpyAsync(final_states, a.initial_states, 4 * state_elems,
                                                        cudaMemcpyDeviceToDevice, stream)
                                      : cudaMemsetAsync(final_states, 0, 4 * state_elems, stream));
    return;
  }
  float* pool = nullptr;
  const int64_t cs_elems = d.nc * state_elems;
  const int64_t decay_elems = d.b * d.nc * d.h;
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&pool),
                                 4 * (decay_elems + (chunk_states ? 0 : cs_elems)), stream));
  float* decay = pool;
  float* states = chunk_states ? chunk_states : pool + decay_elems;
  cuda_detail::dispatch_f32_bf16(dtype, "ssd_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const SsdArgs<T, float> args = typed<T>(a);
    {
      auto kernel = chunk_state_kernel<T, false>;
      const size_t smem = state_smem(d);
      allow_smem(kernel, smem);
      kernel<<<dim3(d.h * d.p / 32, d.nc, d.b), kThreads, smem, stream>>>(d, args, nullptr, states, decay);
      SSM_CUDA_CHECK_LAUNCH();
    }
    pass_states_kernel<false><<<dim3(d.p * d.n / kThreads, d.h, d.b), kThreads, 0, stream>>>(
        d, states, decay, a.initial_states, final_states, nullptr, nullptr);
    SSM_CUDA_CHECK_LAUNCH();
    dispatch_p(d.p, [&](auto pc) {
      constexpr int P = decltype(pc)::value;
      auto kernel = chunk_scan_kernel<P, T>;
      const size_t smem = 4 * scan_smem(d.cbld, P).total;
      allow_smem(kernel, smem);
      kernel<<<dim3(d.ntt, d.nc * d.g, d.b), kThreads, smem, stream>>>(d, args, states, static_cast<T*>(out));
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
  SSM_CUDA_CHECK(cudaFreeAsync(pool, stream));
}

void ssd_backward(const SsdShape& shape, DType dtype, const SsdArgs<void, float>& a, const SsdGrads<void, float>& g,
                  const float* chunk_states, cudaStream_t stream) {
  const Dims d = make_dims(shape, "ssd_backward");
  if ((a.D && !g.dD) || (a.z && !g.dz) || (a.dt_bias && !g.ddt_bias) || (a.initial_states && !g.dinitial_states))
    throw KernelError("cuda::ssd_backward: a gradient buffer is missing for an optional input");
  const int64_t state_elems = d.b * d.h * d.p * d.n;
  const int64_t d_size = d.D_hp ? d.h * d.p : d.h;
  if (d.b == 0 || d.l == 0) {
    SSM_CUDA_CHECK(cudaMemsetAsync(g.dA, 0, 4 * d.h, stream));
    if (g.dD) SSM_CUDA_CHECK(cudaMemsetAsync(g.dD, 0, 4 * d_size, stream));
    if (g.ddt_bias) SSM_CUDA_CHECK(cudaMemsetAsync(g.ddt_bias, 0, 4 * d.h, stream));
    if (g.dinitial_states && state_elems > 0)
      SSM_CUDA_CHECK(g.dfinal_states ? cudaMemcpyAsync(g.dinitial_states, g.dfinal_states, 4 * state_elems,
                                                       cudaMemcpyDeviceToDevice, stream)
                                     : cudaMemsetAsync(g.dinitial_states, 0, 4 * state_elems, stream));
    return;
  }
  if (!chunk_states) throw KernelError("cuda::ssd_backward: chunk_states from the forward are required");
  BwdScratch sc{};
  sc.splits = static_cast<int>(d.p * d.n / kThreads);
  const int64_t tok = d.b * d.h * d.nc * d.Q;
  const int64_t per_chunk = d.b * d.nc * d.h;
  const int64_t sizes[] = {d.nc * state_elems, per_chunk, per_chunk * sc.splits, tok, tok, tok, tok,
                           per_chunk, per_chunk, per_chunk * d.ntt * d.p};
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  float* pool = nullptr;
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&pool), 4 * total, stream));
  float* cursor = pool;
  float** slots[] = {&sc.dstates, &sc.decay, &sc.dot_partial, &sc.dcum_t, &sc.dcum_s, &sc.ddt_expl, &sc.vend,
                     &sc.dA_part, &sc.dbias_part, &sc.dD_part};
  for (int i = 0; i < 10; ++i) {
    *slots[i] = cursor;
    cursor += sizes[i];
  }
  if (a.D) SSM_CUDA_CHECK(cudaMemsetAsync(sc.dD_part, 0, 4 * sizes[9], stream));  // tiles past the end stay 0
  cuda_detail::dispatch_f32_bf16(dtype, "ssd_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const SsdArgs<T, float> args = typed<T>(a);
    const SsdGrads<T, float> grads = typed<T>(g);
    {
      auto kernel = chunk_state_kernel<T, true>;
      const size_t smem = state_smem(d);
      allow_smem(kernel, smem);
      kernel<<<dim3(d.h * d.p / 32, d.nc, d.b), kThreads, smem, stream>>>(d, args, grads.dout, sc.dstates, sc.decay);
      SSM_CUDA_CHECK_LAUNCH();
    }
    pass_states_kernel<true><<<dim3(d.p * d.n / kThreads, d.h, d.b), kThreads, 0, stream>>>(
        d, sc.dstates, sc.decay, g.dfinal_states, g.dinitial_states, chunk_states, sc.dot_partial);
    SSM_CUDA_CHECK_LAUNCH();
    dispatch_p(d.p, [&](auto pc) {
      constexpr int P = decltype(pc)::value;
      dispatch_seg(d.n, [&](auto segc) {
        constexpr int NSEG = decltype(segc)::value;
        const size_t smem = 4 * scan_smem(d.cbld, P).total;
        auto rows = bwd_rows_kernel<P, NSEG, T>;
        allow_smem(rows, smem);
        rows<<<dim3(d.ntt, d.nc * d.g, d.b), kThreads, smem, stream>>>(d, args, grads, chunk_states, sc);
        SSM_CUDA_CHECK_LAUNCH();
        auto cols = bwd_cols_kernel<P, NSEG, T>;
        allow_smem(cols, smem);
        cols<<<dim3(d.ntt, d.nc * d.g, d.b), kThreads, smem, stream>>>(d, args, grads, sc);
        SSM_CUDA_CHECK_LAUNCH();
      });
    });
    bwd_dt_kernel<T><<<dim3(d.h, d.nc, d.b), kThreads, 0, stream>>>(d, args, grads, sc);
    SSM_CUDA_CHECK_LAUNCH();
  });
  const int64_t outer = d.b * d.nc;
  sum_partials_kernel<<<cuda_detail::grid_for(d.h, 128), 128, 0, stream>>>(sc.dA_part, outer, d.h, 1, g.dA);
  SSM_CUDA_CHECK_LAUNCH();
  if (g.ddt_bias) {
    sum_partials_kernel<<<cuda_detail::grid_for(d.h, 128), 128, 0, stream>>>(sc.dbias_part, outer, d.h, 1, g.ddt_bias);
    SSM_CUDA_CHECK_LAUNCH();
  }
  if (g.dD) {
    sum_partials_kernel<<<cuda_detail::grid_for(d_size, 128), 128, 0, stream>>>(
        sc.dD_part, outer * d.ntt, d.h * d.p, d.D_hp ? 1 : d.p, g.dD);
    SSM_CUDA_CHECK_LAUNCH();
  }
  SSM_CUDA_CHECK(cudaFreeAsync(pool, stream));
}

void ssd_step(const SsdShape& shape, DType dtype, const SsdArgs<void, float>& a, float* states, void* out,
              cudaStream_t stream) {
  const Dims d = make_dims(shape, "ssd_step");
  if (d.b == 0) return;
  cuda_detail::dispatch_f32_bf16(dtype, "ssd_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    ssd_step_kernel<T><<<cuda_detail::grid_for(d.b * d.h * d.p, 128), 128, 0, stream>>>(d, typed<T>(a), states,
                                                                                         static_cast<T*>(out));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda
}  // namespace ssmtrain::kernels
