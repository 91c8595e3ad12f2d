// Elementwise ops on the GPU: activations and their backward rules, scalar affine and power,
// and broadcasting binary arithmetic. Kernels are templated on the storage type only; the op is
// a runtime switch. Arithmetic in f32. Same contracts as kernels/cpu/elementwise.cpp.
#include "kernels/elementwise.h"

#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/activations.cuh"
#include "kernels/cuda/check.h"
#include "kernels/cuda/dtype.cuh"
#include "kernels/cuda/layout.cuh"

namespace ssmtrain::kernels::cuda {
namespace {

using cuda_detail::dispatch_float;
using cuda_detail::from_f32;
using cuda_detail::grid_for;
using cuda_detail::is_contiguous;
using cuda_detail::strided_offset;
using cuda_detail::to_f32;

constexpr int kThreads = 256;

// The activations (kernels/cuda/activations.cuh), accurate to the f32 rounding.
using cuda_detail::kSoftplusThreshold;
using cuda_detail::sigmoid;
using cuda_detail::silu;
using cuda_detail::softplus;

// y = op(x).
__device__ __forceinline__ float unary_value(UnaryOp op, float x) {
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return expf(x);
    case UnaryOp::log: return logf(x);
    case UnaryOp::silu: return silu(x);
    case UnaryOp::gelu: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case UnaryOp::softplus: return softplus(x);
    case UnaryOp::sigmoid: return sigmoid(x);
    case UnaryOp::sqrt: return sqrtf(x);
    case UnaryOp::square: return x * x;
  }
  return 0.0f;
}

// dx = dy * op'(x), with y = op(x) where that is cheaper.
__device__ __forceinline__ float unary_grad(UnaryOp op, float x, float y, float dy) {
  switch (op) {
    case UnaryOp::neg: return -dy;
    case UnaryOp::exp: return dy * y;
    case UnaryOp::log: return dy / x;
    case UnaryOp::silu: {
      const float s = sigmoid(x);
      return dy * s * (1.0f + x * (1.0f - s));
    }
    case UnaryOp::gelu: {
      const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
      const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);  // 1/sqrt(2 pi)
      return dy * (cdf + x * pdf);
    }
    case UnaryOp::softplus: return x > kSoftplusThreshold ? dy : dy * sigmoid(x);
    case UnaryOp::sigmoid: {  // from x, as on the CPU: 1 - y loses precision near y = 1
      const float s = sigmoid(x);
      return dy * s * (1.0f - s);
    }
    case UnaryOp::sqrt: return dy * 0.5f / y;
    case UnaryOp::square: return dy * 2.0f * x;
  }
  return 0.0f;
}

__device__ __forceinline__ float binary_value(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
  }
  return 0.0f;
}

// Gradient of `a op b` with respect to operand `which` (0 = a, 1 = b), times dy.
__device__ __forceinline__ float binary_grad(BinaryOp op, int which, float a, float b, float dy) {
  switch (op) {
    case BinaryOp::add: return dy;
    case BinaryOp::sub: return which == 0 ? dy : -dy;
    case BinaryOp::mul: return which == 0 ? dy * b : dy * a;
    case BinaryOp::div: return which == 0 ? dy / b : -dy * a / (b * b);
  }
  return 0.0f;
}

#define SSM_GRID_STRIDE_LOOP(i, n)                                                  \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// ---- kernels: x, y, dy, dx are (n) contiguous ----

template <typename T> __global__ void unary_forward_kernel(UnaryOp op, const T* x, T* y, int64_t n) {
  SSM_GRID_STRIDE_LOOP(i, n) y[i] = from_f32<T>(unary_value(op, to_f32(x[i])));
}

template <typename T>
__global__ void unary_backward_kernel(UnaryOp op, const T* x, const T* y, const T* dy, T* dx,
                                      int64_t n) {
  SSM_GRID_STRIDE_LOOP(i, n) {
    const float y_i = y != nullptr ? to_f32(y[i]) : 0.0f;
    dx[i] = from_f32<T>(unary_grad(op, to_f32(x[i]), y_i, to_f32(dy[i])));
  }
}

template <typename T>
__global__ void affine_kernel(const T* x, T* y, int64_t n, float alpha, float beta) {
  SSM_GRID_STRIDE_LOOP(i, n) y[i] = from_f32<T>(alpha * to_f32(x[i]) + beta);
}

template <typename T> __global__ void pow_kernel(const T* x, T* y, int64_t n, float p) {
  SSM_GRID_STRIDE_LOOP(i, n) y[i] = from_f32<T>(powf(to_f32(x[i]), p));
}

template <typename T>
__global__ void pow_backward_kernel(const T* x, const T* dy, T* dx, int64_t n, float p) {
  SSM_GRID_STRIDE_LOOP(i, n) {
    dx[i] = from_f32<T>(to_f32(dy[i]) * p * powf(to_f32(x[i]), p - 1.0f));
  }
}

// out (numel, contiguous over the output shape) = a op b. When `contiguous`, a and b are read
// at the linear index; otherwise through their layouts (stride 0 where broadcast).
template <typename T>
__global__ void binary_forward_kernel(BinaryOp op, const T* a, Layout a_layout, const T* b,
                                      Layout b_layout, T* out, int64_t numel, bool contiguous) {
  SSM_GRID_STRIDE_LOOP(i, numel) {
    const int64_t ia = contiguous ? i : strided_offset(i, a_layout);
    const int64_t ib = contiguous ? i : strided_offset(i, b_layout);
    out[i] = from_f32<T>(binary_value(op, to_f32(a[ia]), to_f32(b[ib])));
  }
}

// d_full (numel, contiguous over the output shape) = d(a op b)/d(operand which) * dy.
template <typename T>
__global__ void binary_backward_kernel(BinaryOp op, int which, const T* dy, const T* a,
                                       Layout a_layout, const T* b, Layout b_layout, T* d_full,
                                       int64_t numel, bool contiguous) {
  // Only the operands the rule reads are loaded (add and sub read neither).
  const bool reads_operands = op == BinaryOp::mul || op == BinaryOp::div;
  const bool needs_a = reads_operands && which == 1;
  const bool needs_b = reads_operands && (which == 0 || op == BinaryOp::div);
  SSM_GRID_STRIDE_LOOP(i, numel) {
    const float a_i = needs_a ? to_f32(a[contiguous ? i : strided_offset(i, a_layout)]) : 0.0f;
    const float b_i = needs_b ? to_f32(b[contiguous ? i : strided_offset(i, b_layout)]) : 0.0f;
    d_full[i] = from_f32<T>(binary_grad(op, which, a_i, b_i, to_f32(dy[i])));
  }
}

#undef SSM_GRID_STRIDE_LOOP

void check_count(const char* op, int64_t n) {
  if (n < 0) throw KernelError(std::string("cuda::") + op + ": negative count " + std::to_string(n));
}

void check_binary(const char* op, const Layout& a, const Layout& b, int which = 0) {
  cuda_detail::check_same_shape(op, a, b);
  if (which != 0 && which != 1)
    throw KernelError(std::string("cuda::") + op + ": operand index must be 0 or 1, got " +
                      std::to_string(which));
}

}  // namespace

void unary_forward(UnaryOp op, DType dtype, const void* x, void* y, int64_t n, cudaStream_t s) {
  check_count("unary_forward", n);
  if (n == 0) return;
  dispatch_float(dtype, "unary_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    unary_forward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, s>>>(
        op, static_cast<const T*>(x), static_cast<T*>(y), n);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void unary_backward(UnaryOp op, DType dtype, const void* x, const void* y, const void* dy, void* dx,
                    int64_t n, cudaStream_t s) {
  check_count("unary_backward", n);
  if (n == 0) return;
  const bool needs_y = op == UnaryOp::exp || op == UnaryOp::sqrt;
  if (needs_y && y == nullptr)
    throw KernelError("cuda::unary_backward: this op's backward reads y = op(x), got null");
  dispatch_float(dtype, "unary_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    unary_backward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, s>>>(
        op, static_cast<const T*>(x), static_cast<const T*>(y), static_cast<const T*>(dy),
        static_cast<T*>(dx), n);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void affine(DType dtype, const void* x, void* y, int64_t n, double alpha, double beta,
            cudaStream_t s) {
  check_count("affine", n);
  if (n == 0) return;
  dispatch_float(dtype, "affine", [&](auto tag) {
    using T = typename decltype(tag)::type;
    affine_kernel<T><<<grid_for(n, kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<T*>(y), n, static_cast<float>(alpha),
        static_cast<float>(beta));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void pow_scalar(DType dtype, const void* x, void* y, int64_t n, double p, cudaStream_t s) {
  check_count("pow_scalar", n);
  if (n == 0) return;
  dispatch_float(dtype, "pow_scalar", [&](auto tag) {
    using T = typename decltype(tag)::type;
    pow_kernel<T><<<grid_for(n, kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<T*>(y), n, static_cast<float>(p));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void pow_scalar_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t n, double p,
                         cudaStream_t s) {
  check_count("pow_scalar_backward", n);
  if (n == 0) return;
  dispatch_float(dtype, "pow_scalar_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    pow_backward_kernel<T><<<grid_for(n, kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(dy), static_cast<T*>(dx), n,
        static_cast<float>(p));
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void binary_forward(BinaryOp op, DType dtype, const void* a, const Layout& a_layout, const void* b,
                    const Layout& b_layout, void* out, cudaStream_t s) {
  check_binary("binary_forward", a_layout, b_layout);
  const int64_t numel = a_layout.numel();
  if (numel == 0) return;
  const bool contiguous = is_contiguous(a_layout) && is_contiguous(b_layout);
  dispatch_float(dtype, "binary_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    binary_forward_kernel<T><<<grid_for(numel, kThreads), kThreads, 0, s>>>(
        op, static_cast<const T*>(a), a_layout, static_cast<const T*>(b), b_layout,
        static_cast<T*>(out), numel, contiguous);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

void binary_backward(BinaryOp op, int which, DType dtype, const void* dy, const void* a,
                     const Layout& a_layout, const void* b, const Layout& b_layout, void* d_full,
                     cudaStream_t s) {
  check_binary("binary_backward", a_layout, b_layout, which);
  const int64_t numel = a_layout.numel();
  if (numel == 0) return;
  const bool contiguous = is_contiguous(a_layout) && is_contiguous(b_layout);
  dispatch_float(dtype, "binary_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    binary_backward_kernel<T><<<grid_for(numel, kThreads), kThreads, 0, s>>>(
        op, which, static_cast<const T*>(dy), static_cast<const T*>(a), a_layout,
        static_cast<const T*>(b), b_layout, static_cast<T*>(d_full), numel, contiguous);
    SSM_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace ssmtrain::kernels::cuda
