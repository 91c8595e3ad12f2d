// Decode throughput (DESIGN.md section 10): for each batch size x context length, a batch of
// random prompts of that length is prefilled and then `new_tokens` tokens are generated greedily
// per sequence through eval/generate (recurrent state for Mamba, KV cache for attention), timed
// apart: prefill seconds, decode tokens/s (after the first token), end-to-end tokens/s (new tokens
// over the whole call, as `bench.py decode` of the reference counts them) and peak GPU memory.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "layers/model.h"

namespace ssmtrain::eval {

struct DecodeBenchOptions {
  std::vector<int64_t> batches{1, 16};
  std::vector<int64_t> contexts{1024, 8192, 32768};
  int64_t new_tokens = 256;
  int64_t warmup_tokens = 8;  // one short untimed generation per shape first (allocations, graphs)
  uint64_t seed = 0;          // of the prompt tokens
  std::optional<DType> compute_dtype;
};

struct DecodeBenchRow {
  int64_t batch = 0, context = 0, new_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0, total_seconds = 0;
  double decode_tokens_per_second = 0;  // batch * (new_tokens - 1) / decode_seconds
  double tokens_per_second = 0;         // batch * new_tokens / total_seconds
  int64_t peak_memory_bytes = 0;        // GPU high-water mark during the call (0 on the CPU)
  std::string error;                    // e.g. out of memory; the other numbers are then 0
};

using DecodeBenchProgress = std::function<void(const DecodeBenchRow& row)>;

// Rows in batches-major order. A shape that fails (out of memory) records its error and the
// benchmark goes on.
std::vector<DecodeBenchRow> decode_bench(const LanguageModel& model, const DecodeBenchOptions& options,
                                         const DecodeBenchProgress& on_row = {});

}  // namespace ssmtrain::eval
