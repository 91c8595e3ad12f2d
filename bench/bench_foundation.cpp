// ssmtrain_bench_foundation [--out FILE.json] [--reps N]: times the foundation CUDA kernels
// (GEMM, RMSNorm, cross-entropy, SiLU, softmax, the mixers' layout-changing copies) at LLM-sized shapes and reports each as a
// fraction of this GPU's copy bandwidth or bf16 GEMM rate, measured in the same run.
#include <fmt/core.h>

#include <cstdint>
#include <exception>
#include <initializer_list>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "kernels/copy.h"
#include "kernels/cross_entropy.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/norm.h"
#include "kernels/philox.h"
#include "kernels/reduce.h"

namespace {

using namespace ssmtrain;
using bench::Bound;
using bench::DeviceBuffer;
using bench::Report;
using bench::Timer;
using bench::Timing;

constexpr double kBf16 = 2;
constexpr double kF32 = 4;

// ---- GEMM: a cube and the four products of a d_model = 768 feed-forward (d_ff = 3072) over
// 8192 tokens, with weights stored (out, in) as a Linear layer keeps them ----

void bench_gemm(Report& report, Timer& timer, const std::string& name, int64_t m, int64_t n,
                int64_t k, bool trans_a, bool trans_b, const std::string& role) {
  const std::string shape = fmt::format("m={} n={} k={}{}", m, n, k, role);
  const double bytes = kBf16 * static_cast<double>(m * k + k * n + m * n);
  const double flops = 2.0 * static_cast<double>(m) * n * k;
  report.measure(name, shape, Bound::compute, bytes, flops, [&] {
    return bench::time_gemm_bf16(timer, bench::packed_gemm(m, n, k, trans_a, trans_b));
  });
}

void bench_gemms(Report& report, Timer& timer) {
  bench_gemm(report, timer, "gemm bf16", 4096, 4096, 4096, false, false, "");
  bench_gemm(report, timer, "gemm bf16 ffn_up", 8192, 3072, 768, false, true, " (x W^T)");
  bench_gemm(report, timer, "gemm bf16 ffn_down", 8192, 768, 3072, false, true, " (h W^T)");
  bench_gemm(report, timer, "gemm bf16 ffn_up dgrad", 8192, 768, 3072, false, false, " (dy W)");
  bench_gemm(report, timer, "gemm bf16 ffn_up wgrad", 3072, 768, 8192, true, false, " (dy^T x)");
}

// ---- RMSNorm (rows, d) in bf16 ----

void bench_rmsnorm(Report& report, Timer& timer) {
  const int64_t rows = 16384, d = 768;
  const std::string shape = fmt::format("{}x{}", rows, d);
  const double row_bytes = kBf16 * static_cast<double>(rows * d);
  cudaStream_t s = timer.stream();

  DeviceBuffer x(rows * d * 2), weight(d * 2), y(rows * d * 2), rstd(rows * 4);
  DeviceBuffer dy(rows * d * 2), dx(rows * d * 2), dweight(d * 2);
  bench::fill_random(DType::bf16, x.get(), rows * d, 10, s);
  bench::fill_random(DType::bf16, weight.get(), d, 11, s);
  bench::fill_random(DType::bf16, dy.get(), rows * d, 12, s);

  // Reads x and weight, writes y and rstd.
  report.measure("rmsnorm_forward bf16", shape, Bound::memory,
                 2 * row_bytes + kBf16 * d + kF32 * rows, 0, [&] {
                   return timer.time([&] {
                     kernels::cuda::rmsnorm_forward(DType::bf16, x.get(), weight.get(), rows, d,
                                                    1e-5, y.get(), rstd.as<float>(), s);
                   });
                 });
  // Reads x, weight, rstd and dy, writes dx and dweight.
  report.measure("rmsnorm_backward bf16", shape, Bound::memory,
                 3 * row_bytes + 2 * kBf16 * d + kF32 * rows, 0, [&] {
                   return timer.time([&] {
                     kernels::cuda::rmsnorm_backward(DType::bf16, x.get(), weight.get(),
                                                     rstd.as<float>(), dy.get(), rows, d, dx.get(),
                                                     dweight.get(), s);
                   });
                 });
}

// ---- cross-entropy of logits (n, vocab) in bf16 against i32 targets ----

void bench_cross_entropy(Report& report, Timer& timer) {
  const int64_t n = 16384, vocab = 32000, ignore_index = -100;
  const std::string shape = fmt::format("{}x{}", n, vocab);
  const double logit_bytes = kBf16 * static_cast<double>(n * vocab);
  cudaStream_t s = timer.stream();

  DeviceBuffer logits(n * vocab * 2), dlogits(n * vocab * 2), targets(n * 4), lse(n * 4);
  DeviceBuffer result(2 * 4), dloss(4);
  bench::fill_random(DType::bf16, logits.get(), n * vocab, 20, s);
  // Targets from the same Philox stream on the host: uniform over the vocabulary.
  std::vector<int32_t> host_targets(n);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = kernels::philox_block(/*seed=*/21, i / 4).v[i % 4];
    host_targets[i] = static_cast<int32_t>(bits % static_cast<uint32_t>(vocab));
  }
  BENCH_CUDA_CHECK(cudaMemcpyAsync(targets.get(), host_targets.data(), targets.bytes(),
                                   cudaMemcpyHostToDevice, s));
  kernels::cuda::fill(DType::f32, dloss.get(), 1, 1.0, s);
  BENCH_CUDA_CHECK(cudaStreamSynchronize(s));  // host_targets may go out of scope after this

  // Reads logits and targets, writes lse and (loss, count).
  report.measure("cross_entropy_forward bf16", shape, Bound::memory,
                 logit_bytes + kF32 * n + kF32 * n + 2 * kF32, 0, [&] {
                   return timer.time([&] {
                     kernels::cuda::cross_entropy_forward(DType::bf16, logits.get(), DType::i32,
                                                          targets.get(), n, vocab, ignore_index,
                                                          lse.as<float>(), result.as<float>(), s);
                   });
                 });
  // Reads logits, targets and lse, writes dlogits.
  report.measure("cross_entropy_backward bf16", shape, Bound::memory,
                 2 * logit_bytes + 2 * kF32 * n, 0, [&] {
                   return timer.time([&] {
                     kernels::cuda::cross_entropy_backward(
                         DType::bf16, logits.get(), DType::i32, targets.get(), n, vocab,
                         ignore_index, lse.as<float>(), dloss.as<float>(), result.as<float>(),
                         dlogits.get(), s);
                   });
                 });
}

// ---- SiLU over a flat bf16 buffer ----

void bench_silu(Report& report, Timer& timer) {
  const int64_t n = int64_t{64} << 20;
  cudaStream_t s = timer.stream();
  DeviceBuffer x(n * 2), y(n * 2);
  bench::fill_random(DType::bf16, x.get(), n, 30, s);
  report.measure("unary_forward silu bf16", "64Mi elements", Bound::memory, 2 * kBf16 * n, 0,
                 [&] {
                   return timer.time([&] {
                     kernels::cuda::unary_forward(kernels::UnaryOp::silu, DType::bf16, x.get(),
                                                  y.get(), n, s);
                   });
                 });
}

// ---- softmax over the last dimension of an f32 (rows, n) matrix ----

void bench_softmax(Report& report, Timer& timer) {
  const int64_t rows = 4096, n = 4096;
  cudaStream_t s = timer.stream();
  DeviceBuffer x(rows * n * 4), y(rows * n * 4);
  bench::fill_random(DType::f32, x.get(), rows * n, 40, s);
  report.measure("softmax_forward f32", fmt::format("{}x{}", rows, n), Bound::memory,
                 2 * kF32 * static_cast<double>(rows * n), 0, [&] {
                   return timer.time([&] {
                     kernels::cuda::softmax_forward(DType::f32, x.get(), rows, n, /*inner=*/1,
                                                    y.get(), /*log=*/false, s);
                   });
                 });
}

// ---- layout changes of the Mamba mixers: copy_strided between (b, l, c) and (b, c, l) ----

// mamba2-130m at 8 x 2048: the conv1d's input, the xBC columns of the in_proj output
// (b, l, 3864) read as (b, c, l) with c = 1792, and the conv output (b, c, l) back to (b, l, c).
void bench_transposes(Report& report, Timer& timer) {
  const int64_t b = 8, l = 2048, c = 1792, row = 3864, first = 1536;
  cudaStream_t s = timer.stream();
  DeviceBuffer projected(b * l * row * 2), channels(b * c * l * 2), tokens(b * l * c * 2);
  bench::fill_random(DType::bf16, projected.get(), b * l * row, 50, s);
  const auto layout = [](std::initializer_list<int64_t> shape, std::initializer_list<int64_t> strides) {
    kernels::Layout out;
    for (int64_t v : shape) out.shape[out.ndim++] = v;
    int d = 0;
    for (int64_t v : strides) out.strides[d++] = v;
    return out;
  };
  const kernels::Layout slice_as_bcl = layout({b, c, l}, {l * row, 1, row});
  const kernels::Layout contiguous_bcl = layout({b, c, l}, {c * l, l, 1});
  const kernels::Layout bcl_as_blc = layout({b, c, l}, {l * c, 1, c});
  const double bytes = 2 * kBf16 * static_cast<double>(b * c * l);
  const std::string shape = fmt::format("b={} l={} c={} bf16", b, l, c);
  report.measure("copy_strided (b, l, c) slice -> (b, c, l)", shape, Bound::memory, bytes, 0, [&] {
    return timer.time([&] {
      kernels::cuda::copy_strided(projected.as<uint16_t>() + first, slice_as_bcl, channels.get(), contiguous_bcl, 2, s);
    });
  });
  report.measure("copy_strided (b, c, l) -> (b, l, c)", shape, Bound::memory, bytes, 0, [&] {
    return timer.time(
        [&] { kernels::cuda::copy_strided(channels.get(), contiguous_bcl, tokens.get(), bcl_as_blc, 2, s); });
  });
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "foundation",
                           "Times the foundation CUDA kernels against this GPU's own ceilings",
                           [](Report& report, Timer& timer) {
                             bench_gemms(report, timer);
                             bench_rmsnorm(report, timer);
                             bench_cross_entropy(report, timer);
                             bench_silu(report, timer);
                             bench_softmax(report, timer);
                             bench_transposes(report, timer);
                           });
}
