// ssmtrain_bench_attention [--out FILE.json] [--reps N]: times causal bf16 attention, forward and
// forward + backward, through cuDNN's fused SDPA and through the flash-style fallback kernels,
// at the shapes of the attention issue, against this GPU's bf16 GEMM rate.
// bench/pytorch/attention.py times torch's scaled_dot_product_attention at the same shapes.
#include <fmt/core.h>

#include "bench/harness.h"
#include "kernels/attention.h"

namespace {

using namespace ssmtrain;
using bench::Bound;
using bench::DeviceBuffer;
using bench::Report;
using bench::Timer;
using kernels::cuda::AttentionBackend;

void bench_attention(Report& report, Timer& timer, int64_t b, int64_t h, int64_t l, int64_t dh) {
  cudaStream_t s = timer.stream();
  const int64_t n = b * l * h * dh;  // q, k, v, out and their gradients: (b, l, h, dh), MHA
  DeviceBuffer q(2 * n), k(2 * n), v(2 * n), out(2 * n), dout(2 * n), dq(2 * n), dk(2 * n), dv(2 * n);
  DeviceBuffer lse(4 * b * h * l);
  uint64_t seed = 1;
  for (DeviceBuffer* x : {&q, &k, &v, &dout}) bench::fill_random(DType::bf16, x->get(), n, seed++, s);
  const kernels::AttentionShape shape{b, l, h, h, dh, 0.0};
  const std::string dims = fmt::format("b={} h={} l={} dh={} causal", b, h, l, dh);
  // Causal: half of the l x l scores. Forward: 2 matmuls of 2 l^2 dh flops; backward: 5.
  const double fwd_flops = 2.0 * 2.0 * double(b) * h * l * l * dh / 2.0;
  const double bwd_flops = 2.5 * fwd_flops;
  for (AttentionBackend backend : {AttentionBackend::cudnn, AttentionBackend::fallback}) {
    const std::string tag = backend == AttentionBackend::cudnn ? "cudnn" : "fallback";
    auto forward = [&] {
      kernels::cuda::attention_forward(shape, DType::bf16, q.get(), k.get(), v.get(), nullptr, out.get(),
                                       lse.as<float>(), s, backend);
    };
    auto backward = [&] {
      kernels::cuda::attention_backward(shape, DType::bf16, q.get(), k.get(), v.get(), nullptr, out.get(),
                                        lse.as<float>(), dout.get(), dq.get(), dk.get(), dv.get(), s, backend);
    };
    report.measure("attention forward bf16 " + tag, dims, Bound::compute, 8.0 * n, fwd_flops,
                   [&] { return timer.time(forward); });
    report.measure("attention fwd+bwd bf16 " + tag, dims, Bound::compute, 2.0 * 11 * n, fwd_flops + bwd_flops,
                   [&] {
                     return timer.time([&] {
                       forward();
                       backward();
                     });
                   });
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "attention", "Times causal attention (cuDNN and fallback) against this GPU's ceilings",
                           [](Report& report, Timer& timer) {
                             bench_attention(report, timer, 8, 12, 2048, 64);
                             bench_attention(report, timer, 2, 12, 8192, 64);
                           });
}
