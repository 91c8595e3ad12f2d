// Decoding on the CPU (f32): the logits of a prefill followed by token-by-token steps equal
// the parallel forward over the whole sequence, for every mixer and feed-forward (Mamba-1,
// Mamba-1 with the Jamba dt/B/C norms, Mamba-2 with 1 and 2 groups, attention with GQA and
// RoPE, MLP, MoE, and a hybrid stack). The prefill length (11) is not a multiple of the
// Mamba-2 chunk (8); a ragged batch (prompts of 5 and 9 tokens stepped together) checks the
// per-sequence positions and the KV-cache mask.
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "layers/model.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

struct Case {
  std::string name;
  ModelOptions options;
};

ModelOptions base() {
  ModelOptions o;
  o.config.vocab_size = 23;
  o.config.d_model = 16;
  o.config.n_layers = 2;
  o.config.mamba1.d_state = 4;
  o.config.mamba1.dt_rank = 3;
  o.config.mamba2.d_state = 8;
  o.config.mamba2.head_dim = 8;  // 4 heads
  o.config.mamba2.chunk_size = 8;
  o.config.attention.n_heads = 4;
  o.config.attention.n_kv_heads = 2;
  o.config.mlp.d_ff = 24;
  o.config.moe.n_experts = 4;
  o.config.moe.top_k = 2;
  o.config.moe.d_ff_expert = 12;
  return o;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> cases() {
  std::vector<Case> out;
  ModelOptions o = base();
  o.config.family = configs::Family::mamba1;
  out.push_back({"Mamba1", o});
  o.config.mamba1.dt_bc_norm = true;
  o.config.mamba1.d_conv = 3;
  out.push_back({"Mamba1JambaNorms", o});
  o = base();
  o.config.family = configs::Family::mamba2;
  out.push_back({"Mamba2Groups1", o});
  o.config.mamba2.ngroups = 2;
  out.push_back({"Mamba2Groups2", o});
  o = base();
  o.layers = {{MixerKind::attention, FfnKind::mlp}, {MixerKind::attention, FfnKind::mlp}};
  o.config.attention.rope = true;
  out.push_back({"AttentionGqaRope", o});
  o = base();
  o.layers = {{MixerKind::mamba2, FfnKind::moe}, {MixerKind::attention, FfnKind::moe}};
  out.push_back({"MoE", o});
  o = base();
  o.config.n_layers = 4;
  o.layers = {{MixerKind::mamba1, FfnKind::moe},
              {MixerKind::attention, FfnKind::mlp},
              {MixerKind::mamba2, FfnKind::moe},
              {MixerKind::attention, FfnKind::none}};
  o.config.mamba2.ngroups = 2;
  out.push_back({"Hybrid", o});
  return out;
}

std::vector<int64_t> tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int64_t> t(static_cast<size_t>(n));
  uint64_t x = seed * 2654435761u + 1;
  for (auto& v : t) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    v = int64_t((x >> 33) % uint64_t(vocab));
  }
  return t;
}

// Rows [from, to) of logits (l, vocab) flattened.
std::vector<float> rows(const std::vector<float>& logits, int64_t vocab, int64_t from, int64_t to) {
  return {logits.begin() + from * vocab, logits.begin() + to * vocab};
}

class Decode : public ::testing::TestWithParam<Case> {};

TEST_P(Decode, PrefillThenStepsEqualTheParallelForward) {
  const ModelOptions& o = GetParam().options;
  NoGradGuard no_grad;
  LanguageModel model(o, 7);
  const int64_t b = 2, l = 20, prefill = 11, v = o.config.vocab_size;
  std::vector<int64_t> ids = tokens(b * l, v, 3);
  const std::vector<float> full = model.logits(Tensor::from_vector(ids, {b, l})).to_vector();  // (b l, v)

  InferenceCache cache = model.new_inference_cache(b, l);
  std::vector<int64_t> head;
  for (int64_t i = 0; i < b; ++i) head.insert(head.end(), ids.begin() + i * l, ids.begin() + i * l + prefill);
  const std::vector<float> pre = model.prefill(Tensor::from_vector(head, {b, prefill}), cache).to_vector();
  for (int64_t i = 0; i < b; ++i)
    EXPECT_TRUE(testing::close(rows(pre, v, i * prefill, (i + 1) * prefill), rows(full, v, i * l, i * l + prefill),
                               DType::f32, o.config.d_model))
        << "prefill, sequence " << i;
  for (int64_t t = prefill; t < l; ++t) {
    std::vector<int64_t> next;
    for (int64_t i = 0; i < b; ++i) next.push_back(ids[size_t(i * l + t)]);
    const std::vector<float> got = model.step(Tensor::from_vector(next, {b}), cache, {t, t}).to_vector();  // (b, v)
    for (int64_t i = 0; i < b; ++i)
      EXPECT_TRUE(testing::close(rows(got, v, i, i + 1), rows(full, v, i * l + t, i * l + t + 1), DType::f32, o.config.d_model))
          << "step at position " << t << ", sequence " << i;
  }
}

TEST_P(Decode, RaggedBatchStepsEachSequenceAtItsOwnPosition) {
  const ModelOptions& o = GetParam().options;
  NoGradGuard no_grad;
  LanguageModel model(o, 11);
  const int64_t v = o.config.vocab_size, steps = 6;
  const std::vector<int64_t> prompt_len{5, 9};
  std::vector<std::vector<int64_t>> seqs;
  std::vector<std::vector<float>> full;
  for (size_t i = 0; i < prompt_len.size(); ++i) {
    const int64_t n = prompt_len[i] + steps;
    seqs.push_back(tokens(n, v, 20 + i));
    full.push_back(model.logits(Tensor::from_vector(seqs[i], {1, n})).to_vector());
  }
  InferenceCache cache = model.new_inference_cache(2, 16);
  for (int64_t i = 0; i < 2; ++i) {
    const std::vector<int64_t> prompt(seqs[size_t(i)].begin(), seqs[size_t(i)].begin() + prompt_len[size_t(i)]);
    model.prefill(Tensor::from_vector(prompt, {1, prompt_len[size_t(i)]}), cache.row(i));
  }
  for (int64_t s = 0; s < steps; ++s) {
    const std::vector<int64_t> pos{prompt_len[0] + s, prompt_len[1] + s};
    const std::vector<int64_t> next{seqs[0][size_t(pos[0])], seqs[1][size_t(pos[1])]};
    const std::vector<float> got = model.step(Tensor::from_vector(next, {2}), cache, pos).to_vector();
    for (int64_t i = 0; i < 2; ++i)
      EXPECT_TRUE(testing::close(rows(got, v, i, i + 1), rows(full[size_t(i)], v, pos[size_t(i)], pos[size_t(i)] + 1),
                                 DType::f32, o.config.d_model))
          << "step " << s << ", sequence " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Mixers, Decode, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(DecodeErrors, CacheOverflowAndShapeMismatchAreNamed) {
  NoGradGuard no_grad;
  ModelOptions o = base();
  o.layers = {{MixerKind::attention, FfnKind::none}, {MixerKind::mamba2, FfnKind::none}};
  LanguageModel model(o, 1);
  InferenceCache cache = model.new_inference_cache(1, 4);
  try {
    model.prefill(Tensor::from_vector(std::vector<int64_t>{1, 2, 3, 4, 5}, {1, 5}), cache);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("max_len 4"), std::string::npos) << e.what();
  }
  model.prefill(Tensor::from_vector(std::vector<int64_t>{1, 2, 3, 4}, {1, 4}), cache);
  try {
    model.step(Tensor::from_vector(std::vector<int64_t>{1}, {1}), cache, {4});
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("outside the KV cache of 4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(model.step(Tensor::from_vector(std::vector<int64_t>{1, 2}, {2}), cache, {1, 1}), std::invalid_argument);
}

}  // namespace
}  // namespace ssmtrain
