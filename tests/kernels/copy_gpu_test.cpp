// GPU tests of kernels/copy.h: cuda::copy_strided, cast and fill must produce exactly the bytes
// of the CPU reference (these ops do no arithmetic beyond one rounding).
#include "kernels/copy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <initializer_list>
#include <vector>

#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::DeviceBuffer;
using ssmtrain::testing::download_bytes;
using ssmtrain::testing::upload_bytes;

Layout make_layout(std::initializer_list<int64_t> shape, std::initializer_list<int64_t> strides) {
  Layout l;
  l.ndim = int(shape.size());
  int d = 0;
  for (int64_t s : shape) l.shape[d++] = s;
  d = 0;
  for (int64_t s : strides) l.strides[d++] = s;
  return l;
}

Layout contiguous(std::initializer_list<int64_t> shape) {
  Layout l;
  l.ndim = int(shape.size());
  int d = 0;
  for (int64_t s : shape) l.shape[d++] = s;
  int64_t stride = 1;
  for (int i = l.ndim - 1; i >= 0; --i) {
    l.strides[i] = stride;
    stride *= l.shape[i];
  }
  return l;
}

// Deterministic pseudo-random bytes (the bits of a Philox normal fill).
std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  const std::vector<float> v = ssmtrain::testing::random_vector(int64_t(n / 4 + 1), seed);
  std::vector<uint8_t> bytes(n);
  std::memcpy(bytes.data(), v.data(), n);
  return bytes;
}

struct StridedCase {
  const char* name;
  Layout src, dst;
  size_t src_elems, dst_elems;  // buffer sizes in elements
  int64_t src_offset;           // first element of src inside its buffer (narrow)
};

std::vector<StridedCase> strided_cases() {
  std::vector<StridedCase> c;
  c.push_back({"contiguous 4099", contiguous({4099}), contiguous({4099}), 4099, 4099, 0});
  c.push_back({"contiguous 3d", contiguous({3, 5, 7}), contiguous({3, 5, 7}), 105, 105, 0});
  // transpose: dst (7, 128) = src (128, 7)^T
  c.push_back({"transpose 2d", make_layout({7, 128}, {1, 7}), contiguous({7, 128}), 896, 896, 0});
  // permute (b, l, d) -> (b, d, l) with odd sizes
  c.push_back({"permute 3d", make_layout({3, 9, 13}, {117, 1, 9}), contiguous({3, 9, 13}), 351,
               351, 0});
  // narrow: columns 2..9 of a (11, 17) matrix into a contiguous (11, 8)
  c.push_back({"narrow", make_layout({11, 8}, {17, 1}), contiguous({11, 8}), 187, 88, 2});
  // concat half: write a contiguous (5, 4) into columns 0..3 of a (5, 8) destination
  c.push_back({"into narrow dst", contiguous({5, 4}), make_layout({5, 4}, {8, 1}), 20, 40, 0});
  // size-1 dims with odd strides, and a scalar
  c.push_back({"size one dims", make_layout({1, 6, 1, 5}, {999, 5, 77, 1}), contiguous({1, 6, 1, 5}),
               30, 30, 0});
  c.push_back({"scalar", make_layout({}, {}), make_layout({}, {}), 1, 1, 0});
  // 5-d permutation: src contiguous (b, h, l, n, p) = (2, 4, 3, 6, 5) read as (b, l, h, p, n)
  c.push_back({"permute 5d", make_layout({2, 3, 4, 5, 6}, {360, 30, 90, 1, 5}),
               contiguous({2, 3, 4, 5, 6}), 720, 720, 0});
  // The Mamba mixers' layout changes, at sizes that are not multiples of the 32 x 32 tile:
  // columns [5, 75) of a (2, 100, 150) in_proj output read as (b, c, l), and back into a
  // column slice of a wider destination.
  c.push_back({"slice as (b, c, l)", make_layout({2, 70, 100}, {15000, 1, 150}), contiguous({2, 70, 100}), 30000,
               14000, 5});
  c.push_back({"(b, c, l) into a slice of (b, l, w)", contiguous({2, 70, 100}), make_layout({2, 70, 100}, {15000, 1, 150}),
               14000, 30000, 0});
  // Large enough for many tiles, with the tiled dimensions apart: (4, 33, 5, 65) read from
  // a (4, 5, 65, 33) buffer.
  c.push_back({"4d tiles apart", make_layout({4, 33, 5, 65}, {10725, 1, 2145, 33}), contiguous({4, 33, 5, 65}),
               42900, 42900, 0});
  c.push_back({"transpose 257 x 129", make_layout({129, 257}, {1, 129}), contiguous({129, 257}), 33153, 33153, 0});
  return c;
}

TEST(CopyGpu, CopyStridedMatchesCpu) {
  SSM_REQUIRE_GPU();
  for (const StridedCase& c : strided_cases()) {
    for (int64_t elem_size : {1, 2, 4, 8}) {
      const size_t src_bytes = c.src_elems * size_t(elem_size);
      const size_t dst_bytes = c.dst_elems * size_t(elem_size);
      const std::vector<uint8_t> src = random_bytes(src_bytes, 1);
      std::vector<uint8_t> ref = random_bytes(dst_bytes, 2);  // untouched bytes must survive
      DeviceBuffer src_d = upload_bytes(src.data(), src_bytes);
      DeviceBuffer dst_d = upload_bytes(ref.data(), dst_bytes);
      const int64_t offset = c.src_offset * elem_size;
      cpu::copy_strided(src.data() + offset, c.src, ref.data(), c.dst, elem_size);
      cuda::copy_strided(src_d.as<uint8_t>() + offset, c.src, dst_d.get(), c.dst, elem_size,
                         nullptr);
      EXPECT_EQ(download_bytes(dst_d.get(), dst_bytes), ref)
          << c.name << ", elem_size " << elem_size;
    }
  }
}

TEST(CopyGpu, CopyStridedRejectsShapeMismatch) {
  SSM_REQUIRE_GPU();
  DeviceBuffer a(64), b(64);
  EXPECT_THROW(cuda::copy_strided(a.get(), contiguous({2, 3}), b.get(), contiguous({3, 2}), 4,
                                  nullptr),
               KernelError);
}

TEST(CopyGpu, CastMatchesCpu) {
  SSM_REQUIRE_GPU();
  const std::vector<DType> dtypes = {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64};
  for (int64_t n : {1, 7, 128, 4099}) {
    // Values with fractions of both signs and magnitudes up to a few thousand (exact in f32).
    std::vector<float> values = ssmtrain::testing::random_vector(n, 11, 300.0f);
    if (n > 4) values[3] = -0.75f;  // truncates to 0
    for (DType from : dtypes) {
      std::vector<uint8_t> src(static_cast<size_t>(n * dtype_size(from)));
      cpu::cast(DType::f32, values.data(), from, src.data(), n);
      DeviceBuffer src_d = upload_bytes(src.data(), src.size());
      for (DType to : dtypes) {
        std::vector<uint8_t> ref(static_cast<size_t>(n * dtype_size(to)));
        cpu::cast(from, src.data(), to, ref.data(), n);
        DeviceBuffer dst_d(ref.size());
        cuda::cast(from, src_d.get(), to, dst_d.get(), n, nullptr);
        EXPECT_EQ(download_bytes(dst_d.get(), ref.size()), ref)
            << dtype_name(from) << " -> " << dtype_name(to) << ", n " << n;
      }
    }
  }
}

TEST(CopyGpu, FillMatchesCpu) {
  SSM_REQUIRE_GPU();
  const std::vector<DType> dtypes = {DType::f32, DType::bf16, DType::f16, DType::i32,
                                     DType::i64, DType::u8,   DType::f64};
  for (DType dtype : dtypes) {
    for (double value : {0.0, 1.0, -3.3, 1e10, -0.0}) {
      for (int64_t n : {1, 7, 1000}) {
        std::vector<uint8_t> ref(static_cast<size_t>(n * dtype_size(dtype)));
        cpu::fill(dtype, ref.data(), n, value);
        DeviceBuffer dst_d(ref.size());
        cuda::fill(dtype, dst_d.get(), n, value, nullptr);
        EXPECT_EQ(download_bytes(dst_d.get(), ref.size()), ref)
            << dtype_name(dtype) << " value " << value << ", n " << n;
      }
    }
  }
}

// The same copy twice gives the same bytes (trivially, but cheap to keep honest).
TEST(CopyGpu, RepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  const Layout src = make_layout({3, 9, 13}, {117, 1, 9}), dst = contiguous({3, 9, 13});
  const std::vector<uint8_t> bytes = random_bytes(351 * 4, 5);
  DeviceBuffer src_d = upload_bytes(bytes.data(), bytes.size());
  DeviceBuffer first(351 * 4), second(351 * 4);
  cuda::copy_strided(src_d.get(), src, first.get(), dst, 4, nullptr);
  cuda::copy_strided(src_d.get(), src, second.get(), dst, 4, nullptr);
  EXPECT_EQ(download_bytes(first.get(), 351 * 4), download_bytes(second.get(), 351 * 4));
}

}  // namespace
