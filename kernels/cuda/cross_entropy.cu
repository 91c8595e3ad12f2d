// Cross-entropy on the GPU, reading the logits in their own dtype (bf16 or f32) and never
// widening the (n, vocab) matrix: no f32 copy of it exists, forward or backward. Forward: one
// block per row; each thread walks the row in 16-byte vectors (8 bf16 / 4 f32 logits) and
// keeps an online (max, sum exp) over them, rescaling once per vector; a fixed block tree
// merges the threads' pairs into the row's lse and loss; then one block sums the per-row
// losses and valid counts in a fixed order. Backward: dlogits = dloss / count * (softmax -
// onehot) in the logits' dtype, zero on ignored rows, the same vectors. No atomics: the same
// bits on every run.
#include "kernels/cross_entropy.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/vector_io.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::block_allreduce;
using cuda_detail::block_sum;
using cuda_detail::dispatch_f32_bf16;
using cuda_detail::dispatch_index;
using cuda_detail::from_f32;
using cuda_detail::load_items;
using cuda_detail::store_items;
using cuda_detail::to_f32;

constexpr int kRowThreads = 256;     // forward: one block per row
constexpr int kGradThreads = 256;    // backward: one block per row

// Logits per thread and step: one 16-byte vector of T.
template <typename T> constexpr int vector_items() { return 16 / sizeof(T); }

// exp in the precision the dtype can show: the fast approximation for bf16 (its error is far
// below bf16's rounding), the full expf for f32 so f32 results hold 1e-5.
template <typename T> __device__ __forceinline__ float exp_for(float x) { return __expf(x); }
template <> __device__ __forceinline__ float exp_for<float>(float x) { return expf(x); }
constexpr int kFinalThreads = 1024;  // the single block that reduces the per-row losses

// A running (max, sum of exp(x - max)) over part of a row.
struct MaxSumExp {
  float max;
  float sum;
};

// Folds K logits into a running (max, sum): the new max once, one rescale of the old sum,
// then K exps. -inf logits contribute nothing; a NaN logit makes the max, and so lse, NaN.
template <typename T, int K>
__device__ __forceinline__ MaxSumExp add_logits(MaxSumExp acc, const float (&x)[K]) {
  float vmax = x[0];
#pragma unroll
  for (int k = 1; k < K; ++k) vmax = (x[k] > vmax || isnan(x[k])) ? x[k] : vmax;
  const float max = (vmax > acc.max || isnan(vmax)) ? vmax : acc.max;
  if (max == -INFINITY) return acc;  // everything so far is -inf: the sum stays 0
  float sum = acc.max == -INFINITY ? 0.0f : acc.sum * exp_for<T>(acc.max - max);
#pragma unroll
  for (int k = 0; k < K; ++k) sum += exp_for<T>(x[k] - max);
  return {max, sum};
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
// NaN when the target is outside [0, vocab)); row_valid (n) = 1 unless ignored. aligned: rows
// and the base pointer on 16-byte boundaries (whole vectors); otherwise a short tail of each
// row is padded with -inf.
template <typename T, typename Index>
__global__ void cross_entropy_rows_kernel(const T* logits, const Index* targets, int64_t n,
                                          int64_t vocab, int64_t ignore_index, bool aligned,
                                          float* lse, float* row_loss, int32_t* row_valid) {
  constexpr int K = vector_items<T>();
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const T* row_logits = logits + row * vocab;
    MaxSumExp acc{-INFINITY, 0.0f};
    for (int64_t v = threadIdx.x * int64_t(K); v < vocab; v += int64_t(blockDim.x) * K) {
      float x[K];
      load_items<K>(row_logits, v, vocab, aligned, x);
      if (v + K > vocab) {
#pragma unroll
        for (int k = 0; k < K; ++k)
          if (v + k >= vocab) x[k] = -INFINITY;
      }
      acc = add_logits<T, K>(acc, x);
    }
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
                                              int64_t vocab, int64_t ignore_index, bool aligned,
                                              const float* lse, const float* dloss,
                                              const float* result, T* dlogits) {
  constexpr int K = vector_items<T>();
  const float count = result[1];
  const float scale = count > 0.0f ? dloss[0] / count : 0.0f;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const int64_t target = static_cast<int64_t>(targets[row]);
    T* row_grad = dlogits + row * vocab;
    const T* row_logits = logits + row * vocab;
    const bool ignored = target == ignore_index;
    const float row_scale = target >= 0 && target < vocab ? scale : NAN;  // NaN: bad target
    const float row_lse = lse[row];
    for (int64_t v = threadIdx.x * int64_t(K); v < vocab; v += int64_t(blockDim.x) * K) {
      float x[K];
      if (ignored) {
#pragma unroll
        for (int k = 0; k < K; ++k) x[k] = 0.0f;
      } else {
        load_items<K>(row_logits, v, vocab, aligned, x);
#pragma unroll
        for (int k = 0; k < K; ++k)
          x[k] = row_scale * (exp_for<T>(x[k] - row_lse) - (v + k == target ? 1.0f : 0.0f));
      }
      store_items<K>(row_grad, v, vocab, aligned, x);
    }
  }
}

// Rows of vocab elements and the base pointers on 16-byte boundaries.
bool rows_aligned(int64_t vocab, int64_t elem_size, std::initializer_list<const void*> ptrs) {
  if ((vocab * elem_size) % 16 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
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
        const bool aligned = rows_aligned(vocab, sizeof(T), {logits});
        cross_entropy_rows_kernel<T, Index><<<row_grid(n), kRowThreads, 0, s>>>(
            static_cast<const T*>(logits), static_cast<const Index*>(targets), n, vocab,
            ignore_index, aligned, lse, row_loss, row_valid);
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
      const bool aligned = rows_aligned(vocab, sizeof(T), {logits, dlogits});
      cross_entropy_backward_kernel<T, Index><<<row_grid(n), kGradThreads, 0, s>>>(
          static_cast<const T*>(logits), static_cast<const Index*>(targets), n, vocab,
          ignore_index, aligned, lse, dloss, result, static_cast<T*>(dlogits));
      SSM_CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace ssmtrain::kernels::cuda
