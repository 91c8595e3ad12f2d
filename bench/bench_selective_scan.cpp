// ssmtrain_bench_selective_scan [--out FILE.json] [--reps N]: times the Mamba-1 selective scan, forward
// and forward + backward, at the shapes of the selective-scan issue (bf16 u / delta / z /
// B / C, f32 A / D / delta_bias, softplus on), against this GPU's copy bandwidth.
#include <fmt/core.h>

#include "bench/harness.h"
#include "kernels/philox.h"
#include "kernels/selective_scan.h"

namespace {

using namespace ssmtrain;
using bench::Bound;
using bench::DeviceBuffer;
using bench::Report;
using bench::Timer;

void bench_selective_scan(Report& report, Timer& timer, int64_t b, int64_t d, int64_t l, int64_t n) {
  cudaStream_t s = timer.stream();
  const int64_t bdl = b * d * l, bnl = b * n * l;
  DeviceBuffer u(2 * bdl), delta(2 * bdl), z(2 * bdl), out(2 * bdl), B(2 * bnl), C(2 * bnl);
  DeviceBuffer A(4 * d * n), D(4 * d), bias(4 * d);
  DeviceBuffer dout(2 * bdl), du(2 * bdl), ddelta(2 * bdl), dz(2 * bdl), dB(2 * bnl), dC(2 * bnl);
  DeviceBuffer dA(4 * d * n), dD(4 * d), dbias(4 * d);
  kernels::ScanShape shape{b, d, l, n, 1, true};
  DeviceBuffer chunk_states(4 * b * d * n * kernels::cuda::selective_scan_num_chunks(shape));
  uint64_t seed = 1;
  for (DeviceBuffer* x : {&u, &z, &B, &C, &dout}) bench::fill_random(DType::bf16, x->get(), x->bytes() / 2, seed++, s);
  // delta around -1 before softplus, A negative (S4D-like): realistic decays.
  kernels::cuda::fill_normal(DType::bf16, delta.get(), bdl, seed++, 0, -1.0f, 0.5f, s);
  kernels::cuda::fill_uniform(DType::f32, A.get(), d * n, seed++, 0, -8.0f, -0.5f, s);
  bench::fill_random(DType::f32, D.get(), d, seed++, s);
  kernels::cuda::fill_normal(DType::f32, bias.get(), d, seed++, 0, 0.0f, 0.1f, s);

  kernels::ScanArgs<void, float> args{u.get(), delta.get(), A.as<float>(), B.get(), C.get(),
                                      D.as<float>(), z.get(), bias.as<float>(), nullptr, nullptr};
  kernels::ScanGrads<void, float> grads{dout.get(), nullptr, du.get(), ddelta.get(), dA.as<float>(),
                                        dB.get(), dC.get(), dD.as<float>(), dz.get(), dbias.as<float>(), nullptr};
  auto forward = [&] {
    kernels::cuda::selective_scan_forward(shape, DType::bf16, args, out.get(), nullptr, chunk_states.as<float>(), s);
  };
  const std::string dims = fmt::format("b={} d={} l={} n={}", b, d, l, n);
  // Forward: reads u, delta, z, B, C; writes out. Backward adds: reads u, delta, z, B, C,
  // dout; writes du, ddelta, dz, dB, dC.
  const double fwd_bytes = 2.0 * (4 * bdl + 2 * bnl);
  const double bwd_bytes = 2.0 * (7 * bdl + 4 * bnl);
  report.measure("selective_scan forward bf16", dims, Bound::memory, fwd_bytes, 0,
                 [&] { return timer.time(forward); });
  report.measure("selective_scan fwd+bwd bf16", dims, Bound::memory, fwd_bytes + bwd_bytes, 0, [&] {
    return timer.time([&] {
      forward();
      kernels::cuda::selective_scan_backward(shape, DType::bf16, args, grads, chunk_states.as<float>(), s);
    });
  });
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "scan", "Times the Mamba-1 selective scan against this GPU's ceilings",
                           [](Report& report, Timer& timer) {
                             bench_selective_scan(report, timer, 8, 1536, 2048, 16);
                             bench_selective_scan(report, timer, 2, 1536, 8192, 16);
                             // Long context at batch 1: the same tokens per call as b=8 l=2048 at 2x.
                             bench_selective_scan(report, timer, 1, 1536, 32768, 16);
                           });
}
