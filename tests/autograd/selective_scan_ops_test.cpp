// Finite-difference gradients (f64, CPU) of the selective scan node, with every optional
// input, groups, document boundaries and the final state as a second output.
#include <stdexcept>
#include <gtest/gtest.h>

#include "autograd/ops.h"
#include "autograd/selective_scan_ops.h"
#include "tests/support/gradcheck.h"

namespace ssmtrain {
namespace {

using testing::gradcheck;
using testing::random_f64;
using V = std::vector<Tensor>;

TEST(SelectiveScanGrad, AllInputsWithFinalState) {
  const int64_t b = 2, d = 4, l = 9, n = 3, g = 2;
  Tensor doc = Tensor::from_vector(std::vector<int64_t>{0, 0, 0, 1, 1, 1, 1, 2, 2, 5, 5, 5, 5, 5, 5, 5, 6, 6},
                                   {b, l}, DType::i32);
  const V inputs{random_f64({b, d, l}, 1), random_f64({b, d, l}, 2, 0.5, -0.5), random_f64({d, n}, 3, 0.3, -0.8),
                 random_f64({b, g, n, l}, 4), random_f64({b, g, n, l}, 5), random_f64({d}, 6),
                 random_f64({b, d, l}, 7), random_f64({d}, 8, 0.1), random_f64({b, d, n}, 9)};
  for (bool with_doc : {false, true}) {
    EXPECT_TRUE(gradcheck([&](const V& x) {
      SelectiveScanInputs in{x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], with_doc ? doc : Tensor(), true};
      SelectiveScanOutputs out = selective_scan(in, true);
      // Both outputs feed the loss: out and the final state.
      return concat({reshape(out.out, {-1}), reshape(mul(out.final_state, 0.7), {-1})}, 0);
    }, inputs)) << "doc " << with_doc;
  }
}

TEST(SelectiveScanGrad, MinimalInputsWithoutSoftplus) {
  const V inputs{random_f64({1, 3, 6}, 11), random_f64({1, 3, 6}, 12, 0.2, 0.5), random_f64({3, 2}, 13, 0.3, -0.5),
                 random_f64({1, 1, 2, 6}, 14), random_f64({1, 1, 2, 6}, 15)};
  EXPECT_TRUE(gradcheck([](const V& x) {
    SelectiveScanInputs in{x[0], x[1], x[2], x[3], x[4], {}, {}, {}, {}, {}, false};
    return selective_scan(in).out;
  }, inputs));
}

TEST(SelectiveScanGrad, BadShapesAreClearErrors) {
  SelectiveScanInputs in{random_f64({1, 3, 6}, 1), random_f64({1, 3, 5}, 2), random_f64({3, 2}, 3),
                         random_f64({1, 1, 2, 6}, 4), random_f64({1, 1, 2, 6}, 5)};
  try {
    selective_scan(in);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("delta must be [1, 3, 6]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ssmtrain
