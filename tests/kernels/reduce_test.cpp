// Tests of kernels/reduce.h on the CPU: sum over a dimension and its backward, sum of a
// broadcast gradient back to an operand's shape, (log-)softmax forward and backward, and
// whole-tensor sums, against naive double loops written here; results must not depend on
// the thread count.
#include "tests/support/reference.h"
#include "kernels/reduce.h"

#include <algorithm>
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::matches;
using ssmtrain::testing::random_values;

// (outer, n, inner) shapes: odd and even, with n, outer or inner equal to 1.
std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes() {
  std::vector<std::tuple<int64_t, int64_t, int64_t>> s;
  for (int64_t n : {1, 7, 64, 129}) {
    s.emplace_back(1, n, 1);
    s.emplace_back(7, n, 1);
    s.emplace_back(3, n, 64);
    s.emplace_back(1, n, 129);
  }
  return s;
}

template <typename T> class Reduce : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Reduce, FloatTypes);

TYPED_TEST(Reduce, SumDimMatchesNaiveSum) {
  using T = TypeParam;
  for (auto [outer, n, inner] : shapes()) {
    const std::vector<T> x = random_values<T>(outer * n * inner, 1 + n);
    std::vector<T> y(static_cast<size_t>(outer * inner));
    cpu::sum_dim(x.data(), outer, n, inner, y.data(), 0.5);
    std::vector<double> ref(static_cast<size_t>(outer * inner), 0.0);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < inner; ++i) ref[o * inner + i] += 0.5 * double(x[(o * n + j) * inner + i]);
    EXPECT_TRUE(matches(y, ref)) << outer << "x" << n << "x" << inner;
  }
}

TYPED_TEST(Reduce, SumDimBackwardBroadcastsAlongN) {
  using T = TypeParam;
  for (auto [outer, n, inner] : shapes()) {
    const std::vector<T> dy = random_values<T>(outer * inner, 2 + n);
    std::vector<T> dx(static_cast<size_t>(outer * n * inner));
    cpu::sum_dim_backward(dy.data(), outer, n, inner, dx.data(), -2.0);
    std::vector<double> ref(dx.size());
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < inner; ++i) ref[(o * n + j) * inner + i] = -2.0 * double(dy[o * inner + i]);
    EXPECT_TRUE(matches(dx, ref));
  }
}

Layout make_layout(std::vector<int64_t> shape, std::vector<int64_t> strides) {
  Layout l;
  l.ndim = static_cast<int>(shape.size());
  for (int d = 0; d < l.ndim; ++d) {
    l.shape[d] = shape[d];
    l.strides[d] = strides[d];
  }
  return l;
}

// sum_to: full shape -> the operand shape `kept` (1 on reduced dims). dst strides are the
// contiguous strides of `kept`, with 0 on reduced dims.
template <typename T>
void check_sum_to(const std::vector<int64_t>& full_shape, const std::vector<int64_t>& kept) {
  const int ndim = int(full_shape.size());
  std::vector<int64_t> full_strides(ndim, 1), dst_strides(ndim, 0);
  for (int d = ndim - 2; d >= 0; --d) full_strides[d] = full_strides[d + 1] * full_shape[d + 1];
  int64_t step = 1, dst_numel = 1, full_numel = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    dst_strides[d] = kept[d] == 1 ? 0 : step;
    step *= kept[d];
    dst_numel *= kept[d];
    full_numel *= full_shape[d];
  }
  const std::vector<T> src = random_values<T>(full_numel, 3 + full_numel);
  std::vector<T> dst(static_cast<size_t>(dst_numel), T(99));  // overwritten, not accumulated
  cpu::sum_to(src.data(), make_layout(full_shape, full_strides), dst.data(),
              make_layout(full_shape, dst_strides));
  // Naive: every source element adds into the dst element its index maps to.
  std::vector<double> ref(static_cast<size_t>(dst_numel), 0.0);
  for (int64_t flat = 0; flat < full_numel; ++flat) {
    int64_t rest = flat, at = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      at += (rest % full_shape[d]) * dst_strides[d];
      rest /= full_shape[d];
    }
    ref[at] += double(src[flat]);
  }
  EXPECT_TRUE(matches(dst, ref)) << "ndim " << ndim;
}

TYPED_TEST(Reduce, SumToReducesBroadcastDims) {
  using T = TypeParam;
  for (int64_t r : {1, 7, 64})
    for (int64_t c : {1, 7, 129}) {
      check_sum_to<T>({r, c}, {1, c});
      check_sum_to<T>({r, c}, {r, 1});
      check_sum_to<T>({r, c}, {1, 1});
      check_sum_to<T>({r, c}, {r, c});
    }
  check_sum_to<T>({3, 7, 64}, {3, 1, 64});
  check_sum_to<T>({3, 7, 64}, {1, 7, 1});
  check_sum_to<T>({2, 3, 4, 5, 2}, {1, 3, 1, 5, 1});
  check_sum_to<T>({}, {});
}

TYPED_TEST(Reduce, SoftmaxForwardMatchesFormula) {
  using T = TypeParam;
  for (bool log : {false, true})
    for (auto [outer, n, inner] : shapes()) {
      const std::vector<T> x = random_values<T>(outer * n * inner, 4 + n, 3.0);
      std::vector<T> y(x.size());
      cpu::softmax_forward(x.data(), outer, n, inner, y.data(), log);
      std::vector<double> ref(x.size());
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          // Shifted by the column's first element (any shift gives the same softmax).
          const double shift = double(x[o * n * inner + i]);
          double z = 0;
          for (int64_t j = 0; j < n; ++j) z += std::exp(double(x[(o * n + j) * inner + i]) - shift);
          for (int64_t j = 0; j < n; ++j) {
            const double xv = double(x[(o * n + j) * inner + i]) - shift;
            ref[(o * n + j) * inner + i] = log ? xv - std::log(z) : std::exp(xv) / z;
          }
        }
      EXPECT_TRUE(matches(y, ref)) << (log ? "log_softmax " : "softmax ") << outer << "x" << n << "x" << inner;
    }
}

TYPED_TEST(Reduce, SoftmaxIsStableForLargeInputs) {
  using T = TypeParam;
  const std::vector<T> x{T(1000), T(1001), T(999), T(-1000)};
  std::vector<T> y(4), logy(4);
  cpu::softmax_forward(x.data(), 1, 4, 1, y.data(), false);
  cpu::softmax_forward(x.data(), 1, 4, 1, logy.data(), true);
  const double z = std::exp(-1.0) + 1.0 + std::exp(-2.0);  // relative to the max, 1001
  EXPECT_TRUE(matches(y, {std::exp(-1.0) / z, 1.0 / z, std::exp(-2.0) / z, 0.0}));
  EXPECT_TRUE(matches(logy, {-1.0 - std::log(z), -std::log(z), -2.0 - std::log(z), -2001.0 - std::log(z)}));
}

TYPED_TEST(Reduce, SoftmaxBackwardMatchesFormula) {
  using T = TypeParam;
  for (bool log : {false, true})
    for (auto [outer, n, inner] : shapes()) {
      const int64_t total = outer * n * inner;
      const std::vector<T> x = random_values<T>(total, 5 + n, 2.0);
      const std::vector<T> dy = random_values<T>(total, 6 + n);
      // y from the test's own formula, rounded to T as a forward pass would store it.
      std::vector<T> y(static_cast<size_t>(total));
      std::vector<double> p(static_cast<size_t>(total));  // softmax probabilities, double
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          double z = 0;
          for (int64_t j = 0; j < n; ++j) z += std::exp(double(x[(o * n + j) * inner + i]));
          for (int64_t j = 0; j < n; ++j) {
            const int64_t at = (o * n + j) * inner + i;
            p[at] = std::exp(double(x[at])) / z;
            y[at] = static_cast<T>(log ? double(x[at]) - std::log(z) : p[at]);
          }
        }
      std::vector<T> dx(static_cast<size_t>(total));
      cpu::softmax_backward(y.data(), dy.data(), outer, n, inner, dx.data(), log);
      std::vector<double> ref(static_cast<size_t>(total));
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t i = 0; i < inner; ++i) {
          double sum_dy = 0, sum_dy_p = 0;
          for (int64_t j = 0; j < n; ++j) {
            const int64_t at = (o * n + j) * inner + i;
            sum_dy += double(dy[at]);
            sum_dy_p += double(dy[at]) * double(y[at]);
          }
          for (int64_t j = 0; j < n; ++j) {
            const int64_t at = (o * n + j) * inner + i;
            // Jacobian-vector products of softmax / log_softmax, from the stored y.
            ref[at] = log ? double(dy[at]) - std::exp(double(y[at])) * sum_dy
                          : double(y[at]) * (double(dy[at]) - sum_dy_p);
          }
        }
      EXPECT_TRUE(matches(dx, ref)) << (log ? "log_softmax " : "softmax ") << outer << "x" << n << "x" << inner;
    }
}

TEST(ReduceDouble, SoftmaxBackwardMatchesFiniteDifferences) {
  // L = sum(dy * softmax(x)): dL/dx_j by central differences, for both variants.
  const int64_t n = 7;
  const std::vector<double> x = random_values<double>(n, 7), dy = random_values<double>(n, 8);
  for (bool log : {false, true}) {
    std::vector<double> y(n), dx(n);
    cpu::softmax_forward(x.data(), 1, n, 1, y.data(), log);
    cpu::softmax_backward(y.data(), dy.data(), 1, n, 1, dx.data(), log);
    for (int64_t k = 0; k < n; ++k) {
      auto loss = [&](double shift) {
        std::vector<double> xs = x, ys(n);
        xs[k] += shift;
        cpu::softmax_forward(xs.data(), 1, n, 1, ys.data(), log);
        double l = 0;
        for (int64_t j = 0; j < n; ++j) l += dy[j] * ys[j];
        return l;
      };
      const double h = 1e-6, fd = (loss(h) - loss(-h)) / (2 * h);
      EXPECT_NEAR(dx[k], fd, 1e-7) << (log ? "log " : "") << "element " << k;
    }
  }
}

TYPED_TEST(Reduce, SumAllMatchesNaiveSum) {
  using T = TypeParam;
  for (int64_t n : {0, 1, 7, 64, 129, 100000}) {
    const std::vector<T> x = random_values<T>(n, 9 + n);
    T got = T(-1);
    cpu::sum_all(x.data(), n, &got);
    double ref = 0;
    for (T v : x) ref += double(v);
    EXPECT_TRUE(matches(std::vector<T>{got}, {ref})) << "n " << n;
  }
}

TEST(ReduceDeterminism, SameBitsForEveryThreadCount) {
  const std::vector<float> x = random_values<float>(5 * 129 * 64, 10);
  const Layout full = make_layout({5, 129, 64}, {129 * 64, 64, 1});
  const Layout dst = make_layout({5, 129, 64}, {64, 0, 1});
  std::vector<float> first_sum, first_to, first_soft;
  const int saved = omp_get_max_threads();
  for (int threads : {1, 2, 3, 5}) {
    omp_set_num_threads(threads);
    std::vector<float> sum(5 * 64), to(5 * 64), soft(x.size());
    cpu::sum_dim(x.data(), 5, 129, 64, sum.data(), 1.0);
    cpu::sum_to(x.data(), full, to.data(), dst);
    cpu::softmax_forward(x.data(), 5, 129, 64, soft.data(), true);
    if (first_sum.empty()) {
      first_sum = sum;
      first_to = to;
      first_soft = soft;
    }
    EXPECT_EQ(sum, first_sum) << threads << " threads";
    EXPECT_EQ(to, first_to) << threads << " threads";
    EXPECT_EQ(soft, first_soft) << threads << " threads";
  }
  omp_set_num_threads(saved);
}

TEST(ReduceErrors, RejectsNegativeSizes) {
  float x = 0, y = 0;
  EXPECT_THROW(cpu::sum_dim(&x, -1, 1, 1, &y, 1.0), KernelError);
  EXPECT_THROW(cpu::softmax_forward(&x, 1, -2, 1, &y, false), KernelError);
  EXPECT_THROW(cpu::sum_all(&x, int64_t{-1}, &y), KernelError);
  const Layout a = make_layout({2}, {1}), b = make_layout({2, 1}, {1, 0});
  EXPECT_THROW(cpu::sum_to(&x, a, &y, b), KernelError);
}

}  // namespace
