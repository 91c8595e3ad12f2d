// CPU reference of RMSNorm over the last dimension (kernels/norm.h). Row sums and the
// dweight column sums run in a fixed order in double; threads split rows or columns.
#include "kernels/norm.h"

#include <cmath>
#include <string>

namespace ssmtrain::kernels::cpu {

namespace {

void check_sizes(const char* op, int64_t rows, int64_t d) {
  if (rows < 0 || d < 0)
    throw KernelError(std::string(op) + ": negative size (rows " + std::to_string(rows) + ", d " +
                      std::to_string(d) + ")");
}

}  // namespace

// y (rows, d) = x * rstd * weight (d); rstd (rows) = 1 / sqrt(mean(x^2) + eps)
template <typename T>
void rmsnorm_forward(const T* x, const T* weight, int64_t rows, int64_t d, double eps, T* y,
                     float* rstd) {
  check_sizes("rmsnorm_forward", rows, d);
  if (d == 0) {
    for (int64_t r = 0; r < rows; ++r) rstd[r] = static_cast<float>(1.0 / std::sqrt(eps));
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * d;  // (d)
    T* yr = y + r * d;
    double sum_sq = 0;
    for (int64_t j = 0; j < d; ++j) sum_sq += double(xr[j]) * double(xr[j]);
    const double row_rstd = 1.0 / std::sqrt(sum_sq / double(d) + eps);
    rstd[r] = static_cast<float>(row_rstd);
    for (int64_t j = 0; j < d; ++j) yr[j] = static_cast<T>(double(xr[j]) * row_rstd * double(weight[j]));
  }
}

// dx (rows, d) = rstd * (w*dy - x * rstd^2 * mean(w*dy*x)); dweight (d) = sum_rows dy*x*rstd.
template <typename T>
void rmsnorm_backward(const T* x, const T* weight, const float* rstd, const T* dy, int64_t rows,
                      int64_t d, T* dx, T* dweight) {
  check_sizes("rmsnorm_backward", rows, d);
  if (d == 0) return;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * d;  // (d)
    const T* dyr = dy + r * d;
    T* dxr = dx + r * d;
    const double s = rstd[r];
    double dot = 0;  // sum_j w*dy*x
    for (int64_t j = 0; j < d; ++j) dot += double(weight[j]) * double(dyr[j]) * double(xr[j]);
    const double mean_dot = dot / double(d);
    for (int64_t j = 0; j < d; ++j)
      dxr[j] = static_cast<T>(s * (double(weight[j]) * double(dyr[j]) - double(xr[j]) * s * s * mean_dot));
  }
  // dweight (d): one column per iteration, rows summed in order.
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < d; ++j) {
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum += double(dy[r * d + j]) * double(x[r * d + j]) * double(rstd[r]);
    dweight[j] = static_cast<T>(sum);
  }
}

// sum = x + residual, then the plain forward on sum (what is stored is what the norm reads).
template <typename T>
void add_rmsnorm_forward(const T* x, const T* residual, const T* weight, int64_t rows, int64_t d,
                         double eps, T* sum, T* y, float* rstd) {
  check_sizes("add_rmsnorm_forward", rows, d);
  const int64_t n = rows * d;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) sum[i] = residual ? static_cast<T>(x[i] + residual[i]) : x[i];
  rmsnorm_forward<T>(sum, weight, rows, d, eps, y, rstd);
}

// dx = rmsnorm's dx at sum, plus dsum (the gradient that reaches the sum output directly).
template <typename T>
void add_rmsnorm_backward(const T* sum, const T* weight, const float* rstd, const T* dy,
                          const T* dsum, int64_t rows, int64_t d, T* dx, T* dweight) {
  check_sizes("add_rmsnorm_backward", rows, d);
  rmsnorm_backward<T>(sum, weight, rstd, dy, rows, d, dx, dweight);
  if (!dsum) return;
  const int64_t n = rows * d;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<T>(dx[i] + dsum[i]);
}

#define SSM_INSTANTIATE(T)                                                                     \
  template void rmsnorm_forward<T>(const T*, const T*, int64_t, int64_t, double, T*, float*); \
  template void rmsnorm_backward<T>(const T*, const T*, const float*, const T*, int64_t,      \
                                    int64_t, T*, T*);                                          \
  template void add_rmsnorm_forward<T>(const T*, const T*, const T*, int64_t, int64_t, double, \
                                       T*, T*, float*);                                        \
  template void add_rmsnorm_backward<T>(const T*, const T*, const float*, const T*, const T*,  \
                                        int64_t, int64_t, T*, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
