// SwiGLU over a packed gate/up projection: gate_up (rows, 2f) holds gate in its first f
// columns and up in its last f; out (rows, f) = silu(gate) * up, silu(g) = g * sigmoid(g).
// The backward writes d gate_up in the same packed layout.
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

namespace cpu {
// gate_up (rows, 2f) -> out (rows, f).
template <typename T>
void swiglu_forward(const T* gate_up, int64_t rows, int64_t f, T* out);
// dgate_up (rows, 2f): [dout * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))), dout * silu(g)].
template <typename T>
void swiglu_backward(const T* gate_up, const T* dout, int64_t rows, int64_t f, T* dgate_up);
}  // namespace cpu

namespace cuda {
// gate_up, out, dout, dgate_up share dtype (f32 or bf16); arithmetic in f32. Elementwise, so
// every run gives the same bits.
void swiglu_forward(DType dtype, const void* gate_up, int64_t rows, int64_t f, void* out,
                    cudaStream_t s);
void swiglu_backward(DType dtype, const void* gate_up, const void* dout, int64_t rows, int64_t f,
                     void* dgate_up, cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
