// CPU reference of SwiGLU over a packed gate/up projection (kernels/swiglu.h), in double per
// element; threads split rows.
#include "kernels/swiglu.h"

#include <cmath>
#include <string>

#include "kernels/cpu/activations.h"

namespace ssmtrain::kernels::cpu {

namespace {

void check_sizes(const char* op, int64_t rows, int64_t f) {
  if (rows < 0 || f < 0)
    throw KernelError(std::string(op) + ": negative size (rows " + std::to_string(rows) + ", f " +
                      std::to_string(f) + ")");
}

}  // namespace

// out (rows, f) = silu(gate) * up; gate = gate_up[:, :f], up = gate_up[:, f:]
template <typename T>
void swiglu_forward(const T* gate_up, int64_t rows, int64_t f, T* out) {
  check_sizes("swiglu_forward", rows, f);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* gate = gate_up + r * 2 * f;  // (f)
    const T* up = gate + f;               // (f)
    T* out_row = out + r * f;
    for (int64_t j = 0; j < f; ++j) {
      const double g = gate[j];
      out_row[j] = static_cast<T>(g * sigmoid(g) * double(up[j]));
    }
  }
}

// d gate = dout * up * sig * (1 + g (1 - sig)); d up = dout * g * sig
template <typename T>
void swiglu_backward(const T* gate_up, const T* dout, int64_t rows, int64_t f, T* dgate_up) {
  check_sizes("swiglu_backward", rows, f);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* gate = gate_up + r * 2 * f;  // (f)
    const T* up = gate + f;               // (f)
    const T* dout_row = dout + r * f;     // (f)
    T* dgate = dgate_up + r * 2 * f;      // (f)
    T* dup = dgate + f;                   // (f)
    for (int64_t j = 0; j < f; ++j) {
      const double g = gate[j], u = up[j], dy = dout_row[j];
      const double sig = sigmoid(g);
      dgate[j] = static_cast<T>(dy * u * sig * (1.0 + g * (1.0 - sig)));
      dup[j] = static_cast<T>(dy * g * sig);
    }
  }
}

#define SSM_INSTANTIATE(T)                                                     \
  template void swiglu_forward<T>(const T*, int64_t, int64_t, T*);            \
  template void swiglu_backward<T>(const T*, const T*, int64_t, int64_t, T*);
SSM_INSTANTIATE(float)
SSM_INSTANTIATE(double)
#undef SSM_INSTANTIATE

}  // namespace ssmtrain::kernels::cpu
