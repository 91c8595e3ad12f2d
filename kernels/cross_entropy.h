// Cross-entropy of logits (n, vocab) against integer targets (n), mean over the targets that
// are not ignore_index. The forward keeps the log-sum-exp per row for the backward.
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

namespace cpu {
// result[0] = mean loss over valid rows (0 when none), result[1] = number of valid rows;
// lse (n) = logsumexp of each row. targets are i32 or i64.
template <typename T>
void cross_entropy_forward(const T* logits, DType target_dtype, const void* targets, int64_t n,
                           int64_t vocab, int64_t ignore_index, float* lse, T* result);
// dlogits (n, vocab) = dloss / count * (softmax(logits) - onehot(target)), 0 on ignored rows.
// dloss and count are the scalars *dloss and result[1].
template <typename T>
void cross_entropy_backward(const T* logits, DType target_dtype, const void* targets, int64_t n,
                            int64_t vocab, int64_t ignore_index, const float* lse, const T* dloss,
                            const T* result, T* dlogits);
}  // namespace cpu

namespace cuda {
// logits f32 or bf16; lse f32; result is 2 floats in f32 (loss, count) whatever the logits'
// dtype; dloss is one f32 on the device; dlogits has the logits' dtype. Deterministic.
void cross_entropy_forward(DType dtype, const void* logits, DType target_dtype, const void* targets,
                           int64_t n, int64_t vocab, int64_t ignore_index, float* lse,
                           float* result, cudaStream_t s);
void cross_entropy_backward(DType dtype, const void* logits, DType target_dtype,
                            const void* targets, int64_t n, int64_t vocab, int64_t ignore_index,
                            const float* lse, const float* dloss, const float* result,
                            void* dlogits, cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
