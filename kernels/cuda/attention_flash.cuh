// Tensor-core flash attention (kernels/cuda/attention_flash.cu) as seen by the dispatcher in
// kernels/cuda/attention.cu: the fallback's fast path for bf16 with head dims 64 and 128 (causal,
// GQA, document masking, deterministic backward). Included only from .cu files.
#pragma once

#include <cuda_runtime.h>

#include <initializer_list>

#include "kernels/attention.h"

namespace ssmtrain::kernels::cuda_detail {

// True when the flash kernels take this case: bf16, head dim 64 or 128, l, h and b within the
// grid limits, every tensor pointer 16-byte aligned (the kernels copy 16-byte chunks), and the
// current GPU offering the kernels' shared memory per block (up to 137.5 KiB).
bool flash_attention_applies(const AttentionShape& s, DType dtype, std::initializer_list<const void*> tensors);

// Same contract as cuda::attention_forward for a case flash_attention_applies to: q (b, l, h, dh),
// k, v (b, l, h_kv, dh), doc (b, l) or null, out (b, l, h, dh) bf16; lse (b, h, l) f32.
void flash_attention_forward(const AttentionShape& s, const void* q, const void* k, const void* v,
                             const int32_t* doc, void* out, float* lse, cudaStream_t stream);
// The backward after the caller has computed delta (b, h, l) = rowsum(dout * out) in f32:
// writes dq (b, l, h, dh), dk, dv (b, l, h_kv, dh), bf16, each element by one thread in a
// fixed order (no atomics).
void flash_attention_backward(const AttentionShape& s, const void* q, const void* k, const void* v,
                              const int32_t* doc, const float* lse, const float* delta, const void* dout, void* dq,
                              void* dk, void* dv, cudaStream_t stream);

}  // namespace ssmtrain::kernels::cuda_detail
