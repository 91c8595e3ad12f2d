// The selective-scan node: checks shapes, runs kernels/selective_scan.h on the inputs'
// device, and records one node whose backward is the hand-written backward kernel.
#include "autograd/selective_scan_ops.h"

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "kernels/selective_scan.h"

namespace ssmtrain {
namespace {

const char* kOp = "selective_scan";

void expect_shape(const Tensor& t, const Shape& shape, const char* name) {
  if (t.defined() && t.shape() != shape)
    detail::op_error(kOp, std::string(name) + " must be " + shape_str(shape) + ", got " + t.str());
}

kernels::ScanShape scan_shape(const SelectiveScanInputs& in) {
  if (!in.u.defined() || !in.delta.defined() || !in.A.defined() || !in.B.defined() || !in.C.defined())
    detail::op_error(kOp, "u, delta, A, B and C are required");
  if (in.u.dim() != 3 || in.A.dim() != 2 || in.B.dim() != 4)
    detail::op_error(kOp, "expects u (b, d, l), A (d, n), B and C (b, g, n, l); got " + in.u.str() +
                              ", " + in.A.str() + ", " + in.B.str());
  kernels::ScanShape s;
  s.batch = in.u.size(0);
  s.dim = in.u.size(1);
  s.seq_len = in.u.size(2);
  s.d_state = in.A.size(1);
  s.ngroups = in.B.size(1);
  s.delta_softplus = in.delta_softplus;
  if (s.ngroups < 1 || s.dim % s.ngroups != 0)
    detail::op_error(kOp, "groups " + std::to_string(s.ngroups) + " must divide d " + std::to_string(s.dim));
  expect_shape(in.delta, in.u.shape(), "delta");
  expect_shape(in.z, in.u.shape(), "z");
  expect_shape(in.A, {s.dim, s.d_state}, "A");
  expect_shape(in.B, {s.batch, s.ngroups, s.d_state, s.seq_len}, "B");
  expect_shape(in.C, {s.batch, s.ngroups, s.d_state, s.seq_len}, "C");
  expect_shape(in.D, {s.dim}, "D");
  expect_shape(in.delta_bias, {s.dim}, "delta_bias");
  expect_shape(in.initial_state, {s.batch, s.dim, s.d_state}, "initial_state");
  expect_shape(in.doc_index, {s.batch, s.seq_len}, "doc_index");
  if (in.doc_index.defined() && in.doc_index.dtype() != DType::i32)
    detail::op_error(kOp, "doc_index must be i32, got " + in.doc_index.str());
  return s;
}

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }

// Saved tensors, in this order.
enum Saved { kU, kDelta, kA, kB, kC, kD, kZ, kBias, kInit, kDoc, kChunkStates };

// The GPU kernels' view of the inputs: element pointers of u's dtype, f32 parameters.
[[maybe_unused]] kernels::ScanArgs<void, float> void_args(const SelectiveScanInputs& in) {
  auto raw = [](const Tensor& t) -> const void* { return t.defined() ? t.data() : nullptr; };
  return {raw(in.u), raw(in.delta), ptr<float>(in.A), raw(in.B), raw(in.C), ptr<float>(in.D), raw(in.z),
          ptr<float>(in.delta_bias), ptr<float>(in.initial_state), ptr<int32_t>(in.doc_index)};
}

}  // namespace

SelectiveScanOutputs selective_scan(const SelectiveScanInputs& in_raw, bool return_final_state) {
  const kernels::ScanShape s = scan_shape(in_raw);
  SelectiveScanInputs in = in_raw;
  for (Tensor* t : {&in.u, &in.delta, &in.A, &in.B, &in.C, &in.D, &in.z, &in.delta_bias,
                    &in.initial_state, &in.doc_index})
    if (t->defined()) *t = t->contiguous();
  detail::common_device(kOp, {&in.u, &in.delta, &in.A, &in.B, &in.C});
  detail::check_same_dtype(kOp, {&in.u, &in.delta, &in.B, &in.C});
  if (in.z.defined()) detail::check_same_dtype(kOp, {&in.u, &in.z});
  const DType param_dtype = in.A.dtype();
  for (const Tensor* p : {&in.D, &in.delta_bias, &in.initial_state})
    if (p->defined() && p->dtype() != param_dtype)
      detail::op_error(kOp, "A, D, delta_bias and initial_state must share a dtype; got " + p->str());

  SelectiveScanOutputs result;
  Tensor chunk_states;  // GPU: the state entering each chunk, for the backward
  result.out = Tensor::empty(in.u.shape(), in.u.dtype(), in.u.device());
  const bool want_state = return_final_state;
  if (want_state) result.final_state = Tensor::empty({s.batch, s.dim, s.d_state}, param_dtype, in.u.device());

  if (in.u.device().is_cpu()) {
    if (param_dtype != in.u.dtype())
      detail::op_error(kOp, "on the CPU, A, D, delta_bias and the state have the dtype of u");
    detail::cpu_float_dispatch(kOp, in.u.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::ScanArgs<T, T> a{ptr<T>(in.u), ptr<T>(in.delta), ptr<T>(in.A), ptr<T>(in.B), ptr<T>(in.C),
                                ptr<T>(in.D), ptr<T>(in.z), ptr<T>(in.delta_bias), ptr<T>(in.initial_state),
                                ptr<int32_t>(in.doc_index)};
      kernels::cpu::selective_scan_forward<T>(s, a, mut<T>(result.out), mut<T>(result.final_state));
    });
  } else {
    if (param_dtype != DType::f32)
      detail::op_error(kOp, "on the GPU, A, D, delta_bias and initial_state must be f32; got " + in.A.str());
#if SSMTRAIN_WITH_CUDA
    chunk_states = Tensor::empty({s.batch, s.dim, kernels::cuda::selective_scan_num_chunks(s), s.d_state},
                                 DType::f32, in.u.device());
#endif
    SSM_CUDA_BRANCH(in.u, kernels::cuda::selective_scan_forward(
                              s, in.u.dtype(), void_args(in), result.out.data(), mut<float>(result.final_state),
                              mut<float>(chunk_states), stream));
  }

  std::vector<Tensor*> outputs{&result.out};
  if (want_state) outputs.push_back(&result.final_state);
  const std::vector<Tensor> inputs{in_raw.u, in_raw.delta, in_raw.A, in_raw.B, in_raw.C, in_raw.D,
                                   in_raw.z, in_raw.delta_bias, in_raw.initial_state};
  const std::vector<Tensor> saved{in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias,
                                  in.initial_state, in.doc_index, chunk_states};
  attach_backward(kOp, inputs, outputs, saved, [s, want_state](const auto& g, const auto& sv) {
    auto like = [](const Tensor& t) { return t.defined() ? Tensor::empty(t.shape(), t.dtype(), t.device()) : Tensor(); };
    const Tensor dout = g[0].contiguous();
    const Tensor dfinal = want_state ? g[1].contiguous() : Tensor();
    Tensor du = like(sv[kU]), ddelta = like(sv[kDelta]), dA = like(sv[kA]), dB = like(sv[kB]), dC = like(sv[kC]),
           dD = like(sv[kD]), dz = like(sv[kZ]), dbias = like(sv[kBias]), dinit = like(sv[kInit]);
    const Tensor& u = sv[kU];
    if (u.device().is_cpu()) {
      detail::cpu_float_dispatch(kOp, u.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kernels::ScanArgs<T, T> a{ptr<T>(sv[kU]), ptr<T>(sv[kDelta]), ptr<T>(sv[kA]), ptr<T>(sv[kB]),
                                  ptr<T>(sv[kC]), ptr<T>(sv[kD]), ptr<T>(sv[kZ]), ptr<T>(sv[kBias]),
                                  ptr<T>(sv[kInit]), ptr<int32_t>(sv[kDoc])};
        kernels::ScanGrads<T, T> gr{ptr<T>(dout), ptr<T>(dfinal), mut<T>(du), mut<T>(ddelta), mut<T>(dA),
                                    mut<T>(dB), mut<T>(dC), mut<T>(dD), mut<T>(dz), mut<T>(dbias), mut<T>(dinit)};
        kernels::cpu::selective_scan_backward<T>(s, a, gr);
      });
    } else {
      [[maybe_unused]] SelectiveScanInputs saved_in{sv[kU], sv[kDelta], sv[kA], sv[kB], sv[kC], sv[kD], sv[kZ], sv[kBias],
                                   sv[kInit], sv[kDoc], s.delta_softplus};
      [[maybe_unused]] kernels::ScanGrads<void, float> gr{dout.data(), ptr<float>(dfinal), du.data(), ddelta.data(),
                                         mut<float>(dA), dB.data(), dC.data(), mut<float>(dD),
                                         dz.defined() ? dz.data() : nullptr, mut<float>(dbias), mut<float>(dinit)};
      SSM_CUDA_BRANCH(u, kernels::cuda::selective_scan_backward(s, u.dtype(), void_args(saved_in), gr,
                                                                ptr<float>(sv[kChunkStates]), stream));
    }
    return std::vector<Tensor>{du, ddelta, dA, dB, dC, dD, dz, dbias, dinit};
  });
  return result;
}

}  // namespace ssmtrain
