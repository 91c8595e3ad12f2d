// See decode_bench.h.
#include "eval/decode_bench.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <exception>

#include "autograd/allocator.h"
#include "autograd/device.h"
#include "autograd/stream.h"
#include "eval/generate.h"
#include "kernels/philox.h"

namespace ssmtrain::eval {

std::vector<DecodeBenchRow> decode_bench(const LanguageModel& model, const DecodeBenchOptions& o,
                                         const DecodeBenchProgress& on_row) {
  using Clock = std::chrono::steady_clock;
  const int64_t vocab = model.options().config.vocab_size;
  const Device device = model.device();
  std::vector<DecodeBenchRow> rows;
  for (int64_t batch : o.batches) {
    for (int64_t context : o.contexts) {
      DecodeBenchRow row;
      row.batch = batch;
      row.context = context;
      row.new_tokens = o.new_tokens;
      // Random prompts: token j of sequence i from Philox(seed, i * context + j); id 0 avoided.
      std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(batch),
                                                std::vector<int64_t>(static_cast<size_t>(context)));
      for (int64_t i = 0; i < batch; ++i)
        for (int64_t j = 0; j < context; ++j) {
          const kernels::Philox4 r = kernels::philox_block(o.seed ^ 0x62656e6368ULL, uint64_t(i * context + j));
          prompts[size_t(i)][size_t(j)] = 1 + int64_t(r.v[0] % uint32_t(vocab - 1));
        }
      try {
        GenerateOptions g;
        g.compute_dtype = o.compute_dtype;
        if (o.warmup_tokens > 0) {
          g.max_new_tokens = o.warmup_tokens;
          generate(model, prompts, g);
        }
        if (device.is_cuda()) {
          synchronize(device.index);
          reset_peak_memory(device.index);
        }
        g.max_new_tokens = o.new_tokens;
        Clock::time_point first;
        bool seen = false;
        const auto start = Clock::now();
        generate(model, prompts, g, [&](int64_t, int64_t) {
          if (!seen) first = Clock::now(), seen = true;  // the first token follows the prefill
        });
        if (device.is_cuda()) synchronize(device.index);
        const auto end = Clock::now();
        row.total_seconds = std::chrono::duration<double>(end - start).count();
        row.prefill_seconds = std::chrono::duration<double>(first - start).count();
        row.decode_seconds = std::chrono::duration<double>(end - first).count();
        row.tokens_per_second = double(batch * o.new_tokens) / row.total_seconds;
        row.decode_tokens_per_second =
            o.new_tokens > 1 ? double(batch * (o.new_tokens - 1)) / std::max(row.decode_seconds, 1e-9) : 0.0;
        if (device.is_cuda()) row.peak_memory_bytes = cuda_memory_stats(device.index).peak_allocated;
      } catch (const std::exception& e) {
        const std::string what = e.what();
        row = DecodeBenchRow();
        row.batch = batch;
        row.context = context;
        row.new_tokens = o.new_tokens;
        row.error = what;
      }
      rows.push_back(row);
      if (on_row) on_row(row);
    }
  }
  return rows;
}

}  // namespace ssmtrain::eval
