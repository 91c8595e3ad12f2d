// Tests of kernels/elementwise.h on the CPU: every activation and its derivative against
// formulas written here in double (plus finite differences), affine and power maps, and
// broadcasting binary ops with their gradients; float and double, odd and even sizes.
#include "tests/support/reference.h"
#include "kernels/elementwise.h"

#include <algorithm>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::matches;
using ssmtrain::testing::random_values;

const int64_t kSizes[] = {1, 7, 64, 129};

// ---- reference formulas, in double ----

const double kSqrt2 = std::sqrt(2.0), kPi = std::acos(-1.0);

double ref_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
double ref_phi(double x) { return 0.5 * std::erfc(-x / kSqrt2); }  // normal CDF
double ref_forward(UnaryOp op, double x) {
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return std::log(x);
    case UnaryOp::silu: return x / (1.0 + std::exp(-x));
    case UnaryOp::gelu: return x * ref_phi(x);
    case UnaryOp::softplus: return std::log(1.0 + std::exp(x));
    case UnaryOp::sigmoid: return ref_sigmoid(x);
    case UnaryOp::sqrt: return std::sqrt(x);
    case UnaryOp::square: return x * x;
  }
  return 0;
}
// d op / dx
double ref_derivative(UnaryOp op, double x) {
  switch (op) {
    case UnaryOp::neg: return -1;
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return 1 / x;
    case UnaryOp::silu: return ref_sigmoid(x) * (1 + x * (1 - ref_sigmoid(x)));
    case UnaryOp::gelu: return ref_phi(x) + x * std::exp(-x * x / 2) / std::sqrt(2 * kPi);
    case UnaryOp::softplus: return ref_sigmoid(x);
    case UnaryOp::sigmoid: return ref_sigmoid(x) * (1 - ref_sigmoid(x));
    case UnaryOp::sqrt: return 0.5 / std::sqrt(x);
    case UnaryOp::square: return 2 * x;
  }
  return 0;
}
bool needs_positive(UnaryOp op) { return op == UnaryOp::log || op == UnaryOp::sqrt; }

const UnaryOp kUnaryOps[] = {UnaryOp::neg,      UnaryOp::exp,     UnaryOp::log,
                             UnaryOp::silu,     UnaryOp::gelu,    UnaryOp::softplus,
                             UnaryOp::sigmoid,  UnaryOp::sqrt,    UnaryOp::square};

template <typename T> std::vector<T> unary_inputs(UnaryOp op, int64_t n, uint64_t seed) {
  std::vector<T> x = random_values<T>(n, seed, 3.0);
  if (needs_positive(op))
    for (T& v : x) v = std::fabs(v) + T(0.05);
  return x;
}

template <typename T> class Elementwise : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Elementwise, FloatTypes);

TYPED_TEST(Elementwise, UnaryForwardMatchesFormula) {
  using T = TypeParam;
  for (UnaryOp op : kUnaryOps)
    for (int64_t n : kSizes) {
      const std::vector<T> x = unary_inputs<T>(op, n, 10 + n);
      std::vector<T> y(static_cast<size_t>(n));
      cpu::unary_forward(op, x.data(), y.data(), n);
      std::vector<double> ref(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) ref[i] = ref_forward(op, double(x[i]));
      EXPECT_TRUE(matches(y, ref)) << "op " << int(op) << " n " << n;
    }
}

TYPED_TEST(Elementwise, UnaryBackwardMatchesDerivative) {
  using T = TypeParam;
  for (UnaryOp op : kUnaryOps)
    for (int64_t n : kSizes) {
      const std::vector<T> x = unary_inputs<T>(op, n, 20 + n);
      const std::vector<T> dy = random_values<T>(n, 30 + n);
      std::vector<T> y(static_cast<size_t>(n)), dx(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(ref_forward(op, double(x[i])));
      cpu::unary_backward(op, x.data(), y.data(), dy.data(), dx.data(), n);
      std::vector<double> ref(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) ref[i] = double(dy[i]) * ref_derivative(op, double(x[i]));
      EXPECT_TRUE(matches(dx, ref)) << "op " << int(op) << " n " << n;
    }
}

TEST(ElementwiseDouble, UnaryBackwardMatchesFiniteDifferences) {
  const int64_t n = 64;
  for (UnaryOp op : kUnaryOps) {
    const std::vector<double> x = unary_inputs<double>(op, n, 40);
    std::vector<double> y(n), ones(n, 1.0), dx(n), plus(n), minus(n), xp = x, xm = x;
    const double h = 1e-6;
    for (int64_t i = 0; i < n; ++i) {
      xp[i] += h;
      xm[i] -= h;
    }
    cpu::unary_forward(op, x.data(), y.data(), n);
    cpu::unary_forward(op, xp.data(), plus.data(), n);
    cpu::unary_forward(op, xm.data(), minus.data(), n);
    cpu::unary_backward(op, x.data(), y.data(), ones.data(), dx.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double fd = (plus[i] - minus[i]) / (2 * h);
      EXPECT_NEAR(dx[i], fd, 1e-6 * (1 + std::fabs(fd))) << "op " << int(op) << " x " << x[i];
    }
  }
}

TEST(ElementwiseSpecialValues, StableAtExtremes) {
  const float big = 1000.0f;
  float y = 0;
  cpu::unary_forward(UnaryOp::sigmoid, &big, &y, 1);
  EXPECT_EQ(y, 1.0f);
  const float neg_big = -1000.0f;
  cpu::unary_forward(UnaryOp::sigmoid, &neg_big, &y, 1);
  EXPECT_EQ(y, 0.0f);
  cpu::unary_forward(UnaryOp::silu, &neg_big, &y, 1);
  EXPECT_EQ(y, 0.0f);
  cpu::unary_forward(UnaryOp::softplus, &big, &y, 1);
  EXPECT_EQ(y, 1000.0f);
  const double x30 = 30.0, x_small = -50.0;
  double yd = 0;
  cpu::unary_forward(UnaryOp::softplus, &x30, &yd, 1);
  EXPECT_EQ(yd, 30.0);
  cpu::unary_forward(UnaryOp::softplus, &x_small, &yd, 1);
  EXPECT_NEAR(yd, std::exp(-50.0), 1e-35);
  const double one = 1.0;
  cpu::unary_forward(UnaryOp::gelu, &one, &yd, 1);
  EXPECT_NEAR(yd, 0.8413447460685429, 1e-15);
  const float zero = 0.0f, minus_one = -1.0f;
  cpu::unary_forward(UnaryOp::log, &zero, &y, 1);
  EXPECT_TRUE(std::isinf(y) && y < 0);
  cpu::unary_forward(UnaryOp::log, &minus_one, &y, 1);
  EXPECT_TRUE(std::isnan(y));
  float dx = 0, dy = 1.0f;
  cpu::unary_backward(UnaryOp::softplus, &big, &big, &dy, &dx, 1);
  EXPECT_EQ(dx, 1.0f);
  cpu::unary_backward(UnaryOp::silu, &neg_big, &zero, &dy, &dx, 1);
  EXPECT_TRUE(std::isfinite(dx));
}

TYPED_TEST(Elementwise, AffineAndPower) {
  using T = TypeParam;
  for (int64_t n : kSizes) {
    const std::vector<T> x = random_values<T>(n, 50 + n);
    std::vector<T> y(static_cast<size_t>(n));
    cpu::affine(x.data(), y.data(), n, -1.5, 0.25);
    std::vector<double> ref(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ref[i] = -1.5 * double(x[i]) + 0.25;
    EXPECT_TRUE(matches(y, ref));

    std::vector<T> pos = x;
    for (T& v : pos) v = std::fabs(v) + T(0.1);
    const std::vector<T> dy = random_values<T>(n, 60 + n);
    for (double p : {2.0, 3.0, 0.5, -1.0, 1.7, 0.0}) {
      cpu::pow_scalar(pos.data(), y.data(), n, p);
      for (int64_t i = 0; i < n; ++i) ref[i] = std::pow(double(pos[i]), p);
      EXPECT_TRUE(matches(y, ref)) << "p " << p;
      cpu::pow_scalar_backward(pos.data(), dy.data(), y.data(), n, p);
      for (int64_t i = 0; i < n; ++i) ref[i] = double(dy[i]) * p * std::pow(double(pos[i]), p - 1);
      EXPECT_TRUE(matches(y, ref)) << "p " << p;
    }
  }
  const double zero = 0.0, one = 1.0;
  double dx = -1;
  cpu::pow_scalar_backward(&zero, &one, &dx, 1, 0.0);  // d/dx x^0 = 0, even at 0
  EXPECT_EQ(dx, 0.0);
}

// ---- binary ops ----

Layout make_layout(std::vector<int64_t> shape, std::vector<int64_t> strides) {
  Layout l;
  l.ndim = static_cast<int>(shape.size());
  for (int d = 0; d < l.ndim; ++d) {
    l.shape[d] = shape[d];
    l.strides[d] = strides[d];
  }
  return l;
}

// One broadcasting case: the output shape and each operand's strides over it (0 = broadcast).
struct BroadcastCase {
  std::vector<int64_t> shape, a_strides, b_strides;
  int64_t a_size, b_size;  // elements each operand's buffer holds
};

std::vector<BroadcastCase> broadcast_cases() {
  std::vector<BroadcastCase> cases;
  for (int64_t r : {1, 7, 64})
    for (int64_t c : {1, 7, 129}) {
      cases.push_back({{r, c}, {c, 1}, {c, 1}, r * c, r * c});  // same shape
      cases.push_back({{r, c}, {c, 1}, {0, 1}, r * c, c});      // b is a row (1, c)
      cases.push_back({{r, c}, {0, 1}, {1, 0}, c, r});           // a row, b a column
      cases.push_back({{r, c}, {1, r}, {c, 1}, r * c, r * c});   // a read transposed
    }
  cases.push_back({{3, 7, 5}, {35, 5, 1}, {0, 1, 0}, 105, 7});  // b (1, 7, 1)
  cases.push_back({{3, 7, 5}, {0, 5, 1}, {5, 0, 1}, 35, 15});   // a (1, 7, 5), b (3, 1, 5)
  cases.push_back({{}, {}, {}, 1, 1});                          // scalars
  return cases;
}

// Output element `flat` of the contiguous shape -> offset under the given strides.
int64_t offset_of(const BroadcastCase& bc, const std::vector<int64_t>& strides, int64_t flat) {
  int64_t offset = 0;
  for (int d = int(bc.shape.size()) - 1; d >= 0; --d) {
    offset += (flat % bc.shape[d]) * strides[d];
    flat /= bc.shape[d];
  }
  return offset;
}

double ref_binary(BinaryOp op, double a, double b) {
  switch (op) {
    case BinaryOp::add: return a + b;
    case BinaryOp::sub: return a - b;
    case BinaryOp::mul: return a * b;
    case BinaryOp::div: return a / b;
  }
  return 0;
}
// d(a op b)/d(operand) * dy
double ref_binary_grad(BinaryOp op, int which, double dy, double a, double b) {
  switch (op) {
    case BinaryOp::add: return dy;
    case BinaryOp::sub: return which == 0 ? dy : -dy;
    case BinaryOp::mul: return which == 0 ? dy * b : dy * a;
    case BinaryOp::div: return which == 0 ? dy / b : -dy * a / (b * b);
  }
  return 0;
}

const BinaryOp kBinaryOps[] = {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div};

TYPED_TEST(Elementwise, BinaryForwardBroadcasts) {
  using T = TypeParam;
  for (const BroadcastCase& bc : broadcast_cases()) {
    const Layout al = make_layout(bc.shape, bc.a_strides), bl = make_layout(bc.shape, bc.b_strides);
    const int64_t n = al.numel();
    const std::vector<T> a = random_values<T>(bc.a_size, 70);
    std::vector<T> b = random_values<T>(bc.b_size, 71, 1.0, 3.0);  // away from 0 for div
    for (BinaryOp op : kBinaryOps) {
      std::vector<T> out(static_cast<size_t>(n));
      cpu::binary_forward(op, a.data(), al, b.data(), bl, out.data());
      std::vector<double> ref(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        ref[i] = ref_binary(op, double(a[offset_of(bc, bc.a_strides, i)]),
                            double(b[offset_of(bc, bc.b_strides, i)]));
      EXPECT_TRUE(matches(out, ref)) << "op " << int(op) << " ndim " << bc.shape.size();
    }
  }
}

TYPED_TEST(Elementwise, BinaryBackwardBothOperands) {
  using T = TypeParam;
  for (const BroadcastCase& bc : broadcast_cases()) {
    const Layout al = make_layout(bc.shape, bc.a_strides), bl = make_layout(bc.shape, bc.b_strides);
    const int64_t n = al.numel();
    const std::vector<T> a = random_values<T>(bc.a_size, 80);
    const std::vector<T> b = random_values<T>(bc.b_size, 81, 1.0, 3.0);
    const std::vector<T> dy = random_values<T>(n, 82);
    for (BinaryOp op : kBinaryOps)
      for (int which : {0, 1}) {
        std::vector<T> d_full(static_cast<size_t>(n));
        cpu::binary_backward(op, which, dy.data(), a.data(), al, b.data(), bl, d_full.data());
        std::vector<double> ref(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
          ref[i] = ref_binary_grad(op, which, double(dy[i]), double(a[offset_of(bc, bc.a_strides, i)]),
                                   double(b[offset_of(bc, bc.b_strides, i)]));
        EXPECT_TRUE(matches(d_full, ref)) << "op " << int(op) << " which " << which;
      }
  }
}

TEST(ElementwiseErrors, RejectsMismatchedLayoutsAndBadOperand) {
  const Layout a = make_layout({2, 3}, {3, 1}), b = make_layout({3, 2}, {2, 1});
  float x[6] = {}, out[6] = {};
  EXPECT_THROW(cpu::binary_forward(BinaryOp::add, x, a, x, b, out), KernelError);
  EXPECT_THROW(cpu::binary_backward(BinaryOp::mul, 2, x, x, a, x, a, out), KernelError);
  EXPECT_THROW(cpu::unary_forward(UnaryOp::exp, x, out, int64_t{-1}), KernelError);
  EXPECT_THROW(cpu::unary_forward(static_cast<UnaryOp>(77), x, out, int64_t{1}), KernelError);
}

}  // namespace
