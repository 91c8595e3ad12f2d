// See compare.h.
#include "tests/support/compare.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "kernels/philox.h"

#if SSMTRAIN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace ssmtrain::testing {

Error compare(const std::vector<float>& got, const std::vector<float>& ref, double atol_fraction) {
  Error e;
  double diff2 = 0, ref2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) ref2 += double(ref[i]) * ref[i];
  const double rms = ref.empty() ? 0 : std::sqrt(ref2 / double(ref.size()));
  const double atol = atol_fraction * rms + 1e-30;
  for (size_t i = 0; i < ref.size() && i < got.size(); ++i) {
    if (!std::isfinite(got[i]) && std::isfinite(ref[i])) {
      ++e.nonfinite;
      continue;
    }
    const double d = double(got[i]) - double(ref[i]);
    diff2 += d * d;
    const double rel = std::fabs(d) / (std::fabs(double(ref[i])) + atol);
    if (rel > e.max_rel) {
      e.max_rel = rel;
      e.worst = int64_t(i);
    }
  }
  e.normalized = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  return e;
}

double tolerance(DType dtype, int64_t reduction_len) {
  double base = 1e-5;
  if (dtype == DType::bf16) base = 1e-2;
  if (dtype == DType::f16) base = 2e-3;
  const double growth = reduction_len > 256 ? std::sqrt(double(reduction_len) / 256.0) : 1.0;
  return base * growth;
}

::testing::AssertionResult close(const std::vector<float>& got, const std::vector<float>& ref,
                                 DType dtype, int64_t reduction_len) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure()
           << "size mismatch: got " << got.size() << " elements, reference " << ref.size();
  const double tol = tolerance(dtype, reduction_len);
  const Error e = compare(got, ref, std::max(1e-3, 10 * tol));
  std::ostringstream msg;
  msg << dtype_name(dtype) << " reduction " << reduction_len << ": normalized error "
      << e.normalized << " (bound " << tol << "), max relative " << e.max_rel;
  if (e.worst >= 0) msg << " at " << e.worst << " (got " << got[e.worst] << ", ref " << ref[e.worst] << ")";
  if (e.nonfinite > 0) return ::testing::AssertionFailure() << e.nonfinite << " non-finite; " << msg.str();
  if (e.normalized > tol || e.max_rel > 50 * tol) return ::testing::AssertionFailure() << msg.str();
  return ::testing::AssertionSuccess() << msg.str();
}

::testing::AssertionResult close_cancelling(const std::vector<float>& got, const std::vector<float>& ref,
                                            DType dtype, int64_t reduction_len) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << "size mismatch: got " << got.size() << " elements, reference " << ref.size();
  const double bound = tolerance(dtype, reduction_len);
  double max_ref = 0, max_got = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, double(std::fabs(ref[i])));
    max_got = std::max(max_got, double(std::fabs(got[i])));
  }
  if (max_ref == 0) {
    if (max_got <= bound) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "reference is zero, got max |x| " << max_got << " (bound " << bound << ")";
  }
  const Error e = compare(got, ref, 0.05);
  std::ostringstream msg;
  msg << dtype_name(dtype) << " reduction " << reduction_len << ": normalized error " << e.normalized << " (bound "
      << bound << "), max relative " << e.max_rel << " against |ref| + 5% rms";
  if (e.worst >= 0) msg << " at " << e.worst << " (got " << got[size_t(e.worst)] << ", ref " << ref[size_t(e.worst)] << ")";
  if (e.nonfinite > 0) return ::testing::AssertionFailure() << e.nonfinite << " non-finite; " << msg.str();
  if (e.normalized > bound || e.max_rel > 50 * bound) return ::testing::AssertionFailure() << msg.str();
  return ::testing::AssertionSuccess() << msg.str();
}

std::vector<float> round_to(DType dtype, std::vector<float> v) {
  for (float& x : v) {
    if (dtype == DType::bf16) x = kernels::bf16_bits_to_float(kernels::float_to_bf16_bits(x));
    if (dtype == DType::f16) x = kernels::f16_bits_to_float(kernels::float_to_f16_bits(x));
  }
  return v;
}

std::vector<float> random_vector(int64_t n, uint64_t seed, float std, float mean) {
  std::vector<float> v(static_cast<size_t>(n));
  kernels::cpu::fill_normal(v.data(), n, seed, 0, mean, std);
  return v;
}

bool gpu_available() {
#if SSMTRAIN_WITH_CUDA
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
#else
  return false;
#endif
}

}  // namespace ssmtrain::testing
