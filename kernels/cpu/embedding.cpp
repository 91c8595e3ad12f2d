// CPU reference of the embedding lookup and its backward (kernels/embedding.h). The backward
// groups tokens by id (stable, so in token order) and sums each row's tokens in double.
#include "kernels/embedding.h"

#include <string>
#include <vector>

namespace ssmtrain::kernels::cpu {

namespace {

int64_t read_id(DType index_dtype, const void* ids, int64_t t) {
  return index_dtype == DType::i32 ? static_cast<const int32_t*>(ids)[t]
                                   : static_cast<const int64_t*>(ids)[t];
}

// Checks sizes and dtype, and that every id lies in [0, vocab); names the first bad one.
void check_ids(const char* op, DType index_dtype, const void* ids, int64_t n, int64_t vocab,
               int64_t d) {
  if (n < 0 || vocab < 0 || d < 0)
    throw KernelError(std::string(op) + ": negative size (n " + std::to_string(n) + ", vocab " +
                      std::to_string(vocab) + ", d " + std::to_string(d) + ")");
  if (index_dtype != DType::i32 && index_dtype != DType::i64)
    throw KernelError(std::string(op) + ": ids must be i32 or i64, got " + dtype_name(index_dtype));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = read_id(index_dtype, ids, t);
    if (id < 0 || id >= vocab)
      throw KernelError(std::string(op) + ": id " + std::to_string(id) + " at position " +
                        std::to_string(t) + " is outside [0, " + std::to_string(vocab) + ")");
  }
}

}  // namespace

// out (n, d) = table (vocab, d) [ids (n)]
template <typename T>
void embedding_forward(DType index_dtype, const void* ids, int64_t n, const T* table, int64_t vocab,
                       int64_t d, T* out) {
  check_ids("embedding_forward", index_dtype, ids, n, vocab, d);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* row = table + read_id(index_dtype, ids, t) * d;
    for (int64_t j = 0; j < d; ++j) out[t * d + j] = row[j];
  }
}

// dtable (vocab, d) += sum over tokens t with ids[t] == v of dy (n, d) [t], in token order.
template <typename T>
void embedding_backward(DType index_dtype, const void* ids, int64_t n, const T* dy, int64_t vocab,
                        int64_t d, T* dtable) {
  check_ids("embedding_backward", index_dtype, ids, n, vocab, d);
  // Counting sort of token positions by id: tokens_of[first[v] .. first[v+1]) are the
  // positions holding id v, ascending.
  std::vector<int64_t> first(static_cast<size_t>(vocab) + 1, 0);
  for (int64_t t = 0; t < n; ++t) ++first[static_cast<size_t>(read_id(index_dtype, ids, t)) + 1];
  for (int64_t v = 0; v < vocab; ++v) first[v + 1] += first[v];
  std::vector<int64_t> tokens_of(static_cast<size_t>(n));
  std::vector<int64_t> fill_at(first.begin(), first.end() - 1);
  for (int64_t t = 0; t < n; ++t) tokens_of[fill_at[read_id(index_dtype, ids, t)]++] = t;

#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t v = 0; v < vocab; ++v) {
    if (first[v] == first[v + 1]) continue;  // id not used
    T* row = dtable + v * d;
    for (int64_t j = 0; j < d; ++j) {
      double sum = 0;
      for (int64_t k = first[v]; k < first[v + 1]; ++k) sum += double(dy[tokens_of[k] * d + j]);
      row[j] = static_cast<T>(double(row[j]) + sum);
    }
  }
}

#define SSM_INSTANTIATE(T)                                                                   \
  template void embedding_forward<T>(DType, const void*, int64_t, const T*, int64_t, int64_t, \
                                     T*);                                                    \
  template void embedding_backward<T>(DType, const void*, int64_t, const T*, int64_t,         \
                                      int64_t, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
