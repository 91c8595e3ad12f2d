// GPU-versus-reference comparison with a tolerance scaled to the dtype and the reduction
// length (DESIGN.md section 11), plus the GPU-presence check every *_gpu_test uses.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace ssmtrain::testing {

struct Error {
  double normalized = 0;  // ||got - ref|| / ||ref||
  double max_rel = 0;     // max |got - ref| / (|ref| + atol), atol = atol_fraction * rms(ref)
  int64_t worst = -1;     // index of the max_rel element
  int64_t nonfinite = 0;  // elements of got that are NaN or Inf while ref is finite
};

Error compare(const std::vector<float>& got, const std::vector<float>& ref, double atol_fraction = 1e-3);

// Bound on the normalised error: 1e-5 for f32, 2e-3 for f16 and 1e-2 for bf16, growing with
// sqrt(reduction_len / 256) once the reduction is longer than 256 terms.
double tolerance(DType dtype, int64_t reduction_len);

// gtest assertion: passes when got matches ref within tolerance(dtype, reduction_len), with
// every element finite and the max relative error under 50x the bound. The elementwise check
// measures errors against |ref| + atol, atol = max(1e-3, 10 * bound) * rms(ref): values far
// below the typical magnitude come out of cancelling sums and carry the rounding of the terms.
::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& ref,
                                 DType dtype, int64_t reduction_len);

// For results that end in sums of terms of both signs (gradients through a softmax, expert
// outputs, sums of products of opposite sign), whose small entries carry the rounding of the
// large terms: the normalised error within tolerance(dtype, reduction_len), and every element
// within 50x that bound relative to |ref| + 5% of rms(ref). An all-zero reference (a query that
// sees one key has zero dq) passes when max |got| is within the bound.
::testing::AssertionResult close_cancelling(const std::vector<float>& got, const std::vector<float>& ref,
                                            DType dtype, int64_t reduction_len);

// Values rounded to bf16 / f16 and back, so a CPU reference sees exactly the GPU's inputs.
std::vector<float> round_to(DType dtype, std::vector<float> v);
// Deterministic pseudo-random test data (Philox normal), scaled.
std::vector<float> random_vector(int64_t n, uint64_t seed, float std = 1.0f, float mean = 0.0f);

bool gpu_available();

}  // namespace ssmtrain::testing

// First line of every GPU test: reports the test skipped where no GPU (or no CUDA build) exists.
#define SSM_REQUIRE_GPU()                                                 \
  do {                                                                    \
    if (!::ssmtrain::testing::gpu_available()) GTEST_SKIP() << "no CUDA GPU"; \
  } while (0)
