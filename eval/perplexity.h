// Held-out perplexity (DESIGN.md section 8): mean next-token loss in nats, its exponential,
// and bits per byte, the loss in bits divided by the UTF-8 bytes of the scored text, which
// compares models with different tokenizers.
//
// Windows of seq_len inputs start every `stride` tokens. The first window scores all of its
// targets; each later one scores only the targets no earlier window scored (its last
// `stride`), so every token after the first is scored once, with at least seq_len - stride
// tokens of context once past the start. stride == seq_len gives non-overlapping windows.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "layers/model.h"

namespace ssmtrain::eval {

struct PerplexityOptions {
  int64_t seq_len = 2048;
  int64_t stride = 0;  // 0: seq_len (non-overlapping windows); else 1..seq_len
  std::optional<DType> compute_dtype;
};

struct PerplexityResult {
  double loss = 0;           // mean negative log-likelihood per scored token, nats
  double perplexity = 0;     // exp(loss)
  double bits_per_byte = 0;  // sum of NLL / ln 2 / bytes (0 without a byte count)
  int64_t tokens_scored = 0;
  int64_t bytes = 0;
  int64_t windows = 0;
};

// The UTF-8 bytes of the text the given tokens decode to.
using ByteCount = std::function<int64_t(const std::vector<int64_t>& tokens)>;

// Scores tokens[1..] given what precedes them. Throws std::invalid_argument for fewer than 2
// tokens, a bad seq_len or stride, or a token outside the vocabulary.
PerplexityResult perplexity(const LanguageModel& model, const std::vector<int64_t>& tokens,
                            const PerplexityOptions& options, const ByteCount& bytes = {});

}  // namespace ssmtrain::eval
