// Generation from a LanguageModel (DESIGN.md section 8): each prompt is prefilled with the
// parallel kernels, then every sequence of the batch advances one token per step through the
// recurrent state (Mamba) and the KV cache (attention). Greedy, temperature, top-k and top-p
// sampling by the rule of kernels/sampling.h, run where the logits are (a kernel on the GPU), so
// each step hands only one id per sequence to the host; the draw for token t of sequence i
// comes from Philox(seed, (i, t)), so the same seed gives the same text whatever the batch
// holds besides, on the CPU and the GPU alike. Stop tokens end a sequence. On a GPU the decode
// step of a Mamba stack, its sampling included, is one CUDA graph launch.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "layers/model.h"

namespace ssmtrain::eval {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy (the first of equal maxima)
  int64_t top_k = 0;         // keep the k most likely tokens; 0: all
  double top_p = 1.0;        // keep the smallest set whose probability reaches top_p; 1: all
  uint64_t seed = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;
  std::vector<int64_t> stop_tokens;     // generated, it ends the sequence (and is kept as its last token)
  std::optional<DType> compute_dtype;   // default: the parameters' dtype
  // On a GPU, replay the decode step as one CUDA graph (captured after one eager step) when
  // every layer's step works on device memory alone (Mamba mixers, MLPs); same tokens either way.
  bool cuda_graph = true;
};

struct Generated {
  std::vector<int64_t> tokens;  // the new tokens only
  bool stopped = false;         // ended on a stop token (else: max_new_tokens)
  bool graphed = false;         // its decode steps replayed a CUDA graph
};

// Called for each new token as soon as it is chosen: (sequence, token).
using TokenCallback = std::function<void(int64_t sequence, int64_t token)>;

// prompts: one or more non-empty token lists of any lengths. Throws std::invalid_argument for
// an empty prompt, a token outside the vocabulary or bad sampling options.
std::vector<Generated> generate(const LanguageModel& model, const std::vector<std::vector<int64_t>>& prompts,
                                const GenerateOptions& options, const TokenCallback& on_token = {});

// The next token from one row of logits (vocab floats): draw `draw` of sequence `sequence`
// under options.seed, by the CPU reference of kernels/sampling.h (what generate picks on any
// device). Exposed for tests and for evaluations that score their own logits.
int64_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& options, int64_t sequence,
                     int64_t draw);

// Checks the sampling options; throws std::invalid_argument naming the bad one.
void check_sampling(const SamplingOptions& options);

}  // namespace ssmtrain::eval
