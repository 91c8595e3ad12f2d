// Elementwise ops: activations, scalar affine / power, and broadcasting binary arithmetic,
// each with the backward rule its autograd node uses. Float dtypes only.
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

namespace cpu {
// y = op(x) over n contiguous elements.
template <typename T> void unary_forward(UnaryOp op, const T* x, T* y, int64_t n);
// dx = dy * op'(x); y is op(x) (some rules read it instead of recomputing).
template <typename T>
void unary_backward(UnaryOp op, const T* x, const T* y, const T* dy, T* dx, int64_t n);
// y = alpha * x + beta.
template <typename T> void affine(const T* x, T* y, int64_t n, double alpha, double beta);
// y = x^p; backward dx = dy * p * x^(p-1).
template <typename T> void pow_scalar(const T* x, T* y, int64_t n, double p);
template <typename T> void pow_scalar_backward(const T* x, const T* dy, T* dx, int64_t n, double p);
// out (contiguous, shape a_layout.shape) = a op b; a and b are read through their layouts'
// strides over the output shape (stride 0 where broadcast). All three share ndim and shape.
template <typename T>
void binary_forward(BinaryOp op, const T* a, const Layout& a_layout, const T* b,
                    const Layout& b_layout, T* out);
// The gradient with respect to operand `which` (0 = a, 1 = b) at full output shape:
//   add: dy, -dy for sub's b; mul: dy * other; div: dy / b for a and -dy * a / b^2 for b.
// d_full is contiguous with the output shape; reduce it to the operand's shape with
// reduce::sum_to when it was broadcast.
template <typename T>
void binary_backward(BinaryOp op, int which, const T* dy, const T* a, const Layout& a_layout,
                     const T* b, const Layout& b_layout, T* d_full);
}  // namespace cpu

namespace cuda {
// dtype: f32, bf16 or f16; arithmetic in f32 registers.
void unary_forward(UnaryOp op, DType dtype, const void* x, void* y, int64_t n, cudaStream_t s);
void unary_backward(UnaryOp op, DType dtype, const void* x, const void* y, const void* dy, void* dx,
                    int64_t n, cudaStream_t s);
void affine(DType dtype, const void* x, void* y, int64_t n, double alpha, double beta,
            cudaStream_t s);
void pow_scalar(DType dtype, const void* x, void* y, int64_t n, double p, cudaStream_t s);
void pow_scalar_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t n, double p,
                         cudaStream_t s);
void binary_forward(BinaryOp op, DType dtype, const void* a, const Layout& a_layout, const void* b,
                    const Layout& b_layout, void* out, cudaStream_t s);
void binary_backward(BinaryOp op, int which, DType dtype, const void* dy, const void* a,
                     const Layout& a_layout, const void* b, const Layout& b_layout, void* d_full,
                     cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
