// Finite-difference gradients (f64, CPU) of the causal conv1d node for every input (x,
// weight, bias, initial state), every width, with and without SiLU and document boundaries;
// the channel-last layout on a column slice of a wider tensor (read in place), by finite
// differences and against the channel-major node on transposed inputs.
#include <stdexcept>
#include <gtest/gtest.h>

#include "autograd/causal_conv1d_ops.h"
#include "autograd/ops.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

using testing::gradcheck;
using testing::random_f64;
using V = std::vector<Tensor>;

TEST(CausalConv1dGrad, AllInputs) {
  const int64_t b = 2, d = 3, l = 9;
  // Row 0: documents starting at 3 and 4 (a one-token document) and 7; row 1: at 8.
  Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 1, 2, 2, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 6},
                                   {b, l}, DType::i32);
  for (int64_t w : {2, 3, 4})
    for (bool silu : {false, true})
      for (bool with_doc : {false, true}) {
        const V inputs{random_f64({b, d, l}, 1), random_f64({d, w}, 2, 0.5), random_f64({d}, 3),
                       random_f64({b, d, w - 1}, 4)};
        EXPECT_TRUE(gradcheck([&](const V& x) {
          return causal_conv1d({x[0], x[1], x[2], x[3], with_doc ? doc : Tensor(), silu}).out;
        }, inputs)) << "w " << w << " silu " << silu << " doc " << with_doc;
      }
}

TEST(CausalConv1dGrad, WithoutOptionalInputsAndShortSequences) {
  for (int64_t l : {1, 2, 5}) {
    const V inputs{random_f64({1, 2, l}, 11), random_f64({2, 4}, 12)};
    EXPECT_TRUE(gradcheck([](const V& x) { return causal_conv1d({x[0], x[1], {}, {}, {}, true}).out; }, inputs))
        << "l " << l;
  }
}

TEST(CausalConv1dGrad, FinalStateIsTheLastInputs) {
  Tensor x = random_f64({1, 2, 5}, 21), weight = random_f64({2, 4}, 22);
  CausalConv1dOutputs out = causal_conv1d({x, weight, {}, {}, {}, false}, true);
  const std::vector<double> xs = x.values<double>(), state = out.final_state.values<double>();
  ASSERT_EQ(state.size(), 6u);
  for (int64_t c = 0; c < 2; ++c)
    for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(state[c * 3 + i], xs[c * 5 + 2 + i]);
}

TEST(CausalConv1dGrad, BadShapesAreClearErrors) {
  try {
    causal_conv1d({random_f64({1, 3, 6}, 1), random_f64({3, 4}, 2), {}, random_f64({1, 3, 4}, 3)});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("initial_state must be [1, 3, 3]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(causal_conv1d({random_f64({1, 3, 6}, 1), random_f64({3, 5}, 2)}), std::invalid_argument);
}

TEST(CausalConv1dGrad, ChannelLastOnASliceAllInputs) {
  const int64_t b = 2, d = 3, l = 9;
  Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 1, 2, 2, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 6},
                                   {b, l}, DType::i32);
  for (int64_t w : {2, 4})
    for (bool silu : {false, true})
      for (bool with_doc : {false, true}) {
        // x is columns 2 .. 2 + d of a (b, l, d + 4) tensor, as xBC of the in_proj output.
        const V inputs{random_f64({b, l, d + 4}, 31), random_f64({d, w}, 32, 0.5), random_f64({d}, 33),
                       random_f64({b, d, w - 1}, 34)};
        EXPECT_TRUE(gradcheck([&](const V& x) {
          return causal_conv1d({narrow(x[0], 2, 2, d), x[1], x[2], x[3], with_doc ? doc : Tensor(), silu, true}).out;
        }, inputs)) << "w " << w << " silu " << silu << " doc " << with_doc;
      }
}

TEST(CausalConv1dGrad, ChannelLastEqualsChannelMajorTransposed) {
  const int64_t b = 2, d = 5, l = 12, w = 4;
  Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2,
                                                        7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 8, 8}, {b, l}, DType::i32);
  Tensor wide = random_f64({b, l, d + 2}, 41), weight = random_f64({d, w}, 42, 0.5), bias = random_f64({d}, 43),
         init = random_f64({b, d, w - 1}, 44);
  for (Tensor* t : {&wide, &weight, &bias, &init}) t->set_requires_grad(true);
  const Tensor dout = random_f64({b, l, d}, 45);
  const CausalConv1dOutputs last = causal_conv1d({narrow(wide, 2, 1, d), weight, bias, init, doc, true, true}, true);
  auto grads = [&](const Tensor& out_bld) {  // d sum(out * dout) / d (wide, weight, bias, init)
    sum(mul(out_bld, dout)).backward();
    std::vector<std::vector<double>> g;
    for (const Tensor* t : {&wide, &weight, &bias, &init}) {
      g.push_back(t->grad().values<double>());
      t->zero_grad();
    }
    return g;
  };
  const auto g_last = grads(last.out);
  const Tensor x_major = transpose(narrow(wide, 2, 1, d), 1, 2);  // (b, d, l)
  const CausalConv1dOutputs major = causal_conv1d({x_major, weight, bias, init, doc, true}, true);
  const auto g_major = grads(transpose(major.out, 1, 2));
  EXPECT_EQ(transpose(major.out, 1, 2).values<double>(), last.out.values<double>());
  EXPECT_EQ(major.final_state.values<double>(), last.final_state.values<double>());
  for (size_t i = 0; i < g_last.size(); ++i) EXPECT_EQ(g_major[i], g_last[i]) << i;
}

TEST(CausalConv1dGrad, ChannelLastBadShapesAreClearErrors) {
  try {
    causal_conv1d({random_f64({1, 6, 3}, 1), random_f64({4, 4}, 2), {}, {}, {}, true, true});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("weight must be [3, 4]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ssmtrain
