// ssmtrain_bench_causal_conv1d [--out FILE.json] [--reps N]: times the causal depthwise conv1d,
// forward, backward and forward + backward, at the shape of the Mamba-1 kernels issue
// (b=8, d=3072, l=2048, width 4, bf16 x, f32 weight / bias, SiLU), against this GPU's
// copy bandwidth; also with a document index, whose (b, l) reads are counted too; and the
// channel-last form at mamba2-130m's xBC shape (2048 x 8 and 32768 x 1) beside its channel-major twin.
#include <fmt/core.h>

#include <algorithm>
#include <vector>

#include "bench/harness.h"
#include "kernels/causal_conv1d.h"
#include "kernels/philox.h"

namespace {

using namespace ssmtrain;
using bench::Bound;
using bench::DeviceBuffer;
using bench::Report;
using bench::Timer;

// channel_last: x is read as (b, l, d) columns of a wider row of x_stride elements (Mamba-2's xBC
// slice of the in_proj output), out and the gradients are dense (b, l, d).
void bench_causal_conv1d(Report& report, Timer& timer, int64_t b, int64_t d, int64_t l, int64_t w, bool docs,
                         bool channel_last = false, int64_t x_stride = 0) {
  cudaStream_t s = timer.stream();
  const int64_t bdl = b * d * l;
  DeviceBuffer x(2 * b * l * std::max(d, x_stride)), out(2 * bdl), dout(2 * bdl), dx(2 * bdl);
  DeviceBuffer weight(4 * d * w), bias(4 * d), dweight(4 * d * w), dbias(4 * d);
  DeviceBuffer doc(4 * b * l);
  uint64_t seed = 1;
  for (DeviceBuffer* t : {&x, &dout}) bench::fill_random(DType::bf16, t->get(), t->bytes() / 2, seed++, s);
  kernels::cuda::fill_normal(DType::f32, weight.get(), d * w, seed++, 0, 0.0f, 0.5f, s);
  bench::fill_random(DType::f32, bias.get(), d, seed++, s);
  // Documents of 512 tokens: a realistic packing, boundaries inside every row.
  std::vector<int32_t> doc_host(b * l);
  for (int64_t i = 0; i < b * l; ++i) doc_host[i] = static_cast<int32_t>((i % l) / 512 + 100 * (i / l));
  BENCH_CUDA_CHECK(cudaMemcpy(doc.get(), doc_host.data(), 4 * b * l, cudaMemcpyHostToDevice));

  kernels::Conv1dShape shape{b, d, l, w, true};
  shape.channel_last = channel_last;
  shape.x_stride = channel_last ? x_stride : 0;
  const kernels::Conv1dArgs<void, float> args{x.get(), weight.as<float>(), bias.as<float>(), nullptr,
                                              docs ? doc.as<int32_t>() : nullptr};
  const kernels::Conv1dGrads<void, float> grads{dout.get(), dx.get(), dweight.as<float>(), dbias.as<float>(), nullptr};
  auto forward = [&] { kernels::cuda::causal_conv1d_forward(shape, DType::bf16, args, out.get(), nullptr, s); };
  auto backward = [&] { kernels::cuda::causal_conv1d_backward(shape, DType::bf16, args, grads, s); };

  const std::string dims = fmt::format("b={} d={} l={} w={}{}{}", b, d, l, w, docs ? " docs" : "",
                                       channel_last ? fmt::format(" channel-last x_stride={}", x_stride) : "");
  // Forward reads x, writes out; backward reads x and dout, writes dx. Weights, bias, their
  // gradients and the document index are counted once per pass.
  const double small = 4.0 * (2 * d * w + 2 * d) + (docs ? 4.0 * b * l : 0.0);
  const double fwd_bytes = 2.0 * 2 * bdl + small;
  const double bwd_bytes = 2.0 * 3 * bdl + small;
  const std::string suffix = docs ? " bf16 silu docs" : " bf16 silu";
  report.measure("causal_conv1d forward" + suffix, dims, Bound::memory, fwd_bytes, 0,
                 [&] { return timer.time(forward); });
  report.measure("causal_conv1d backward" + suffix, dims, Bound::memory, bwd_bytes, 0,
                 [&] { return timer.time(backward); });
  report.measure("causal_conv1d fwd+bwd" + suffix, dims, Bound::memory, fwd_bytes + bwd_bytes, 0, [&] {
    return timer.time([&] {
      forward();
      backward();
    });
  });
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "conv1d", "Times the causal depthwise conv1d against this GPU's ceilings",
                           [](Report& report, Timer& timer) {
                             bench_causal_conv1d(report, timer, 8, 3072, 2048, 4, false);
                             bench_causal_conv1d(report, timer, 8, 3072, 2048, 4, true);
                             // mamba2-130m: xBC = 1536 + 2 x 128 channels inside in_proj rows of
                             // 2 x 1536 + 2 x 128 + 24 = 3352; at 2048 x 8 and 32768 x 1.
                             bench_causal_conv1d(report, timer, 8, 1792, 2048, 4, false, true, 3352);
                             bench_causal_conv1d(report, timer, 8, 1792, 2048, 4, true, true, 3352);
                             bench_causal_conv1d(report, timer, 1, 1792, 32768, 4, true, true, 3352);
                             bench_causal_conv1d(report, timer, 8, 1792, 2048, 4, true);  // the same shape channel-major
                           });
}
