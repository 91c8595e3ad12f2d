// Tests of kernels/swiglu.h on the CPU: forward against silu(gate) * up written here in
// double, and the backward against central finite differences of that formula; float and
// double, odd and even widths.
#include "kernels/swiglu.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/support/reference.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::matches;
using ssmtrain::testing::random_values;

double silu_times(double g, double u) { return g / (1.0 + std::exp(-g)) * u; }

template <typename T> class Swiglu : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Swiglu, FloatTypes);

TYPED_TEST(Swiglu, ForwardMatchesFormula) {
  using T = TypeParam;
  for (int64_t rows : {1, 5, 32})
    for (int64_t f : {1, 7, 64, 129}) {
      const std::vector<T> gate_up = random_values<T>(rows * 2 * f, 10 + f, 2.0);  // (rows, 2f)
      std::vector<T> out(size_t(rows * f));
      cpu::swiglu_forward(gate_up.data(), rows, f, out.data());
      std::vector<double> ref(out.size());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < f; ++j)
          ref[r * f + j] = silu_times(double(gate_up[r * 2 * f + j]), double(gate_up[r * 2 * f + f + j]));
      EXPECT_TRUE(matches(out, ref)) << rows << "x" << f;
    }
}

// d/d gate_up of sum(out * dout) by central differences of the double formula.
TYPED_TEST(Swiglu, BackwardMatchesFiniteDifferences) {
  using T = TypeParam;
  for (int64_t rows : {1, 3})
    for (int64_t f : {1, 6, 33}) {
      const std::vector<T> gate_up = random_values<T>(rows * 2 * f, 20 + f, 2.0);
      const std::vector<T> dout = random_values<T>(rows * f, 30 + f);
      std::vector<T> grad(gate_up.size());
      cpu::swiglu_backward(gate_up.data(), dout.data(), rows, f, grad.data());
      std::vector<double> ref(grad.size());
      const double h = 1e-6;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < f; ++j) {
          const double g = gate_up[r * 2 * f + j], u = gate_up[r * 2 * f + f + j], dy = dout[r * f + j];
          ref[r * 2 * f + j] = dy * (silu_times(g + h, u) - silu_times(g - h, u)) / (2 * h);
          ref[r * 2 * f + f + j] = dy * (silu_times(g, u + h) - silu_times(g, u - h)) / (2 * h);
        }
      // Finite differences carry ~1e-9 relative error: loosen the double bound accordingly.
      EXPECT_TRUE(matches(grad, ref, std::is_same_v<T, double> ? 1e4 : 1.0)) << rows << "x" << f;
    }
}

TEST(SwigluErrors, NegativeSizesNameTheOp) {
  std::vector<float> buf(4);
  try {
    cpu::swiglu_forward(buf.data(), -1, 2, buf.data());
    FAIL();
  } catch (const KernelError& e) {
    EXPECT_NE(std::string(e.what()).find("swiglu_forward"), std::string::npos) << e.what();
  }
}

}  // namespace
