// See attention.h.
#include "layers/attention.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/attention_ops.h"
#include "autograd/decode_ops.h"
#include "autograd/ops.h"

namespace ssmtrain {
namespace {
const configs::ModelConfig& checked(const configs::ModelConfig& model) {
  const configs::AttentionConfig& o = model.attention;
  const int64_t n_kv_heads = model.attention_n_kv_heads();
  if (o.n_heads <= 0 || n_kv_heads <= 0 || o.n_heads % n_kv_heads != 0)
    throw std::invalid_argument("attention: n_kv_heads (" + std::to_string(n_kv_heads) +
                                ") must divide n_heads (" + std::to_string(o.n_heads) + ")");
  if (model.attention_head_dim() <= 0)
    throw std::invalid_argument("attention: n_heads (" + std::to_string(o.n_heads) + ") must divide d_model (" +
                                std::to_string(model.d_model) + ") when head_dim is not given");
  if (o.rope && model.attention_head_dim() % 2 != 0)
    throw std::invalid_argument("attention: rope needs an even head dim, got " + std::to_string(model.attention_head_dim()));
  return model;
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

AttentionMixer::AttentionMixer(const configs::ModelConfig& model, bool deterministic, Generator& gen, DType dtype)
    : model_(checked(model)),
      deterministic_(deterministic),
      q_proj_(register_module("q_proj", std::make_unique<Linear>(model.d_model, model_.attention.n_heads * model_.attention_head_dim(), false, gen, dtype))),
      k_proj_(register_module("k_proj", std::make_unique<Linear>(model.d_model, model_.attention_n_kv_heads() * model_.attention_head_dim(), false, gen, dtype))),
      v_proj_(register_module("v_proj", std::make_unique<Linear>(model.d_model, model_.attention_n_kv_heads() * model_.attention_head_dim(), false, gen, dtype))),
      o_proj_(register_module("o_proj", std::make_unique<Linear>(model_.attention.n_heads * model_.attention_head_dim(), model.d_model, false, gen, dtype))) {
  copy_into(o_proj_.weight, mul(o_proj_.weight, 1.0 / std::sqrt(double(std::max<int64_t>(model.n_layers, 1)))));
}

Tensor AttentionMixer::forward(const Tensor& x, const Tensor& doc_index) const {
  const int64_t b = x.shape()[0], l = x.shape()[1], dh = model_.attention_head_dim();
  Tensor q = reshape(q_proj_.forward(x), {b, l, model_.attention.n_heads, dh});     // (b, l, h, dh)
  Tensor k = reshape(k_proj_.forward(x), {b, l, model_.attention_n_kv_heads(), dh});  // (b, l, kv, dh)
  const Tensor v = reshape(v_proj_.forward(x), {b, l, model_.attention_n_kv_heads(), dh});
  if (model_.attention.rope) {
    const RotaryTables tables = rotary_tables(l, dh, model_.attention.rope_theta, q.dtype(), q.device());
    q = rotary_embedding(q, tables);
    k = rotary_embedding(k, tables);
  }
  const Tensor y = attention(q, k, v, doc_index, 0.0, deterministic_);                             // (b, l, h, dh)
  return o_proj_.forward(reshape(y, {b, l, model_.attention.n_heads * dh}));          // (b, l, d)
}

MixerCache AttentionMixer::new_cache(int64_t batch, int64_t max_len, DType dtype, Device device) const {
  MixerCache c;
  c.k = Tensor::zeros({batch, max_len, model_.attention_n_kv_heads(), model_.attention_head_dim()}, dtype, device);  // (b, max_len, kv, dh)
  c.v = Tensor::zeros({batch, max_len, model_.attention_n_kv_heads(), model_.attention_head_dim()}, dtype, device);
  return c;
}

Tensor AttentionMixer::prefill(const Tensor& x, const MixerCache& cache) const {
  const int64_t b = x.shape()[0], l = x.shape()[1], dh = model_.attention_head_dim();
  if (l > cache.k.size(1))
    throw std::invalid_argument("attention prefill: " + std::to_string(l) + " tokens do not fit the KV cache of " +
                                std::to_string(cache.k.size(1)));
  Tensor q = reshape(q_proj_.forward(x), {b, l, model_.attention.n_heads, dh});     // (b, l, h, dh)
  Tensor k = reshape(k_proj_.forward(x), {b, l, model_.attention_n_kv_heads(), dh});  // (b, l, kv, dh)
  const Tensor v = reshape(v_proj_.forward(x), {b, l, model_.attention_n_kv_heads(), dh});
  if (model_.attention.rope) {
    const RotaryTables tables = rotary_tables(l, dh, model_.attention.rope_theta, q.dtype(), q.device());
    q = rotary_embedding(q, tables);
    k = rotary_embedding(k, tables);
  }
  copy_into(narrow(cache.k, 1, 0, l), k);
  copy_into(narrow(cache.v, 1, 0, l), v);
  const Tensor y = attention(q, k, v, Tensor(), 0.0, deterministic_);  // (b, l, h, dh)
  return o_proj_.forward(reshape(y, {b, l, model_.attention.n_heads * dh}));          // (b, l, d)
}

Tensor AttentionMixer::step(const Tensor& x, const MixerCache& cache, const std::vector<int64_t>& positions) const {
  const int64_t b = x.shape()[0], dh = model_.attention_head_dim(), h = model_.attention.n_heads,
                kv = model_.attention_n_kv_heads(), max_len = cache.k.size(1);
  if (int64_t(positions.size()) != b)
    throw std::invalid_argument("attention step: " + std::to_string(positions.size()) + " positions for a batch of " +
                                std::to_string(b));
  for (int64_t pos : positions)
    if (pos < 0 || pos >= max_len)
      throw std::invalid_argument("attention step: position " + std::to_string(pos) + " is outside the KV cache of " +
                                  std::to_string(max_len) + " tokens");
  Tensor q = reshape(q_proj_.forward(x), {b, 1, h, dh});   // (b, 1, h, dh)
  Tensor k = reshape(k_proj_.forward(x), {b, 1, kv, dh});  // (b, 1, kv, dh)
  const Tensor v = reshape(v_proj_.forward(x), {b, 1, kv, dh});
  if (model_.attention.rope) {
    // Each sequence's own position: angle tables (b, 1, 1, dh/2).
    const int64_t half = dh / 2;
    std::vector<float> cos_table(size_t(b * half)), sin_table(size_t(b * half));
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < half; ++j) {
        const double angle = double(positions[size_t(i)]) * std::pow(model_.attention.rope_theta, -2.0 * double(j) / double(dh));
        cos_table[size_t(i * half + j)] = float(std::cos(angle));
        sin_table[size_t(i * half + j)] = float(std::sin(angle));
      }
    const RotaryTables tables{cast(to_device(Tensor::from_vector(cos_table, {b, 1, 1, half}), q.device()), q.dtype()),
                              cast(to_device(Tensor::from_vector(sin_table, {b, 1, 1, half}), q.device()), q.dtype())};
    q = rotary_embedding(q, tables);
    k = rotary_embedding(k, tables);
  }
  // The new key and value go to each sequence's position: one copy when the batch is in step.
  const bool in_step = std::all_of(positions.begin(), positions.end(), [&](int64_t p) { return p == positions[0]; });
  if (in_step) {
    copy_into(narrow(cache.k, 1, positions[0], 1), k);
    copy_into(narrow(cache.v, 1, positions[0], 1), v);
  } else {
    for (int64_t i = 0; i < b; ++i) {
      const int64_t pos = positions[size_t(i)];
      copy_into(narrow(narrow(cache.k, 0, i, 1), 1, pos, 1), narrow(k, 0, i, 1));
      copy_into(narrow(narrow(cache.v, 0, i, 1), 1, pos, 1), narrow(v, 0, i, 1));
    }
  }
  // Query head hh reads kv head hh / group; each sequence sees its positions 0 .. pos only.
  std::vector<int64_t> lengths(positions.size());
  for (size_t i = 0; i < positions.size(); ++i) lengths[i] = positions[i] + 1;
  const Tensor y = attention_decode(reshape(q, {b, h, dh}), cache.k, cache.v, lengths);  // (b, h, dh)
  return o_proj_.forward(reshape(y, {b, 1, h * dh}));                 // (b, 1, d)
}

}  // namespace ssmtrain
