// kernels/sampling.h on the CPU, against references written here in double precision with a
// stable sort: greedy is std::max_element (first of equal maxima) also on rows full of ties;
// the exact-operation exp is within 3e-7 of std::exp; seeded draws repeat; their frequencies
// pass a chi-square test against the softmax at the temperature; top-k and top-p never pick a
// token outside the set a plain sort gives, and reach every token inside it.
#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <vector>

#include "tests/support/compare.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;

std::vector<int64_t> sample(const std::vector<float>& logits, int64_t rows, const SamplingParams& p,
                            int64_t first_sequence, int64_t draw) {
  std::vector<int64_t> out(static_cast<size_t>(rows), -1);
  cpu::sample_tokens<float>(logits.data(), rows, int64_t(logits.size()) / rows, p, first_sequence, draw, out.data());
  return out;
}

// Rows with many equal values: bf16-rounded, and every value also snapped to a coarse grid.
std::vector<float> tied_rows(int64_t rows, int64_t vocab, uint64_t seed) {
  std::vector<float> v = ssmtrain::testing::random_vector(rows * vocab, seed, 2.0f);
  for (size_t i = 0; i < v.size(); ++i)
    if (i % 3 == 0) v[i] = std::round(v[i] * 2.0f) / 2.0f;
  return ssmtrain::testing::round_to(DType::bf16, v);
}

TEST(Sampling, GreedyIsTheFirstOfEqualMaxima) {
  const int64_t rows = 9, vocab = 1001;
  std::vector<float> logits = tied_rows(rows, vocab, 3);
  // Row 0: the maximum at ids 17 and 5 (5 wins); row 1: -0 before +0 as the maximum of a
  // negative row (equal: the first wins); row 2: all equal.
  for (int64_t i = 0; i < vocab; ++i) logits[size_t(i)] = std::min(logits[size_t(i)], 3.0f);
  logits[17] = logits[5] = 9.0f;
  for (int64_t i = 0; i < vocab; ++i) logits[size_t(vocab + i)] = -1.0f - float(i % 7);
  logits[size_t(vocab + 40)] = -0.0f;
  logits[size_t(vocab + 41)] = 0.0f;
  for (int64_t i = 0; i < vocab; ++i) logits[size_t(2 * vocab + i)] = 0.25f;
  const std::vector<int64_t> got = sample(logits, rows, SamplingParams{}, 0, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const auto row = logits.begin() + r * vocab;
    EXPECT_EQ(got[size_t(r)], std::max_element(row, row + vocab) - row) << "row " << r;
  }
  EXPECT_EQ(got[0], 5);
  EXPECT_EQ(got[1], 40);
  EXPECT_EQ(got[2], 0);
}

TEST(Sampling, ExactOperationExpIsCloseToStdExp) {
  double worst = 0;
  for (float x = -64.0f; x <= 0.0f; x += 0.0137f) {
    const double ref = std::exp(double(x));
    worst = std::max(worst, std::abs(double(sampling_exp(x)) - ref) / ref);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(sampling_exp(0.0f), 1.0f);
  EXPECT_EQ(sampling_exp(-65.0f), 0.0f);
  EXPECT_EQ(sampling_exp(std::nanf("")), 0.0f);
}

TEST(Sampling, SameSeedSameTokensOtherSeedOrDrawOthers) {
  const int64_t rows = 16, vocab = 500;
  const std::vector<float> logits = tied_rows(rows, vocab, 5);
  const SamplingParams p{0.8, 50, 0.9, 1234};
  std::vector<int64_t> a, b, other_seed, other_draw;
  for (int64_t d = 0; d < 8; ++d) {
    for (int64_t t : sample(logits, rows, p, 0, d)) a.push_back(t);
    for (int64_t t : sample(logits, rows, p, 0, d)) b.push_back(t);
    for (int64_t t : sample(logits, rows, SamplingParams{0.8, 50, 0.9, 4321}, 0, d)) other_seed.push_back(t);
    for (int64_t t : sample(logits, rows, p, 0, d + 100)) other_draw.push_back(t);
  }
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other_seed);
  EXPECT_NE(a, other_draw);
  // Row r of a batch is sequence first_sequence + r: a row alone with its sequence index draws the same.
  const std::vector<float> row3(logits.begin() + 3 * vocab, logits.begin() + 4 * vocab);
  EXPECT_EQ(sample(row3, 1, p, 3, 0)[0], a[3]);
}

// Probabilities of softmax(logits / temperature), in double.
std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
  const double top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double total = 0;
  for (size_t i = 0; i < p.size(); ++i) total += p[i] = std::exp((logits[i] - top) / temperature);
  for (double& x : p) x /= total;
  return p;
}

TEST(Sampling, FrequenciesMatchTheSoftmaxChiSquare) {
  const std::vector<float> logits{1.0f, -0.5f, 2.0f, 0.3f, 0.3f, -2.0f, 1.5f, 0.0f};
  for (double temperature : {1.0, 0.6, 2.5}) {
    const std::vector<double> p = softmax(logits, temperature);
    const int64_t n = 40000;
    std::vector<double> count(logits.size(), 0.0);
    for (int64_t d = 0; d < n; ++d) count[size_t(sample(logits, 1, {temperature, 0, 1.0, 99}, 7, d)[0])] += 1;
    double chi2 = 0;
    for (size_t i = 0; i < p.size(); ++i) chi2 += (count[i] - n * p[i]) * (count[i] - n * p[i]) / (n * p[i]);
    // 7 degrees of freedom: P(chi2 > 24.32) = 0.001 (fixed seeds: the outcome never changes).
    EXPECT_LT(chi2, 24.32) << "temperature " << temperature;
  }
}

// The tokens top-k then top-p keep, by a plain stable sort in double (ties: lower id first).
std::set<int64_t> kept_set(const std::vector<float>& logits, double temperature, int64_t top_k, double top_p) {
  const std::vector<double> p = softmax(logits, temperature);
  std::vector<int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  if (top_k > 0 && top_k < int64_t(order.size())) order.resize(size_t(top_k));
  double total = 0;
  for (int64_t i : order) total += p[size_t(i)];
  std::set<int64_t> kept;
  double cum = 0;
  for (int64_t i : order) {
    kept.insert(i);
    cum += p[size_t(i)] / total;
    if (cum >= top_p) break;
  }
  return kept;
}

TEST(Sampling, TopKAndTopPNeverPickOutsideTheirSet) {
  const int64_t vocab = 64;
  struct Case {
    int64_t top_k;
    double top_p;
  };
  // top_p values chosen away from the cumulative sums of these rows, so the double reference
  // and the fixed-point kernel agree on where the nucleus ends.
  for (const Case& c : {Case{5, 1.0}, Case{1, 1.0}, Case{0, 0.5}, Case{12, 0.77}, Case{64, 0.31}}) {
    for (uint64_t seed : {1u, 2u, 3u}) {
      std::vector<float> logits = ssmtrain::testing::random_vector(vocab, seed, 1.5f);
      for (size_t i = 0; i < logits.size(); i += 4) logits[i] = std::round(logits[i]);  // ties
      const std::set<int64_t> kept = kept_set(logits, 0.9, c.top_k, c.top_p);
      std::set<int64_t> seen;
      for (int64_t d = 0; d < 3000; ++d) {
        const int64_t t = sample(logits, 1, {0.9, c.top_k, c.top_p, seed}, 0, d)[0];
        ASSERT_TRUE(kept.count(t)) << "token " << t << " outside the kept set, top_k " << c.top_k << " top_p " << c.top_p;
        seen.insert(t);
      }
      if (kept.size() <= 8) EXPECT_EQ(seen, kept) << "top_k " << c.top_k << " top_p " << c.top_p;
    }
  }
}

TEST(Sampling, InfiniteLogitFallsBackToGreedy) {
  std::vector<float> logits{0.0f, 1.0f, INFINITY, 2.0f};
  EXPECT_EQ(sample(logits, 1, {1.0, 0, 1.0, 5}, 0, 0)[0], 2);
}

TEST(Sampling, BadParametersAreNamed) {
  const std::vector<float> logits{0.0f, 1.0f};
  EXPECT_THROW(sample(logits, 1, {-1.0, 0, 1.0, 0}, 0, 0), KernelError);
  EXPECT_THROW(sample(logits, 1, {1.0, 0, 0.0, 0}, 0, 0), KernelError);
}

}  // namespace
