// GPU tests of kernels/embedding.h: lookup and the sorted, ordered backward against the CPU
// reference in f32 and bf16 with i32 and i64 ids (many repeated ids), out-of-range ids giving
// zero rows, and bit-for-bit repeatability of the backward.
#include "kernels/embedding.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::close;
using ssmtrain::testing::DeviceBuffer;
using ssmtrain::testing::download;
using ssmtrain::testing::download_bytes;
using ssmtrain::testing::random_vector;
using ssmtrain::testing::round_to;
using ssmtrain::testing::upload;
using ssmtrain::testing::upload_raw;

const std::vector<DType> kDtypes = {DType::f32, DType::bf16};

// n ids in [0, vocab): a skewed mix, so some ids repeat many times and others never appear.
std::vector<int64_t> make_ids(int64_t n, int64_t vocab, uint64_t seed) {
  const std::vector<float> r = random_vector(n, seed);
  std::vector<int64_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t spread = int64_t(std::fabs(r[size_t(i)]) * 0.3f * float(vocab));
    ids[size_t(i)] = (i % 3 == 0) ? 1 % vocab : std::min(spread, vocab - 1);  // id 1 a third of the time
  }
  return ids;
}

// The ids as raw bytes of index_dtype, on the device.
DeviceBuffer upload_ids(const std::vector<int64_t>& ids, DType index_dtype) {
  if (index_dtype == DType::i64) return upload_raw(ids);
  std::vector<int32_t> narrow(ids.begin(), ids.end());
  return upload_raw(narrow);
}

// (n, vocab, d)
const std::vector<std::tuple<int64_t, int64_t, int64_t>> kShapes = {
    {1, 1, 1}, {7, 5, 128}, {128, 1000, 7}, {1000, 50, 64}, {4099, 4099, 33}, {3000, 3, 1000}};

TEST(EmbeddingGpu, ForwardAndBackwardMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (DType index_dtype : {DType::i32, DType::i64}) {
      for (auto [n, vocab, d] : kShapes) {
        const std::vector<int64_t> ids = make_ids(n, vocab, 1);
        const std::vector<int32_t> ids32(ids.begin(), ids.end());
        const void* ids_host = index_dtype == DType::i64 ? static_cast<const void*>(ids.data())
                                                         : static_cast<const void*>(ids32.data());
        DeviceBuffer ids_d = upload_ids(ids, index_dtype);

        const std::vector<float> table = round_to(dtype, random_vector(vocab * d, 2));
        std::vector<float> out_ref(static_cast<size_t>(n * d));
        cpu::embedding_forward(index_dtype, ids_host, n, table.data(), vocab, d, out_ref.data());
        DeviceBuffer table_d = upload(table, dtype), out_d(static_cast<size_t>(n * d) * 4);
        cuda::embedding_forward(dtype, index_dtype, ids_d.get(), n, table_d.get(), vocab, d,
                                out_d.get(), nullptr);
        EXPECT_EQ(download(out_d.get(), dtype, n * d), out_ref)
            << "forward n " << n << " vocab " << vocab << " d " << d;

        // dtable starts non-zero: the backward adds into it.
        const std::vector<float> dy = round_to(dtype, random_vector(n * d, 3));
        std::vector<float> dtable_ref = round_to(dtype, random_vector(vocab * d, 4, 0.1f));
        DeviceBuffer dtable_d = upload(dtable_ref, dtype), dy_d = upload(dy, dtype);
        cpu::embedding_backward(index_dtype, ids_host, n, dy.data(), vocab, d, dtable_ref.data());
        cuda::embedding_backward(dtype, index_dtype, ids_d.get(), n, dy_d.get(), vocab, d,
                                 dtable_d.get(), nullptr);
        // A row sums at most n dy rows.
        EXPECT_TRUE(close(download(dtable_d.get(), dtype, vocab * d), dtable_ref, dtype, n))
            << "backward n " << n << " vocab " << vocab << " d " << d << " ids "
            << dtype_name(index_dtype);
      }
    }
  }
}

// Ids outside [0, vocab) read nothing, give zero rows, and add nothing to dtable.
TEST(EmbeddingGpu, OutOfRangeIdsGiveZerosAndNoGradient) {
  SSM_REQUIRE_GPU();
  const int64_t vocab = 4, d = 3;
  const std::vector<int64_t> ids = {0, -1, 4, 3, 1000};
  const int64_t n = int64_t(ids.size());
  const std::vector<float> table = random_vector(vocab * d, 1);
  DeviceBuffer ids_d = upload_raw(ids), table_d = upload(table, DType::f32), out_d(n * d * 4);
  cuda::embedding_forward(DType::f32, DType::i64, ids_d.get(), n, table_d.get(), vocab, d,
                          out_d.get(), nullptr);
  const std::vector<float> out = download(out_d.get(), DType::f32, n * d);
  for (int64_t j = 0; j < d; ++j) {
    EXPECT_EQ(out[size_t(j)], table[size_t(j)]);
    EXPECT_EQ(out[size_t(1 * d + j)], 0.0f);
    EXPECT_EQ(out[size_t(2 * d + j)], 0.0f);
    EXPECT_EQ(out[size_t(3 * d + j)], table[size_t(3 * d + j)]);
    EXPECT_EQ(out[size_t(4 * d + j)], 0.0f);
  }
  const std::vector<float> dy(static_cast<size_t>(n * d), 1.0f);
  DeviceBuffer dy_d = upload(dy, DType::f32), dtable_d = upload(std::vector<float>(vocab * d, 0.0f), DType::f32);
  cuda::embedding_backward(DType::f32, DType::i64, ids_d.get(), n, dy_d.get(), vocab, d,
                           dtable_d.get(), nullptr);
  const std::vector<float> dtable = download(dtable_d.get(), DType::f32, vocab * d);
  for (int64_t j = 0; j < d; ++j) {
    EXPECT_EQ(dtable[size_t(0 * d + j)], 1.0f);
    EXPECT_EQ(dtable[size_t(1 * d + j)], 0.0f);
    EXPECT_EQ(dtable[size_t(2 * d + j)], 0.0f);
    EXPECT_EQ(dtable[size_t(3 * d + j)], 1.0f);
  }
}

TEST(EmbeddingGpu, BackwardRepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    const int64_t n = 8192, vocab = 37, d = 256;  // each id repeats ~220 times
    const size_t table_bytes = size_t(vocab * d * dtype_size(dtype));
    DeviceBuffer ids_d = upload_ids(make_ids(n, vocab, 5), DType::i32);
    DeviceBuffer dy_d = upload(random_vector(n * d, 6), dtype);
    const std::vector<float> start = random_vector(vocab * d, 7);
    DeviceBuffer first = upload(start, dtype), second = upload(start, dtype);
    cuda::embedding_backward(dtype, DType::i32, ids_d.get(), n, dy_d.get(), vocab, d, first.get(),
                             nullptr);
    cuda::embedding_backward(dtype, DType::i32, ids_d.get(), n, dy_d.get(), vocab, d, second.get(),
                             nullptr);
    EXPECT_EQ(download_bytes(first.get(), table_bytes), download_bytes(second.get(), table_bytes))
        << dtype_name(dtype);
  }
}

}  // namespace
