// GPU tests of kernels/gemm.h: cuBLASLt against the CPU (OpenBLAS) reference over every
// transpose combination, batches, leading dimensions wider than the rows, beta != 0, strict
// f32 (a TF32 result would miss the f32 bound), bf16 / f16 in with f32 or same-type out,
// k up to 4096, k == 0 and a misaligned operand.
#include "kernels/gemm.h"

#include <gtest/gtest.h>

#include <string>
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

// Storage (elements) that one operand of `rows` rows of stride ld and `batch` batches needs.
int64_t storage(int64_t rows, int64_t ld, int64_t batch, int64_t batch_stride) {
  return (batch - 1) * batch_stride + rows * ld;
}

// A shape with the given leading-dimension padding and, for batch > 1, batch strides with a
// little slack beyond each matrix.
GemmShape make_shape(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t pad = 0,
                     int64_t batch = 1) {
  GemmShape g;
  g.trans_a = ta;
  g.trans_b = tb;
  g.m = m, g.n = n, g.k = k;
  g.lda = (ta ? m : k) + pad;
  g.ldb = (tb ? k : n) + pad;
  g.ldc = n + pad;
  g.batch = batch;
  if (batch > 1) {
    g.stride_a = (ta ? k : m) * g.lda + 8;
    g.stride_b = (tb ? n : k) * g.ldb + 8;
    g.stride_c = m * g.ldc + 8;
  }
  return g;
}

std::string describe(const GemmShape& g, DType ab, DType c, double beta) {
  return std::string(dtype_name(ab)) + "->" + dtype_name(c) + " ta " + std::to_string(g.trans_a) +
         " tb " + std::to_string(g.trans_b) + " m " + std::to_string(g.m) + " n " +
         std::to_string(g.n) + " k " + std::to_string(g.k) + " lda " + std::to_string(g.lda) +
         " batch " + std::to_string(g.batch) + " beta " + std::to_string(beta);
}

// Runs one product on both devices and compares the whole C buffer (padding included: the
// columns past n must be left alone). a_offset shifts A's first element (misalignment).
void check_gemm(const GemmShape& g, DType ab, DType c_dtype, double alpha, double beta,
                int64_t a_offset = 0) {
  const int64_t a_size = storage(g.trans_a ? g.k : g.m, g.lda, g.batch, g.stride_a) + a_offset;
  const int64_t b_size = storage(g.trans_b ? g.n : g.k, g.ldb, g.batch, g.stride_b);
  const int64_t c_size = storage(g.m, g.ldc, g.batch, g.stride_c);
  const std::vector<float> a = round_to(ab, random_vector(a_size, 1));
  const std::vector<float> b = round_to(ab, random_vector(b_size, 2));
  std::vector<float> c_ref = round_to(c_dtype, random_vector(c_size, 3));
  DeviceBuffer a_d = upload(a, ab), b_d = upload(b, ab), c_d = upload(c_ref, c_dtype);
  cpu::gemm(g, alpha, a.data() + a_offset, b.data(), beta, c_ref.data());
  const auto* a_ptr = static_cast<const char*>(a_d.get()) + a_offset * dtype_size(ab);
  cuda::gemm(g, ab, c_dtype, alpha, a_ptr, b_d.get(), beta, c_d.get(), nullptr);
  // f32 in and out: the strict f32 bound (TF32 would miss it). Half-precision inputs: the
  // inputs' bound (tensor-core f32 accumulation need not round like IEEE f32). Scaled by k.
  const DType tolerance_dtype = ab == DType::f32 ? c_dtype : ab;
  EXPECT_TRUE(close(download(c_d.get(), c_dtype, c_size), c_ref, tolerance_dtype, g.k))
      << describe(g, ab, c_dtype, beta);
}

TEST(GemmGpu, AllTransposeCombinationsF32Strict) {
  SSM_REQUIRE_GPU();
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (auto [m, n, k] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
               {1, 1, 1}, {7, 13, 5}, {128, 64, 1000}, {33, 4099, 17}, {1000, 7, 128}})
        check_gemm(make_shape(ta, tb, m, n, k), DType::f32, DType::f32, 1.0, 0.0);
}

TEST(GemmGpu, F32StrictLongReduction) {
  SSM_REQUIRE_GPU();
  check_gemm(make_shape(false, true, 64, 48, 4096), DType::f32, DType::f32, 1.0, 0.0);
  check_gemm(make_shape(true, false, 256, 256, 4096), DType::f32, DType::f32, 0.5, 0.0);
}

TEST(GemmGpu, LeadingDimensionsBetaAndBatches) {
  SSM_REQUIRE_GPU();
  for (DType ab : {DType::f32, DType::bf16}) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        check_gemm(make_shape(ta, tb, 37, 29, 65, /*pad=*/5), ab, DType::f32, 1.0, 0.0);
        check_gemm(make_shape(ta, tb, 37, 29, 65, /*pad=*/3), ab, DType::f32, 0.75, -1.25);
        check_gemm(make_shape(ta, tb, 16, 24, 40, /*pad=*/8, /*batch=*/3), ab, DType::f32, 1.0, 0.5);
        check_gemm(make_shape(ta, tb, 7, 128, 33, /*pad=*/0, /*batch=*/5), ab, ab, 1.0, 0.0);
      }
    }
  }
}

TEST(GemmGpu, HalfPrecisionInputs) {
  SSM_REQUIRE_GPU();
  for (DType ab : {DType::bf16, DType::f16}) {
    for (DType c : {ab, DType::f32}) {
      check_gemm(make_shape(false, false, 128, 256, 512), ab, c, 1.0, 0.0);
      check_gemm(make_shape(false, true, 1000, 64, 4096), ab, c, 1.0, 0.0);
      check_gemm(make_shape(true, false, 64, 1000, 4096), ab, c, 1.0, 1.0);
      check_gemm(make_shape(true, true, 129, 7, 4099), ab, c, 2.0, 0.0);
    }
  }
}

// An operand that is not 16-byte aligned (a view starting one element in).
TEST(GemmGpu, MisalignedOperand) {
  SSM_REQUIRE_GPU();
  check_gemm(make_shape(false, false, 64, 64, 64), DType::f32, DType::f32, 1.0, 0.0, 1);
  check_gemm(make_shape(false, true, 64, 32, 48), DType::bf16, DType::f32, 1.0, 0.0, 1);
}

// k == 0: C = beta * C; and empty m or n does nothing.
TEST(GemmGpu, EmptyDimensions) {
  SSM_REQUIRE_GPU();
  check_gemm(make_shape(false, false, 5, 7, 0), DType::f32, DType::f32, 1.0, 0.5);
  check_gemm(make_shape(false, false, 5, 7, 0), DType::bf16, DType::bf16, 1.0, 0.0);
  GemmShape g = make_shape(false, false, 0, 7, 3);
  DeviceBuffer buf(64);
  EXPECT_NO_THROW(cuda::gemm(g, DType::f32, DType::f32, 1.0, buf.get(), buf.get(), 0.0, buf.get(),
                             nullptr));
}

TEST(GemmGpu, RepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  const GemmShape g = make_shape(false, true, 512, 384, 2048);
  DeviceBuffer a_d = upload(random_vector(512 * 2048, 1), DType::bf16);
  DeviceBuffer b_d = upload(random_vector(384 * 2048, 2), DType::bf16);
  DeviceBuffer c1(512 * 384 * 4), c2(512 * 384 * 4);
  cuda::gemm(g, DType::bf16, DType::f32, 1.0, a_d.get(), b_d.get(), 0.0, c1.get(), nullptr);
  cuda::gemm(g, DType::bf16, DType::f32, 1.0, a_d.get(), b_d.get(), 0.0, c2.get(), nullptr);
  EXPECT_EQ(download_bytes(c1.get(), 512 * 384 * 4), download_bytes(c2.get(), 512 * 384 * 4));
}

TEST(GemmGpu, RejectsBadShapes) {
  SSM_REQUIRE_GPU();
  DeviceBuffer buf(1024);
  GemmShape g = make_shape(false, false, 4, 4, 4);
  g.lda = 2;  // narrower than k
  EXPECT_THROW(cuda::gemm(g, DType::f32, DType::f32, 1.0, buf.get(), buf.get(), 0.0, buf.get(),
                          nullptr),
               KernelError);
  EXPECT_THROW(cuda::gemm(make_shape(false, false, 4, 4, 4), DType::f32, DType::bf16, 1.0,
                          buf.get(), buf.get(), 0.0, buf.get(), nullptr),
               KernelError);
}

}  // namespace
