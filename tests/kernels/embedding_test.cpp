// Tests of kernels/embedding.h on the CPU: lookup with i32 and i64 ids, the error for an id
// outside the table, and the backward's accumulation (+=) of repeated ids in token order.
#include "tests/support/reference.h"
#include "kernels/embedding.h"

#include <algorithm>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::matches;
using ssmtrain::testing::random_values;

// n ids in [0, vocab), with repeats (a small vocab forces them).
template <typename Id> std::vector<Id> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Id> ids(static_cast<size_t>(n));
  for (Id& id : ids) id = static_cast<Id>(rng() % uint64_t(vocab));
  return ids;
}

template <typename T> class Embedding : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Embedding, FloatTypes);

template <typename T, typename Id> void check_forward(DType index_dtype) {
  for (int64_t n : {1, 7, 64, 129})
    for (int64_t d : {1, 7, 64}) {
      const int64_t vocab = 11;
      const std::vector<T> table = random_values<T>(vocab * d, 1 + d);
      const std::vector<Id> ids = random_ids<Id>(n, vocab, 2 + n);
      std::vector<T> out(static_cast<size_t>(n * d));
      cpu::embedding_forward(index_dtype, ids.data(), n, table.data(), vocab, d, out.data());
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < d; ++j) ASSERT_EQ(out[t * d + j], table[int64_t(ids[t]) * d + j]);
    }
}

TYPED_TEST(Embedding, ForwardGathersRowsForI32AndI64Ids) {
  check_forward<TypeParam, int32_t>(DType::i32);
  check_forward<TypeParam, int64_t>(DType::i64);
}

template <typename T, typename Id> void check_backward(DType index_dtype) {
  for (int64_t n : {1, 7, 64, 129})
    for (int64_t d : {1, 7, 64}) {
      const int64_t vocab = 13;
      const std::vector<Id> ids = random_ids<Id>(n, vocab, 3 + n);
      const std::vector<T> dy = random_values<T>(n * d, 4 + d);
      std::vector<T> dtable = random_values<T>(vocab * d, 5 + d);  // accumulated into
      std::vector<double> ref(dtable.begin(), dtable.end());
      cpu::embedding_backward(index_dtype, ids.data(), n, dy.data(), vocab, d, dtable.data());
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < d; ++j) ref[int64_t(ids[t]) * d + j] += double(dy[t * d + j]);
      EXPECT_TRUE(matches(dtable, ref)) << "n " << n << " d " << d;
    }
}

TYPED_TEST(Embedding, BackwardAccumulatesRepeatedIds) {
  check_backward<TypeParam, int32_t>(DType::i32);
  check_backward<TypeParam, int64_t>(DType::i64);
}

TEST(EmbeddingBackward, UnusedRowsAreUntouchedAndRepeatsSumExactly) {
  const std::vector<int64_t> ids{2, 0, 2, 2};
  const std::vector<float> dy{1, 10, 2, 20, 4, 40, 8, 80};  // (4, 2)
  std::vector<float> dtable{0.5f, 0.5f, -1, -1, 100, 200};  // (3, 2)
  cpu::embedding_backward(DType::i64, ids.data(), 4, dy.data(), 3, 2, dtable.data());
  EXPECT_EQ(dtable, (std::vector<float>{2.5f, 20.5f, -1, -1, 113, 330}));
}

TEST(EmbeddingErrors, OutOfRangeIdNamesIdAndPosition) {
  const std::vector<float> table(4 * 3, 1.0f);
  std::vector<float> out(5 * 3);
  const std::vector<int32_t> bad{0, 1, 3, 4, 2};
  try {
    cpu::embedding_forward(DType::i32, bad.data(), 5, table.data(), 4, 3, out.data());
    FAIL() << "expected KernelError";
  } catch (const KernelError& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("id 4"));
    EXPECT_THAT(e.what(), ::testing::HasSubstr("position 3"));
  }
  const std::vector<int64_t> negative{-1};
  EXPECT_THROW(cpu::embedding_forward(DType::i64, negative.data(), 1, table.data(), 4, 3, out.data()),
               KernelError);
  std::vector<float> dtable(12, 0.0f);
  EXPECT_THROW(cpu::embedding_backward(DType::i32, bad.data(), 5, out.data(), 4, 3, dtable.data()),
               KernelError);
  const std::vector<float> ids_as_float{0.0f};
  EXPECT_THROW(cpu::embedding_forward(DType::f32, ids_as_float.data(), 1, table.data(), 4, 3, out.data()),
               KernelError);
}

}  // namespace
