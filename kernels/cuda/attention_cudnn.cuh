// cuDNN's fused scaled-dot-product attention (kernels/cuda/attention_cudnn.cu) as seen by the
// dispatcher in kernels/cuda/attention.cu: causal, GQA, bf16, head dims 64 and 128, no documents.
// Included only from .cu files.
#pragma once

#include "kernels/attention.h"

namespace ssmtrain::kernels::cuda_detail {

// Builds (once per shape and device) the forward and backward plans; false where cuDNN
// rejects either graph, so the caller falls back. Never throws for an unsupported case.
bool cudnn_attention_supported(const AttentionShape& s, DType dtype);
// Same contracts as cuda::attention_forward / attention_backward; throw KernelError when the
// case is unsupported or execution fails.
void cudnn_attention_forward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                             void* out, float* lse, cudaStream_t stream);
void cudnn_attention_backward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                              const void* out, const float* lse, const void* dout, void* dq, void* dk, void* dv,
                              cudaStream_t stream);

}  // namespace ssmtrain::kernels::cuda_detail
