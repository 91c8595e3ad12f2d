// Philox random fills on the GPU. Each element calls the same philox_*_at function as the CPU
// reference (kernels/philox.h), so a fill is bit-identical on both devices; bf16 outputs are
// the f32 value rounded to nearest even.
#include "kernels/philox.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::dispatch_f32_bf16;
using cuda_detail::from_f32;
using cuda_detail::grid_for;

constexpr int kThreads = 256;

// out (n): out[i] = uniform [low, high) element i of stream (seed, offset).
template <typename T>
__global__ void fill_uniform_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, float low,
                                    float high) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f32<T>(philox_uniform_at(seed, offset, i, low, high));
}

// out (n): out[i] = normal (mean, std) element i of stream (seed, offset).
template <typename T>
__global__ void fill_normal_kernel(T* out, int64_t n, uint64_t seed, uint64_t offset, float mean,
                                   float std) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f32<T>(philox_normal_at(seed, offset, i, mean, std));
}

void check_count(const char* op, int64_t n) {
  if (n < 0) throw KernelError(std::string("cuda::") + op + ": negative count " + std::to_string(n));
}

}  // namespace

void fill_uniform(DType dtype, void* out, int64_t n, uint64_t seed, uint64_t offset, float low,
                  float high, cudaStream_t stream) {
  check_count("fill_uniform", n);
  if (n == 0) return;
  dispatch_f32_bf16(dtype, "fill_uniform", [&](auto tag) {
    using T = typename decltype(tag)::type;
    fill_uniform_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        static_cast<T*>(out), n, seed, offset, low, high);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void fill_normal(DType dtype, void* out, int64_t n, uint64_t seed, uint64_t offset, float mean,
                 float std, cudaStream_t stream) {
  check_count("fill_normal", n);
  if (n == 0) return;
  dispatch_f32_bf16(dtype, "fill_normal", [&](auto tag) {
    using T = typename decltype(tag)::type;
    fill_normal_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        static_cast<T*>(out), n, seed, offset, mean, std);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace ssmtrain::kernels::cuda
