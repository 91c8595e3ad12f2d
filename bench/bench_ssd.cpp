// ssmtrain_bench_ssd [--out FILE.json] [--reps N]: times the Mamba-2 SSD (forward, and
// forward + backward) at the shapes of the SSD issue (bf16 x / dt / B / C / z, f32 A / D /
// dt_bias, softplus on, D and z given), and the gated RMSNorm that follows it, against this
// GPU's copy bandwidth and bf16 GEMM rate measured in the same run.
#include <fmt/core.h>

#include <string>

#include "bench/harness.h"
#include "kernels/gated_rmsnorm.h"
#include "kernels/philox.h"
#include "kernels/ssd.h"

namespace {

using namespace ssmtrain;
using bench::Bound;
using bench::DeviceBuffer;
using bench::Report;
using bench::Timer;

void bench_ssd(Report& report, Timer& timer, int64_t b, int64_t l, int64_t h, int64_t p, int64_t g, int64_t n,
               int64_t chunk) {
  cudaStream_t s = timer.stream();
  kernels::SsdShape shape;
  shape.batch = b;
  shape.seq_len = l;
  shape.n_heads = h;
  shape.head_dim = p;
  shape.d_state = n;
  shape.ngroups = g;
  shape.chunk_size = chunk;
  shape.dt_softplus = true;
  const int64_t nc = kernels::cuda::ssd_num_chunks(shape);
  const int64_t blhp = b * l * h * p, blh = b * l * h, blgn = b * l * g * n, states = b * nc * h * p * n;
  DeviceBuffer x(2 * blhp), dt(2 * blh), B(2 * blgn), C(2 * blgn), z(2 * blhp), out(2 * blhp);
  DeviceBuffer A(4 * h), D(4 * h), bias(4 * h), chunk_states(4 * states);
  DeviceBuffer dout(2 * blhp), dx(2 * blhp), ddt(2 * blh), dB(2 * blgn), dC(2 * blgn), dz(2 * blhp);
  DeviceBuffer dA(4 * h), dD(4 * h), dbias(4 * h);
  uint64_t seed = 1;
  for (DeviceBuffer* t : {&x, &z, &B, &C, &dout}) bench::fill_random(DType::bf16, t->get(), t->bytes() / 2, seed++, s);
  // dt around -1 before softplus and A = -exp(U(0, 2.7)) (the Mamba-2 init range 1..16).
  kernels::cuda::fill_normal(DType::bf16, dt.get(), blh, seed++, 0, -1.0f, 0.5f, s);
  kernels::cuda::fill_uniform(DType::f32, A.get(), h, seed++, 0, -16.0f, -1.0f, s);
  bench::fill_random(DType::f32, D.get(), h, seed++, s);
  kernels::cuda::fill_normal(DType::f32, bias.get(), h, seed++, 0, 0.0f, 0.1f, s);

  kernels::SsdArgs<void, float> args{x.get(), dt.get(), A.as<float>(), B.get(), C.get(), D.as<float>(),
                                     z.get(), bias.as<float>(), nullptr, nullptr};
  kernels::SsdGrads<void, float> grads{dout.get(), nullptr, dx.get(), ddt.get(), dA.as<float>(), dB.get(),
                                       dC.get(), dD.as<float>(), dz.get(), dbias.as<float>(), nullptr};
  auto forward = [&] {
    kernels::cuda::ssd_forward(shape, DType::bf16, args, out.get(), nullptr, chunk_states.as<float>(), s);
  };
  const std::string dims = fmt::format("b={} l={} h={} p={} g={} n={} chunk={}", b, l, h, p, g, n, chunk);
  // Traffic: forward reads x, z, dt, B, C and writes out and the chunk states; the backward
  // reads those inputs, dout and the chunk states and writes dx, dz, ddt, dB, dC.
  const double fwd_bytes = 2.0 * (3 * blhp + blh + 2 * blgn) + 4.0 * states;
  const double bwd_bytes = 2.0 * (6 * blhp + 2 * blh + 4 * blgn) + 4.0 * states;
  // Useful flops of the chunked form (causal halves counted once): C B^T per group and chunk
  // (Q^2 n), the masked scores times x per head (Q^2 p), the chunk state and the state's
  // output (2 Q p n each). The backward does about twice the forward's products.
  const double Q = static_cast<double>(chunk);
  const double fwd_flops = double(b) * nc * (g * Q * Q * n + h * (Q * Q * p + 4.0 * Q * p * n));
  report.measure("ssd forward bf16", dims, Bound::compute, fwd_bytes, fwd_flops, [&] { return timer.time(forward); });
  report.measure("ssd fwd+bwd bf16", dims, Bound::compute, fwd_bytes + bwd_bytes, 3 * fwd_flops, [&] {
    return timer.time([&] {
      forward();
      kernels::cuda::ssd_backward(shape, DType::bf16, args, grads, chunk_states.as<float>(), s);
    });
  });
}

void bench_norm(Report& report, Timer& timer, int64_t rows, int64_t d, int64_t group) {
  cudaStream_t s = timer.stream();
  const int64_t count = rows * d, ngroups = d / group;
  DeviceBuffer y(2 * count), z(2 * count), w(2 * d), out(2 * count), rstd(4 * rows * ngroups);
  DeviceBuffer dout(2 * count), dy(2 * count), dz(2 * count), dw(2 * d);
  uint64_t seed = 11;
  for (DeviceBuffer* t : {&y, &z, &w, &dout}) bench::fill_random(DType::bf16, t->get(), t->bytes() / 2, seed++, s);
  auto forward = [&] {
    kernels::cuda::gated_rmsnorm_forward(DType::bf16, y.get(), z.get(), w.get(), rows, d, group, 1e-5, out.get(),
                                         rstd.as<float>(), s);
  };
  const std::string dims = fmt::format("rows={} d={} group={}", rows, d, group);
  const double fwd_bytes = 2.0 * 3 * count + 4.0 * rows * ngroups;
  const double bwd_bytes = 2.0 * 5 * count + 4.0 * rows * ngroups;
  report.measure("gated_rmsnorm forward bf16", dims, Bound::memory, fwd_bytes, 0, [&] { return timer.time(forward); });
  forward();
  report.measure("gated_rmsnorm backward bf16", dims, Bound::memory, bwd_bytes, 0, [&] {
    return timer.time([&] {
      kernels::cuda::gated_rmsnorm_backward(DType::bf16, y.get(), z.get(), w.get(), rstd.as<float>(), dout.get(),
                                            rows, d, group, dy.get(), dz.get(), dw.get(), s);
    });
  });
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "ssd", "Times the Mamba-2 SSD and gated RMSNorm against this GPU's ceilings",
                           [](Report& report, Timer& timer) {
                             bench_ssd(report, timer, 8, 2048, 24, 64, 1, 128, 256);
                             bench_ssd(report, timer, 2, 8192, 24, 64, 1, 128, 256);
                             bench_norm(report, timer, 16384, 3072, 3072);
                             bench_norm(report, timer, 16384, 3072, 256);
                           });
}
