// CPU reference of the multi-tensor AdamW step and gradient-norm helpers (kernels/adamw.h):
// arithmetic in double, tensors in list order; threads split the elements of each tensor.
#include "kernels/adamw.h"

#include <cmath>
#include <string>

namespace ssmtrain::kernels::cpu {

namespace {

void check_count(const char* op, int64_t count, const int64_t* numels) {
  if (count < 0) throw KernelError(std::string(op) + ": negative tensor count " + std::to_string(count));
  for (int64_t i = 0; numels && i < count; ++i)
    if (numels[i] < 0)
      throw KernelError(std::string(op) + ": tensor " + std::to_string(i) + " has negative size " +
                        std::to_string(numels[i]));
}

}  // namespace

template <typename T>
void adamw_step(const AdamWTensor<T, T>* tensors, int64_t count, const AdamWStep& step) {
  check_count("adamw_step", count, nullptr);
  const double b1 = step.beta1, b2 = step.beta2;
  for (int64_t t = 0; t < count; ++t) {
    const AdamWTensor<T, T>& a = tensors[t];
    if (a.numel < 0)
      throw KernelError("adamw_step: tensor " + std::to_string(t) + " has negative size " + std::to_string(a.numel));
    const double decay = a.weight_decay ? step.weight_decay : 0.0;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < a.numel; ++i) {
      const double g = double(a.grad[i]) * step.grad_scale;
      const double m = b1 * double(a.exp_avg[i]) + (1.0 - b1) * g;
      const double v = b2 * double(a.exp_avg_sq[i]) + (1.0 - b2) * g * g;
      a.exp_avg[i] = static_cast<T>(m);
      a.exp_avg_sq[i] = static_cast<T>(v);
      const double p = a.param[i];
      const double update = (m / step.bias_correction1) / (std::sqrt(v / step.bias_correction2) + step.eps);
      a.param[i] = static_cast<T>(p - step.lr * (update + decay * p));
    }
  }
}

template <typename T>
double sum_squares(const T* const* tensors, const int64_t* numels, int64_t count) {
  check_count("sum_squares", count, numels);
  double total = 0;
  for (int64_t t = 0; t < count; ++t)
    for (int64_t i = 0; i < numels[t]; ++i) total += double(tensors[t][i]) * double(tensors[t][i]);
  return total;
}

template <typename T>
void scale(T* const* tensors, const int64_t* numels, int64_t count, double scale) {
  check_count("scale", count, numels);
  for (int64_t t = 0; t < count; ++t) {
    T* x = tensors[t];
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < numels[t]; ++i) x[i] = static_cast<T>(double(x[i]) * scale);
  }
}

#define SSM_INSTANTIATE(T)                                                              \
  template void adamw_step<T>(const AdamWTensor<T, T>*, int64_t, const AdamWStep&);    \
  template double sum_squares<T>(const T* const*, const int64_t*, int64_t);            \
  template void scale<T>(T* const*, const int64_t*, int64_t, double);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
