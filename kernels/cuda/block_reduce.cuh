// Deterministic warp and block reductions for the CUDA kernels: a fixed butterfly inside each
// warp, then the per-warp partials combined by the first warp in warp order. For a given block
// size the order of every addition is fixed, so results are the same bits on every run.
// Included only from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace ssmtrain::kernels::cuda_detail {

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
// Max that propagates NaN (fmaxf would drop it), so a NaN input shows in the output.
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const {
    return (a > b || isnan(a)) ? a : b;
  }
};

// Every lane returns the combination of all 32 lanes' values. combine must be commutative;
// the xor butterfly then gives every lane the same bits.
template <typename T, typename Combine>
__device__ __forceinline__ T warp_allreduce(T value, Combine combine) {
  for (int mask = 16; mask > 0; mask >>= 1)
    value = combine(value, __shfl_xor_sync(0xffffffffu, value, mask));
  return value;
}

// Every thread of the block returns the combination of all threads' values. blockDim.x must
// be a multiple of 32 (at most 1024) and every thread of the block must call it. Safe to call
// several times in a row in one kernel.
template <typename T, typename Combine>
__device__ T block_allreduce(T value, Combine combine, T identity) {
  __shared__ T warp_partials[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int num_warps = blockDim.x / 32;
  value = warp_allreduce(value, combine);
  __syncthreads();  // a previous call may still be reading warp_partials
  if (lane == 0) warp_partials[warp] = value;
  __syncthreads();
  T total = lane < num_warps ? warp_partials[lane] : identity;
  total = warp_allreduce(total, combine);  // every warp computes the same total
  return total;
}

__device__ __forceinline__ float block_sum(float value) {
  return block_allreduce(value, SumOp{}, 0.0f);
}
__device__ __forceinline__ float block_max(float value) {
  return block_allreduce(value, MaxOp{}, -INFINITY);
}

// Threads per block for a per-row reduction over n elements: a function of n only (never of
// the device), so the summation order is reproducible everywhere.
inline int row_block_threads(int64_t n) {
  if (n <= 32) return 32;
  if (n <= 128) return 128;
  if (n <= 2048) return 256;
  return 512;
}

}  // namespace ssmtrain::kernels::cuda_detail
