// Differentiable causal attention (one fused node: cuDNN / flash-style kernels on the GPU,
// the reference kernels on the CPU), kernels/attention.h underneath.
#pragma once

#include "autograd/tensor.h"

namespace ssmtrain {

// q (b, l, h, dh), k and v (b, l, h_kv, dh): causal attention, h_kv divides h; doc_index
// (b, l) i32 optional; scale 0 means 1/sqrt(dh). Returns (b, l, h, dh) in q's dtype.
// q, k and v must be contiguous (make views contiguous first) and share a dtype and device;
// query head hh reads kv head hh / (h / h_kv). With doc_index a query attends only to keys at
// or before it whose doc_index equals its own. deterministic = false lets the GPU backward
// accumulate dq with float atomics where that is faster (cuDNN's atomic-dQ form): the
// gradients then vary in their last bits from run to run.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor& doc_index = Tensor(), double scale = 0.0, bool deterministic = true);

}  // namespace ssmtrain
