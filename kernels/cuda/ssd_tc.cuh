// Tensor-core tile helpers shared by the SSD forward (kernels/cuda/ssd_tc_forward.cu) and
// backward (kernels/cuda/ssd_tc_backward.cu): asynchronous bf16 tile loads, warp-level products
// over shared-memory tiles, the precomputed C B^T tiles and the decay weights of a score block.
// Included only from those two files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/ssd_common.cuh"
#include "kernels/cuda/mma.cuh"

namespace ssmtrain::kernels::ssd_detail {

using cuda_detail::exp2_ftz;  // kernels/cuda/activations.cuh

// ---------------------------------------------------------------------------------------
// Tensor-core path (bf16 activations): the products run as mma.sync m16n8k16 bf16 with f32
// accumulation (kernels/cuda/mma.cuh). Operand tiles are bf16 in shared memory with rows
// padded by 8 elements (16 bytes), so ldmatrix reads are free of bank conflicts. The
// per-token quantities of every chunk are computed once by tokens_kernel.
constexpr int kTcThreads = 128;  // 4 warps
constexpr int kTcPad = 8;        // bf16 elements of row padding

// Device helpers, with internal linkage in each including file (see ssd_common.cuh).
namespace {

// Two shared-memory tiles picked by parity (a select, where an array of two pointers indexed
// at run time would live in local memory).
struct TilePair {
  bf16* even;
  bf16* odd;
  __device__ bf16* operator[](int i) const { return (i & 1) ? odd : even; }
};

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
    mma::cp_async_16_unordered(dst + r * ld + cc, r < valid ? src + r * stride + cc : src, r < valid);
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
  mma::cp_async_wait_all();
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
      pk.x = mma::pack_bf16(v[u].x, v[u].y);
      pk.y = mma::pack_bf16(v[u].z, v[u].w);
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
            e *= zj * sigmoid<Math::fast>(zj);
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

// (16 rows, NT * 8 columns) += the warp's rows of A (row-major, ld lda, from row ra) times
// the rows of B (NT * 8 rows of length K, ld ldb) transposed: A B^T over K.
template <int K, int NT = 8>
__device__ __forceinline__ void warp_abt(float (&acc)[NT][4], const bf16* A, int lda, int ra, const bf16* B,
                                         int ldb) {
  using namespace mma;
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t af[4];
    ldmatrix_x4(af, frag_rows16(A, lda, ra, k0));
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      uint32_t bfr[4];
      ldmatrix_x4(bfr, frag_cols16(B, ldb, 16 * j, k0));
      mma_bf16_volatile(acc[2 * j], af, bfr[0], bfr[1]);
      mma_bf16_volatile(acc[2 * j + 1], af, bfr[2], bfr[3]);
    }
  }
}

// acc (16 rows, NT * 8 columns) += frags (the warp's 16 x 64 A operand) times B (64 rows of
// NT * 8 columns, row-major, ld ldb).
template <int NT>
__device__ __forceinline__ void warp_frag_b(float (&acc)[NT][4], const uint32_t (&frags)[4][4], const bf16* B,
                                            int ldb) {
  using namespace mma;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      uint32_t bfr[4];
      ldmatrix_x4_trans(bfr, frag_rows16(B, ldb, 16 * kk, 16 * j));
      mma_bf16_volatile(acc[2 * j], frags[kk], bfr[0], bfr[1]);
      mma_bf16_volatile(acc[2 * j + 1], frags[kk], bfr[2], bfr[3]);
    }
}

// Rows of an A fragment (ldmatrix_x4 at frag_rows16) scaled and rounded back to bf16: registers 0
// and 2 hold the lane's row lane / 4, 1 and 3 the row 8 below; wa and wb their factors.
__device__ __forceinline__ void scale_rows(uint32_t (&af)[4], float wa, float wb) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&af[i]));
    const float w = (i & 1) ? wb : wa;
    af[i] = mma::pack_bf16(w * v.x, w * v.y);
  }
}

// acc (16 rows, NT * 8 columns) += A' B over K, where A' is the warp's rows of A (row-major,
// ld lda, from row ra) with the lane's upper row scaled by wa and its lower row (8 below) by
// wb, rounded to bf16 in the fragments, and B is K rows of NT * 8 columns (row-major, ld ldb).
template <int K, int NT>
__device__ __forceinline__ void warp_scaled_ab(float (&acc)[NT][4], const bf16* A, int lda, int ra, float wa,
                                               float wb, const bf16* B, int ldb) {
  using namespace mma;
#pragma unroll
  for (int k0 = 0; k0 < K; k0 += 16) {
    uint32_t af[4];
    ldmatrix_x4(af, frag_rows16(A, lda, ra, k0));
    scale_rows(af, wa, wb);
#pragma unroll
    for (int j = 0; j < NT / 2; ++j) {
      uint32_t bfr[4];
      ldmatrix_x4_trans(bfr, frag_rows16(B, ldb, k0, 16 * j));
      mma_bf16_volatile(acc[2 * j], af, bfr[0], bfr[1]);
      mma_bf16_volatile(acc[2 * j + 1], af, bfr[2], bfr[3]);
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
// kCbTile and cb_pairs: ssd_common.cuh (the host sizes the tiles too).
__device__ __forceinline__ const float* cb_tile(const Dims& d, const float* cb, int layouts, int64_t bi, int64_t c,
                                                int64_t gg, int t, int s, int layout) {
  return cb + ((((bi * d.nc + c) * d.g + gg) * cb_pairs(d.ntt) + t * (t + 1) / 2 + s) * layouts + layout) * kCbTile;
}
__device__ __forceinline__ int cb_frag(int j) { return ((static_cast<int>(threadIdx.x >> 5) * 8 + j) * 32 + (threadIdx.x & 31)) * 4; }
// This thread's 32 floats of a tile into dst (a fragment-order tile in shared memory).
__device__ __forceinline__ void load_cb(float* dst, const float* src) {
#pragma unroll
  for (int j = 0; j < 8; ++j) mma::cp_async_16_unordered(dst + cb_frag(j), src + cb_frag(j), true);
  mma::cp_async_commit();
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

}  // namespace
}  // namespace ssmtrain::kernels::ssd_detail
