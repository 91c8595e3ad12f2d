// CPU reference of next-token sampling (kernels/sampling.h): each row's tokens sorted by their
// composite key, then top-k, top-p and the draw as prefix walks over that order. The GPU
// radix-selects the same cut points from the same keys and integer weights.
#include "kernels/sampling.h"

#include <algorithm>
#include <string>
#include <vector>

namespace ssmtrain::kernels::cpu {
namespace {

void check(int64_t rows, int64_t vocab, const SamplingParams& p) {
  if (rows < 0 || vocab < 1 || vocab >= (int64_t(1) << 31))
    throw KernelError("sample_tokens: need rows >= 0 and 1 <= vocab < 2^31, got " + std::to_string(rows) + " x " +
                      std::to_string(vocab));
  if (!(p.temperature >= 0.0) || p.top_k < 0 || !(p.top_p > 0.0 && p.top_p <= 1.0))
    throw KernelError("sample_tokens: bad sampling parameters (temperature >= 0, top_k >= 0, top_p in (0, 1])");
}

// One row of float logits (vocab) -> its token.
int64_t sample_row(const float* logits, int64_t vocab, const SamplingParams& p, int64_t sequence, int64_t draw) {
  const int id_bits = sampling_id_bits(vocab);
  if (p.temperature == 0.0) {
    uint64_t best = 0;
    for (int64_t i = 0; i < vocab; ++i) best = std::max(best, sampling_composite(logits[i], i, id_bits));
    return sampling_id_of(best, id_bits);
  }
  std::vector<uint64_t> order(static_cast<size_t>(vocab));  // composite keys, larger first
  for (int64_t i = 0; i < vocab; ++i) order[size_t(i)] = sampling_composite(logits[i], i, id_bits);
  std::sort(order.begin(), order.end(), [](uint64_t a, uint64_t b) { return a > b; });
  const float max_logit = logits[sampling_id_of(order[0], id_bits)];
  const float inv_t = sampling_inv_temperature(p);
  const int shift = sampling_weight_shift(vocab);
  auto weight = [&](size_t rank) {
    return sampling_weight(logits[sampling_id_of(order[rank], id_bits)], max_logit, inv_t, shift);
  };
  size_t kept = p.top_k > 0 ? size_t(std::min(p.top_k, vocab)) : size_t(vocab);
  uint64_t total = 0;
  for (size_t r = 0; r < kept; ++r) total += weight(r);
  if (total == 0) return sampling_id_of(order[0], id_bits);  // NaN or infinite logits: greedy
  if (p.top_p < 1.0) {
    const uint64_t reach = sampling_top_p_target(p.top_p, total);
    uint64_t cum = 0;
    for (size_t r = 0; r < kept; ++r) {
      cum += weight(r);
      if (cum >= reach) {
        kept = r + 1;
        break;
      }
    }
    total = cum;
  }
  const uint64_t target = sampling_draw_target(sampling_uniform(p.seed, sequence, draw), total);
  uint64_t cum = 0;
  for (size_t r = 0; r < kept; ++r) {
    cum += weight(r);
    if (cum > target) return sampling_id_of(order[r], id_bits);
  }
  return sampling_id_of(order[kept - 1], id_bits);  // not reached: cum ends at total > target
}

}  // namespace

template <typename T>
void sample_tokens(const T* logits, int64_t rows, int64_t vocab, const SamplingParams& params, int64_t first_sequence,
                   int64_t draw, int64_t* out) {
  check(rows, vocab, params);
  std::vector<float> row(static_cast<size_t>(vocab));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < vocab; ++i) row[size_t(i)] = static_cast<float>(logits[r * vocab + i]);
    out[r] = sample_row(row.data(), vocab, params, first_sequence + r, draw);
  }
}

template void sample_tokens<float>(const float*, int64_t, int64_t, const SamplingParams&, int64_t, int64_t, int64_t*);
template void sample_tokens<double>(const double*, int64_t, int64_t, const SamplingParams&, int64_t, int64_t, int64_t*);

}  // namespace ssmtrain::kernels::cpu
