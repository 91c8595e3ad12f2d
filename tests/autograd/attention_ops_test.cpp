// The attention node on the CPU: finite-difference gradients of q, k and v in f64 (MHA, GQA,
// documents, an explicit scale, odd sizes), the output against the kernel called directly,
// and clear errors for bad shapes, dtypes and non-contiguous inputs.
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "autograd/attention_ops.h"
#include "autograd/ops.h"
#include "kernels/attention.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

using testing::gradcheck;
using testing::random_f64;
using V = std::vector<Tensor>;

Tensor documents(int64_t b, int64_t l) {
  std::vector<int64_t> doc;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t t = 0; t < l; ++t) doc.push_back(bi == 0 ? (t >= 2) + (t >= 5) : t / 3);
  return Tensor::from_vector(doc, {b, l}, DType::i32);
}

TEST(AttentionGrad, MultiHead) {
  const V inputs{random_f64({2, 5, 2, 3}, 1), random_f64({2, 5, 2, 3}, 2), random_f64({2, 5, 2, 3}, 3)};
  EXPECT_TRUE(gradcheck([](const V& x) { return attention(x[0], x[1], x[2]); }, inputs));
}

TEST(AttentionGrad, GroupedQueryHeads) {
  const V inputs{random_f64({1, 6, 4, 3}, 4), random_f64({1, 6, 2, 3}, 5), random_f64({1, 6, 2, 3}, 6)};
  EXPECT_TRUE(gradcheck([](const V& x) { return attention(x[0], x[1], x[2]); }, inputs));
  const V mqa{random_f64({1, 4, 3, 2}, 7), random_f64({1, 4, 1, 2}, 8), random_f64({1, 4, 1, 2}, 9)};
  EXPECT_TRUE(gradcheck([](const V& x) { return attention(x[0], x[1], x[2], Tensor(), 0.7); }, mqa));
}

TEST(AttentionGrad, DocumentsAndSingleToken) {
  const Tensor doc = documents(2, 7);
  const V inputs{random_f64({2, 7, 2, 3}, 10), random_f64({2, 7, 1, 3}, 11), random_f64({2, 7, 1, 3}, 12)};
  EXPECT_TRUE(gradcheck([&](const V& x) { return attention(x[0], x[1], x[2], doc); }, inputs));
  const V one{random_f64({2, 1, 2, 5}, 13), random_f64({2, 1, 2, 5}, 14), random_f64({2, 1, 2, 5}, 15)};
  EXPECT_TRUE(gradcheck([](const V& x) { return attention(x[0], x[1], x[2]); }, one));
}

TEST(AttentionOp, MatchesKernelAndKeepsDtype) {
  Tensor q = random_f64({1, 4, 2, 3}, 20).to(DType::f32), k = random_f64({1, 4, 1, 3}, 21).to(DType::f32),
         v = random_f64({1, 4, 1, 3}, 22).to(DType::f32);
  const Tensor out = attention(q, k, v, Tensor(), 0.5);
  ASSERT_EQ(out.shape(), q.shape());
  ASSERT_EQ(out.dtype(), DType::f32);
  kernels::AttentionShape s{1, 4, 2, 1, 3, 0.5};
  std::vector<float> want(24), lse(8);
  const std::vector<float> qv = q.to_vector(), kv = k.to_vector(), vv = v.to_vector();
  kernels::cpu::attention_forward<float>(s, qv.data(), kv.data(), vv.data(), nullptr, want.data(), lse.data());
  EXPECT_EQ(out.to_vector(), want);
}

TEST(AttentionOp, BadInputsAreClearErrors) {
  const Tensor q = random_f64({1, 4, 3, 2}, 1), k = random_f64({1, 4, 2, 2}, 2);
  EXPECT_THROW(attention(q, k, k), std::invalid_argument);  // 2 kv heads do not divide 3
  const Tensor q2 = random_f64({1, 4, 2, 2}, 3);
  EXPECT_THROW(attention(q2, random_f64({1, 5, 2, 2}, 4), random_f64({1, 5, 2, 2}, 4)), std::invalid_argument);
  EXPECT_THROW(attention(q2, k, k, Tensor::zeros({1, 4}, DType::f32)), std::invalid_argument);  // doc not i32
  const Tensor wide = random_f64({1, 4, 4, 2}, 5);
  EXPECT_THROW(attention(narrow(wide, 2, 0, 2), k, k), std::invalid_argument);  // a non-contiguous view
}

}  // namespace
}  // namespace ssmtrain
