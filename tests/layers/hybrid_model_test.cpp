// Tiny Jamba-style hybrids on the CPU: Mamba-1 (with the dt/B/C norms), Mamba-2 and attention
// mixers with MLP and MoE feed-forwards in one stack. Parameter names and counts (total and
// active), the layout string, FLOPs per token, finite-difference gradients (f64) of the loss
// with its MoE auxiliary terms for every parameter tensor, and document isolation through
// attention.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <set>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "layers/model.h"
#include "tests/layers/model_gradcheck.h"

namespace ssmtrain {
namespace {

Tensor ids(const std::vector<int64_t>& v, const Shape& shape) { return Tensor::from_vector(v, shape); }

// Four layers: mamba1+MoE, attention(GQA, RoPE)+MLP, mamba2+MoE, attention+none.
ModelOptions tiny_hybrid() {
  ModelOptions o;
  o.config.vocab_size = 11;
  o.config.d_model = 8;
  o.config.n_layers = 4;
  o.layers = {{MixerKind::mamba1, FfnKind::moe},
              {MixerKind::attention, FfnKind::mlp},
              {MixerKind::mamba2, FfnKind::moe},
              {MixerKind::attention, FfnKind::none}};
  o.config.mamba1.d_state = 4;
  o.config.mamba1.d_conv = 3;
  o.config.mamba1.dt_rank = 2;
  o.config.mamba1.dt_bc_norm = true;
  o.config.mamba2.d_state = 4;
  o.config.mamba2.d_conv = 3;
  o.config.mamba2.head_dim = 4;
  o.config.attention.n_heads = 4;
  o.config.attention.n_kv_heads = 2;
  o.config.attention.rope = true;
  o.config.mlp.d_ff = 12;
  o.config.moe.n_experts = 4;
  o.config.moe.top_k = 2;
  o.config.moe.d_ff_expert = 6;
  o.config.moe.aux_loss_coef = 0.05;  // large enough that a wrong auxiliary gradient shows
  o.config.moe.z_loss_coef = 0.01;
  return o;
}

TEST(HybridModel, LayoutNamesAndParameterCounts) {
  const ModelOptions o = tiny_hybrid();
  EXPECT_EQ(o.layout_string(), "MAMA / EFE-");
  LanguageModel model(o, 1);
  std::set<std::string> names;
  for (const NamedParameter& p : model.named_parameters()) names.insert(p.name);
  for (const char* name : {"blocks.0.moe.router", "blocks.0.moe.w_gate", "blocks.0.moe.w_up", "blocks.0.moe.w_down",
                           "blocks.0.ffn_norm.weight", "blocks.1.mixer.q_proj.weight", "blocks.1.mixer.k_proj.weight",
                           "blocks.1.mixer.v_proj.weight", "blocks.1.mixer.o_proj.weight", "blocks.1.mlp.gate_up.weight",
                           "blocks.1.mlp.down.weight", "blocks.2.mixer.in_proj.weight", "blocks.3.mixer.q_proj.weight"})
    EXPECT_TRUE(names.count(name)) << name;
  EXPECT_FALSE(names.count("blocks.3.ffn_norm.weight"));
  // Attention: q (h dh) d + k, v (kv dh) d + o d (h dh), with h = 4, kv = 2, dh = 2.
  const int64_t d = 8, attention = 8 * d + 2 * 4 * d + d * 8;
  const int64_t mlp = 2 * 12 * d + 12 * d, expert = 3 * 6 * d, moe = 4 * d + 4 * expert;
  int64_t counted = 0;
  for (const NamedParameter& p : model.named_parameters()) {
    if (p.name.rfind("blocks.1.mixer.", 0) == 0 || p.name.rfind("blocks.3.mixer.", 0) == 0) counted += p.value->numel();
  }
  EXPECT_EQ(counted, 2 * attention);
  int64_t ffn = 0;
  for (const NamedParameter& p : model.named_parameters())
    if (p.name.find(".moe.") != std::string::npos || p.name.find(".mlp.") != std::string::npos) ffn += p.value->numel();
  EXPECT_EQ(ffn, 2 * moe + mlp);
  // A token uses top_k = 2 of the 4 experts in each of the two MoE layers.
  EXPECT_EQ(model.num_parameters() - model.active_parameters(), 2 * 2 * expert);
}

// The counts from the shapes alone equal the built model's, for every mixer and feed-forward,
// tied or untied embeddings, GQA, ngroups 2 and the Mamba-1 dt/B/C norms.
TEST(HybridModel, ParameterCountsFromShapesEqualTheBuiltModel) {
  std::vector<ModelOptions> cases{tiny_hybrid()};
  ModelOptions v = tiny_hybrid();
  v.config.tie_embeddings = !v.config.tie_embeddings;
  v.config.mamba2.ngroups = 2;
  v.config.mamba1.dt_bc_norm = false;
  v.config.mamba1.dt_rank = 0;  // auto
  cases.push_back(v);
  ModelOptions plain;
  plain.config.vocab_size = 13;
  plain.config.d_model = 16;
  plain.config.n_layers = 2;
  plain.config.family = configs::Family::mamba1;
  cases.push_back(plain);
  plain.config.family = configs::Family::mamba2;
  plain.config.mamba2.head_dim = 8;
  cases.push_back(plain);
  for (const ModelOptions& o : cases) {
    LanguageModel model(o, 3);
    const ParameterCounts c = parameter_counts(o);
    EXPECT_EQ(c.total, model.num_parameters()) << o.layout_string();
    EXPECT_EQ(c.active, model.active_parameters()) << o.layout_string();
  }
}

TEST(HybridModel, FlopsPerTokenCountAttentionAndActiveExperts) {
  ModelOptions o = tiny_hybrid();
  o.layers = {{MixerKind::attention, FfnKind::moe}};
  o.config.n_layers = 1;
  const double d = 8, l = 16;
  // q, k, v, o projections + causal scores/values (l h dh) + router + 2 experts + LM head.
  const double expected = 6 * (d * (2 * 8 + 2 * 4) + l * 8 + d * 4 + 2 * 3 * d * 6 + d * 11);
  EXPECT_DOUBLE_EQ(training_flops_per_token(o, 16), expected);
}

TEST(HybridModel, FiniteDifferenceGradientsOfEveryParameter) {
  LanguageModel model(tiny_hybrid(), 5, DType::f64);
  const Tensor x = ids({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 4, 3}, {2, 6});
  const Tensor y = ids({2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 1}, {2, 6});
  const Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2}, {2, 6}, DType::i32);
  // The auxiliary losses take part: the total differs from the cross-entropy alone.
  const LossTerms terms = model.losses(x, y, doc);
  ASSERT_TRUE(terms.aux.total.defined());
  EXPECT_GT(terms.total.item() - terms.lm.item(), 1e-4);
  ASSERT_EQ(terms.aux.expert_counts.size(), 2u);
  const std::vector<float> counts = cast(terms.aux.expert_counts[0], DType::f32).to_vector();
  EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), 0.0f), 12.0f * 2);  // t * top_k

  EXPECT_GT(testing::expect_model_gradients_match_finite_differences(model, x, y, doc, 5), 100);
}

// Recomputing each block in the backward gives the same bits: loss, MoE terms, expert counts
// and every gradient.
TEST(HybridModel, ActivationCheckpointingChangesNoBits) {
  const Tensor x = ids({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 4, 3}, {2, 6});
  const Tensor y = ids({2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 1}, {2, 6});
  const Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 1, 1, 1, 1, 0, 0, 0, 2, 2, 2}, {2, 6}, DType::i32);
  std::vector<std::vector<float>> grads[2];
  double totals[2];
  std::vector<float> counts[2];
  for (int recompute = 0; recompute < 2; ++recompute) {
    ModelOptions o = tiny_hybrid();
    o.activation_checkpointing = recompute == 1;
    LanguageModel model(o, 5);
    const LossTerms terms = model.losses(x, y, doc);
    terms.total.backward();
    totals[recompute] = terms.total.item();
    ASSERT_EQ(terms.aux.expert_counts.size(), 2u);
    counts[recompute] = cast(terms.aux.expert_counts[1], DType::f32).to_vector();
    for (const NamedParameter& p : model.named_parameters()) {
      ASSERT_TRUE(p.value->grad().defined()) << p.name;
      grads[recompute].push_back(p.value->grad().to_vector());
    }
  }
  EXPECT_EQ(totals[0], totals[1]);
  EXPECT_EQ(counts[0], counts[1]);
  EXPECT_EQ(grads[0], grads[1]);
}

TEST(HybridModel, DocumentBoundariesIsolateDocumentsThroughAttention) {
  ModelOptions o = tiny_hybrid();
  o.layers = {{MixerKind::attention, FfnKind::mlp}, {MixerKind::mamba2, FfnKind::none}};
  o.config.n_layers = 2;
  o.config.attention.rope = false;  // positions are absolute within the window; without RoPE the second
                             // document's logits cannot depend on where it starts either
  LanguageModel model(o, 9);
  const Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 1, 1, 1}, {1, 6}, DType::i32);
  const std::vector<float> a = model.logits(ids({1, 2, 3, 4, 5, 6}, {1, 6}), doc).to_vector();
  const std::vector<float> b = model.logits(ids({9, 8, 7, 4, 5, 6}, {1, 6}), doc).to_vector();
  for (int64_t i = 3 * 11; i < 6 * 11; ++i) EXPECT_EQ(a[size_t(i)], b[size_t(i)]) << i;
  EXPECT_NE(a[0], b[0]);
}

TEST(HybridModel, InconsistentDimensionsAreClearErrors) {
  ModelOptions o = tiny_hybrid();
  o.config.attention.n_kv_heads = 3;  // does not divide 4 heads
  EXPECT_THROW(LanguageModel(o, 1), std::invalid_argument);
  o = tiny_hybrid();
  o.config.moe.top_k = 5;  // more than the 4 experts
  EXPECT_THROW(LanguageModel(o, 1), std::invalid_argument);
}

}  // namespace
}  // namespace ssmtrain
