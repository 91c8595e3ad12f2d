// Reductions with a fixed summation order (deterministic on every device): sum over one
// dimension, sum of a broadcast gradient back to an operand's shape, softmax and
// log-softmax, and a whole-tensor sum. A tensor reduced over dimension `dim` is viewed as
// (outer, n, inner) with n the size of that dimension.
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

namespace cpu {
// y (outer, inner) = scale * sum over n of x (outer, n, inner).
template <typename T>
void sum_dim(const T* x, int64_t outer, int64_t n, int64_t inner, T* y, double scale);
// dx (outer, n, inner) = scale * dy (outer, inner), broadcast along n.
template <typename T>
void sum_dim_backward(const T* dy, int64_t outer, int64_t n, int64_t inner, T* dx, double scale);
// dst (contiguous, shape `dst_shape`) = sum of src (contiguous, shape full.shape) over every
// dimension where dst_layout has stride 0; dst_layout gives dst's strides over full.shape.
template <typename T>
void sum_to(const T* src, const Layout& full, T* dst, const Layout& dst_layout);
// y = softmax(x) or log_softmax(x) over n, for (outer, n, inner).
template <typename T>
void softmax_forward(const T* x, int64_t outer, int64_t n, int64_t inner, T* y, bool log);
// dx from y = (log_)softmax(x): softmax dx = y * (dy - sum(dy * y)); log: dx = dy - exp(y) sum(dy).
template <typename T>
void softmax_backward(const T* y, const T* dy, int64_t outer, int64_t n, int64_t inner, T* dx,
                      bool log);
// Sum of n elements, accumulated in double, written to *out.
template <typename T> void sum_all(const T* x, int64_t n, T* out);
}  // namespace cpu

namespace cuda {
// f32, bf16 or f16 in and out; accumulation in f32 in a fixed order (the softmax backward keeps
// its row dot product in f64, where dy and the dot nearly cancel).
void sum_dim(DType dtype, const void* x, int64_t outer, int64_t n, int64_t inner, void* y,
             double scale, cudaStream_t s);
void sum_dim_backward(DType dtype, const void* dy, int64_t outer, int64_t n, int64_t inner, void* dx,
                      double scale, cudaStream_t s);
void sum_to(DType dtype, const void* src, const Layout& full, void* dst, const Layout& dst_layout,
            cudaStream_t s);
void softmax_forward(DType dtype, const void* x, int64_t outer, int64_t n, int64_t inner, void* y,
                     bool log, cudaStream_t s);
void softmax_backward(DType dtype, const void* y, const void* dy, int64_t outer, int64_t n,
                      int64_t inner, void* dx, bool log, cudaStream_t s);
void sum_all(DType dtype, const void* x, int64_t n, void* out, cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
