// ssmtrain_bench_model [--out FILE.json] [--reps N]: one training step's forward + backward
// of a Mamba-1 language model (mamba1-130m: d_model 768, 24 layers, vocab 50280) in bf16
// with f32 master weights, at (8 x 2048) tokens: milliseconds, tokens/s, MFU against the bf16
// GEMM ceiling measured in the same run, and peak GPU memory.
#include <fmt/core.h>

#include "autograd/allocator.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/stream.h"
#include "bench/harness.h"
#include "layers/model.h"

namespace {

using namespace ssmtrain;

void bench_step(bench::Report& report, bench::Timer& timer, int64_t batch, int64_t seq_len) {
  ModelOptions o;
  o.config.family = configs::Family::mamba1;
  o.config.vocab_size = 50280;
  o.config.d_model = 768;
  o.config.n_layers = 24;
  LanguageModel model(o, 1);
  model.to(Device::cuda(0));
  Generator gen(2);
  // Uniform random tokens.
  std::vector<int64_t> tokens(static_cast<size_t>(batch * (seq_len + 1)));
  const std::vector<float> u = Tensor::rand({batch * (seq_len + 1)}, gen).to_vector();
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = int64_t(u[i] * float(o.config.vocab_size - 1));
  std::vector<int64_t> x, y;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq_len; ++t) {
      x.push_back(tokens[b * (seq_len + 1) + t]);
      y.push_back(tokens[b * (seq_len + 1) + t + 1]);
    }
  const Tensor inputs = Tensor::from_vector(x, {batch, seq_len}).to(Device::cuda(0));
  const Tensor targets = Tensor::from_vector(y, {batch, seq_len}).to(Device::cuda(0));
  // The step runs on ssmtrain's current stream; the timer's events are on its own stream, so
  // make the timer's stream the current one.
  StreamGuard stream_guard(0, timer.stream());
  auto step = [&] {
    model.zero_grad();
    Tensor loss = model.loss(inputs, targets, Tensor(), DType::bf16);
    loss.backward();
  };
  step();
  synchronize(0);
  reset_peak_memory(0);
  const double tokens_per_step = double(batch * seq_len);
  const std::string shape = fmt::format("b={} l={} d=768 layers=24 vocab=50280 ({:.1f}M params)", batch, seq_len,
                                        double(model.num_parameters()) / 1e6);
  report.measure("mamba1-130m fwd+bwd bf16", shape, bench::Bound::compute, 0,
                 training_flops_per_token(o, seq_len) * tokens_per_step, [&] { return timer.time(step); });
  const MemoryStats mem = cuda_memory_stats(0);
  fmt::print("peak memory {:.2f} GiB (reserved {:.2f} GiB)\n", double(mem.peak_allocated) / (1 << 30),
             double(mem.reserved) / (1 << 30));
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "model", "Times a Mamba-1 training step's forward and backward",
                           [](bench::Report& report, bench::Timer& timer) { bench_step(report, timer, 8, 2048); });
}
