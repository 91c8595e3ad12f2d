// Finite differences for whole models: central differences of the (f64) loss against its
// gradient for a sample of elements of every parameter tensor. Shared by the model tests of
// each family.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "autograd/node.h"
#include "layers/model.h"

namespace ssmtrain::testing {

// Checks about `per_tensor` evenly spaced elements of every parameter (the model must be
// f64); returns how many elements were checked.
inline int expect_model_gradients_match_finite_differences(LanguageModel& model, const Tensor& x, const Tensor& y,
                                                           const Tensor& doc, int64_t per_tensor = 7) {
  model.zero_grad();
  model.loss(x, y, doc).backward();
  NoGradGuard no_grad;
  const double eps = 1e-6;
  int checked = 0;
  for (const NamedParameter& p : model.named_parameters()) {
    const std::vector<double> analytic = p.value->grad().values<double>();
    double* data = p.value->data_ptr<double>();
    const int64_t count = p.value->numel();
    for (int64_t j = 0; j < count; j += std::max<int64_t>(1, count / per_tensor)) {
      const double saved = data[j];
      data[j] = saved + eps;
      const double plus = model.loss(x, y, doc).item();
      data[j] = saved - eps;
      const double minus = model.loss(x, y, doc).item();
      data[j] = saved;
      const double numeric = (plus - minus) / (2 * eps);
      EXPECT_NEAR(analytic[j], numeric, 1e-7 + 1e-5 * std::fabs(numeric)) << p.name << "[" << j << "]";
      ++checked;
    }
  }
  return checked;
}

}  // namespace ssmtrain::testing
