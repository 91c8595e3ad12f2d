// See basic.h.
#include "layers/basic.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/ops.h"

namespace ssmtrain {

Tensor uniform_init(const Shape& shape, double bound, Generator& gen, DType dtype) {
  return Tensor::rand(shape, gen, DType::f32, Device::cpu(), float(-bound), float(bound)).to(dtype);
}

Tensor normal_init(const Shape& shape, double std, Generator& gen, DType dtype) {
  return Tensor::randn(shape, gen, DType::f32, Device::cpu(), 0.0f, float(std)).to(dtype);
}

Tensor dt_bias_init(int64_t count, double dt_min, double dt_max, double dt_floor, Generator& gen, DType dtype) {
  const std::vector<float> u = Tensor::rand({count}, gen).to_vector();
  std::vector<double> bias(count);
  for (int64_t i = 0; i < count; ++i) {
    const double dt = std::max(std::exp(u[i] * (std::log(dt_max) - std::log(dt_min)) + std::log(dt_min)), dt_floor);
    bias[i] = dt + std::log(-std::expm1(-dt));  // softplus^-1
  }
  return Tensor::from_vector(bias, {count}, dtype);
}

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias, Generator& gen, DType dtype)
    : weight(register_parameter("weight", uniform_init({out_features, in_features},
                                                       1.0 / std::sqrt(double(in_features)), gen, dtype))) {
  if (has_bias) bias = &register_parameter("bias", Tensor::zeros({out_features}, dtype), /*weight_decay=*/false);
}

Tensor Linear::forward(const Tensor& x) const {
  return linear(x, weight_for(weight, x), bias ? weight_for(*bias, x) : Tensor());
}

Embedding::Embedding(int64_t vocab, int64_t d, Generator& gen, DType dtype)
    : table(register_parameter("weight", normal_init({vocab, d}, 0.02, gen, dtype))) {}

Tensor Embedding::forward(const Tensor& ids) const { return embedding(ids, table); }

RMSNorm::RMSNorm(int64_t d, double eps_, DType dtype)
    : weight(register_parameter("weight", Tensor::ones({d}, dtype), /*weight_decay=*/false)), eps(eps_) {}

Tensor RMSNorm::forward(const Tensor& x) const { return rmsnorm(x, weight_for(weight, x), eps); }

}  // namespace ssmtrain
