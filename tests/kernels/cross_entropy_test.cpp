// Tests of kernels/cross_entropy.h on the CPU: mean loss, valid-row count and per-row
// log-sum-exp against naive double loops, ignore_index rows, out-of-range targets, and the
// gradient against its formula and against finite differences of the loss.
#include "tests/support/reference.h"
#include "kernels/cross_entropy.h"

#include <algorithm>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <type_traits>
#include <vector>

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::matches;
using ssmtrain::testing::random_values;

constexpr int64_t kIgnore = -100;

// Targets in [0, vocab), every third row (from row 1) ignored.
template <typename Id> std::vector<Id> make_targets(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Id> t(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) t[r] = r % 3 == 1 ? Id(kIgnore) : Id(rng() % uint64_t(vocab));
  return t;
}

// Naive log-sum-exp of one row (shifted by the row's mean: any shift is exact in math).
template <typename T> double ref_lse(const T* row, int64_t vocab) {
  double mean = 0;
  for (int64_t v = 0; v < vocab; ++v) mean += double(row[v]) / double(vocab);
  double z = 0;
  for (int64_t v = 0; v < vocab; ++v) z += std::exp(double(row[v]) - mean);
  return mean + std::log(z);
}

template <typename T> class CrossEntropy : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CrossEntropy, FloatTypes);

template <typename T, typename Id> void check_forward_and_backward(DType target_dtype) {
  for (int64_t n : {1, 7, 64, 129})
    for (int64_t vocab : {1, 7, 64, 129}) {
      const std::vector<T> logits = random_values<T>(n * vocab, 1 + n * vocab, 3.0);
      const std::vector<Id> targets = make_targets<Id>(n, vocab, 2 + n);
      std::vector<float> lse(static_cast<size_t>(n));
      std::vector<T> result(2);
      cpu::cross_entropy_forward(logits.data(), target_dtype, targets.data(), n, vocab, kIgnore,
                                 lse.data(), result.data());
      std::vector<double> ref_lse_rows(static_cast<size_t>(n));
      double total = 0;
      int64_t count = 0;
      for (int64_t r = 0; r < n; ++r) {
        ref_lse_rows[r] = ref_lse(logits.data() + r * vocab, vocab);
        if (targets[r] == Id(kIgnore)) continue;
        total += ref_lse_rows[r] - double(logits[r * vocab + targets[r]]);
        ++count;
      }
      const double mean_loss = count ? total / double(count) : 0.0;
      EXPECT_TRUE(matches(lse, ref_lse_rows)) << n << "x" << vocab;
      EXPECT_TRUE(matches(std::vector<T>{result[0]}, {mean_loss}, 10.0)) << n << "x" << vocab;
      EXPECT_EQ(result[1], T(count));

      const T dloss = T(0.75);
      std::vector<T> dlogits(logits.size(), T(9));
      cpu::cross_entropy_backward(logits.data(), target_dtype, targets.data(), n, vocab, kIgnore,
                                  lse.data(), &dloss, result.data(), dlogits.data());
      std::vector<double> ref(logits.size(), 0.0);
      for (int64_t r = 0; r < n; ++r) {
        if (targets[r] == Id(kIgnore)) continue;
        for (int64_t v = 0; v < vocab; ++v) {
          const double p = std::exp(double(logits[r * vocab + v]) - ref_lse_rows[r]);
          ref[r * vocab + v] = 0.75 / double(count) * (p - (v == int64_t(targets[r]) ? 1.0 : 0.0));
        }
      }
      EXPECT_TRUE(matches(dlogits, ref)) << n << "x" << vocab;
    }
}

TYPED_TEST(CrossEntropy, ForwardAndBackwardMatchNaiveLoopsI32) {
  check_forward_and_backward<TypeParam, int32_t>(DType::i32);
}
TYPED_TEST(CrossEntropy, ForwardAndBackwardMatchNaiveLoopsI64) {
  check_forward_and_backward<TypeParam, int64_t>(DType::i64);
}

TYPED_TEST(CrossEntropy, AllRowsIgnoredGivesZeroLossAndGradient) {
  using T = TypeParam;
  const std::vector<T> logits = random_values<T>(3 * 5, 3);
  const std::vector<int32_t> targets(3, int32_t(kIgnore));
  std::vector<float> lse(3);
  std::vector<T> result(2, T(-1));
  cpu::cross_entropy_forward(logits.data(), DType::i32, targets.data(), 3, 5, kIgnore, lse.data(),
                             result.data());
  EXPECT_EQ(result[0], T(0));
  EXPECT_EQ(result[1], T(0));
  const T dloss = T(1);
  std::vector<T> dlogits(15, T(5));
  cpu::cross_entropy_backward(logits.data(), DType::i32, targets.data(), 3, 5, kIgnore, lse.data(),
                              &dloss, result.data(), dlogits.data());
  for (T g : dlogits) EXPECT_EQ(g, T(0));
}

TEST(CrossEntropyForward, StableForLargeLogits) {
  const std::vector<float> logits{1000.0f, 0.0f, -1000.0f, 1000.0f};  // (1, 4)
  const std::vector<int64_t> target{1};
  float lse = 0, result[2] = {};
  cpu::cross_entropy_forward(logits.data(), DType::i64, target.data(), 1, 4, kIgnore, &lse, result);
  EXPECT_NEAR(lse, 1000.0 + std::log(2.0), 1e-4);
  EXPECT_NEAR(result[0], 1000.0 + std::log(2.0), 1e-4);
}

TEST(CrossEntropyDouble, BackwardMatchesFiniteDifferences) {
  const int64_t n = 5, vocab = 7;
  const std::vector<double> logits = random_values<double>(n * vocab, 4, 2.0);
  const std::vector<int64_t> targets{3, kIgnore, 0, 6, 2};
  auto loss = [&](const std::vector<double>& x) {
    std::vector<float> lse(n);
    double result[2];
    cpu::cross_entropy_forward(x.data(), DType::i64, targets.data(), n, vocab, kIgnore, lse.data(), result);
    return result[0];
  };
  std::vector<float> lse(n);
  double result[2];
  cpu::cross_entropy_forward(logits.data(), DType::i64, targets.data(), n, vocab, kIgnore, lse.data(), result);
  const double dloss = 1.0;
  std::vector<double> grad(n * vocab);
  cpu::cross_entropy_backward(logits.data(), DType::i64, targets.data(), n, vocab, kIgnore, lse.data(),
                              &dloss, result, grad.data());
  for (int64_t i = 0; i < n * vocab; ++i) {
    std::vector<double> plus = logits, minus = logits;
    plus[i] += 1e-6;
    minus[i] -= 1e-6;
    const double fd = (loss(plus) - loss(minus)) / 2e-6;
    EXPECT_NEAR(grad[i], fd, 1e-6) << "element " << i;
  }
}

TEST(CrossEntropyErrors, OutOfRangeTargetNamesRowAndValue) {
  const std::vector<float> logits(4 * 3, 0.0f);
  const std::vector<int32_t> targets{0, kIgnore, 2, 3};
  std::vector<float> lse(4), grad(12);
  float result[2] = {0, 1}, dloss = 1;
  try {
    cpu::cross_entropy_forward(logits.data(), DType::i32, targets.data(), 4, 3, kIgnore, lse.data(), result);
    FAIL() << "expected KernelError";
  } catch (const KernelError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("row 3"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("target 3"));
  }
  EXPECT_THROW(cpu::cross_entropy_backward(logits.data(), DType::i32, targets.data(), 4, 3, kIgnore,
                                           lse.data(), &dloss, result, grad.data()),
               KernelError);
  const std::vector<int64_t> negative{-1};
  EXPECT_THROW(cpu::cross_entropy_forward(logits.data(), DType::i64, negative.data(), 1, 3, kIgnore,
                                          lse.data(), result),
               KernelError);
}

}  // namespace
