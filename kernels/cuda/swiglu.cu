// SwiGLU on the GPU over a packed gate/up projection (kernels/swiglu.h). Elementwise: each
// thread takes K consecutive columns of one row (16-byte vectors when every row is aligned),
// grid-stride over rows x column groups. Arithmetic in f32; no reductions, so the same bits
// on every run.
#include "kernels/swiglu.h"

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/activations.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/vector_io.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::ceil_div;
using cuda_detail::dispatch_f32_bf16;
using cuda_detail::grid_for;
using cuda_detail::load_items;
using cuda_detail::store_items;

constexpr int kThreads = 256;

// Columns per thread: one 16-byte vector of T.
template <typename T> constexpr int items_per_thread() { return 16 / sizeof(T); }

// The gate's sigmoid takes exp from the special-function unit (kernels/cuda/activations.cuh).
using cuda_detail::Math;
using cuda_detail::sigmoid;

// Rows and base pointers on 16-byte boundaries, so whole vectors can be used.
bool rows_aligned(int64_t f, int elem_size, std::initializer_list<const void*> ptrs) {
  if ((f * elem_size) % 16 != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// out (rows, f) = silu(gate_up[:, :f]) * gate_up[:, f:]
template <typename T>
__global__ void swiglu_forward_kernel(const T* gate_up, int64_t rows, int64_t f, bool aligned, T* out) {
  constexpr int K = items_per_thread<T>();
  const int64_t groups = (f + K - 1) / K;  // column groups per row
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * groups;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / groups, col = (i % groups) * K;
    const T* gate = gate_up + row * 2 * f;  // (f)
    float g[K], u[K], y[K];
    load_items<K>(gate, col, f, aligned, g);
    load_items<K>(gate + f, col, f, aligned, u);
#pragma unroll
    for (int k = 0; k < K; ++k) y[k] = g[k] * sigmoid<Math::fast_exp>(g[k]) * u[k];
    store_items<K>(out + row * f, col, f, aligned, y);
  }
}

// dgate_up (rows, 2f) = [dout * up * sig * (1 + g (1 - sig)), dout * g * sig]
template <typename T>
__global__ void swiglu_backward_kernel(const T* gate_up, const T* dout, int64_t rows, int64_t f, bool aligned,
                                       T* dgate_up) {
  constexpr int K = items_per_thread<T>();
  const int64_t groups = (f + K - 1) / K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * groups;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / groups, col = (i % groups) * K;
    const T* gate = gate_up + row * 2 * f;  // (f)
    T* dgate = dgate_up + row * 2 * f;      // (f)
    float g[K], u[K], dy[K], dg[K], du[K];
    load_items<K>(gate, col, f, aligned, g);
    load_items<K>(gate + f, col, f, aligned, u);
    load_items<K>(dout + row * f, col, f, aligned, dy);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const float sig = sigmoid<Math::fast_exp>(g[k]);
      dg[k] = dy[k] * u[k] * sig * (1.0f + g[k] * (1.0f - sig));
      du[k] = dy[k] * g[k] * sig;
    }
    store_items<K>(dgate, col, f, aligned, dg);
    store_items<K>(dgate + f, col, f, aligned, du);
  }
}

void check_sizes(const char* op, int64_t rows, int64_t f) {
  if (rows < 0 || f < 0)
    throw KernelError(std::string("cuda::") + op + ": negative size (rows " + std::to_string(rows) + ", f " +
                      std::to_string(f) + ")");
}

}  // namespace

void swiglu_forward(DType dtype, const void* gate_up, int64_t rows, int64_t f, void* out, cudaStream_t s) {
  check_sizes("swiglu_forward", rows, f);
  dispatch_f32_bf16(dtype, "swiglu_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rows == 0 || f == 0) return;
    constexpr int K = items_per_thread<T>();
    const bool aligned = rows_aligned(f, sizeof(T), {gate_up, out});
    swiglu_forward_kernel<T><<<grid_for(rows * ceil_div(f, K), kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(gate_up), rows, f, aligned, static_cast<T*>(out));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void swiglu_backward(DType dtype, const void* gate_up, const void* dout, int64_t rows, int64_t f, void* dgate_up,
                     cudaStream_t s) {
  check_sizes("swiglu_backward", rows, f);
  dispatch_f32_bf16(dtype, "swiglu_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (rows == 0 || f == 0) return;
    constexpr int K = items_per_thread<T>();
    const bool aligned = rows_aligned(f, sizeof(T), {gate_up, dout, dgate_up});
    swiglu_backward_kernel<T><<<grid_for(rows * ceil_div(f, K), kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(gate_up), static_cast<const T*>(dout), rows, f, aligned, static_cast<T*>(dgate_up));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace ssmtrain::kernels::cuda
