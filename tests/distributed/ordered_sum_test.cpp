// The fixed summation order: against a hand-written pairwise tree, and the property the trainer
// relies on (blocks of 2^j terms summed first, then the block sums, give the same bits as all
// terms at once), checked on values chosen so that other orders round differently.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "distributed/ordered_sum.h"

namespace ssmtrain::dist {
namespace {

std::vector<std::vector<float>> random_terms(int count, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<std::vector<float>> terms(static_cast<size_t>(count), std::vector<float>(static_cast<size_t>(n)));
  for (auto& t : terms)
    for (float& x : t) x = u(rng) * std::pow(10.0f, float(int(rng() % 7) - 3));
  return terms;
}

std::vector<float> summed(const std::vector<std::vector<float>>& terms) {
  OrderedSum sum(int64_t(terms[0].size()));
  for (const auto& t : terms) sum.add(t.data());
  std::vector<float> out(terms[0].size());
  sum.finish(out.data());
  return out;
}

TEST(OrderedSum, FourTermsArePairedAndSixFoldNewestFirst) {
  const auto t = random_terms(6, 257, 1);
  const auto four = summed({t[0], t[1], t[2], t[3]});
  const auto six = summed(t);
  for (size_t i = 0; i < 257; ++i) {
    const float a = (t[0][i] + t[1][i]) + (t[2][i] + t[3][i]);
    EXPECT_EQ(four[i], a) << i;
    EXPECT_EQ(six[i], a + (t[4][i] + t[5][i])) << i;
  }
}

TEST(OrderedSum, DiffersFromLeftToRightSoTheOrderIsReallyFixed) {
  const auto t = random_terms(4, 1000, 2);
  const auto tree = summed(t);
  int differing = 0;
  for (size_t i = 0; i < 1000; ++i) differing += tree[i] != ((t[0][i] + t[1][i]) + t[2][i]) + t[3][i];
  EXPECT_GT(differing, 0);
}

TEST(OrderedSum, BlocksOfPowersOfTwoThenBlockSumsEqualsAllAtOnce) {
  for (int world : {1, 2, 3, 4, 5}) {
    for (int per_rank : {1, 2, 4}) {
      const auto t = random_terms(world * per_rank, 333, uint32_t(world * 10 + per_rank));
      std::vector<std::vector<float>> block_sums;
      for (int r = 0; r < world; ++r)
        block_sums.push_back(summed({t.begin() + r * per_rank, t.begin() + (r + 1) * per_rank}));
      std::vector<const float*> pointers;
      for (const auto& b : block_sums) pointers.push_back(b.data());
      std::vector<float> two_level(333);
      ordered_sum(pointers, 333, two_level.data());
      const auto flat = summed(t);
      EXPECT_EQ(std::memcmp(two_level.data(), flat.data(), 333 * sizeof(float)), 0)
          << world << " ranks x " << per_rank << " terms";
    }
  }
}

TEST(OrderedSum, NoTermsGiveZerosAndTheObjectIsReusable) {
  OrderedSum sum(3);
  std::vector<float> out(3, 7.0f);
  sum.finish(out.data());
  EXPECT_EQ(out, std::vector<float>(3, 0.0f));
  const float a[3] = {1, 2, 3};
  sum.add(a);
  sum.add(a);
  sum.finish(out.data());
  EXPECT_EQ(out, (std::vector<float>{2, 4, 6}));
  sum.add(a);
  sum.finish(out.data());
  EXPECT_EQ(out, (std::vector<float>{1, 2, 3}));
}

// The gradient buckets fold the last micro-batch in range by range: for every count of earlier
// terms (stacks of several depths) and ranges that split the vector unevenly, the same bits as
// add(last) + finish().
TEST(OrderedSum, FoldRangeByRangeEqualsAddThenFinish) {
  const int n = 97;
  for (int count = 1; count <= 9; ++count) {
    const auto terms = random_terms(count, n, 100 + uint32_t(count));
    const std::vector<float> expected = summed(terms);
    OrderedSum sum(n);
    for (int t = 0; t + 1 < count; ++t) sum.add(terms[size_t(t)].data());
    std::vector<float> out(size_t(n), -1.0f);
    for (int begin = 0, width = 1; begin < n; begin += width, width = width * 3 % 41 + 1) {
      const int w = std::min(width, n - begin);
      sum.fold_range(terms.back().data() + begin, begin, w, out.data() + begin);
    }
    EXPECT_EQ(std::memcmp(out.data(), expected.data(), sizeof(float) * size_t(n)), 0) << count << " terms";
    sum.clear();
    EXPECT_EQ(sum.terms(), 0);
    sum.add(terms[0].data());  // reusable after clear()
    sum.finish(out.data());
    EXPECT_EQ(std::memcmp(out.data(), terms[0].data(), sizeof(float) * size_t(n)), 0);
  }
}

}  // namespace
}  // namespace ssmtrain::dist
