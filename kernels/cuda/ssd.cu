// CUDA Mamba-2 SSD (kernels/ssd.h), the chunked form of kernels/cpu/ssd.cpp step by step.
// Forward: (1) chunk_state: each chunk's own state (p, n) = x^T diag(decay-to-end * dt) B;
// (2) pass_states: the state entering each chunk, sequential over chunks, saved to
// chunk_states; (3) chunk_scan: per 64-token tile, y = (C B^T ∘ L ∘ dt) x + e_t C S_in + D x,
// times silu(z).
// Backward: (1) the chunk-local part of the state gradient, sum_t e_t dy_t ⊗ C_t; (2) the
// reverse state passing (state gradient leaving each chunk, dinitial_states); (3a) per
// output tile t: dz, dC, dD and the row part of d cum; (3b) per input tile s: dx, dB, the
// explicit part of ddt and the column part of d cum; (4) per chunk: the reverse cumsum of
// d cum into ddt and dA. dA, dD and ddt_bias are per-block partials summed in a fixed order
// (no float atomics).
// Two implementations of (1), (3a), (3b) and forward (3):
// - bf16 with 16-byte aligned pointers (and n in {64, 128} for the backward): tensor cores,
//   mma.sync m16n8k16 bf16 with f32 accumulation (kernels/cuda/ssd_mma.cuh), 4-warp blocks;
//   C B^T is computed once per (chunk, tile pair, group) by cb_tc_kernel and read by every
//   head; the forward scan runs one block per (64-token tile, chunk, head); the backward
//   blocks loop over a slice of a group's heads, summing dB / dC over the slice in registers
//   and over slices in order (sum_slices_kernel).
// - otherwise (f32, and the remaining bf16 shapes): f32 CUDA cores from shared memory, one
//   block per (tile, chunk, group) looping over the group's heads (C B^T computed once).
// Glossary: b batch, l length, h heads, p head dim, n state size, g groups, Q chunk length.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/ssd_mma.cuh"
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
// The tensor-core kernels' versions, for values that are rounded to bf16 next: exp through
// ex2.approx and an approximate division (2 ulp each) instead of an IEEE division (a dozen
// instructions each time). Past v = -87 the sigmoid is 0, as its limit.
__device__ __forceinline__ float sigmoid_fast(float v) { return __fdividef(1.0f, 1.0f + __expf(-v)); }
__device__ __forceinline__ float silu_grad_from(float v, float sg) { return sg * (1.0f + v * (1.0f - sg)); }
// 2^x in one MUFU.EX2; results below 2^-126 flush to zero (exp2f spends four more
// instructions keeping them subnormal).
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
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
// Grid (p n / (4 kPassThreads), h, b); each thread owns 4 consecutive elements (float4 when
// every pointer is 16-byte aligned) and loads the next chunk's values before it stores the
// current one, so the sequential walk over chunks keeps two loads in flight.
constexpr int kPassThreads = 128;
constexpr int kPassElems = 4 * kPassThreads;  // state elements per block; divides p * n

__device__ __forceinline__ float4 load4(const float* p, bool vec) {
  if (vec) return *reinterpret_cast<const float4*>(p);
  return make_float4(p[0], p[1], p[2], p[3]);
}
__device__ __forceinline__ void store4(float* p, float4 v, bool vec) {
  if (vec) {
    *reinterpret_cast<float4*>(p) = v;
    return;
  }
  p[0] = v.x;
  p[1] = v.y;
  p[2] = v.z;
  p[3] = v.w;
}

template <bool kGrad>
__global__ void __launch_bounds__(kPassThreads) pass_states_kernel(Dims d, float* states, const float* decay,
                                                                   const float* init, float* last,
                                                                   const float* chunk_states, float* dot_partial,
                                                                   bool vec) {
  const int64_t hh = blockIdx.y, bi = blockIdx.z;
  const int64_t e = (blockIdx.x * int64_t(kPassThreads) + threadIdx.x) * 4;  // element of (p, n)
  const int64_t pn = d.p * d.n;
  float4 running = init ? load4(init + (bi * d.h + hh) * pn + e, vec) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  auto chunk_of = [&](int64_t i) { return kGrad ? d.nc - 1 - i : i; };
  float4 own_next = load4(states + d.st(bi, chunk_of(0), hh) + e, vec);
  float4 in_next = kGrad ? load4(chunk_states + d.st(bi, chunk_of(0), hh) + e, vec) : own_next;
  for (int64_t i = 0; i < d.nc; ++i) {
    const int64_t c = chunk_of(i);
    const float4 own = own_next, in = in_next;
    if (i + 1 < d.nc) {
      own_next = load4(states + d.st(bi, chunk_of(i + 1), hh) + e, vec);
      if (kGrad) in_next = load4(chunk_states + d.st(bi, chunk_of(i + 1), hh) + e, vec);
    }
    const float dc = decay[(bi * d.nc + c) * d.h + hh];
    store4(states + d.st(bi, c, hh) + e, running, vec);
    if (kGrad) {
      const float prod = running.x * in.x + running.y * in.y + running.z * in.z + running.w * in.w;
      const float sum = cuda_detail::block_sum(prod);
      if (threadIdx.x == 0) dot_partial[((bi * d.h + hh) * d.nc + c) * gridDim.x + blockIdx.x] = sum;
    }
    running = make_float4(fmaf(dc, running.x, own.x), fmaf(dc, running.y, own.y), fmaf(dc, running.z, own.z),
                          fmaf(dc, running.w, own.w));
  }
  if (last) store4(last + (bi * d.h + hh) * pn + e, running, vec);
}

// ---------------------------------------------------------------------------------------
// Tensor-core path (bf16 activations): the products run as mma.sync m16n8k16 bf16 with f32
// accumulation (kernels/cuda/ssd_mma.cuh). Operand tiles are bf16 in shared memory with rows
// padded by 8 elements (16 bytes), so ldmatrix reads are free of bank conflicts. The
// per-token quantities of every chunk are computed once by tokens_kernel.
using bf16 = __nv_bfloat16;
constexpr int kTcThreads = 128;  // 4 warps
constexpr int kTcPad = 8;        // bf16 elements of row padding
// Two shared-memory tiles picked by parity (a select, where an array of two pointers indexed
// at run time would live in local memory).
struct TilePair {
  bf16* even;
  bf16* odd;
  __device__ bf16* operator[](int i) const { return (i & 1) ? odd : even; }
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

// Grid (h, nc, b): the per-token quantities of one chunk of one head, and the chunk decay.
template <typename T>
__global__ void __launch_bounds__(kThreads) tokens_kernel(Dims d, SsdArgs<T, float> a, TokenInfo ti, float* decay) {
  __shared__ ChunkTokens tk;
  const int64_t hh = blockIdx.x, c = blockIdx.y, bi = blockIdx.z;
  prep_chunk(d, a, bi, c, hh, tk);
  const int tid = threadIdx.x;
  if (tid < d.Q) {
    const int64_t at = d.tok(bi, hh, c) + tid;
    ti.dt[at] = tk.dt[tid];
    ti.grad[at] = tk.grad[tid];
    ti.cum[at] = tk.cum[tid];
    ti.first[at] = tk.first[tid] | (carries(tk, tid) ? kCarries : 0);
    ti.crel[at] = static_cast<float>((tk.cum[tid] - tk.cum[tid - tid % kTile]) * kLog2e);
  }
  if (tid == 0) decay[(bi * d.nc + c) * d.h + hh] = chunk_decay(tk);
}

// rows x cols bf16 from global rows (src + r * stride, 16-byte aligned) into dst (row stride
// ld), zeros from row valid on. cols is a multiple of 8. Asynchronous (cp.async): the tile is
// there after tile_sync().
// The thread's (row, column) steps by blockDim.x 8-element vectors at a time without a
// division per vector.
__device__ __forceinline__ void load_rows(bf16* dst, int ld, const bf16* src, int64_t stride, int rows, int valid,
                                          int cols) {
  const int vec = cols / 8, dr = blockDim.x / vec, dc = (blockDim.x % vec) * 8;
  int r = threadIdx.x / vec, cc = (threadIdx.x % vec) * 8;
  while (r < rows) {
    ssd_mma::cp_async16(dst + r * ld + cc, r < valid ? src + r * stride + cc : src, r < valid);
    r += dr;
    cc += dc;
    if (cc >= cols) {
      cc -= cols;
      ++r;
    }
  }
}

// Waits for this thread's asynchronous copies, then for the block.
__device__ __forceinline__ void tile_sync() {
  ssd_mma::cp_async_wait_all();
  __syncthreads();
}

// Loaders that pass through registers issue kBatch loads per thread before their stores, so
// several are in flight at once.
constexpr int kBatch = 4;

// A (rows, n) f32 state (rows = p) into dst (row stride ld) as bf16.
// Element 4 i of the state sits at row 4 i / n, column 4 i % n; the thread's row and column
// advance by 4 blockDim.x elements per step without a division. Eight loads per thread are
// in flight at once (the callers run it before their registers fill up).
__device__ __forceinline__ void load_state_bf16(bf16* dst, int ld, const float* S, int rows, int n) {
  constexpr int kStateBatch = 8;
  const int total = rows * n / 4, step = 4 * blockDim.x, drow = step / n, dk = step % n;
  int row = 4 * threadIdx.x / n, k = 4 * threadIdx.x % n;
  for (int i0 = threadIdx.x; i0 < total; i0 += kStateBatch * blockDim.x) {
    float4 v[kStateBatch];
#pragma unroll
    for (int u = 0; u < kStateBatch; ++u) {
      const int i = i0 + u * blockDim.x;
      if (i < total) v[u] = *reinterpret_cast<const float4*>(S + 4 * i);
    }
#pragma unroll
    for (int u = 0; u < kStateBatch; ++u) {
      if (i0 + u * blockDim.x >= total) continue;
      uint2 pk;
      pk.x = ssd_mma::pack(v[u].x, v[u].y);
      pk.y = ssd_mma::pack(v[u].z, v[u].w);
      *reinterpret_cast<uint2*>(dst + row * ld + k) = pk;
      row += drow;
      k += dk;
      if (k >= n) {
        k -= n;
        ++row;
      }
    }
  }
}

// The same with each row scaled by w[r] and, when z is given, each element by silu(z); the
// f32 products go out as NS bf16 tiles whose sum is the product: part 0 = bf16(v), part 1 =
// bf16(v - part 0), ... (a product with part 0 alone would round every term to 8 bits; two
// parts keep about 16, three about 24).
// Part k goes to parts + k * part_stride.
template <int NS>
__device__ __forceinline__ void load_rows_split(bf16* parts, int part_stride, int ld, const bf16* src, const bf16* z,
                                                int64_t stride, int rows, int valid, int cols, const float* w) {
  const int vec = cols / 8, total = rows * vec;
  for (int i0 = threadIdx.x; i0 < total; i0 += kBatch * blockDim.x) {
    uint4 raw[kBatch], zr[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + u * blockDim.x;
      const int r = i / vec, cc = (i % vec) * 8;
      raw[u] = make_uint4(0, 0, 0, 0);
      zr[u] = raw[u];
      if (i < total && r < valid) {
        raw[u] = *reinterpret_cast<const uint4*>(src + r * stride + cc);
        if (z) zr[u] = *reinterpret_cast<const uint4*>(z + r * stride + cc);
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int i = i0 + u * blockDim.x;
      if (i >= total) continue;
      const int r = i / vec, cc = (i % vec) * 8;
      uint4 out[NS];
#pragma unroll
      for (int k = 0; k < NS; ++k) out[k] = make_uint4(0, 0, 0, 0);
      if (r < valid) {
        const bf16* xv = reinterpret_cast<const bf16*>(&raw[u]);
        const bf16* zv = reinterpret_cast<const bf16*>(&zr[u]);
        const float wr = w[r];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          float e = wr * to_f32(xv[j]);
          if (z) {
            const float zj = to_f32(zv[j]);
            e *= zj * sigmoid_fast(zj);
          }
#pragma unroll
          for (int k = 0; k < NS; ++k) {
            const bf16 part = from_f32<bf16>(e);
            reinterpret_cast<bf16*>(&out[k])[j] = part;
            e -= to_f32(part);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < NS; ++k) *reinterpret_cast<uint4*>(parts + k * part_stride + r * ld + cc) = out[k];
    }
  }
}

// Forward (1) and backward (1) on tensor cores: out (p, n) = sum_t (w_t v_t) ⊗ k_t as
// (W V)^T K, with V and K the chunk's (64-token) tiles. Forward: v = x, k = B,
// w = exp(cum_last - cum_t) dt_t; backward: v = dout silu(z), k = C, w = e_t. W V is split
// into bf16 parts (three in the forward, whose final state is held to f32 accuracy; two in
// the backward), one product each.
// Grid (h * (p / PB) * (n / NB), nc, b); the block owns a (PB, NB) tile of the state, its
// 4 warps a (16, NTW * 8) tile each (PB / 16 warp rows).
template <int PB, int NTW, bool kGrad>
__global__ void __launch_bounds__(kTcThreads) chunk_state_tc_kernel(Dims d, SsdArgs<bf16, float> a, const bf16* dout,
                                                                    TokenInfo ti, float* out) {
  using namespace ssd_mma;
  constexpr int WR = PB / 16, WC = 4 / WR, NB = NTW * 8 * WC;
  constexpr int ldv = PB + kTcPad, ldk = NB + kTcPad;
  __shared__ float w[kMaxChunk];
  constexpr int NS = kGrad ? 2 : 3;
  __shared__ __align__(16) bf16 vparts[NS][kTile * ldv];  // (64 tokens, PB) w_t v_t in NS bf16 parts
  __shared__ __align__(16) bf16 kt[kTile * ldk];  // (64 tokens, NB) k_t
  const int nblocks = static_cast<int>(d.n / NB), pblocks = static_cast<int>(d.p / PB);
  const int nb = blockIdx.x % nblocks, pb = (blockIdx.x / nblocks) % pblocks;
  const int64_t hh = blockIdx.x / (nblocks * pblocks), c = blockIdx.y, bi = blockIdx.z, gg = hh / d.hpg;
  const int64_t c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int64_t tok0 = d.tok(bi, hh, c);
  {
    const double cum_last = ti.cum[tok0 + len - 1];
    const int first_last = ti.first[tok0 + len - 1] & (kCarries - 1);
    for (int s = threadIdx.x; s < len; s += kTcThreads) {
      const int fs = ti.first[tok0 + s];
      if (kGrad) w[s] = (fs & kCarries) ? expf(static_cast<float>(ti.cum[tok0 + s])) : 0.0f;
      else w[s] = s >= first_last ? expf(static_cast<float>(cum_last - ti.cum[tok0 + s])) * ti.dt[tok0 + s] : 0.0f;
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wr = warp % WR, wc = warp / WR;
  float acc[NTW][4] = {};
  const int64_t vstride = d.h * d.p, kstride = d.g * d.n;
  for (int s0 = 0; s0 < len; s0 += kTile) {
    tile_sync();  // w is written; the previous tiles are read
    const int valid = min(kTile, len - s0);
    const int64_t xoff = d.x(bi, c0 + s0, hh) + pb * PB;
    load_rows_split<NS>(&vparts[0][0], kTile * ldv, ldv, (kGrad ? dout : a.x) + xoff,
                        kGrad && a.z ? a.z + xoff : nullptr, vstride, kTile, valid, PB, w + s0);
    load_rows(kt, ldk, (kGrad ? a.C : a.B) + d.bc(bi, c0 + s0, gg) + nb * NB, kstride, kTile, valid, NB);
    tile_sync();
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      // Smallest part first, so the large terms are added last.
#pragma unroll
      for (int part = NS - 1; part >= 0; --part) {
        uint32_t af[4];
        ldsm_x4_t(af, frag_cols16(vparts[part], ldv, kk * 16, wr * 16));
        if constexpr (NTW == 1) {
          uint32_t bfr[2];
          ldsm_x2_t(bfr, frag_rows16(kt, ldk, kk * 16, wc * 8));
          mma(acc[0], af, bfr[0], bfr[1]);
        } else {
#pragma unroll
          for (int j = 0; j < NTW / 2; ++j) {
            uint32_t bfr[4];
            ldsm_x4_t(bfr, frag_rows16(kt, ldk, kk * 16, wc * NTW * 8 + j * 16));
            mma(acc[2 * j], af, bfr[0], bfr[1]);
            mma(acc[2 * j + 1], af, bfr[2], bfr[3]);
          }
        }
      }
    }
  }
  float* dst = out + d.st(bi, c, hh) + (pb * PB + wr * 16 + (lane >> 2)) * d.n + nb * NB + wc * NTW * 8 + 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < NTW; ++j) {
    *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(acc[j][0], acc[j][1]);
    *reinterpret_cast<float2*>(dst + 8 * j + 8 * d.n) = make_float2(acc[j][2], acc[j][3]);
  }
}

// (16 rows, NT * 8 columns) += the warp's rows of A (row-major, ld lda, from row ra) times
// the rows of B (NT * 8 rows of length K, ld ldb) transposed: A B^T over K.
template <int K, int NT = 8>
__device__ __forceinline__ void warp_abt(float (&acc)[NT][4], const bf16* A, int lda, int ra, const bf16* B,
                                         int ldb) {
  using namespace ssd_mma;
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t af[4];
    ldsm_x4(af, frag_rows16(A, lda, ra, k0));
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      uint32_t bfr[4];
      ldsm_x4(bfr, frag_cols16(B, ldb, 16 * j, k0));
      mma(acc[2 * j], af, bfr[0], bfr[1]);
      mma(acc[2 * j + 1], af, bfr[2], bfr[3]);
    }
  }
}

// acc (16 rows, NT * 8 columns) += frags (the warp's 16 x 64 A operand) times B (64 rows of
// NT * 8 columns, row-major, ld ldb).
template <int NT>
__device__ __forceinline__ void warp_frag_b(float (&acc)[NT][4], const uint32_t (&frags)[4][4], const bf16* B,
                                            int ldb) {
  using namespace ssd_mma;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      uint32_t bfr[4];
      ldsm_x4_t(bfr, frag_rows16(B, ldb, 16 * kk, 16 * j));
      mma(acc[2 * j], frags[kk], bfr[0], bfr[1]);
      mma(acc[2 * j + 1], frags[kk], bfr[2], bfr[3]);
    }
}

// Rows of an A fragment (ldsm_x4 at frag_rows16) scaled and rounded back to bf16: registers 0
// and 2 hold the lane's row lane / 4, 1 and 3 the row 8 below; wa and wb their factors.
__device__ __forceinline__ void scale_rows(uint32_t (&af)[4], float wa, float wb) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&af[i]));
    const float w = (i & 1) ? wb : wa;
    af[i] = ssd_mma::pack(w * v.x, w * v.y);
  }
}

// acc (16 rows, NT * 8 columns) += A' B over K, where A' is the warp's rows of A (row-major,
// ld lda, from row ra) with the lane's upper row scaled by wa and its lower row (8 below) by
// wb, rounded to bf16 in the fragments, and B is K rows of NT * 8 columns (row-major, ld ldb).
template <int K, int NT>
__device__ __forceinline__ void warp_scaled_ab(float (&acc)[NT][4], const bf16* A, int lda, int ra, float wa,
                                               float wb, const bf16* B, int ldb) {
  using namespace ssd_mma;
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t af[4];
    ldsm_x4(af, frag_rows16(A, lda, ra, k0));
    scale_rows(af, wa, wb);
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      uint32_t bfr[4];
      ldsm_x4_t(bfr, frag_rows16(B, ldb, k0, 16 * j));
      mma(acc[2 * j], af, bfr[0], bfr[1]);
      mma(acc[2 * j + 1], af, bfr[2], bfr[3]);
    }
  }
}

// C B^T shared across heads. The products C_t B_s^T (the forward scan's and the backward rows
// kernel's scores) and B_s C_t^T (the cols kernel's) depend on the chunk, the tile pair
// s <= t and the group, not on the head: cb_tc_kernel computes them once and stores them as
// f32 in accumulator-fragment order: per (b, nc, g, pair) layouts x 4096 floats (the
// backward's two: rows layout, then cols layout; the forward's one: rows), float4 (warp, j, lane) at ((warp * 8 + j) * 32 + lane) * 4 holding acc[j][0..3]
// of that lane. Pair (t, s) is t (t + 1) / 2 + s. The forward scan reads each thread's 32
// floats straight into registers; the backward kernels copy them into the same offsets of
// their shared memory (cp.async, thread-private, so no block barrier guards them).
constexpr int kCbTile = kTile * kTile;  // floats per product tile
__host__ __device__ inline int64_t cb_pairs(int64_t ntt) { return ntt * (ntt + 1) / 2; }
__device__ __forceinline__ const float* cb_tile(const Dims& d, const float* cb, int layouts, int64_t bi, int64_t c,
                                                int64_t gg, int t, int s, int layout) {
  return cb + ((((bi * d.nc + c) * d.g + gg) * cb_pairs(d.ntt) + t * (t + 1) / 2 + s) * layouts + layout) * kCbTile;
}
__device__ __forceinline__ int cb_frag(int j) { return ((static_cast<int>(threadIdx.x >> 5) * 8 + j) * 32 + (threadIdx.x & 31)) * 4; }
// This thread's 32 floats of a tile into dst (a fragment-order tile in shared memory).
__device__ __forceinline__ void load_cb(float* dst, const float* src) {
#pragma unroll
  for (int j = 0; j < 8; ++j) ssd_mma::cp_async16(dst + cb_frag(j), src + cb_frag(j), true);
  ssd_mma::cp_async_commit();
}
// This thread's 32 floats of a tile (shared or global memory) into accumulator fragments.
__device__ __forceinline__ void read_cb(float (&g)[8][4], const float* src) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float4 v = *reinterpret_cast<const float4*>(src + cb_frag(j));
    g[j][0] = v.x;
    g[j][1] = v.y;
    g[j][2] = v.z;
    g[j][3] = v.w;
  }
}

// Grid (cb_pairs(ntt), nc * g, b): the products of one tile pair (t, s <= t), 4 warps of
// 16 rows each; the second layout (B_s C_t^T) only when both is set (the backward). Pairs
// whose t tile lies past the chunk's end are skipped (no kernel reads them). The state
// dimension passes through shared memory NB (<= 128) columns at a time, which is the order of
// k-steps warp_abt<n> takes, so the bits do not depend on NB.
template <int NB>
__global__ void __launch_bounds__(kTcThreads) cb_tc_kernel(Dims d, SsdArgs<bf16, float> a, bool both, float* cb) {
  constexpr int ldn = NB + kTcPad;
  __shared__ __align__(16) bf16 ct[kTile * ldn];  // (64, NB) C_t
  __shared__ __align__(16) bf16 bs[kTile * ldn];  // (64, NB) B_s
  const int pair = blockIdx.x;
  int t = 0;
  while ((t + 1) * (t + 2) / 2 <= pair) ++t;
  const int s = pair - t * (t + 1) / 2;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int t0 = t * kTile, s0 = s * kTile;
  if (t0 >= len) return;
  const int64_t bcstride = d.g * d.n;
  const int rw = (threadIdx.x >> 5) * 16;
  float g[8][4] = {}, gt[8][4] = {};
  for (int k0 = 0; k0 < d.n; k0 += NB) {
    if (k0 > 0) __syncthreads();  // the previous segment is read
    load_rows(ct, ldn, a.C + d.bc(bi, c0 + t0, gg) + k0, bcstride, kTile, min(kTile, len - t0), NB);
    load_rows(bs, ldn, a.B + d.bc(bi, c0 + s0, gg) + k0, bcstride, kTile, min(kTile, len - s0), NB);
    tile_sync();
    warp_abt<NB>(g, ct, ldn, rw, bs, ldn);
    if (both) warp_abt<NB>(gt, bs, ldn, rw, ct, ldn);
  }
  float* dst = cb + ((((bi * d.nc + c) * d.g + gg) * cb_pairs(d.ntt) + pair) * (both ? 2 : 1)) * kCbTile;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    *reinterpret_cast<float4*>(dst + cb_frag(j)) = make_float4(g[j][0], g[j][1], g[j][2], g[j][3]);
  if (both) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
      *reinterpret_cast<float4*>(dst + kCbTile + cb_frag(j)) = make_float4(gt[j][0], gt[j][1], gt[j][2], gt[j][3]);
  }
}

// Shared memory of chunk_scan_tc_kernel, in bytes: token quantities, then bf16 tiles. Region
// a holds C_t until the entering state's product is read, then the x_s of odd s tiles.
struct ScanTcSmem {
  int cum, dt, first, crel, a, sin, xs, total;
};
__host__ __device__ inline ScanTcSmem scan_tc_smem(int64_t n, int p) {
  ScanTcSmem s;
  const int ldn = static_cast<int>(n) + kTcPad, ldx = p + kTcPad;
  s.cum = 0;
  s.dt = s.cum + 8 * kMaxChunk;
  s.first = s.dt + 4 * kMaxChunk;
  s.crel = s.first + 4 * kMaxChunk;
  s.a = s.crel + 4 * kMaxChunk;                       // (64, n) C_t, then (64, p) x_s
  s.sin = s.a + 2 * kTile * (ldn > ldx ? ldn : ldx);  // (p, n) S_in
  s.xs = s.sin + 2 * p * ldn;                         // (64, p) x_s of even s tiles
  s.total = s.xs + 2 * kTile * ldx;
  return s;
}

// The token quantities of chunk tokens [0, count) into shared memory.
__device__ __forceinline__ void load_tokens(const TokenInfo& ti, int64_t tok0, int count, double* cum, float* dts,
                                            int* first, float* crel) {
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    cum[i] = ti.cum[tok0 + i];
    dts[i] = ti.dt[tok0 + i];
    first[i] = ti.first[tok0 + i];
    crel[i] = ti.crel[tok0 + i];
  }
}

// The decay weights of one 8-column step j of a warp's 16 x 64 score block whose columns start
// at s0 (sj = s0 + 8 j + 2 (lane % 4) and sj + 1) for its rows ta and tb = ta + 8:
// l = exp(cum_t - cum_s) dt_s where first_t <= s <= t, else 0, computed as
// exp2(tr - crel_s) dt_s with tr the row's (cum_t - cum_s0) log2(e). l[0], l[1]: row ta,
// l[2], l[3]: row tb. fa / fb: the rows' first tokens (past the end: kMaxChunk, so no column
// reaches them). full: every column reaches both rows (an earlier tile, no document start
// after s0 up to the rows), so no compares.
__device__ __forceinline__ void row_decay(float (&l)[4], int sj, bool full, int ta, int tb, int fa, int fb, float tra,
                                          float trb, const float* crel, const float* dts) {
  const float2 cr = *reinterpret_cast<const float2*>(crel + sj);
  const float2 dt = *reinterpret_cast<const float2*>(dts + sj);
  l[0] = exp2_ftz(tra - cr.x) * dt.x;
  l[1] = exp2_ftz(tra - cr.y) * dt.y;
  l[2] = exp2_ftz(trb - cr.x) * dt.x;
  l[3] = exp2_ftz(trb - cr.y) * dt.y;
  if (!full) {
    if (!(sj <= ta && sj >= fa)) l[0] = 0.0f;
    if (!(sj + 1 <= ta && sj + 1 >= fa)) l[1] = 0.0f;
    if (!(sj <= tb && sj >= fb)) l[2] = 0.0f;
    if (!(sj + 1 <= tb && sj + 1 >= fb)) l[3] = 0.0f;
  }
}

// The cols kernel's weights of one 8-column step: columns are output tokens tj and tj + 1,
// rows the input tokens sa and sb = sa + 8 (va / vb: before the chunk's end):
// l = exp(cum_t - cum_s) = exp2(crel_t - sr) where s reaches t (first_t <= s <= t, t before
// the end), else 0, with sr the row's (cum_s - cum_t0) log2(e). full: every column reaches
// both rows, so no compares.
__device__ __forceinline__ void col_decay(float (&l)[4], int tj, bool full, int sa, int sb, bool va, bool vb, int len,
                                          float sra, float srb, const float* crel, const int* first) {
  const float2 cr = *reinterpret_cast<const float2*>(crel + tj);
  l[0] = exp2_ftz(cr.x - sra);
  l[1] = exp2_ftz(cr.y - sra);
  l[2] = exp2_ftz(cr.x - srb);
  l[3] = exp2_ftz(cr.y - srb);
  if (!full) {
    const int2 fi = *reinterpret_cast<const int2*>(first + tj);
    const int f0 = fi.x & (kCarries - 1), f1 = fi.y & (kCarries - 1);
    const bool in0 = tj < len, in1 = tj + 1 < len;
    if (!(va && in0 && sa <= tj && sa >= f0)) l[0] = 0.0f;
    if (!(va && in1 && sa <= tj + 1 && sa >= f1)) l[1] = 0.0f;
    if (!(vb && in0 && sb <= tj && sb >= f0)) l[2] = 0.0f;
    if (!(vb && in1 && sb <= tj + 1 && sb >= f1)) l[3] = 0.0f;
  }
}

// An epilogue's (b, l, h, p) input at the lane's accumulator columns of one row (offset
// off): NP bf16 pairs. All the loads are issued before any value is used; loaded between the
// epilogue's stores (which may alias them as far as the compiler knows), each would wait for
// the one before.
template <int NP>
__device__ __forceinline__ void load_row_pairs(__nv_bfloat162 (&v)[NP], const bf16* src, int64_t off) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < NP; ++j) v[j] = *reinterpret_cast<const __nv_bfloat162*>(src + off + 8 * j + 2 * (lane & 3));
}

// Forward (3) on tensor cores. Grid (ntt * h, nc, b): the block owns a 64-token tile t of
// one chunk of one head, warp w its rows 16 w .. 16 w + 15. Y = e_t (C_t S_in^T) first, then
// per input tile s <= t: G = C_t B_s^T (cb_tc_kernel's f32 tiles, read into registers one pair
// ahead), masked and scaled to G ∘ exp(cum_t - cum_s) dt_s, rounded to bf16 as the A operand
// of Y += G X_s. X_s tiles are double-buffered (the odd ones where C_t was).
template <int P>
__global__ void __launch_bounds__(kTcThreads) chunk_scan_tc_kernel(Dims d, SsdArgs<bf16, float> a, TokenInfo ti,
                                                                   const float* chunk_states, const float* cbt,
                                                                   bf16* out) {
  using namespace ssd_mma;
  constexpr int NP = P / 8, ldx = P + kTcPad;
  extern __shared__ __align__(16) unsigned char smem_tc[];
  const ScanTcSmem L = scan_tc_smem(d.n, P);
  double* cum = reinterpret_cast<double*>(smem_tc + L.cum);
  float* dts = reinterpret_cast<float*>(smem_tc + L.dt);
  int* first = reinterpret_cast<int*>(smem_tc + L.first);
  float* crel = reinterpret_cast<float*>(smem_tc + L.crel);
  bf16* ct = reinterpret_cast<bf16*>(smem_tc + L.a);     // (64, n) C_t
  bf16* sin = reinterpret_cast<bf16*>(smem_tc + L.sin);  // (p, n) S_in
  const TilePair xb{reinterpret_cast<bf16*>(smem_tc + L.xs), ct};  // (64, p) x_s of even / odd s tiles
  const int ntt = static_cast<int>(d.ntt);
  const int tile = blockIdx.x % ntt;
  const int64_t hh = blockIdx.x / ntt, c = blockIdx.y, bi = blockIdx.z, gg = hh / d.hpg, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int t0 = tile * kTile;
  if (t0 >= len) return;
  const int n = static_cast<int>(d.n), ldn = n + kTcPad;
  const int tvalid = min(kTile, len - t0);
  const int64_t tok0 = d.tok(bi, hh, c);
  const int64_t bcstride = d.g * d.n, xstride = d.h * d.p;
  const bool carry = (ti.first[tok0 + t0] & kCarries) != 0;  // the entering state reaches the tile
  load_rows(xb[0], ldx, a.x + d.x(bi, c0, hh), xstride, kTile, min(kTile, len), P);
  if (carry) load_rows(ct, ldn, a.C + d.bc(bi, c0 + t0, gg), bcstride, kTile, tvalid, n);
  load_tokens(ti, tok0, t0 + tvalid, cum, dts, first, crel);
  if (carry) load_state_bf16(sin, ldn, chunk_states + d.st(bi, c, hh), P, n);  // S_in (p, n) as bf16
  float g[8][4];  // (16 rows, 64 columns s) of C_t B_s^T
  read_cb(g, cb_tile(d, cbt, 1, bi, c, gg, tile, 0, 0));
  tile_sync();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rw = warp * 16;                 // the warp's first row in the tile
  const int ta = t0 + rw + (lane >> 2);     // this lane's rows in the chunk: ta, ta + 8
  const int tb = ta + 8;
  float y[NP][4] = {};
  if (carry) {
    for (int k0 = 0; k0 < n; k0 += 16) {
      uint32_t af[4];
      ldsm_x4(af, frag_rows16(ct, ldn, rw, k0));
#pragma unroll
      for (int j = 0; j < NP / 2; ++j) {
        uint32_t bfr[4];
        ldsm_x4(bfr, frag_cols16(sin, ldn, 16 * j, k0));
        mma(y[2 * j], af, bfr[0], bfr[1]);
        mma(y[2 * j + 1], af, bfr[2], bfr[3]);
      }
    }
    const float ea = ta < len && (first[ta] & kCarries) ? expf(static_cast<float>(cum[ta])) : 0.0f;
    const float eb = tb < len && (first[tb] & kCarries) ? expf(static_cast<float>(cum[tb])) : 0.0f;
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      y[j][0] *= ea;
      y[j][1] *= ea;
      y[j][2] *= eb;
      y[j][3] *= eb;
    }
    if (tile > 0) __syncthreads();  // C_t is read: its region takes x_1
  }
  const double cuma = ta < len ? cum[ta] : 0.0, cumb = tb < len ? cum[tb] : 0.0;
  const int fa = ta < len ? first[ta] & (kCarries - 1) : kMaxChunk;  // no column reaches a row past the end
  const int fb = tb < len ? first[tb] & (kCarries - 1) : kMaxChunk;
  // The first token of the last row's document when the tile is full (first only grows).
  const int flast = tvalid == kTile ? first[t0 + kTile - 1] & (kCarries - 1) : kMaxChunk;
  for (int st = 0; st <= tile; ++st) {
    const int s0 = st * kTile;
    if (st < tile)
      load_rows(xb[(st + 1) & 1], ldx, a.x + d.x(bi, c0 + s0 + kTile, hh), xstride, kTile,
                min(kTile, len - s0 - kTile), P);
    const float tra = static_cast<float>((cuma - cum[s0]) * kLog2e), trb = static_cast<float>((cumb - cum[s0]) * kLog2e);
    const bool full = st < tile && flast <= s0;
    uint32_t pa[4][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      float l[4];
      row_decay(l, s0 + 8 * j + 2 * (lane & 3), full, ta, tb, fa, fb, tra, trb, crel, dts);
      pa[j / 2][(j & 1) * 2] = pack(g[j][0] * l[0], g[j][1] * l[1]);
      pa[j / 2][(j & 1) * 2 + 1] = pack(g[j][2] * l[2], g[j][3] * l[3]);
    }
    if (st < tile) read_cb(g, cb_tile(d, cbt, 1, bi, c, gg, tile, st + 1, 0));  // in flight during the product
    warp_frag_b<NP>(y, pa, xb[st & 1], ldx);
    if (st < tile) tile_sync();  // x_{s+1} is here, and x_s is read before x_{s+2} replaces it
  }
  // xb[tile % 2] holds the block's own tile: y + D x, times silu(z).
  const bf16* xs = xb[tile & 1];
  const float* Dh = a.D ? a.D + (d.D_hp ? hh * P : hh) : nullptr;
  const int dstep = d.D_hp ? 1 : 0;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = half ? tb : ta;
    if (t >= len) continue;
    const int64_t off = d.x(bi, c0 + t, hh);
    const bf16* xrow = xs + (t - t0) * ldx;
    __nv_bfloat162 zv[NP];
    if (a.z) load_row_pairs<NP>(zv, a.z, off);
#pragma unroll
    for (int j = 0; j < NP; ++j) {
      const int pi = 8 * j + 2 * (lane & 3);
      float v0 = y[j][2 * half], v1 = y[j][2 * half + 1];
      if (Dh) {
        v0 = fmaf(__ldg(Dh + pi * dstep), to_f32(xrow[pi]), v0);
        v1 = fmaf(__ldg(Dh + (pi + 1) * dstep), to_f32(xrow[pi + 1]), v1);
      }
      if (a.z) {
        const float z0 = __low2float(zv[j]), z1 = __high2float(zv[j]);
        v0 *= z0 * sigmoid_fast(z0);
        v1 *= z1 * sigmoid_fast(z1);
      }
      *reinterpret_cast<__nv_bfloat162*>(out + off + pi) = __floats2bfloat162_rn(v0, v1);
    }
  }
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
  float* dD_hp;        // (h, p): dD_part summed over (b, nc, ntt)
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

// ---------------------------------------------------------------------------------------
// Backward (3a, 3b) on tensor cores. Heads are split into slices of hslice heads; a block
// loops over its slice and accumulates dC (rows) or dB (cols) over those heads in registers.
// With several slices, each writes an f32 partial (slices, b, l, g, n) that sum_slices_kernel
// adds in slice order. N is the state size (64 or 128 here: dC and dB live in registers).

// Shared memory of the backward tensor-core kernels, in bytes. Rows kernel: big0 / big1 the
// double-buffered B_s (big1 first holds S_in), tile_n C_t, xa / xb the double-buffered x_s,
// xc dy_t. Cols kernel: big0 / big1 the double-buffered C_t (big1 first holds dS_out), tile_n
// B_s, xa / xb the double-buffered dy_t, xc x_s. cbf: each thread's 32 f32 of the current
// C B^T tile pair, copied from the precomputed tiles (cb_tc_kernel) in accumulator-fragment
// order.
struct BwdTcSmem {
  int cum, dt, first, crel, big0, big1, tile_n, xa, xb, xc, red, cbf, total;
};
__host__ __device__ inline BwdTcSmem bwd_tc_smem(int n, int p) {
  BwdTcSmem s;
  const int ldn = n + kTcPad, ldx = p + kTcPad;
  s.cum = 0;
  s.dt = s.cum + 8 * kMaxChunk;
  s.first = s.dt + 4 * kMaxChunk;
  s.crel = s.first + 4 * kMaxChunk;
  s.big0 = s.crel + 4 * kMaxChunk;                      // (64, n)
  s.big1 = s.big0 + 2 * kTile * ldn;                    // (max(64, p), n)
  s.tile_n = s.big1 + 2 * (kTile > p ? kTile : p) * ldn;  // (64, n)
  s.xa = s.tile_n + 2 * kTile * ldn;                    // (64, p) each
  s.xb = s.xa + 2 * kTile * ldx;
  s.xc = s.xb + 2 * kTile * ldx;
  s.red = s.xc + 2 * kTile * ldx;                       // (4 warps, p) f32
  s.cbf = s.red + 4 * 4 * p;                            // (64, 64) f32 in fragment order
  s.total = s.cbf + 4 * kTile * kTile;
  return s;
}

// dy = dout silu(z), (b, l, h, p) bf16, 8 elements per thread.
__global__ void dy_kernel(const bf16* dout, const bf16* z, int64_t count8, bf16* dy) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count8) return;
  uint4 v = reinterpret_cast<const uint4*>(dout)[i];
  const uint4 zr = reinterpret_cast<const uint4*>(z)[i];
  bf16* o = reinterpret_cast<bf16*>(&v);
  const bf16* zv = reinterpret_cast<const bf16*>(&zr);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const float zj = to_f32(zv[j]);
    o[j] = from_f32<bf16>(to_f32(o[j]) * (zj * sigmoid_fast(zj)));
  }
  reinterpret_cast<uint4*>(dy)[i] = v;
}

// Sum over the 4 lanes of an accumulator row (lane / 4).
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// Writes a (16, N) warp tile of dC or dB (rows ra, ra + 8 of the chunk): bf16 when there is
// one slice, else the slice's f32 partial.
template <int NJ>
__device__ __forceinline__ void store_group_rows(const Dims& d, const float (&acc)[NJ][4], int64_t bi, int64_t c0,
                                                 int64_t gg, int ra, int len, int slice, int nslices, bf16* dst,
                                                 float* part) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int t = ra + 8 * half;
    if (t >= len) continue;
    const int64_t off = d.bc(bi, c0 + t, gg);
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
      const int k = 8 * j + 2 * (lane & 3);
      if (nslices == 1)
        *reinterpret_cast<__nv_bfloat162*>(dst + off + k) = __floats2bfloat162_rn(acc[j][2 * half], acc[j][2 * half + 1]);
      else
        *reinterpret_cast<float2*>(part + slice * d.b * d.l * d.g * d.n + off + k) =
            make_float2(acc[j][2 * half], acc[j][2 * half + 1]);
    }
  }
}

// Backward (3a) on tensor cores: grid (ntt * nslices, nc * g, b), rows are output tokens t
// of the block's tile, warp w its rows 16 w ..; per head of the slice:
//   Y = e_t C_t S_in^T + sum_s (CB ∘ L dt_s) X_s (the forward's pre-gate output, for dz),
//   W = L ∘ dt_s (dy_t . x_s), d cum_t = sum_s W ∘ CB + dy_t . (e_t C_t S_in^T),
//   dC_t += W B_s + e_t dy_t S_in, and dD's partial sum_t dy_t x_t.
// dy is dout silu(z) (or dout), (b, l, h, p) bf16.
// C_t B_s^T comes from cbt (cb_tc_kernel).
template <int P, int N>
__global__ void __launch_bounds__(kTcThreads) bwd_rows_tc_kernel(Dims d, SsdArgs<bf16, float> a,
                                                                 SsdGrads<bf16, float> gr, const bf16* dy,
                                                                 TokenInfo ti, const float* chunk_states,
                                                                 BwdScratch sc, int hslice, float* dC_part,
                                                                 const float* cbt) {
  using namespace ssd_mma;
  constexpr int NP = P / 8, NJ = N / 8, ldx = P + kTcPad, ldn = N + kTcPad;
  extern __shared__ __align__(16) unsigned char smem_tc[];
  const BwdTcSmem L = bwd_tc_smem(N, P);
  double* cum = reinterpret_cast<double*>(smem_tc + L.cum);
  float* dts = reinterpret_cast<float*>(smem_tc + L.dt);
  int* first = reinterpret_cast<int*>(smem_tc + L.first);
  float* crel = reinterpret_cast<float*>(smem_tc + L.crel);
  const TilePair bb{reinterpret_cast<bf16*>(smem_tc + L.big0), reinterpret_cast<bf16*>(smem_tc + L.big1)};
  const TilePair xb{reinterpret_cast<bf16*>(smem_tc + L.xa), reinterpret_cast<bf16*>(smem_tc + L.xb)};
  bf16* ct = reinterpret_cast<bf16*>(smem_tc + L.tile_n);  // (64, N) C_t
  bf16* dyt = reinterpret_cast<bf16*>(smem_tc + L.xc);     // (64, p) dy_t
  float* red = reinterpret_cast<float*>(smem_tc + L.red);  // (4, p)
  float* cbs = reinterpret_cast<float*>(smem_tc + L.cbf);  // (64, 64) C_t B_s^T, fragment order
  const int ntt = static_cast<int>(d.ntt), nslices = static_cast<int>(d.hpg / hslice);
  const int tile = blockIdx.x % ntt, slice = blockIdx.x / ntt;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int t0 = tile * kTile;
  if (t0 >= len) return;
  const int tvalid = min(kTile, len - t0);
  const int64_t bcstride = d.g * d.n, xstride = d.h * d.p;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rw = warp * 16, ta = t0 + rw + (lane >> 2), tb = ta + 8;
  load_rows(ct, ldn, a.C + d.bc(bi, c0 + t0, gg), bcstride, kTile, tvalid, N);
  float dC[NJ][4] = {};
  const int64_t h0 = gg * d.hpg + slice * hslice;
  for (int64_t hh = h0; hh < h0 + hslice; ++hh) {
    const int64_t tok0 = d.tok(bi, hh, c);
    const bool carry = (ti.first[tok0 + t0] & kCarries) != 0;
    auto prefetch = [&](int st) {  // B_s and x_s of input tile st into buffer st % 2
      const int s0 = st * kTile, valid = min(kTile, len - s0);
      load_rows(bb[st & 1], ldn, a.B + d.bc(bi, c0 + s0, gg), bcstride, kTile, valid, N);
      load_rows(xb[st & 1], ldx, a.x + d.x(bi, c0 + s0, hh), xstride, kTile, valid, P);
      cp_async_commit();
    };
    tile_sync();  // the previous head's tiles are read
    load_rows(dyt, ldx, dy + d.x(bi, c0 + t0, hh), xstride, kTile, tvalid, P);
    cp_async_commit();
    prefetch(0);
    load_cb(cbs, cb_tile(d, cbt, 2, bi, c, gg, tile, 0, 0));
    load_tokens(ti, tok0, t0 + tvalid, cum, dts, first, crel);
    if (carry) load_state_bf16(bb[1], ldn, chunk_states + d.st(bi, c, hh), P, N);
    cp_async_wait<2>();  // C_t and dy_t are here
    __syncthreads();
    float y[NP][4] = {};
    float dcum_a = 0.0f, dcum_b = 0.0f;
    if (carry) {
      const bf16* S = bb[1];  // (p, N)
      warp_abt<N, NP>(y, ct, ldn, rw, S, ldn);
      const float ea = ta < len && (first[ta] & kCarries) ? expf(static_cast<float>(cum[ta])) : 0.0f;
      const float eb = tb < len && (first[tb] & kCarries) ? expf(static_cast<float>(cum[tb])) : 0.0f;
      const bf16* dya = dyt + (ta - t0) * ldx;
      const bf16* dyb = dyt + (tb - t0) * ldx;
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int pi = 8 * j + 2 * (lane & 3);
        y[j][0] *= ea;
        y[j][1] *= ea;
        y[j][2] *= eb;
        y[j][3] *= eb;
        dcum_a = fmaf(to_f32(dya[pi]), y[j][0], fmaf(to_f32(dya[pi + 1]), y[j][1], dcum_a));
        dcum_b = fmaf(to_f32(dyb[pi]), y[j][2], fmaf(to_f32(dyb[pi + 1]), y[j][3], dcum_b));
      }
      // dC += (e dy) S_in, e_t dy_t rounded to bf16 in the A fragments.
      warp_scaled_ab<P, NJ>(dC, dyt, ldx, rw, ea, eb, S, ldn);
    }
    __syncthreads();  // S_in is read: its buffer takes the next tiles
    const double cuma = ta < len ? cum[ta] : 0.0, cumb = tb < len ? cum[tb] : 0.0;
    const int fa = ta < len ? first[ta] & (kCarries - 1) : kMaxChunk;
    const int fb = tb < len ? first[tb] & (kCarries - 1) : kMaxChunk;
    const int flast = tvalid == kTile ? first[t0 + kTile - 1] & (kCarries - 1) : kMaxChunk;  // as in the forward
    float rowz_a = 0.0f, rowz_b = 0.0f;
    for (int st = 0; st <= tile; ++st) {
      const int s0 = st * kTile;
      if (st < tile) {
        prefetch(st + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const bf16* sbuf = bb[st & 1];
      const bf16* xs = xb[st & 1];
      float g[8][4] = {}, dx[8][4] = {};  // C_t B_s^T and dy_t x_s^T, (16 rows, 64 columns s)
      read_cb(g, cbs);
      warp_abt<P>(dx, dyt, ldx, rw, xs, ldx);
      const float tra = static_cast<float>((cuma - cum[s0]) * kLog2e);
      const float trb = static_cast<float>((cumb - cum[s0]) * kLog2e);
      const bool full = st < tile && flast <= s0;
      uint32_t pa[4][4], wa[4][4];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float l[4], pm[4], wm[4];
        row_decay(l, s0 + 8 * j + 2 * (lane & 3), full, ta, tb, fa, fb, tra, trb, crel, dts);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          pm[e] = g[j][e] * l[e];
          wm[e] = dx[j][e] * l[e];
        }
        rowz_a = fmaf(wm[0], g[j][0], fmaf(wm[1], g[j][1], rowz_a));
        rowz_b = fmaf(wm[2], g[j][2], fmaf(wm[3], g[j][3], rowz_b));
        pa[j / 2][(j & 1) * 2] = pack(pm[0], pm[1]);
        pa[j / 2][(j & 1) * 2 + 1] = pack(pm[2], pm[3]);
        wa[j / 2][(j & 1) * 2] = pack(wm[0], wm[1]);
        wa[j / 2][(j & 1) * 2 + 1] = pack(wm[2], wm[3]);
      }
      // The next pair's scores, while this one's products run. The warp's reads of cbs are
      // done (__syncwarp orders them before the copy's writes; each thread copies only the
      // floats it reads itself).
      if (st < tile) {
        __syncwarp();
        load_cb(cbs, cb_tile(d, cbt, 2, bi, c, gg, tile, st + 1, 0));
      }
      warp_frag_b<NP>(y, pa, xs, ldx);
      warp_frag_b<NJ>(dC, wa, sbuf, ldn);
      __syncthreads();  // this buffer is read before the next prefetch refills it
    }
    const float dcta = quad_sum(rowz_a) + quad_sum(dcum_a), dctb = quad_sum(rowz_b) + quad_sum(dcum_b);
    if ((lane & 3) == 0) {
      if (ta < len) sc.dcum_t[tok0 + ta] = dcta;
      if (tb < len) sc.dcum_t[tok0 + tb] = dctb;
    }
    // dz = dout (y + D x) silu'(z); dD's partial sums dy x over the tile's rows, dy in f32.
    const bf16* xs = xb[tile & 1];  // the block's own x tile (the last s tile)
    const float* Dh = a.D ? a.D + (d.D_hp ? hh * P : hh) : nullptr;
    const int dstep = d.D_hp ? 1 : 0;
    float dd[NP][2] = {};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int t = half ? tb : ta;
      if (t >= len) continue;
      const int64_t off = d.x(bi, c0 + t, hh);
      const bf16* xrow = xs + (t - t0) * ldx;
      __nv_bfloat162 dov[NP], zv[NP];
      load_row_pairs<NP>(dov, gr.dout, off);
      if (a.z) load_row_pairs<NP>(zv, a.z, off);
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int pi = 8 * j + 2 * (lane & 3);
        const float x0 = to_f32(xrow[pi]), x1 = to_f32(xrow[pi + 1]);
        float dy0 = __low2float(dov[j]), dy1 = __high2float(dov[j]);
        if (a.z) {
          const float z0 = __low2float(zv[j]), z1 = __high2float(zv[j]);
          float v0 = y[j][2 * half], v1 = y[j][2 * half + 1];
          if (Dh) {
            v0 = fmaf(__ldg(Dh + pi * dstep), x0, v0);
            v1 = fmaf(__ldg(Dh + (pi + 1) * dstep), x1, v1);
          }
          const float sg0 = sigmoid_fast(z0), sg1 = sigmoid_fast(z1);
          *reinterpret_cast<__nv_bfloat162*>(gr.dz + off + pi) =
              __floats2bfloat162_rn(dy0 * v0 * silu_grad_from(z0, sg0), dy1 * v1 * silu_grad_from(z1, sg1));
          dy0 *= z0 * sg0;
          dy1 *= z1 * sg1;
        }
        dd[j][0] = fmaf(dy0, x0, dd[j][0]);
        dd[j][1] = fmaf(dy1, x1, dd[j][1]);
      }
    }
    if (a.D) {
#pragma unroll
      for (int j = 0; j < NP; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = dd[j][e];
          v += __shfl_xor_sync(0xffffffffu, v, 4);
          v += __shfl_xor_sync(0xffffffffu, v, 8);
          v += __shfl_xor_sync(0xffffffffu, v, 16);
          if (lane < 4) red[warp * P + 8 * j + 2 * lane + e] = v;
        }
      __syncthreads();
      for (int pi = threadIdx.x; pi < P; pi += kTcThreads)
        sc.dD_part[(((bi * d.nc + c) * d.ntt + tile) * d.h + hh) * P + pi] =
            red[pi] + red[P + pi] + red[2 * P + pi] + red[3 * P + pi];
    }
  }
  store_group_rows(d, dC, bi, c0, gg, ta, len, slice, nslices, gr.dC, dC_part);
}

// Backward (3b) on tensor cores: grid (ntt * nslices, nc * g, b), rows are input tokens s
// of the block's tile; per head of the slice, with M = L^T ∘ (B_s C_t^T) and
// W^T = L^T ∘ dt_s (x_s . dy_t):
//   q_s = f_s dS_out B_s + sum_t M dy_t, dx_s = dt_s q_s + D dy_s, ddt_expl_s = x_s . q_s,
//   v_s = f_s dt_s x_s . (dS_out B_s), d cum_s = -(column sums of M dt_s DX) - v_s,
//   dB_s += sum_t W^T C_t + (f_s dt_s x_s) dS_out.
// B_s C_t^T comes from cbt, as in the rows kernel.
template <int P, int N>
__global__ void __launch_bounds__(kTcThreads) bwd_cols_tc_kernel(Dims d, SsdArgs<bf16, float> a,
                                                                 SsdGrads<bf16, float> gr, const bf16* dy,
                                                                 TokenInfo ti, BwdScratch sc, int hslice,
                                                                 float* dB_part, const float* cbt) {
  using namespace ssd_mma;
  constexpr int NP = P / 8, NJ = N / 8, ldx = P + kTcPad, ldn = N + kTcPad;
  extern __shared__ __align__(16) unsigned char smem_tc[];
  const BwdTcSmem L = bwd_tc_smem(N, P);
  double* cum = reinterpret_cast<double*>(smem_tc + L.cum);
  float* dts = reinterpret_cast<float*>(smem_tc + L.dt);
  int* first = reinterpret_cast<int*>(smem_tc + L.first);
  float* crel = reinterpret_cast<float*>(smem_tc + L.crel);
  const TilePair cb{reinterpret_cast<bf16*>(smem_tc + L.big0), reinterpret_cast<bf16*>(smem_tc + L.big1)};
  const TilePair yb{reinterpret_cast<bf16*>(smem_tc + L.xa), reinterpret_cast<bf16*>(smem_tc + L.xb)};
  bf16* bs = reinterpret_cast<bf16*>(smem_tc + L.tile_n);  // (64, N) B_s
  bf16* xs = reinterpret_cast<bf16*>(smem_tc + L.xc);      // (64, p) x_s
  float* cbs = reinterpret_cast<float*>(smem_tc + L.cbf);  // (64, 64) B_s C_t^T, fragment order
  const int ntt = static_cast<int>(d.ntt), nslices = static_cast<int>(d.hpg / hslice);
  const int tile = blockIdx.x % ntt, slice = blockIdx.x / ntt;
  const int64_t c = blockIdx.y / d.g, gg = blockIdx.y % d.g, bi = blockIdx.z, c0 = c * d.Q;
  const int len = static_cast<int>(min(d.Q, d.l - c0));
  const int s0 = tile * kTile;
  if (s0 >= len) return;
  const int svalid = min(kTile, len - s0), ntiles = (len + kTile - 1) / kTile;
  const int64_t bcstride = d.g * d.n, xstride = d.h * d.p;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int rw = warp * 16, sa = s0 + rw + (lane >> 2), sb = sa + 8;
  load_rows(bs, ldn, a.B + d.bc(bi, c0 + s0, gg), bcstride, kTile, svalid, N);
  float dB[NJ][4] = {};
  const int64_t h0 = gg * d.hpg + slice * hslice;
  for (int64_t hh = h0; hh < h0 + hslice; ++hh) {
    const int64_t tok0 = d.tok(bi, hh, c);
    auto prefetch = [&](int tt) {  // C_t and dy_t of output tile tt into buffer (tt - tile) % 2
      const int t0 = tt * kTile, valid = min(kTile, len - t0), buf = (tt - tile) & 1;
      load_rows(cb[buf], ldn, a.C + d.bc(bi, c0 + t0, gg), bcstride, kTile, valid, N);
      load_rows(yb[buf], ldx, dy + d.x(bi, c0 + t0, hh), xstride, kTile, valid, P);
      cp_async_commit();
    };
    tile_sync();  // the previous head's tiles are read
    load_rows(xs, ldx, a.x + d.x(bi, c0 + s0, hh), xstride, kTile, svalid, P);
    cp_async_commit();
    prefetch(tile);
    load_cb(cbs, cb_tile(d, cbt, 2, bi, c, gg, tile, tile, 1));
    load_tokens(ti, tok0, len, cum, dts, first, crel);
    load_state_bf16(cb[1], ldn, sc.dstates + d.st(bi, c, hh), P, N);
    cp_async_wait<2>();  // B_s and x_s are here
    __syncthreads();
    const double cum_last = cum[len - 1];
    const int first_last = first[len - 1] & (kCarries - 1);
    const bool va = sa < len, vb = sb < len;
    const double cuma = va ? cum[sa] : 0.0, cumb = vb ? cum[sb] : 0.0;
    const float dta = va ? dts[sa] : 0.0f, dtb = vb ? dts[sb] : 0.0f;
    const float fa = va && sa >= first_last ? expf(static_cast<float>(cum_last - cuma)) : 0.0f;
    const float fb = vb && sb >= first_last ? expf(static_cast<float>(cum_last - cumb)) : 0.0f;
    // q = f_s (B_s dS_out^T); v_s = dt_s x_s . q.
    const bf16* dS = cb[1];  // (p, N)
    float q[NP][4] = {};
    warp_abt<N, NP>(q, bs, ldn, rw, dS, ldn);
    float xdsb_a = 0.0f, xdsb_b = 0.0f;
    {
      const bf16* xa = xs + (sa - s0) * ldx;
      const bf16* xb = xs + (sb - s0) * ldx;
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int pi = 8 * j + 2 * (lane & 3);
        q[j][0] *= fa;
        q[j][1] *= fa;
        q[j][2] *= fb;
        q[j][3] *= fb;
        xdsb_a = fmaf(to_f32(xa[pi]), q[j][0], fmaf(to_f32(xa[pi + 1]), q[j][1], xdsb_a));
        xdsb_b = fmaf(to_f32(xb[pi]), q[j][2], fmaf(to_f32(xb[pi + 1]), q[j][3], xdsb_b));
      }
    }
    // dB += (f dt x) dS_out, f_s dt_s x_s rounded to bf16 in the A fragments.
    warp_scaled_ab<P, NJ>(dB, xs, ldx, rw, fa * dta, fb * dtb, dS, ldn);
    __syncthreads();  // dS_out is read: its buffer takes the next tiles
    float colz_a = 0.0f, colz_b = 0.0f;
    for (int tt = tile; tt < ntiles; ++tt) {
      const int t0 = tt * kTile;
      if (tt + 1 < ntiles) {
        prefetch(tt + 1);
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const bf16* ct = cb[(tt - tile) & 1];
      const bf16* dyt = yb[(tt - tile) & 1];
      float g[8][4] = {}, dx[8][4] = {};  // B_s C_t^T and x_s dy_t^T, (16 rows s, 64 columns t)
      read_cb(g, cbs);
      warp_abt<P>(dx, xs, ldx, rw, dyt, ldx);
      // exp(cum_t - cum_s) = exp2(crel_t - (cum_s - cum_t0) log2(e)).
      const float sra = static_cast<float>((cuma - cum[t0]) * kLog2e);
      const float srb = static_cast<float>((cumb - cum[t0]) * kLog2e);
      // Every column reaches every row: a later full tile with no document start after s0.
      const bool full = tt > tile && svalid == kTile && t0 + kTile <= len &&
                        (first[t0 + kTile - 1] & (kCarries - 1)) <= s0;
      uint32_t ma[4][4], wa[4][4];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        float l[4], mm[4], wm[4];
        col_decay(l, t0 + 8 * j + 2 * (lane & 3), full, sa, sb, va, vb, len, sra, srb, crel, first);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          mm[e] = l[e] * g[j][e];
          wm[e] = l[e] * (e < 2 ? dta : dtb) * dx[j][e];
        }
        colz_a = fmaf(wm[0], g[j][0], fmaf(wm[1], g[j][1], colz_a));
        colz_b = fmaf(wm[2], g[j][2], fmaf(wm[3], g[j][3], colz_b));
        ma[j / 2][(j & 1) * 2] = pack(mm[0], mm[1]);
        ma[j / 2][(j & 1) * 2 + 1] = pack(mm[2], mm[3]);
        wa[j / 2][(j & 1) * 2] = pack(wm[0], wm[1]);
        wa[j / 2][(j & 1) * 2 + 1] = pack(wm[2], wm[3]);
      }
      if (tt + 1 < ntiles) {  // the next pair's scores (see the rows kernel)
        __syncwarp();
        load_cb(cbs, cb_tile(d, cbt, 2, bi, c, gg, tt + 1, tile, 1));
      }
      warp_frag_b<NP>(q, ma, dyt, ldx);
      warp_frag_b<NJ>(dB, wa, ct, ldn);
      __syncthreads();  // this buffer is read before the next prefetch refills it
    }
    // dx_s = dt_s q_s + D dy_s; ddt_expl_s = x_s . q_s.
    const float* Dh = a.D ? a.D + (d.D_hp ? hh * P : hh) : nullptr;
    const int dstep = d.D_hp ? 1 : 0;
    float xq_a = 0.0f, xq_b = 0.0f;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int s = half ? sb : sa;
      if (s >= len) continue;
      const float dts_ = half ? dtb : dta;
      const int64_t off = d.x(bi, c0 + s, hh);
      const bf16* xrow = xs + (s - s0) * ldx;
      __nv_bfloat162 dov[NP], zv[NP];
      if (Dh) {
        load_row_pairs<NP>(dov, gr.dout, off);
        if (a.z) load_row_pairs<NP>(zv, a.z, off);
      }
      float xq = 0.0f;
#pragma unroll
      for (int j = 0; j < NP; ++j) {
        const int pi = 8 * j + 2 * (lane & 3);
        const float q0 = q[j][2 * half], q1 = q[j][2 * half + 1];
        xq = fmaf(to_f32(xrow[pi]), q0, fmaf(to_f32(xrow[pi + 1]), q1, xq));
        float v0 = dts_ * q0, v1 = dts_ * q1;
        if (Dh) {
          float dy0 = __low2float(dov[j]), dy1 = __high2float(dov[j]);
          if (a.z) {
            const float z0 = __low2float(zv[j]), z1 = __high2float(zv[j]);
            dy0 *= z0 * sigmoid_fast(z0);
            dy1 *= z1 * sigmoid_fast(z1);
          }
          v0 = fmaf(__ldg(Dh + pi * dstep), dy0, v0);
          v1 = fmaf(__ldg(Dh + (pi + 1) * dstep), dy1, v1);
        }
        *reinterpret_cast<__nv_bfloat162*>(gr.dx + off + pi) = __floats2bfloat162_rn(v0, v1);
      }
      if (half) xq_b = xq;
      else xq_a = xq;
    }
    xq_a = quad_sum(xq_a);
    xq_b = quad_sum(xq_b);
    xdsb_a = quad_sum(xdsb_a);
    xdsb_b = quad_sum(xdsb_b);
    colz_a = quad_sum(colz_a);
    colz_b = quad_sum(colz_b);
    if ((lane & 3) == 0) {
      if (va) {
        const float v = dta * xdsb_a;
        sc.ddt_expl[tok0 + sa] = xq_a;
        sc.vend[tok0 + sa] = v;
        sc.dcum_s[tok0 + sa] = -colz_a - v;
      }
      if (vb) {
        const float v = dtb * xdsb_b;
        sc.ddt_expl[tok0 + sb] = xq_b;
        sc.vend[tok0 + sb] = v;
        sc.dcum_s[tok0 + sb] = -colz_b - v;
      }
    }
  }
  store_group_rows(d, dB, bi, c0, gg, sa, len, slice, nslices, gr.dB, dB_part);
}

// out (count) = sum over slices in order of part (slices, count), as bf16.
__global__ void sum_slices_kernel(const float* part, int64_t slices, int64_t count, bf16* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  float sum = 0.0f;
  for (int64_t s = 0; s < slices; ++s) sum += part[s * count + i];
  out[i] = from_f32<bf16>(sum);
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

// out[i] = the sum of the partials part[o * inner + i * fold + f] over o < outer and
// f < fold (fold > 1: D of shape (h) from (h, p) partials). One block per output: each thread
// adds a fixed strided share in order, then a fixed-order block sum (no float atomics).
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const float* part, int64_t outer, int64_t inner,
                                                                int64_t fold, float* out) {
  const int64_t i = blockIdx.x;
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < outer * fold; j += kThreads) sum += part[(j / fold) * inner + i * fold + j % fold];
  sum = cuda_detail::block_sum(sum);
  if (threadIdx.x == 0) out[i] = sum;
}

// ---------------------------------------------------------------------------------------
// Decode step: one warp per (b, h, p) row of the state; lane l takes states l, l + 32, ... so
// a warp's loads and stores are coalesced, and y is summed by a fixed shuffle tree.
constexpr int kStepWarps = 4;
template <typename T>
__global__ void __launch_bounds__(kStepWarps * 32) ssd_step_kernel(Dims d, SsdArgs<T, float> a, float* states, T* out) {
  const int64_t i = blockIdx.x * int64_t(kStepWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
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
  for (int64_t k = lane; k < d.n; k += 32) {
    const float s = fmaf(decay, S[k], dt * xv * to_f32(Bv[k]));
    S[k] = s;
    y = fmaf(s, to_f32(Cv[k]), y);
  }
#pragma unroll
  for (int off = 16; off > 0; off /= 2) y += __shfl_xor_sync(0xffffffffu, y, off);
  if (lane != 0) return;
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

// Pieces of one device allocation, each 16-byte aligned. Run a carving once with base null to
// size the allocation, then again over the allocation.
struct Carver {
  char* base = nullptr;
  int64_t bytes = 0;
  template <typename E> E* take(int64_t count) {
    E* p = base ? reinterpret_cast<E*>(base + bytes) : nullptr;
    bytes += (static_cast<int64_t>(sizeof(E)) * count + 15) / 16 * 16;
    return p;
  }
};

// (b, h, nc * Q) per-token scratch of the tensor-core path.
TokenInfo token_info(Carver& cv, const Dims& d) {
  const int64_t tok = d.b * d.h * d.nc * d.Q;
  TokenInfo ti;
  ti.cum = cv.take<double>(tok);
  ti.dt = cv.take<float>(tok);
  ti.grad = cv.take<float>(tok);
  ti.first = cv.take<int>(tok);
  ti.crel = cv.take<float>(tok);
  return ti;
}

bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// The tensor-core kernels take bf16 activations whose pointers are 16-byte aligned (they load
// 8 elements at a time); other calls take the SIMT kernels.
bool use_tensor_cores(DType dtype, const SsdArgs<void, float>& a, std::initializer_list<const void*> more) {
  if (dtype != DType::bf16) return false;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  for (const void* p : {static_cast<const void*>(a.x), a.B, a.C, a.z, static_cast<const void*>(a.initial_states)})
    if (!aligned(p)) return false;
  for (const void* p : more)
    if (!aligned(p)) return false;
  return true;
}

// Forward (1) or backward (1) on tensor cores: the block tile (PB, NB) of the (p, n) state
// and the warps' share NTW of it, from p and n.
template <bool kGrad>
void launch_chunk_state_tc(const Dims& d, const SsdArgs<bf16, float>& a, const bf16* dout, const TokenInfo& ti,
                           float* out, cudaStream_t stream) {
  const int pb = d.p < 64 ? 32 : 64, nb = d.n < 128 ? static_cast<int>(d.n) : 128;
  const int wc = 4 / (pb / 16), ntw = nb / (8 * wc);
  const dim3 grid(static_cast<unsigned>(d.h * (d.p / pb) * (d.n / nb)), static_cast<unsigned>(d.nc),
                  static_cast<unsigned>(d.b));
  auto go = [&](auto kernel) {
    kernel<<<grid, kTcThreads, 0, stream>>>(d, a, dout, ti, out);
    SSM_CUDA_CHECK_LAUNCH();
  };
  if (pb == 64) {
    switch (ntw) {
      case 2: go(chunk_state_tc_kernel<64, 2, kGrad>); break;
      case 4: go(chunk_state_tc_kernel<64, 4, kGrad>); break;
      case 8: go(chunk_state_tc_kernel<64, 8, kGrad>); break;
      default: go(chunk_state_tc_kernel<64, 16, kGrad>); break;
    }
  } else {
    switch (ntw) {
      case 1: go(chunk_state_tc_kernel<32, 1, kGrad>); break;
      case 2: go(chunk_state_tc_kernel<32, 2, kGrad>); break;
      case 4: go(chunk_state_tc_kernel<32, 4, kGrad>); break;
      default: go(chunk_state_tc_kernel<32, 8, kGrad>); break;
    }
  }
}

// Heads per slice of the backward tensor-core kernels: the fewest slices (a divisor of the
// heads per group) that give about 4 blocks per multiprocessor.
int head_slice(const Dims& d) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t base = d.ntt * d.nc * d.g * d.b;
  const int64_t wanted = (4 * sms + base - 1) / base;
  for (int64_t ns = 1; ns <= d.hpg; ++ns)
    if (d.hpg % ns == 0 && ns >= wanted) return static_cast<int>(d.hpg / ns);
  return 1;
}

// C B^T of every tile pair of every chunk and group, (b, nc, g, pairs, layouts, 64 * 64) f32:
// one layout for the forward, two for the backward (cb_tc_kernel's both).
float* take_cb(Carver& cv, const Dims& d, int layouts) {
  return cv.take<float>(d.b * d.nc * d.g * cb_pairs(d.ntt) * layouts * kCbTile);
}
void launch_cb(const Dims& d, const SsdArgs<bf16, float>& a, bool both, float* cb, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(cb_pairs(d.ntt)), static_cast<unsigned>(d.nc * d.g), static_cast<unsigned>(d.b));
  auto go = [&](auto kernel) {
    kernel<<<grid, kTcThreads, 0, stream>>>(d, a, both, cb);
    SSM_CUDA_CHECK_LAUNCH();
  };
  switch (d.n) {
    case 16: go(cb_tc_kernel<16>); break;
    case 32: go(cb_tc_kernel<32>); break;
    case 64: go(cb_tc_kernel<64>); break;
    default: go(cb_tc_kernel<128>); break;  // 128 and 256
  }
}

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
  const bool tc = use_tensor_cores(dtype, a, {out, chunk_states});
  float* states = chunk_states;
  float* decay = nullptr;
  const bool vec = aligned16({chunk_states, a.initial_states, final_states});
  TokenInfo ti{};
  float* cbt = nullptr;
  auto carve = [&](Carver& cv) {
    if (!chunk_states) states = cv.take<float>(d.nc * state_elems);
    decay = cv.take<float>(d.b * d.nc * d.h);
    if (tc) {
      ti = token_info(cv, d);
      cbt = take_cb(cv, d, 1);
    }
  };
  Carver sizing;
  carve(sizing);
  void* pool = nullptr;
  SSM_CUDA_CHECK(cudaMallocAsync(&pool, sizing.bytes, stream));
  Carver cv{static_cast<char*>(pool)};
  carve(cv);
  cuda_detail::dispatch_f32_bf16(dtype, "ssd_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const SsdArgs<T, float> args = typed<T>(a);
    if constexpr (std::is_same_v<T, bf16>) {
      if (tc) {
        tokens_kernel<T><<<dim3(d.h, d.nc, d.b), kThreads, 0, stream>>>(d, args, ti, decay);
        SSM_CUDA_CHECK_LAUNCH();
        launch_chunk_state_tc<false>(d, args, nullptr, ti, states, stream);
        launch_cb(d, args, false, cbt, stream);
        pass_states_kernel<false><<<dim3(d.p * d.n / kPassElems, d.h, d.b), kPassThreads, 0, stream>>>(
            d, states, decay, a.initial_states, final_states, nullptr, nullptr, vec);
        SSM_CUDA_CHECK_LAUNCH();
        dispatch_p(d.p, [&](auto pc) {
          constexpr int P = decltype(pc)::value;
          auto kernel = chunk_scan_tc_kernel<P>;
          const size_t smem = scan_tc_smem(d.n, P).total;
          allow_smem(kernel, smem);
          kernel<<<dim3(d.ntt * d.h, d.nc, d.b), kTcThreads, smem, stream>>>(d, args, ti, states, cbt,
                                                                             static_cast<T*>(out));
          SSM_CUDA_CHECK_LAUNCH();
        });
        return;
      }
    }
    {
      auto kernel = chunk_state_kernel<T, false>;
      const size_t smem = state_smem(d);
      allow_smem(kernel, smem);
      kernel<<<dim3(d.h * d.p / 32, d.nc, d.b), kThreads, smem, stream>>>(d, args, nullptr, states, decay);
      SSM_CUDA_CHECK_LAUNCH();
    }
    pass_states_kernel<false><<<dim3(d.p * d.n / kPassElems, d.h, d.b), kPassThreads, 0, stream>>>(
        d, states, decay, a.initial_states, final_states, nullptr, nullptr, vec);
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
  const bool tc = use_tensor_cores(dtype, a, {chunk_states, g.dout, g.dx, g.dB, g.dC, g.dz, g.dinitial_states}) &&
                  (d.n == 64 || d.n == 128);
  const int hslice = tc ? head_slice(d) : 0;
  const int64_t nslices = tc ? d.hpg / hslice : 0;
  BwdScratch sc{};
  sc.splits = static_cast<int>(d.p * d.n / kPassElems);
  const bool vec = aligned16({chunk_states, g.dfinal_states, g.dinitial_states});
  TokenInfo ti{};
  float* dB_part = nullptr;
  float* dC_part = nullptr;
  bf16* dy_buf = nullptr;  // dout silu(z) when z is given
  float* cbt = nullptr;    // C B^T of every tile pair (take_cb)
  auto carve = [&](Carver& cv) {
    const int64_t tok = d.b * d.h * d.nc * d.Q;
    const int64_t per_chunk = d.b * d.nc * d.h;
    sc.dstates = cv.take<float>(d.nc * state_elems);
    sc.decay = cv.take<float>(per_chunk);
    sc.dot_partial = cv.take<float>(per_chunk * sc.splits);
    sc.dcum_t = cv.take<float>(tok);
    sc.dcum_s = cv.take<float>(tok);
    sc.ddt_expl = cv.take<float>(tok);
    sc.vend = cv.take<float>(tok);
    sc.dA_part = cv.take<float>(per_chunk);
    sc.dbias_part = cv.take<float>(per_chunk);
    sc.dD_part = cv.take<float>(per_chunk * d.ntt * d.p);
    sc.dD_hp = cv.take<float>(d.h * d.p);
    if (tc) {
      ti = token_info(cv, d);
      if (a.z) dy_buf = cv.take<bf16>(d.b * d.l * d.h * d.p);
      cbt = take_cb(cv, d, 2);
      if (nslices > 1) {
        dB_part = cv.take<float>(nslices * d.b * d.l * d.g * d.n);
        dC_part = cv.take<float>(nslices * d.b * d.l * d.g * d.n);
      }
    }
  };
  Carver sizing;
  carve(sizing);
  void* pool = nullptr;
  SSM_CUDA_CHECK(cudaMallocAsync(&pool, sizing.bytes, stream));
  Carver cv{static_cast<char*>(pool)};
  carve(cv);
  // tiles past the end stay 0
  if (a.D) SSM_CUDA_CHECK(cudaMemsetAsync(sc.dD_part, 0, 4 * d.b * d.nc * d.h * d.ntt * d.p, stream));
  cuda_detail::dispatch_f32_bf16(dtype, "ssd_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const SsdArgs<T, float> args = typed<T>(a);
    const SsdGrads<T, float> grads = typed<T>(g);
    if constexpr (std::is_same_v<T, bf16>) {
      if (tc) {
        tokens_kernel<T><<<dim3(d.h, d.nc, d.b), kThreads, 0, stream>>>(d, args, ti, sc.decay);
        SSM_CUDA_CHECK_LAUNCH();
        launch_chunk_state_tc<true>(d, args, grads.dout, ti, sc.dstates, stream);
        const bf16* dy = grads.dout;
        if (a.z) {
          const int64_t count8 = d.b * d.l * d.h * d.p / 8;
          dy_kernel<<<cuda_detail::grid_for(count8, 256), 256, 0, stream>>>(grads.dout, args.z, count8, dy_buf);
          SSM_CUDA_CHECK_LAUNCH();
          dy = dy_buf;
        }
        pass_states_kernel<true><<<dim3(d.p * d.n / kPassElems, d.h, d.b), kPassThreads, 0, stream>>>(
            d, sc.dstates, sc.decay, g.dfinal_states, g.dinitial_states, chunk_states, sc.dot_partial, vec);
        SSM_CUDA_CHECK_LAUNCH();
        launch_cb(d, args, true, cbt, stream);
        const dim3 grid(static_cast<unsigned>(d.ntt * nslices), static_cast<unsigned>(d.nc * d.g),
                        static_cast<unsigned>(d.b));
        dispatch_p(d.p, [&](auto pc) {
          constexpr int P = decltype(pc)::value;
          auto go = [&](auto nc_) {
            constexpr int N = decltype(nc_)::value;
            const size_t smem = bwd_tc_smem(N, P).total;
            auto rows = bwd_rows_tc_kernel<P, N>;
            allow_smem(rows, smem);
            rows<<<grid, kTcThreads, smem, stream>>>(d, args, grads, dy, ti, chunk_states, sc, hslice, dC_part, cbt);
            SSM_CUDA_CHECK_LAUNCH();
            auto cols = bwd_cols_tc_kernel<P, N>;
            allow_smem(cols, smem);
            cols<<<grid, kTcThreads, smem, stream>>>(d, args, grads, dy, ti, sc, hslice, dB_part, cbt);
            SSM_CUDA_CHECK_LAUNCH();
          };
          if (d.n == 64) go(std::integral_constant<int, 64>{});
          else go(std::integral_constant<int, 128>{});
        });
        if (nslices > 1) {
          const int64_t count = d.b * d.l * d.g * d.n;
          sum_slices_kernel<<<cuda_detail::grid_for(count, 256), 256, 0, stream>>>(dB_part, nslices, count, grads.dB);
          SSM_CUDA_CHECK_LAUNCH();
          sum_slices_kernel<<<cuda_detail::grid_for(count, 256), 256, 0, stream>>>(dC_part, nslices, count, grads.dC);
          SSM_CUDA_CHECK_LAUNCH();
        }
        bwd_dt_kernel<T><<<dim3(d.h, d.nc, d.b), kThreads, 0, stream>>>(d, args, grads, sc);
        SSM_CUDA_CHECK_LAUNCH();
        return;
      }
    }
    {
      auto kernel = chunk_state_kernel<T, true>;
      const size_t smem = state_smem(d);
      allow_smem(kernel, smem);
      kernel<<<dim3(d.h * d.p / 32, d.nc, d.b), kThreads, smem, stream>>>(d, args, grads.dout, sc.dstates, sc.decay);
      SSM_CUDA_CHECK_LAUNCH();
    }
    pass_states_kernel<true><<<dim3(d.p * d.n / kPassElems, d.h, d.b), kPassThreads, 0, stream>>>(
        d, sc.dstates, sc.decay, g.dfinal_states, g.dinitial_states, chunk_states, sc.dot_partial, vec);
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
  sum_partials_kernel<<<static_cast<unsigned>(d.h), kThreads, 0, stream>>>(sc.dA_part, outer, d.h, 1, g.dA);
  SSM_CUDA_CHECK_LAUNCH();
  if (g.ddt_bias) {
    sum_partials_kernel<<<static_cast<unsigned>(d.h), kThreads, 0, stream>>>(sc.dbias_part, outer, d.h, 1, g.ddt_bias);
    SSM_CUDA_CHECK_LAUNCH();
  }
  if (g.dD) {
    // Over (b, nc, tile) per element of (h, p), then over p for D of shape (h).
    float* dD_hp = d.D_hp ? g.dD : sc.dD_hp;
    sum_partials_kernel<<<static_cast<unsigned>(d.h * d.p), kThreads, 0, stream>>>(sc.dD_part, outer * d.ntt,
                                                                                   d.h * d.p, 1, dD_hp);
    SSM_CUDA_CHECK_LAUNCH();
    if (!d.D_hp) sum_partials_kernel<<<static_cast<unsigned>(d.h), kThreads, 0, stream>>>(dD_hp, 1, d.h * d.p, d.p, g.dD);
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
    const int64_t rows = d.b * d.h * d.p;
    ssd_step_kernel<T><<<unsigned((rows + kStepWarps - 1) / kStepWarps), kStepWarps * 32, 0, stream>>>(
        d, typed<T>(a), states, static_cast<T*>(out));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda
}  // namespace ssmtrain::kernels
