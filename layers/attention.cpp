// See attention.h.
#include "layers/attention.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/attention_ops.h"
#include "autograd/ops.h"

namespace ssmtrain {
namespace {
const AttentionOptions& checked(const AttentionOptions& o) {
  if (o.n_heads <= 0 || o.kv_heads() <= 0 || o.n_heads % o.kv_heads() != 0)
    throw std::invalid_argument("attention: n_kv_heads (" + std::to_string(o.kv_heads()) +
                                ") must divide n_heads (" + std::to_string(o.n_heads) + ")");
  if (o.head_dim <= 0 && o.d_model % o.n_heads != 0)
    throw std::invalid_argument("attention: n_heads (" + std::to_string(o.n_heads) + ") must divide d_model (" +
                                std::to_string(o.d_model) + ") when head_dim is not given");
  if (o.rope && o.dim_per_head() % 2 != 0)
    throw std::invalid_argument("attention: rope needs an even head dim, got " + std::to_string(o.dim_per_head()));
  return o;
}
}  // namespace

RotaryTables rotary_tables(int64_t l, int64_t dh, double theta, DType dtype, Device device) {
  const int64_t half = dh / 2;
  std::vector<float> cos_table(size_t(l * half)), sin_table(size_t(l * half));
  for (int64_t t = 0; t < l; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = double(t) * std::pow(theta, -2.0 * double(i) / double(dh));
      cos_table[size_t(t * half + i)] = float(std::cos(angle));
      sin_table[size_t(t * half + i)] = float(std::sin(angle));
    }
  // (l, 1, half), broadcast over batch and heads
  return {cast(to_device(Tensor::from_vector(cos_table, {l, 1, half}), device), dtype),
          cast(to_device(Tensor::from_vector(sin_table, {l, 1, half}), device), dtype)};
}

Tensor rotary_embedding(const Tensor& x, const RotaryTables& tables) {
  const int64_t half = x.shape()[3] / 2;
  const std::vector<Tensor> halves = split(x, {half, half}, -1);  // 2 x (b, l, heads, half)
  const Tensor& x1 = halves[0];
  const Tensor& x2 = halves[1];
  return concat({sub(mul(x1, tables.cos), mul(x2, tables.sin)), add(mul(x2, tables.cos), mul(x1, tables.sin))}, -1);
}

AttentionMixer::AttentionMixer(const AttentionOptions& o, Generator& gen, DType dtype)
    : options_(checked(o)),
      q_proj_(register_module("q_proj", std::make_unique<Linear>(o.d_model, o.n_heads * o.dim_per_head(), false, gen, dtype))),
      k_proj_(register_module("k_proj", std::make_unique<Linear>(o.d_model, o.kv_heads() * o.dim_per_head(), false, gen, dtype))),
      v_proj_(register_module("v_proj", std::make_unique<Linear>(o.d_model, o.kv_heads() * o.dim_per_head(), false, gen, dtype))),
      o_proj_(register_module("o_proj", std::make_unique<Linear>(o.n_heads * o.dim_per_head(), o.d_model, false, gen, dtype))) {
  copy_into(o_proj_.weight, mul(o_proj_.weight, 1.0 / std::sqrt(double(std::max<int64_t>(o.n_layers, 1)))));
}

Tensor AttentionMixer::forward(const Tensor& x, const Tensor& doc_index) const {
  const int64_t b = x.shape()[0], l = x.shape()[1], dh = options_.dim_per_head();
  Tensor q = reshape(q_proj_.forward(x), {b, l, options_.n_heads, dh});     // (b, l, h, dh)
  Tensor k = reshape(k_proj_.forward(x), {b, l, options_.kv_heads(), dh});  // (b, l, kv, dh)
  const Tensor v = reshape(v_proj_.forward(x), {b, l, options_.kv_heads(), dh});
  if (options_.rope) {
    const RotaryTables tables = rotary_tables(l, dh, options_.rope_theta, q.dtype(), q.device());
    q = rotary_embedding(q, tables);
    k = rotary_embedding(k, tables);
  }
  const Tensor y = attention(q, k, v, doc_index, 0.0, options_.deterministic);                             // (b, l, h, dh)
  return o_proj_.forward(reshape(y, {b, l, options_.n_heads * dh}));          // (b, l, d)
}

}  // namespace ssmtrain
