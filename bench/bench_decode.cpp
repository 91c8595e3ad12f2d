// ssmtrain_bench_decode --recipe FILE [--set key=value ...] [--batch 1,16] [--context 1024,8192]
//                       [--new-tokens 256] [--out FILE.json]
// Generation speed of a recipe's model (random weights from run.seed, bf16 compute on the GPU):
// for every batch x context, a prompt of `context` random tokens per sequence is prefilled and
// `new-tokens` tokens are generated greedily through the recurrent state / KV cache. Reports
// wall-clock tokens/s with the prefill included (as the reference's cached generation counts
// it) and of the decode steps alone, and the peak GPU memory of the generation.
#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <optional>

#include "autograd/allocator.h"
#include "autograd/device.h"
#include "autograd/stream.h"
#include "bench/harness.h"
#include "configs/load.h"
#include "eval/generate.h"
#include "kernels/philox.h"
#include "layers/from_config.h"

namespace {

using namespace ssmtrain;
using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

nlohmann::json run_one(const LanguageModel& model, int64_t batch, int64_t context, int64_t new_tokens) {
  const int64_t vocab = model.options().vocab_size;
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < context; ++t)
      prompts[size_t(b)].push_back(int64_t(kernels::philox_block(7, uint64_t(b * context + t)).v[0] % uint64_t(vocab)));
  eval::GenerateOptions o;
  o.max_new_tokens = new_tokens;
  o.compute_dtype = DType::bf16;
  synchronize(0);
  reset_peak_memory(0);
  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> first;  // the first new token: the prefill is done
  const std::vector<eval::Generated> out =
      eval::generate(model, prompts, o, [&](int64_t, int64_t) { if (!first) first = Clock::now(); });
  synchronize(0);
  const Clock::time_point end = Clock::now();
  int64_t generated = 0;
  for (const eval::Generated& g : out) generated += int64_t(g.tokens.size());
  const MemoryStats mem = cuda_memory_stats(0);
  const double total_s = seconds(start, end);
  const double decode_s = seconds(*first, end);
  return {{"batch", batch},
          {"context", context},
          {"new_tokens", new_tokens},
          {"generated", generated},
          {"seconds", total_s},
          {"prefill_seconds", seconds(start, *first)},
          {"tokens_per_s", double(generated) / total_s},
          {"decode_tokens_per_s", double(generated - batch) / decode_s},
          {"peak_mem_gib", double(mem.peak_allocated) / double(1 << 30)}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Times generation (prefill + recurrent decode) of a recipe's model on the GPU"};
  std::string recipe, out;
  std::vector<std::string> overrides;
  std::vector<int64_t> batches{1, 16}, contexts{1024, 8192, 32768};
  int64_t new_tokens = 256;
  app.add_option("--recipe", recipe, "Recipe whose model is built (random weights)")->required()->check(CLI::ExistingFile);
  app.add_option("--set", overrides, "Recipe override key=value (repeatable)");
  app.add_option("--batch", batches, "Batch sizes")->delimiter(',');
  app.add_option("--context", contexts, "Prompt lengths in tokens")->delimiter(',');
  app.add_option("--new-tokens", new_tokens, "Tokens generated per sequence")->check(CLI::PositiveNumber);
  app.add_option("--out", out, "JSON report");
  CLI11_PARSE(app, argc, argv);
  try {
    if (!cuda_available()) {
      fmt::print(stderr, "bench_decode: no CUDA device\n");
      return 1;
    }
    const configs::Config config = configs::load_config(recipe, overrides);
    LanguageModel model(model_options(config.model), config.run.seed);
    model.to(Device::cuda(0));
    const bench::DeviceInfo device = bench::query_device(0);
    nlohmann::json rows = nlohmann::json::array();
    for (int64_t batch : batches)
      for (int64_t context : contexts) {
        const nlohmann::json r = run_one(model, batch, context, new_tokens);
        fmt::print("{} batch {:3d} context {:6d}: {:9.0f} tok/s with prefill, {:9.0f} tok/s decode, prefill {:.3f} s, "
                   "peak {:.2f} GiB\n",
                   config.run.name, batch, context, r["tokens_per_s"].get<double>(),
                   r["decode_tokens_per_s"].get<double>(), r["prefill_seconds"].get<double>(),
                   r["peak_mem_gib"].get<double>());
        std::fflush(stdout);
        rows.push_back(r);
      }
    const nlohmann::json report = {{"benchmark", "decode"},     {"gpu", device.name},
                                   {"recipe", recipe},          {"overrides", overrides},
                                   {"model", config.run.name},  {"parameters", model.num_parameters()},
                                   {"compute_dtype", "bf16"},   {"sampling", "greedy"},
                                   {"results", rows}};
    if (!out.empty()) std::ofstream(out) << report.dump(1) << "\n";
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "bench_decode: {}\n", e.what());
    return 1;
  }
}
