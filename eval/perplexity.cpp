// See perplexity.h. Each window's summed NLL comes from the fused cross-entropy (its mean over
// the targets not ignored, times their count), accumulated in double on the host.
#include "eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "autograd/node.h"
#include "autograd/ops.h"

namespace ssmtrain::eval {

PerplexityResult perplexity(const LanguageModel& model, const std::vector<int64_t>& tokens,
                            const PerplexityOptions& o, const ByteCount& bytes) {
  const int64_t n = int64_t(tokens.size()), L = o.seq_len, stride = o.stride > 0 ? o.stride : o.seq_len;
  if (n < 2) throw std::invalid_argument("perplexity: need at least 2 tokens, got " + std::to_string(n));
  if (L < 1) throw std::invalid_argument("perplexity: seq_len must be positive, got " + std::to_string(L));
  if (stride > L)
    throw std::invalid_argument("perplexity: stride " + std::to_string(stride) + " exceeds seq_len " + std::to_string(L));
  const int64_t vocab = model.options().config.vocab_size;
  for (int64_t t : tokens)
    if (t < 0 || t >= vocab)
      throw std::invalid_argument("perplexity: token " + std::to_string(t) + " is outside the vocabulary of " +
                                  std::to_string(vocab));
  NoGradGuard no_grad;
  PerplexityResult r;
  double nll = 0;
  int64_t scored_until = 0;  // targets 1..scored_until have been scored
  for (int64_t begin = 0; scored_until < n - 1; begin += stride) {
    const int64_t end = std::min(begin + L, n - 1);  // last target of this window
    const int64_t len = end - begin;                 // inputs tokens[begin, end), targets (begin, end]
    std::vector<int64_t> inputs(tokens.begin() + begin, tokens.begin() + end);
    std::vector<int64_t> targets(tokens.begin() + begin + 1, tokens.begin() + end + 1);
    const int64_t first_new = std::max(scored_until, begin) + 1;  // first target index to score
    for (int64_t j = begin + 1; j < first_new; ++j) targets[size_t(j - begin - 1)] = -100;
    const int64_t count = end - first_new + 1;
    const Tensor ids = to_device(Tensor::from_vector(inputs, {1, len}), model.device());
    const Tensor logits = model.logits(ids, Tensor(), o.compute_dtype);  // (len, vocab)
    const Tensor want = to_device(Tensor::from_vector(targets, {len}), model.device());
    nll += cross_entropy(cast(logits, DType::f32), want).item() * double(count);
    r.tokens_scored += count;
    scored_until = end;
    ++r.windows;
  }
  r.loss = nll / double(r.tokens_scored);
  r.perplexity = std::exp(r.loss);
  if (bytes) {
    r.bytes = bytes(std::vector<int64_t>(tokens.begin() + 1, tokens.end()));
    if (r.bytes > 0) r.bits_per_byte = nll / std::log(2.0) / double(r.bytes);
  }
  return r;
}

}  // namespace ssmtrain::eval
