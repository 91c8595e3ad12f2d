// RMSNorm on the GPU: y = x * rstd * weight with rstd = 1 / sqrt(mean(x^2) + eps), per row.
// Forward and dx: one block per row with a fixed block tree. dweight: per-chunk column partials
// into a scratch buffer, then one ordered pass over the chunks (no atomics, same bits each run).
// add_rmsnorm: the residual add fused in front, with 16-byte vector loads where rows align.
#include "kernels/norm.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/vector_io.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::block_sum;
using cuda_detail::ceil_div;
using cuda_detail::dispatch_f32_bf16;
using cuda_detail::from_f32;
using cuda_detail::load_items;
using cuda_detail::store_items;
using cuda_detail::row_block_threads;
using cuda_detail::to_f32;

constexpr int kColumnThreads = 256;     // dweight kernels: one thread per column
constexpr int64_t kMaxRowChunks = 1024; // dweight partials: at most this many row chunks
constexpr int64_t kMinChunkRows = 32;   // ... of at least this many rows

unsigned row_grid(int64_t rows) {
  return static_cast<unsigned>(std::min<int64_t>(rows, 65535LL * 16));
}

// x, y (rows, d); weight (d); rstd (rows). One block per row (grid-stride over rows).
template <typename T>
__global__ void rmsnorm_forward_kernel(const T* x, const T* weight, int64_t rows, int64_t d,
                                       float eps, T* y, float* rstd) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * d;
    float local = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float v = to_f32(x_row[j]);
      local += v * v;
    }
    const float sum_squares = block_sum(local);
    const float mean_square = d > 0 ? sum_squares / static_cast<float>(d) : 0.0f;
    const float row_rstd = 1.0f / sqrtf(mean_square + eps);
    if (threadIdx.x == 0) rstd[row] = row_rstd;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      y[row * d + j] = from_f32<T>(to_f32(x_row[j]) * row_rstd * to_f32(weight[j]));
  }
}

// dx (rows, d) = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)); one block per row.
template <typename T>
__global__ void rmsnorm_dx_kernel(const T* x, const T* weight, const float* rstd, const T* dy,
                                  int64_t rows, int64_t d, T* dx) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * d;
    const T* dy_row = dy + row * d;
    float local = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      local += to_f32(weight[j]) * to_f32(dy_row[j]) * to_f32(x_row[j]);
    const float mean_wdy_x = block_sum(local) / static_cast<float>(d);
    const float row_rstd = rstd[row];
    const float correction = row_rstd * row_rstd * mean_wdy_x;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float wdy = to_f32(weight[j]) * to_f32(dy_row[j]);
      dx[row * d + j] = from_f32<T>(row_rstd * (wdy - to_f32(x_row[j]) * correction));
    }
  }
}

// partials (chunks, d): partials[c, j] = sum over rows r of chunk c (in order) of
// dy[r, j] * x[r, j] * rstd[r]. Grid (column blocks, chunks).
template <typename T>
__global__ void rmsnorm_dweight_partials_kernel(const T* x, const float* rstd, const T* dy,
                                                int64_t rows, int64_t d, int64_t chunk_rows,
                                                float* partials) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  const int64_t chunk = blockIdx.y;
  const int64_t row_end = std::min(rows, (chunk + 1) * chunk_rows);
  float total = 0.0f;
  for (int64_t row = chunk * chunk_rows; row < row_end; ++row)
    total += to_f32(dy[row * d + j]) * to_f32(x[row * d + j]) * rstd[row];
  partials[chunk * d + j] = total;
}

// dweight (d) = sum over chunks, in order, of partials (chunks, d).
template <typename T>
__global__ void rmsnorm_dweight_final_kernel(const float* partials, int64_t chunks, int64_t d,
                                             T* dweight) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  float total = 0.0f;
  for (int64_t c = 0; c < chunks; ++c) total += partials[c * d + j];
  dweight[j] = from_f32<T>(total);
}

// Elements per thread in the add_rmsnorm kernels: one 16-byte vector of T.
template <typename T> constexpr int vector_items() { return 16 / sizeof(T); }

// sum (rows, d) = x + residual (rounded to T); y = sum * rstd * weight; rstd (rows).
// One block per row; each thread takes K consecutive elements per step. The second loop
// reads back the sum this same thread stored (from L1/L2), so y sees the rounded values.
template <typename T>
__global__ void add_rmsnorm_forward_kernel(const T* x, const T* residual, const T* weight, int64_t rows,
                                           int64_t d, float eps, bool aligned, T* sum, T* y, float* rstd) {
  constexpr int K = vector_items<T>();
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * d;
    float local = 0.0f;
    for (int64_t j = threadIdx.x * int64_t(K); j < d; j += int64_t(blockDim.x) * K) {
      float v[K], r[K];
      load_items<K>(x + base, j, d, aligned, v);
      if (residual) {
        load_items<K>(residual + base, j, d, aligned, r);
#pragma unroll
        for (int k = 0; k < K; ++k) v[k] = to_f32(from_f32<T>(v[k] + r[k]));
      }
#pragma unroll
      for (int k = 0; k < K; ++k) local += v[k] * v[k];
      store_items<K>(sum + base, j, d, aligned, v);
    }
    const float row_rstd = 1.0f / sqrtf(block_sum(local) / static_cast<float>(d) + eps);
    if (threadIdx.x == 0) rstd[row] = row_rstd;
    for (int64_t j = threadIdx.x * int64_t(K); j < d; j += int64_t(blockDim.x) * K) {
      float v[K], w[K];
      load_items<K>(sum + base, j, d, aligned, v);
      load_items<K>(weight, j, d, aligned, w);
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = v[k] * row_rstd * w[k];
      store_items<K>(y + base, j, d, aligned, v);
    }
  }
}

// dx (rows, d) = rstd * (w*dy - sum * rstd^2 * mean(w*dy*sum)) + dsum; one block per row.
template <typename T>
__global__ void add_rmsnorm_dx_kernel(const T* sum, const T* weight, const float* rstd, const T* dy,
                                      const T* dsum, int64_t rows, int64_t d, bool aligned, T* dx) {
  constexpr int K = vector_items<T>();
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * d;
    float local = 0.0f;
    for (int64_t j = threadIdx.x * int64_t(K); j < d; j += int64_t(blockDim.x) * K) {
      float v[K], w[K], g[K];
      load_items<K>(sum + base, j, d, aligned, v);
      load_items<K>(weight, j, d, aligned, w);
      load_items<K>(dy + base, j, d, aligned, g);
#pragma unroll
      for (int k = 0; k < K; ++k) local += w[k] * g[k] * v[k];
    }
    const float mean_wdy_s = block_sum(local) / static_cast<float>(d);
    const float row_rstd = rstd[row];
    const float correction = row_rstd * row_rstd * mean_wdy_s;
    for (int64_t j = threadIdx.x * int64_t(K); j < d; j += int64_t(blockDim.x) * K) {
      float v[K], w[K], g[K], ds[K];
      load_items<K>(sum + base, j, d, aligned, v);
      load_items<K>(weight, j, d, aligned, w);
      load_items<K>(dy + base, j, d, aligned, g);
      if (dsum) {
        load_items<K>(dsum + base, j, d, aligned, ds);
      } else {
#pragma unroll
        for (int k = 0; k < K; ++k) ds[k] = 0.0f;
      }
#pragma unroll
      for (int k = 0; k < K; ++k) g[k] = row_rstd * (w[k] * g[k] - v[k] * correction) + ds[k];
      store_items<K>(dx + base, j, d, aligned, g);
    }
  }
}

// Rows and pointers on 16-byte boundaries (null pointers count as aligned).
bool rows_aligned(int64_t d, int elem_size, std::initializer_list<const void*> ptrs) {
  if ((d * elem_size) % 16 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// dweight (d) = sum over rows of dy * x * rstd: per-chunk partials, then one ordered pass.
template <typename T>
void launch_dweight(const T* x, const float* rstd, const T* dy, int64_t rows, int64_t d, T* dweight,
                    cudaStream_t s) {
  // The chunking depends on rows only, so the summation order is fixed.
  const int64_t chunks = std::max<int64_t>(1, std::min(ceil_div(rows, kMinChunkRows), kMaxRowChunks));
  const int64_t chunk_rows = std::max<int64_t>(1, ceil_div(rows, chunks));
  float* partials = nullptr;
  SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partials),
                                 static_cast<size_t>(chunks * d) * sizeof(float), s));
  const dim3 partial_grid(static_cast<unsigned>(ceil_div(d, kColumnThreads)), static_cast<unsigned>(chunks));
  rmsnorm_dweight_partials_kernel<T><<<partial_grid, kColumnThreads, 0, s>>>(x, rstd, dy, rows, d, chunk_rows,
                                                                              partials);
  SSM_CUDA_CHECK_LAUNCH();
  rmsnorm_dweight_final_kernel<T><<<static_cast<unsigned>(ceil_div(d, kColumnThreads)), kColumnThreads, 0, s>>>(
      partials, chunks, d, dweight);
  SSM_CUDA_CHECK_LAUNCH();
  SSM_CUDA_CHECK(cudaFreeAsync(partials, s));
}

void check_sizes(const char* op, int64_t rows, int64_t d) {
  if (rows < 0 || d < 0)
    throw KernelError(std::string("cuda::") + op + ": negative size (rows " +
                      std::to_string(rows) + ", d " + std::to_string(d) + ")");
}

}  // namespace

void rmsnorm_forward(DType dtype, const void* x, const void* weight, int64_t rows, int64_t d,
                     double eps, void* y, float* rstd, cudaStream_t s) {
  check_sizes("rmsnorm_forward", rows, d);
  if (rows == 0) return;  // d == 0 still writes rstd = 1 / sqrt(eps), as the CPU does
  dispatch_f32_bf16(dtype, "rmsnorm_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    rmsnorm_forward_kernel<T><<<row_grid(rows), row_block_threads(d), 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(weight), rows, d, static_cast<float>(eps),
        static_cast<T*>(y), rstd);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void rmsnorm_backward(DType dtype, const void* x, const void* weight, const float* rstd,
                      const void* dy, int64_t rows, int64_t d, void* dx, void* dweight,
                      cudaStream_t s) {
  check_sizes("rmsnorm_backward", rows, d);
  if (d == 0) return;
  dispatch_f32_bf16(dtype, "rmsnorm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x_t = static_cast<const T*>(x);
    const T* dy_t = static_cast<const T*>(dy);
    if (rows > 0) {
      rmsnorm_dx_kernel<T><<<row_grid(rows), row_block_threads(d), 0, s>>>(
          x_t, static_cast<const T*>(weight), rstd, dy_t, rows, d, static_cast<T*>(dx));
      SSM_CUDA_CHECK_LAUNCH();
    }
    launch_dweight<T>(x_t, rstd, dy_t, rows, d, static_cast<T*>(dweight), s);
  });
}

void add_rmsnorm_forward(DType dtype, const void* x, const void* residual, const void* weight, int64_t rows,
                         int64_t d, double eps, void* sum, void* y, float* rstd, cudaStream_t s) {
  check_sizes("add_rmsnorm_forward", rows, d);
  dispatch_f32_bf16(dtype, "add_rmsnorm_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rows == 0) return;
    if (d == 0) {  // no elements: rstd = 1 / sqrt(eps), as the plain forward writes
      rmsnorm_forward(dtype, x, weight, rows, d, eps, y, rstd, s);
      return;
    }
    constexpr int K = vector_items<T>();
    const bool aligned = rows_aligned(d, sizeof(T), {x, residual, weight, sum, y});
    add_rmsnorm_forward_kernel<T><<<row_grid(rows), row_block_threads(ceil_div(d, K)), 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(weight), rows, d,
        static_cast<float>(eps), aligned, static_cast<T*>(sum), static_cast<T*>(y), rstd);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void add_rmsnorm_backward(DType dtype, const void* sum, const void* weight, const float* rstd, const void* dy,
                          const void* dsum, int64_t rows, int64_t d, void* dx, void* dweight, cudaStream_t s) {
  check_sizes("add_rmsnorm_backward", rows, d);
  dispatch_f32_bf16(dtype, "add_rmsnorm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (d == 0) return;
    constexpr int K = vector_items<T>();
    const T* sum_t = static_cast<const T*>(sum);
    const T* dy_t = static_cast<const T*>(dy);
    if (rows > 0) {
      const bool aligned = rows_aligned(d, sizeof(T), {sum, weight, dy, dsum, dx});
      add_rmsnorm_dx_kernel<T><<<row_grid(rows), row_block_threads(ceil_div(d, K)), 0, s>>>(
          sum_t, static_cast<const T*>(weight), rstd, dy_t, static_cast<const T*>(dsum), rows, d, aligned,
          static_cast<T*>(dx));
      SSM_CUDA_CHECK_LAUNCH();
    }
    launch_dweight<T>(sum_t, rstd, dy_t, rows, d, static_cast<T*>(dweight), s);
  });
}

}  // namespace ssmtrain::kernels::cuda
