// The causal conv1d node: checks shapes, runs kernels/causal_conv1d.h on the inputs' device,
// and records one node whose backward is the hand-written backward kernel (dx, dweight,
// dbias and d initial state in one pass).
#include "autograd/causal_conv1d_ops.h"

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "kernels/causal_conv1d.h"

namespace ssmtrain {
namespace {

const char* kOp = "causal_conv1d";

void expect_shape(const Tensor& t, const Shape& shape, const char* name) {
  if (t.defined() && t.shape() != shape)
    detail::op_error(kOp, std::string(name) + " must be " + shape_str(shape) + ", got " + t.str());
}

kernels::Conv1dShape conv_shape(const CausalConv1dInputs& in) {
  if (!in.x.defined() || !in.weight.defined()) detail::op_error(kOp, "x and weight are required");
  if (in.x.dim() != 3 || in.weight.dim() != 2)
    detail::op_error(kOp, std::string("expects x ") + (in.channel_last ? "(b, l, d)" : "(b, d, l)") +
                              " and weight (d, w); got " + in.x.str() + ", " + in.weight.str());
  kernels::Conv1dShape s;
  s.batch = in.x.size(0);
  s.dim = in.x.size(in.channel_last ? 2 : 1);
  s.seq_len = in.x.size(in.channel_last ? 1 : 2);
  s.width = in.weight.size(1);
  s.silu = in.silu;
  s.channel_last = in.channel_last;
  if (s.width < 2 || s.width > 4)
    detail::op_error(kOp, "the width must be 2, 3 or 4; weight is " + in.weight.str());
  expect_shape(in.weight, {s.dim, s.width}, "weight");
  expect_shape(in.bias, {s.dim}, "bias");
  expect_shape(in.initial_state, {s.batch, s.dim, s.width - 1}, "initial_state");
  expect_shape(in.doc_index, {s.batch, s.seq_len}, "doc_index");
  if (in.doc_index.defined() && in.doc_index.dtype() != DType::i32)
    detail::op_error(kOp, "doc_index must be i32, got " + in.doc_index.str());
  for (const Tensor* t : {&in.bias, &in.initial_state, &in.doc_index})
    if (t->defined() && t->device() != in.x.device())
      detail::op_error(kOp, "every input must be on " + in.x.device().str() + ", got " + t->str());
  return s;
}

// A channel-last x the kernels read in place: unit channel stride, token stride >= d, batch
// stride l times the token stride (a column slice of a contiguous (b, l, .) tensor).
bool readable_in_place(const Tensor& x) {
  const Shape& st = x.strides();
  return st[2] == 1 && st[1] >= x.size(2) && st[0] == x.size(1) * st[1];
}

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }

// Saved tensors, in this order.
enum Saved { kX, kWeight, kBias, kInit, kDoc };

// The GPU kernels' view: x and the states of x's dtype, f32 weight and bias.
[[maybe_unused]] kernels::Conv1dArgs<void, float> void_args(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                                            const Tensor& init, const Tensor& doc) {
  return {x.data(), ptr<float>(weight), ptr<float>(bias), init.defined() ? init.data() : nullptr,
          ptr<int32_t>(doc)};
}

template <typename T>
kernels::Conv1dArgs<T, T> cpu_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& init,
                                   const Tensor& doc) {
  return {ptr<T>(x), ptr<T>(weight), ptr<T>(bias), ptr<T>(init), ptr<int32_t>(doc)};
}

}  // namespace

CausalConv1dOutputs causal_conv1d(const CausalConv1dInputs& in_raw, bool return_final_state) {
  kernels::Conv1dShape s = conv_shape(in_raw);
  CausalConv1dInputs in = in_raw;
  for (Tensor* t : {&in.weight, &in.bias, &in.initial_state, &in.doc_index})
    if (t->defined()) *t = t->contiguous();
  if (!in.channel_last || !readable_in_place(in.x)) in.x = in.x.contiguous();
  if (in.channel_last) s.x_stride = in.x.strides()[1];
  detail::common_device(kOp, {&in.x, &in.weight});
  detail::check_dtype_float(kOp, in.x);
  if (in.initial_state.defined()) detail::check_same_dtype(kOp, {&in.x, &in.initial_state});
  if (in.bias.defined()) detail::check_same_dtype(kOp, {&in.weight, &in.bias});
  const DType param_dtype = in.weight.dtype();

  CausalConv1dOutputs result;
  result.out = Tensor::empty(in.x.shape(), in.x.dtype(), in.x.device());  // dense
  if (return_final_state)
    result.final_state = Tensor::empty({s.batch, s.dim, s.width - 1}, in.x.dtype(), in.x.device());

  if (in.x.device().is_cpu()) {
    if (param_dtype != in.x.dtype()) detail::op_error(kOp, "on the CPU, weight and bias have the dtype of x");
    detail::cpu_float_dispatch(kOp, in.x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::cpu::causal_conv1d_forward<T>(s, cpu_args<T>(in.x, in.weight, in.bias, in.initial_state, in.doc_index),
                                             mut<T>(result.out), mut<T>(result.final_state));
    });
  } else {
    if (param_dtype != DType::f32)
      detail::op_error(kOp, "on the GPU, weight and bias must be f32 (master copies); got " + in.weight.str());
    SSM_CUDA_BRANCH(in.x, kernels::cuda::causal_conv1d_forward(
                              s, in.x.dtype(), void_args(in.x, in.weight, in.bias, in.initial_state, in.doc_index),
                              result.out.data(), result.final_state.defined() ? result.final_state.data() : nullptr,
                              stream));
  }

  const std::vector<Tensor> inputs{in_raw.x, in_raw.weight, in_raw.bias, in_raw.initial_state};
  const std::vector<Tensor> saved{in.x, in.weight, in.bias, in.initial_state, in.doc_index};
  attach_backward(kOp, inputs, {&result.out}, saved, [s](const auto& g, const auto& sv) {
    auto like = [](const Tensor& t) {
      return t.defined() ? Tensor::empty(t.shape(), t.dtype(), t.device()) : Tensor();
    };
    const Tensor dout = g[0].contiguous();
    Tensor dx = like(sv[kX]), dweight = like(sv[kWeight]), dbias = like(sv[kBias]), dinit = like(sv[kInit]);
    const Tensor& x = sv[kX];
    if (x.device().is_cpu()) {
      detail::cpu_float_dispatch(kOp, x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kernels::Conv1dGrads<T, T> gr{ptr<T>(dout), mut<T>(dx), mut<T>(dweight), mut<T>(dbias), mut<T>(dinit)};
        kernels::cpu::causal_conv1d_backward<T>(s, cpu_args<T>(x, sv[kWeight], sv[kBias], sv[kInit], sv[kDoc]), gr);
      });
    } else {
      [[maybe_unused]] kernels::Conv1dGrads<void, float> gr{dout.data(), dx.data(), mut<float>(dweight),
                                                            mut<float>(dbias),
                                                            dinit.defined() ? dinit.data() : nullptr};
      SSM_CUDA_BRANCH(x, kernels::cuda::causal_conv1d_backward(
                             s, x.dtype(), void_args(x, sv[kWeight], sv[kBias], sv[kInit], sv[kDoc]), gr, stream));
    }
    return std::vector<Tensor>{dx, dweight, dbias, dinit};
  });
  return result;
}

}  // namespace ssmtrain
