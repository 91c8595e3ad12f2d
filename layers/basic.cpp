// See basic.h.
#include "layers/basic.h"

#include <cmath>

#include "autograd/ops.h"

namespace ssmtrain {

Tensor uniform_init(const Shape& shape, double bound, Generator& gen, DType dtype) {
  return Tensor::rand(shape, gen, DType::f32, Device::cpu(), float(-bound), float(bound)).to(dtype);
}

Tensor normal_init(const Shape& shape, double std, Generator& gen, DType dtype) {
  return Tensor::randn(shape, gen, DType::f32, Device::cpu(), 0.0f, float(std)).to(dtype);
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
