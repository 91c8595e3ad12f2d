// The tape: ordering, accumulation, no-grad mode, checkpointing and error cases.
#include <stdexcept>
#include <gtest/gtest.h>

#include <cmath>

#include "autograd/checkpoint.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

Tensor vec(std::vector<float> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector(v, {n});
}

TEST(Engine, ChainRuleMatchesHandDerivative) {
  // L = sum(exp(2x) * x): dL/dx = exp(2x) (2x + 1).
  Tensor x = vec({-1.0f, 0.0f, 0.5f, 2.0f});
  x.set_requires_grad();
  sum(mul(exp(mul(x, 2.0)), x)).backward();
  const std::vector<float> g = x.grad().to_vector();
  const std::vector<float> xv = x.to_vector();
  for (size_t i = 0; i < xv.size(); ++i)
    EXPECT_NEAR(g[i], std::exp(2 * xv[i]) * (2 * xv[i] + 1), 1e-5 * std::exp(2 * xv[i]) + 1e-6);
}

TEST(Engine, TensorUsedTwiceSumsBothPaths) {
  Tensor x = vec({1.0f, 2.0f, 3.0f});
  x.set_requires_grad();
  sum(add(mul(x, x), x)).backward();  // d/dx (x^2 + x) = 2x + 1
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{3.0f, 5.0f, 7.0f}));
}

TEST(Engine, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = vec({1.0f, -2.0f});
  x.set_requires_grad();
  sum(mul(x, 3.0)).backward();
  sum(mul(x, 4.0)).backward();
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{7.0f, 7.0f}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
}

TEST(Engine, NoGradGuardRecordsNothing) {
  Tensor x = vec({1.0f, 2.0f});
  x.set_requires_grad();
  Tensor y;
  {
    NoGradGuard guard;
    EXPECT_FALSE(grad_enabled());
    y = mul(x, 2.0);
  }
  EXPECT_TRUE(grad_enabled());
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(y.grad_fn(), nullptr);
  EXPECT_THROW(sum(y).backward(), std::logic_error);
}

TEST(Engine, DetachCutsTheGraph) {
  Tensor x = vec({1.0f, 2.0f});
  x.set_requires_grad();
  Tensor y = mul(x, 2.0);
  Tensor z = add(mul(y.detach(), y), 0.0);  // only the second factor carries gradient
  sum(z).backward();
  // dz/dx = detached(y) * 2 = 4x
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{4.0f, 8.0f}));
  EXPECT_TRUE(y.detach().shares_storage_with(y));
}

TEST(Engine, BackwardNeedsScalarOrExplicitGradient) {
  Tensor x = vec({1.0f, 2.0f});
  x.set_requires_grad();
  Tensor y = mul(x, 2.0);
  EXPECT_THROW(y.backward(), std::invalid_argument);
  y.backward(vec({1.0f, 10.0f}));
  EXPECT_EQ(x.grad().to_vector(), (std::vector<float>{2.0f, 20.0f}));
}

TEST(Engine, OnlyFloatLeavesCanRequireGrad) {
  Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 2}, {2});
  EXPECT_THROW(ids.set_requires_grad(), std::invalid_argument);
  Tensor x = vec({1.0f});
  x.set_requires_grad();
  Tensor y = mul(x, 2.0);
  EXPECT_THROW(y.set_requires_grad(), std::logic_error);
}

TEST(Engine, RepeatedRunsGiveIdenticalGradients) {
  auto run = [] {
    Tensor x = testing::random_f64({4, 6}, 5).to(DType::f32);
    Tensor w = testing::random_f64({3, 6}, 6).to(DType::f32);
    w.set_requires_grad();
    Tensor h = silu(linear(x, w));
    sum(add(mul(h, h), softmax(h, -1))).backward();
    return w.grad().to_vector();
  };
  const std::vector<float> first = run();
  EXPECT_EQ(first, run());
}

TEST(Checkpoint, SameGradientsAsPlainRunAndRecomputesOnce) {
  const Tensor x0 = testing::random_f64({3, 4}, 7).to(DType::f32);
  const Tensor w0 = testing::random_f64({4, 4}, 8).to(DType::f32);
  int calls = 0;
  auto block = [&](const std::vector<Tensor>& in, const Tensor& w) {
    ++calls;
    return std::vector<Tensor>{gelu(linear(in[0], w)), silu(in[0])};
  };

  Tensor x1 = x0.clone(), w1 = w0.clone();
  x1.set_requires_grad();
  w1.set_requires_grad();
  std::vector<Tensor> plain = block({x1}, w1);
  sum(mul(plain[0], plain[1])).backward();
  EXPECT_EQ(calls, 1);

  Tensor x2 = x0.clone(), w2 = w0.clone();
  x2.set_requires_grad();
  w2.set_requires_grad();
  std::vector<Tensor> ck = checkpoint([&](const std::vector<Tensor>& in) { return block(in, w2); }, {x2});
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(ck[0].to_vector(), plain[0].to_vector());
  sum(mul(ck[0], ck[1])).backward();
  EXPECT_EQ(calls, 3);  // recomputed exactly once in backward
  EXPECT_EQ(x2.grad().to_vector(), x1.grad().to_vector());
  EXPECT_EQ(w2.grad().to_vector(), w1.grad().to_vector());  // parameter captured by fn
}

TEST(Checkpoint, PassesGradientGradcheck) {
  const Tensor w = testing::random_f64({4, 4}, 9);
  EXPECT_TRUE(testing::gradcheck([&](const std::vector<Tensor>& v) {
    Tensor ww = v[1];
    return checkpoint([ww](const std::vector<Tensor>& in) {
      return std::vector<Tensor>{silu(linear(in[0], ww))};
    }, {v[0]})[0];
  }, {testing::random_f64({2, 4}, 10), w}));
}

TEST(Checkpoint, UnderNoGradIsPlainCall) {
  Tensor x = vec({1.0f, 2.0f});
  x.set_requires_grad();
  NoGradGuard guard;
  std::vector<Tensor> out = checkpoint([](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{mul(in[0], 2.0)};
  }, {x});
  EXPECT_FALSE(out[0].requires_grad());
}

}  // namespace
}  // namespace ssmtrain
