// CUDA gated RMSNorm (kernels/gated_rmsnorm.h), fused: one pass per row computes u = y * silu(z)
// into shared memory, each group's sum of squares (one warp per group, fixed order), and the
// output. The backward runs strips of rows per block: du, dy, dz per row, and dweight as the
// block's column sums over its rows, written as one partial per block and summed over blocks
// in order by a second kernel (no atomics). Row loops load kBatch elements per thread before
// using any, so several loads are in flight at once (loaded and used one at a time, each
// waited for the one before); the sigmoid is computed with __expf and __fdividef (about 2 ulp).
// Glossary: rows = leading indices flattened, d the normalised dim, group_size elements per group.
#include <cuda_bf16.h>

#include <string>

#include "kernels/cuda/activations.cuh"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/gated_rmsnorm.h"

namespace ssmtrain::kernels {
namespace {

using cuda_detail::from_f32;
using cuda_detail::to_f32;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerBlock = 16;  // backward: rows per block (dweight partials per block)
constexpr int kBatch = 4;          // elements per thread loaded before any is used

using cuda_detail::Math;
using cuda_detail::sigmoid;  // kernels/cuda/activations.cuh

// v[u] = src[base + j] for this thread's batch of elements j = j0 + u kThreads below n.
template <typename T>
__device__ __forceinline__ void load_batch(float (&v)[kBatch], const T* src, int64_t base, int j0, int n) {
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const int j = j0 + u * kThreads;
    if (j < n) v[u] = to_f32(src[base + j]);
  }
}

// u_s[j] = y * silu(z) (or y) for the row; then per group: sum_j a_s[j] * b_s[j] by one warp per
// group (lanes strided, then the butterfly), into out_s[group].
__device__ void group_dots(const float* a_s, const float* b_s, int64_t d, int64_t group_size, float* out_s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t ngroups = d / group_size;
  for (int64_t gi = warp; gi < ngroups; gi += kWarps) {
    float sum = 0.0f;
    for (int64_t j = lane; j < group_size; j += 32) sum = fmaf(a_s[gi * group_size + j], b_s[gi * group_size + j], sum);
    sum = cuda_detail::warp_allreduce(sum, cuda_detail::SumOp{});
    if (lane == 0) out_s[gi] = sum;
  }
}

// Grid: one block per row. Shared memory: u (d floats), then one float per group.
template <typename T>
__global__ void __launch_bounds__(kThreads) norm_forward_kernel(const T* y, const T* z, const T* weight, int64_t d,
                                                                int64_t group_size, float eps, T* out, float* rstd) {
  extern __shared__ float smem[];
  float* u_s = smem;
  float* g_s = smem + d;
  const int64_t row = blockIdx.x, ngroups = d / group_size;
  const int n = static_cast<int>(d), gsize = static_cast<int>(group_size);
  const int64_t base = row * d;
  for (int j0 = threadIdx.x; j0 < n; j0 += kBatch * kThreads) {
    float yv[kBatch], zv[kBatch] = {};
    load_batch(yv, y, base, j0, n);
    if (z) load_batch(zv, z, base, j0, n);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int j = j0 + u * kThreads;
      if (j < n) u_s[j] = z ? yv[u] * (zv[u] * sigmoid<Math::fast>(zv[u])) : yv[u];
    }
  }
  __syncthreads();
  group_dots(u_s, u_s, d, group_size, g_s);
  __syncthreads();
  for (int64_t gi = threadIdx.x; gi < ngroups; gi += kThreads) {
    const float r = rsqrtf(g_s[gi] / static_cast<float>(group_size) + eps);
    g_s[gi] = r;
    rstd[row * ngroups + gi] = r;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < n; j += kThreads)
    out[base + j] = from_f32<T>(u_s[j] * g_s[j / gsize] * to_f32(weight[j]));
}

// Grid: one block per kRowsPerBlock rows. Shared memory: u, w * dout (d floats each), the
// group means, and the block's dweight column sums (d floats). dw_partial (blocks, d).
template <typename T>
__global__ void __launch_bounds__(kThreads) norm_backward_kernel(const T* y, const T* z, const T* weight,
                                                                 const float* rstd, const T* dout, int64_t rows,
                                                                 int64_t d, int64_t group_size, T* dy, T* dz,
                                                                 float* dw_partial) {
  extern __shared__ float smem[];
  float* u_s = smem;
  float* wd_s = smem + d;
  float* dw_s = smem + 2 * d;
  float* g_s = smem + 3 * d;
  const int n = static_cast<int>(d), gsize = static_cast<int>(group_size), ngroups = n / gsize;
  for (int j = threadIdx.x; j < n; j += kThreads) dw_s[j] = 0.0f;
  const int64_t row0 = blockIdx.x * int64_t(kRowsPerBlock);
  const int64_t row1 = min(rows, row0 + kRowsPerBlock);
  for (int64_t row = row0; row < row1; ++row) {
    __syncthreads();  // the previous row's g_s, u_s, wd_s are no longer read
    const int64_t base = row * d;
    const float* rs = rstd + row * ngroups;
    for (int j0 = threadIdx.x; j0 < n; j0 += kBatch * kThreads) {
      float yv[kBatch], zv[kBatch] = {}, go[kBatch], wv[kBatch], sv[kBatch];
      load_batch(yv, y, base, j0, n);
      if (z) load_batch(zv, z, base, j0, n);
      load_batch(go, dout, base, j0, n);
      load_batch(wv, weight, 0, j0, n);
#pragma unroll
      for (int u = 0; u < kBatch; ++u)
        if (j0 + u * kThreads < n) sv[u] = rs[(j0 + u * kThreads) / gsize];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int j = j0 + u * kThreads;
        if (j >= n) continue;
        const float uu = z ? yv[u] * (zv[u] * sigmoid<Math::fast>(zv[u])) : yv[u];
        u_s[j] = uu;
        wd_s[j] = wv[u] * go[u];
        dw_s[j] = fmaf(go[u] * uu, sv[u], dw_s[j]);  // this thread's column only
      }
    }
    __syncthreads();
    group_dots(wd_s, u_s, d, group_size, g_s);
    __syncthreads();
    for (int j0 = threadIdx.x; j0 < n; j0 += kBatch * kThreads) {
      float yv[kBatch], zv[kBatch];
      if (z) {
        load_batch(yv, y, base, j0, n);
        load_batch(zv, z, base, j0, n);
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int j = j0 + u * kThreads;
        if (j >= n) continue;
        const int gi = j / gsize;
        const float s = rs[gi];  // in L1 since the first pass
        const float mean_dot = g_s[gi] / static_cast<float>(gsize);
        const float du = s * (wd_s[j] - u_s[j] * s * s * mean_dot);
        if (z) {
          const float sg = sigmoid<Math::fast>(zv[u]);
          dy[base + j] = from_f32<T>(du * zv[u] * sg);
          dz[base + j] = from_f32<T>(du * yv[u] * sg * (1.0f + zv[u] * (1.0f - sg)));
        } else {
          dy[base + j] = from_f32<T>(du);
        }
      }
    }
  }
  for (int64_t j = threadIdx.x; j < d; j += kThreads) dw_partial[blockIdx.x * d + j] = dw_s[j];
}

// dweight[j] = sum over blocks, in block order, of dw_partial[block][j].
template <typename T>
__global__ void sum_columns_kernel(const float* partial, int64_t blocks, int64_t d, T* out) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  float sum = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) sum += partial[b * d + j];
  out[j] = from_f32<T>(sum);
}

void check_sizes(const char* op, int64_t rows, int64_t d, int64_t group_size) {
  if (rows < 0 || d < 1 || group_size < 1 || d % group_size != 0 || d > 12 * 1024)
    throw KernelError(std::string("cuda::") + op + ": bad sizes (rows " + std::to_string(rows) + ", d " +
                      std::to_string(d) + ", group_size " + std::to_string(group_size) +
                      "); group_size must divide d, and d is at most 12288 (shared memory)");
}

template <typename K> void allow_smem(K kernel, size_t bytes) {
  SSM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace

namespace cuda {

void gated_rmsnorm_forward(DType dtype, const void* y, const void* z, const void* weight, int64_t rows, int64_t d,
                           int64_t group_size, double eps, void* out, float* rstd, cudaStream_t s) {
  check_sizes("gated_rmsnorm_forward", rows, d, group_size);
  if (rows == 0) return;
  cuda_detail::dispatch_f32_bf16(dtype, "gated_rmsnorm_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const size_t smem = sizeof(float) * (d + d / group_size);
    auto kernel = norm_forward_kernel<T>;
    allow_smem(kernel, smem);
    kernel<<<static_cast<unsigned>(rows), kThreads, smem, s>>>(static_cast<const T*>(y), static_cast<const T*>(z),
                                                                static_cast<const T*>(weight), d, group_size,
                                                                static_cast<float>(eps), static_cast<T*>(out), rstd);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void gated_rmsnorm_backward(DType dtype, const void* y, const void* z, const void* weight, const float* rstd,
                            const void* dout, int64_t rows, int64_t d, int64_t group_size, void* dy, void* dz,
                            void* dweight, cudaStream_t s) {
  check_sizes("gated_rmsnorm_backward", rows, d, group_size);
  if (z && !dz) throw KernelError("cuda::gated_rmsnorm_backward: dz is required when z is given");
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  cuda_detail::dispatch_f32_bf16(dtype, "gated_rmsnorm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rows == 0) {
      SSM_CUDA_CHECK(cudaMemsetAsync(dweight, 0, sizeof(T) * d, s));
      return;
    }
    float* partial = nullptr;
    SSM_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partial), sizeof(float) * blocks * d, s));
    const size_t smem = sizeof(float) * (3 * d + d / group_size);
    auto kernel = norm_backward_kernel<T>;
    allow_smem(kernel, smem);
    kernel<<<static_cast<unsigned>(blocks), kThreads, smem, s>>>(
        static_cast<const T*>(y), static_cast<const T*>(z), static_cast<const T*>(weight), rstd,
        static_cast<const T*>(dout), rows, d, group_size, static_cast<T*>(dy), static_cast<T*>(dz), partial);
    SSM_CUDA_CHECK_LAUNCH();
    sum_columns_kernel<T><<<cuda_detail::grid_for(d, 256), 256, 0, s>>>(partial, blocks, d, static_cast<T*>(dweight));
    SSM_CUDA_CHECK_LAUNCH();
    SSM_CUDA_CHECK(cudaFreeAsync(partial, s));
  });
}

}  // namespace cuda
}  // namespace ssmtrain::kernels
