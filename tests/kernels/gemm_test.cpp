// Tests of kernels/gemm.h on the CPU: C = alpha op(A) op(B) + beta C against a naive double
// triple loop, for all four transpose combinations, padded leading dimensions, batches with
// gaps between matrices, beta != 0, and the empty cases (m, n or k = 0).
#include "tests/support/reference.h"
#include "kernels/gemm.h"

#include <utility>
#include <algorithm>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::matches;
using ssmtrain::testing::random_values;

// BLAS accumulates in T, so the error scales with the row norms: the floor is the full rms.
template <typename T>
::testing::AssertionResult matches_rows(const std::vector<T>& got, const std::vector<double>& ref) {
  return matches(got, ref, 1.0, 1.0);
}

// Runs one GEMM on random buffers sized from g and checks it against the naive loop.
// Elements of C outside the (m, n) windows (padding, gaps) must be left untouched.
template <typename T>
void check_gemm(const GemmShape& g, double alpha, double beta, uint64_t seed) {
  const int64_t a_rows = g.trans_a ? g.k : g.m, b_rows = g.trans_b ? g.n : g.k;
  const int64_t a_size = (g.batch - 1) * g.stride_a + a_rows * g.lda;
  const int64_t b_size = (g.batch - 1) * g.stride_b + b_rows * g.ldb;
  const int64_t c_size = (g.batch - 1) * g.stride_c + g.m * g.ldc;
  const std::vector<T> a = random_values<T>(a_size, seed), b = random_values<T>(b_size, seed + 1);
  std::vector<T> c = random_values<T>(c_size, seed + 2);
  std::vector<double> ref(c.begin(), c.end());
  for (int64_t batch = 0; batch < g.batch; ++batch)
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) {
        double dot = 0;
        for (int64_t p = 0; p < g.k; ++p) {
          const double av = g.trans_a ? a[batch * g.stride_a + p * g.lda + i] : a[batch * g.stride_a + i * g.lda + p];
          const double bv = g.trans_b ? b[batch * g.stride_b + j * g.ldb + p] : b[batch * g.stride_b + p * g.ldb + j];
          dot += av * bv;
        }
        double& cv = ref[batch * g.stride_c + i * g.ldc + j];
        cv = alpha * dot + beta * cv;
      }
  cpu::gemm(g, alpha, a.data(), b.data(), beta, c.data());
  EXPECT_TRUE(matches_rows(c, ref)) << "m " << g.m << " n " << g.n << " k " << g.k << " trans "
                               << g.trans_a << g.trans_b << " batch " << g.batch;
}

GemmShape make_shape(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t pad = 0,
                     int64_t batch = 1, int64_t gap = 0) {
  GemmShape g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = (ta ? m : k) + pad;
  g.ldb = (tb ? k : n) + pad;
  g.ldc = n + pad;
  g.batch = batch;
  g.stride_a = (ta ? k : m) * g.lda + gap;
  g.stride_b = (tb ? n : k) * g.ldb + gap;
  g.stride_c = m * g.ldc + gap;
  return g;
}

template <typename T> class Gemm : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Gemm, FloatTypes);

TYPED_TEST(Gemm, AllTransposeCombinationsOddAndEvenShapes) {
  using T = TypeParam;
  uint64_t seed = 1;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int64_t m : {1, 7, 64, 129})
        for (int64_t n : {1, 7, 129})
          for (int64_t k : {1, 64, 129}) check_gemm<T>(make_shape(ta, tb, m, n, k), 1.0, 0.0, seed++);
}

TYPED_TEST(Gemm, PaddedLeadingDimensionsAlphaAndBeta) {
  using T = TypeParam;
  uint64_t seed = 100;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm<T>(make_shape(ta, tb, 7, 9, 13, 5), 0.5, -1.25, seed++);
      check_gemm<T>(make_shape(ta, tb, 64, 33, 129, 3), -2.0, 1.0, seed++);
    }
}

TYPED_TEST(Gemm, BatchedWithGapsBetweenMatrices) {
  using T = TypeParam;
  uint64_t seed = 200;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      check_gemm<T>(make_shape(ta, tb, 7, 64, 9, 2, 3, 11), 1.0, 0.5, seed++);
      check_gemm<T>(make_shape(ta, tb, 16, 5, 129, 0, 4, 1), 1.5, 0.0, seed++);
    }
}

TYPED_TEST(Gemm, SharedOperandAcrossBatchWithZeroStride) {
  using T = TypeParam;
  GemmShape g = make_shape(false, true, 8, 6, 10, 0, 5);
  g.stride_b = 0;  // one weight matrix for every batch entry
  check_gemm<T>(g, 1.0, 0.0, 300);
}

TYPED_TEST(Gemm, EmptyProductScalesC) {
  using T = TypeParam;
  GemmShape g = make_shape(false, false, 5, 7, 0, 1, 2, 3);
  check_gemm<T>(g, 1.0, 0.5, 400);  // k = 0: C = beta C
  // beta = 0 with k = 0 writes zeros, even over NaN.
  std::vector<T> c(static_cast<size_t>((g.batch - 1) * g.stride_c + g.m * g.ldc),
                   std::numeric_limits<T>::quiet_NaN());
  cpu::gemm<T>(g, 1.0, nullptr, nullptr, 0.0, c.data());
  for (int64_t batch = 0; batch < g.batch; ++batch)
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j) EXPECT_EQ(c[batch * g.stride_c + i * g.ldc + j], T(0));
}

TYPED_TEST(Gemm, BetaZeroIgnoresNanInC) {
  using T = TypeParam;
  const GemmShape g = make_shape(true, false, 7, 7, 7);
  const std::vector<T> a = random_values<T>(49, 1), b = random_values<T>(49, 2);
  std::vector<T> c(49, std::numeric_limits<T>::quiet_NaN());
  cpu::gemm<T>(g, 1.0, a.data(), b.data(), 0.0, c.data());
  for (T v : c) EXPECT_TRUE(std::isfinite(v));
}

TYPED_TEST(Gemm, EmptyOutputsAreNoOps) {
  using T = TypeParam;
  for (auto [m, n] : {std::pair<int64_t, int64_t>{0, 5}, {5, 0}, {0, 0}}) {
    GemmShape g = make_shape(false, false, m, n, 3);
    cpu::gemm<T>(g, 1.0, nullptr, nullptr, 1.0, nullptr);
  }
  GemmShape g = make_shape(false, false, 3, 3, 3);
  g.batch = 0;
  cpu::gemm<T>(g, 1.0, nullptr, nullptr, 1.0, nullptr);
}

TEST(GemmErrors, RejectsNegativeSizesAndShortLeadingDimensions) {
  std::vector<float> buf(100, 0.0f);
  GemmShape g = make_shape(false, false, 4, 4, 4);
  g.m = -1;
  EXPECT_THROW(cpu::gemm<float>(g, 1.0, buf.data(), buf.data(), 0.0, buf.data()), KernelError);
  g = make_shape(false, false, 4, 5, 6);
  g.lda = 5;  // A (4, 6) needs lda >= 6
  EXPECT_THROW(cpu::gemm<float>(g, 1.0, buf.data(), buf.data(), 0.0, buf.data()), KernelError);
  g = make_shape(true, true, 4, 5, 6);
  g.ldb = 5;  // B^T stored (5, 6) needs ldb >= 6
  EXPECT_THROW(cpu::gemm<float>(g, 1.0, buf.data(), buf.data(), 0.0, buf.data()), KernelError);
  g = make_shape(false, false, 4, 5, 6);
  g.ldc = 4;
  EXPECT_THROW(cpu::gemm<float>(g, 1.0, buf.data(), buf.data(), 0.0, buf.data()), KernelError);
}

}  // namespace
