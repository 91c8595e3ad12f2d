// GPU tests of kernels/sampling.h: cuda::sample_tokens picks exactly the tokens of
// cpu::sample_tokens (greedy and every sampling mode, f32 and bf16 logits, a 32k vocabulary and
// an odd one, rows full of ties), advances the draw counter by one per call, and its draws over
// many rows follow the softmax (chi-square).
#include "kernels/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::DeviceBuffer;

// GPU tokens of logits (rows, vocab) given as floats already representable in dtype.
std::vector<int64_t> gpu_sample(const std::vector<float>& logits, int64_t rows, DType dtype, const SamplingParams& p,
                                int64_t first_sequence, int64_t draw, int64_t* draw_after = nullptr) {
  const int64_t vocab = int64_t(logits.size()) / rows;
  DeviceBuffer d_logits = ssmtrain::testing::upload(logits, dtype);
  DeviceBuffer d_draw = ssmtrain::testing::upload_raw(std::vector<int64_t>{draw});
  DeviceBuffer d_out(size_t(rows) * sizeof(int64_t));
  cuda::sample_tokens(dtype, d_logits.get(), rows, vocab, p, first_sequence, d_draw.as<int64_t>(), d_out.as<int64_t>(),
                      nullptr);
  ssmtrain::testing::device_sync();
  if (draw_after) *draw_after = ssmtrain::testing::download_raw<int64_t>(d_draw.get(), 1)[0];
  return ssmtrain::testing::download_raw<int64_t>(d_out.get(), rows);
}

std::vector<int64_t> cpu_sample(const std::vector<float>& logits, int64_t rows, const SamplingParams& p,
                                int64_t first_sequence, int64_t draw) {
  std::vector<int64_t> out(static_cast<size_t>(rows));
  cpu::sample_tokens<float>(logits.data(), rows, int64_t(logits.size()) / rows, p, first_sequence, draw, out.data());
  return out;
}

TEST(SamplingGpu, TokensEqualTheCpuReference) {
  SSM_REQUIRE_GPU();
  const std::vector<SamplingParams> modes{{0.0, 0, 1.0, 0},    {1.0, 0, 1.0, 3},  {0.7, 40, 1.0, 4},
                                          {1.0, 0, 0.9, 5},    {1.3, 50, 0.8, 6}, {0.5, 1, 1.0, 7},
                                          {2.0, 32000, 0.999, 8}};
  for (int64_t vocab : {int64_t(32000), int64_t(1001), int64_t(7)})
    for (DType dtype : {DType::f32, DType::bf16}) {
      const int64_t rows = 16;
      std::vector<float> logits = ssmtrain::testing::random_vector(rows * vocab, uint64_t(vocab), 3.0f);
      for (size_t i = 0; i < logits.size(); i += 5) logits[i] = std::round(logits[i]);  // ties
      for (int64_t i = 0; i < vocab; ++i) logits[size_t(i)] = 1.0f;                      // row 0: all equal
      logits = ssmtrain::testing::round_to(dtype, logits);
      for (const SamplingParams& p : modes)
        for (int64_t draw : {int64_t(0), int64_t(1), int64_t(77)}) {
          const std::string what = "vocab " + std::to_string(vocab) + (dtype == DType::bf16 ? " bf16" : " f32") +
                                   " T " + std::to_string(p.temperature) + " k " + std::to_string(p.top_k) + " p " +
                                   std::to_string(p.top_p) + " draw " + std::to_string(draw);
          int64_t after = -1;
          EXPECT_EQ(gpu_sample(logits, rows, dtype, p, 5, draw, &after), cpu_sample(logits, rows, p, 5, draw)) << what;
          EXPECT_EQ(after, draw + 1) << what;
        }
    }
}

TEST(SamplingGpu, DrawsFollowTheSoftmax) {
  SSM_REQUIRE_GPU();
  const std::vector<float> row{1.0f, -0.5f, 2.0f, 0.3f, 0.3f, -2.0f, 1.5f, 0.0f};
  const int64_t rows = 40000;
  std::vector<float> logits;
  for (int64_t r = 0; r < rows; ++r) logits.insert(logits.end(), row.begin(), row.end());
  const double temperature = 0.8;
  const std::vector<int64_t> got = gpu_sample(logits, rows, DType::f32, {temperature, 0, 1.0, 11}, 0, 0);
  std::vector<double> p(row.size()), count(row.size(), 0.0);
  double total = 0;
  for (size_t i = 0; i < row.size(); ++i) total += p[i] = std::exp((row[i] - 2.0) / temperature);
  for (int64_t t : got) count[size_t(t)] += 1;
  double chi2 = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double expected = double(rows) * p[i] / total;
    chi2 += (count[i] - expected) * (count[i] - expected) / expected;
  }
  EXPECT_LT(chi2, 24.32);  // 7 degrees of freedom, P = 0.001; fixed seed
}

}  // namespace
