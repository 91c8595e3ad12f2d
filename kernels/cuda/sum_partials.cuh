// The in-order sum of per-block partials, one kernel for every op whose blocks leave pieces of a
// sum behind (the SSD's and the selective scan's parameter gradients, the tensor-core SSD's dB /
// dC slices, the gradient norm): fixed order, no float atomics, so runs give the same bits.
//   out[o * inner + i] = sum over p < parts, in order, of in[(o * parts + p) * inner + i]
// accumulated in Acc (float or double) and written as Out. Two ways to spread the work:
//   SumBy::thread  one thread per output adding its parts in order (many outputs, few parts);
//   SumBy::block   one block per output: each thread adds a strided share of the parts in order,
//                  then a fixed-order block sum (few outputs, many parts).
// Included only from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"

namespace ssmtrain::kernels::cuda_detail {

enum class SumBy { thread, block };

// Internal linkage in each including file, as the per-file kernels this replaced had.
namespace {

struct AddOp {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

template <typename Out, typename Acc> __device__ __forceinline__ Out store_sum(Acc v) {
  if constexpr (std::is_same_v<Acc, float>) return from_f32<Out>(v);
  else return static_cast<Out>(v);
}

// SumBy::block needs blockDim.x a multiple of 32 (block_allreduce). Grid-stride over outputs.
template <SumBy By, typename Acc, typename Out>
__global__ void sum_partials_kernel(const float* in, int64_t outer, int64_t parts, int64_t inner, Out* out) {
  const int64_t total = outer * inner;
  if constexpr (By == SumBy::thread) {
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x) {
      const int64_t o = idx / inner, i = idx % inner;
      Acc sum = 0;
      for (int64_t p = 0; p < parts; ++p) sum += in[(o * parts + p) * inner + i];
      out[idx] = store_sum<Out>(sum);
    }
  } else {
    for (int64_t idx = blockIdx.x; idx < total; idx += gridDim.x) {
      const int64_t o = idx / inner, i = idx % inner;
      Acc sum = 0;
      for (int64_t p = threadIdx.x; p < parts; p += blockDim.x) sum += in[(o * parts + p) * inner + i];
      sum = block_allreduce(sum, AddOp{}, Acc(0));
      if (threadIdx.x == 0) out[idx] = store_sum<Out>(sum);
    }
  }
}

// Launches on `stream`: SumBy::thread with 256-thread blocks over the outputs; SumBy::block with
// one `threads`-wide block per output.
template <typename Acc = float, typename Out>
void sum_partials_by_thread(const float* in, int64_t outer, int64_t parts, int64_t inner, Out* out,
                            cudaStream_t stream) {
  sum_partials_kernel<SumBy::thread, Acc, Out><<<grid_for(outer * inner, 256), 256, 0, stream>>>(in, outer, parts,
                                                                                                inner, out);
  SSM_CUDA_CHECK_LAUNCH();
}
template <typename Acc = float, typename Out>
void sum_partials_by_block(const float* in, int64_t outer, int64_t parts, int64_t inner, Out* out, int threads,
                           cudaStream_t stream) {
  sum_partials_kernel<SumBy::block, Acc, Out><<<grid_for(outer * inner, 1), threads, 0, stream>>>(in, outer, parts,
                                                                                                 inner, out);
  SSM_CUDA_CHECK_LAUNCH();
}

}  // namespace
}  // namespace ssmtrain::kernels::cuda_detail
