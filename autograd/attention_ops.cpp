// The attention node: checks shapes, runs kernels/attention.h on the inputs' device (cuDNN or
// the flash-style kernels on the GPU, chosen by the kernel layer) and records one node whose
// backward is the hand-written backward, fed with the forward's output and log-sum-exp.
#include "autograd/attention_ops.h"

#include <cmath>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "kernels/attention.h"

namespace ssmtrain {
namespace {

const char* kOp = "attention";

kernels::AttentionShape attention_shape(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& doc_index,
                                        double scale, bool deterministic) {
  if (!q.defined() || !k.defined() || !v.defined()) detail::op_error(kOp, "q, k and v are required");
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    detail::op_error(kOp, "expects q (b, l, h, dh), k and v (b, l, h_kv, dh); got " + q.str() + ", " + k.str() +
                              ", " + v.str());
  kernels::AttentionShape s;
  s.batch = q.size(0);
  s.seq_len = q.size(1);
  s.n_heads = q.size(2);
  s.head_dim = q.size(3);
  s.n_kv_heads = k.size(2);
  s.scale = scale;
  s.deterministic = deterministic;
  const Shape kv_shape{s.batch, s.seq_len, s.n_kv_heads, s.head_dim};
  if (k.shape() != kv_shape || v.shape() != kv_shape)
    detail::op_error(kOp, "k and v must both be " + shape_str(kv_shape) + " to match q " + q.str() + "; got " +
                              k.str() + ", " + v.str());
  if (s.n_kv_heads < 1 || s.n_heads % s.n_kv_heads != 0)
    detail::op_error(kOp, "kv heads " + std::to_string(s.n_kv_heads) + " must divide query heads " +
                              std::to_string(s.n_heads));
  if (!std::isfinite(scale)) detail::op_error(kOp, "scale must be finite");
  for (const Tensor* t : {&q, &k, &v})
    if (!t->is_contiguous()) detail::op_error(kOp, "q, k and v must be contiguous (call .contiguous()); got " + t->str());
  if (doc_index.defined()) {
    if (doc_index.dtype() != DType::i32 || doc_index.shape() != Shape{s.batch, s.seq_len})
      detail::op_error(kOp, "doc_index must be i32 " + shape_str({s.batch, s.seq_len}) + ", got " + doc_index.str());
    if (doc_index.device() != q.device())
      detail::op_error(kOp, "doc_index must be on " + q.device().str() + ", got " + doc_index.str());
  }
  return s;
}

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }

// Saved tensors, in this order.
enum Saved { kQ, kK, kV, kDoc, kOut, kLse };

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& doc_index, double scale,
                 bool deterministic) {
  const kernels::AttentionShape s = attention_shape(q, k, v, doc_index, scale, deterministic);
  detail::common_device(kOp, {&q, &k, &v});
  detail::check_same_dtype(kOp, {&q, &k, &v});
  detail::check_dtype_float(kOp, q);
  const Tensor doc = doc_index.defined() ? doc_index.contiguous() : Tensor();

  Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());  // (b, l, h, dh)
  Tensor lse;                                                     // (b, h, l): f32 on the GPU, q's dtype on the CPU
  if (q.device().is_cpu()) {
    lse = Tensor::empty({s.batch, s.n_heads, s.seq_len}, q.dtype(), q.device());
    detail::cpu_float_dispatch(kOp, q.dtype(), [&](auto tag) {
      using T = decltype(tag);
      kernels::cpu::attention_forward<T>(s, ptr<T>(q), ptr<T>(k), ptr<T>(v), ptr<int32_t>(doc), mut<T>(out),
                                         mut<T>(lse));
    });
  } else {
    lse = Tensor::empty({s.batch, s.n_heads, s.seq_len}, DType::f32, q.device());
    SSM_CUDA_BRANCH(q, kernels::cuda::attention_forward(s, q.dtype(), q.data(), k.data(), v.data(),
                                                        ptr<int32_t>(doc), out.data(), mut<float>(lse), stream));
  }

  attach_backward(kOp, {q, k, v}, {&out}, {q, k, v, doc, out, lse}, [s](const auto& g, const auto& sv) {
    const Tensor dout = g[0].contiguous();  // (b, l, h, dh)
    const Tensor& q = sv[kQ];
    Tensor dq = Tensor::empty(q.shape(), q.dtype(), q.device());
    Tensor dk = Tensor::empty(sv[kK].shape(), q.dtype(), q.device());
    Tensor dv = Tensor::empty(sv[kV].shape(), q.dtype(), q.device());
    if (q.device().is_cpu()) {
      detail::cpu_float_dispatch(kOp, q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        kernels::cpu::attention_backward<T>(s, ptr<T>(q), ptr<T>(sv[kK]), ptr<T>(sv[kV]), ptr<int32_t>(sv[kDoc]),
                                            ptr<T>(sv[kOut]), ptr<T>(sv[kLse]), ptr<T>(dout), mut<T>(dq),
                                            mut<T>(dk), mut<T>(dv));
      });
    } else {
      SSM_CUDA_BRANCH(q, kernels::cuda::attention_backward(s, q.dtype(), q.data(), sv[kK].data(), sv[kV].data(),
                                                           ptr<int32_t>(sv[kDoc]), sv[kOut].data(),
                                                           ptr<float>(sv[kLse]), dout.data(), dq.data(),
                                                           dk.data(), dv.data(), stream));
    }
    return std::vector<Tensor>{dq, dk, dv};
  });
  return out;
}

}  // namespace ssmtrain
