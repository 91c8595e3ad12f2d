// A tiny Mamba-1 language model on the CPU: parameter names and count, finite-difference
// gradients (f64) of the loss for every parameter tensor, determinism, document resets, and
// the loss falling under plain gradient descent.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "layers/model.h"
#include "tests/layers/model_gradcheck.h"

namespace ssmtrain {
namespace {

ModelOptions tiny() {
  ModelOptions o;
  o.config.family = configs::Family::mamba1;
  o.config.vocab_size = 11;
  o.config.d_model = 8;
  o.config.n_layers = 2;
  o.config.mamba1.d_state = 4;
  o.config.mamba1.d_conv = 3;
  o.config.mamba1.expand = 2;
  o.config.mamba1.dt_rank = 2;
  return o;
}

Tensor ids(const std::vector<int64_t>& v, const Shape& shape) { return Tensor::from_vector(v, shape); }

TEST(Mamba1Model, ParameterNamesAndCount) {
  LanguageModel model(tiny(), 1);
  std::set<std::string> names;
  bool a_log_decays = true, weight_decays = false;
  for (const NamedParameter& p : model.named_parameters()) {
    names.insert(p.name);
    if (p.name == "blocks.1.mixer.A_log") a_log_decays = p.weight_decay;
    if (p.name == "blocks.1.mixer.in_proj.weight") weight_decays = p.weight_decay;
  }
  for (const char* name : {"embedding.weight", "blocks.0.norm.weight", "blocks.0.mixer.in_proj.weight",
                           "blocks.0.mixer.conv1d.weight", "blocks.0.mixer.conv1d.bias", "blocks.0.mixer.x_proj.weight",
                           "blocks.0.mixer.dt_proj.weight", "blocks.0.mixer.dt_proj.bias", "blocks.0.mixer.A_log",
                           "blocks.0.mixer.D", "blocks.0.mixer.out_proj.weight", "norm_f.weight"})
    EXPECT_TRUE(names.count(name)) << name;
  EXPECT_FALSE(a_log_decays);
  EXPECT_TRUE(weight_decays);
  // Per layer: norm d, in_proj 2ed, conv e(w+1), x_proj (r+2n)e, dt_proj re+e, A_log en, D e, out_proj de.
  const int64_t d = 8, e = 16, n = 4, r = 2, w = 3, v = 11;
  const int64_t per_layer = d + 2 * e * d + e * (w + 1) + (r + 2 * n) * e + r * e + e + e * n + e + d * e;
  EXPECT_EQ(model.num_parameters(), v * d + 2 * per_layer + d);
}

TEST(Mamba1Model, SameSeedSameModelAndLoss) {
  LanguageModel a(tiny(), 7), b(tiny(), 7), c(tiny(), 8);
  const Tensor x = ids({1, 2, 3, 4, 5, 6, 7, 8}, {2, 4}), y = ids({2, 3, 4, 5, 6, 7, 8, 9}, {2, 4});
  EXPECT_EQ(a.loss(x, y).item(), b.loss(x, y).item());
  EXPECT_NE(a.loss(x, y).item(), c.loss(x, y).item());
}

TEST(Mamba1Model, FiniteDifferenceGradientsOfEveryParameter) {
  LanguageModel model(tiny(), 3, DType::f64);
  const Tensor x = ids({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {2, 5}), y = ids({2, 3, 4, 5, 6, 7, 8, 9, 10, 0}, {2, 5});
  Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 1, 1, 1, 0, 0, 0, 2, 2}, {2, 5}, DType::i32);
  EXPECT_GT(testing::expect_model_gradients_match_finite_differences(model, x, y, doc), 50);
}

ModelOptions tiny_mamba2() {
  ModelOptions o;
  o.config.vocab_size = 11;
  o.config.d_model = 8;
  o.config.n_layers = 2;
  o.config.family = configs::Family::mamba2;
  o.config.mamba2.d_state = 4;
  o.config.mamba2.d_conv = 3;
  o.config.mamba2.expand = 2;
  o.config.mamba2.head_dim = 4;  // 4 heads
  o.config.mamba2.ngroups = 2;
  return o;
}

TEST(Mamba2Model, FiniteDifferenceGradientsOfEveryParameter) {
  LanguageModel model(tiny_mamba2(), 4, DType::f64);
  const Tensor x = ids({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {2, 5}), y = ids({2, 3, 4, 5, 6, 7, 8, 9, 10, 0}, {2, 5});
  Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 1, 1, 1, 0, 0, 0, 2, 2}, {2, 5}, DType::i32);
  EXPECT_GT(testing::expect_model_gradients_match_finite_differences(model, x, y, doc), 50);
}

TEST(Mamba2Model, InconsistentDimensionsAreClearErrors) {
  ModelOptions o = tiny_mamba2();
  o.config.mamba2.head_dim = 5;  // d_inner 16 is not a multiple of 5
  EXPECT_THROW(LanguageModel(o, 1), std::invalid_argument);
  o = tiny_mamba2();
  o.config.mamba2.ngroups = 3;  // 4 heads
  EXPECT_THROW(LanguageModel(o, 1), std::invalid_argument);
}

TEST(Mamba1Model, DocumentBoundariesIsolateDocuments) {
  // With a boundary, the second document's logits do not depend on the first document.
  LanguageModel model(tiny(), 5);
  const Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 1, 1, 1}, {1, 6}, DType::i32);
  const std::vector<float> a = model.logits(ids({1, 2, 3, 4, 5, 6}, {1, 6}), doc).to_vector();
  const std::vector<float> b = model.logits(ids({9, 8, 7, 4, 5, 6}, {1, 6}), doc).to_vector();
  const int64_t v = 11;
  for (int64_t i = 3 * v; i < 6 * v; ++i) EXPECT_EQ(a[i], b[i]) << i;
  EXPECT_NE(a[0], b[0]);
}

TEST(Mamba1Model, LossFallsUnderGradientDescent) {
  ModelOptions o = tiny();
  o.config.d_model = 32;
  LanguageModel model(o, 11);
  std::vector<int64_t> seq;
  for (int i = 0; i < 33; ++i) seq.push_back((i * 3) % 11);  // a periodic sequence
  const Tensor x = ids(std::vector<int64_t>(seq.begin(), seq.end() - 1), {1, 32});
  const Tensor y = ids(std::vector<int64_t>(seq.begin() + 1, seq.end()), {1, 32});
  const double first = model.loss(x, y).item();
  double last = first;
  for (int step = 0; step < 60; ++step) {
    model.zero_grad();
    Tensor loss = model.loss(x, y);
    last = loss.item();
    loss.backward();
    NoGradGuard no_grad;
    for (const NamedParameter& p : model.named_parameters()) add_(*p.value, mul(p.value->grad(), -0.05));
  }
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
}

}  // namespace
}  // namespace ssmtrain
