// The SSD node: check shapes, run kernels/ssd.h on the inputs' device, and record one node
// whose backward is the hand-written kernel.
// On the GPU the SSD forward saves the state entering each chunk for the backward, as the
// selective scan does (autograd/selective_scan_ops.cpp).
#include "autograd/ssd_ops.h"

#include <stdexcept>
#include <string>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "kernels/ssd.h"

namespace ssmtrain {
namespace {

const char* kSsd = "ssd";

void expect_shape(const char* op, const Tensor& t, const Shape& shape, const char* name) {
  if (t.defined() && t.shape() != shape)
    detail::op_error(op, std::string(name) + " must be " + shape_str(shape) + ", got " + t.str());
}

kernels::SsdShape ssd_shape(const SsdInputs& in) {
  if (!in.x.defined() || !in.dt.defined() || !in.A.defined() || !in.B.defined() || !in.C.defined())
    detail::op_error(kSsd, "x, dt, A, B and C are required");
  if (in.x.dim() != 4 || in.A.dim() != 1 || in.B.dim() != 4)
    detail::op_error(kSsd, "expects x (b, l, h, p), A (h), B and C (b, l, g, n); got " + in.x.str() + ", " +
                               in.A.str() + ", " + in.B.str());
  kernels::SsdShape s;
  s.batch = in.x.size(0);
  s.seq_len = in.x.size(1);
  s.n_heads = in.x.size(2);
  s.head_dim = in.x.size(3);
  s.ngroups = in.B.size(2);
  s.d_state = in.B.size(3);
  s.chunk_size = in.chunk_size;
  s.dt_softplus = in.dt_softplus;
  s.dt_min = in.dt_min;
  s.dt_max = in.dt_max;
  s.D_has_head_dim = in.D.defined() && in.D.dim() == 2;
  if (s.ngroups < 1 || s.n_heads % s.ngroups != 0)
    detail::op_error(kSsd, "groups " + std::to_string(s.ngroups) + " must divide heads " + std::to_string(s.n_heads));
  if (s.chunk_size < 1) detail::op_error(kSsd, "chunk_size must be positive, got " + std::to_string(s.chunk_size));
  if (!(s.dt_min <= s.dt_max))
    detail::op_error(kSsd, "dt range [" + std::to_string(s.dt_min) + ", " + std::to_string(s.dt_max) + "] is empty");
  expect_shape(kSsd, in.dt, {s.batch, s.seq_len, s.n_heads}, "dt");
  expect_shape(kSsd, in.A, {s.n_heads}, "A");
  expect_shape(kSsd, in.B, {s.batch, s.seq_len, s.ngroups, s.d_state}, "B");
  expect_shape(kSsd, in.C, {s.batch, s.seq_len, s.ngroups, s.d_state}, "C");
  if (s.D_has_head_dim) expect_shape(kSsd, in.D, {s.n_heads, s.head_dim}, "D");
  else expect_shape(kSsd, in.D, {s.n_heads}, "D");
  expect_shape(kSsd, in.z, in.x.shape(), "z");
  expect_shape(kSsd, in.dt_bias, {s.n_heads}, "dt_bias");
  expect_shape(kSsd, in.initial_states, {s.batch, s.n_heads, s.head_dim, s.d_state}, "initial_states");
  expect_shape(kSsd, in.doc_index, {s.batch, s.seq_len}, "doc_index");
  if (in.doc_index.defined() && in.doc_index.dtype() != DType::i32)
    detail::op_error(kSsd, "doc_index must be i32, got " + in.doc_index.str());
  return s;
}

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }

// Saved tensors of the SSD node, in this order.
enum Saved { kX, kDt, kA, kB, kC, kD, kZ, kBias, kInit, kDoc, kChunkStates };

// The GPU kernels' view of the saved inputs: element pointers of x's dtype, f32 parameters.
[[maybe_unused]] kernels::SsdArgs<void, float> void_args(const std::vector<Tensor>& sv) {
  auto raw = [](const Tensor& t) -> const void* { return t.defined() ? t.data() : nullptr; };
  return {raw(sv[kX]), raw(sv[kDt]), ptr<float>(sv[kA]), raw(sv[kB]), raw(sv[kC]), ptr<float>(sv[kD]),
          raw(sv[kZ]), ptr<float>(sv[kBias]), ptr<float>(sv[kInit]), ptr<int32_t>(sv[kDoc])};
}

template <typename T>
kernels::SsdArgs<T, T> cpu_args(const std::vector<Tensor>& sv) {
  return {ptr<T>(sv[kX]), ptr<T>(sv[kDt]), ptr<T>(sv[kA]), ptr<T>(sv[kB]), ptr<T>(sv[kC]),
          ptr<T>(sv[kD]), ptr<T>(sv[kZ]), ptr<T>(sv[kBias]), ptr<T>(sv[kInit]), ptr<int32_t>(sv[kDoc])};
}

}  // namespace

SsdOutputs ssd(const SsdInputs& in_raw, bool return_final_states) {
  const kernels::SsdShape s = ssd_shape(in_raw);
  SsdInputs in = in_raw;
  for (Tensor* t : {&in.x, &in.dt, &in.A, &in.B, &in.C, &in.D, &in.z, &in.dt_bias, &in.initial_states,
                    &in.doc_index})
    if (t->defined()) *t = t->contiguous();
  detail::common_device(kSsd, {&in.x, &in.dt, &in.A, &in.B, &in.C});
  for (const Tensor* t : {&in.D, &in.z, &in.dt_bias, &in.initial_states, &in.doc_index})
    if (t->defined()) detail::common_device(kSsd, {&in.x, t});
  detail::check_same_dtype(kSsd, {&in.x, &in.dt, &in.B, &in.C});
  if (in.z.defined()) detail::check_same_dtype(kSsd, {&in.x, &in.z});
  const DType param_dtype = in.A.dtype();
  for (const Tensor* p : {&in.D, &in.dt_bias, &in.initial_states})
    if (p->defined() && p->dtype() != param_dtype)
      detail::op_error(kSsd, "A, D, dt_bias and initial_states must share a dtype; got " + p->str());

  // Saved in the order of enum Saved; chunk_states (GPU) is added below.
  std::vector<Tensor> saved{in.x, in.dt, in.A, in.B, in.C, in.D, in.z, in.dt_bias, in.initial_states,
                            in.doc_index, Tensor()};
  SsdOutputs result;
  result.out = Tensor::empty(in.x.shape(), in.x.dtype(), in.x.device());
  const bool want_states = return_final_states;
  if (want_states)
    result.final_states = Tensor::empty({s.batch, s.n_heads, s.head_dim, s.d_state}, param_dtype, in.x.device());

  if (in.x.device().is_cpu()) {
    if (param_dtype != in.x.dtype())
      detail::op_error(kSsd, "on the CPU, A, D, dt_bias and the states have the dtype of x");
    // The recurrence: on the CPU it takes fewer operations than the chunked form.
    detail::cpu_float_dispatch(kSsd, in.x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::cpu::ssd_forward_sequential<T>(s, cpu_args<T>(saved), mut<T>(result.out),
                                              mut<T>(result.final_states));
    });
  } else {
    if (param_dtype != DType::f32)
      detail::op_error(kSsd, "on the GPU, A, D, dt_bias and initial_states must be f32; got " + in.A.str());
    if (s.chunk_size < 64 || s.chunk_size > 256)
      detail::op_error(kSsd, "on the GPU, chunk_size must be in 64..256, got " + std::to_string(s.chunk_size));
    if (in.x.dtype() != DType::f32 && in.x.dtype() != DType::bf16)
      detail::op_error(kSsd, "on the GPU, x, dt, B, C and z must be f32 or bf16; got " + in.x.str());
#if SSMTRAIN_WITH_CUDA
    // The state entering each chunk, for the backward.
    saved[kChunkStates] = Tensor::empty({s.batch, kernels::cuda::ssd_num_chunks(s), s.n_heads, s.head_dim, s.d_state},
                                        DType::f32, in.x.device());
#endif
    SSM_CUDA_BRANCH(in.x, kernels::cuda::ssd_forward(s, in.x.dtype(), void_args(saved), result.out.data(),
                                                     mut<float>(result.final_states), mut<float>(saved[kChunkStates]),
                                                     stream));
  }

  std::vector<Tensor*> outputs{&result.out};
  if (want_states) outputs.push_back(&result.final_states);
  const std::vector<Tensor> inputs{in_raw.x, in_raw.dt, in_raw.A, in_raw.B, in_raw.C, in_raw.D,
                                   in_raw.z, in_raw.dt_bias, in_raw.initial_states};
  attach_backward(kSsd, inputs, outputs, saved, [s, want_states](const auto& g, const auto& sv) {
    auto like = [](const Tensor& t) { return t.defined() ? Tensor::empty(t.shape(), t.dtype(), t.device()) : Tensor(); };
    const Tensor dout = g[0].contiguous();
    const Tensor dfinal = want_states ? g[1].contiguous() : Tensor();
    Tensor dx = like(sv[kX]), ddt = like(sv[kDt]), dA = like(sv[kA]), dB = like(sv[kB]), dC = like(sv[kC]),
           dD = like(sv[kD]), dz = like(sv[kZ]), dbias = like(sv[kBias]), dinit = like(sv[kInit]);
    if (sv[kX].device().is_cpu()) {
      detail::cpu_float_dispatch(kSsd, sv[kX].dtype(), [&](auto tag) {
        using T = decltype(tag);
        kernels::SsdGrads<T, T> gr{ptr<T>(dout), ptr<T>(dfinal), mut<T>(dx), mut<T>(ddt), mut<T>(dA),
                                   mut<T>(dB), mut<T>(dC), mut<T>(dD), mut<T>(dz), mut<T>(dbias), mut<T>(dinit)};
        kernels::cpu::ssd_backward<T>(s, cpu_args<T>(sv), gr);
      });
    } else {
      auto raw = [](const Tensor& t) -> void* { return t.defined() ? t.data() : nullptr; };
      [[maybe_unused]] kernels::SsdGrads<void, float> gr{dout.data(), ptr<float>(dfinal), raw(dx), raw(ddt),
                                                         mut<float>(dA), raw(dB), raw(dC), mut<float>(dD), raw(dz),
                                                         mut<float>(dbias), mut<float>(dinit)};
      SSM_CUDA_BRANCH(sv[kX], kernels::cuda::ssd_backward(s, sv[kX].dtype(), void_args(sv), gr,
                                                          ptr<float>(sv[kChunkStates]), stream));
    }
    return std::vector<Tensor>{dx, ddt, dA, dB, dC, dD, dz, dbias, dinit};
  });
  return result;
}

}  // namespace ssmtrain
