// Neural-network ops with fused kernels: RMSNorm, embedding, cross-entropy.
#include <algorithm>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/norm.h"

namespace ssmtrain {

using detail::cpu_float_dispatch;

Tensor rmsnorm(const Tensor& x_in, const Tensor& weight_in, double eps) {
  detail::common_device("rmsnorm", {&x_in, &weight_in});
  detail::check_same_dtype("rmsnorm", {&x_in, &weight_in});
  detail::check_dtype_float("rmsnorm", x_in);
  const int64_t d = x_in.size(-1);
  if (weight_in.dim() != 1 || weight_in.size(0) != d)
    detail::op_error("rmsnorm", "weight " + weight_in.str() + " does not match the last dimension of " + x_in.str());
  const Tensor x = x_in.contiguous(), weight = weight_in.contiguous();
  const int64_t rows = x.numel() / std::max<int64_t>(d, 1);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor rstd = Tensor::empty({rows}, DType::f32, x.device());
  if (x.device().is_cpu()) {
    cpu_float_dispatch("rmsnorm", x.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::rmsnorm_forward<T>(static_cast<const T*>(x.data()), static_cast<const T*>(weight.data()),
                                       rows, d, eps, static_cast<T*>(y.data()), rstd.data_ptr<float>());
    });
  } else {
    SSM_CUDA_BRANCH(x, kernels::cuda::rmsnorm_forward(x.dtype(), x.data(), weight.data(), rows, d, eps,
                                                      y.data(), rstd.data_ptr<float>(), stream));
  }
  attach_backward("rmsnorm", {x_in, weight_in}, {&y}, {x, weight, rstd},
                  [rows, d](const auto& g, const auto& s) {
    const Tensor &xs = s[0], &w = s[1], &r = s[2];
    const Tensor dy = g[0].contiguous();
    Tensor dx = Tensor::empty(xs.shape(), xs.dtype(), xs.device());
    Tensor dw = Tensor::empty(w.shape(), w.dtype(), w.device());
    if (xs.device().is_cpu()) {
      cpu_float_dispatch("rmsnorm backward", xs.dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::cpu::rmsnorm_backward<T>(static_cast<const T*>(xs.data()), static_cast<const T*>(w.data()),
                                          r.data_ptr<float>(), static_cast<const T*>(dy.data()), rows, d,
                                          static_cast<T*>(dx.data()), static_cast<T*>(dw.data()));
      });
    } else {
      SSM_CUDA_BRANCH(xs, kernels::cuda::rmsnorm_backward(xs.dtype(), xs.data(), w.data(), r.data_ptr<float>(),
                                                          dy.data(), rows, d, dx.data(), dw.data(), stream));
    }
    return std::vector<Tensor>{dx, dw};
  });
  return y;
}

namespace {
void check_index_dtype(const char* op, const Tensor& ids) {
  if (ids.dtype() != DType::i32 && ids.dtype() != DType::i64)
    detail::op_error(op, std::string("indices must be i32 or i64, got ") + dtype_name(ids.dtype()));
}
}  // namespace

Tensor embedding(const Tensor& ids_in, const Tensor& table_in) {
  detail::common_device("embedding", {&ids_in, &table_in});
  check_index_dtype("embedding", ids_in);
  detail::check_dtype_float("embedding", table_in);
  if (table_in.dim() != 2) detail::op_error("embedding", "table must be (vocab, d), got " + table_in.str());
  const Tensor ids = ids_in.contiguous(), table = table_in.contiguous();
  const int64_t n = ids.numel(), vocab = table.size(0), d = table.size(1);
  Shape out_shape = ids.shape();
  out_shape.push_back(d);
  Tensor out = Tensor::empty(out_shape, table.dtype(), table.device());
  if (table.device().is_cpu()) {
    cpu_float_dispatch("embedding", table.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::embedding_forward<T>(ids.dtype(), ids.data(), n, static_cast<const T*>(table.data()),
                                         vocab, d, static_cast<T*>(out.data()));
    });
  } else {
    SSM_CUDA_BRANCH(table, kernels::cuda::embedding_forward(table.dtype(), ids.dtype(), ids.data(), n,
                                                            table.data(), vocab, d, out.data(), stream));
  }
  attach_backward("embedding", {ids_in, table_in}, {&out}, {ids},
                  [n, vocab, d, dtype = table.dtype()](const auto& g, const auto& s) {
    const Tensor& idx = s[0];
    const Tensor dy = g[0].contiguous();
    Tensor dtable = Tensor::zeros({vocab, d}, dtype, dy.device());
    if (dy.device().is_cpu()) {
      cpu_float_dispatch("embedding backward", dtype, [&](auto t) {
        using T = decltype(t);
        kernels::cpu::embedding_backward<T>(idx.dtype(), idx.data(), n, static_cast<const T*>(dy.data()),
                                            vocab, d, static_cast<T*>(dtable.data()));
      });
    } else {
      SSM_CUDA_BRANCH(dy, kernels::cuda::embedding_backward(dtype, idx.dtype(), idx.data(), n, dy.data(),
                                                            vocab, d, dtable.data(), stream));
    }
    return std::vector<Tensor>{Tensor(), dtable};
  });
  return out;
}

Tensor cross_entropy(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index) {
  detail::common_device("cross_entropy", {&logits_in, &targets_in});
  check_index_dtype("cross_entropy", targets_in);
  detail::check_dtype_float("cross_entropy", logits_in);
  if (logits_in.dim() != 2 || targets_in.dim() != 1 || targets_in.size(0) != logits_in.size(0))
    detail::op_error("cross_entropy", "expects logits (n, vocab) and targets (n), got " + logits_in.str() +
                                          " and " + targets_in.str());
  const Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous();
  const int64_t n = logits.size(0), vocab = logits.size(1);
  // On the GPU the loss is f32 whatever the logits' dtype; on the CPU it has the logits' dtype.
  const DType loss_dtype = logits.is_cuda() ? DType::f32 : logits.dtype();
  Tensor lse = Tensor::empty({n}, DType::f32, logits.device());
  Tensor result = Tensor::empty({2}, loss_dtype, logits.device());  // (mean loss, count)
  if (logits.device().is_cpu()) {
    cpu_float_dispatch("cross_entropy", logits.dtype(), [&](auto t) {
      using T = decltype(t);
      kernels::cpu::cross_entropy_forward<T>(static_cast<const T*>(logits.data()), targets.dtype(),
                                             targets.data(), n, vocab, ignore_index, lse.data_ptr<float>(),
                                             static_cast<T*>(result.data()));
    });
  } else {
    SSM_CUDA_BRANCH(logits, kernels::cuda::cross_entropy_forward(logits.dtype(), logits.data(), targets.dtype(),
                                                                 targets.data(), n, vocab, ignore_index,
                                                                 lse.data_ptr<float>(),
                                                                 result.data_ptr<float>(), stream));
  }
  Tensor loss = make_view(result, {}, {}, result.offset());
  attach_backward("cross_entropy", {logits_in}, {&loss}, {logits, targets, lse, result},
                  [n, vocab, ignore_index](const auto& g, const auto& s) {
    const Tensor &lg = s[0], &tg = s[1], &l = s[2], &res = s[3];
    const Tensor dloss = g[0].contiguous();
    Tensor dlogits = Tensor::empty(lg.shape(), lg.dtype(), lg.device());
    if (lg.device().is_cpu()) {
      cpu_float_dispatch("cross_entropy backward", lg.dtype(), [&](auto t) {
        using T = decltype(t);
        kernels::cpu::cross_entropy_backward<T>(static_cast<const T*>(lg.data()), tg.dtype(), tg.data(), n,
                                                vocab, ignore_index, l.data_ptr<float>(),
                                                static_cast<const T*>(dloss.data()),
                                                static_cast<const T*>(res.data()), static_cast<T*>(dlogits.data()));
      });
    } else {
      SSM_CUDA_BRANCH(lg, kernels::cuda::cross_entropy_backward(lg.dtype(), lg.data(), tg.dtype(), tg.data(), n,
                                                                vocab, ignore_index, l.data_ptr<float>(),
                                                                dloss.data_ptr<float>(), res.data_ptr<float>(),
                                                                dlogits.data(), stream));
    }
    return std::vector<Tensor>{dlogits};
  });
  return loss;
}

}  // namespace ssmtrain
