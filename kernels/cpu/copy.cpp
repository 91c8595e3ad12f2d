// CPU reference of data movement (kernels/copy.h): strided copies over a shared shape,
// dtype casts between any pair of DType, and constant fills.
#include "kernels/copy.h"

#include <cstring>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace ssmtrain::kernels::cpu {

namespace {

[[noreturn]] void fail(const char* op, const std::string& what) {
  throw KernelError(std::string(op) + ": " + what);
}

// True when `strides` are the row-major contiguous strides of `layout.shape` (dimensions of
// size 1 may carry any stride).
bool is_contiguous(const Layout& layout) {
  int64_t expected = 1;
  for (int d = layout.ndim - 1; d >= 0; --d) {
    if (layout.shape[d] != 1 && layout.strides[d] != expected) return false;
    expected *= layout.shape[d];
  }
  return true;
}

// Copies every row (last dimension) of the shared shape, parallel over rows.
template <typename Word>
void copy_rows(const Word* src, const Layout& src_layout, Word* dst, const Layout& dst_layout) {
  if (src_layout.ndim == 0) {  // a scalar
    dst[0] = src[0];
    return;
  }
  const int last = src_layout.ndim - 1;
  const int64_t width = src_layout.shape[last];
  const int64_t rows = width == 0 ? 0 : src_layout.numel() / width;
  const int64_t src_step = src_layout.strides[last];
  const int64_t dst_step = dst_layout.strides[last];
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const Word* src_row = src + src_layout.row_offset(row);  // (width), stride src_step
    Word* dst_row = dst + dst_layout.row_offset(row);         // (width), stride dst_step
    for (int64_t j = 0; j < width; ++j) dst_row[j * dst_step] = src_row[j * src_step];
  }
}

// One element, read from any dtype: integers exactly as int64, floats as double.
struct Scalar {
  bool is_int = false;
  int64_t i = 0;
  double f = 0;
};

Scalar load(DType t, const void* p, int64_t k) {
  Scalar v;
  switch (t) {
    case DType::f32: v.f = static_cast<const float*>(p)[k]; break;
    case DType::f64: v.f = static_cast<const double*>(p)[k]; break;
    case DType::bf16: v.f = bf16_bits_to_float(static_cast<const uint16_t*>(p)[k]); break;
    case DType::f16: v.f = f16_bits_to_float(static_cast<const uint16_t*>(p)[k]); break;
    case DType::i32: v.is_int = true; v.i = static_cast<const int32_t*>(p)[k]; break;
    case DType::i64: v.is_int = true; v.i = static_cast<const int64_t*>(p)[k]; break;
    case DType::u8: v.is_int = true; v.i = static_cast<const uint8_t*>(p)[k]; break;
  }
  return v;
}

// A float truncated toward zero into an integer type: NaN gives 0, values beyond the
// type's range saturate at its limits.
template <typename Int>
Int float_to_int(double f) {
  if (std::isnan(f)) return 0;
  const double lo = static_cast<double>(std::numeric_limits<Int>::min());
  const double hi = static_cast<double>(std::numeric_limits<Int>::max());
  if (f <= lo) return std::numeric_limits<Int>::min();
  if (f >= hi) return std::numeric_limits<Int>::max();
  return static_cast<Int>(std::trunc(f));
}

// An integer as float: converted straight from int64 (one rounding).
float int_to_float(int64_t i) { return static_cast<float>(i); }

void store(DType t, void* p, int64_t k, const Scalar& v) {
  switch (t) {
    case DType::f32:
      static_cast<float*>(p)[k] = v.is_int ? int_to_float(v.i) : static_cast<float>(v.f);
      break;
    case DType::f64:
      static_cast<double*>(p)[k] = v.is_int ? static_cast<double>(v.i) : v.f;
      break;
    case DType::bf16:
      static_cast<uint16_t*>(p)[k] =
          float_to_bf16_bits(v.is_int ? int_to_float(v.i) : static_cast<float>(v.f));
      break;
    case DType::f16:
      static_cast<uint16_t*>(p)[k] =
          float_to_f16_bits(v.is_int ? int_to_float(v.i) : static_cast<float>(v.f));
      break;
    case DType::i32:
      static_cast<int32_t*>(p)[k] = v.is_int ? static_cast<int32_t>(v.i) : float_to_int<int32_t>(v.f);
      break;
    case DType::i64:
      static_cast<int64_t*>(p)[k] = v.is_int ? v.i : float_to_int<int64_t>(v.f);
      break;
    case DType::u8:
      static_cast<uint8_t*>(p)[k] = v.is_int ? static_cast<uint8_t>(v.i) : float_to_int<uint8_t>(v.f);
      break;
  }
}

void check_dtype(const char* op, DType t) {
  if (dtype_size(t) == 0)
    fail(op, "unknown dtype tag " + std::to_string(static_cast<int>(t)));
}

}  // namespace

void copy_strided(const void* src, const Layout& src_layout, void* dst, const Layout& dst_layout,
                  int64_t elem_size) {
  const char* op = "copy_strided";
  if (src_layout.ndim < 0 || src_layout.ndim > kMaxDims)
    fail(op, "ndim " + std::to_string(src_layout.ndim) + " outside [0, " +
                 std::to_string(kMaxDims) + "]");
  if (src_layout.ndim != dst_layout.ndim)
    fail(op, "src has ndim " + std::to_string(src_layout.ndim) + ", dst " +
                 std::to_string(dst_layout.ndim));
  for (int d = 0; d < src_layout.ndim; ++d) {
    if (src_layout.shape[d] != dst_layout.shape[d])
      fail(op, "shape differs at dim " + std::to_string(d) + ": src " +
                   std::to_string(src_layout.shape[d]) + ", dst " + std::to_string(dst_layout.shape[d]));
    if (src_layout.shape[d] < 0)
      fail(op, "negative size " + std::to_string(src_layout.shape[d]) + " at dim " + std::to_string(d));
  }
  if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8)
    fail(op, "elem_size " + std::to_string(elem_size) + " is not 1, 2, 4 or 8 bytes");
  const int64_t numel = src_layout.numel();
  if (numel == 0) return;

  // Fast path: both layouts contiguous, one block copy.
  if (is_contiguous(src_layout) && is_contiguous(dst_layout)) {
    std::memcpy(dst, src, static_cast<size_t>(numel * elem_size));
    return;
  }
  switch (elem_size) {
    case 1: copy_rows(static_cast<const uint8_t*>(src), src_layout, static_cast<uint8_t*>(dst), dst_layout); break;
    case 2: copy_rows(static_cast<const uint16_t*>(src), src_layout, static_cast<uint16_t*>(dst), dst_layout); break;
    case 4: copy_rows(static_cast<const uint32_t*>(src), src_layout, static_cast<uint32_t*>(dst), dst_layout); break;
    default: copy_rows(static_cast<const uint64_t*>(src), src_layout, static_cast<uint64_t*>(dst), dst_layout); break;
  }
}

// dst (n) = src (n) converted. Integers pass through int64 exactly; floats through double;
// float -> int truncates toward zero (NaN -> 0, saturating at the type's limits); f64 -> bf16 / f16
// rounds through f32 first.
void cast(DType from, const void* src, DType to, void* dst, int64_t n) {
  check_dtype("cast", from);
  check_dtype("cast", to);
  if (n < 0) fail("cast", "negative element count " + std::to_string(n));
  if (from == to) {
    std::memcpy(dst, src, static_cast<size_t>(n * dtype_size(from)));
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < n; ++k) store(to, dst, k, load(from, src, k));
}

// dst (n) = value converted to dtype (as cast from f64 would).
void fill(DType dtype, void* dst, int64_t n, double value) {
  check_dtype("fill", dtype);
  if (n < 0) fail("fill", "negative element count " + std::to_string(n));
  Scalar v;
  v.f = value;
  alignas(8) unsigned char pattern[8];
  store(dtype, pattern, 0, v);
  const int64_t size = dtype_size(dtype);
  auto* out = static_cast<unsigned char*>(dst);
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < n; ++k) std::memcpy(out + k * size, pattern, static_cast<size_t>(size));
}

}  // namespace ssmtrain::kernels::cpu
