// autograd sample_tokens (autograd/decode_ops.h) on the CPU: it writes what the kernel reference
// picks for each row, advances the draw counter once per call (so repeated calls draw anew, as
// a replayed CUDA graph does), and names a bad tensor.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "autograd/decode_ops.h"
#include "kernels/sampling.h"

namespace ssmtrain {
namespace {

TEST(DecodeSampling, RowsEqualTheKernelReferenceAndTheCounterAdvances) {
  const int64_t rows = 3, vocab = 5;
  const std::vector<float> values{0.1f, 2.0f, 2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 1.0f, 1.0f, 2.9f,
                                  -4.0f, -4.0f, -3.5f, -9.0f, -3.5f};
  const Tensor logits = Tensor::from_vector(values, {rows, vocab});
  const Tensor draw = Tensor::zeros({1}, DType::i64), out = Tensor::empty({rows}, DType::i64);
  sample_tokens(logits, kernels::SamplingParams{}, 0, draw, out);
  EXPECT_EQ(out.values<int64_t>(), (std::vector<int64_t>{1, 0, 2}));  // greedy: first of equal maxima
  EXPECT_EQ(draw.values<int64_t>(), (std::vector<int64_t>{1}));
  const kernels::SamplingParams p{1.0, 3, 0.9, 42};
  for (int64_t d = 1; d < 6; ++d) {
    sample_tokens(logits, p, 10, draw, out);
    std::vector<int64_t> ref(static_cast<size_t>(rows));
    kernels::cpu::sample_tokens<float>(values.data(), rows, vocab, p, 10, d, ref.data());
    EXPECT_EQ(out.values<int64_t>(), ref) << "draw " << d;
    EXPECT_EQ(draw.values<int64_t>(), (std::vector<int64_t>{d + 1}));
  }
}

TEST(DecodeSampling, BadTensorsAreNamed) {
  auto message = [](const Tensor& logits, const Tensor& draw, const Tensor& out) {
    try {
      sample_tokens(logits, kernels::SamplingParams{}, 0, draw, out);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const Tensor logits = Tensor::zeros({2, 4}), draw = Tensor::zeros({1}, DType::i64), out = Tensor::empty({2}, DType::i64);
  EXPECT_NE(message(Tensor::zeros({8}), draw, out).find("logits must be (b, vocab)"), std::string::npos);
  EXPECT_NE(message(logits, draw, Tensor::empty({3}, DType::i64)).find("out must be [2]"), std::string::npos);
  EXPECT_NE(message(logits, Tensor::zeros({1}), out).find("must be i64"), std::string::npos);
}

}  // namespace
}  // namespace ssmtrain
