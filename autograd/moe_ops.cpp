// The mixture-of-experts op: router logits through `linear` (cast to f32 on the GPU), then two
// nodes over kernels/moe.h: "moe_router_losses" (logits -> aux and z losses) and "moe_experts"
// (logits, x and expert weights -> out), each with a hand-written backward. The expert counts
// are copied to the host once per forward (the per-expert GEMM sizes), never in the backward.
#include "autograd/moe_ops.h"

#include <string>
#include <vector>

#include "autograd/dispatch.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "kernels/moe.h"

namespace ssmtrain {
namespace {

const char* kOp = "moe_swiglu";

template <typename T> const T* ptr(const Tensor& t) { return t.defined() ? static_cast<const T*>(t.data()) : nullptr; }
template <typename T> T* mut(const Tensor& t) { return t.defined() ? static_cast<T*>(t.data()) : nullptr; }

void expect_shape(const Tensor& t, const Shape& shape, const char* name) {
  if (t.shape() != shape) detail::op_error(kOp, std::string(name) + " must be " + shape_str(shape) + ", got " + t.str());
}

// Saved tensors of the experts node, in this order.
enum Saved { kX, kGate, kUp, kDown, kProbs, kIndex, kWeight, kRowOf, kAssignmentOf, kGateUp, kYp };
// Saved tensors of the losses node.
enum SavedLoss { kLossProbs, kLossLse, kLossCounts };

}  // namespace

MoeOutputs moe_swiglu(const Tensor& x_raw, const Tensor& router_raw, const Tensor& gate_raw, const Tensor& up_raw,
                      const Tensor& down_raw, const MoeOptions& options) {
  for (const Tensor* t : {&x_raw, &router_raw, &gate_raw, &up_raw, &down_raw})
    if (!t->defined()) detail::op_error(kOp, "x, router_weight, w_gate, w_up and w_down are required");
  if (x_raw.dim() != 2 || router_raw.dim() != 2 || gate_raw.dim() != 3)
    detail::op_error(kOp, "expects x (t, d), router_weight (e, d), w_gate / w_up (e, f, d), w_down (e, d, f); got " +
                              x_raw.str() + ", " + router_raw.str() + ", " + gate_raw.str());
  const int64_t t = x_raw.size(0), d = x_raw.size(1), e = router_raw.size(0), f = gate_raw.size(1);
  expect_shape(router_raw, {e, d}, "router_weight");
  expect_shape(gate_raw, {e, f, d}, "w_gate");
  expect_shape(up_raw, {e, f, d}, "w_up");
  expect_shape(down_raw, {e, d, f}, "w_down");
  const kernels::MoeShape s{t, e, options.top_k, options.normalize_topk};
  try {
    kernels::check_moe_shape(kOp, s);
  } catch (const kernels::KernelError& err) {
    detail::op_error(kOp, err.what());
  }
  if (d < 1 || f < 1) detail::op_error(kOp, "d and f must be positive; got x " + x_raw.str() + ", w_gate " + gate_raw.str());
  const kernels::MoeExpertShape es{e, d, f};

  const Device device = detail::common_device(kOp, {&x_raw, &router_raw, &gate_raw, &up_raw, &down_raw});
  detail::check_same_dtype(kOp, {&x_raw, &router_raw, &gate_raw, &up_raw, &down_raw});
  const DType dtype = x_raw.dtype();
  if (device.is_cuda() && dtype != DType::f32 && dtype != DType::bf16)
    detail::op_error(kOp, std::string("on the GPU x and the weights must be f32 or bf16, got ") + dtype_name(dtype));
  const Tensor x = x_raw.contiguous(), w_gate = gate_raw.contiguous(), w_up = up_raw.contiguous(),
               w_down = down_raw.contiguous();

  // Router logits (t, e): x's dtype on the CPU, f32 on the GPU (the product rounded to bf16 first,
  // as in HuggingFace's Mixtral and Jamba).
  Tensor logits = linear(x_raw, router_raw);
  if (device.is_cuda() && logits.dtype() != DType::f32) logits = cast(logits, DType::f32);
  logits = logits.contiguous();
  const DType rd = logits.dtype();  // router dtype

  const int64_t k = s.top_k, a = s.assignments();
  Tensor probs = Tensor::empty({t, e}, rd, device);          // (t, e)
  Tensor lse = Tensor::empty({t}, rd, device);               // (t)
  Tensor topk_index = Tensor::empty({t, k}, DType::i32, device);   // (t, k)
  Tensor topk_weight = Tensor::empty({t, k}, rd, device);          // (t, k)
  Tensor counts = Tensor::empty({e}, DType::i32, device);          // (e)
  Tensor offsets = Tensor::empty({e + 1}, DType::i32, device);     // (e + 1)
  Tensor row_of = Tensor::empty({a}, DType::i32, device);          // (a)
  Tensor assignment_of = Tensor::empty({a}, DType::i32, device);   // (a)
  Tensor mean_probs = Tensor::empty({e}, rd, device);              // (e)
  MoeOutputs result;
  result.aux_loss = Tensor::empty({}, rd, device);
  result.z_loss = Tensor::empty({}, rd, device);
  result.expert_counts = counts;
  result.out = Tensor::empty({t, d}, dtype, device);               // (t, d)

  if (device.is_cpu()) {
    detail::cpu_float_dispatch(kOp, dtype, [&](auto tag) {
      using T = decltype(tag);
      kernels::cpu::moe_router_forward<T>(s, ptr<T>(logits), mut<T>(probs), mut<T>(lse), mut<int32_t>(topk_index),
                                          mut<T>(topk_weight));
      kernels::cpu::moe_dispatch(s, ptr<int32_t>(topk_index), mut<int32_t>(counts), mut<int32_t>(offsets),
                                 mut<int32_t>(row_of), mut<int32_t>(assignment_of));
      kernels::cpu::moe_router_losses<T>(s, ptr<T>(probs), ptr<T>(lse), ptr<int32_t>(counts), mut<T>(mean_probs),
                                         mut<T>(result.aux_loss), mut<T>(result.z_loss));
    });
  } else {
#if SSMTRAIN_WITH_CUDA
    Tensor scratch = Tensor::empty({kernels::cuda::moe_dispatch_scratch_elems(s)}, DType::i32, device);
#else
    Tensor scratch;
#endif
    SSM_CUDA_BRANCH(x, {
      kernels::cuda::moe_router_forward(s, ptr<float>(logits), mut<float>(probs), mut<float>(lse),
                                        mut<int32_t>(topk_index), mut<float>(topk_weight), stream);
      kernels::cuda::moe_dispatch(s, ptr<int32_t>(topk_index), mut<int32_t>(counts), mut<int32_t>(offsets),
                                  mut<int32_t>(row_of), mut<int32_t>(assignment_of), mut<int32_t>(scratch), stream);
      kernels::cuda::moe_router_losses(s, ptr<float>(probs), ptr<float>(lse), ptr<int32_t>(counts),
                                       mut<float>(mean_probs), mut<float>(result.aux_loss), mut<float>(result.z_loss),
                                       stream);
    });
  }

  // The per-expert row ranges on the host: the GEMM sizes of this step (one synchronisation).
  const std::vector<int64_t> host_counts = counts.values<int64_t>();
  std::vector<int32_t> counts32(host_counts.begin(), host_counts.end());
  std::vector<int64_t> host_offsets(static_cast<size_t>(e + 1));
  kernels::moe_offsets_from_counts(e, counts32.data(), host_offsets.data());

  Tensor xp = Tensor::empty({a, d}, dtype, device);           // (a, d) expert-contiguous rows
  Tensor gate_up = Tensor::empty({a, 2 * f}, dtype, device);  // (a, 2f)
  Tensor act = Tensor::empty({a, f}, dtype, device);          // (a, f)
  Tensor yp = Tensor::empty({a, d}, dtype, device);           // (a, d)
  if (device.is_cpu()) {
    detail::cpu_float_dispatch(kOp, dtype, [&](auto tag) {
      using T = decltype(tag);
      kernels::cpu::moe_permute<T>(s, d, ptr<T>(x), ptr<int32_t>(assignment_of), mut<T>(xp));
      kernels::cpu::moe_experts_forward<T>(es, host_offsets.data(), ptr<T>(xp), ptr<T>(w_gate), ptr<T>(w_up),
                                           ptr<T>(w_down), mut<T>(gate_up), mut<T>(act), mut<T>(yp));
      kernels::cpu::moe_unpermute<T>(s, d, ptr<T>(yp), ptr<int32_t>(row_of), ptr<T>(topk_weight), mut<T>(result.out));
    });
  } else {
    SSM_CUDA_BRANCH(x, {
      kernels::cuda::moe_permute(s, d, dtype, x.data(), ptr<int32_t>(assignment_of), xp.data(), stream);
      kernels::cuda::moe_experts_forward(es, dtype, host_offsets.data(), xp.data(), w_gate.data(), w_up.data(),
                                         w_down.data(), gate_up.data(), act.data(), yp.data(), stream);
      kernels::cuda::moe_unpermute(s, d, dtype, yp.data(), ptr<int32_t>(row_of), ptr<float>(topk_weight),
                                   result.out.data(), stream);
    });
  }
  xp = Tensor();  // recomputed in the backward
  act = Tensor();

  // ---- losses node: logits -> (aux_loss, z_loss) ----
  attach_backward("moe_router_losses", {logits}, {&result.aux_loss, &result.z_loss}, {probs, lse, counts},
                  [s](const auto& g, const auto& sv) {
                    const Tensor& p = sv[kLossProbs];
                    Tensor dlogits = Tensor::empty(p.shape(), p.dtype(), p.device());
                    if (p.device().is_cpu()) {
                      detail::cpu_float_dispatch("moe_router_losses", p.dtype(), [&](auto tag) {
                        using T = decltype(tag);
                        kernels::cpu::moe_router_losses_backward<T>(s, ptr<T>(p), ptr<T>(sv[kLossLse]),
                                                                    ptr<int32_t>(sv[kLossCounts]), T(g[0].item()),
                                                                    T(g[1].item()), mut<T>(dlogits));
                      });
                    } else {
                      const Tensor daux = g[0].to(DType::f32).contiguous(), dz = g[1].to(DType::f32).contiguous();
                      SSM_CUDA_BRANCH(p, kernels::cuda::moe_router_losses_backward(
                                             s, ptr<float>(p), ptr<float>(sv[kLossLse]), ptr<int32_t>(sv[kLossCounts]),
                                             ptr<float>(daux), ptr<float>(dz), mut<float>(dlogits), stream));
                    }
                    return std::vector<Tensor>{dlogits};
                  });

  // ---- experts node: (logits, x, w_gate, w_up, w_down) -> out ----
  const std::vector<Tensor> inputs{logits, x_raw, gate_raw, up_raw, down_raw};
  const std::vector<Tensor> saved{x, w_gate, w_up, w_down, probs, topk_index, topk_weight, row_of, assignment_of,
                                  gate_up, yp};
  attach_backward("moe_experts", inputs, {&result.out}, saved, [s, es, host_offsets](const auto& g, const auto& sv) {
    const Tensor dout = g[0].contiguous();
    const Tensor& x = sv[kX];
    const Device dev = x.device();
    const DType dtype = x.dtype(), rd = sv[kProbs].dtype();
    const int64_t t = s.tokens, k = s.top_k, a = s.assignments(), d = es.d_model, f = es.d_ff, e = es.experts;
    Tensor dyp = Tensor::empty({a, d}, dtype, dev);          // (a, d)
    Tensor dweight = Tensor::empty({t, k}, rd, dev);         // (t, k)
    Tensor dlogits = Tensor::empty({t, e}, rd, dev);         // (t, e)
    Tensor xp = Tensor::empty({a, d}, dtype, dev);           // (a, d)
    Tensor act = Tensor::empty({a, f}, dtype, dev);          // (a, f) scratch
    Tensor dgate_up = Tensor::empty({a, 2 * f}, dtype, dev); // (a, 2f) scratch
    Tensor dxp = Tensor::empty({a, d}, dtype, dev);          // (a, d)
    Tensor dx = Tensor::empty({t, d}, dtype, dev);           // (t, d)
    Tensor dw_gate = Tensor::empty({e, f, d}, dtype, dev), dw_up = Tensor::empty({e, f, d}, dtype, dev),
           dw_down = Tensor::empty({e, d, f}, dtype, dev);
    if (dev.is_cpu()) {
      detail::cpu_float_dispatch("moe_experts", dtype, [&](auto tag) {
        using T = decltype(tag);
        kernels::cpu::moe_unpermute_backward<T>(s, d, ptr<T>(dout), ptr<T>(sv[kYp]), ptr<int32_t>(sv[kRowOf]),
                                                ptr<T>(sv[kWeight]), mut<T>(dyp), mut<T>(dweight));
        kernels::cpu::moe_router_backward<T>(s, ptr<T>(sv[kProbs]), ptr<int32_t>(sv[kIndex]), ptr<T>(sv[kWeight]),
                                             ptr<T>(dweight), mut<T>(dlogits));
        kernels::cpu::moe_permute<T>(s, d, ptr<T>(x), ptr<int32_t>(sv[kAssignmentOf]), mut<T>(xp));
        kernels::cpu::moe_experts_backward<T>(es, host_offsets.data(), ptr<T>(xp), ptr<T>(sv[kGate]), ptr<T>(sv[kUp]),
                                              ptr<T>(sv[kDown]), ptr<T>(sv[kGateUp]), ptr<T>(dyp), mut<T>(act),
                                              mut<T>(dgate_up), mut<T>(dxp), mut<T>(dw_gate), mut<T>(dw_up),
                                              mut<T>(dw_down));
        kernels::cpu::moe_permute_backward<T>(s, d, ptr<T>(dxp), ptr<int32_t>(sv[kRowOf]), mut<T>(dx));
      });
    } else {
      SSM_CUDA_BRANCH(x, {
        kernels::cuda::moe_unpermute_backward(s, d, dtype, dout.data(), sv[kYp].data(), ptr<int32_t>(sv[kRowOf]),
                                              ptr<float>(sv[kWeight]), dyp.data(), mut<float>(dweight), stream);
        kernels::cuda::moe_router_backward(s, ptr<float>(sv[kProbs]), ptr<int32_t>(sv[kIndex]),
                                           ptr<float>(sv[kWeight]), ptr<float>(dweight), mut<float>(dlogits), stream);
        kernels::cuda::moe_permute(s, d, dtype, x.data(), ptr<int32_t>(sv[kAssignmentOf]), xp.data(), stream);
        kernels::cuda::moe_experts_backward(es, dtype, host_offsets.data(), xp.data(), sv[kGate].data(),
                                            sv[kUp].data(), sv[kDown].data(), sv[kGateUp].data(), dyp.data(),
                                            act.data(), dgate_up.data(), dxp.data(), dw_gate.data(), dw_up.data(),
                                            dw_down.data(), stream);
        kernels::cuda::moe_permute_backward(s, d, dtype, dxp.data(), ptr<int32_t>(sv[kRowOf]), dx.data(), stream);
      });
    }
    return std::vector<Tensor>{dlogits, dx, dw_gate, dw_up, dw_down};
  });
  return result;
}

}  // namespace ssmtrain
