// CPU reference of the gated RMSNorm (kernels/gated_rmsnorm.h). Group sums and the dweight
// column sums run in a fixed order in double; threads split rows or columns.
#include "kernels/gated_rmsnorm.h"

#include <cmath>
#include <string>

#include "kernels/cpu/activations.h"

namespace ssmtrain::kernels::cpu {

namespace {

void check_sizes(const char* op, int64_t rows, int64_t d, int64_t group_size) {
  if (rows < 0 || d < 1 || group_size < 1 || d % group_size != 0)
    throw KernelError(std::string(op) + ": bad sizes (rows " + std::to_string(rows) + ", d " + std::to_string(d) +
                      ", group_size " + std::to_string(group_size) + "); group_size must divide d");
}

// The gated input u = y * silu(z) (y when z is null), in double.
template <typename T>
double gated(const T* y, const T* z, int64_t i) {
  return z ? double(y[i]) * double(z[i]) * sigmoid(double(z[i])) : double(y[i]);
}

}  // namespace

// out (rows, d) = u * rstd * weight (d); rstd (rows, d / group_size) = 1 / sqrt(mean(u^2) + eps)
template <typename T>
void gated_rmsnorm_forward(const T* y, const T* z, const T* weight, int64_t rows, int64_t d,
                           int64_t group_size, double eps, T* out, float* rstd) {
  check_sizes("gated_rmsnorm_forward", rows, d, group_size);
  const int64_t ngroups = d / group_size;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t gi = 0; gi < ngroups; ++gi) {
      const int64_t begin = r * d + gi * group_size;  // first element of the group
      double sum_sq = 0;
      for (int64_t j = 0; j < group_size; ++j) {
        const double u = gated(y, z, begin + j);
        sum_sq += u * u;
      }
      const double group_rstd = 1.0 / std::sqrt(sum_sq / double(group_size) + eps);
      rstd[r * ngroups + gi] = static_cast<float>(group_rstd);
      for (int64_t j = 0; j < group_size; ++j)
        out[begin + j] = static_cast<T>(gated(y, z, begin + j) * group_rstd * double(weight[gi * group_size + j]));
    }
  }
}

template <typename T>
void gated_rmsnorm_backward(const T* y, const T* z, const T* weight, const float* rstd,
                            const T* dout, int64_t rows, int64_t d, int64_t group_size, T* dy,
                            T* dz, T* dweight) {
  check_sizes("gated_rmsnorm_backward", rows, d, group_size);
  const int64_t ngroups = d / group_size;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t gi = 0; gi < ngroups; ++gi) {
      const int64_t begin = r * d + gi * group_size;
      const double s = rstd[r * ngroups + gi];
      double dot = 0;  // sum_j w * dout * u over the group
      for (int64_t j = 0; j < group_size; ++j)
        dot += double(weight[gi * group_size + j]) * double(dout[begin + j]) * gated(y, z, begin + j);
      const double mean_dot = dot / double(group_size);
      for (int64_t j = 0; j < group_size; ++j) {
        const int64_t i = begin + j;
        const double u = gated(y, z, i);
        const double du = s * (double(weight[gi * group_size + j]) * double(dout[i]) - u * s * s * mean_dot);
        if (z) {
          const double zv = double(z[i]), sg = sigmoid(zv);
          dy[i] = static_cast<T>(du * zv * sg);
          dz[i] = static_cast<T>(du * double(y[i]) * sg * (1.0 + zv * (1.0 - sg)));
        } else {
          dy[i] = static_cast<T>(du);
        }
      }
    }
  }
  // dweight (d): one column per iteration, rows summed in order.
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < d; ++j) {
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r)
      sum += double(dout[r * d + j]) * gated(y, z, r * d + j) * double(rstd[r * ngroups + j / group_size]);
    dweight[j] = static_cast<T>(sum);
  }
}

#define SSM_INSTANTIATE(T)                                                                         \
  template void gated_rmsnorm_forward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                         double, T*, float*);                                      \
  template void gated_rmsnorm_backward<T>(const T*, const T*, const T*, const float*, const T*,    \
                                          int64_t, int64_t, int64_t, T*, T*, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
