// CPU reference of the Philox fills (kernels/philox.h): each element is computed on its own
// from (seed, offset, index) by the same SSM_HD functions the GPU uses, so the bits agree.
#include "kernels/philox.h"

#include <string>

namespace ssmtrain::kernels::cpu {

static void check_count(const char* op, int64_t n) {
  if (n < 0) throw KernelError(std::string(op) + ": negative element count " + std::to_string(n));
}

// out (n) = uniform in [low, high)
void fill_uniform(float* out, int64_t n, uint64_t seed, uint64_t offset, float low, float high) {
  check_count("fill_uniform", n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = philox_uniform_at(seed, offset, i, low, high);
}

// out (n) = normal(mean, std)
void fill_normal(float* out, int64_t n, uint64_t seed, uint64_t offset, float mean, float std) {
  check_count("fill_normal", n);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = philox_normal_at(seed, offset, i, mean, std);
}

}  // namespace ssmtrain::kernels::cpu
