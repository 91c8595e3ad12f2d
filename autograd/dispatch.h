// Internal helpers for op implementations: device checks, the CPU dtype switch, the CUDA
// branch (which throws in a build without CUDA), and Layout conversion for kernels.
#pragma once

#include <stdexcept>
#include <string>

#include "autograd/tensor.h"
#include "kernels/common.h"

#if SSMTRAIN_WITH_CUDA
#include "autograd/stream.h"
// Runs `stmt` with the tensor's device current; the stream is `stream`.
#define SSM_CUDA_BRANCH(tensor, stmt)                                    \
  do {                                                                   \
    ::ssmtrain::DeviceGuard ssm_guard_((tensor).device().index);         \
    [[maybe_unused]] cudaStream_t stream =                               \
        ::ssmtrain::current_stream((tensor).device().index);             \
    stmt;                                                                \
  } while (0)
#else
#define SSM_CUDA_BRANCH(tensor, stmt) \
  throw std::runtime_error("ssmtrain was built without CUDA; cannot run on " + (tensor).device().str())
#endif

namespace ssmtrain::detail {

[[noreturn]] void op_error(const char* op, const std::string& what);

// All tensors defined and on one device; returns that device.
Device common_device(const char* op, std::initializer_list<const Tensor*> tensors);
void check_same_dtype(const char* op, std::initializer_list<const Tensor*> tensors);
void check_dtype_float(const char* op, const Tensor& t);

// Calls f(T{}) with T = float or double for a CPU float tensor; other dtypes are an error
// naming the op (CPU ops compute in f32, or f64 for gradient checks).
template <typename F>
void cpu_float_dispatch(const char* op, DType dtype, F&& f) {
  switch (dtype) {
    case DType::f32: f(float{}); return;
    case DType::f64: f(double{}); return;
    default:
      op_error(op, std::string("the CPU computes in f32 or f64, got ") + dtype_name(dtype) +
                       " (cast first)");
  }
}

// Kernel layout of a tensor's own shape and strides.
kernels::Layout layout_of(const Tensor& t);
// Layout of t read over out_shape with broadcasting (stride 0 on broadcast dims).
kernels::Layout broadcast_layout(const Tensor& t, const Shape& out_shape);
// numpy broadcasting of two shapes; error names the op and both shapes.
Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b);
int64_t normalize_dim(const char* op, int64_t dim, int64_t ndim);

}  // namespace ssmtrain::detail
