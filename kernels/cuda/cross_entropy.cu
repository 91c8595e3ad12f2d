// Cross-entropy on the GPU. Forward: one block per row computes max and sum-exp in a single
// online pass (vocab up to 256k), the row's lse and loss; then one block sums the per-row
// losses and valid counts in a fixed order. Backward: dlogits = dloss / count * (softmax -
// onehot), zero on ignored rows. No atomics: the same bits on every run.
#include "kernels/cross_entropy.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::block_allreduce;
using cuda_detail::block_sum;
using cuda_detail::dispatch_f32_bf16;
using cuda_detail::dispatch_index;
using cuda_detail::from_f32;
using cuda_detail::to_f32;

constexpr int kRowThreads = 512;     // forward: one block per row
constexpr int kGradThreads = 256;    // backward: one block per row
constexpr int kFinalThreads = 1024;  // the single block that reduces the per-row losses

// A running (max, sum of exp(x - max)) over part of a row.
struct MaxSumExp {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSumExp add_logit(MaxSumExp acc, float x) {
  if (x > acc.max) {  // new max: rescale what was summed so far (exp(-inf) = 0 on the first)
    acc.sum = acc.sum * expf(acc.max - x) + 1.0f;
    acc.max = x;
  } else if (x != -INFINITY || isnan(x)) {  // -inf logits contribute nothing; NaN propagates
    acc.sum += expf(x - acc.max);
  }
  return acc;
}

// Commutative merge of two partial results (the same bits whichever order the pair comes in).
__device__ __forceinline__ MaxSumExp merge(MaxSumExp a, MaxSumExp b) {
  const float max = fmaxf(a.max, b.max);
  if (max == -INFINITY) return {max, a.sum + b.sum};
  return {max, a.sum * expf(a.max - max) + b.sum * expf(b.max - max)};
}

// Every thread of the block returns the merge of all threads' partials (fixed tree shape).
__device__ MaxSumExp block_merge(MaxSumExp value) {
  __shared__ float warp_max[32], warp_sum[32];
  for (int mask = 16; mask > 0; mask >>= 1) {
    const MaxSumExp other{__shfl_xor_sync(0xffffffffu, value.max, mask),
                          __shfl_xor_sync(0xffffffffu, value.sum, mask)};
    value = merge(value, other);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) {
    warp_max[warp] = value.max;
    warp_sum[warp] = value.sum;
  }
  __syncthreads();
  const bool has = lane < static_cast<int>(blockDim.x / 32);
  MaxSumExp total{has ? warp_max[lane] : -INFINITY, has ? warp_sum[lane] : 0.0f};
  for (int mask = 16; mask > 0; mask >>= 1) {
    const MaxSumExp other{__shfl_xor_sync(0xffffffffu, total.max, mask),
                          __shfl_xor_sync(0xffffffffu, total.sum, mask)};
    total = merge(total, other);
  }
  return total;
}

// Per row of logits (n, vocab): lse (n); row_loss (n) = lse - logit[target] (0 when ignored,
// NaN when the target is outside [0, vocab)); row_valid (n) = 1 unless ignored.
template <typename T, typename Index>
__global__ void cross_entropy_rows_kernel(const T* logits, const Index* targets, int64_t n,
                                          int64_t vocab, int64_t ignore_index, float* lse,
                                          float* row_loss, int32_t* row_valid) {
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* row_logits = logits + row * vocab;
    MaxSumExp acc{-INFINITY, 0.0f};
    for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) acc = add_logit(acc, to_f32(row_logits[v]));
    const MaxSumExp total = block_merge(acc);
    if (threadIdx.x == 0) {
      const float row_lse = total.max + logf(total.sum);
      lse[row] = row_lse;
      const int64_t target = static_cast<int64_t>(targets[row]);
      if (target == ignore_index) {
        row_loss[row] = 0.0f;
        row_valid[row] = 0;
      } else {
        row_loss[row] = (target >= 0 && target < vocab) ? row_lse - to_f32(row_logits[target]) : NAN;
        row_valid[row] = 1;
      }
    }
  }
}

struct CountSumOp {
  __device__ __forceinline__ long long operator()(long long a, long long b) const { return a + b; }
};

// result[0] = sum(row_loss) / count (0 when count is 0), result[1] = count; one block, fixed order.
__global__ void cross_entropy_mean_kernel(const float* row_loss, const int32_t* row_valid,
                                          int64_t n, float* result) {
  float loss = 0.0f;
  long long count = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    loss += row_loss[i];
    count += row_valid[i];
  }
  const float total_loss = block_sum(loss);
  const long long total_count = block_allreduce(count, CountSumOp{}, 0LL);
  if (threadIdx.x == 0) {
    result[0] = total_count > 0 ? total_loss / static_cast<float>(total_count) : 0.0f;
    result[1] = static_cast<float>(total_count);
  }
}

// dlogits (n, vocab) = dloss / count * (exp(logits - lse) - onehot(target)); 0 on ignored rows.
template <typename T, typename Index>
__global__ void cross_entropy_backward_kernel(const T* logits, const Index* targets, int64_t n,
                                              int64_t vocab, int64_t ignore_index,
                                              const float* lse, const float* dloss,
                                              const float* result, T* dlogits) {
  const float count = result[1];
  const float scale = count > 0.0f ? dloss[0] / count : 0.0f;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const int64_t target = static_cast<int64_t>(targets[row]);
    T* row_grad = dlogits + row * vocab;
    if (target == ignore_index) {
      for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) row_grad[v] = from_f32<T>(0.0f);
      continue;
    }
    const bool target_ok = target >= 0 && target < vocab;
    const T* row_logits = logits + row * vocab;
    const float row_lse = lse[row];
    for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) {
      const float p = expf(to_f32(row_logits[v]) - row_lse);
      const float grad = target_ok ? scale * (p - (v == target ? 1.0f : 0.0f)) : NAN;
      row_grad[v] = from_f32<T>(grad);
    }
  }
}

unsigned row_grid(int64_t rows) {
  return static_cast<unsigned>(std::min<int64_t>(rows, 65535LL * 16));
}

void check_sizes(const char* op, int64_t n, int64_t vocab) {
  if (n < 0 || vocab < 0)
    throw KernelError(std::string("cuda::") + op + ": negative size (n " + std::to_string(n) +
                      ", vocab " + std::to_string(vocab) + ")");
}

}  // namespace

void cross_entropy_forward(DType dtype, const void* logits, DType target_dtype, const void* targets,
                           int64_t n, int64_t vocab, int64_t ignore_index, float* lse,
                           float* result, cudaStream_t s) {
  check_sizes("cross_entropy_forward", n, vocab);
  // Reject bad dtypes before any scratch is allocated.
  dispatch_f32_bf16(dtype, "cross_entropy_forward", [](auto) {});
  dispatch_index(target_dtype, "cross_entropy_forward", [](auto) {});
  if (n > 0 && vocab == 0)
    throw KernelError("cuda::cross_entropy_forward: vocab is 0 with " + std::to_string(n) + " rows");
  float* row_loss = nullptr;
  int32_t* row_valid = nullptr;
  const size_t rows = static_cast<size_t>(std::max<int64_t>(n, 1));
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&row_loss), rows * sizeof(float), s));
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&row_valid), rows * sizeof(int32_t), s));
  if (n > 0) {
    dispatch_f32_bf16(dtype, "cross_entropy_forward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      dispatch_index(target_dtype, "cross_entropy_forward", [&](auto index_tag) {
        using Index = typename decltype(index_tag)::type;
        cross_entropy_rows_kernel<T, Index><<<row_grid(n), kRowThreads, 0, s>>>(
            static_cast<const T*>(logits), static_cast<const Index*>(targets), n, vocab,
            ignore_index, lse, row_loss, row_valid);
        SSM_CUDA_CHECK_LAUNCH();
      });
    });
  }
  cross_entropy_mean_kernel<<<1, kFinalThreads, 0, s>>>(row_loss, row_valid, n, result);
  SSM_CUDA_CHECK_LAUNCH();
  SSM_CUDA_CHECK(cudaFreeAsync(row_loss, s));
  SSM_CUDA_CHECK(cudaFreeAsync(row_valid, s));
}

void cross_entropy_backward(DType dtype, const void* logits, DType target_dtype,
                            const void* targets, int64_t n, int64_t vocab, int64_t ignore_index,
                            const float* lse, const float* dloss, const float* result,
                            void* dlogits, cudaStream_t s) {
  check_sizes("cross_entropy_backward", n, vocab);
  if (n == 0 || vocab == 0) return;
  dispatch_f32_bf16(dtype, "cross_entropy_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index(target_dtype, "cross_entropy_backward", [&](auto index_tag) {
      using Index = typename decltype(index_tag)::type;
      cross_entropy_backward_kernel<T, Index><<<row_grid(n), kGradThreads, 0, s>>>(
          static_cast<const T*>(logits), static_cast<const Index*>(targets), n, vocab,
          ignore_index, lse, dloss, result, static_cast<T*>(dlogits));
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace ssmtrain::kernels::cuda
