// eval/generate on the CPU: greedy generation over a ragged batch equals a reference that
// re-runs the parallel forward on the whole text for every new token; seeded sampling repeats
// bit for bit and does not depend on what else is in the batch; top-k / top-p keep only the
// tokens they should and draw them with the softmax's frequencies; stop tokens end a
// sequence; the streaming callback sees every token in order; bad input is named.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "eval/generate.h"
#include "layers/model.h"

namespace ssmtrain::eval {
namespace {

ModelOptions hybrid() {
  ModelOptions o;
  o.config.vocab_size = 29;
  o.config.d_model = 16;
  o.config.n_layers = 3;
  o.layers = {{MixerKind::mamba2, FfnKind::moe}, {MixerKind::attention, FfnKind::mlp}, {MixerKind::mamba1, FfnKind::none}};
  o.config.mamba1.d_state = 4;
  o.config.mamba2.d_state = 8;
  o.config.mamba2.head_dim = 8;
  o.config.mamba2.chunk_size = 8;
  o.config.attention.n_heads = 4;
  o.config.attention.n_kv_heads = 2;
  o.config.attention.rope = true;
  o.config.mlp.d_ff = 24;
  o.config.moe.n_experts = 4;
  o.config.moe.top_k = 2;
  o.config.moe.d_ff_expert = 12;
  return o;
}

const std::vector<std::vector<int64_t>> kPrompts{{3, 1, 4, 1, 5, 9, 2, 6, 5}, {2, 7}, {1, 8, 2, 8, 1}};

// Greedy continuation by the parallel forward over the whole text, one token at a time.
std::vector<int64_t> greedy_reference(const LanguageModel& model, std::vector<int64_t> text, int64_t n) {
  NoGradGuard no_grad;
  const int64_t v = model.options().config.vocab_size;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t l = int64_t(text.size());
    const std::vector<float> logits = model.logits(Tensor::from_vector(text, {1, l})).to_vector();
    const auto last = logits.begin() + (l - 1) * v;
    const int64_t next = int64_t(std::max_element(last, last + v) - last);
    out.push_back(next);
    text.push_back(next);
  }
  return out;
}

TEST(Generate, GreedyRaggedBatchEqualsRerunningTheParallelForward) {
  LanguageModel model(hybrid(), 5);
  GenerateOptions o;
  o.max_new_tokens = 12;
  std::vector<std::vector<int64_t>> streamed(kPrompts.size());
  const std::vector<Generated> got =
      generate(model, kPrompts, o, [&](int64_t seq, int64_t token) { streamed[size_t(seq)].push_back(token); });
  ASSERT_EQ(got.size(), kPrompts.size());
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    EXPECT_EQ(got[i].tokens, greedy_reference(model, kPrompts[i], 12)) << "prompt " << i;
    EXPECT_FALSE(got[i].stopped);
    EXPECT_EQ(streamed[i], got[i].tokens) << "prompt " << i;
  }
}

TEST(Generate, SeededSamplingRepeatsAndIgnoresTheRestOfTheBatch) {
  LanguageModel model(hybrid(), 5);
  GenerateOptions o;
  o.max_new_tokens = 16;
  o.sampling = {1.0, 10, 0.95, 1234};
  const std::vector<Generated> a = generate(model, kPrompts, o), b = generate(model, kPrompts, o);
  for (size_t i = 0; i < kPrompts.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << "prompt " << i;
  // The first prompt alone draws the same tokens as in the batch (its draws are keyed by
  // sequence index 0 and token index, not by the batch's other rows).
  const std::vector<Generated> alone = generate(model, {kPrompts[0]}, o);
  EXPECT_EQ(alone[0].tokens, a[0].tokens);
  o.sampling.seed = 4321;
  const std::vector<Generated> c = generate(model, kPrompts, o);
  bool differs = false;
  for (size_t i = 0; i < kPrompts.size(); ++i) differs = differs || c[i].tokens != a[i].tokens;
  EXPECT_TRUE(differs) << "another seed should change some of 48 sampled tokens";
}

TEST(Generate, StopTokenEndsTheSequenceAndIsKept) {
  LanguageModel model(hybrid(), 5);
  const std::vector<int64_t> greedy = greedy_reference(model, kPrompts[1], 8);
  GenerateOptions o;
  o.max_new_tokens = 8;
  o.stop_tokens = {greedy[3]};
  const std::vector<Generated> got = generate(model, {kPrompts[1]}, o);
  const auto first = std::find(greedy.begin(), greedy.end(), greedy[3]);
  const std::vector<int64_t> expected(greedy.begin(), first + 1);
  EXPECT_EQ(got[0].tokens, expected);
  EXPECT_TRUE(got[0].stopped);
}

TEST(SampleToken, GreedyTopKTopPOnAHandMadeRow) {
  // softmax probabilities 0.5, 0.3, 0.15, 0.05 (ids 2, 0, 3, 1).
  const std::vector<float> logits{float(std::log(0.3)), float(std::log(0.05)), float(std::log(0.5)), float(std::log(0.15))};
  SamplingOptions greedy;
  EXPECT_EQ(sample_token(logits.data(), 4, greedy, 0, 0), 2);
  SamplingOptions k1{1.0, 1, 1.0, 9};
  for (int64_t t = 0; t < 50; ++t) EXPECT_EQ(sample_token(logits.data(), 4, k1, 0, t), 2);

  auto frequencies = [&](const SamplingOptions& o) {
    std::map<int64_t, double> f;
    const int64_t n = 20000;
    for (int64_t t = 0; t < n; ++t) f[sample_token(logits.data(), 4, o, 3, t)] += 1.0 / double(n);
    return f;
  };
  // Plain sampling: each token at its probability (3 standard deviations of 20000 draws < 0.011).
  const std::map<int64_t, double> all = frequencies({1.0, 0, 1.0, 7});
  EXPECT_NEAR(all.at(2), 0.5, 0.011);
  EXPECT_NEAR(all.at(0), 0.3, 0.011);
  EXPECT_NEAR(all.at(3), 0.15, 0.011);
  EXPECT_NEAR(all.at(1), 0.05, 0.011);
  // top_k 2: ids 2 and 0 only, renormalised to 0.625 / 0.375.
  const std::map<int64_t, double> k2 = frequencies({1.0, 2, 1.0, 7});
  EXPECT_EQ(k2.size(), 2u);
  EXPECT_NEAR(k2.at(2), 0.625, 0.011);
  // top_p 0.9: 0.5 + 0.3 + 0.15 = 0.95 reaches it, so id 1 (0.05) never appears.
  const std::map<int64_t, double> p9 = frequencies({1.0, 0, 0.9, 7});
  EXPECT_EQ(p9.count(1), 0u);
  EXPECT_NEAR(p9.at(2), 0.5 / 0.95, 0.011);
  // A low temperature sharpens towards the maximum: 0.5^4 / sum p^4 = 0.867 at T = 0.25.
  const std::map<int64_t, double> cold = frequencies({0.25, 0, 1.0, 7});
  const double z = std::pow(0.5, 4) + std::pow(0.3, 4) + std::pow(0.15, 4) + std::pow(0.05, 4);
  EXPECT_NEAR(cold.at(2), std::pow(0.5, 4) / z, 0.011);
}

TEST(WeightCastCache, CastsEachParameterOnceWithoutGradients) {
  const Tensor w = Tensor::from_vector(std::vector<double>{0.5, -1.25, 3.0, 2.0}, {2, 2}, DType::f64);
  const Tensor x = Tensor::zeros({1, 2}, DType::f32);
  {
    NoGradGuard no_grad;
    WeightCastCache cache;
    const Tensor a = weight_for(w, x), b = weight_for(w, x);
    EXPECT_EQ(a.dtype(), DType::f32);
    EXPECT_TRUE(a.shares_storage_with(b)) << "the second call reuses the first cast";
    EXPECT_EQ(a.to_vector(), (std::vector<float>{0.5f, -1.25f, 3.0f, 2.0f}));
    EXPECT_EQ(cache.size(), 1u);
    {
      WeightCastCache inner;  // nested: the outer cache serves
      EXPECT_TRUE(weight_for(w, x).shares_storage_with(a));
    }
    EXPECT_TRUE(weight_for(w, x).shares_storage_with(a)) << "the inner cache's end keeps the outer one";
    EXPECT_EQ(weight_for(w, Tensor::zeros({1}, DType::f64)).data(), w.data()) << "same dtype: the weight itself";
  }
  // Without a cache, or with gradients on, every call casts anew.
  EXPECT_FALSE(weight_for(w, x).shares_storage_with(weight_for(w, x)));
  WeightCastCache cache;
  EXPECT_FALSE(weight_for(w, x).shares_storage_with(weight_for(w, x)));
  EXPECT_EQ(cache.size(), 0u);
}

TEST(Generate, BadInputIsNamed) {
  LanguageModel model(hybrid(), 5);
  GenerateOptions o;
  auto message = [&](const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& opts) {
    try {
      generate(model, prompts, opts);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message({{1, 2}, {}}, o), "generate: prompt 1 is empty");
  EXPECT_NE(message({{1, 29}}, o).find("token 29, outside the vocabulary of 29"), std::string::npos);
  GenerateOptions bad = o;
  bad.sampling.top_p = 0.0;
  EXPECT_NE(message({{1}}, bad).find("top_p"), std::string::npos);
  bad = o;
  bad.sampling.temperature = -1;
  EXPECT_NE(message({{1}}, bad).find("temperature"), std::string::npos);
}

}  // namespace
}  // namespace ssmtrain::eval
