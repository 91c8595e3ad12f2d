// Tensor-core flash attention (FlashAttention-2 style) for bf16 with head dims 64 and 128: the
// fast path of the attention fallback (kernels/cuda/attention.cu), with causal and document
// masking, grouped-query heads, and a backward without atomics (every output element is summed
// by one thread in a fixed order), so repeated runs give the same bits.
//
// Glossary: b batch, l sequence length, h query heads, h_kv key/value heads, dh head dim (DH),
// kBlockM / kBlockN the query / key rows a block holds at once, g the kv head of query head hh.
//
// All matmuls are mma.sync m16n8k16 (bf16 in, f32 accumulate); a warp owns 16 rows (queries in the
// forward and dq kernels, keys in the dk/dv kernel) and the block streams the other side through
// shared memory in double-buffered tiles loaded with cp.async. Operands come from shared memory
// through ldmatrix; shared rows are padded by 16 bytes so the 8 rows one ldmatrix phase reads lie
// in distinct banks. Softmax runs in base 2 on scores pre-multiplied by scale * log2(e).
//   forward  (grid ceil(l / 128) x h x b): S = Q K^T, online softmax, O += P V; writes out, lse.
//   dq       (grid ceil(l / 128) x h x b): S = Q K^T, dP = dO V^T, dS = P (dP - delta), dQ += dS K.
//   dk / dv  (grid ceil(l / 128) x h_kv x b): per key block, over the heads of the group and the
//            query tiles at or after the block in that order: S^T = K Q^T, dP^T = V dO^T,
//            dV += P^T dO, dK += dS^T Q.
// Tiles are skipped when causality hides them (keys after every query of the tile) and, with
// documents, when the range [min, max] of document ids of the query rows and of the key rows are
// disjoint (a per-64-position table of ranges built first): correct for any doc_index, and for
// packed documents (non-decreasing ids) it skips every key tile before the query tile's first
// document. Masks are applied element by element only on tiles that need them.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_flash.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/mma.cuh"

namespace ssmtrain::kernels::cuda_detail {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kPad = 8;         // bf16 elements of padding per shared-memory row (16 bytes)
constexpr int kDocChunk = 64;   // positions per entry of the document-range table
constexpr int kWarps = 8;       // every kernel: 8 warps of 16 rows
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The warp-level primitives (kernels/cuda/mma.cuh).
using mma::accumulators_to_a;
using mma::cp_async_16;
using mma::cp_async_4;
using mma::cp_async_commit;
using mma::cp_async_wait;
using mma::lane_offsets;
using mma::LaneOffsets;
using mma::ldmatrix_x4;
using mma::ldmatrix_x4_trans;
using mma::mma_bf16;
using mma::pack_bf16;
using mma::smem_addr;
using mma::tile_offset;

// ---- tiles ----

// Rows [t0, t0 + Rows) of the (b, l, heads, DH) tensor src, head `head`, into tile (Rows, DH + kPad),
// zero past the sequence end; issued by all kThreads threads, not waited for.
template <int Rows, int DH>
__device__ __forceinline__ void load_rows_async(bf16* tile, const bf16* src, int64_t bi, int t0, int l, int heads,
                                                int head) {
  constexpr int kChunks = DH / 8;  // 16-byte chunks per row
  static_assert((Rows * kChunks) % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int it = 0; it < Rows * kChunks / kThreads; ++it) {
    const int c = it * kThreads + static_cast<int>(threadIdx.x);
    const int r = c / kChunks, e = (c % kChunks) * 8;
    const int t = t0 + r;
    const bool in = t < l;
    cp_async_16(tile + r * (DH + kPad) + e, src + ((bi * l + (in ? t : 0)) * heads + head) * DH + e, in);
  }
}

// Entries [t0, t0 + Count) of a per-position row (lse, delta or doc of one (b, h) or b) into dst,
// zero past l; not waited for.
template <int Count, typename T>
__device__ __forceinline__ void load_positions_async(T* dst, const T* row, int t0, int l) {
  static_assert(sizeof(T) == 4 && Count <= kThreads, "one 4-byte entry per thread");
  if (threadIdx.x < Count) {
    const int t = t0 + static_cast<int>(threadIdx.x);
    const bool in = t < l;
    cp_async_4(dst + threadIdx.x, row + (in ? t : 0), in);
  }
}

// ---- document ranges ----

struct DocRange {
  int lo, hi;  // min and max document id over some positions
};

// chunks (b, n_chunks): {min, max} of doc over positions [64 c, 64 c + 64) of each sequence.
__global__ void doc_chunk_kernel(const int32_t* doc, int64_t b, int l, int n_chunks, int2* chunks) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= b * n_chunks) return;
  const int64_t bi = idx / n_chunks;
  const int t0 = static_cast<int>(idx % n_chunks) * kDocChunk, t1 = min(t0 + kDocChunk, l);
  int lo = INT_MAX, hi = INT_MIN;
  for (int t = t0; t < t1; ++t) {
    const int d = doc[bi * l + t];
    lo = min(lo, d);
    hi = max(hi, d);
  }
  chunks[idx] = make_int2(lo, hi);
}

// The range over positions [t0, min(t0 + count, l)) (t0 < l), from the chunks covering them.
__device__ __forceinline__ DocRange doc_range(const int2* chunks, int n_chunks, int64_t bi, int t0, int count, int l) {
  const int c0 = t0 / kDocChunk, c1 = (min(t0 + count, l) - 1) / kDocChunk;
  DocRange r{INT_MAX, INT_MIN};
  for (int c = c0; c <= c1; ++c) {
    const int2 m = chunks[bi * n_chunks + c];
    r.lo = min(r.lo, m.x);
    r.hi = max(r.hi, m.y);
  }
  return r;
}
// No query of one range can see a key of the other.
__device__ __forceinline__ bool disjoint(DocRange a, DocRange b) { return a.hi < b.lo || b.hi < a.lo; }
// Every position of both ranges is in one document: the document mask changes nothing.
__device__ __forceinline__ bool one_document(DocRange a, DocRange b) {
  return a.lo == a.hi && b.lo == b.hi && a.lo == b.lo;
}

// ---- kernels ----

struct FlashParams {
  const bf16 *q, *k, *v, *dout;  // q, dout (b, l, h, dh); k, v (b, l, h_kv, dh)
  const int32_t* doc;            // (b, l) or null
  const int2* doc_chunks;        // (b, n_chunks) when doc is given
  const float *lse_in, *delta;   // (b, h, l), backward
  bf16* out;                     // (b, l, h, dh), forward
  float* lse_out;                // (b, h, l), forward
  bf16 *dq, *dk, *dv;            // like q, k, v, backward
  int l, h, hk, group, n_chunks;
  float scale, scale_log2;  // scale and scale * log2(e)
};

// Forward and dq kernels: a block owns kBlockM queries of one head, streaming keys in tiles of
// kBlockN (one document chunk each).
template <int DH>
struct QueryBlock {
  static constexpr int kBlockM = 16 * kWarps, kBlockN = 64, kStride = DH + kPad;
  static_assert(DH % 16 == 0 && kBlockN % 16 == 0, "whole mma k-steps and n8 pairs");
  static_assert(kBlockN == kDocChunk && kBlockM % kDocChunk == 0, "tiles align with document chunks");
  // forward shared memory: q (kBlockM, kStride); k, v (2 stages, kBlockN, kStride); key docs (2, kBlockN)
  static constexpr size_t kForwardSmem =
      sizeof(bf16) * (kBlockM + 4 * kBlockN) * kStride + sizeof(int32_t) * 2 * kBlockN;
  // dq shared memory: q, dout (kBlockM, kStride); k, v (2 stages); key docs (2, kBlockN)
  static constexpr size_t kDqSmem =
      sizeof(bf16) * (2 * kBlockM + 4 * kBlockN) * kStride + sizeof(int32_t) * 2 * kBlockN;
};

// dk / dv kernel: a block owns kBlockN keys of one kv head, streaming queries in tiles of kBlockM.
template <int DH>
struct KeyBlock {
  static constexpr int kBlockN = 16 * kWarps, kBlockM = 64, kStride = DH + kPad;
  static_assert(DH % 16 == 0 && kBlockM % 16 == 0, "whole mma k-steps and n8 pairs");
  static_assert(kBlockN % kDocChunk == 0 && kBlockN % kBlockM == 0, "tiles align with chunks and each other");
  // k, v (kBlockN, kStride); q, dout (2 stages, kBlockM, kStride); lse, delta, query docs (2, kBlockM)
  static constexpr size_t kSmem = sizeof(bf16) * (2 * kBlockN + 4 * kBlockM) * kStride + sizeof(float) * 6 * kBlockM;
};

template <int DH>
__global__ void __launch_bounds__(kThreads, 1) flash_forward_kernel(FlashParams p) {
  using B = QueryBlock<DH>;
  constexpr int kBlockM = B::kBlockM, kBlockN = B::kBlockN, kStride = B::kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);    // (kBlockM, kStride)
  bf16* k_s = q_s + kBlockM * kStride;          // (2, kBlockN, kStride)
  bf16* v_s = k_s + 2 * kBlockN * kStride;      // (2, kBlockN, kStride)
  int32_t* kdoc_s = reinterpret_cast<int32_t*>(v_s + 2 * kBlockN * kStride);  // (2, kBlockN)

  const int64_t bi = blockIdx.z;
  const int hh = static_cast<int>(blockIdx.y), g = hh / p.group;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kBlockM;  // the longest rows start first
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gr = lane / 4, tq = lane % 4;
  const int qw = q0 + 16 * warp;                  // this warp's first query
  const int row_lo = qw + gr, row_hi = row_lo + 8;  // this thread's two query rows
  const LaneOffsets lo = lane_offsets(lane);
  const int n_kt = (min(q0 + kBlockM, p.l) + kBlockN - 1) / kBlockN;  // causal: tiles up to the last query
  const bool docs = p.doc != nullptr;
  const DocRange qrange = docs ? doc_range(p.doc_chunks, p.n_chunks, bi, q0, kBlockM, p.l) : DocRange{0, 0};
  const int doc_lo = docs && row_lo < p.l ? p.doc[bi * p.l + row_lo] : 0;
  const int doc_hi = docs && row_hi < p.l ? p.doc[bi * p.l + row_hi] : 0;

  // The first key tile at or after t that shares a document with the query block (n_kt if none).
  auto next_tile = [&](int t) {
    while (docs && t < n_kt &&
           disjoint(qrange, doc_range(p.doc_chunks, p.n_chunks, bi, t * kBlockN, kBlockN, p.l)))
      ++t;
    return t;
  };
  auto load_keys = [&](int t, int stage) {
    load_rows_async<kBlockN, DH>(k_s + stage * kBlockN * kStride, p.k, bi, t * kBlockN, p.l, p.hk, g);
    load_rows_async<kBlockN, DH>(v_s + stage * kBlockN * kStride, p.v, bi, t * kBlockN, p.l, p.hk, g);
    if (docs) load_positions_async<kBlockN>(kdoc_s + stage * kBlockN, p.doc + bi * p.l, t * kBlockN, p.l);
  };

  load_rows_async<kBlockM, DH>(q_s, p.q, bi, q0, p.l, p.h, hh);
  cp_async_commit();
  int kt = next_tile(0);
  if (kt < n_kt) load_keys(kt, 0);
  cp_async_commit();
  // Shared addresses of this lane's ldmatrix rows; blocks and stages add constant offsets.
  constexpr uint32_t kStageBytes = kBlockN * kStride * sizeof(bf16);
  const uint32_t q_a = smem_addr(q_s + (16 * warp + lo.a_row) * kStride + lo.a_col);  // A: this warp's queries
  const uint32_t k_b = smem_addr(k_s + lo.b_row * kStride + lo.b_col);               // B from [n][k]: keys
  const uint32_t v_t = smem_addr(v_s + lo.a_row * kStride + lo.a_col);               // B from [k][n]: values
  cp_async_wait<1>();  // q has landed
  __syncthreads();
  uint32_t qf[DH / 16][4];  // this warp's (16, DH) queries as A operands, one per 16 of dh
#pragma unroll
  for (int kk = 0; kk < DH / 16; ++kk) ldmatrix_x4(qf[kk], q_a + tile_offset<kStride>(0, 16 * kk));

  float o[DH / 8][4] = {};  // (16, DH) output accumulator, one 16 x 8 block per 8 of dh
  // Per row: running max of the scaled scores (log2 units) and this thread's part of the row sum.
  float m_lo = -INFINITY, m_hi = -INFINITY, sum_lo = 0.0f, sum_hi = 0.0f;
  for (int stage = 0; kt < n_kt; stage ^= 1) {
    const int next = next_tile(kt + 1);
    if (next < n_kt) load_keys(next, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile kt has landed
    __syncthreads();
    const int j0 = kt * kBlockN;
    if (qw < p.l && j0 <= qw + 15) {  // else the warp has no real query or sees no key of the tile
      const uint32_t kt_b = k_b + stage * kStageBytes, vt_t = v_t + stage * kStageBytes;
      const int32_t* kdoc = kdoc_s + stage * kBlockN;
      float s[kBlockN / 8][4] = {};  // (16, kBlockN) scores
#pragma unroll
      for (int kk = 0; kk < DH / 16; ++kk)
#pragma unroll
        for (int nn = 0; nn < kBlockN / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, kt_b + tile_offset<kStride>(16 * nn, 16 * kk));
          mma_bf16(s[2 * nn], qf[kk], b[0], b[1]);
          mma_bf16(s[2 * nn + 1], qf[kk], b[2], b[3]);
        }
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[nb][c] *= p.scale_log2;
      const bool mixed_docs =
          docs && !one_document(qrange, doc_range(p.doc_chunks, p.n_chunks, bi, j0, kBlockN, p.l));
      if (j0 + kBlockN - 1 > qw || mixed_docs) {  // some key after some query, or several documents
#pragma unroll
        for (int nb = 0; nb < kBlockN / 8; ++nb)
#pragma unroll
          for (int c = 0; c < 4; ++c) {
            const int jj = 8 * nb + 2 * tq + (c & 1);
            const bool seen = j0 + jj <= (c < 2 ? row_lo : row_hi) && (!docs || kdoc[jj] == (c < 2 ? doc_lo : doc_hi));
            if (!seen) s[nb][c] = -INFINITY;
          }
      }
      // Online softmax: new row max over the 4 lanes of the row, rescale, exponentiate.
      float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb) {
        mx_lo = fmaxf(mx_lo, fmaxf(s[nb][0], s[nb][1]));
        mx_hi = fmaxf(mx_hi, fmaxf(s[nb][2], s[nb][3]));
      }
#pragma unroll
      for (int off = 1; off < 4; off *= 2) {
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, off));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, off));
      }
      const float new_lo = fmaxf(m_lo, mx_lo), new_hi = fmaxf(m_hi, mx_hi);
      // A row that has seen nothing yet keeps max -inf; subtract 0 then so exp2 gives 0, not NaN.
      const float ref_lo = new_lo == -INFINITY ? 0.0f : new_lo, ref_hi = new_hi == -INFINITY ? 0.0f : new_hi;
      const float corr_lo = exp2f(m_lo - ref_lo), corr_hi = exp2f(m_hi - ref_hi);
      m_lo = new_lo;
      m_hi = new_hi;
      sum_lo *= corr_lo;
      sum_hi *= corr_hi;
#pragma unroll
      for (int nd = 0; nd < DH / 8; ++nd) {
        o[nd][0] *= corr_lo;
        o[nd][1] *= corr_lo;
        o[nd][2] *= corr_hi;
        o[nd][3] *= corr_hi;
      }
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb) {
        s[nb][0] = exp2f(s[nb][0] - ref_lo);
        s[nb][1] = exp2f(s[nb][1] - ref_lo);
        s[nb][2] = exp2f(s[nb][2] - ref_hi);
        s[nb][3] = exp2f(s[nb][3] - ref_hi);
        sum_lo += s[nb][0] + s[nb][1];
        sum_hi += s[nb][2] + s[nb][3];
      }
      // O += P V: P (16, kBlockN) from the score registers, V (kBlockN, DH) as [k][n] storage.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t pa[4];
        accumulators_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int nd = 0; nd < DH / 16; ++nd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, vt_t + tile_offset<kStride>(16 * kk, 16 * nd));
          mma_bf16(o[2 * nd], pa, b[0], b[1]);
          mma_bf16(o[2 * nd + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
    kt = next;
  }

#pragma unroll
  for (int off = 1; off < 4; off *= 2) {
    sum_lo += __shfl_xor_sync(0xffffffffu, sum_lo, off);
    sum_hi += __shfl_xor_sync(0xffffffffu, sum_hi, off);
  }
  const float inv_lo = sum_lo > 0.0f ? 1.0f / sum_lo : 0.0f, inv_hi = sum_hi > 0.0f ? 1.0f / sum_hi : 0.0f;
  if (row_lo < p.l) {
    bf16* dst = p.out + ((bi * p.l + row_lo) * p.h + hh) * DH;
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd)
      *reinterpret_cast<uint32_t*>(dst + 8 * nd + 2 * tq) = pack_bf16(o[nd][0] * inv_lo, o[nd][1] * inv_lo);
    if (tq == 0) p.lse_out[(bi * p.h + hh) * p.l + row_lo] = sum_lo > 0.0f ? (m_lo + log2f(sum_lo)) * kLn2 : -INFINITY;
  }
  if (row_hi < p.l) {
    bf16* dst = p.out + ((bi * p.l + row_hi) * p.h + hh) * DH;
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd)
      *reinterpret_cast<uint32_t*>(dst + 8 * nd + 2 * tq) = pack_bf16(o[nd][2] * inv_hi, o[nd][3] * inv_hi);
    if (tq == 0) p.lse_out[(bi * p.h + hh) * p.l + row_hi] = sum_hi > 0.0f ? (m_hi + log2f(sum_hi)) * kLn2 : -INFINITY;
  }
}

template <int DH>
__global__ void __launch_bounds__(kThreads, 1) flash_dq_kernel(FlashParams p) {
  using B = QueryBlock<DH>;
  constexpr int kBlockM = B::kBlockM, kBlockN = B::kBlockN, kStride = B::kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem);    // (kBlockM, kStride)
  bf16* do_s = q_s + kBlockM * kStride;         // (kBlockM, kStride)
  bf16* k_s = do_s + kBlockM * kStride;         // (2, kBlockN, kStride)
  bf16* v_s = k_s + 2 * kBlockN * kStride;      // (2, kBlockN, kStride)
  int32_t* kdoc_s = reinterpret_cast<int32_t*>(v_s + 2 * kBlockN * kStride);  // (2, kBlockN)

  const int64_t bi = blockIdx.z;
  const int hh = static_cast<int>(blockIdx.y), g = hh / p.group;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kBlockM;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gr = lane / 4, tq = lane % 4;
  const int qw = q0 + 16 * warp;
  const int row_lo = qw + gr, row_hi = row_lo + 8;
  const LaneOffsets lo = lane_offsets(lane);
  const int n_kt = (min(q0 + kBlockM, p.l) + kBlockN - 1) / kBlockN;
  const bool docs = p.doc != nullptr;
  const DocRange qrange = docs ? doc_range(p.doc_chunks, p.n_chunks, bi, q0, kBlockM, p.l) : DocRange{0, 0};
  const int doc_lo = docs && row_lo < p.l ? p.doc[bi * p.l + row_lo] : 0;
  const int doc_hi = docs && row_hi < p.l ? p.doc[bi * p.l + row_hi] : 0;
  const float* lse_row = p.lse_in + (bi * p.h + hh) * p.l;  // (l)
  const float* delta_row = p.delta + (bi * p.h + hh) * p.l;
  const float lse2_lo = row_lo < p.l ? lse_row[row_lo] * kLog2e : 0.0f;  // log2 units
  const float lse2_hi = row_hi < p.l ? lse_row[row_hi] * kLog2e : 0.0f;
  const float delta_lo = row_lo < p.l ? delta_row[row_lo] : 0.0f;
  const float delta_hi = row_hi < p.l ? delta_row[row_hi] : 0.0f;

  auto next_tile = [&](int t) {
    while (docs && t < n_kt &&
           disjoint(qrange, doc_range(p.doc_chunks, p.n_chunks, bi, t * kBlockN, kBlockN, p.l)))
      ++t;
    return t;
  };
  auto load_keys = [&](int t, int stage) {
    load_rows_async<kBlockN, DH>(k_s + stage * kBlockN * kStride, p.k, bi, t * kBlockN, p.l, p.hk, g);
    load_rows_async<kBlockN, DH>(v_s + stage * kBlockN * kStride, p.v, bi, t * kBlockN, p.l, p.hk, g);
    if (docs) load_positions_async<kBlockN>(kdoc_s + stage * kBlockN, p.doc + bi * p.l, t * kBlockN, p.l);
  };

  load_rows_async<kBlockM, DH>(q_s, p.q, bi, q0, p.l, p.h, hh);
  load_rows_async<kBlockM, DH>(do_s, p.dout, bi, q0, p.l, p.h, hh);
  cp_async_commit();
  int kt = next_tile(0);
  if (kt < n_kt) load_keys(kt, 0);
  cp_async_commit();

  constexpr uint32_t kStageBytes = kBlockN * kStride * sizeof(bf16);
  const uint32_t q_a = smem_addr(q_s + (16 * warp + lo.a_row) * kStride + lo.a_col);    // A: this warp's queries
  const uint32_t do_a = smem_addr(do_s + (16 * warp + lo.a_row) * kStride + lo.a_col);  // A: their output grads
  const uint32_t k_b = smem_addr(k_s + lo.b_row * kStride + lo.b_col);                 // B from [n][k]: keys
  const uint32_t v_b = smem_addr(v_s + lo.b_row * kStride + lo.b_col);                 // B from [n][k]: values
  const uint32_t k_t = smem_addr(k_s + lo.a_row * kStride + lo.a_col);                 // B from [k][n]: keys
  float dq[DH / 8][4] = {};  // (16, DH) accumulator of dS K
  for (int stage = 0; kt < n_kt; stage ^= 1) {
    const int next = next_tile(kt + 1);
    if (next < n_kt) load_keys(next, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // q, dout and tile kt have landed
    __syncthreads();
    const int j0 = kt * kBlockN;
    if (qw < p.l && j0 <= qw + 15) {
      const uint32_t stage_bytes = stage * kStageBytes;
      const int32_t* kdoc = kdoc_s + stage * kBlockN;
      float s[kBlockN / 8][4] = {};   // (16, kBlockN) S = Q K^T, then P, then dS
      float dp[kBlockN / 8][4] = {};  // (16, kBlockN) dP = dO V^T
#pragma unroll
      for (int kk = 0; kk < DH / 16; ++kk) {
        uint32_t qa[4], da[4];
        ldmatrix_x4(qa, q_a + tile_offset<kStride>(0, 16 * kk));
        ldmatrix_x4(da, do_a + tile_offset<kStride>(0, 16 * kk));
#pragma unroll
        for (int nn = 0; nn < kBlockN / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, k_b + stage_bytes + tile_offset<kStride>(16 * nn, 16 * kk));
          mma_bf16(s[2 * nn], qa, b[0], b[1]);
          mma_bf16(s[2 * nn + 1], qa, b[2], b[3]);
          ldmatrix_x4(b, v_b + stage_bytes + tile_offset<kStride>(16 * nn, 16 * kk));
          mma_bf16(dp[2 * nn], da, b[0], b[1]);
          mma_bf16(dp[2 * nn + 1], da, b[2], b[3]);
        }
      }
      const bool mixed_docs =
          docs && !one_document(qrange, doc_range(p.doc_chunks, p.n_chunks, bi, j0, kBlockN, p.l));
      const bool masked = j0 + kBlockN - 1 > qw || qw + 15 >= p.l || mixed_docs;
#pragma unroll
      for (int nb = 0; nb < kBlockN / 8; ++nb)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int jj = 8 * nb + 2 * tq + (c & 1);
          const int i = c < 2 ? row_lo : row_hi;
          const bool seen =
              !masked || (i < p.l && j0 + jj <= i && (!docs || kdoc[jj] == (c < 2 ? doc_lo : doc_hi)));
          const float pr = seen ? exp2f(s[nb][c] * p.scale_log2 - (c < 2 ? lse2_lo : lse2_hi)) : 0.0f;
          s[nb][c] = pr * (dp[nb][c] - (c < 2 ? delta_lo : delta_hi));  // dS (unscaled)
        }
      // dQ += dS K: dS (16, kBlockN) from registers, K (kBlockN, DH) as [k][n] storage.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t a[4];
        accumulators_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
        for (int nd = 0; nd < DH / 16; ++nd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, k_t + stage_bytes + tile_offset<kStride>(16 * kk, 16 * nd));
          mma_bf16(dq[2 * nd], a, b[0], b[1]);
          mma_bf16(dq[2 * nd + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
    kt = next;
  }
  cp_async_wait<0>();  // nothing may be in flight when the block exits (no tile at all: q, dout)

  if (row_lo < p.l) {
    bf16* dst = p.dq + ((bi * p.l + row_lo) * p.h + hh) * DH;
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd)
      *reinterpret_cast<uint32_t*>(dst + 8 * nd + 2 * tq) = pack_bf16(dq[nd][0] * p.scale, dq[nd][1] * p.scale);
  }
  if (row_hi < p.l) {
    bf16* dst = p.dq + ((bi * p.l + row_hi) * p.h + hh) * DH;
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd)
      *reinterpret_cast<uint32_t*>(dst + 8 * nd + 2 * tq) = pack_bf16(dq[nd][2] * p.scale, dq[nd][3] * p.scale);
  }
}

template <int DH>
__global__ void __launch_bounds__(kThreads, 1) flash_dkdv_kernel(FlashParams p) {
  using B = KeyBlock<DH>;
  constexpr int kBlockM = B::kBlockM, kBlockN = B::kBlockN, kStride = B::kStride;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* k_s = reinterpret_cast<bf16*>(smem);   // (kBlockN, kStride)
  bf16* v_s = k_s + kBlockN * kStride;         // (kBlockN, kStride)
  bf16* q_s = v_s + kBlockN * kStride;         // (2, kBlockM, kStride)
  bf16* do_s = q_s + 2 * kBlockM * kStride;    // (2, kBlockM, kStride)
  float* lse_s = reinterpret_cast<float*>(do_s + 2 * kBlockM * kStride);  // (2, kBlockM)
  float* delta_s = lse_s + 2 * kBlockM;                                   // (2, kBlockM)
  int32_t* qdoc_s = reinterpret_cast<int32_t*>(delta_s + 2 * kBlockM);    // (2, kBlockM)

  const int64_t bi = blockIdx.z;
  const int g = static_cast<int>(blockIdx.y);
  const int k0 = static_cast<int>(blockIdx.x) * kBlockN;  // the earliest keys (most queries) start first
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int gr = lane / 4, tq = lane % 4;
  const int jw = k0 + 16 * warp;                    // this warp's first key
  const int key_lo = jw + gr, key_hi = key_lo + 8;  // this thread's two key rows
  const LaneOffsets lo = lane_offsets(lane);
  const bool docs = p.doc != nullptr;
  const DocRange krange = docs ? doc_range(p.doc_chunks, p.n_chunks, bi, k0, kBlockN, p.l) : DocRange{0, 0};
  const int doc_lo = docs && key_lo < p.l ? p.doc[bi * p.l + key_lo] : 0;
  const int doc_hi = docs && key_hi < p.l ? p.doc[bi * p.l + key_hi] : 0;
  // Work items in order: the heads of group g, and for each the query tiles from the one holding k0.
  const int qt_first = k0 / kBlockM, n_qt = (p.l + kBlockM - 1) / kBlockM, per_head = n_qt - qt_first;
  const int n_items = p.group * per_head;

  auto next_item = [&](int it) {
    while (docs && it < n_items &&
           disjoint(krange,
                    doc_range(p.doc_chunks, p.n_chunks, bi, (qt_first + it % per_head) * kBlockM, kBlockM, p.l)))
      ++it;
    return it;
  };
  auto load_queries = [&](int it, int stage) {
    const int hh = g * p.group + it / per_head, i0 = (qt_first + it % per_head) * kBlockM;
    load_rows_async<kBlockM, DH>(q_s + stage * kBlockM * kStride, p.q, bi, i0, p.l, p.h, hh);
    load_rows_async<kBlockM, DH>(do_s + stage * kBlockM * kStride, p.dout, bi, i0, p.l, p.h, hh);
    load_positions_async<kBlockM>(lse_s + stage * kBlockM, p.lse_in + (bi * p.h + hh) * p.l, i0, p.l);
    load_positions_async<kBlockM>(delta_s + stage * kBlockM, p.delta + (bi * p.h + hh) * p.l, i0, p.l);
    if (docs) load_positions_async<kBlockM>(qdoc_s + stage * kBlockM, p.doc + bi * p.l, i0, p.l);
  };

  load_rows_async<kBlockN, DH>(k_s, p.k, bi, k0, p.l, p.hk, g);
  load_rows_async<kBlockN, DH>(v_s, p.v, bi, k0, p.l, p.hk, g);
  cp_async_commit();
  int it = next_item(0);
  if (it < n_items) load_queries(it, 0);
  cp_async_commit();

  constexpr uint32_t kStageBytes = kBlockM * kStride * sizeof(bf16);
  const uint32_t k_a = smem_addr(k_s + (16 * warp + lo.a_row) * kStride + lo.a_col);  // A: this warp's keys
  const uint32_t v_a = smem_addr(v_s + (16 * warp + lo.a_row) * kStride + lo.a_col);  // A: their values
  const uint32_t q_b = smem_addr(q_s + lo.b_row * kStride + lo.b_col);                // B from [n][k]: queries
  const uint32_t do_b = smem_addr(do_s + lo.b_row * kStride + lo.b_col);              // B from [n][k]: output grads
  const uint32_t q_t = smem_addr(q_s + lo.a_row * kStride + lo.a_col);                // B from [k][n]: queries
  const uint32_t do_t = smem_addr(do_s + lo.a_row * kStride + lo.a_col);              // B from [k][n]: output grads
  float dk[DH / 8][4] = {}, dv[DH / 8][4] = {};  // (16, DH) accumulators of dS^T Q and P^T dO
  for (int stage = 0; it < n_items; stage ^= 1) {
    const int next = next_item(it + 1);
    if (next < n_items) load_queries(next, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();  // k, v and item it have landed
    __syncthreads();
    const int i0 = (qt_first + it % per_head) * kBlockM;
    if (jw < p.l && jw <= i0 + kBlockM - 1) {  // else the warp has no real key or no query of the tile sees one
      const uint32_t stage_bytes = stage * kStageBytes;
      const float* lse_t = lse_s + stage * kBlockM;
      const float* delta_t = delta_s + stage * kBlockM;
      const int32_t* qdoc = qdoc_s + stage * kBlockM;
      float st[kBlockM / 8][4] = {};   // (16 keys, kBlockM queries) S^T = K Q^T, then P^T
      float dpt[kBlockM / 8][4] = {};  // dP^T = V dO^T, then dS^T
#pragma unroll
      for (int kk = 0; kk < DH / 16; ++kk) {
        uint32_t ka[4], va[4];
        ldmatrix_x4(ka, k_a + tile_offset<kStride>(0, 16 * kk));
        ldmatrix_x4(va, v_a + tile_offset<kStride>(0, 16 * kk));
#pragma unroll
        for (int nn = 0; nn < kBlockM / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, q_b + stage_bytes + tile_offset<kStride>(16 * nn, 16 * kk));
          mma_bf16(st[2 * nn], ka, b[0], b[1]);
          mma_bf16(st[2 * nn + 1], ka, b[2], b[3]);
          ldmatrix_x4(b, do_b + stage_bytes + tile_offset<kStride>(16 * nn, 16 * kk));
          mma_bf16(dpt[2 * nn], va, b[0], b[1]);
          mma_bf16(dpt[2 * nn + 1], va, b[2], b[3]);
        }
      }
      const bool mixed_docs =
          docs && !one_document(krange, doc_range(p.doc_chunks, p.n_chunks, bi, i0, kBlockM, p.l));
      const bool masked = jw + 15 > i0 || i0 + kBlockM > p.l || mixed_docs;
#pragma unroll
      for (int nb = 0; nb < kBlockM / 8; ++nb)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int ii = 8 * nb + 2 * tq + (c & 1);  // query within the tile
          const int i = i0 + ii;
          const bool seen = !masked || (i < p.l && (c < 2 ? key_lo : key_hi) <= i &&
                                        (!docs || qdoc[ii] == (c < 2 ? doc_lo : doc_hi)));
          const float pr = seen ? exp2f(st[nb][c] * p.scale_log2 - lse_t[ii] * kLog2e) : 0.0f;
          st[nb][c] = pr;
          dpt[nb][c] = pr * (dpt[nb][c] - delta_t[ii]);  // dS^T (unscaled)
        }
      // dV += P^T dO and dK += dS^T Q: A from registers, dO and Q (kBlockM, DH) as [k][n] storage.
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        uint32_t pa[4], sa[4];
        accumulators_to_a(pa, st[2 * kk], st[2 * kk + 1]);
        accumulators_to_a(sa, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int nd = 0; nd < DH / 16; ++nd) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, do_t + stage_bytes + tile_offset<kStride>(16 * kk, 16 * nd));
          mma_bf16(dv[2 * nd], pa, b[0], b[1]);
          mma_bf16(dv[2 * nd + 1], pa, b[2], b[3]);
          ldmatrix_x4_trans(b, q_t + stage_bytes + tile_offset<kStride>(16 * kk, 16 * nd));
          mma_bf16(dk[2 * nd], sa, b[0], b[1]);
          mma_bf16(dk[2 * nd + 1], sa, b[2], b[3]);
        }
      }
    }
    __syncthreads();
    it = next;
  }
  cp_async_wait<0>();

  if (key_lo < p.l) {
    bf16* dkp = p.dk + ((bi * p.l + key_lo) * p.hk + g) * DH;
    bf16* dvp = p.dv + ((bi * p.l + key_lo) * p.hk + g) * DH;
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd) {
      *reinterpret_cast<uint32_t*>(dkp + 8 * nd + 2 * tq) = pack_bf16(dk[nd][0] * p.scale, dk[nd][1] * p.scale);
      *reinterpret_cast<uint32_t*>(dvp + 8 * nd + 2 * tq) = pack_bf16(dv[nd][0], dv[nd][1]);
    }
  }
  if (key_hi < p.l) {
    bf16* dkp = p.dk + ((bi * p.l + key_hi) * p.hk + g) * DH;
    bf16* dvp = p.dv + ((bi * p.l + key_hi) * p.hk + g) * DH;
#pragma unroll
    for (int nd = 0; nd < DH / 8; ++nd) {
      *reinterpret_cast<uint32_t*>(dkp + 8 * nd + 2 * tq) = pack_bf16(dk[nd][2] * p.scale, dk[nd][3] * p.scale);
      *reinterpret_cast<uint32_t*>(dvp + 8 * nd + 2 * tq) = pack_bf16(dv[nd][2], dv[nd][3]);
    }
  }
}

// ---- host side ----

FlashParams params_of(const AttentionShape& s) {
  FlashParams p{};
  p.l = static_cast<int>(s.seq_len);
  p.h = static_cast<int>(s.n_heads);
  p.hk = static_cast<int>(s.n_kv_heads);
  p.group = p.h / p.hk;
  p.n_chunks = static_cast<int>(ceil_div(s.seq_len, kDocChunk));
  p.scale = static_cast<float>(attention_scale(s));
  p.scale_log2 = p.scale * kLog2e;
  return p;
}

// The per-chunk document ranges (b, n_chunks) on the stream, freed (stream-ordered) with the object.
class DocChunks {
 public:
  DocChunks(const int32_t* doc, const AttentionShape& s, int n_chunks, cudaStream_t stream) : stream_(stream) {
    if (doc == nullptr) return;
    const int64_t n = s.batch * n_chunks;
    SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&chunks_), n * sizeof(int2), stream));
    doc_chunk_kernel<<<grid_for(n, 256), 256, 0, stream>>>(doc, s.batch, static_cast<int>(s.seq_len), n_chunks, chunks_);
    SSM_CUDA_CHECK_LAUNCH();
  }
  ~DocChunks() {
    if (chunks_ != nullptr) cudaFreeAsync(chunks_, stream_);  // no throwing from a destructor
  }
  DocChunks(const DocChunks&) = delete;
  DocChunks& operator=(const DocChunks&) = delete;
  const int2* get() const { return chunks_; }

 private:
  int2* chunks_ = nullptr;
  cudaStream_t stream_;
};

// Calls fn(std::integral_constant<int, DH>) for dh 64 or 128.
template <typename Fn>
void dispatch_head_dim(int64_t dh, Fn&& fn) {
  if (dh == 64) fn(std::integral_constant<int, 64>{});
  else fn(std::integral_constant<int, 128>{});
}

template <typename Kernel>
void launch(Kernel kernel, dim3 grid, size_t smem, const FlashParams& p, cudaStream_t stream) {
  SSM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, kThreads, smem, stream>>>(p);
  SSM_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool flash_attention_applies(const AttentionShape& s, DType dtype, std::initializer_list<const void*> tensors) {
  if (dtype != DType::bf16 || (s.head_dim != 64 && s.head_dim != 128)) return false;
  if (s.seq_len > (int64_t{1} << 30) || s.n_heads > 65535 || s.batch > 65535) return false;
  for (const void* t : tensors)
    if (reinterpret_cast<uintptr_t>(t) % 16 != 0) return false;
  // The largest block's shared memory must fit this GPU (up to 137.5 KiB at dh 128; GPUs with
  // less per block, such as sm_86 / sm_89, keep the scalar kernels).
  size_t needed = 0;
  dispatch_head_dim(s.head_dim, [&](auto dh) {
    constexpr int DH = decltype(dh)::value;
    needed = std::max({QueryBlock<DH>::kForwardSmem, QueryBlock<DH>::kDqSmem, KeyBlock<DH>::kSmem});
  });
  int device = 0, optin = 0;
  SSM_CUDA_CHECK(cudaGetDevice(&device));
  SSM_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return static_cast<size_t>(optin) >= needed;
}

void flash_attention_forward(const AttentionShape& s, const void* q, const void* k, const void* v,
                             const int32_t* doc, void* out, float* lse, cudaStream_t stream) {
  FlashParams p = params_of(s);
  const DocChunks chunks(doc, s, p.n_chunks, stream);
  p.q = static_cast<const bf16*>(q);
  p.k = static_cast<const bf16*>(k);
  p.v = static_cast<const bf16*>(v);
  p.doc = doc;
  p.doc_chunks = chunks.get();
  p.out = static_cast<bf16*>(out);
  p.lse_out = lse;
  dispatch_head_dim(s.head_dim, [&](auto dh) {
    constexpr int DH = decltype(dh)::value;
    using B = QueryBlock<DH>;
    const dim3 grid(static_cast<unsigned>(ceil_div(s.seq_len, B::kBlockM)), static_cast<unsigned>(s.n_heads),
                    static_cast<unsigned>(s.batch));
    launch(flash_forward_kernel<DH>, grid, B::kForwardSmem, p, stream);
  });
}

void flash_attention_backward(const AttentionShape& s, const void* q, const void* k, const void* v,
                              const int32_t* doc, const float* lse, const float* delta, const void* dout, void* dq,
                              void* dk, void* dv, cudaStream_t stream) {
  FlashParams p = params_of(s);
  const DocChunks chunks(doc, s, p.n_chunks, stream);
  p.q = static_cast<const bf16*>(q);
  p.k = static_cast<const bf16*>(k);
  p.v = static_cast<const bf16*>(v);
  p.dout = static_cast<const bf16*>(dout);
  p.doc = doc;
  p.doc_chunks = chunks.get();
  p.lse_in = lse;
  p.delta = delta;
  p.dq = static_cast<bf16*>(dq);
  p.dk = static_cast<bf16*>(dk);
  p.dv = static_cast<bf16*>(dv);
  dispatch_head_dim(s.head_dim, [&](auto dh) {
    constexpr int DH = decltype(dh)::value;
    using K = KeyBlock<DH>;
    using Q = QueryBlock<DH>;
    launch(flash_dkdv_kernel<DH>,
           dim3(static_cast<unsigned>(ceil_div(s.seq_len, K::kBlockN)), static_cast<unsigned>(s.n_kv_heads),
                static_cast<unsigned>(s.batch)),
           K::kSmem, p, stream);
    launch(flash_dq_kernel<DH>,
           dim3(static_cast<unsigned>(ceil_div(s.seq_len, Q::kBlockM)), static_cast<unsigned>(s.n_heads),
                static_cast<unsigned>(s.batch)),
           Q::kDqSmem, p, stream);
  });
}

}  // namespace ssmtrain::kernels::cuda_detail
