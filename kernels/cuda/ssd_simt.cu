// The SSD's f32 CUDA-core path (kernels/cuda/ssd.cu has the overview and the dispatch): f32
// (and the bf16 shapes the tensor-core kernels do not take) from shared memory, one block per
// (64-token tile, chunk, group) looping over the group's heads, C B^T computed once per block.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/check.h"
#include "kernels/cuda/ssd_common.cuh"

namespace ssmtrain::kernels::ssd_detail {
namespace {

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
          if (a.z) dy *= silu(to_f32(a.z[off]));
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
      if (a.z) v *= silu(to_f32(a.z[off]));
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
        if (a.z) y *= silu(to_f32(a.z[off + pi]));
        out[off + pi] = from_f32<T>(y);
      }
    }
  }
}
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
          gr.dz[off + pi] = from_f32<T>(to_f32(gr.dout[off + pi]) * fmaf(Dv, xv, ypre[i]) * silu_grad(zv));
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
        if (a.z) dy *= silu(to_f32(a.z[off + pi]));
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

size_t state_smem(const Dims& d) { return sizeof(ChunkTokens) + sizeof(float) * (32 * 33 + 32 * (d.n + 1)); }

}  // namespace

template <bool kGrad, typename T>
void launch_chunk_state(const Dims& d, const SsdArgs<T, float>& a, const T* dout, float* out, float* decay,
                        cudaStream_t stream) {
  auto kernel = chunk_state_kernel<T, kGrad>;
  const size_t smem = state_smem(d);
  allow_smem(kernel, smem);
  kernel<<<dim3(d.h * d.p / 32, d.nc, d.b), kThreads, smem, stream>>>(d, a, dout, out, decay);
  SSM_CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_chunk_scan(const Dims& d, const SsdArgs<T, float>& a, const float* chunk_states, T* out,
                       cudaStream_t stream) {
  dispatch_p(d.p, [&](auto pc) {
    constexpr int P = decltype(pc)::value;
    auto kernel = chunk_scan_kernel<P, T>;
    const size_t smem = 4 * scan_smem(d.cbld, P).total;
    allow_smem(kernel, smem);
    kernel<<<dim3(d.ntt, d.nc * d.g, d.b), kThreads, smem, stream>>>(d, a, chunk_states, out);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

template <typename T>
void launch_bwd_rows_cols(const Dims& d, const SsdArgs<T, float>& a, const SsdGrads<T, float>& g,
                          const float* chunk_states, const BwdScratch& sc, cudaStream_t stream) {
  dispatch_p(d.p, [&](auto pc) {
    constexpr int P = decltype(pc)::value;
    dispatch_seg(d.n, [&](auto segc) {
      constexpr int NSEG = decltype(segc)::value;
      const size_t smem = 4 * scan_smem(d.cbld, P).total;
      auto rows = bwd_rows_kernel<P, NSEG, T>;
      allow_smem(rows, smem);
      rows<<<dim3(d.ntt, d.nc * d.g, d.b), kThreads, smem, stream>>>(d, a, g, chunk_states, sc);
      SSM_CUDA_CHECK_LAUNCH();
      auto cols = bwd_cols_kernel<P, NSEG, T>;
      allow_smem(cols, smem);
      cols<<<dim3(d.ntt, d.nc * d.g, d.b), kThreads, smem, stream>>>(d, a, g, sc);
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
}

// The instantiations ssd.cu calls.
template void launch_chunk_state<false, float>(const Dims&, const SsdArgs<float, float>&, const float*, float*,
                                               float*, cudaStream_t);
template void launch_chunk_state<true, float>(const Dims&, const SsdArgs<float, float>&, const float*, float*,
                                              float*, cudaStream_t);
template void launch_chunk_state<false, bf16>(const Dims&, const SsdArgs<bf16, float>&, const bf16*, float*,
                                              float*, cudaStream_t);
template void launch_chunk_state<true, bf16>(const Dims&, const SsdArgs<bf16, float>&, const bf16*, float*,
                                             float*, cudaStream_t);
template void launch_chunk_scan<float>(const Dims&, const SsdArgs<float, float>&, const float*, float*,
                                       cudaStream_t);
template void launch_chunk_scan<bf16>(const Dims&, const SsdArgs<bf16, float>&, const float*, bf16*,
                                      cudaStream_t);
template void launch_bwd_rows_cols<float>(const Dims&, const SsdArgs<float, float>&, const SsdGrads<float, float>&,
                                          const float*, const BwdScratch&, cudaStream_t);
template void launch_bwd_rows_cols<bf16>(const Dims&, const SsdArgs<bf16, float>&, const SsdGrads<bf16, float>&,
                                         const float*, const BwdScratch&, cudaStream_t);

}  // namespace ssmtrain::kernels::ssd_detail
