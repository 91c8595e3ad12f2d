// Finite-difference gradient checking in double precision on the CPU: the analytic gradient
// of L = sum(fn(inputs) * w), for a fixed random w, against central differences of L.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <vector>

#include "autograd/tensor.h"

namespace ssmtrain::testing {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-7;
  double rtol = 1e-5;
  uint64_t seed = 1234;
};

using TensorFn = std::function<Tensor(const std::vector<Tensor>&)>;

// inputs: CPU tensors; float ones are converted to f64 and checked, integer ones pass through.
::testing::AssertionResult gradcheck(const TensorFn& fn, const std::vector<Tensor>& inputs,
                                     const GradcheckOptions& options = {});

// A CPU f64 tensor of N(0, std) values (Philox, seeded) for gradient checks.
Tensor random_f64(const Shape& shape, uint64_t seed, double std = 1.0, double mean = 0.0);

}  // namespace ssmtrain::testing
