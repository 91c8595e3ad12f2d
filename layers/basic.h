// The plain layers: Linear (no bias by default, as in Mamba), Embedding, RMSNorm, and the
// initialisers they share (uniform and normal draws from the model's Philox generator).
#pragma once

#include "autograd/rng.h"
#include "layers/module.h"

namespace ssmtrain {

// f32 tensors (f64 with `dtype`) drawn from U(-bound, bound) or N(0, std) on the CPU.
Tensor uniform_init(const Shape& shape, double bound, Generator& gen, DType dtype = DType::f32);
Tensor normal_init(const Shape& shape, double std, Generator& gen, DType dtype = DType::f32);
// Mamba's dt bias: softplus^-1(dt) for dt log-uniform in [dt_min, dt_max], at least dt_floor.
Tensor dt_bias_init(int64_t count, double dt_min, double dt_max, double dt_floor, Generator& gen,
                    DType dtype = DType::f32);

class Linear : public Module {
 public:
  // weight (out, in) ~ U(-1/sqrt(in), 1/sqrt(in)), PyTorch's default; bias zero.
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, DType dtype = DType::f32);
  // x (..., in) -> (..., out)
  Tensor forward(const Tensor& x) const;
  Tensor& weight;
  Tensor* bias = nullptr;
};

class Embedding : public Module {
 public:
  // table (vocab, d) ~ N(0, 0.02), as in Mamba.
  Embedding(int64_t vocab, int64_t d, Generator& gen, DType dtype = DType::f32);
  Tensor forward(const Tensor& ids) const;  // ids (...) -> (..., d)
  Tensor& table;
};

class RMSNorm : public Module {
 public:
  RMSNorm(int64_t d, double eps, DType dtype = DType::f32);
  Tensor forward(const Tensor& x) const;  // over the last dimension
  Tensor& weight;
  double eps;
};

}  // namespace ssmtrain
