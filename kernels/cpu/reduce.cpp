// CPU reference of the reductions (kernels/reduce.h). Every sum runs serially in a fixed
// order inside one output element, accumulated in double; threads split outputs only, so
// the result does not depend on the thread count.
#include "kernels/reduce.h"

#include <cmath>
#include <limits>
#include <string>

namespace ssmtrain::kernels::cpu {

namespace {

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw KernelError(std::string(op) + ": " + what);
}

void check_dims(const char* op, int64_t outer, int64_t n, int64_t inner) {
  if (outer < 0 || n < 0 || inner < 0)
    fail(op, "negative size in (outer, n, inner) = (" + std::to_string(outer) + ", " +
                 std::to_string(n) + ", " + std::to_string(inner) + ")");
}

}  // namespace

// y (outer, inner) = scale * sum_j x (outer, j, inner)
template <typename T>
void sum_dim(const T* x, int64_t outer, int64_t n, int64_t inner, T* y, double scale) {
  check_dims("sum_dim", outer, n, inner);
#pragma omp parallel for schedule(static)
  for (int64_t out = 0; out < outer * inner; ++out) {
    const int64_t o = out / inner, i = out % inner;
    const T* column = x + o * n * inner + i;
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += double(column[j * inner]);
    y[out] = static_cast<T>(scale * sum);
  }
}

// dx (outer, n, inner) = scale * dy (outer, inner)
template <typename T>
void sum_dim_backward(const T* dy, int64_t outer, int64_t n, int64_t inner, T* dx, double scale) {
  check_dims("sum_dim_backward", outer, n, inner);
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < inner; ++i)
        dx[(o * n + j) * inner + i] = static_cast<T>(scale * double(dy[o * inner + i]));
}

// dst = src (full.shape, contiguous) summed over every dimension where dst_layout's stride
// is 0. Dimensions split into kept ones (enumerated across threads, one dst element each)
// and reduced ones (walked in row-major order inside one dst element).
template <typename T>
void sum_to(const T* src, const Layout& full, T* dst, const Layout& dst_layout) {
  const char* op = "sum_to";
  if (full.ndim < 0 || full.ndim > kMaxDims)
    fail(op, "ndim " + std::to_string(full.ndim) + " outside [0, " + std::to_string(kMaxDims) + "]");
  if (dst_layout.ndim != full.ndim)
    fail(op, "dst_layout has ndim " + std::to_string(dst_layout.ndim) + ", full shape " +
                 std::to_string(full.ndim));
  for (int d = 0; d < full.ndim; ++d)
    if (full.shape[d] < 0)
      fail(op, "negative size " + std::to_string(full.shape[d]) + " at dim " + std::to_string(d));

  // Contiguous strides of src over the full shape.
  int64_t src_strides[kMaxDims] = {};
  int64_t step = 1;
  for (int d = full.ndim - 1; d >= 0; --d) {
    src_strides[d] = step;
    step *= full.shape[d];
  }
  int kept[kMaxDims], reduced[kMaxDims];
  int n_kept = 0, n_reduced = 0;
  int64_t kept_count = 1, reduced_count = 1;
  for (int d = 0; d < full.ndim; ++d) {
    if (dst_layout.strides[d] == 0 && full.shape[d] != 1) {
      reduced[n_reduced++] = d;
      reduced_count *= full.shape[d];
    } else {
      kept[n_kept++] = d;
      kept_count *= full.shape[d];
    }
  }

#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < kept_count; ++q) {
    // Position of this dst element along the kept dims.
    int64_t src_base = 0, dst_offset = 0, rest = q;
    for (int k = n_kept - 1; k >= 0; --k) {
      const int d = kept[k];
      const int64_t idx = rest % full.shape[d];
      rest /= full.shape[d];
      src_base += idx * src_strides[d];
      dst_offset += idx * dst_layout.strides[d];
    }
    // Walk the reduced dims with an odometer, last dim fastest.
    int64_t counter[kMaxDims] = {};
    int64_t src_offset = src_base;
    double sum = 0;
    for (int64_t r = 0; r < reduced_count; ++r) {
      sum += double(src[src_offset]);
      for (int k = n_reduced - 1; k >= 0; --k) {
        const int d = reduced[k];
        src_offset += src_strides[d];
        if (++counter[k] < full.shape[d]) break;
        src_offset -= counter[k] * src_strides[d];
        counter[k] = 0;
      }
    }
    dst[dst_offset] = static_cast<T>(sum);
  }
}

// y (outer, n, inner) = (log_)softmax over n of x (outer, n, inner), max subtracted first.
template <typename T>
void softmax_forward(const T* x, int64_t outer, int64_t n, int64_t inner, T* y, bool log) {
  check_dims("softmax_forward", outer, n, inner);
  if (n == 0) return;
#pragma omp parallel for schedule(static)
  for (int64_t out = 0; out < outer * inner; ++out) {
    const int64_t o = out / inner, i = out % inner;
    const T* xc = x + o * n * inner + i;  // column (n) with stride inner
    T* yc = y + o * n * inner + i;
    double max = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < n; ++j) max = std::fmax(max, double(xc[j * inner]));
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) sum += std::exp(double(xc[j * inner]) - max);
    if (log) {
      const double log_sum = std::log(sum);
      for (int64_t j = 0; j < n; ++j) yc[j * inner] = static_cast<T>(double(xc[j * inner]) - max - log_sum);
    } else {
      for (int64_t j = 0; j < n; ++j) yc[j * inner] = static_cast<T>(std::exp(double(xc[j * inner]) - max) / sum);
    }
  }
}

// softmax: dx = y * (dy - sum(dy * y)); log_softmax: dx = dy - exp(y) * sum(dy); over n.
template <typename T>
void softmax_backward(const T* y, const T* dy, int64_t outer, int64_t n, int64_t inner, T* dx,
                      bool log) {
  check_dims("softmax_backward", outer, n, inner);
#pragma omp parallel for schedule(static)
  for (int64_t out = 0; out < outer * inner; ++out) {
    const int64_t o = out / inner, i = out % inner;
    const int64_t base = o * n * inner + i;  // column (n) with stride inner
    double dot = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = base + j * inner;
      dot += log ? double(dy[at]) : double(dy[at]) * double(y[at]);
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = base + j * inner;
      dx[at] = log ? static_cast<T>(double(dy[at]) - std::exp(double(y[at])) * dot)
                   : static_cast<T>(double(y[at]) * (double(dy[at]) - dot));
    }
  }
}

// *out = sum of x (n), serial and in index order.
template <typename T> void sum_all(const T* x, int64_t n, T* out) {
  if (n < 0) fail("sum_all", "negative element count " + std::to_string(n));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += double(x[i]);
  *out = static_cast<T>(sum);
}

#define SSM_INSTANTIATE(T)                                                                  \
  template void sum_dim<T>(const T*, int64_t, int64_t, int64_t, T*, double);                \
  template void sum_dim_backward<T>(const T*, int64_t, int64_t, int64_t, T*, double);       \
  template void sum_to<T>(const T*, const Layout&, T*, const Layout&);                      \
  template void softmax_forward<T>(const T*, int64_t, int64_t, int64_t, T*, bool);          \
  template void softmax_backward<T>(const T*, const T*, int64_t, int64_t, int64_t, T*, bool); \
  template void sum_all<T>(const T*, int64_t, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
