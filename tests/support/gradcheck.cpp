// See gradcheck.h.
#include "tests/support/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/rng.h"

namespace ssmtrain::testing {

Tensor random_f64(const Shape& shape, uint64_t seed, double std, double mean) {
  Generator gen(seed);
  Tensor f = Tensor::randn(shape, gen, DType::f32, Device::cpu(), float(mean), float(std));
  Tensor out = Tensor::empty(shape, DType::f64);
  copy_into(out, f);
  return out;
}

namespace {
// L = sum(out * w), accumulated in double on the host.
double projected(const Tensor& out, const std::vector<double>& w) {
  const std::vector<double> v = out.values<double>();
  double total = 0;
  for (size_t i = 0; i < v.size(); ++i) total += v[i] * w[i];
  return total;
}
}  // namespace

::testing::AssertionResult gradcheck(const TensorFn& fn, const std::vector<Tensor>& inputs_in,
                                     const GradcheckOptions& options) {
  std::vector<Tensor> inputs;
  for (const Tensor& x : inputs_in) {
    if (!dtype_is_float(x.dtype())) {
      inputs.push_back(x);
      continue;
    }
    Tensor d = Tensor::empty(x.shape(), DType::f64);
    copy_into(d, x);
    d.set_requires_grad(true);
    inputs.push_back(d);
  }

  // Analytic: backward of L with dL/dout = w.
  Tensor out = fn(inputs);
  if (!out.requires_grad()) return ::testing::AssertionFailure() << "output does not require grad";
  const std::vector<double> w = random_f64(out.shape(), options.seed).values<double>();
  out.backward(Tensor::from_vector(w, out.shape()));

  std::ostringstream report;
  int failures = 0;
  int64_t checked = 0;
  NoGradGuard no_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor& x = inputs[i];
    if (x.dtype() != DType::f64) continue;
    const Tensor analytic = x.grad();
    const std::vector<double> a =
        analytic.defined() ? analytic.values<double>() : std::vector<double>(x.numel(), 0.0);
    double* data = x.data_ptr<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      const double saved = data[j];
      data[j] = saved + options.eps;
      const double plus = projected(fn(inputs), w);
      data[j] = saved - options.eps;
      const double minus = projected(fn(inputs), w);
      data[j] = saved;
      const double numeric = (plus - minus) / (2 * options.eps);
      ++checked;
      if (std::fabs(a[j] - numeric) > options.atol + options.rtol * std::fabs(numeric)) {
        if (++failures <= 5)
          report << "\n  input " << i << " element " << j << ": analytic " << a[j] << ", numeric "
                 << numeric;
      }
    }
  }
  if (failures > 0)
    return ::testing::AssertionFailure() << failures << " of " << checked
                                         << " gradient elements differ:" << report.str();
  return ::testing::AssertionSuccess() << checked << " gradient elements match";
}

}  // namespace ssmtrain::testing
