// CUDA causal depthwise conv1d (kernels/causal_conv1d.h). A block owns a tile of one
// (batch, channel) row; thread j holds K consecutive tokens (32 bytes: K = 16 for bf16, 8 for
// f32), loaded with two 16-byte vector loads, plus the w-1 token halos, taken from the
// neighbouring lanes by warp shuffles (only the warp's edge lanes read them from memory).
// The backward recomputes the pre-activation for SiLU's derivative from x, gets dout of the
// right halo the same way, and writes dx and one (dweight, dbias) partial per block;
// sum_partials (kernels/cuda/sum_partials.cuh) adds the partials of each channel in block order
// (deterministic, no atomics).
// Channel-last (b, l, d) x, as Mamba-2 reads it: threads over channels (16 bytes of consecutive
// channels each, so a warp reads 512 contiguous bytes of a token row), each thread walking a run
// of tokens with the w-1 inputs before it in registers; the backward walks its run backwards
// and keeps the w-1 later pre-activation gradients instead. The same partials and sum_partials.
// H100, b=8 d=3072 l=2048 w=4 bf16 SiLU: forward 0.076 ms (88% of copy bandwidth), forward +
// backward 0.213 ms (79%).
#include <cuda_bf16.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "kernels/causal_conv1d.h"
#include "kernels/cuda/activations.cuh"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/sum_partials.cuh"
#include "kernels/cuda/vector_io.cuh"

namespace ssmtrain::kernels {
namespace {

using cuda_detail::from_f32;
using cuda_detail::store_items;
using cuda_detail::to_f32;

constexpr int kMaxThreads = 128;     // threads per block
// Tokens per thread: 32 bytes of x, two 16-byte vectors (16 for bf16, 8 for f32). Fewer
// would spend more of each thread on the halos, the weights and the reductions.
template <typename T> constexpr int kItemsOf = 32 / sizeof(T);
constexpr unsigned kFullMask = 0xffffffffu;

struct Dims {
  int64_t batch, dim, seq_len;
  int64_t tiles;  // blocks per (batch, channel) row
  bool silu;
  bool aligned;  // rows start on 16-byte boundaries and l % K == 0: vector loads are safe
};

// Threads per block: enough 32-lane warps to cover a row, at most kMaxThreads. A function of
// l and K only, so the order of the dweight sums never depends on the device.
int threads_for(int64_t seq_len, int items) {
  const int64_t chunks = (seq_len + items - 1) / items;
  const int64_t warps = (chunks + 31) / 32;
  return static_cast<int>(warps >= kMaxThreads / 32 ? kMaxThreads : (warps < 1 ? 32 : warps * 32));
}

// Element of memory as a window value: floats through f32, the document index as int.
template <typename V, typename T> __device__ __forceinline__ V widen(T v) {
  if constexpr (std::is_same_v<V, int>) return static_cast<int>(v);
  else return to_f32(v);
}

// v[i] = row[t0 - LEFT + i] for i in [0, LEFT + K + RIGHT): tokens t0 .. t0+K-1 from
// memory (16-byte vector loads when aligned), the LEFT tokens before from lane - 1 and the
// RIGHT tokens after from lane + 1. Tokens at or past l read `past_end`; the tokens before
// t = 0 read before_start. Every lane of the warp must call it (shuffles); the lanes of a warp
// hold consecutive chunks of one row.
template <int K, int LEFT, int RIGHT, typename T, typename V>
__device__ __forceinline__ void load_window(const T* row, int64_t t0, int64_t l, bool aligned, V past_end,
                                            const V (&before_start)[LEFT > 0 ? LEFT : 1],
                                            V (&v)[LEFT + K + RIGHT]) {
  const int lane = threadIdx.x % 32;
  // The warp's edge lanes read their halo from memory; issued first so the loads overlap.
  V edge_left[LEFT > 0 ? LEFT : 1], edge_right[RIGHT > 0 ? RIGHT : 1];
#pragma unroll
  for (int i = 0; i < LEFT; ++i) {
    const bool from_memory = lane == 0 && t0 > 0 && t0 - LEFT + i < l;
    edge_left[i] = from_memory ? widen<V>(row[t0 - LEFT + i]) : before_start[i];
  }
#pragma unroll
  for (int i = 0; i < RIGHT; ++i) {
    const int64_t t = t0 + K + i;
    edge_right[i] = lane == 31 && t < l ? widen<V>(row[t]) : past_end;
  }
  V* body = v + LEFT;
  if (aligned && t0 + K <= l) {
    constexpr int kPerVector = 16 / sizeof(T);
    static_assert(K % kPerVector == 0, "a thread's tokens must fill whole 16-byte vectors");
#pragma unroll
    for (int q = 0; q < K / kPerVector; ++q) {
      const uint4 raw = *reinterpret_cast<const uint4*>(row + t0 + q * kPerVector);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < kPerVector; ++i) body[q * kPerVector + i] = widen<V>(e[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < K; ++i) body[i] = t0 + i < l ? widen<V>(row[t0 + i]) : past_end;
  }
#pragma unroll
  for (int i = 0; i < LEFT; ++i) {
    const V from_previous = __shfl_up_sync(kFullMask, body[K - LEFT + i], 1);
    v[i] = lane > 0 ? from_previous : edge_left[i];
  }
#pragma unroll
  for (int i = 0; i < RIGHT; ++i) {
    const V from_next = __shfl_down_sync(kFullMask, body[i], 1);
    v[LEFT + K + i] = lane < 31 ? from_next : edge_right[i];
  }
}


// The SiLU's sigmoid with fast exp and reciprocal (Math::fast, kernels/cuda/activations.cuh):
// the kernels would otherwise spend more time on IEEE division than on memory.
using cuda_detail::Math;
using cuda_detail::sigmoid;

// Which taps reach across no document boundary. For N outputs whose windows start at x
// window index j (output j's taps are x window j .. j+W-1, the last being the output's own
// token): reach[j][k] is true when the document index does not change in (j+k, j+W-1].
template <int W, int N, int WINDOW>
__device__ __forceinline__ void tap_reach(const int (&doc)[WINDOW], bool (&reach)[N][W]) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    bool ok = true;
    reach[j][W - 1] = true;
#pragma unroll
    for (int k = W - 2; k >= 0; --k) {
      ok = ok && doc[j + k + 1] == doc[j + k];
      reach[j][k] = ok;
    }
  }
}

// The document-index window of a row over [t0 - LEFT, t0 + K + RIGHT); the tokens before
// t = 0 belong to token 0's document.
template <int K, int LEFT, int RIGHT>
__device__ __forceinline__ void load_doc_window(const int32_t* doc_row, int64_t t0, int64_t l, bool aligned,
                                                int (&doc)[LEFT + K + RIGHT]) {
  int before[LEFT > 0 ? LEFT : 1];
  const int first = t0 == 0 ? doc_row[0] : 0;
#pragma unroll
  for (int i = 0; i < (LEFT > 0 ? LEFT : 1); ++i) before[i] = first;
  load_window<K, LEFT, RIGHT>(doc_row, t0, l, aligned, 0, before, doc);
}

// The row this block works on and this thread's first token; grid (d, tiles, b), so no
// thread divides.
template <int K>
struct Position {
  int64_t c, tile, b, row, t0;
  __device__ Position() {
    c = blockIdx.x;
    tile = blockIdx.y;
    b = blockIdx.z;
    row = b * gridDim.x + c;
    t0 = (tile * blockDim.x + threadIdx.x) * K;
  }
};

// ---------------------------------------------------------------------------------------
// Forward: grid (d, tiles, b), one tile of a row per block.
// 8 blocks per SM (6 with documents, whose index window needs more registers); see the backward.
template <typename T, int W, bool kDocs>
__global__ void __launch_bounds__(kMaxThreads, kDocs ? 6 : 8)
    conv_forward_kernel(Dims s, Conv1dArgs<T, float> a, T* out) {
  constexpr int K = kItemsOf<T>;
  constexpr int H = W - 1;  // halo
  const Position<K> p;
  const int64_t l = s.seq_len;
  float before[H] = {};  // inputs at t = -H .. -1
  if (p.t0 == 0 && a.initial_state)
#pragma unroll
    for (int i = 0; i < H; ++i) before[i] = to_f32(a.initial_state[p.row * H + i]);
  float xw[H + K];  // x at t0 - H .. t0 + K - 1
  load_window<K, H, 0>(a.x + p.row * l, p.t0, l, s.aligned, 0.0f, before, xw);
  bool reach[K][W];
  if constexpr (kDocs) {
    int doc[H + K];
    load_doc_window<K, H, 0>(a.doc_index + p.b * l, p.t0, l, s.aligned, doc);
    tap_reach<W>(doc, reach);
  }
  float weight[W];
#pragma unroll
  for (int k = 0; k < W; ++k) weight[k] = a.weight[p.c * W + k];
  const float bias = a.bias ? a.bias[p.c] : 0.0f;
  float y[K];
#pragma unroll
  for (int i = 0; i < K; ++i) {
    float acc = bias;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      if constexpr (kDocs) acc = reach[i][k] ? fmaf(weight[k], xw[i + k], acc) : acc;
      else acc = fmaf(weight[k], xw[i + k], acc);
    }
    y[i] = s.silu ? acc * sigmoid<Math::fast>(acc) : acc;
  }
  store_items(out + p.row * l, p.t0, l, s.aligned, y);
}

// The state the next segment starts from: grid-stride over (b, d, w-1).
// x of (b, c, pos) at a.x[b * xs_b + c * xs_c + pos * xs_t] (either layout).
template <typename T, int W>
__global__ void conv_final_state_kernel(Dims s, Conv1dArgs<T, float> a, int64_t xs_b, int64_t xs_c, int64_t xs_t,
                                        T* final_state) {
  constexpr int H = W - 1;
  const int64_t l = s.seq_len, total = s.batch * s.dim * H;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / H, i = idx % H, b = row / s.dim, c = row % s.dim;
    const int64_t pos = l - H + i;
    bool kept = true;  // the document index does not change in (pos, l - 1]
    if (a.doc_index)
      for (int64_t u = pos + 1 > 1 ? pos + 1 : 1; u < l; ++u)
        kept = kept && a.doc_index[b * l + u] == a.doc_index[b * l + u - 1];
    T value = from_f32<T>(0.0f);
    if (kept) {
      if (pos >= 0) value = a.x[b * xs_b + c * xs_c + pos * xs_t];
      else if (a.initial_state) value = a.initial_state[row * H + H + pos];
    }
    final_state[idx] = value;
  }
}

// ---------------------------------------------------------------------------------------
// Backward: grid (d, tiles, b). Writes dx (and d initial state) and, per block, the partial
// sums dweight[0..W) at dweight_partials[((b * tiles + tile) * d + c) * W] and dbias at
// dbias_partials[(b * tiles + tile) * d + c].
// At least 8 blocks (32 warps) per SM, 64 registers, so that enough loads are in flight
// while other warps compute; the document variant needs more registers and gets 6.
template <typename T, int W, bool kDocs>
__global__ void __launch_bounds__(kMaxThreads, kDocs ? 6 : 8)
    conv_backward_kernel(Dims s, Conv1dArgs<T, float> a, Conv1dGrads<T, float> g, float* dweight_partials,
                         float* dbias_partials) {
  constexpr int K = kItemsOf<T>;
  constexpr int H = W - 1;
  constexpr int kOuts = K + H;  // outputs whose windows touch this thread's inputs
  const Position<K> p;
  const int64_t l = s.seq_len;
  float before[H] = {};
  if (p.t0 == 0 && a.initial_state)
#pragma unroll
    for (int i = 0; i < H; ++i) before[i] = to_f32(a.initial_state[p.row * H + i]);
  float xw[H + K + H];  // x at t0 - H .. t0 + K + H - 1
  load_window<K, H, H>(a.x + p.row * l, p.t0, l, s.aligned, 0.0f, before, xw);
  float dyw[kOuts];  // dout at t0 .. t0 + K + H - 1 (zero past l)
  const float no_before[1] = {0.0f};
  load_window<K, 0, H>(g.dout + p.row * l, p.t0, l, s.aligned, 0.0f, no_before, dyw);
  // Output j (token t0 + j) has taps xw[j .. j + H].
  bool reach[kOuts][W];
  if constexpr (kDocs) {
    int doc[H + K + H];
    load_doc_window<K, H, H>(a.doc_index + p.b * l, p.t0, l, s.aligned, doc);
    tap_reach<W>(doc, reach);
  } else {
#pragma unroll
    for (int j = 0; j < kOuts; ++j)
#pragma unroll
      for (int k = 0; k < W; ++k) reach[j][k] = true;
  }
  float weight[W];
#pragma unroll
  for (int k = 0; k < W; ++k) weight[k] = a.weight[p.c * W + k];
  const float bias = a.bias ? a.bias[p.c] : 0.0f;

  // dL / d pre-activation of outputs t0 .. t0 + K + H - 1; this thread's own outputs
  // (j < K) feed dweight and dbias, the next H belong to the next thread.
  float dpre[kOuts];
  float dweight[W] = {}, dbias = 0.0f;
#pragma unroll
  for (int j = 0; j < kOuts; ++j) {
    dpre[j] = dyw[j];
    if (s.silu) {
      float pre = bias;
#pragma unroll
      for (int k = 0; k < W; ++k) pre = reach[j][k] ? fmaf(weight[k], xw[j + k], pre) : pre;
      const float sg = sigmoid<Math::fast>(pre);
      dpre[j] *= sg * fmaf(pre, 1.0f - sg, 1.0f);
    }
    if (j < K) {
      dbias += dpre[j];
#pragma unroll
      for (int k = 0; k < W; ++k) dweight[k] = reach[j][k] ? fmaf(dpre[j], xw[j + k], dweight[k]) : dweight[k];
    }
  }
  // d xw[q] for q in [0, H + K): the outputs j = q - k that hold it as tap k.
  float dxw[H + K];
#pragma unroll
  for (int q = 0; q < H + K; ++q) {
    float sum = 0.0f;
#pragma unroll
    for (int k = W - 1; k >= 0; --k) {
      const int j = q - k;
      if (j >= 0 && j < kOuts && reach[j][k]) sum = fmaf(dpre[j], weight[k], sum);
    }
    dxw[q] = sum;
  }
  float dx[K];
#pragma unroll
  for (int i = 0; i < K; ++i) dx[i] = dxw[H + i];
  store_items(g.dx + p.row * l, p.t0, l, s.aligned, dx);
  // The first thread of a row saw every output that reads the initial state.
  if (p.t0 == 0 && g.dinitial_state)
#pragma unroll
    for (int i = 0; i < H; ++i) g.dinitial_state[p.row * H + i] = from_f32<T>(dxw[i]);

  // Block partial of (dweight, dbias): a fixed butterfly per warp, then warps in order.
  __shared__ float warp_sums[kMaxThreads / 32][W + 1];
  float sums[W + 1];
#pragma unroll
  for (int k = 0; k < W; ++k) sums[k] = dweight[k];
  sums[W] = dbias;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k <= W; ++k) {
    sums[k] = cuda_detail::warp_allreduce(sums[k], cuda_detail::SumOp{});
    if (lane == 0) warp_sums[warp][k] = sums[k];
  }
  __syncthreads();
  if (threadIdx.x <= W) {
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += warp_sums[w][threadIdx.x];
    const int64_t part = (p.b * s.tiles + p.tile) * s.dim + p.c;
    if (threadIdx.x < W) dweight_partials[part * W + threadIdx.x] = total;
    else dbias_partials[part] = total;
  }
}

// ---------------------------------------------------------------------------------------
// Channel-last (b, l, d): grid (ceil(d / (32 K)), ceil(l / kClTokensPerBlock), b), blocks of
// (32, kClRuns) threads. Thread (x, y) owns the K channels from c0 = (blockIdx.x * 32 + x) * K
// (16 bytes) and the run of kClRun tokens from t0 = (blockIdx.y * kClRuns + y) * kClRun.
constexpr int kClRun = 32;   // tokens per thread: the w-1 halo re-read is at most 3 / 32 of x
constexpr int kClRuns = 4;   // runs (warps) per block
constexpr int kClTokensPerBlock = kClRun * kClRuns;
template <typename T> constexpr int kClItems = 16 / sizeof(T);

struct ClDims {
  int64_t batch, dim, seq_len, x_stride;
  int64_t tiles;   // token tiles (blocks along l) per batch row
  bool silu;
  bool x_aligned;  // x and its row stride on 16-byte boundaries: vector loads of x
  bool o_aligned;  // out / dout / dx (row stride d) on 16-byte boundaries
};

// The thread's channels and token run.
template <int K>
struct ClPosition {
  int64_t c0, b, t0, t1;
  __device__ ClPosition(const ClDims& s) {
    c0 = (int64_t(blockIdx.x) * 32 + threadIdx.x) * K;
    b = blockIdx.z;
    t0 = (int64_t(blockIdx.y) * kClRuns + threadIdx.y) * kClRun;
    t1 = t0 + kClRun < s.seq_len ? t0 + kClRun : s.seq_len;
  }
};

// x at token pos (>= -(w-1)) of the thread's K channels: the row, or the initial state
// before t = 0, or zero; channels at or past d read zero.
template <int K, int H, typename T>
__device__ __forceinline__ void cl_input(const ClDims& s, const Conv1dArgs<T, float>& a, int64_t b, int64_t c0,
                                         int64_t pos, float (&v)[K]) {
  if (pos >= 0) {
    cuda_detail::load_items(a.x + (b * s.seq_len + pos) * s.x_stride, c0, s.dim, s.x_aligned, v);
    return;
  }
#pragma unroll
  for (int j = 0; j < K; ++j)
    v[j] = a.initial_state && c0 + j < s.dim ? to_f32(a.initial_state[(b * s.dim + c0 + j) * H + H + pos]) : 0.0f;
}

template <typename T, int W>
__global__ void __launch_bounds__(32 * kClRuns) conv_cl_forward_kernel(ClDims s, Conv1dArgs<T, float> a, T* out) {
  constexpr int K = kClItems<T>;
  constexpr int H = W - 1;
  const ClPosition<K> p(s);
  if (p.c0 >= s.dim || p.t0 >= s.seq_len) return;
  float weight[W][K], bias[K];
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const bool in = p.c0 + j < s.dim;
#pragma unroll
    for (int k = 0; k < W; ++k) weight[k][j] = in ? a.weight[(p.c0 + j) * W + k] : 0.0f;
    bias[j] = in && a.bias ? a.bias[p.c0 + j] : 0.0f;
  }
  const int32_t* doc = a.doc_index ? a.doc_index + p.b * s.seq_len : nullptr;
  float win[H][K] = {};  // x at pos - H .. pos - 1 (zero where a document boundary cuts it off)
  int prev_doc = 0;
  for (int64_t pos = p.t0 - H; pos < p.t1; ++pos) {
    float v[K];
    cl_input<K, H>(s, a, p.b, p.c0, pos, v);
    if (doc && pos >= 0) {
      const int d = doc[pos];
      if (pos >= 1 && pos > p.t0 - H && d != prev_doc)
#pragma unroll
        for (int k = 0; k < H; ++k)
#pragma unroll
          for (int j = 0; j < K; ++j) win[k][j] = 0.0f;
      prev_doc = d;
    }
    if (pos >= p.t0) {
      float y[K];
#pragma unroll
      for (int j = 0; j < K; ++j) {
        float acc = bias[j];
#pragma unroll
        for (int k = 0; k < H; ++k) acc = fmaf(weight[k][j], win[k][j], acc);
        acc = fmaf(weight[H][j], v[j], acc);
        y[j] = s.silu ? acc * sigmoid<Math::fast>(acc) : acc;
      }
      cuda_detail::store_items(out + (p.b * s.seq_len + pos) * s.dim, p.c0, s.dim, s.o_aligned, y);
    }
#pragma unroll
    for (int k = 0; k + 1 < H; ++k)
#pragma unroll
      for (int j = 0; j < K; ++j) win[k][j] = win[k + 1][j];
#pragma unroll
    for (int j = 0; j < K; ++j) win[H - 1][j] = v[j];
  }
}

// Backward: the same grid. Each thread walks its run backwards from the last token whose
// window holds one of its inputs (t1 - 1 + H) to t0 (to -H for the first run when there is an
// initial state), with x at t - H .. t and the document index there in registers, and the
// pre-activation gradients of t + 1 .. t + H, zeroed where a boundary separates them from t.
// dweight / dbias partials per block: dweight_partials[(b * tiles + tile) * d * W + c * W + k],
// dbias_partials[(b * tiles + tile) * d + c]: the runs' sums added in run order.
template <typename T, int W>
__global__ void __launch_bounds__(32 * kClRuns)
    conv_cl_backward_kernel(ClDims s, Conv1dArgs<T, float> a, Conv1dGrads<T, float> g, float* dweight_partials,
                            float* dbias_partials) {
  constexpr int K = kClItems<T>;
  constexpr int H = W - 1;
  const ClPosition<K> p(s);
  const int64_t l = s.seq_len;
  const bool active = p.c0 < s.dim && p.t0 < l;
  float weight[W][K], bias[K];
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const bool in = p.c0 + j < s.dim;
#pragma unroll
    for (int k = 0; k < W; ++k) weight[k][j] = in ? a.weight[(p.c0 + j) * W + k] : 0.0f;
    bias[j] = in && a.bias ? a.bias[p.c0 + j] : 0.0f;
  }
  float dweight[W][K] = {}, dbias[K] = {};
  if (active) {
    const int32_t* doc = a.doc_index ? a.doc_index + p.b * l : nullptr;
    auto doc_at = [&](int64_t pos) { return doc ? doc[pos > 0 ? pos : 0] : 0; };  // before 0: token 0's
    const int64_t hi = (p.t1 + H < l ? p.t1 + H : l) - 1;
    const int64_t lo = p.t0 == 0 && g.dinitial_state ? -H : p.t0;
    float xw[W][K];  // x at t - H .. t
    int docw[W];     // the document index there
#pragma unroll
    for (int k = 0; k < W; ++k) {
      cl_input<K, H>(s, a, p.b, p.c0, hi - H + k, xw[k]);
      docw[k] = doc_at(hi - H + k);
    }
    float later[H][K] = {};  // dpre at t + 1 .. t + H that reaches t
    for (int64_t t = hi; t >= lo; --t) {
      float dpre[K] = {};
      if (t >= 0) {
        bool reach[W];  // tap k (x at t - H + k) counts for output t
        reach[H] = true;
#pragma unroll
        for (int k = H - 1; k >= 0; --k) reach[k] = reach[k + 1] && docw[k + 1] == docw[k];
        float dy[K];
        cuda_detail::load_items(g.dout + (p.b * l + t) * s.dim, p.c0, s.dim, s.o_aligned, dy);
#pragma unroll
        for (int j = 0; j < K; ++j) {
          dpre[j] = dy[j];
          if (s.silu) {
            float pre = bias[j];
#pragma unroll
            for (int k = 0; k < W; ++k) pre = reach[k] ? fmaf(weight[k][j], xw[k][j], pre) : pre;
            const float sg = sigmoid<Math::fast>(pre);
            dpre[j] *= sg * fmaf(pre, 1.0f - sg, 1.0f);
          }
        }
        if (t < p.t1) {
#pragma unroll
          for (int j = 0; j < K; ++j) {
            dbias[j] += dpre[j];
#pragma unroll
            for (int k = 0; k < W; ++k) dweight[k][j] = reach[k] ? fmaf(dpre[j], xw[k][j], dweight[k][j]) : dweight[k][j];
          }
        }
      }
      if (t < p.t1) {  // d x[t]: output t (tap H) and the later outputs t + i (tap H - i)
        float dx[K];
#pragma unroll
        for (int j = 0; j < K; ++j) {
          float sum = weight[H][j] * dpre[j];
#pragma unroll
          for (int i = 1; i <= H; ++i) sum = fmaf(weight[H - i][j], later[i - 1][j], sum);
          dx[j] = sum;
        }
        if (t >= 0) {
          cuda_detail::store_items(g.dx + (p.b * l + t) * s.dim, p.c0, s.dim, s.o_aligned, dx);
        } else {
#pragma unroll
          for (int j = 0; j < K; ++j)
            if (p.c0 + j < s.dim) g.dinitial_state[(p.b * s.dim + p.c0 + j) * H + H + t] = from_f32<T>(dx[j]);
        }
      }
      if (t == lo) break;
      // Step to t - 1: a boundary at t (the index changes from t - 1 to t) cuts t - 1 off
      // from every output at or after t.
      const bool cut = t >= 1 && docw[H] != docw[H - 1];
#pragma unroll
      for (int j = 0; j < K; ++j) {
#pragma unroll
        for (int i = H - 1; i >= 1; --i) later[i][j] = cut ? 0.0f : later[i - 1][j];
        later[0][j] = cut ? 0.0f : dpre[j];
      }
#pragma unroll
      for (int k = H; k >= 1; --k) {
        docw[k] = docw[k - 1];
#pragma unroll
        for (int j = 0; j < K; ++j) xw[k][j] = xw[k - 1][j];
      }
      cl_input<K, H>(s, a, p.b, p.c0, t - 1 - H, xw[0]);
      docw[0] = doc_at(t - 1 - H);
    }
  }
  // Block partial: the runs (threadIdx.y) added in order.
  __shared__ float run_sums[kClRuns][W + 1][32 * K];
#pragma unroll
  for (int j = 0; j < K; ++j) {
#pragma unroll
    for (int k = 0; k < W; ++k) run_sums[threadIdx.y][k][threadIdx.x * K + j] = dweight[k][j];
    run_sums[threadIdx.y][W][threadIdx.x * K + j] = dbias[j];
  }
  __syncthreads();
  const int64_t part = int64_t(blockIdx.z) * s.tiles + blockIdx.y;
  for (int idx = threadIdx.y * 32 + threadIdx.x; idx < (W + 1) * 32 * K; idx += 32 * kClRuns) {
    const int k = idx / (32 * K), cj = idx % (32 * K);
    const int64_t c = int64_t(blockIdx.x) * 32 * K + cj;
    if (c >= s.dim) continue;
    float total = 0.0f;
    for (int r = 0; r < kClRuns; ++r) total += run_sums[r][k][cj];
    if (k < W) dweight_partials[(part * s.dim + c) * W + k] = total;
    else dbias_partials[part * s.dim + c] = total;
  }
}

// ---------------------------------------------------------------------------------------
// Decode step: one thread per (b, d).
template <typename T, int W>
__global__ void conv_step_kernel(Dims s, Conv1dArgs<T, float> a, const T* x, T* state, T* out) {
  constexpr int H = W - 1;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= s.batch * s.dim) return;
  const int64_t c = i % s.dim;
  T* st = state + i * H;  // inputs at t - H .. t - 1
  float window[W];
#pragma unroll
  for (int k = 0; k < H; ++k) window[k] = to_f32(st[k]);
  window[H] = to_f32(x[i]);
  float acc = a.bias ? a.bias[c] : 0.0f;
#pragma unroll
  for (int k = 0; k < W; ++k) acc = fmaf(a.weight[c * W + k], window[k], acc);
  out[i] = from_f32<T>(s.silu ? acc * sigmoid<Math::fast>(acc) : acc);
#pragma unroll
  for (int k = 0; k < H; ++k) st[k] = from_f32<T>(window[k + 1]);
}

void check_shape(const Conv1dShape& shape, const char* op) {
  if (shape.batch < 0 || shape.dim < 0 || shape.seq_len < 0 || shape.width < 2 || shape.width > 4)
    throw KernelError(std::string("cuda::") + op + ": unsupported shape (b " + std::to_string(shape.batch) +
                      ", d " + std::to_string(shape.dim) + ", l " + std::to_string(shape.seq_len) + ", w " +
                      std::to_string(shape.width) + "); the width must be 2, 3 or 4");
}

// Sizes for K tokens per thread; vector loads need l % K == 0 and every pointer on a 16-byte
// boundary (rows then start on one too).
Dims make_dims(const Conv1dShape& shape, int items, std::initializer_list<const void*> pointers, const char* op) {
  check_shape(shape, op);
  Dims s{shape.batch, shape.dim, shape.seq_len, 1, shape.silu, shape.seq_len % items == 0};
  for (const void* ptr : pointers)
    if (ptr && reinterpret_cast<uintptr_t>(ptr) % 16 != 0) s.aligned = false;
  const int64_t chunks = (shape.seq_len + items - 1) / items;
  const int threads = threads_for(shape.seq_len, items);
  s.tiles = (chunks + threads - 1) / threads;
  if (s.tiles > 65535 || s.batch > 65535 || s.dim > 0x7fffffff)
    throw KernelError(std::string("cuda::") + op + ": shape too large for the grid (b " + std::to_string(s.batch) +
                      ", d " + std::to_string(s.dim) + ", l " + std::to_string(s.seq_len) +
                      "); needs b <= 65535 and l <= 65535 * " + std::to_string(kMaxThreads * items));
  return s;
}

// Grid (d, tiles, b) with threads_for(l, K) threads per block.
dim3 grid_of(const Dims& s) {
  return dim3(static_cast<unsigned>(s.dim), static_cast<unsigned>(s.tiles), static_cast<unsigned>(s.batch));
}

template <typename T> Conv1dArgs<T, float> typed(const Conv1dArgs<void, float>& a) {
  return {static_cast<const T*>(a.x), a.weight, a.bias, static_cast<const T*>(a.initial_state), a.doc_index};
}

template <typename T> Conv1dGrads<T, float> typed(const Conv1dGrads<void, float>& g) {
  return {static_cast<const T*>(g.dout), static_cast<T*>(g.dx), g.dweight, g.dbias, static_cast<T*>(g.dinitial_state)};
}

// Calls fn(std::integral_constant<int, W>) for the width.
template <typename Fn> void dispatch_width(int64_t width, Fn&& fn) {
  switch (width) {
    case 2: fn(std::integral_constant<int, 2>{}); return;
    case 3: fn(std::integral_constant<int, 3>{}); return;
    default: fn(std::integral_constant<int, 4>{}); return;
  }
}

// Calls fn(std::bool_constant<docs>) so the kernels without documents carry no index code.
template <typename Fn> void dispatch_docs(bool docs, Fn&& fn) {
  if (docs) fn(std::true_type{});
  else fn(std::false_type{});
}

// Channel-last sizes; vector (16-byte) accesses where the pointers and row strides allow.
ClDims make_cl_dims(const Conv1dShape& shape, size_t elem, std::initializer_list<const void*> x_pointers,
                    std::initializer_list<const void*> o_pointers, const char* op) {
  check_shape(shape, op);
  const int64_t stride = shape.x_stride ? shape.x_stride : shape.dim;
  if (stride < shape.dim)
    throw KernelError(std::string("cuda::") + op + ": x_stride " + std::to_string(stride) +
                      " is below the channel count d " + std::to_string(shape.dim) + " (channel-last x)");
  ClDims s{shape.batch, shape.dim, shape.seq_len, stride, (shape.seq_len + kClTokensPerBlock - 1) / kClTokensPerBlock,
           shape.silu, stride * elem % 16 == 0, shape.dim * elem % 16 == 0};
  for (const void* ptr : x_pointers)
    if (ptr && reinterpret_cast<uintptr_t>(ptr) % 16 != 0) s.x_aligned = false;
  for (const void* ptr : o_pointers)
    if (ptr && reinterpret_cast<uintptr_t>(ptr) % 16 != 0) s.o_aligned = false;
  if (s.tiles > 65535 || s.batch > 65535)
    throw KernelError(std::string("cuda::") + op + ": shape too large for the grid (b " + std::to_string(s.batch) +
                      ", l " + std::to_string(s.seq_len) + "); needs b <= 65535 and l <= 65535 * " +
                      std::to_string(kClTokensPerBlock));
  return s;
}

template <typename T> dim3 cl_grid_of(const ClDims& s) {
  const int64_t per_block = 32 * kClItems<T>;
  return dim3(static_cast<unsigned>((s.dim + per_block - 1) / per_block), static_cast<unsigned>(s.tiles),
              static_cast<unsigned>(s.batch));
}

// x's element strides (batch, channel, token) for the final-state kernel.
struct XStrides {
  int64_t b, c, t;
};
XStrides x_strides(const Conv1dShape& shape) {
  if (!shape.channel_last) return {shape.dim * shape.seq_len, shape.seq_len, 1};
  const int64_t stride = shape.x_stride ? shape.x_stride : shape.dim;
  return {shape.seq_len * stride, 1, stride};
}

}  // namespace

namespace cuda {

void causal_conv1d_forward(const Conv1dShape& shape, DType dtype, const Conv1dArgs<void, float>& a, void* out,
                           void* final_state, cudaStream_t stream) {
  check_shape(shape, "causal_conv1d_forward");
  const int64_t rows = shape.batch * shape.dim;
  if (rows == 0) return;
  cuda_detail::dispatch_f32_bf16(dtype, "causal_conv1d_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int K = kItemsOf<T>;
    // The final-state kernel reads only batch, dim and seq_len of Dims.
    const Dims s = shape.channel_last ? Dims{shape.batch, shape.dim, shape.seq_len, 1, shape.silu, false}
                                      : make_dims(shape, K, {a.x, out, a.doc_index}, "causal_conv1d_forward");
    const XStrides xs = x_strides(shape);
    dispatch_width(shape.width, [&](auto width) {
      constexpr int W = decltype(width)::value;
      if (s.seq_len > 0 && shape.channel_last) {
        const ClDims cl = make_cl_dims(shape, sizeof(T), {a.x}, {out}, "causal_conv1d_forward");
        conv_cl_forward_kernel<T, W><<<cl_grid_of<T>(cl), dim3(32, kClRuns), 0, stream>>>(cl, typed<T>(a),
                                                                                         static_cast<T*>(out));
        SSM_CUDA_CHECK_LAUNCH();
      } else if (s.seq_len > 0) {
        dispatch_docs(a.doc_index != nullptr, [&](auto docs) {
          conv_forward_kernel<T, W, decltype(docs)::value><<<grid_of(s), threads_for(s.seq_len, K), 0, stream>>>(
              s, typed<T>(a), static_cast<T*>(out));
          SSM_CUDA_CHECK_LAUNCH();
        });
      }
      if (final_state) {
        conv_final_state_kernel<T, W><<<cuda_detail::grid_for(rows * (W - 1), 256), 256, 0, stream>>>(
            s, typed<T>(a), xs.b, xs.c, xs.t, static_cast<T*>(final_state));
        SSM_CUDA_CHECK_LAUNCH();
      }
    });
  });
}

void causal_conv1d_backward(const Conv1dShape& shape, DType dtype, const Conv1dArgs<void, float>& a,
                            const Conv1dGrads<void, float>& g, cudaStream_t stream) {
  check_shape(shape, "causal_conv1d_backward");
  if ((a.bias && !g.dbias) || (a.initial_state && !g.dinitial_state))
    throw KernelError("cuda::causal_conv1d_backward: a gradient buffer is missing for an optional input");
  const int64_t rows = shape.batch * shape.dim, w = shape.width;
  if (rows == 0 || shape.seq_len == 0) {
    SSM_CUDA_CHECK(cudaMemsetAsync(g.dweight, 0, shape.dim * w * sizeof(float), stream));
    if (g.dbias) SSM_CUDA_CHECK(cudaMemsetAsync(g.dbias, 0, shape.dim * sizeof(float), stream));
    if (g.dinitial_state && rows > 0)
      SSM_CUDA_CHECK(cudaMemsetAsync(g.dinitial_state, 0, rows * (w - 1) * (dtype == DType::bf16 ? 2 : 4), stream));
    return;
  }
  cuda_detail::dispatch_f32_bf16(dtype, "causal_conv1d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int K = kItemsOf<T>;
    // One (dweight, dbias) partial per block: dweight (b, tiles, d, w), dbias (b, tiles, d),
    // each summed over the b * tiles parts in order by sum_partials.
    int64_t parts = 0;
    Dims s{};
    ClDims cl{};
    if (shape.channel_last) {
      cl = make_cl_dims(shape, sizeof(T), {a.x}, {g.dout, g.dx}, "causal_conv1d_backward");
      parts = cl.batch * cl.tiles;
    } else {
      s = make_dims(shape, K, {a.x, g.dout, g.dx, a.doc_index}, "causal_conv1d_backward");
      parts = s.batch * s.tiles;
    }
    float* partials = nullptr;
    const size_t partial_bytes = sizeof(float) * parts * shape.dim * (w + 1);
    SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partials), partial_bytes, stream));
    float* dweight_partials = partials;                      // (parts, d, w)
    float* dbias_partials = partials + parts * shape.dim * w;  // (parts, d)
    dispatch_width(w, [&](auto width) {
      constexpr int W = decltype(width)::value;
      if (shape.channel_last) {
        conv_cl_backward_kernel<T, W><<<cl_grid_of<T>(cl), dim3(32, kClRuns), 0, stream>>>(
            cl, typed<T>(a), typed<T>(g), dweight_partials, dbias_partials);
        SSM_CUDA_CHECK_LAUNCH();
      } else {
        dispatch_docs(a.doc_index != nullptr, [&](auto docs) {
          conv_backward_kernel<T, W, decltype(docs)::value><<<grid_of(s), threads_for(s.seq_len, K), 0, stream>>>(
              s, typed<T>(a), typed<T>(g), dweight_partials, dbias_partials);
          SSM_CUDA_CHECK_LAUNCH();
        });
      }
    });
    cuda_detail::sum_partials_by_thread(dweight_partials, 1, parts, shape.dim * w, g.dweight, stream);
    if (g.dbias) cuda_detail::sum_partials_by_thread(dbias_partials, 1, parts, shape.dim, g.dbias, stream);
    SSM_CUDA_CHECK(cudaFreeAsync(partials, stream));
  });
}

void causal_conv1d_step(const Conv1dShape& shape, DType dtype, const Conv1dArgs<void, float>& a, const void* x,
                        void* state, void* out, cudaStream_t stream) {
  check_shape(shape, "causal_conv1d_step");
  const Dims s{shape.batch, shape.dim, 1, 1, shape.silu, false};
  const int64_t rows = s.batch * s.dim;
  if (rows == 0) return;
  cuda_detail::dispatch_f32_bf16(dtype, "causal_conv1d_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_width(shape.width, [&](auto width) {
      conv_step_kernel<T, decltype(width)::value><<<cuda_detail::grid_for(rows, 128), 128, 0, stream>>>(
          s, typed<T>(a), static_cast<const T*>(x), static_cast<T*>(state), static_cast<T*>(out));
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace cuda
}  // namespace ssmtrain::kernels
