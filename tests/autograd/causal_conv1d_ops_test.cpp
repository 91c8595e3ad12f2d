// Finite-difference gradients (f64, CPU) of the causal conv1d node for every input (x,
// weight, bias, initial state), every width, with and without SiLU and document boundaries.
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

}  // namespace
}  // namespace ssmtrain
