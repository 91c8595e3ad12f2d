// See decode_ops.h. Shape checks name the op and the tensor; the kernels run on the inputs'
// device (kernels/<op>.h: cpu::*_step is the reference, cuda::*_step the same contract).
#include "autograd/decode_ops.h"

#include <string>

#include "autograd/dispatch.h"
#include "kernels/attention.h"
#include "kernels/causal_conv1d.h"
#include "kernels/sampling.h"
#include "kernels/selective_scan.h"
#include "kernels/ssd.h"

namespace ssmtrain {
namespace {

void expect(const char* op, const Tensor& t, const Shape& shape, const char* name, bool required = false) {
  if (!t.defined()) {
    if (required) detail::op_error(op, std::string(name) + " is required");
    return;
  }
  if (t.shape() != shape) detail::op_error(op, std::string(name) + " must be " + shape_str(shape) + ", got " + t.str());
  if (!t.is_contiguous()) detail::op_error(op, std::string(name) + " must be contiguous");
}

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }
const void* vptr(const Tensor& t) { return t.defined() ? t.data() : nullptr; }

Tensor contig(const Tensor& t) { return t.defined() ? t.contiguous() : t; }

}  // namespace

Tensor causal_conv1d_step(const Tensor& x_raw, const Tensor& weight_raw, const Tensor& bias_raw, const Tensor& state,
                          bool silu) {
  const char* op = "causal_conv1d_step";
  const Tensor x = contig(x_raw), weight = contig(weight_raw), bias = contig(bias_raw);
  if (!x.defined() || x.dim() != 2) detail::op_error(op, "x must be (b, d), got " + x.str());
  if (!weight.defined() || weight.dim() != 2) detail::op_error(op, "weight must be (d, w), got " + weight.str());
  kernels::Conv1dShape s;
  s.batch = x.size(0);
  s.dim = x.size(1);
  s.seq_len = 1;
  s.width = weight.size(1);
  s.silu = silu;
  expect(op, weight, {s.dim, s.width}, "weight");
  expect(op, bias, {s.dim}, "bias");
  expect(op, state, {s.batch, s.dim, s.width - 1}, "state", true);
  detail::common_device(op, {&x, &weight, &state});
  detail::check_same_dtype(op, {&x, &state});
  Tensor out = Tensor::empty({s.batch, s.dim}, x.dtype(), x.device());
  if (x.device().is_cpu()) {
    detail::check_same_dtype(op, {&x, &weight});
    detail::cpu_float_dispatch(op, x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::Conv1dArgs<T, T> a{nullptr, ptr<T>(weight), ptr<T>(bias), nullptr, nullptr};
      kernels::cpu::causal_conv1d_step<T>(s, a, ptr<T>(x), mut<T>(state), mut<T>(out));
    });
  } else {
    if (weight.dtype() != DType::f32) detail::op_error(op, "on the GPU, weight and bias must be f32; got " + weight.str());
    [[maybe_unused]] kernels::Conv1dArgs<void, float> a{nullptr, ptr<float>(weight), ptr<float>(bias), nullptr, nullptr};
    SSM_CUDA_BRANCH(x, kernels::cuda::causal_conv1d_step(s, x.dtype(), a, x.data(), state.data(), out.data(), stream));
  }
  return out;
}

Tensor selective_scan_step(const SelectiveScanStepInputs& raw, const Tensor& state) {
  const char* op = "selective_scan_step";
  SelectiveScanStepInputs in = raw;
  for (Tensor* t : {&in.u, &in.delta, &in.A, &in.B, &in.C, &in.D, &in.z, &in.delta_bias}) *t = contig(*t);
  if (!in.u.defined() || in.u.dim() != 2) detail::op_error(op, "u must be (b, d), got " + in.u.str());
  if (!in.B.defined() || in.B.dim() != 3) detail::op_error(op, "B must be (b, g, n), got " + in.B.str());
  kernels::ScanShape s;
  s.batch = in.u.size(0);
  s.dim = in.u.size(1);
  s.seq_len = 1;
  s.ngroups = in.B.size(1);
  s.d_state = in.B.size(2);
  s.delta_softplus = in.delta_softplus;
  expect(op, in.delta, {s.batch, s.dim}, "delta", true);
  expect(op, in.A, {s.dim, s.d_state}, "A", true);
  expect(op, in.B, {s.batch, s.ngroups, s.d_state}, "B", true);
  expect(op, in.C, {s.batch, s.ngroups, s.d_state}, "C", true);
  expect(op, in.D, {s.dim}, "D");
  expect(op, in.z, {s.batch, s.dim}, "z");
  expect(op, in.delta_bias, {s.dim}, "delta_bias");
  expect(op, state, {s.batch, s.dim, s.d_state}, "state", true);
  if (s.dim % s.ngroups != 0) detail::op_error(op, "the groups of B and C must divide the channels");
  detail::common_device(op, {&in.u, &in.delta, &in.A, &in.B, &in.C, &state});
  Tensor out = Tensor::empty({s.batch, s.dim}, in.u.dtype(), in.u.device());
  if (in.u.device().is_cpu()) {
    detail::check_same_dtype(op, {&in.u, &in.delta, &in.A, &in.B, &in.C, &state});
    detail::cpu_float_dispatch(op, in.u.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::ScanArgs<T, T> a{ptr<T>(in.u), ptr<T>(in.delta), ptr<T>(in.A), ptr<T>(in.B), ptr<T>(in.C),
                                ptr<T>(in.D), ptr<T>(in.z), ptr<T>(in.delta_bias), nullptr, nullptr};
      kernels::cpu::selective_scan_step<T>(s, a, mut<T>(state), mut<T>(out));
    });
  } else {
    detail::check_same_dtype(op, {&in.u, &in.delta, &in.B, &in.C});
    if (state.dtype() != DType::f32 || in.A.dtype() != DType::f32)
      detail::op_error(op, "on the GPU, A and the state must be f32; got " + in.A.str() + ", " + state.str());
    [[maybe_unused]] kernels::ScanArgs<void, float> a{in.u.data(), in.delta.data(), ptr<float>(in.A), in.B.data(), in.C.data(),
                                     ptr<float>(in.D), vptr(in.z), ptr<float>(in.delta_bias), nullptr, nullptr};
    SSM_CUDA_BRANCH(in.u, kernels::cuda::selective_scan_step(s, in.u.dtype(), a, mut<float>(state), out.data(), stream));
  }
  return out;
}

Tensor ssd_step(const SsdStepInputs& raw, const Tensor& states) {
  const char* op = "ssd_step";
  SsdStepInputs in = raw;
  for (Tensor* t : {&in.x, &in.dt, &in.A, &in.B, &in.C, &in.D, &in.z, &in.dt_bias}) *t = contig(*t);
  if (!in.x.defined() || in.x.dim() != 3) detail::op_error(op, "x must be (b, h, p), got " + in.x.str());
  if (!in.B.defined() || in.B.dim() != 3) detail::op_error(op, "B must be (b, g, n), got " + in.B.str());
  kernels::SsdShape s;
  s.batch = in.x.size(0);
  s.seq_len = 1;
  s.n_heads = in.x.size(1);
  s.head_dim = in.x.size(2);
  s.ngroups = in.B.size(1);
  s.d_state = in.B.size(2);
  s.dt_softplus = in.dt_softplus;
  s.D_has_head_dim = in.D.defined() && in.D.dim() == 2;
  expect(op, in.dt, {s.batch, s.n_heads}, "dt", true);
  expect(op, in.A, {s.n_heads}, "A", true);
  expect(op, in.B, {s.batch, s.ngroups, s.d_state}, "B", true);
  expect(op, in.C, {s.batch, s.ngroups, s.d_state}, "C", true);
  if (s.D_has_head_dim) expect(op, in.D, {s.n_heads, s.head_dim}, "D");
  else expect(op, in.D, {s.n_heads}, "D");
  expect(op, in.z, {s.batch, s.n_heads, s.head_dim}, "z");
  expect(op, in.dt_bias, {s.n_heads}, "dt_bias");
  expect(op, states, {s.batch, s.n_heads, s.head_dim, s.d_state}, "states", true);
  if (s.n_heads % s.ngroups != 0) detail::op_error(op, "the groups of B and C must divide the heads");
  detail::common_device(op, {&in.x, &in.dt, &in.A, &in.B, &in.C, &states});
  Tensor out = Tensor::empty({s.batch, s.n_heads, s.head_dim}, in.x.dtype(), in.x.device());
  if (in.x.device().is_cpu()) {
    detail::check_same_dtype(op, {&in.x, &in.dt, &in.A, &in.B, &in.C, &states});
    detail::cpu_float_dispatch(op, in.x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::SsdArgs<T, T> a{ptr<T>(in.x), ptr<T>(in.dt), ptr<T>(in.A), ptr<T>(in.B), ptr<T>(in.C),
                               ptr<T>(in.D), ptr<T>(in.z), ptr<T>(in.dt_bias), nullptr, nullptr};
      kernels::cpu::ssd_step<T>(s, a, mut<T>(states), mut<T>(out));
    });
  } else {
    detail::check_same_dtype(op, {&in.x, &in.dt, &in.B, &in.C});
    if (states.dtype() != DType::f32 || in.A.dtype() != DType::f32)
      detail::op_error(op, "on the GPU, A and the states must be f32; got " + in.A.str() + ", " + states.str());
    [[maybe_unused]] kernels::SsdArgs<void, float> a{in.x.data(), in.dt.data(), ptr<float>(in.A), in.B.data(), in.C.data(),
                                    ptr<float>(in.D), vptr(in.z), ptr<float>(in.dt_bias), nullptr, nullptr};
    SSM_CUDA_BRANCH(in.x, kernels::cuda::ssd_step(s, in.x.dtype(), a, mut<float>(states), out.data(), stream));
  }
  return out;
}

Tensor attention_decode(const Tensor& q_raw, const Tensor& k_cache, const Tensor& v_cache,
                        const std::vector<int64_t>& lengths) {
  const char* op = "attention_decode";
  const Tensor q = contig(q_raw);
  if (!q.defined() || q.dim() != 3) detail::op_error(op, "q must be (b, h, dh), got " + q.str());
  if (!k_cache.defined() || k_cache.dim() != 4) detail::op_error(op, "k_cache must be (b, L, h_kv, dh), got " + k_cache.str());
  kernels::AttentionShape s;
  s.batch = q.size(0);
  s.n_heads = q.size(1);
  s.head_dim = q.size(2);
  s.seq_len = k_cache.size(1);
  s.n_kv_heads = k_cache.size(2);
  expect(op, k_cache, {s.batch, s.seq_len, s.n_kv_heads, s.head_dim}, "k_cache", true);
  expect(op, v_cache, {s.batch, s.seq_len, s.n_kv_heads, s.head_dim}, "v_cache", true);
  if (int64_t(lengths.size()) != s.batch)
    detail::op_error(op, std::to_string(lengths.size()) + " lengths for a batch of " + std::to_string(s.batch));
  std::vector<int32_t> lens(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    if (lengths[i] < 1 || lengths[i] > s.seq_len)
      detail::op_error(op, "length " + std::to_string(lengths[i]) + " of sequence " + std::to_string(i) +
                               " is outside the cache's 1.." + std::to_string(s.seq_len));
    lens[i] = int32_t(lengths[i]);
  }
  detail::common_device(op, {&q, &k_cache, &v_cache});
  detail::check_same_dtype(op, {&q, &k_cache, &v_cache});
  Tensor out = Tensor::empty({s.batch, s.n_heads, s.head_dim}, q.dtype(), q.device());
  if (q.device().is_cpu()) {
    detail::cpu_float_dispatch(op, q.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::cpu::attention_decode<T>(s, ptr<T>(q), ptr<T>(k_cache), ptr<T>(v_cache), lens.data(), mut<T>(out));
    });
  } else {
    [[maybe_unused]] const Tensor lens32 = Tensor::from_vector(lengths, {s.batch}, DType::i32, q.device());
    SSM_CUDA_BRANCH(q, kernels::cuda::attention_decode(s, q.dtype(), q.data(), k_cache.data(), v_cache.data(),
                                                       static_cast<const int32_t*>(lens32.data()), out.data(), stream));
  }
  return out;
}

void sample_tokens(const Tensor& logits_raw, const kernels::SamplingParams& params, int64_t first_sequence,
                   const Tensor& draw, const Tensor& out) {
  const char* op = "sample_tokens";
  const Tensor logits = contig(logits_raw);
  if (!logits.defined() || logits.dim() != 2) detail::op_error(op, "logits must be (b, vocab), got " + logits.str());
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  expect(op, draw, {1}, "draw", true);
  expect(op, out, {rows}, "out", true);
  if (draw.dtype() != DType::i64 || out.dtype() != DType::i64)
    detail::op_error(op, "draw and out must be i64, got " + draw.str() + " and " + out.str());
  detail::common_device(op, {&logits, &draw, &out});
  if (logits.device().is_cpu()) {
    int64_t* counter = mut<int64_t>(draw);
    detail::cpu_float_dispatch(op, logits.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::cpu::sample_tokens<T>(ptr<T>(logits), rows, vocab, params, first_sequence, *counter, mut<int64_t>(out));
    });
    ++*counter;
  } else {
    SSM_CUDA_BRANCH(logits, kernels::cuda::sample_tokens(logits.dtype(), logits.data(), rows, vocab, params,
                                                         first_sequence, mut<int64_t>(draw), mut<int64_t>(out), stream));
  }
}

}  // namespace ssmtrain
