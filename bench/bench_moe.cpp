// ssmtrain_bench_moe [--out FILE.json] [--reps N]: times the MoE layer (moe_swiglu, router +
// dispatch + expert SwiGLU + combine, forward + backward through the autograd tape) at the
// shape of the MoE issue (16384 tokens, d_model 768, expert hidden 1536, 16 experts, top-2,
// bf16), and the expert GEMM part alone with each GEMM mode, against this GPU's bf16 GEMM rate.
// bench/pytorch/moe.py times a plain PyTorch loop over experts at the same shape.
#include <fmt/core.h>

#include "autograd/moe_ops.h"
#include "autograd/node.h"
#include "autograd/rng.h"
#include "autograd/stream.h"
#include "bench/harness.h"
#include "kernels/moe.h"

namespace {

using namespace ssmtrain;
using bench::Bound;
using bench::DeviceBuffer;
using bench::Report;
using bench::Timer;

void bench_layer(Report& report, Timer& harness_timer, int64_t t, int64_t d, int64_t f, int64_t e, int64_t k) {
  const Device gpu = Device::cuda(0);
  // The op runs on the current stream of cuda:0; time on that stream.
  Timer timer(current_stream(0), harness_timer.warmups(), harness_timer.reps());
  Generator gen(1234);
  const float std_w = 1.0f / std::sqrt(float(d));
  Tensor x = Tensor::randn({t, d}, gen, DType::bf16, gpu);
  Tensor router = Tensor::randn({e, d}, gen, DType::bf16, gpu, 0.0f, std_w);
  Tensor w_gate = Tensor::randn({e, f, d}, gen, DType::bf16, gpu, 0.0f, std_w);
  Tensor w_up = Tensor::randn({e, f, d}, gen, DType::bf16, gpu, 0.0f, std_w);
  Tensor w_down = Tensor::randn({e, d, f}, gen, DType::bf16, gpu, 0.0f, 1.0f / std::sqrt(float(f)));
  Tensor dout = Tensor::randn({t, d}, gen, DType::bf16, gpu);
  Tensor one = Tensor::full({}, 1.0, DType::f32, gpu);
  for (Tensor* p : {&x, &router, &w_gate, &w_up, &w_down}) p->set_requires_grad(true);
  const MoeOptions options{k, false};

  const std::string dims = fmt::format("t={} d={} f={} e={} k={}", t, d, f, e, k);
  const double a = double(t * k);
  // Expert GEMMs: forward 3 products of 2 a d f; backward 6. Router: 3 products of 2 t d e.
  const double fwd_flops = 6.0 * a * d * f + 2.0 * t * d * e;
  const double all_flops = 18.0 * a * d * f + 6.0 * t * d * e;
  report.measure("moe_swiglu forward bf16", dims, Bound::compute, 0, fwd_flops, [&] {
    return timer.time([&] {
      NoGradGuard no_grad;
      moe_swiglu(x, router, w_gate, w_up, w_down, options);
    });
  });
  report.measure("moe_swiglu fwd+bwd bf16", dims, Bound::compute, 0, all_flops, [&] {
    return timer.time([&] {
      MoeOutputs o = moe_swiglu(x, router, w_gate, w_up, w_down, options);
      run_backward({o.out, o.aux_loss, o.z_loss}, {dout, one, one});
      for (Tensor* p : {&x, &router, &w_gate, &w_up, &w_down}) p->zero_grad();
    });
  });
  MoeOutputs o = moe_swiglu(x, router, w_gate, w_up, w_down, options);
  const auto counts = o.expert_counts.values<int64_t>();
  std::string count_text;
  for (int64_t c : counts) count_text += fmt::format("{} ", c);
  fmt::print("expert counts: {}\n", count_text);

  // The expert SwiGLU alone (kernels), per GEMM mode, on balanced rows.
  const kernels::MoeExpertShape es{e, d, f};
  std::vector<int64_t> offsets(e + 1);
  for (int64_t g = 0; g <= e; ++g) offsets[g] = int64_t(a) * g / e;
  cudaStream_t s = timer.stream();
  const int64_t rows = int64_t(a);
  DeviceBuffer xp(2 * rows * d), gate_up(4 * rows * f), act(2 * rows * f), yp(2 * rows * d), dyp(2 * rows * d),
      dgate_up(4 * rows * f), dxp(2 * rows * d), dwg(2 * e * f * d), dwu(2 * e * f * d), dwd(2 * e * d * f);
  bench::fill_random(DType::bf16, xp.get(), rows * d, 1, s);
  bench::fill_random(DType::bf16, dyp.get(), rows * d, 2, s);
  for (auto mode : {kernels::cuda::MoeGemm::grouped, kernels::cuda::MoeGemm::per_expert}) {
    const char* name = mode == kernels::cuda::MoeGemm::grouped ? "grouped" : "per_expert";
    report.measure(fmt::format("experts fwd+bwd bf16 ({})", name), dims, Bound::compute, 0, 18.0 * a * d * f, [&] {
      return timer.time([&] {
        kernels::cuda::moe_experts_forward(es, DType::bf16, offsets.data(), xp.get(), w_gate.data(), w_up.data(),
                                           w_down.data(), gate_up.get(), act.get(), yp.get(), s, mode);
        kernels::cuda::moe_experts_backward(es, DType::bf16, offsets.data(), xp.get(), w_gate.data(), w_up.data(),
                                            w_down.data(), gate_up.get(), dyp.get(), act.get(), dgate_up.get(),
                                            dxp.get(), dwg.get(), dwu.get(), dwd.get(), s, mode);
      });
    });
    // As in training: the expert sizes change every call (never seen before), so per-size
    // caches (the cuBLASLt heuristic of kernels/gemm.h) miss.
    int64_t call = 0;
    report.measure(fmt::format("experts fwd+bwd bf16 ({}, new sizes each call)", name), dims, Bound::compute, 0,
                   18.0 * a * d * f, [&] {
                     return timer.time([&] {
                       ++call;
                       std::vector<int64_t> moved(offsets);
                       for (int64_t g = 1; g < e; ++g) moved[g] += (call * 37 + g * 11) % 97 - 48;
                       kernels::cuda::moe_experts_forward(es, DType::bf16, moved.data(), xp.get(), w_gate.data(),
                                                          w_up.data(), w_down.data(), gate_up.get(), act.get(),
                                                          yp.get(), s, mode);
                       kernels::cuda::moe_experts_backward(es, DType::bf16, moved.data(), xp.get(), w_gate.data(),
                                                           w_up.data(), w_down.data(), gate_up.get(), dyp.get(),
                                                           act.get(), dgate_up.get(), dxp.get(), dwg.get(), dwu.get(),
                                                           dwd.get(), s, mode);
                     });
                   });
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "moe", "Times the mixture-of-experts layer against this GPU's bf16 GEMM rate",
                           [](Report& report, Timer& timer) { bench_layer(report, timer, 16384, 768, 1536, 16, 2); });
}
