// CUDA selective scan (kernels/selective_scan.h). One block of 128 threads owns a channel
// (forward) or a run of R channels (backward) of one sequence; the sequence is cut into
// chunks of 128 * K tokens, thread j holding tokens j*K .. j*K+K-1 of a chunk. Per state n,
// the recurrence x_t = a_t x_{t-1} + b_t is a scan over affine maps (a, b): sequential
// inside a thread, shuffles inside a warp, four warp totals through shared memory.
// The backward runs the same forward scan from the saved chunk-start states, then the
// reverse recurrence p_t = a_t (c_t + p_{t+1}) of the state gradients. dB and dC sum over
// the channels of a group: each block adds its R channels in shared memory (each thread
// owns its tokens, so no atomics), writes one partial per block, and a second kernel sums
// the partials in block order. dA, dD and ddelta_bias sum over the batch the same way.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "kernels/cuda/activations.cuh"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/vector_io.cuh"
#include "kernels/cuda/sum_partials.cuh"
#include "kernels/selective_scan.h"

namespace ssmtrain::kernels {
namespace {

using cuda_detail::from_f32;
using cuda_detail::load_items;
using cuda_detail::store_items;
using cuda_detail::to_f32;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr float kLog2e = 1.4426950408889634f;

// Tokens per thread per chunk: the backward keeps n x chunk partials of dB and dC in shared
// memory, so the chunk shrinks as the state grows (64 KiB at every n).
int items_for(int64_t d_state) { return d_state <= 16 ? 4 : d_state <= 32 ? 2 : 1; }

// x -> a x + b. compose(first, second) applies first, then second.
struct Affine {
  float a, b;
};
__device__ __forceinline__ Affine compose(Affine first, Affine second) {
  return {second.a * first.a, fmaf(second.a, first.b, second.b)};
}

// Exclusive prefix (in thread order) of each thread's map, and the whole block's map.
// `totals` is kWarps entries of shared memory; the caller syncs before reusing it.
__device__ __forceinline__ void block_scan_forward(Affine mine, Affine* totals, Affine* prefix,
                                                   Affine* block_total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  Affine inclusive = mine;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    Affine other{__shfl_up_sync(0xffffffffu, inclusive.a, offset),
                 __shfl_up_sync(0xffffffffu, inclusive.b, offset)};
    if (lane >= offset) inclusive = compose(other, inclusive);
  }
  Affine exclusive{__shfl_up_sync(0xffffffffu, inclusive.a, 1),
                   __shfl_up_sync(0xffffffffu, inclusive.b, 1)};
  if (lane == 0) exclusive = {1.0f, 0.0f};
  if (lane == 31) totals[warp] = inclusive;
  __syncthreads();
  Affine before{1.0f, 0.0f}, all{1.0f, 0.0f};
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before = compose(before, totals[w]);
    all = compose(all, totals[w]);
  }
  *prefix = compose(before, exclusive);
  *block_total = all;
}

// Both scans of the backward at once, sharing one barrier: the forward prefix of `fwd` and
// the reverse suffix of `rev` (which does not depend on the forward result).
__device__ __forceinline__ void block_scan_both(Affine fwd, Affine rev, Affine* totals_fwd, Affine* totals_rev,
                                                Affine* prefix, Affine* fwd_total, Affine* suffix,
                                                Affine* rev_total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  Affine inc_f = fwd, inc_r = rev;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    Affine of{__shfl_up_sync(0xffffffffu, inc_f.a, offset), __shfl_up_sync(0xffffffffu, inc_f.b, offset)};
    Affine orv{__shfl_down_sync(0xffffffffu, inc_r.a, offset), __shfl_down_sync(0xffffffffu, inc_r.b, offset)};
    if (lane >= offset) inc_f = compose(of, inc_f);
    if (lane + offset < 32) inc_r = compose(orv, inc_r);
  }
  Affine exc_f{__shfl_up_sync(0xffffffffu, inc_f.a, 1), __shfl_up_sync(0xffffffffu, inc_f.b, 1)};
  Affine exc_r{__shfl_down_sync(0xffffffffu, inc_r.a, 1), __shfl_down_sync(0xffffffffu, inc_r.b, 1)};
  if (lane == 0) exc_f = {1.0f, 0.0f};
  if (lane == 31) exc_r = {1.0f, 0.0f};
  if (lane == 31) totals_fwd[warp] = inc_f;
  if (lane == 0) totals_rev[warp] = inc_r;
  __syncthreads();
  Affine before{1.0f, 0.0f}, all_f{1.0f, 0.0f}, after{1.0f, 0.0f}, all_r{1.0f, 0.0f};
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before = compose(before, totals_fwd[w]);
    all_f = compose(all_f, totals_fwd[w]);
  }
#pragma unroll
  for (int w = kWarps - 1; w >= 0; --w) {
    if (w > warp) after = compose(after, totals_rev[w]);
    all_r = compose(all_r, totals_rev[w]);
  }
  *prefix = compose(before, exc_f);
  *fwd_total = all_f;
  *suffix = compose(after, exc_r);
  *rev_total = all_r;
}

// The activations and 2^x (kernels/cuda/activations.cuh): softplus and sigmoid entirely on the
// special-function unit (Math::fast) where they are a visible share of the work, with exp from
// it (Math::fast_exp) elsewhere.
using cuda_detail::exp2_ftz;
using cuda_detail::Math;
using cuda_detail::sigmoid;
using cuda_detail::softplus;

struct Dims {
  int64_t batch, dim, seq_len, d_state, ngroups, per_group, nchunks;
  int64_t chunk_len;  // tokens between the states the forward saves for the backward
  bool softplus;
  bool aligned;  // every row starts on a K-element boundary: vector loads are safe
};

// Per-thread inputs of one channel over one chunk: dt, dt * u, u, and the reset flags.
template <int K, typename T>
struct ChannelChunk {
  float u[K], dt[K], dtu[K];
  bool reset[K];

  __device__ void load(const ScanArgs<T, float>& a, const Dims& s, int64_t b, int64_t d, int64_t t0,
                       bool aligned) {
    const int64_t row = (b * s.dim + d) * s.seq_len;
    float delta[K];
    load_items<K>(a.u + row, t0, s.seq_len, aligned, u);
    load_items<K>(a.delta + row, t0, s.seq_len, aligned, delta);
    const float bias = a.delta_bias ? a.delta_bias[d] : 0.0f;
#pragma unroll
    for (int i = 0; i < K; ++i) {
      const int64_t t = t0 + i;
      float v = delta[i] + bias;
      if (s.softplus) v = softplus<Math::fast_exp>(v);
      // Past the end, dt = 0 makes the step the identity (a = 1, b = 0), so padding neither
      // decays the state nor its gradient, and adds nothing to dA.
      dt[i] = t < s.seq_len ? v : 0.0f;
      dtu[i] = dt[i] * u[i];
      reset[i] = a.doc_index && t > 0 && t < s.seq_len &&
                 a.doc_index[b * s.seq_len + t] != a.doc_index[b * s.seq_len + t - 1];
    }
  }
};

// ---------------------------------------------------------------------------------------
// Forward: grid (d, b); chunks of the backward's length (128 * K tokens). Measured on an H100,
// this simple form (two barriers per state, K = 4) beat variants with 8 or 16 tokens per
// thread, B/C prefetch and one barrier per state (0.80 ms against 0.91-1.05 ms at
// b=8, d=1536, l=2048, n=16).
template <int K, typename T>
__global__ void __launch_bounds__(kThreads) scan_forward_kernel(Dims s, ScanArgs<T, float> a, T* out,
                                                                float* final_state, float* chunk_states) {
  __shared__ Affine totals[kWarps];
  extern __shared__ float carried[];  // (n): the state entering the current chunk
  const int64_t d = blockIdx.x, b = blockIdx.y;
  const int64_t g = d / s.per_group;
  const int64_t row = (b * s.dim + d) * s.seq_len;
  const T* Bg = a.B + (b * s.ngroups + g) * s.d_state * s.seq_len;
  const T* Cg = a.C + (b * s.ngroups + g) * s.d_state * s.seq_len;
  const bool aligned = s.aligned;
  constexpr int kChunk = kThreads * K;

  for (int64_t k = threadIdx.x; k < s.d_state; k += kThreads)
    carried[k] = a.initial_state ? a.initial_state[(b * s.dim + d) * s.d_state + k] : 0.0f;
  __syncthreads();

  for (int64_t c = 0; c < s.nchunks; ++c) {
    const int64_t t0 = c * kChunk + threadIdx.x * K;
    if (chunk_states)
      for (int64_t k = threadIdx.x; k < s.d_state; k += kThreads)
        chunk_states[((b * s.dim + d) * s.nchunks + c) * s.d_state + k] = carried[k];
    ChannelChunk<K, T> ch;
    ch.load(a, s, b, d, t0, aligned);
    float y[K];
    const float Dd = a.D ? a.D[d] : 0.0f;
#pragma unroll
    for (int i = 0; i < K; ++i) y[i] = Dd * ch.u[i];

    for (int64_t n = 0; n < s.d_state; ++n) {
      const float A2 = a.A[d * s.d_state + n] * kLog2e;
      float Bv[K], Cv[K], av[K];
      load_items<K>(Bg + n * s.seq_len, t0, s.seq_len, aligned, Bv);
      load_items<K>(Cg + n * s.seq_len, t0, s.seq_len, aligned, Cv);
      Affine mine{1.0f, 0.0f};
#pragma unroll
      for (int i = 0; i < K; ++i) {
        av[i] = ch.reset[i] ? 0.0f : exp2_ftz(ch.dt[i] * A2);
        Bv[i] *= ch.dtu[i];  // now b_t
        mine = compose(mine, Affine{av[i], Bv[i]});
      }
      Affine prefix, total;
      block_scan_forward(mine, totals, &prefix, &total);
      const float x0 = carried[n];
      float x = fmaf(prefix.a, x0, prefix.b);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        x = fmaf(av[i], x, Bv[i]);
        y[i] = fmaf(Cv[i], x, y[i]);
      }
      __syncthreads();  // everyone has read carried[n] and totals
      if (threadIdx.x == 0) carried[n] = fmaf(total.a, x0, total.b);
    }
    if (a.z) {
      float z[K];
      load_items<K>(a.z + row, t0, s.seq_len, aligned, z);
#pragma unroll
      for (int i = 0; i < K; ++i) y[i] *= z[i] * sigmoid<Math::fast_exp>(z[i]);
    }
    store_items<K>(out + row, t0, s.seq_len, aligned, y);
    __syncthreads();  // carried[] complete before the next chunk reads it
  }
  if (final_state)
    for (int64_t k = threadIdx.x; k < s.d_state; k += kThreads)
      final_state[(b * s.dim + d) * s.d_state + k] = carried[k];
}

// ---------------------------------------------------------------------------------------
// Sequential forward, the fast path for n = 16 with channels in whole groups of 8: each lane
// owns one channel and 4 of its states and runs the recurrence through time. A warp holds 8
// channels. When batch x channels fill the GPU, one pass over the whole sequence does it all;
// otherwise the sequence is cut into segments of the backward's chunk length, scanned in
// parallel:
//   1. scan_segments_kernel<false>: every segment from a zero state; its local final state
//      and its decay (0 when a document starts inside it).
//   2. pass_states_kernel: the state entering every segment, in order (a short loop).
//   3. scan_segments_kernel<true>: every segment again from its true entering state, with
//      the outputs.
// The work is the exponential of every (token, state): 4 special-function results per lane
// and token, against about 20 other instructions, so the kernel keeps the special-function
// unit fed. With aligned rows, tiles of kTile tokens are copied to shared memory by cp.async
// one tile ahead (their latency hides behind the current tile), then staged as f32 (dt, dt u;
// B and C transposed); other rows are read through registers. The token loop is unrolled over
// the whole tile: the exponentials do not depend on the state, so those of later tokens
// overlap the recurrence of earlier ones. Tokens past the end of the sequence are identity
// steps (dt = 0, B = C = 0), so every tile runs all kTile steps. Each lane leaves its
// 4-state part of y in shared memory and the channel's 4 parts are added once per tile when
// the outputs are written, instead of shuffles in every step.
constexpr int kTile = 32;          // tokens staged in shared memory at a time
constexpr int kSegWarps = 4;       // warps per block (32 channels)
constexpr int kLaneStates = 4;     // states per lane; a channel's 16 states over 4 lanes
constexpr int kChannelLanes = 16 / kLaneStates;
constexpr int kWarpChannels = 32 / kChannelLanes;  // 8
constexpr int kLaneTokens = kTile / kChannelLanes; // tokens of one channel a lane stages: 8
constexpr int kRow = kTile + 4;    // padded row of per-token values: float4 reads without bank conflicts

struct SegmentScratch {
  float* local_state;  // (b, d, segments, n)
  float* decay;        // (b, d, segments, n)
};

// One warp's tile of B and C in registers: lane i holds half a row (16 tokens) of state
// i / 2; and whether the tile's token `lane` starts a document.
struct BcTile {
  float B[16], C[16];
  bool reset;
};

// Reads the lane's half row of B and C of the tile at t0 (zeros at or past `end`).
template <typename T>
__device__ __forceinline__ void load_bc_rows(const Dims& s, const T* Bg, const T* Cg, int64_t t0, int64_t end, int lane,
                                             BcTile& tile) {
  const int state = lane / 2, half = lane % 2;
  load_items<16>(Bg + state * s.seq_len, t0 + half * 16, end, s.aligned, tile.B);
  load_items<16>(Cg + state * s.seq_len, t0 + half * 16, end, s.aligned, tile.C);
}

// Whether the tile's token t0 + lane starts a document.
template <typename T>
__device__ __forceinline__ bool starts_document(const Dims& s, const ScanArgs<T, float>& a, int64_t b, int64_t t0,
                                                int64_t end, int lane) {
  const int64_t t = t0 + lane;
  return a.doc_index && t > 0 && t < end && a.doc_index[b * s.seq_len + t] != a.doc_index[b * s.seq_len + t - 1];
}

// Writes a fetched tile transposed to (token, state), so a lane reads its states as one vector.
__device__ __forceinline__ void commit_bc_tile(const BcTile& tile, int lane, float (*B)[16], float (*C)[16],
                                               bool* reset) {
  const int state = lane / 2, half = lane % 2;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    B[half * 16 + i][state] = tile.B[i];
    C[half * 16 + i][state] = tile.C[i];
  }
  reset[lane] = tile.reset;
}

// Stages one warp's tile of kTile tokens of B and C and the document-start flags at once.
template <typename T>
__device__ __forceinline__ void stage_bc_tile(const Dims& s, const ScanArgs<T, float>& a, int64_t b, const T* Bg,
                                              const T* Cg, int64_t t0, int64_t end, int lane, float (*B)[16],
                                              float (*C)[16], bool* reset) {
  BcTile tile;
  load_bc_rows(s, Bg, Cg, t0, end, lane, tile);
  tile.reset = starts_document(s, a, b, t0, end, lane);
  commit_bc_tile(tile, lane, B, C, reset);
}

struct SegmentSmem {
  alignas(16) float dt[kSegWarps][kWarpChannels][kRow];
  alignas(16) float dtu[kSegWarps][kWarpChannels][kRow];
  alignas(16) float y[kSegWarps][kWarpChannels][kChannelLanes][kRow];  // each lane's part of y
  alignas(16) float B[kSegWarps][kTile][16];
  alignas(16) float C[kSegWarps][kTile][16];
  bool reset[kSegWarps][kTile];
};

// kTile steps of the recurrence for one lane's 4 states, from the staged tile. kReset: the
// tile holds a document start (the decay is zero there).
template <bool kOutput, bool kReset>
__device__ __forceinline__ void run_tile(SegmentSmem& sh, int warp, int ch, int q, const float (&A2)[kLaneStates],
                                         float (&x)[kLaneStates], float& dt_sum) {
#pragma unroll
  for (int i0 = 0; i0 < kTile; i0 += 4) {
    const float4 dt4 = *reinterpret_cast<const float4*>(&sh.dt[warp][ch][i0]);
    const float4 dtu4 = *reinterpret_cast<const float4*>(&sh.dtu[warp][ch][i0]);
    const float dts[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dtus[4] = {dtu4.x, dtu4.y, dtu4.z, dtu4.w};
    float y4[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int i = i0 + k;
      const float4 Bv = *reinterpret_cast<const float4*>(&sh.B[warp][i][q * kLaneStates]);
      const float Bs[4] = {Bv.x, Bv.y, Bv.z, Bv.w};
      const bool reset = kReset && sh.reset[warp][i];
#pragma unroll
      for (int j = 0; j < kLaneStates; ++j) {
        float decay = exp2_ftz(dts[k] * A2[j]);
        if constexpr (kReset) decay = reset ? 0.0f : decay;
        x[j] = fmaf(decay, x[j], Bs[j] * dtus[k]);
      }
      if constexpr (kOutput) {
        const float4 Cv = *reinterpret_cast<const float4*>(&sh.C[warp][i][q * kLaneStates]);
        y4[k] = fmaf(Cv.x, x[0], fmaf(Cv.y, x[1], fmaf(Cv.z, x[2], Cv.w * x[3])));
      } else {
        dt_sum += dts[k];
      }
    }
    if constexpr (kOutput)
      *reinterpret_cast<float4*>(&sh.y[warp][ch][q][i0]) = make_float4(y4[0], y4[1], y4[2], y4[3]);
  }
}

// One warp's tile as it lies in global memory (rows of kTile tokens), copied there by cp.async
// one tile ahead; the copy needs no registers, so its latency hides behind the current tile.
template <typename T>
struct RawTile {
  alignas(16) T u[kWarpChannels][kTile];
  alignas(16) T delta[kWarpChannels][kTile];
  alignas(16) T z[kWarpChannels][kTile];
  alignas(16) T B[16][kTile];
  alignas(16) T C[16][kTile];
};

// Issues the copies of the tile at t0 (16-byte chunks; chunks at or past `end` are zero-filled:
// with aligned rows a chunk lies wholly before or wholly past the end).
template <typename T>
__device__ __forceinline__ void copy_tile_async(const Dims& s, const ScanArgs<T, float>& a, int64_t row0, const T* Bg,
                                                const T* Cg, int64_t t0, int64_t end, bool with_z, bool with_c,
                                                int lane, RawTile<T>& r) {
  constexpr int E = 16 / sizeof(T);     // elements per chunk
  constexpr int kChunks = kTile / E;    // chunks per row
#pragma unroll
  for (int c = lane; c < kWarpChannels * kChunks; c += 32) {
    const int row = c / kChunks, k = c % kChunks;
    const int64_t t = t0 + k * E;
    const bool valid = t < end;
    const int64_t at = row0 + row * s.seq_len + (valid ? t : 0);
    mma::cp_async_16_unordered(&r.u[row][k * E], a.u + at, valid);
    mma::cp_async_16_unordered(&r.delta[row][k * E], a.delta + at, valid);
    if (with_z) mma::cp_async_16_unordered(&r.z[row][k * E], a.z + at, valid);
  }
#pragma unroll
  for (int c = lane; c < 16 * kChunks; c += 32) {
    const int state = c / kChunks, k = c % kChunks;
    const int64_t t = t0 + k * E;
    const bool valid = t < end;
    const int64_t at = state * s.seq_len + (valid ? t : 0);
    mma::cp_async_16_unordered(&r.B[state][k * E], Bg + at, valid);
    if (with_c) mma::cp_async_16_unordered(&r.C[state][k * E], Cg + at, valid);
  }
  mma::cp_async_commit();
}

// Shared memory of scan_segments_kernel: the staged tiles, then (kAsync) two raw tiles per warp.
template <bool kAsync, typename T>
constexpr size_t segment_smem_bytes() {
  return sizeof(SegmentSmem) + (kAsync ? 2 * kSegWarps * sizeof(RawTile<T>) : 0);
}

// With one segment (gridDim.y == 1) the output pass alone is the whole forward: it starts
// from `entering` = the initial state (or zero when null), saves the state entering every
// backward chunk into `save_states` and writes `final_state`. kAsync (rows and pointers on
// 16-byte boundaries): tiles arrive by cp.async one tile ahead; otherwise each tile is read
// through registers when it is needed.
template <bool kOutput, bool kAsync, typename T>
__global__ void __launch_bounds__(32 * kSegWarps) scan_segments_kernel(Dims s, int64_t seg_len, ScanArgs<T, float> a,
                                                                       SegmentScratch scratch, const float* entering,
                                                                       T* out, float* save_states, float* final_state) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  SegmentSmem& sh = *reinterpret_cast<SegmentSmem*>(smem_raw);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  RawTile<T>* raw = reinterpret_cast<RawTile<T>*>(smem_raw + sizeof(SegmentSmem)) + 2 * warp;  // kAsync only
  const int ch = lane / kChannelLanes, q = lane % kChannelLanes;  // channel within the warp, its state slice
  const int64_t d0 = (int64_t(blockIdx.x) * kSegWarps + warp) * kWarpChannels;  // first channel of the warp
  const int64_t seg = blockIdx.y, b = blockIdx.z;
  const int64_t nsegs = gridDim.y;
  if (d0 >= s.dim) return;  // whole warps only: d is a multiple of kWarpChannels on this path
  const int64_t d = d0 + ch;
  const int64_t g = d0 / s.per_group;
  const T* Bg = a.B + (b * s.ngroups + g) * s.d_state * s.seq_len;
  const T* Cg = a.C + (b * s.ngroups + g) * s.d_state * s.seq_len;
  const int64_t begin = seg * seg_len, end = std::min<int64_t>(s.seq_len, begin + seg_len);
  const float bias = a.delta_bias ? a.delta_bias[d] : 0.0f;
  const float Dd = a.D ? a.D[d] : 0.0f;
  const int64_t row0 = (b * s.dim + d0) * s.seq_len;  // the warp's first channel
  const int64_t row = row0 + ch * s.seq_len;          // this lane's channel
  const int state0 = q * kLaneStates;
  const bool with_z = kOutput && a.z;

  float A2[kLaneStates], x[kLaneStates];
#pragma unroll
  for (int j = 0; j < kLaneStates; ++j) {
    A2[j] = a.A[d * s.d_state + state0 + j] * kLog2e;
    x[j] = kOutput && entering ? entering[((b * s.dim + d) * nsegs + seg) * s.d_state + state0 + j] : 0.0f;
  }
  float dt_sum = 0.0f;
  bool any_reset = false;

  bool next_reset = starts_document(s, a, b, begin, end, lane);
  if constexpr (kAsync) copy_tile_async(s, a, row0, Bg, Cg, begin, end, with_z, kOutput, lane, raw[0]);

  for (int64_t t0 = begin, tile = 0; t0 < end; t0 += kTile, ++tile) {
    if (save_states && t0 % s.chunk_len == 0) {
      const int64_t chunk = t0 / s.chunk_len;
#pragma unroll
      for (int j = 0; j < kLaneStates; ++j)
        save_states[((b * s.dim + d) * s.nchunks + chunk) * s.d_state + state0 + j] = x[j];
    }
    const bool has_next = t0 + kTile < end;
    // Lane (c, q) reads tokens q * 8 .. q * 8 + 7 of channel c (and writes their outputs).
    float uv[kLaneTokens], deltav[kLaneTokens], zv[kLaneTokens];
    BcTile bc;
    bc.reset = next_reset;
    if constexpr (kAsync) {
      if (has_next) copy_tile_async(s, a, row0, Bg, Cg, t0 + kTile, end, with_z, kOutput, lane, raw[(tile + 1) % 2]);
      if (has_next)
        mma::cp_async_wait<1>();  // this tile's copies are done, the next tile's may not be
      else
        mma::cp_async_wait<0>();
      __syncwarp();  // every lane's copies visible to the warp
      const RawTile<T>& r = raw[tile % 2];
      load_items<kLaneTokens>(&r.u[ch][q * kLaneTokens], 0, kLaneTokens, true, uv);
      load_items<kLaneTokens>(&r.delta[ch][q * kLaneTokens], 0, kLaneTokens, true, deltav);
      if (with_z) load_items<kLaneTokens>(&r.z[ch][q * kLaneTokens], 0, kLaneTokens, true, zv);
      load_items<16>(&r.B[lane / 2][(lane % 2) * 16], 0, 16, true, bc.B);
      load_items<16>(&r.C[lane / 2][(lane % 2) * 16], 0, 16, true, bc.C);
    } else {
      const int64_t tt = t0 + q * kLaneTokens;
      load_items<kLaneTokens>(a.u + row, tt, end, s.aligned, uv);
      load_items<kLaneTokens>(a.delta + row, tt, end, s.aligned, deltav);
      if (with_z) load_items<kLaneTokens>(a.z + row, tt, end, s.aligned, zv);
      load_bc_rows(s, Bg, Cg, t0, end, lane, bc);
    }
    if (has_next) next_reset = starts_document(s, a, b, t0 + kTile, end, lane);
    // Stage the tile: dt and dt * u per channel; B and C transposed to (token, state).
    {
      float dtv[kLaneTokens], dtuv[kLaneTokens];
      const int64_t tt = t0 + q * kLaneTokens;
#pragma unroll
      for (int i = 0; i < kLaneTokens; ++i) {
        float v = deltav[i] + bias;
        if (s.softplus) v = softplus<Math::fast>(v);
        const bool inside = tt + i < end;
        dtv[i] = inside ? v : 0.0f;  // past the end: the identity step
        dtuv[i] = inside ? v * uv[i] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kLaneTokens; i += 4) {
        *reinterpret_cast<float4*>(&sh.dt[warp][ch][q * kLaneTokens + i]) =
            make_float4(dtv[i], dtv[i + 1], dtv[i + 2], dtv[i + 3]);
        *reinterpret_cast<float4*>(&sh.dtu[warp][ch][q * kLaneTokens + i]) =
            make_float4(dtuv[i], dtuv[i + 1], dtuv[i + 2], dtuv[i + 3]);
      }
      commit_bc_tile(bc, lane, sh.B[warp], sh.C[warp], sh.reset[warp]);
    }
    const bool tile_reset = __any_sync(0xffffffffu, bc.reset);
    any_reset |= tile_reset;
    __syncwarp();
    if (tile_reset)
      run_tile<kOutput, true>(sh, warp, ch, q, A2, x, dt_sum);
    else
      run_tile<kOutput, false>(sh, warp, ch, q, A2, x, dt_sum);
    if constexpr (kOutput) {
      __syncwarp();
      float yv[kLaneTokens];
#pragma unroll
      for (int i = 0; i < kLaneTokens; i += 4) {
        float4 sum = *reinterpret_cast<const float4*>(&sh.y[warp][ch][0][q * kLaneTokens + i]);
#pragma unroll
        for (int p = 1; p < kChannelLanes; ++p) {
          const float4 part = *reinterpret_cast<const float4*>(&sh.y[warp][ch][p][q * kLaneTokens + i]);
          sum.x += part.x, sum.y += part.y, sum.z += part.z, sum.w += part.w;
        }
        yv[i] = sum.x, yv[i + 1] = sum.y, yv[i + 2] = sum.z, yv[i + 3] = sum.w;
      }
#pragma unroll
      for (int i = 0; i < kLaneTokens; ++i) {
        float v = fmaf(Dd, uv[i], yv[i]);
        if (with_z) v *= zv[i] * sigmoid<Math::fast>(zv[i]);
        yv[i] = v;
      }
      store_items<kLaneTokens>(out + row, t0 + q * kLaneTokens, end, s.aligned, yv);
    }
    __syncwarp();  // the next tile overwrites the staging buffers
  }
  if (final_state) {
#pragma unroll
    for (int j = 0; j < kLaneStates; ++j) final_state[(b * s.dim + d) * s.d_state + state0 + j] = x[j];
  }
  if constexpr (!kOutput) {
#pragma unroll
    for (int j = 0; j < kLaneStates; ++j) {
      const int64_t at = ((b * s.dim + d) * nsegs + seg) * s.d_state + state0 + j;
      scratch.local_state[at] = x[j];
      scratch.decay[at] = any_reset ? 0.0f : exp2_ftz(dt_sum * A2[j]);
    }
  }
}

// One thread per (b, d, state): the state entering each segment, then the final state.
__global__ void pass_states_kernel(Dims s, int64_t nsegs, const float* initial_state, SegmentScratch scratch,
                                   float* entering, float* final_state) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= s.batch * s.dim * s.d_state) return;
  const int64_t bd = i / s.d_state, k = i % s.d_state;
  float h = initial_state ? initial_state[i] : 0.0f;
  for (int64_t seg = 0; seg < nsegs; ++seg) {
    const int64_t at = (bd * nsegs + seg) * s.d_state + k;
    entering[at] = h;
    h = fmaf(scratch.decay[at], h, scratch.local_state[at]);
  }
  if (final_state) final_state[i] = h;
}

// ---------------------------------------------------------------------------------------
// Backward: grid (d / R, b); the block walks chunks from last to first and, in each, its R
// channels in order.
struct BackwardScratch {
  float* dB_partial;     // (b, d / R, n, l)
  float* dC_partial;     // (b, d / R, n, l)
  float* dA_partial;     // (b, d, n)
  float* dD_partial;     // (b, d)
  float* dbias_partial;  // (b, d)
};

// ---------------------------------------------------------------------------------------
// Sequential backward, the mirror of the one-pass forward (n = 16). Each warp walks its 8
// channels' tiles of 32 tokens from last to first, carrying the state gradient p in
// registers; the forward saved the state entering every tile. In each tile, the states are
// recomputed 8 tokens at a time (the last part first) with their decays, both kept in
// registers, and the reverse recurrence p_t = a_t (dy_t C_t + p_{t+1}) runs token by token.
// dB and dC sum over channels: a reduce-scatter over the warp's lanes leaves each lane one
// (B or C, state) sum of its 8 channels per token; once per tile the block adds its 4 warps
// in order into one partial per 32 channels, and sum_partials (kernels/cuda/sum_partials.cuh) adds those in order.
constexpr int kPart = 8;               // tokens whose states are kept at a time
constexpr int kParts = kTile / kPart;

struct SeqBackwardSmem {
  float dt[kSegWarps][8][kTile + 1], dtu[kSegWarps][8][kTile + 1], u[kSegWarps][8][kTile + 1];
  float dy[kSegWarps][8][kTile + 1];  // dL/dy before the z gate
  float ddt[kSegWarps][8][kTile + 1], du[kSegWarps][8][kTile + 1], ypre[kSegWarps][8][kTile + 1];
  alignas(16) float B[kSegWarps][kTile][16];
  alignas(16) float C[kSegWarps][kTile][16];
  float x_enter[kSegWarps][kParts][32][4];  // the state entering each part
  float dbc[kSegWarps][kTile][32];          // per-warp channel sums; lane = (B or C, state)
  bool reset[kSegWarps][kTile];
};

// Segmented (gridDim.y > 1 segments of seg_len tokens, whole tiles): each block walks only its
// segment's tiles, starting from the state gradient `carry` (b, d, segments, n) entering the
// segment from the right (see scan_backward_local_kernel and pass_carries_kernel); dA, dD and
// ddelta_bias are left per (batch, segment) and summed in that order by the caller.
template <typename T>
__global__ void __launch_bounds__(32 * kSegWarps, 3) scan_backward_seq_kernel(Dims s, int64_t seg_len,
                                                                           ScanArgs<T, float> a,
                                                                           ScanGrads<T, float> gr,
                                                                           const float* chunk_states,
                                                                           const float* carry,
                                                                           BackwardScratch scratch) {
  constexpr int S = 4;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  SeqBackwardSmem& sh = *reinterpret_cast<SeqBackwardSmem*>(smem_raw);
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  const int ch = lane / 4, q = lane % 4;
  const int64_t blocks_per_batch = s.dim / 32;
  const int64_t d0 = int64_t(blockIdx.x) * 32 + w * 8;  // the warp's first channel
  const int64_t d = d0 + ch, b = blockIdx.z;
  const int64_t seg = blockIdx.y, nsegs = gridDim.y;
  const int64_t g = d0 / s.per_group;
  const T* Bg = a.B + (b * s.ngroups + g) * 16 * s.seq_len;
  const T* Cg = a.C + (b * s.ngroups + g) * 16 * s.seq_len;
  const int64_t row = (b * s.dim + d0 + ch) * s.seq_len;
  const float bias = a.delta_bias ? a.delta_bias[d] : 0.0f;
  const float Dd = a.D ? a.D[d] : 0.0f;
  const int64_t first_tile = seg * (seg_len / kTile);
  const int64_t last_tile = std::min<int64_t>(s.nchunks, (seg + 1) * (seg_len / kTile)) - 1;

  float A[S], A2[S], p[S], dA[S];
#pragma unroll
  for (int j = 0; j < S; ++j) {
    A[j] = a.A[d * 16 + q * S + j];
    A2[j] = A[j] * kLog2e;
    if (carry)
      p[j] = carry[((b * s.dim + d) * nsegs + seg) * 16 + q * S + j];
    else
      p[j] = gr.dfinal_state ? gr.dfinal_state[(b * s.dim + d) * 16 + q * S + j] : 0.0f;
    dA[j] = 0.0f;
  }
  float dD_sum = 0.0f, dbias_sum = 0.0f;

  for (int64_t tile = last_tile; tile >= first_tile; --tile) {
    const int64_t t0 = tile * kTile;
    const int64_t end = s.seq_len;
    // Stage the tile (as the forward does), with dy = dout * silu(z). What the tile's outputs
    // need of dout, delta and z stays in registers: the softplus slope and dL/dz per unit of
    // the gate's input.
    float slope[8], dz_scale[8];
    {
      const int64_t tt = t0 + q * 8;
      float uv[8], deltav[8], doutv[8], zv[8];
      load_items<8>(a.u + row, tt, end, s.aligned, uv);
      load_items<8>(a.delta + row, tt, end, s.aligned, deltav);
      load_items<8>(gr.dout + row, tt, end, s.aligned, doutv);
      if (a.z) load_items<8>(a.z + row, tt, end, s.aligned, zv);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float v = deltav[i] + bias;
        if (s.softplus) v = softplus<Math::fast>(v);
        const bool inside = tt + i < end;
        v = inside ? v : 0.0f;
        sh.dt[w][ch][q * 8 + i] = v;
        sh.dtu[w][ch][q * 8 + i] = v * uv[i];
        sh.u[w][ch][q * 8 + i] = uv[i];
        slope[i] = s.softplus ? sigmoid<Math::fast>(deltav[i] + bias) : 1.0f;
        if (a.z) {
          const float sz = sigmoid<Math::fast>(zv[i]);
          sh.dy[w][ch][q * 8 + i] = doutv[i] * zv[i] * sz;
          dz_scale[i] = doutv[i] * sz * (1.0f + zv[i] * (1.0f - sz));
        } else {
          sh.dy[w][ch][q * 8 + i] = doutv[i];
        }
      }
      stage_bc_tile(s, a, b, Bg, Cg, t0, end, lane, sh.B[w], sh.C[w], sh.reset[w]);
    }
    __syncwarp();
    // One pass over the tile for the state entering each part (each lane keeps its own).
    {
      float x[S];
#pragma unroll
      for (int j = 0; j < S; ++j) x[j] = chunk_states[((b * s.dim + d) * s.nchunks + tile) * 16 + q * S + j];
#pragma unroll
      for (int i = 0; i < kTile; ++i) {
        if (i % kPart == 0)
#pragma unroll
          for (int j = 0; j < S; ++j) sh.x_enter[w][i / kPart][lane][j] = x[j];
        const float dt = sh.dt[w][ch][i], dtu = sh.dtu[w][ch][i];
        const bool reset = sh.reset[w][i];
#pragma unroll
        for (int j = 0; j < S; ++j) x[j] = fmaf(reset ? 0.0f : exp2_ftz(dt * A2[j]), x[j], sh.B[w][i][q * S + j] * dtu);
      }
    }
    for (int part = kParts - 1; part >= 0; --part) {
      const int base = part * kPart;
      // Forward over the part with its states and decays in registers (the loops are
      // unrolled, so the indices are static): xs[i] enters token i, xs[i + 1] leaves it.
      float xs[kPart + 1][S], decay[kPart][S];
#pragma unroll
      for (int j = 0; j < S; ++j) xs[0][j] = sh.x_enter[w][part][lane][j];
#pragma unroll
      for (int i = 0; i < kPart; ++i) {
        const float dt = sh.dt[w][ch][base + i], dtu = sh.dtu[w][ch][base + i];
        const bool reset = sh.reset[w][base + i];
#pragma unroll
        for (int j = 0; j < S; ++j) {
          decay[i][j] = reset ? 0.0f : exp2_ftz(dt * A2[j]);
          xs[i + 1][j] = fmaf(decay[i][j], xs[i][j], sh.B[w][base + i][q * S + j] * dtu);
        }
      }
      // Reverse through the part.
#pragma unroll
      for (int i = kPart - 1; i >= 0; --i) {
        const int t_local = base + i;
        const float dt = sh.dt[w][ch][t_local], dtu = sh.dtu[w][ch][t_local];
        const float u = sh.u[w][ch][t_local], dy = sh.dy[w][ch][t_local];
        float ddt = 0.0f, du = 0.0f, yp = 0.0f, v[8];
#pragma unroll
        for (int j = 0; j < S; ++j) {
          const float Bj = sh.B[w][t_local][q * S + j], Cj = sh.C[w][t_local][q * S + j];
          const float x_t = xs[i + 1][j], x_prev = xs[i][j];
          const float grad_x = fmaf(dy, Cj, p[j]);
          const float d_decay = grad_x * x_prev * decay[i][j];
          ddt = fmaf(d_decay, A[j], ddt);
          dA[j] = fmaf(d_decay, dt, dA[j]);
          const float gb = grad_x * Bj;
          ddt = fmaf(gb, u, ddt);
          du = fmaf(gb, dt, du);
          v[j] = grad_x * dtu;  // dB contribution of this channel
          v[4 + j] = dy * x_t;   // dC contribution
          yp = fmaf(Cj, x_t, yp);
          p[j] = decay[i][j] * grad_x;
        }
        // Sums over the channel's 4 lanes (its 16 states).
#pragma unroll
        for (int mask = 1; mask < 4; mask *= 2) {
          ddt += __shfl_xor_sync(0xffffffffu, ddt, mask);
          du += __shfl_xor_sync(0xffffffffu, du, mask);
          yp += __shfl_xor_sync(0xffffffffu, yp, mask);
        }
        if (q == 0) {
          sh.ddt[w][ch][t_local] = ddt;
          sh.du[w][ch][t_local] = du;
          sh.ypre[w][ch][t_local] = yp;
        }
        // Reduce-scatter over the 8 channels (lane bits 2..4): each level keeps half.
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const bool upper = lane & 16;
          const float keep = upper ? v[4 + k] : v[k], send = upper ? v[k] : v[4 + k];
          v[k] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
        }
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const bool upper = lane & 8;
          const float keep = upper ? v[2 + k] : v[k], send = upper ? v[k] : v[2 + k];
          v[k] = keep + __shfl_xor_sync(0xffffffffu, send, 8);
        }
        {
          const bool upper = lane & 4;
          const float keep = upper ? v[1] : v[0], send = upper ? v[0] : v[1];
          v[0] = keep + __shfl_xor_sync(0xffffffffu, send, 4);
        }
        sh.dbc[w][t_local][lane] = v[0];  // (B or C: lane bit 4, state: q * 4 + 2 * bit 3 + bit 2)
      }
    }
    // The block's 4 warps, added in order, into the tile's partials.
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * 32; idx += 32 * kSegWarps) {
      const int i = idx / 32, L = idx % 32;
      const int64_t t = t0 + i;
      if (t >= s.seq_len) continue;
      float sum = 0.0f;
#pragma unroll
      for (int ww = 0; ww < kSegWarps; ++ww) sum += sh.dbc[ww][i][L];
      const int bc = (L >> 4) & 1, state = (L & 3) * 4 + ((L >> 3) & 1) * 2 + ((L >> 2) & 1);
      float* partial = bc ? scratch.dC_partial : scratch.dB_partial;
      partial[((b * blocks_per_batch + blockIdx.x) * 16 + state) * s.seq_len + t] = sum;
    }
    __syncthreads();
    // The tile's per-token outputs: lane (c, q) writes tokens q*8 .. q*8+7 of channel c.
    {
      const int64_t tt = t0 + q * 8;
      float duv[8], ddv[8], dzv[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int tl = q * 8 + i;
        const float u = sh.u[w][ch][tl], dy = sh.dy[w][ch][tl];
        duv[i] = fmaf(dy, Dd, sh.du[w][ch][tl]);
        ddv[i] = sh.ddt[w][ch][tl] * slope[i];
        if (a.z) dzv[i] = dz_scale[i] * fmaf(Dd, u, sh.ypre[w][ch][tl]);
        if (tt + i < end) {
          dD_sum = fmaf(dy, u, dD_sum);
          dbias_sum += ddv[i];
        }
      }
      store_items<8>(gr.du + row, tt, end, s.aligned, duv);
      store_items<8>(gr.ddelta + row, tt, end, s.aligned, ddv);
      if (a.z) store_items<8>(gr.dz + row, tt, end, s.aligned, dzv);
    }
    __syncwarp();  // the next tile overwrites the staging buffers
  }
  const int64_t bsd = (b * nsegs + seg) * s.dim + d;  // this channel's (batch, segment) partial
#pragma unroll
  for (int j = 0; j < S; ++j) {
    scratch.dA_partial[bsd * 16 + q * S + j] = dA[j];
    if (gr.dinitial_state && seg == 0) gr.dinitial_state[(b * s.dim + d) * 16 + q * S + j] = p[j];
  }
#pragma unroll
  for (int mask = 1; mask < 4; mask *= 2) {
    dD_sum += __shfl_xor_sync(0xffffffffu, dD_sum, mask);
    dbias_sum += __shfl_xor_sync(0xffffffffu, dbias_sum, mask);
  }
  if (q == 0) {
    scratch.dD_partial[bsd] = dD_sum;
    scratch.dbias_partial[bsd] = dbias_sum;
  }
}

// ---------------------------------------------------------------------------------------
// Segmented sequential backward, for shapes whose b * d / 8 warps do not fill the GPU: the
// sequence is cut into segments of whole tiles and the reverse recurrence
// p_t = a_t (dy_t C_t + p_{t+1}) is linear in the gradient entering a segment from the right,
// p_begin = local + decay * p_end, so:
//   1. scan_backward_local_kernel: every segment in reverse from p_end = 0, giving `local`,
//      and its decay exp(A sum dt) (0 when a document starts inside it);
//   2. pass_carries_kernel: the true p_end of every segment, last segment first;
//   3. scan_backward_seq_kernel per segment from that carry and the forward's saved states.
// Step 1 stages a warp's tile like the main kernel (dt and dy = dout silu(z) per channel, C
// transposed) and costs one exponential per (token, state).
struct LocalBackwardSmem {
  float dt[kSegWarps][8][kTile + 1], dy[kSegWarps][8][kTile + 1];
  alignas(16) float C[kSegWarps][kTile][16];
  bool reset[kSegWarps][kTile];
};

template <typename T>
__global__ void __launch_bounds__(32 * kSegWarps) scan_backward_local_kernel(Dims s, int64_t seg_len,
                                                                            ScanArgs<T, float> a,
                                                                            ScanGrads<T, float> gr,
                                                                            SegmentScratch out) {
  __shared__ LocalBackwardSmem sh;
  constexpr int S = 4;
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  const int ch = lane / 4, q = lane % 4;
  const int64_t d0 = int64_t(blockIdx.x) * 32 + w * 8;
  const int64_t d = d0 + ch, b = blockIdx.z;
  const int64_t seg = blockIdx.y, nsegs = gridDim.y;
  const int64_t g = d0 / s.per_group;
  const T* Cg = a.C + (b * s.ngroups + g) * 16 * s.seq_len;
  const int64_t row = (b * s.dim + d) * s.seq_len;
  const float bias = a.delta_bias ? a.delta_bias[d] : 0.0f;
  const int64_t first_tile = seg * (seg_len / kTile);
  const int64_t last_tile = std::min<int64_t>(s.nchunks, (seg + 1) * (seg_len / kTile)) - 1;
  float A2[S], p[S];
#pragma unroll
  for (int j = 0; j < S; ++j) {
    A2[j] = a.A[d * 16 + q * S + j] * kLog2e;
    p[j] = 0.0f;
  }
  float dt_sum = 0.0f;
  bool any_reset = false;
  for (int64_t tile = last_tile; tile >= first_tile; --tile) {
    const int64_t t0 = tile * kTile, end = s.seq_len;
    {
      const int64_t tt = t0 + q * 8;
      float deltav[8], doutv[8], zv[8];
      load_items<8>(a.delta + row, tt, end, s.aligned, deltav);
      load_items<8>(gr.dout + row, tt, end, s.aligned, doutv);
      if (a.z) load_items<8>(a.z + row, tt, end, s.aligned, zv);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float v = deltav[i] + bias;
        if (s.softplus) v = softplus<Math::fast>(v);
        const bool inside = tt + i < end;
        sh.dt[w][ch][q * 8 + i] = inside ? v : 0.0f;
        sh.dy[w][ch][q * 8 + i] = a.z ? doutv[i] * zv[i] * sigmoid<Math::fast>(zv[i]) : doutv[i];
      }
      float Cv[16];
      load_items<16>(Cg + (lane / 2) * s.seq_len, t0 + (lane % 2) * 16, end, s.aligned, Cv);
#pragma unroll
      for (int i = 0; i < 16; ++i) sh.C[w][(lane % 2) * 16 + i][lane / 2] = Cv[i];
      sh.reset[w][lane] = starts_document(s, a, b, t0, end, lane);
    }
    __syncwarp();
#pragma unroll
    for (int i = kTile - 1; i >= 0; --i) {
      const float dt = sh.dt[w][ch][i], dy = sh.dy[w][ch][i];
      const bool reset = sh.reset[w][i];
      const float4 Cv = *reinterpret_cast<const float4*>(&sh.C[w][i][q * S]);
      const float Cs[S] = {Cv.x, Cv.y, Cv.z, Cv.w};
#pragma unroll
      for (int j = 0; j < S; ++j) p[j] = (reset ? 0.0f : exp2_ftz(dt * A2[j])) * fmaf(dy, Cs[j], p[j]);
      dt_sum += dt;
      any_reset |= reset;
    }
    __syncwarp();  // the next tile overwrites the staging buffers
  }
#pragma unroll
  for (int j = 0; j < S; ++j) {
    const int64_t at = ((b * s.dim + d) * nsegs + seg) * 16 + q * S + j;
    out.local_state[at] = p[j];
    out.decay[at] = any_reset ? 0.0f : exp2_ftz(dt_sum * A2[j]);
  }
}

// One thread per (b, d, state): the state gradient entering each segment from the right, last
// segment first (the final state's gradient enters the last).
__global__ void pass_carries_kernel(Dims s, int64_t nsegs, const float* dfinal_state, SegmentScratch local,
                                    float* carry) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= s.batch * s.dim * s.d_state) return;
  const int64_t bd = i / s.d_state, k = i % s.d_state;
  float p = dfinal_state ? dfinal_state[i] : 0.0f;
  for (int64_t seg = nsegs - 1; seg >= 0; --seg) {
    const int64_t at = (bd * nsegs + seg) * s.d_state + k;
    carry[at] = p;
    p = fmaf(local.decay[at], p, local.local_state[at]);
  }
}

template <int K, typename T>
__global__ void __launch_bounds__(kThreads) scan_backward_kernel(Dims s, int R, ScanArgs<T, float> a,
                                                                 ScanGrads<T, float> gr,
                                                                 const float* chunk_states,
                                                                 BackwardScratch scratch) {
  constexpr int kChunk = kThreads * K;
  // Block-scan totals alternate per state, and the carried state gradients per chunk, so each
  // state costs one barrier (two states apart, a barrier separates every reuse).
  __shared__ Affine totals[2][2][kWarps];
  extern __shared__ float smem[];
  // Layout: dB (n, chunk), dC (n, chunk), carry (2, R, n), dA (warps, R, n), dD / dbias (warps, R, 2).
  float* dB_sh = smem;
  float* dC_sh = dB_sh + s.d_state * kChunk;
  float* carry = dC_sh + s.d_state * kChunk;
  float* dA_sh = carry + 2 * R * s.d_state;
  float* dDb_sh = dA_sh + kWarps * R * s.d_state;
  float* A_sh = dDb_sh + kWarps * R * 2;  // (R, n)

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t block_d = blockIdx.x, b = blockIdx.y;
  const int64_t d_first = block_d * R;
  const int64_t g = d_first / s.per_group;
  const T* Bg = a.B + (b * s.ngroups + g) * s.d_state * s.seq_len;
  const T* Cg = a.C + (b * s.ngroups + g) * s.d_state * s.seq_len;
  const bool aligned = s.aligned;

  const int first_parity = static_cast<int>((s.nchunks - 1) & 1);
  for (int64_t i = threadIdx.x; i < R * s.d_state; i += kThreads) {
    const int64_t r = i / s.d_state, k = i % s.d_state;
    carry[first_parity * R * s.d_state + i] = gr.dfinal_state ? gr.dfinal_state[(b * s.dim + d_first + r) * s.d_state + k] : 0.0f;
  }
  for (int64_t i = threadIdx.x; i < kWarps * R * (s.d_state + 2); i += kThreads) dA_sh[i] = 0.0f;
  for (int64_t i = threadIdx.x; i < R * s.d_state; i += kThreads) A_sh[i] = a.A[d_first * s.d_state + i];
  for (int64_t i = threadIdx.x; i < 2 * s.d_state * kChunk; i += kThreads) dB_sh[i] = 0.0f;
  __syncthreads();

  int parity = 0;
  for (int64_t c = s.nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk + threadIdx.x * K;
    const int local0 = threadIdx.x * K;
    const float* carry_in = carry + (c & 1) * R * s.d_state;  // p entering the chunk from the right
    float* carry_out = carry + ((c & 1) ^ 1) * R * s.d_state;
    for (int r = 0; r < R; ++r) {
      const int64_t d = d_first + r;
      const int64_t row = (b * s.dim + d) * s.seq_len;
      ChannelChunk<K, T> ch;
      ch.load(a, s, b, d, t0, aligned);
      float dout[K], z[K], dy[K], ddt[K], du[K], ypre[K];
      load_items<K>(gr.dout + row, t0, s.seq_len, aligned, dout);
      const float Dd = a.D ? a.D[d] : 0.0f;
      if (a.z) load_items<K>(a.z + row, t0, s.seq_len, aligned, z);
#pragma unroll
      for (int i = 0; i < K; ++i) {
        dy[i] = a.z ? dout[i] * z[i] * sigmoid<Math::fast_exp>(z[i]) : dout[i];  // gradient of y before gating
        ddt[i] = 0.0f;
        du[i] = dy[i] * Dd;
        ypre[i] = Dd * ch.u[i];
      }
      float Bnext[K], Cnext[K];
      load_items<K>(Bg, t0, s.seq_len, aligned, Bnext);
      load_items<K>(Cg, t0, s.seq_len, aligned, Cnext);
      const float* x_starts = chunk_states + ((b * s.dim + d) * s.nchunks + c) * s.d_state;
      float x_start_next = x_starts[0];
      for (int64_t n = 0; n < s.d_state; ++n) {
        const float A = A_sh[r * s.d_state + n];
        const float A2 = A * kLog2e;
        const float x_start = x_start_next;
        if (n + 1 < s.d_state) x_start_next = x_starts[n + 1];
        float Bv[K], Cv[K], av[K], x[K];
#pragma unroll
        for (int i = 0; i < K; ++i) {
          Bv[i] = Bnext[i];
          Cv[i] = Cnext[i];
        }
        if (n + 1 < s.d_state) {  // the next state's B and C are in flight while this one runs
          load_items<K>(Bg + (n + 1) * s.seq_len, t0, s.seq_len, aligned, Bnext);
          load_items<K>(Cg + (n + 1) * s.seq_len, t0, s.seq_len, aligned, Cnext);
        }
        // The forward maps (a_t, b_t) and the reverse maps (a_t, a_t c_t), c_t = dy_t C_t,
        // of p_t = a_t (c_t + p_{t+1}) (p: the state gradient carried to t - 1).
        Affine mine{1.0f, 0.0f}, rmine{1.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < K; ++i) {
          av[i] = ch.reset[i] ? 0.0f : exp2_ftz(ch.dt[i] * A2);
          mine = compose(mine, Affine{av[i], Bv[i] * ch.dtu[i]});
        }
#pragma unroll
        for (int i = K - 1; i >= 0; --i) rmine = compose(rmine, Affine{av[i], av[i] * dy[i] * Cv[i]});
        Affine prefix, total, suffix, rtotal;
        block_scan_both(mine, rmine, totals[parity][0], totals[parity][1], &prefix, &total, &suffix, &rtotal);
        parity ^= 1;
        const float x_in = fmaf(prefix.a, x_start, prefix.b);  // state before my first token
        float xp = x_in;
#pragma unroll
        for (int i = 0; i < K; ++i) {
          xp = fmaf(av[i], xp, Bv[i] * ch.dtu[i]);
          x[i] = xp;
        }
        const float p_end = carry_in[r * s.d_state + n];  // p after the chunk's last token
        float p = fmaf(suffix.a, p_end, suffix.b);        // p after my last token
        float dA_sum = 0.0f;
#pragma unroll
        for (int i = K - 1; i >= 0; --i) {
          const float grad_x = fmaf(dy[i], Cv[i], p);  // dL/dx_t
          const float x_prev = i > 0 ? x[i - 1] : x_in;
          const float d_decay = grad_x * x_prev * av[i];  // times d(exp(dt A))/d(dt A)
          ddt[i] = fmaf(d_decay, A, ddt[i]);
          dA_sum = fmaf(d_decay, ch.dt[i], dA_sum);
          ddt[i] = fmaf(grad_x * Bv[i], ch.u[i], ddt[i]);
          du[i] = fmaf(grad_x * Bv[i], ch.dt[i], du[i]);
          dB_sh[n * kChunk + local0 + i] += grad_x * ch.dtu[i];
          dC_sh[n * kChunk + local0 + i] += dy[i] * x[i];
          ypre[i] = fmaf(Cv[i], x[i], ypre[i]);
          p = av[i] * grad_x;
        }
        dA_sum = cuda_detail::warp_allreduce(dA_sum, cuda_detail::SumOp{});
        if (lane == 0) dA_sh[(warp * R + r) * s.d_state + n] += dA_sum;
        if (threadIdx.x == 0) carry_out[r * s.d_state + n] = fmaf(rtotal.a, p_end, rtotal.b);
      }
      float dz[K], ddelta[K], dD_sum = 0.0f, dbias_sum = 0.0f;
      float delta_raw[K];
      load_items<K>(a.delta + row, t0, s.seq_len, aligned, delta_raw);
      const float bias = a.delta_bias ? a.delta_bias[d] : 0.0f;
#pragma unroll
      for (int i = 0; i < K; ++i) {
        if (a.z) {
          const float sz = sigmoid<Math::fast_exp>(z[i]);
          dz[i] = dout[i] * ypre[i] * sz * (1.0f + z[i] * (1.0f - sz));
        }
        ddelta[i] = s.softplus ? ddt[i] * sigmoid<Math::fast_exp>(delta_raw[i] + bias) : ddt[i];
        if (t0 + i < s.seq_len) {
          dD_sum = fmaf(dy[i], ch.u[i], dD_sum);
          dbias_sum += ddelta[i];
        }
      }
      store_items<K>(gr.du + row, t0, s.seq_len, aligned, du);
      store_items<K>(gr.ddelta + row, t0, s.seq_len, aligned, ddelta);
      if (a.z) store_items<K>(gr.dz + row, t0, s.seq_len, aligned, dz);
      dD_sum = cuda_detail::warp_allreduce(dD_sum, cuda_detail::SumOp{});
      dbias_sum = cuda_detail::warp_allreduce(dbias_sum, cuda_detail::SumOp{});
      if (lane == 0) {
        dDb_sh[(warp * R + r) * 2 + 0] += dD_sum;
        dDb_sh[(warp * R + r) * 2 + 1] += dbias_sum;
      }
    }
    // This chunk's dB / dC partials for the block's channels, then clear for the next chunk.
    __syncthreads();
    const int64_t partial_row = (b * (s.dim / R) + block_d) * s.d_state;
    for (int64_t i = threadIdx.x; i < s.d_state * kChunk; i += kThreads) {
      const int64_t n = i / kChunk, t = c * kChunk + i % kChunk;
      if (t < s.seq_len) {
        scratch.dB_partial[(partial_row + n) * s.seq_len + t] = dB_sh[i];
        scratch.dC_partial[(partial_row + n) * s.seq_len + t] = dC_sh[i];
      }
      dB_sh[i] = 0.0f;
      dC_sh[i] = 0.0f;
    }
    __syncthreads();
  }
  // Per-channel sums over the sequence, warps added in order.
  for (int64_t i = threadIdx.x; i < R * s.d_state; i += kThreads) {
    const int64_t r = i / s.d_state, k = i % s.d_state, d = d_first + r;
    float sum = 0.0f;
    for (int w = 0; w < kWarps; ++w) sum += dA_sh[(w * R + r) * s.d_state + k];
    scratch.dA_partial[(b * s.dim + d) * s.d_state + k] = sum;
    // After chunk 0 the carry sits in parity 1: the gradient of the initial state.
    if (gr.dinitial_state) gr.dinitial_state[(b * s.dim + d) * s.d_state + k] = carry[R * s.d_state + i];
  }
  for (int64_t r = threadIdx.x; r < R; r += kThreads) {
    float dD = 0.0f, dbias = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      dD += dDb_sh[(w * R + r) * 2 + 0];
      dbias += dDb_sh[(w * R + r) * 2 + 1];
    }
    scratch.dD_partial[b * s.dim + d_first + r] = dD;
    scratch.dbias_partial[b * s.dim + d_first + r] = dbias;
  }
}

// ---------------------------------------------------------------------------------------
// Decode step: one thread per (b, d).
template <typename T>
__global__ void scan_step_kernel(Dims s, ScanArgs<T, float> a, float* state, T* out) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= s.batch * s.dim) return;
  const int64_t b = i / s.dim, d = i % s.dim, g = d / s.per_group;
  float dt = to_f32(a.delta[i]) + (a.delta_bias ? a.delta_bias[d] : 0.0f);
  if (s.softplus) dt = softplus<Math::fast_exp>(dt);
  const float u = to_f32(a.u[i]);
  float y = 0.0f;
  for (int64_t k = 0; k < s.d_state; ++k) {
    float& x = state[i * s.d_state + k];
    const float Bk = to_f32(a.B[(b * s.ngroups + g) * s.d_state + k]);
    const float Ck = to_f32(a.C[(b * s.ngroups + g) * s.d_state + k]);
    x = fmaf(exp2f(dt * a.A[d * s.d_state + k] * kLog2e), x, dt * Bk * u);
    y = fmaf(Ck, x, y);
  }
  if (a.D) y = fmaf(a.D[d], u, y);
  if (a.z) {
    const float z = to_f32(a.z[i]);
    y *= z * sigmoid<Math::fast_exp>(z);
  }
  out[i] = from_f32<T>(y);
}

// Multiprocessors of the current device (cached per device).
int sm_count() {
  static int counts[64] = {};
  int device = 0;
  SSM_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 64 && counts[device] > 0) return counts[device];
  int count = 0;
  SSM_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device < 64) counts[device] = count;
  return count;
}

// The sequential path (n = 16, whole blocks of 32 channels per group): a sequential forward
// that saves the state every kTile tokens, and the sequential backward. One pass over the
// whole sequence when b * d / 8 warps fill the GPU (8 per multiprocessor); else both run over
// segments (segmented_forward, the segmented backward above).
bool sequential_path(const Dims& s) { return s.d_state == 16 && s.dim % 32 == 0 && s.per_group % 32 == 0; }

bool fills_gpu(const Dims& s) { return s.batch * (s.dim / kWarpChannels) >= 8 * sm_count(); }

constexpr int64_t kSegmentWarpsPerSm = 32;  // warps of all segments together, per multiprocessor
constexpr int64_t kMinSegmentTiles = 4;

// kSegmentWarpsPerSm, or SSMTRAIN_SCAN_SEGMENT_WARPS (a positive integer) for tuning runs of
// the benchmark; read once per process. Results depend on it only through the segmentation.
int64_t segment_warps_per_sm() {
  static const int64_t value = [] {
    const char* v = std::getenv("SSMTRAIN_SCAN_SEGMENT_WARPS");
    if (!v || !*v) return kSegmentWarpsPerSm;
    char* end = nullptr;
    const long parsed = std::strtol(v, &end, 10);
    if (*end != '\0' || parsed < 1 || parsed > 4096)
      throw KernelError(std::string("SSMTRAIN_SCAN_SEGMENT_WARPS: expected an integer in 1..4096, got '") + v + "'");
    return static_cast<int64_t>(parsed);
  }();
  return value;
}

// Segment length of the sequential path in tokens (whole tiles): the whole sequence when the
// channels fill the GPU, else short enough that b * d / 8 * segments reach
// kSegmentWarpsPerSm warps per multiprocessor (about 2.7 waves of the backward's 3 blocks per
// multiprocessor), but at least kMinSegmentTiles tiles. The passes over segments cost one
// loop step per segment, the local passes the same work at every length.
int64_t sequential_segment_len(const Dims& s) {
  const int64_t tiles = (s.seq_len + kTile - 1) / kTile;
  if (fills_gpu(s) || tiles <= kMinSegmentTiles) return std::max<int64_t>(tiles, 1) * kTile;
  const int64_t warps = s.batch * (s.dim / kWarpChannels);
  const int64_t want = (segment_warps_per_sm() * sm_count() + warps - 1) / warps;
  const int64_t per_seg = std::max<int64_t>((tiles + want - 1) / want, kMinSegmentTiles);
  return per_seg * kTile;
}

int64_t segments_of(const Dims& s, int64_t seg_len) { return std::max<int64_t>((s.seq_len + seg_len - 1) / seg_len, 1); }

Dims make_dims(const ScanShape& s) {
  if (s.batch < 0 || s.dim < 1 || s.seq_len < 0 || s.d_state < 1 || s.d_state > 64 || s.ngroups < 1 ||
      s.dim % s.ngroups != 0)
    throw KernelError("cuda::selective_scan: unsupported shape (d " + std::to_string(s.dim) + ", n " +
                      std::to_string(s.d_state) + ", g " + std::to_string(s.ngroups) +
                      "); needs 1 <= n <= 64 and g dividing d");
  Dims d{s.batch, s.dim, s.seq_len, s.d_state, s.ngroups, s.dim / s.ngroups, 0, 0, s.delta_softplus, false};
  d.chunk_len = sequential_path(d) ? kTile : kThreads * items_for(s.d_state);
  d.nchunks = (s.seq_len + d.chunk_len - 1) / d.chunk_len;
  return d;
}

// Vector loads of K elements need every (b, d) row and every pointer on a 16-byte boundary.
bool rows_aligned(const Dims& s, int64_t K, int64_t elem, std::initializer_list<const void*> pointers) {
  if ((s.seq_len * elem) % 16 != 0 || (K * elem) % 16 != 0 && (K * elem) % 8 != 0) return false;
  for (const void* p : pointers)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

template <typename T> ScanArgs<T, float> typed(const ScanArgs<void, float>& a) {
  return {static_cast<const T*>(a.u), static_cast<const T*>(a.delta), a.A, static_cast<const T*>(a.B),
          static_cast<const T*>(a.C), a.D, static_cast<const T*>(a.z), a.delta_bias, a.initial_state,
          a.doc_index};
}

template <typename T> ScanGrads<T, float> typed(const ScanGrads<void, float>& g) {
  return {static_cast<const T*>(g.dout), g.dfinal_state, static_cast<T*>(g.du), static_cast<T*>(g.ddelta),
          g.dA, static_cast<T*>(g.dB), static_cast<T*>(g.dC), g.dD, static_cast<T*>(g.dz), g.ddelta_bias,
          g.dinitial_state};
}

// Calls fn(std::integral_constant<int, K>) for the items-per-thread of this state size.
template <typename Fn> void dispatch_items(int64_t d_state, Fn&& fn) {
  switch (items_for(d_state)) {
    case 4: fn(std::integral_constant<int, 4>{}); return;
    case 2: fn(std::integral_constant<int, 2>{}); return;
    default: fn(std::integral_constant<int, 1>{}); return;
  }
}

// Channels per backward block: the largest of 16, 8, 4, 2, 1 that divides a group.
int channels_per_block(int64_t per_group) {
  for (int r : {16, 8, 4, 2})
    if (per_group % r == 0) return r;
  return 1;
}

// One launch of scan_segments_kernel, with its shared memory (above the 48 KiB default).
template <bool kOutput, typename T>
void launch_segments(const Dims& s, dim3 grid, int64_t seg_len, const ScanArgs<T, float>& args, SegmentScratch scratch,
                     const float* entering, T* out, float* save_states, float* final_state, cudaStream_t stream) {
  auto run = [&](auto async) {
    constexpr bool kAsync = decltype(async)::value;
    constexpr size_t bytes = segment_smem_bytes<kAsync, T>();
    auto* kernel = scan_segments_kernel<kOutput, kAsync, T>;
    SSM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    kernel<<<grid, 32 * kSegWarps, bytes, stream>>>(s, seg_len, args, scratch, entering, out, save_states, final_state);
    SSM_CUDA_CHECK_LAUNCH();
  };
  if (s.aligned)
    run(std::true_type{});
  else
    run(std::false_type{});
}

// The launches of the segmented forward (see scan_segments_kernel): one sequential pass when
// batch x channels alone fill the GPU, else local pass, state passing and output pass.
void segmented_forward(Dims s, DType dtype, const ScanArgs<void, float>& a, void* out, float* final_state,
                       float* chunk_states, cudaStream_t stream) {
  // 4 states per lane (4 lanes and 8 channels per warp) measured faster on an H100 than 2
  // (0.54 against 0.55 ms at b=8 l=2048; 0.54 against 0.79 ms at b=2 l=8192).
  constexpr int kCh = kWarpChannels;
  // cp.async copies 16-byte chunks of every row: rows and pointers on 16-byte boundaries.
  s.aligned = rows_aligned(s, 16 / (dtype == DType::bf16 ? 2 : 4), dtype == DType::bf16 ? 2 : 4,
                           {a.u, a.delta, a.B, a.C, a.z, out});
  // On the sequential path the segments are independent of the backward's chunks (kTile
  // tokens, saved by the output pass); else they are those chunks (their entering states).
  const bool sequential = sequential_path(s);
  const int64_t seg_len = sequential ? sequential_segment_len(s) : s.chunk_len;
  if (fills_gpu(s) || segments_of(s, seg_len) == 1) {
    // Enough channels to fill the GPU in one sequential pass: no segments, no second pass.
    const dim3 grid(static_cast<unsigned>((s.dim + kCh * kSegWarps - 1) / (kCh * kSegWarps)), 1u,
                    static_cast<unsigned>(s.batch));
    cuda_detail::dispatch_f32_bf16(dtype, "selective_scan_forward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      launch_segments<true, T>(s, grid, s.seq_len, typed<T>(a), SegmentScratch{}, a.initial_state, static_cast<T*>(out),
                               chunk_states, final_state, stream);
    });
    return;
  }
  const int64_t nsegs = segments_of(s, seg_len);
  const int64_t states = s.batch * s.dim * nsegs * s.d_state;
  const bool enter_in_chunks = chunk_states && !sequential;
  float* save = sequential ? chunk_states : nullptr;
  float* pool = nullptr;
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&pool), sizeof(float) * states * (enter_in_chunks ? 2 : 3), stream));
  SegmentScratch scratch{pool, pool + states};
  float* entering = enter_in_chunks ? chunk_states : pool + 2 * states;
  const dim3 grid(static_cast<unsigned>((s.dim + kCh * kSegWarps - 1) / (kCh * kSegWarps)), static_cast<unsigned>(nsegs),
                  static_cast<unsigned>(s.batch));
  cuda_detail::dispatch_f32_bf16(dtype, "selective_scan_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const ScanArgs<T, float> args = typed<T>(a);
    launch_segments<false, T>(s, grid, seg_len, args, scratch, nullptr, nullptr, nullptr, nullptr, stream);
    pass_states_kernel<<<cuda_detail::grid_for(s.batch * s.dim * s.d_state, 128), 128, 0, stream>>>(
        s, nsegs, a.initial_state, scratch, entering, final_state);
    SSM_CUDA_CHECK_LAUNCH();
    launch_segments<true, T>(s, grid, seg_len, args, scratch, entering, static_cast<T*>(out), save, nullptr, stream);
  });
  SSM_CUDA_CHECK(cudaFreeAsync(pool, stream));
}

}  // namespace

namespace cuda {

int64_t selective_scan_num_chunks(const ScanShape& s) { return make_dims(s).nchunks; }

ScanPlan selective_scan_plan(const ScanShape& shape) {
  const Dims s = make_dims(shape);
  ScanPlan plan;
  plan.chunk_len = s.chunk_len;
  plan.segment_len = s.seq_len;
  if (!sequential_path(s) || s.seq_len == 0) return plan;
  plan.segment_len = sequential_segment_len(s);
  plan.segments = segments_of(s, plan.segment_len);
  plan.path = plan.segments > 1 ? ScanPath::sequential_segmented : ScanPath::sequential;
  if (plan.segments == 1) plan.segment_len = s.seq_len;
  return plan;
}

void selective_scan_forward(const ScanShape& shape, DType dtype, const ScanArgs<void, float>& a, void* out,
                            float* final_state, float* chunk_states, cudaStream_t stream) {
  Dims s = make_dims(shape);
  s.aligned = rows_aligned(s, items_for(s.d_state), dtype == DType::bf16 ? 2 : 4, {a.u, a.delta, a.B, a.C, a.z, out});
  if (s.batch == 0 || s.seq_len == 0) {
    if (final_state && s.batch > 0)
      SSM_CUDA_CHECK(a.initial_state ? cudaMemcpyAsync(final_state, a.initial_state,
                                                       s.batch * s.dim * s.d_state * 4, cudaMemcpyDeviceToDevice, stream)
                                     : cudaMemsetAsync(final_state, 0, s.batch * s.dim * s.d_state * 4, stream));
    return;
  }
  if (s.d_state == 16 && s.dim % 8 == 0 && s.per_group % 8 == 0) {
    segmented_forward(s, dtype, a, out, final_state, chunk_states, stream);
    return;
  }
  cuda_detail::dispatch_f32_bf16(dtype, "selective_scan_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_items(s.d_state, [&](auto items) {
      constexpr int K = decltype(items)::value;
      const dim3 grid(static_cast<unsigned>(s.dim), static_cast<unsigned>(s.batch));
      scan_forward_kernel<K, T><<<grid, kThreads, s.d_state * sizeof(float), stream>>>(
          s, typed<T>(a), static_cast<T*>(out), final_state, chunk_states);
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
}

void selective_scan_backward(const ScanShape& shape, DType dtype, const ScanArgs<void, float>& a,
                             const ScanGrads<void, float>& g, const float* chunk_states, cudaStream_t stream) {
  Dims s = make_dims(shape);
  s.aligned = rows_aligned(s, items_for(s.d_state), dtype == DType::bf16 ? 2 : 4,
                           {a.u, a.delta, a.B, a.C, a.z, g.dout, g.du, g.ddelta, g.dz});
  if (!chunk_states) throw KernelError("cuda::selective_scan_backward: chunk_states from the forward are required");
  if ((a.D && !g.dD) || (a.z && !g.dz) || (a.delta_bias && !g.ddelta_bias) || (a.initial_state && !g.dinitial_state))
    throw KernelError("cuda::selective_scan_backward: a gradient buffer is missing for an optional input");
  const int64_t elem = dtype == DType::bf16 ? 2 : 4;
  if (s.batch == 0 || s.seq_len == 0) {
    SSM_CUDA_CHECK(cudaMemsetAsync(g.dA, 0, s.dim * s.d_state * 4, stream));
    if (g.dD) SSM_CUDA_CHECK(cudaMemsetAsync(g.dD, 0, s.dim * 4, stream));
    if (g.ddelta_bias) SSM_CUDA_CHECK(cudaMemsetAsync(g.ddelta_bias, 0, s.dim * 4, stream));
    if (s.batch > 0) {
      SSM_CUDA_CHECK(cudaMemsetAsync(g.dB, 0, s.batch * s.ngroups * s.d_state * s.seq_len * elem, stream));
      SSM_CUDA_CHECK(cudaMemsetAsync(g.dC, 0, s.batch * s.ngroups * s.d_state * s.seq_len * elem, stream));
      if (g.dinitial_state)
        SSM_CUDA_CHECK(g.dfinal_state ? cudaMemcpyAsync(g.dinitial_state, g.dfinal_state, s.batch * s.dim * s.d_state * 4,
                                                        cudaMemcpyDeviceToDevice, stream)
                                      : cudaMemsetAsync(g.dinitial_state, 0, s.batch * s.dim * s.d_state * 4, stream));
    }
    return;
  }
  const bool sequential = sequential_path(s);
  if (sequential) s.aligned = rows_aligned(s, 8, elem, {a.u, a.delta, a.B, a.C, a.z, g.dout, g.du, g.ddelta, g.dz});
  const int64_t seg_len = sequential ? sequential_segment_len(s) : s.seq_len;
  const int64_t nsegs = sequential ? segments_of(s, seg_len) : 1;
  const int R = sequential ? 32 : channels_per_block(s.per_group);
  const int64_t blocks_per_batch = s.dim / R;
  const int64_t partial_elems = s.batch * blocks_per_batch * s.d_state * s.seq_len;
  const int64_t seg_states = nsegs > 1 ? s.batch * s.dim * nsegs * s.d_state : 0;  // local, decay, carry
  BackwardScratch scratch{};
  char* pool = nullptr;
  const size_t pool_bytes =
      sizeof(float) * (2 * partial_elems + s.batch * nsegs * s.dim * (s.d_state + 2) + 3 * seg_states);
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&pool), pool_bytes, stream));
  scratch.dB_partial = reinterpret_cast<float*>(pool);
  scratch.dC_partial = scratch.dB_partial + partial_elems;
  scratch.dA_partial = scratch.dC_partial + partial_elems;  // (b, segments, d, n)
  scratch.dD_partial = scratch.dA_partial + s.batch * nsegs * s.dim * s.d_state;
  scratch.dbias_partial = scratch.dD_partial + s.batch * nsegs * s.dim;
  SegmentScratch local{scratch.dbias_partial + s.batch * nsegs * s.dim, nullptr};
  local.decay = local.local_state + seg_states;
  float* carry = nsegs > 1 ? local.decay + seg_states : nullptr;

  cuda_detail::dispatch_f32_bf16(dtype, "selective_scan_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (sequential) {
      const dim3 grid(static_cast<unsigned>(blocks_per_batch), static_cast<unsigned>(nsegs),
                      static_cast<unsigned>(s.batch));
      if (nsegs > 1) {
        scan_backward_local_kernel<T><<<grid, 32 * kSegWarps, 0, stream>>>(s, seg_len, typed<T>(a), typed<T>(g), local);
        SSM_CUDA_CHECK_LAUNCH();
        pass_carries_kernel<<<cuda_detail::grid_for(s.batch * s.dim * s.d_state, 128), 128, 0, stream>>>(
            s, nsegs, g.dfinal_state, local, carry);
        SSM_CUDA_CHECK_LAUNCH();
      }
      const size_t smem = sizeof(SeqBackwardSmem);
      auto kernel = scan_backward_seq_kernel<T>;
      SSM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
      kernel<<<grid, 32 * kSegWarps, smem, stream>>>(s, seg_len, typed<T>(a), typed<T>(g), chunk_states, carry,
                                                     scratch);
      SSM_CUDA_CHECK_LAUNCH();
    }
    dispatch_items(s.d_state, [&](auto items) {
      constexpr int K = decltype(items)::value;
      constexpr int kChunk = kThreads * K;
      if (!sequential) {
        const size_t smem =
            sizeof(float) * (2 * s.d_state * kChunk + 3 * R * s.d_state + kWarps * R * (s.d_state + 2));
        auto kernel = scan_backward_kernel<K, T>;
        SSM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
        const dim3 grid(static_cast<unsigned>(blocks_per_batch), static_cast<unsigned>(s.batch));
        kernel<<<grid, kThreads, smem, stream>>>(s, R, typed<T>(a), typed<T>(g), chunk_states, scratch);
        SSM_CUDA_CHECK_LAUNCH();
      }
      // dB, dC: sum the block partials of each group in block order.
      const int64_t blocks_per_group = s.per_group / R;
      const int64_t bc_inner = s.d_state * s.seq_len;
      cuda_detail::sum_partials_by_thread(scratch.dB_partial, s.batch * s.ngroups, blocks_per_group, bc_inner,
                                          static_cast<T*>(g.dB), stream);
      cuda_detail::sum_partials_by_thread(scratch.dC_partial, s.batch * s.ngroups, blocks_per_group, bc_inner,
                                          static_cast<T*>(g.dC), stream);
    });
  });
  // dA, dD, ddelta_bias: sum over the batch in order.
  auto sum_batch = [&](const float* partial, int64_t inner, float* out) {
    cuda_detail::sum_partials_by_thread(partial, 1, s.batch * nsegs, inner, out, stream);
  };
  sum_batch(scratch.dA_partial, s.dim * s.d_state, g.dA);
  if (g.dD) sum_batch(scratch.dD_partial, s.dim, g.dD);
  if (g.ddelta_bias) sum_batch(scratch.dbias_partial, s.dim, g.ddelta_bias);
  SSM_CUDA_CHECK(cudaFreeAsync(pool, stream));
}

void selective_scan_step(const ScanShape& shape, DType dtype, const ScanArgs<void, float>& a, float* state,
                         void* out, cudaStream_t stream) {
  const Dims s = make_dims(shape);
  if (s.batch == 0) return;
  cuda_detail::dispatch_f32_bf16(dtype, "selective_scan_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    scan_step_kernel<T><<<cuda_detail::grid_for(s.batch * s.dim, 128), 128, 0, stream>>>(
        s, typed<T>(a), state, static_cast<T*>(out));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda
}  // namespace ssmtrain::kernels
