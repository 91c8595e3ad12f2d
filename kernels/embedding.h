// Embedding lookup and its backward (rows of the table that several tokens share are summed
// in token order, so the gradient is deterministic).
#pragma once

#include "kernels/common.h"

namespace ssmtrain::kernels {

namespace cpu {
// out (n, d) = table[ids] with ids i32 or i64 (index_dtype); an id outside [0, vocab) throws.
template <typename T>
void embedding_forward(DType index_dtype, const void* ids, int64_t n, const T* table, int64_t vocab,
                       int64_t d, T* out);
// dtable (vocab, d) += scatter of dy (n, d) by ids.
template <typename T>
void embedding_backward(DType index_dtype, const void* ids, int64_t n, const T* dy, int64_t vocab,
                        int64_t d, T* dtable);
}  // namespace cpu

namespace cuda {
// An id outside [0, vocab) reads / writes nothing and produces zeros (checked on the host by
// the caller when it matters). Backward: stable sort of ids, then one ordered sum per row.
void embedding_forward(DType dtype, DType index_dtype, const void* ids, int64_t n,
                       const void* table, int64_t vocab, int64_t d, void* out, cudaStream_t s);
void embedding_backward(DType dtype, DType index_dtype, const void* ids, int64_t n, const void* dy,
                        int64_t vocab, int64_t d, void* dtable, cudaStream_t s);
}  // namespace cuda

}  // namespace ssmtrain::kernels
