// Tests of kernels/copy.h on the CPU: strided copies (transpose, narrow, broadcast, scalar,
// every element size) against a naive index walk, casts between every pair of dtypes, fills.
#include "kernels/copy.h"

#include <cstring>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;

Layout make_layout(std::vector<int64_t> shape, std::vector<int64_t> strides) {
  Layout l;
  l.ndim = static_cast<int>(shape.size());
  for (int d = 0; d < l.ndim; ++d) {
    l.shape[d] = shape[d];
    l.strides[d] = strides[d];
  }
  return l;
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size(), 1);
  for (int d = int(shape.size()) - 2; d >= 0; --d) strides[d] = strides[d + 1] * shape[d + 1];
  return strides;
}

// Naive reference: visits every multi-index (odometer) and moves one element.
template <typename Word>
void naive_copy(const Word* src, const Layout& s, Word* dst, const Layout& t) {
  const int64_t total = s.numel();
  std::vector<int64_t> index(size_t(s.ndim) + 1, 0);
  for (int64_t count = 0; count < total; ++count) {
    int64_t from = 0, to = 0;
    for (int d = 0; d < s.ndim; ++d) {
      from += index[d] * s.strides[d];
      to += index[d] * t.strides[d];
    }
    dst[to] = src[from];
    for (int d = s.ndim - 1; d >= 0; --d) {
      if (++index[d] < s.shape[d]) break;
      index[d] = 0;
    }
  }
}

// Copies src -> dst with both the kernel and the naive walk; buffers start equal (a marker
// value), so untouched destination elements must stay the marker in both.
template <typename Word>
void check_copy(const Layout& src_layout, const Layout& dst_layout, int64_t src_size,
                int64_t dst_size) {
  std::vector<Word> src(static_cast<size_t>(src_size));
  for (int64_t i = 0; i < src_size; ++i) src[i] = static_cast<Word>(i * 37 + 11);
  std::vector<Word> got(static_cast<size_t>(dst_size), Word(0x5a));
  std::vector<Word> want = got;
  cpu::copy_strided(src.data(), src_layout, got.data(), dst_layout, sizeof(Word));
  naive_copy(src.data(), src_layout, want.data(), dst_layout);
  ASSERT_EQ(got, want);
}

template <typename Word> void check_transpose(int64_t rows, int64_t cols) {
  // src (rows, cols) contiguous read as its transpose (cols, rows), written contiguous.
  const Layout src = make_layout({cols, rows}, {1, cols});
  const Layout dst = make_layout({cols, rows}, {rows, 1});
  check_copy<Word>(src, dst, rows * cols, rows * cols);
}

TEST(CopyStrided, TransposeOddAndEvenShapesEveryElementSize) {
  for (int64_t rows : {1, 7, 64, 129})
    for (int64_t cols : {1, 7, 64, 129}) {
      check_transpose<uint8_t>(rows, cols);
      check_transpose<uint16_t>(rows, cols);
      check_transpose<uint32_t>(rows, cols);
      check_transpose<uint64_t>(rows, cols);
    }
}

TEST(CopyStrided, ContiguousFastPath) {
  for (int64_t n : {1, 7, 64, 129}) {
    const std::vector<int64_t> shape{3, n, 2};
    const Layout l = make_layout(shape, contiguous_strides(shape));
    check_copy<uint32_t>(l, l, 6 * n, 6 * n);
    check_copy<uint8_t>(l, l, 6 * n, 6 * n);
  }
}

TEST(CopyStrided, NarrowIntoSliceOfLargerBuffer) {
  // src: columns 3..3+w of a (5, 40) buffer; dst: rows 1..6 of a (8, w + 2) buffer.
  for (int64_t w : {1, 7, 30}) {
    const Layout src = make_layout({5, w}, {40, 1});
    const Layout dst = make_layout({5, w}, {w + 2, 1});
    std::vector<uint32_t> big(5 * 40);
    std::iota(big.begin(), big.end(), 100u);
    std::vector<uint32_t> got(size_t(8 * (w + 2)), 0u), want = got;
    const uint32_t* src_start = big.data() + 3;
    cpu::copy_strided(src_start, src, got.data() + (w + 2), dst, 4);
    naive_copy(src_start, src, want.data() + (w + 2), dst);
    EXPECT_EQ(got, want);
  }
}

TEST(CopyStrided, BroadcastSourceWithZeroStrides) {
  // A (7) vector broadcast to (4, 7, 3) over dims 0 and 2.
  const Layout src = make_layout({4, 7, 3}, {0, 1, 0});
  const std::vector<int64_t> shape{4, 7, 3};
  const Layout dst = make_layout(shape, contiguous_strides(shape));
  check_copy<uint64_t>(src, dst, 7, 84);
  std::vector<float> vec{0, 1, 2, 3, 4, 5, 6}, out(84);
  cpu::copy_strided(vec.data(), src, out.data(), dst, 4);
  for (int a = 0; a < 4; ++a)
    for (int j = 0; j < 7; ++j)
      for (int c = 0; c < 3; ++c) EXPECT_EQ(out[(a * 7 + j) * 3 + c], float(j));
}

TEST(CopyStrided, HighRankPermutation) {
  // (2, 3, 1, 4, 5, 2, 3, 2) contiguous, read with dims reversed (kMaxDims dims).
  const std::vector<int64_t> shape{2, 3, 1, 4, 5, 2, 3, 2};
  const std::vector<int64_t> strides = contiguous_strides(shape);
  std::vector<int64_t> rshape(shape.rbegin(), shape.rend()), rstrides(strides.rbegin(), strides.rend());
  int64_t total = 1;
  for (int64_t s : shape) total *= s;
  check_copy<uint16_t>(make_layout(rshape, rstrides), make_layout(rshape, contiguous_strides(rshape)),
                       total, total);
}

TEST(CopyStrided, ScalarAndEmpty) {
  const Layout scalar = make_layout({}, {});
  double x = 3.25, y = 0;
  cpu::copy_strided(&x, scalar, &y, scalar, 8);
  EXPECT_EQ(y, 3.25);
  const Layout empty = make_layout({3, 0, 2}, {0, 2, 1});
  cpu::copy_strided(nullptr, empty, nullptr, empty, 4);  // nothing to touch
}

TEST(CopyStrided, RejectsBadArguments) {
  const Layout a = make_layout({2, 3}, {3, 1});
  const Layout b = make_layout({3, 2}, {2, 1});
  const Layout c = make_layout({6}, {1});
  float src[6] = {}, dst[6] = {};
  EXPECT_THROW(cpu::copy_strided(src, a, dst, b, 4), KernelError);
  EXPECT_THROW(cpu::copy_strided(src, a, dst, c, 4), KernelError);
  EXPECT_THROW(cpu::copy_strided(src, a, dst, a, 3), KernelError);
  Layout too_deep = a;
  too_deep.ndim = kMaxDims + 1;
  EXPECT_THROW(cpu::copy_strided(src, too_deep, dst, too_deep, 4), KernelError);
}

// ---- cast ----

const DType kAllDTypes[] = {DType::f32, DType::bf16, DType::f16, DType::i32,
                            DType::i64, DType::u8,   DType::f64};

// Writes value (exactly representable in t) into element k of a buffer of dtype t.
void put(DType t, std::vector<unsigned char>& buf, int64_t k, double value) {
  unsigned char* p = buf.data() + k * dtype_size(t);
  switch (t) {
    case DType::f32: { float v = float(value); std::memcpy(p, &v, 4); break; }
    case DType::f64: std::memcpy(p, &value, 8); break;
    case DType::bf16: { uint16_t v = float_to_bf16_bits(float(value)); std::memcpy(p, &v, 2); break; }
    case DType::f16: { uint16_t v = float_to_f16_bits(float(value)); std::memcpy(p, &v, 2); break; }
    case DType::i32: { int32_t v = int32_t(value); std::memcpy(p, &v, 4); break; }
    case DType::i64: { int64_t v = int64_t(value); std::memcpy(p, &v, 8); break; }
    case DType::u8: { uint8_t v = uint8_t(value); std::memcpy(p, &v, 1); break; }
  }
}

double get(DType t, const std::vector<unsigned char>& buf, int64_t k) {
  const unsigned char* p = buf.data() + k * dtype_size(t);
  switch (t) {
    case DType::f32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::f64: { double v; std::memcpy(&v, p, 8); return v; }
    case DType::bf16: { uint16_t v; std::memcpy(&v, p, 2); return bf16_bits_to_float(v); }
    case DType::f16: { uint16_t v; std::memcpy(&v, p, 2); return f16_bits_to_float(v); }
    case DType::i32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    case DType::i64: { int64_t v; std::memcpy(&v, p, 8); return double(v); }
    case DType::u8: { uint8_t v; std::memcpy(&v, p, 1); return v; }
  }
  return 0;
}

TEST(Cast, EveryPairOfDTypesOnExactValues) {
  // Values exact in every float dtype; negative ones only where the source is signed.
  const std::vector<double> values{0, 1, 2, 3.5, 7.75, 100, 127, 200, -1, -2.5, -7.75, -120};
  for (DType from : kAllDTypes)
    for (DType to : kAllDTypes) {
      std::vector<double> usable;
      for (double v : values) {
        const bool from_int = !dtype_is_float(from), to_unsigned = to == DType::u8 || from == DType::u8;
        if (v < 0 && to_unsigned) continue;
        usable.push_back(from_int ? std::trunc(v) : v);
      }
      const int64_t n = int64_t(usable.size());
      std::vector<unsigned char> src(size_t(n * dtype_size(from))), dst(size_t(n * dtype_size(to)));
      for (int64_t k = 0; k < n; ++k) put(from, src, k, usable[k]);
      cpu::cast(from, src.data(), to, dst.data(), n);
      for (int64_t k = 0; k < n; ++k) {
        const double expected = dtype_is_float(to) ? usable[k] : std::trunc(usable[k]);
        EXPECT_EQ(get(to, dst, k), expected)
            << dtype_name(from) << " -> " << dtype_name(to) << " value " << usable[k];
      }
    }
}

TEST(Cast, FloatToIntTruncatesTowardZeroAndSaturates) {
  const std::vector<float> src{2.7f, -2.7f, 0.5f, -0.5f, 1e10f, -1e10f,
                               std::numeric_limits<float>::quiet_NaN(), 300.0f};
  std::vector<int32_t> i32(src.size());
  std::vector<int64_t> i64(src.size());
  std::vector<uint8_t> u8(src.size());
  cpu::cast(DType::f32, src.data(), DType::i32, i32.data(), int64_t(src.size()));
  cpu::cast(DType::f32, src.data(), DType::i64, i64.data(), int64_t(src.size()));
  cpu::cast(DType::f32, src.data(), DType::u8, u8.data(), int64_t(src.size()));
  EXPECT_EQ(i32, (std::vector<int32_t>{2, -2, 0, 0, INT32_MAX, INT32_MIN, 0, 300}));
  EXPECT_EQ(i64, (std::vector<int64_t>{2, -2, 0, 0, 10000000000LL, -10000000000LL, 0, 300}));
  EXPECT_EQ(u8, (std::vector<uint8_t>{2, 0, 0, 0, 255, 0, 0, 255}));
}

TEST(Cast, FloatToHalfTypesRoundsToNearest) {
  for (int64_t n : {1, 7, 64, 129}) {
    std::vector<float> src(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) src[i] = std::sin(0.37f * float(i)) * 1000.0f + 1.0f / 3.0f;
    std::vector<uint16_t> bf(static_cast<size_t>(n)), hf(static_cast<size_t>(n));
    cpu::cast(DType::f32, src.data(), DType::bf16, bf.data(), n);
    cpu::cast(DType::f32, src.data(), DType::f16, hf.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(bf[i], float_to_bf16_bits(src[i]));
      EXPECT_EQ(hf[i], float_to_f16_bits(src[i]));
      // Within half an ulp: 2^-9 relative for bf16, 2^-12 for f16 (normal range).
      EXPECT_LE(std::fabs(bf16_bits_to_float(bf[i]) - src[i]), std::ldexp(std::fabs(src[i]), -8));
      EXPECT_LE(std::fabs(f16_bits_to_float(hf[i]) - src[i]), std::ldexp(std::fabs(src[i]), -11));
    }
  }
}

TEST(Cast, WideIntegersAndDoubles) {
  const std::vector<int64_t> big{(1LL << 53) + 1, -(1LL << 40) - 3, (1LL << 24) + 1, 5000000000LL};
  std::vector<double> as_f64(big.size());
  std::vector<float> as_f32(big.size());
  std::vector<int32_t> as_i32(big.size());
  cpu::cast(DType::i64, big.data(), DType::f64, as_f64.data(), 4);
  cpu::cast(DType::i64, big.data(), DType::f32, as_f32.data(), 4);
  cpu::cast(DType::i64, big.data(), DType::i32, as_i32.data(), 4);
  for (size_t k = 0; k < big.size(); ++k) {
    EXPECT_EQ(as_f64[k], static_cast<double>(big[k]));
    EXPECT_EQ(as_f32[k], static_cast<float>(big[k]));  // one rounding, straight from int64
    EXPECT_EQ(as_i32[k], static_cast<int32_t>(big[k]));  // modular, as C++ converts
  }
  const std::vector<double> d{1.0 + 1e-12, 1e300, -3.0000001};
  std::vector<float> f(3);
  cpu::cast(DType::f64, d.data(), DType::f32, f.data(), 3);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_TRUE(std::isinf(f[1]));
  EXPECT_EQ(f[2], -3.0000001f);
}

TEST(Cast, RejectsNegativeCount) {
  float x = 0;
  EXPECT_THROW(cpu::cast(DType::f32, &x, DType::f64, &x, -1), KernelError);
  EXPECT_THROW(cpu::cast(static_cast<DType>(99), &x, DType::f32, &x, 1), KernelError);
}

// ---- fill ----

TEST(Fill, EveryDTypeOddAndEvenLengths) {
  for (DType t : kAllDTypes)
    for (int64_t n : {1, 7, 64, 129}) {
      std::vector<unsigned char> buf(size_t(n * dtype_size(t)), 0xcd);
      cpu::fill(t, buf.data(), n, 3.0);
      for (int64_t k = 0; k < n; ++k) ASSERT_EQ(get(t, buf, k), 3.0) << dtype_name(t);
      cpu::fill(t, buf.data(), n, -1.75);
      const double expected = t == DType::u8 ? 0.0 : dtype_is_float(t) ? -1.75 : -1.0;
      for (int64_t k = 0; k < n; ++k) ASSERT_EQ(get(t, buf, k), expected) << dtype_name(t);
    }
}

TEST(Fill, RoundsToTheDType) {
  uint16_t bf = 0, hf = 0;
  cpu::fill(DType::bf16, &bf, 1, 0.1);
  cpu::fill(DType::f16, &hf, 1, 0.1);
  EXPECT_EQ(bf, float_to_bf16_bits(0.1f));
  EXPECT_EQ(hf, float_to_f16_bits(0.1f));
  float f = 0;
  EXPECT_THROW(cpu::fill(DType::f32, &f, -3, 1.0), KernelError);
  EXPECT_THROW(cpu::fill(static_cast<DType>(42), &f, 1, 1.0), KernelError);
}

}  // namespace
