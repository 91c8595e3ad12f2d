// Finite-difference gradient checks (f64, CPU) for every differentiable op of autograd/ops.h.
#include <gtest/gtest.h>

#include "autograd/ops.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

using testing::gradcheck;
using testing::random_f64;
using V = std::vector<Tensor>;

TEST(OpsGradcheck, MatmulAllTransposes) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const Tensor a = random_f64(ta ? Shape{5, 3} : Shape{3, 5}, 1);
      const Tensor b = random_f64(tb ? Shape{4, 5} : Shape{5, 4}, 2);
      EXPECT_TRUE(gradcheck([&](const V& x) { return matmul(x[0], x[1], ta, tb); }, {a, b}))
          << "trans_a " << ta << " trans_b " << tb;
    }
}

TEST(OpsGradcheck, MatmulBatchedAndFolded) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const Tensor a = random_f64(ta ? Shape{2, 4, 3} : Shape{2, 3, 4}, 3);
      const Tensor b = random_f64(tb ? Shape{2, 5, 4} : Shape{2, 4, 5}, 4);
      EXPECT_TRUE(gradcheck([&](const V& x) { return matmul(x[0], x[1], ta, tb); }, {a, b}));
    }
  // (b, l, k) @ (k, n): the leading dimensions fold into rows.
  EXPECT_TRUE(gradcheck([](const V& x) { return matmul(x[0], x[1]); },
                        {random_f64({2, 3, 4}, 5), random_f64({4, 3}, 6)}));
}

// One operand 2-D and shared by every batch, the other 3-D: every transpose combination,
// against finite differences, and the forward against the same product with the shared operand
// repeated per batch.
TEST(OpsGradcheck, MatmulWithAnOperandSharedByTheBatch) {
  for (bool shared_a : {true, false})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const Shape a_shape = ta ? Shape{4, 3} : Shape{3, 4};
        const Shape b_shape = tb ? Shape{5, 4} : Shape{4, 5};
        const Tensor a = random_f64(shared_a ? a_shape : Shape{2, a_shape[0], a_shape[1]}, 20 + ta);
        const Tensor b = random_f64(shared_a ? Shape{2, b_shape[0], b_shape[1]} : b_shape, 22 + tb);
        if (!shared_a && !ta) continue;  // (B, m, k) @ (k, n) folds into 2-D rows (tested above)
        EXPECT_TRUE(gradcheck([&](const V& x) { return matmul(x[0], x[1], ta, tb); }, {a, b}))
            << "shared " << (shared_a ? "a" : "b") << " ta " << ta << " tb " << tb;
        const auto twice = [](const Tensor& t) {
          const Tensor one = reshape(t, {1, t.size(0), t.size(1)});
          return concat({one, one}, 0);
        };
        const Tensor a3 = shared_a ? twice(a) : a, b3 = shared_a ? b : twice(b);
        const std::vector<double> got = matmul(a, b, ta, tb).values<double>();
        const std::vector<double> want = matmul(a3, b3, ta, tb).values<double>();
        ASSERT_EQ(got.size(), want.size());
        for (size_t i = 0; i < got.size(); ++i) EXPECT_DOUBLE_EQ(got[i], want[i]) << i;
      }
}

TEST(OpsGradcheck, LinearWithBias) {
  EXPECT_TRUE(gradcheck([](const V& x) { return linear(x[0], x[1], x[2]); },
                        {random_f64({2, 3, 5}, 7), random_f64({4, 5}, 8), random_f64({4}, 9)}));
}

TEST(OpsGradcheck, BinaryOpsBroadcast) {
  const Tensor a = random_f64({3, 1, 4}, 10);
  const Tensor b = random_f64({2, 4}, 11);
  const Tensor b_pos = add(mul(random_f64({2, 4}, 12), 0.1), 2.0);  // away from 0 for div
  EXPECT_TRUE(gradcheck([](const V& x) { return add(x[0], x[1]); }, {a, b}));
  EXPECT_TRUE(gradcheck([](const V& x) { return sub(x[0], x[1]); }, {a, b}));
  EXPECT_TRUE(gradcheck([](const V& x) { return mul(x[0], x[1]); }, {a, b}));
  EXPECT_TRUE(gradcheck([](const V& x) { return div(x[0], x[1]); }, {a, b_pos}));
  EXPECT_TRUE(gradcheck([](const V& x) { return div(x[1], x[0]); }, {add(mul(a, 0.1), 2.0), b}));
  // Same shapes, and a scalar-shaped operand.
  EXPECT_TRUE(gradcheck([](const V& x) { return mul(x[0], x[1]); },
                        {random_f64({7}, 13), random_f64({7}, 14)}));
  EXPECT_TRUE(gradcheck([](const V& x) { return mul(x[0], x[1]); },
                        {random_f64({3, 2}, 15), random_f64({1}, 16)}));
}

TEST(OpsGradcheck, ScalarOps) {
  const Tensor x = random_f64({3, 5}, 17);
  EXPECT_TRUE(gradcheck([](const V& v) { return add(v[0], 2.5); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return mul(v[0], -1.5); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return affine(v[0], 0.3, -4.0); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return v[0] / 4.0 - 1.0; }, {x}));
  const Tensor pos = add(mul(x, 0.1), 1.5);
  EXPECT_TRUE(gradcheck([](const V& v) { return pow(v[0], 3.0); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return pow(v[0], -0.5); }, {pos}));
  EXPECT_TRUE(gradcheck([](const V& v) { return pow(v[0], 1.7); }, {pos}));
}

TEST(OpsGradcheck, UnaryActivations) {
  const Tensor x = random_f64({4, 7}, 18, 2.0);
  const Tensor pos = add(mul(x, 0.1), 1.5);
  EXPECT_TRUE(gradcheck([](const V& v) { return neg(v[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return exp(v[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return log(v[0]); }, {pos}));
  EXPECT_TRUE(gradcheck([](const V& v) { return sqrt(v[0]); }, {pos}));
  EXPECT_TRUE(gradcheck([](const V& v) { return square(v[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return sigmoid(v[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return silu(v[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return gelu(v[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return softplus(v[0]); }, {x}));
}

TEST(OpsGradcheck, SumAndMeanOverEachDim) {
  const Tensor x = random_f64({2, 3, 4}, 19);
  for (int64_t dim : {0, 1, 2, -1})
    for (bool keepdim : {false, true}) {
      EXPECT_TRUE(gradcheck([=](const V& v) { return sum(v[0], dim, keepdim); }, {x})) << dim;
      EXPECT_TRUE(gradcheck([=](const V& v) { return mean(v[0], dim, keepdim); }, {x})) << dim;
    }
  EXPECT_TRUE(gradcheck([](const V& v) { return sum(v[0]); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return mean(v[0]); }, {x}));
}

TEST(OpsGradcheck, SoftmaxAndLogSoftmax) {
  const Tensor x = random_f64({3, 4, 5}, 20, 2.0);
  for (int64_t dim : {0, 1, 2}) {
    EXPECT_TRUE(gradcheck([=](const V& v) { return softmax(v[0], dim); }, {x})) << dim;
    EXPECT_TRUE(gradcheck([=](const V& v) { return log_softmax(v[0], dim); }, {x})) << dim;
  }
}

TEST(OpsGradcheck, RmsNorm) {
  EXPECT_TRUE(gradcheck([](const V& v) { return rmsnorm(v[0], v[1], 1e-5); },
                        {random_f64({2, 3, 8}, 21), random_f64({8}, 22, 0.5, 1.0)}));
  EXPECT_TRUE(gradcheck([](const V& v) { return rmsnorm(v[0], v[1], 1e-2); },
                        {random_f64({5, 7}, 23), random_f64({7}, 24)}));
}

TEST(OpsGradcheck, EmbeddingWithRepeatedIds) {
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{3, 0, 3, 1, 3, 4}, {2, 3});
  EXPECT_TRUE(gradcheck([](const V& v) { return embedding(v[0], v[1]); }, {ids, random_f64({5, 4}, 25)}));
  const Tensor ids32 = ids.to(DType::i32);
  EXPECT_TRUE(gradcheck([](const V& v) { return embedding(v[0], v[1]); }, {ids32, random_f64({5, 4}, 26)}));
}

TEST(OpsGradcheck, CrossEntropyWithIgnoreIndex) {
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{2, -100, 0, 6, 6}, {5});
  EXPECT_TRUE(gradcheck([](const V& v) { return cross_entropy(v[0], v[1]); },
                        {random_f64({5, 7}, 27, 2.0), targets}));
  // Scaled upstream gradient flows through too.
  const Tensor targets6 = Tensor::from_vector(std::vector<int64_t>{2, 6, 0, 6, 1}, {5}, DType::i32);
  EXPECT_TRUE(gradcheck([](const V& v) { return mul(cross_entropy(v[0], v[1], 6), 3.0); },
                        {random_f64({5, 7}, 28, 2.0), targets6}));
  // A target outside the vocabulary that is not ignore_index is an error naming the row.
  EXPECT_THROW(cross_entropy(random_f64({5, 7}, 28), targets, 6), std::exception);
}

TEST(OpsGradcheck, ShapeOps) {
  const Tensor x = random_f64({2, 3, 4}, 29);
  EXPECT_TRUE(gradcheck([](const V& v) { return reshape(v[0], {4, -1}); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return narrow(v[0], 2, 1, 2); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return transpose(v[0], 0, 2); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return transpose(v[0], -1, -2); }, {x}));
  // A reshape of a non-contiguous narrow copies, and still routes the gradient.
  EXPECT_TRUE(gradcheck([](const V& v) { return reshape(narrow(v[0], 1, 1, 2), {-1}); }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return concat({v[0], v[1], v[0]}, 1); },
                        {x, random_f64({2, 1, 4}, 30)}));
  // Only some split outputs are used: the others get zero gradient.
  EXPECT_TRUE(gradcheck([](const V& v) {
    std::vector<Tensor> parts = split(v[0], {1, 2, 1}, 2);
    return mul(parts[1], sum(parts[3 - 1 - 0], 2, true));
  }, {x}));
  EXPECT_TRUE(gradcheck([](const V& v) { return clone(v[0]); }, {x}));
}

TEST(OpsGradcheck, CastRoutesGradientBack) {
  // f64 -> f32 -> f64 is the identity up to f32 rounding, so check with a loose tolerance.
  testing::GradcheckOptions loose;
  loose.eps = 1e-3;
  loose.rtol = 1e-4;
  loose.atol = 1e-5;
  EXPECT_TRUE(gradcheck([](const V& v) { return cast(mul(cast(v[0], DType::f32), 2.0), DType::f64); },
                        {random_f64({3, 4}, 31)}, loose));
}

TEST(OpsGradcheck, ComposedChain) {
  // A small two-layer network: the engine's ordering and accumulation across shared inputs.
  const Tensor x = random_f64({3, 4}, 32);
  const Tensor w1 = random_f64({6, 4}, 33, 0.5);
  const Tensor w2 = random_f64({5, 6}, 34, 0.5);
  const Tensor nw = random_f64({6}, 35, 0.1, 1.0);
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{1, 4, 0}, {3});
  EXPECT_TRUE(gradcheck([&](const V& v) {
    Tensor h = silu(linear(v[0], v[1]));
    h = add(h, rmsnorm(h, v[3]));  // h used twice
    return cross_entropy(linear(h, v[2]), targets);
  }, {x, w1, w2, nw}));
}

}  // namespace
}  // namespace ssmtrain
