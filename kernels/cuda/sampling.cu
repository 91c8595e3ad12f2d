// Next-token sampling on the GPU (kernels/sampling.h), one block per row of logits. The CPU
// reference sorts the row; here each cut point (the k-th token, the end of the nucleus, the
// drawn token) is found by a radix select over the composite keys, 8 bits a pass from the top,
// with 256-bin histograms of integer weights (shared-memory atomics on integers: their order
// does not change the sums). Keys and weights come from the same SSM_HD helpers as the CPU's,
// so both pick the same token.
#include "kernels/sampling.h"

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::block_allreduce;
using cuda_detail::dispatch_f32_bf16;
using cuda_detail::to_f32;

constexpr int kThreads = 512;
constexpr int kBins = 256;
constexpr unsigned kFullMask = 0xffffffffu;

struct MaxU64 {
  __device__ __forceinline__ unsigned long long operator()(unsigned long long a, unsigned long long b) const {
    return a > b ? a : b;
  }
};
struct SumU64 {
  __device__ __forceinline__ unsigned long long operator()(unsigned long long a, unsigned long long b) const {
    return a + b;
  }
};

// What a row's weights are computed from.
struct RowWeights {
  int id_bits;
  int shift;
  float max_logit;
  float inv_temperature;
};

// The total weight of the row's tokens with keys >= lo (every thread gets it).
template <typename T>
__device__ uint64_t mass_from(const T* row, int64_t vocab, const RowWeights& rw, uint64_t lo) {
  unsigned long long sum = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const float l = to_f32(row[i]);
    if (sampling_composite(l, i, rw.id_bits) >= lo) sum += sampling_weight(l, rw.max_logit, rw.inv_temperature, rw.shift);
  }
  return block_allreduce(sum, SumU64{}, 0ull);
}

// Among the tokens with keys >= lo, in descending key order, the key of the first token at
// which the running weight (kMass: the fixed-point weights; else: 1 per token) exceeds
// `target`. The caller guarantees the kept weight exceeds target. Every thread returns it.
template <bool kMass, typename T>
__device__ uint64_t select_key(const T* row, int64_t vocab, const RowWeights& rw, uint64_t lo, uint64_t target,
                               unsigned long long* hist, unsigned long long* found) {
  const int key_bits = 32 + rw.id_bits;
  uint64_t prefix = 0, known = 0;  // the key's bits fixed so far, and which they are
  uint64_t above = 0;              // weight of the kept tokens whose keys are above the prefix's range
  for (int s = ((key_bits + 7) / 8 - 1) * 8; s >= 0; s -= 8) {
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float l = to_f32(row[i]);
      const uint64_t c = sampling_composite(l, i, rw.id_bits);
      if (c < lo || (c & known) != prefix) continue;
      const uint64_t w = kMass ? sampling_weight(l, rw.max_logit, rw.inv_temperature, rw.shift) : 1;
      if (w != 0) atomicAdd(&hist[(c >> s) & 255], static_cast<unsigned long long>(w));
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane j holds bins 255-8j down to 248-8j: the lanes in descending key order.
      const int lane = int(threadIdx.x);
      unsigned long long sum = 0;
      for (int k = 0; k < 8; ++k) sum += hist[255 - 8 * lane - k];
      unsigned long long inclusive = sum;
      for (int d = 1; d < 32; d <<= 1) {
        const unsigned long long v = __shfl_up_sync(kFullMask, inclusive, d);
        if (lane >= d) inclusive += v;
      }
      const unsigned crossing = __ballot_sync(kFullMask, above + inclusive > target);
      const int first = crossing ? __ffs(int(crossing)) - 1 : 31;
      if (lane == first) {
        unsigned long long run = above + inclusive - sum;
        int digit = 248 - 8 * lane;
        for (int k = 0; k < 8; ++k) {
          const int b = 255 - 8 * lane - k;
          if (run + hist[b] > target) {
            digit = b;
            break;
          }
          run += hist[b];
        }
        found[0] = static_cast<unsigned long long>(digit);
        found[1] = run;
      }
    }
    __syncthreads();
    prefix |= static_cast<uint64_t>(found[0]) << s;
    known |= uint64_t(255) << s;
    above = found[1];
    __syncthreads();  // everyone has read found[] and hist[] before the next pass rewrites them
  }
  return prefix;
}

// logits (rows, vocab) -> out (rows): block r samples row r (see kernels/sampling.h).
template <typename T>
__global__ void __launch_bounds__(kThreads) sample_kernel(const T* logits, int64_t vocab, SamplingParams p,
                                                          float inv_temperature, int64_t first_sequence,
                                                          const int64_t* draw, int64_t* out) {
  __shared__ unsigned long long hist[kBins];
  __shared__ unsigned long long found[2];
  const T* row = logits + int64_t(blockIdx.x) * vocab;
  RowWeights rw{sampling_id_bits(vocab), sampling_weight_shift(vocab), 0.0f, inv_temperature};
  unsigned long long best = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const unsigned long long c = sampling_composite(to_f32(row[i]), i, rw.id_bits);
    best = c > best ? c : best;
  }
  best = block_allreduce(best, MaxU64{}, 0ull);
  const int64_t top = sampling_id_of(best, rw.id_bits);
  if (p.temperature == 0.0) {
    if (threadIdx.x == 0) out[blockIdx.x] = top;
    return;
  }
  rw.max_logit = to_f32(row[top]);
  uint64_t lo = 0;  // the kept tokens: keys >= lo
  if (p.top_k > 0 && p.top_k < vocab)
    lo = select_key<false>(row, vocab, rw, lo, uint64_t(p.top_k - 1), hist, found);
  uint64_t total = mass_from(row, vocab, rw, lo);
  if (total == 0) {  // NaN or infinite logits: greedy, as on the CPU
    if (threadIdx.x == 0) out[blockIdx.x] = top;
    return;
  }
  if (p.top_p < 1.0) {
    lo = select_key<true>(row, vocab, rw, lo, sampling_top_p_target(p.top_p, total) - 1, hist, found);
    total = mass_from(row, vocab, rw, lo);
  }
  const double u = sampling_uniform(p.seed, first_sequence + int64_t(blockIdx.x), *draw);
  const uint64_t chosen = select_key<true>(row, vocab, rw, lo, sampling_draw_target(u, total), hist, found);
  if (threadIdx.x == 0) out[blockIdx.x] = sampling_id_of(chosen, rw.id_bits);
}

// The next call's draw index: after every row of this one has read it (same stream).
__global__ void advance_draw_kernel(int64_t* draw) { *draw += 1; }

}  // namespace

void sample_tokens(DType dtype, const void* logits, int64_t rows, int64_t vocab, const SamplingParams& params,
                   int64_t first_sequence, int64_t* draw, int64_t* out, cudaStream_t stream) {
  if (rows < 0 || rows > 65535 || vocab < 1 || vocab >= (int64_t(1) << 31))
    throw KernelError("cuda::sample_tokens: need 0 <= rows <= 65535 and 1 <= vocab < 2^31, got " +
                      std::to_string(rows) + " x " + std::to_string(vocab));
  if (!(params.temperature >= 0.0) || params.top_k < 0 || !(params.top_p > 0.0 && params.top_p <= 1.0))
    throw KernelError("cuda::sample_tokens: bad sampling parameters (temperature >= 0, top_k >= 0, top_p in (0, 1])");
  const float inv_temperature = params.temperature > 0.0 ? sampling_inv_temperature(params) : 0.0f;
  if (rows > 0)
    dispatch_f32_bf16(dtype, "sample_tokens", [&](auto tag) {
      using T = typename decltype(tag)::type;
      sample_kernel<T><<<unsigned(rows), kThreads, 0, stream>>>(static_cast<const T*>(logits), vocab, params,
                                                                inv_temperature, first_sequence, draw, out);
      SSM_CUDA_CHECK_LAUNCH();
    });
  advance_draw_kernel<<<1, 1, 0, stream>>>(draw);
  SSM_CUDA_CHECK_LAUNCH();
}

}  // namespace ssmtrain::kernels::cuda
