// cuDNN's fused scaled-dot-product attention (kernels/cuda/attention_cudnn.cu) as seen by the
// dispatcher in kernels/cuda/attention.cu: causal, GQA, bf16, head dims 64 and 128, no documents.
// Included only from .cu files.
#pragma once

#include <string>

#include "kernels/attention.h"

namespace ssmtrain::kernels::cuda_detail {

// Builds (once per shape and device) the candidate plans of the forward graph and of the backward
// graph that s.deterministic selects; false where cuDNN rejects either, so the caller falls back.
// Never throws for an unsupported case.
bool cudnn_attention_supported(const AttentionShape& s, DType dtype);
// The engines chosen (or the candidates, before the first run) for the forward and backward graphs
// of this case, as text: engine index, knobs, the graph form, the tuned time and how it was chosen.
std::string cudnn_attention_engines(const AttentionShape& s, DType dtype);
// Same contracts as cuda::attention_forward / attention_backward; throw KernelError when the
// case is unsupported or execution fails. The first call of a shape times the candidate plans
// (on `stream`, overwriting the outputs) before running the fastest.
void cudnn_attention_forward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                             void* out, float* lse, cudaStream_t stream);
void cudnn_attention_backward(const AttentionShape& s, DType dtype, const void* q, const void* k, const void* v,
                              const void* out, const float* lse, const void* dout, void* dq, void* dk, void* dv,
                              cudaStream_t stream);

}  // namespace ssmtrain::kernels::cuda_detail
