// CPU reference of the fused cross-entropy (kernels/cross_entropy.h): per-row log-sum-exp,
// mean loss over the rows whose target is not ignore_index, and its gradient. Row losses
// are summed in row order in double.
#include "kernels/cross_entropy.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace ssmtrain::kernels::cpu {

namespace {

int64_t read_target(DType target_dtype, const void* targets, int64_t r) {
  return target_dtype == DType::i32 ? static_cast<const int32_t*>(targets)[r]
                                    : static_cast<const int64_t*>(targets)[r];
}

// Checks sizes and dtype; every target is ignore_index or in [0, vocab). Names the first bad row.
void check_targets(const char* op, DType target_dtype, const void* targets, int64_t n,
                   int64_t vocab, int64_t ignore_index) {
  if (n < 0 || vocab < 0)
    throw KernelError(std::string(op) + ": negative size (n " + std::to_string(n) + ", vocab " +
                      std::to_string(vocab) + ")");
  if (target_dtype != DType::i32 && target_dtype != DType::i64)
    throw KernelError(std::string(op) + ": targets must be i32 or i64, got " +
                      dtype_name(target_dtype));
  for (int64_t r = 0; r < n; ++r) {
    const int64_t target = read_target(target_dtype, targets, r);
    if (target == ignore_index) continue;
    if (target < 0 || target >= vocab)
      throw KernelError(std::string(op) + ": target " + std::to_string(target) + " at row " +
                        std::to_string(r) + " is outside [0, " + std::to_string(vocab) +
                        ") and is not ignore_index " + std::to_string(ignore_index));
  }
}

}  // namespace

// lse (n) = logsumexp of logits (n, vocab) per row; result = {mean loss, valid rows}.
template <typename T>
void cross_entropy_forward(const T* logits, DType target_dtype, const void* targets, int64_t n,
                           int64_t vocab, int64_t ignore_index, float* lse, T* result) {
  check_targets("cross_entropy_forward", target_dtype, targets, n, vocab, ignore_index);
  std::vector<double> row_loss(static_cast<size_t>(n), 0.0);  // 0 on ignored rows
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const T* row = logits + r * vocab;  // (vocab)
    double max = -std::numeric_limits<double>::infinity();
    for (int64_t v = 0; v < vocab; ++v) max = std::fmax(max, double(row[v]));
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - max);
    const double row_lse = max + std::log(sum);
    lse[r] = static_cast<float>(row_lse);
    const int64_t target = read_target(target_dtype, targets, r);
    if (target != ignore_index) row_loss[r] = row_lse - double(row[target]);
  }
  double total = 0;
  int64_t count = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (read_target(target_dtype, targets, r) == ignore_index) continue;
    total += row_loss[r];
    ++count;
  }
  result[0] = static_cast<T>(count > 0 ? total / double(count) : 0.0);
  result[1] = static_cast<T>(count);
}

// dlogits (n, vocab) = dloss / count * (softmax(logits) - onehot(target)); 0 on ignored rows.
template <typename T>
void cross_entropy_backward(const T* logits, DType target_dtype, const void* targets, int64_t n,
                            int64_t vocab, int64_t ignore_index, const float* lse, const T* dloss,
                            const T* result, T* dlogits) {
  check_targets("cross_entropy_backward", target_dtype, targets, n, vocab, ignore_index);
  const double count = double(result[1]);
  const double scale = count > 0 ? double(*dloss) / count : 0.0;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const T* row = logits + r * vocab;  // (vocab)
    T* grad = dlogits + r * vocab;
    const int64_t target = read_target(target_dtype, targets, r);
    if (target == ignore_index || count <= 0) {
      for (int64_t v = 0; v < vocab; ++v) grad[v] = T(0);
      continue;
    }
    // lse arrives rounded to f32: use it as a safe shift and renormalise in double, so the
    // gradient (p - 1 at the target especially) does not inherit that rounding.
    const double shift = lse[r];
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - shift);
    for (int64_t v = 0; v < vocab; ++v) {
      const double p = std::exp(double(row[v]) - shift) / sum;
      grad[v] = static_cast<T>(scale * (p - (v == target ? 1.0 : 0.0)));
    }
  }
}

#define SSM_INSTANTIATE(T)                                                                    \
  template void cross_entropy_forward<T>(const T*, DType, const void*, int64_t, int64_t,     \
                                         int64_t, float*, T*);                               \
  template void cross_entropy_backward<T>(const T*, DType, const void*, int64_t, int64_t,    \
                                          int64_t, const float*, const T*, const T*, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
