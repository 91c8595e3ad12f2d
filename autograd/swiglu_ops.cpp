// The swiglu node (autograd/swiglu_ops.h): checks shapes, runs kernels/swiglu.h on the inputs'
// device, and records one node whose backward is the hand-written backward kernel.
#include "autograd/swiglu_ops.h"

#include <algorithm>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "kernels/swiglu.h"

namespace ssmtrain {
namespace {

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }
[[maybe_unused]] const void* raw(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

}  // namespace

Tensor swiglu(const Tensor& gate_up_in) {
  const char* op = "swiglu";
  detail::check_dtype_float(op, gate_up_in);
  if (gate_up_in.dim() < 1 || gate_up_in.size(-1) % 2 != 0)
    detail::op_error(op, "gate_up (..., 2f) needs an even last dimension, got " + gate_up_in.str());
  const Tensor gate_up = gate_up_in.contiguous();
  const int64_t f = gate_up.size(-1) / 2;
  const int64_t rows = f > 0 ? gate_up.numel() / (2 * f) : 0;
  Shape out_shape = gate_up.shape();
  out_shape.back() = f;
  Tensor out = Tensor::empty(out_shape, gate_up.dtype(), gate_up.device());  // (..., f)
  if (gate_up.device().is_cpu()) {
    detail::cpu_float_dispatch(op, gate_up.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::swiglu_forward<T>(ptr<T>(gate_up), rows, f, mut<T>(out));
    });
  } else {
    SSM_CUDA_BRANCH(gate_up, kernels::cuda::swiglu_forward(gate_up.dtype(), gate_up.data(), rows, f, out.data(),
                                                           stream));
  }
  attach_backward(op, {gate_up_in}, {&out}, {gate_up}, [rows, f](const auto& g, const auto& s) {
    const Tensor& gu = s[0];
    const Tensor dout = g[0].contiguous();
    Tensor dgate_up = Tensor::empty(gu.shape(), gu.dtype(), gu.device());  // (..., 2f)
    if (gu.device().is_cpu()) {
      detail::cpu_float_dispatch("swiglu backward", gu.dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::cpu::swiglu_backward<T>(ptr<T>(gu), ptr<T>(dout), rows, f, mut<T>(dgate_up));
      });
    } else {
      SSM_CUDA_BRANCH(gu, kernels::cuda::swiglu_backward(gu.dtype(), gu.data(), dout.data(), rows, f,
                                                         dgate_up.data(), stream));
    }
    return std::vector<Tensor>{dgate_up};
  });
  return out;
}

}  // namespace ssmtrain
