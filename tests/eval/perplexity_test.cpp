// eval/perplexity against a direct computation: for every target token, the model's
// log-softmax at the last position of exactly the context its window gives it (from the
// window's start), summed in double. Non-overlapping windows, a sliding stride, a window
// longer than the text, bits per byte from a hand-made byte count, and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "eval/perplexity.h"
#include "layers/model.h"

namespace ssmtrain::eval {
namespace {

ModelOptions small() {
  ModelOptions o;
  o.config.vocab_size = 31;
  o.config.d_model = 16;
  o.config.n_layers = 2;
  o.layers = {{MixerKind::mamba2, FfnKind::none}, {MixerKind::attention, FfnKind::mlp}};
  o.config.mamba2.d_state = 8;
  o.config.mamba2.head_dim = 8;
  o.config.mamba2.chunk_size = 8;
  o.config.attention.n_heads = 2;
  o.config.mlp.d_ff = 24;
  return o;
}

std::vector<int64_t> text(int64_t n) {
  std::vector<int64_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back((i * 13 + i / 3) % 31);
  return t;
}

// Sum over targets j = 1..n-1 of -log p(tokens[j] | tokens[b(j) .. j)), b(j) the start of the
// first window whose last target reaches j.
double direct_nll(const LanguageModel& model, const std::vector<int64_t>& tokens, int64_t L, int64_t stride) {
  NoGradGuard no_grad;
  const int64_t n = int64_t(tokens.size()), v = model.options().config.vocab_size;
  double nll = 0;
  for (int64_t j = 1; j < n; ++j) {
    int64_t k = 0;
    while (std::min(k * stride + L, n - 1) < j) ++k;
    const int64_t b = k * stride;
    const std::vector<int64_t> context(tokens.begin() + b, tokens.begin() + j);
    const std::vector<float> logits =
        model.logits(Tensor::from_vector(context, {1, j - b})).to_vector();
    const float* last = logits.data() + (j - b - 1) * v;
    double m = last[0], z = 0;
    for (int64_t c = 1; c < v; ++c) m = std::max(m, double(last[c]));
    for (int64_t c = 0; c < v; ++c) z += std::exp(double(last[c]) - m);
    nll -= double(last[tokens[size_t(j)]]) - m - std::log(z);
  }
  return nll;
}

TEST(Perplexity, WindowsAndSlidingStrideEqualTheDirectComputation) {
  const LanguageModel model(small(), 3);
  const std::vector<int64_t> tokens = text(53);
  struct Setting {
    int64_t seq_len, stride, windows;
  };
  for (const Setting s : {Setting{16, 0, 4}, Setting{16, 5, 9}, Setting{10, 1, 43}, Setting{80, 0, 1}}) {
    PerplexityOptions o;
    o.seq_len = s.seq_len;
    o.stride = s.stride;
    const PerplexityResult r = perplexity(model, tokens, o);
    const double want = direct_nll(model, tokens, s.seq_len, s.stride > 0 ? s.stride : s.seq_len) / 52.0;
    EXPECT_EQ(r.tokens_scored, 52) << "seq_len " << s.seq_len << " stride " << s.stride;
    EXPECT_EQ(r.windows, s.windows) << "seq_len " << s.seq_len << " stride " << s.stride;
    EXPECT_NEAR(r.loss, want, 1e-5 * want) << "seq_len " << s.seq_len << " stride " << s.stride;
    EXPECT_NEAR(r.perplexity, std::exp(want), 1e-5 * std::exp(want));
  }
}

TEST(Perplexity, BitsPerByteDivideTheLossInBitsByTheDecodedBytes) {
  const LanguageModel model(small(), 3);
  const std::vector<int64_t> tokens = text(40);
  PerplexityOptions o;
  o.seq_len = 16;
  int64_t expected_bytes = 0;
  for (size_t i = 1; i < tokens.size(); ++i) expected_bytes += 1 + tokens[i] % 3;  // a made-up tokenizer
  const PerplexityResult r = perplexity(model, tokens, o, [](const std::vector<int64_t>& t) {
    int64_t bytes = 0;
    for (int64_t id : t) bytes += 1 + id % 3;
    return bytes;
  });
  EXPECT_EQ(r.bytes, expected_bytes);
  EXPECT_NEAR(r.bits_per_byte, r.loss * 39.0 / std::log(2.0) / double(expected_bytes), 1e-9);
}

TEST(Perplexity, BadInputIsNamed) {
  const LanguageModel model(small(), 3);
  PerplexityOptions o;
  o.seq_len = 8;
  EXPECT_THROW(perplexity(model, {1}, o), std::invalid_argument);
  o.stride = 9;
  try {
    perplexity(model, text(20), o);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), "perplexity: stride 9 exceeds seq_len 8");
  }
  o.stride = 0;
  EXPECT_THROW(perplexity(model, {1, 31}, o), std::invalid_argument);
}

}  // namespace
}  // namespace ssmtrain::eval
