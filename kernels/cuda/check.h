// Error checking and launch helpers shared by the CUDA kernels (included only from .cu files).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "kernels/common.h"

namespace ssmtrain::kernels::cuda_detail {

[[noreturn]] inline void fail(const char* what, cudaError_t err, const char* file, int line) {
  throw KernelError(std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": " +
                    cudaGetErrorString(err));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A 1-D grid of `threads`-wide blocks covering n items, capped for grid-stride loops.
inline unsigned grid_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 32) {
  int64_t blocks = ceil_div(n, threads);
  if (blocks < 1) blocks = 1;
  if (blocks > max_blocks) blocks = max_blocks;
  return static_cast<unsigned>(blocks);
}

}  // namespace ssmtrain::kernels::cuda_detail

#define SSM_CUDA_CHECK(expr)                                                      \
  do {                                                                            \
    cudaError_t ssm_err_ = (expr);                                                \
    if (ssm_err_ != cudaSuccess)                                                  \
      ::ssmtrain::kernels::cuda_detail::fail(#expr, ssm_err_, __FILE__, __LINE__); \
  } while (0)

// After every launch: a bad configuration surfaces here, not at some later call.
#define SSM_CUDA_CHECK_LAUNCH() SSM_CUDA_CHECK(cudaGetLastError())
