// The CUDA causal conv1d against the CPU reference: output, final state and every gradient,
// over lengths on and off the vector grain (1, 7, 128, 2049; multi-tile 1040 and 3072),
// odd and even channel counts, widths 2..4, every combination of bias, SiLU, document index
// and initial state, f32 and bf16; bitwise repeats; the decode step token by token. The
// channel-last layout the same way, x a column slice of a wider (b, l, .) tensor whose other
// columns are NaN (dense, a 16-byte aligned slice, an odd slice), both sides channel-last (the
// CPU channel-last reference equals the channel-major one bit for bit: causal_conv1d_test).
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "autograd/causal_conv1d_ops.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "autograd/stream.h"
#include "kernels/causal_conv1d.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

const Device kGpu = Device::cuda(0);

struct Case {
  int64_t b, d, l, w;
  bool bias, silu, docs, init;
  DType dtype;
  int64_t cl_offset = -1;  // channel-last: x is columns cl_offset .. + d of a (b, l, cl_stride) tensor
  int64_t cl_stride = 0;
  std::string str() const {
    return "b" + std::to_string(b) + " d" + std::to_string(d) + " l" + std::to_string(l) + " w" + std::to_string(w) +
           (bias ? " +bias" : "") + (silu ? " +silu" : "") + (docs ? " +docs" : "") + (init ? " +init" : "") + " " +
           dtype_name(dtype) +
           (cl_offset >= 0 ? " channel-last offset " + std::to_string(cl_offset) + " stride " + std::to_string(cl_stride)
                           : "");
  }
};

Tensor randf(const Shape& shape, Generator& gen, float std = 1.0f) {
  return Tensor::randn(shape, gen, DType::f32, Device::cpu(), 0.0f, std);
}

// Activations are rounded to the case's dtype so both sides see the same values.
Tensor rounded(const Tensor& t, DType dtype) {
  return Tensor::from_vector(testing::round_to(dtype, t.to_vector()), t.shape());
}

struct Inputs {
  Tensor x, weight, bias, init, doc;  // CPU f32 (doc i32)
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Generator gen(seed);
  Inputs in;
  in.x = rounded(randf({c.b, c.d, c.l}, gen), c.dtype);
  in.weight = randf({c.d, c.w}, gen, 0.5f);
  if (c.bias) in.bias = randf({c.d}, gen);
  if (c.init) in.init = rounded(randf({c.b, c.d, c.w - 1}, gen), c.dtype);
  if (c.docs) {
    // Documents of 1 to 40 tokens, different in each row, some starting at token 1.
    std::vector<int64_t> doc;
    for (int64_t b = 0; b < c.b; ++b) {
      int64_t id = 0, next = 1 + b;
      for (int64_t t = 0; t < c.l; ++t) {
        if (t == next) {
          ++id;
          next += 1 + (t * 13 + b * 5) % 40;
        }
        doc.push_back(1000 * b + id);
      }
    }
    in.doc = Tensor::from_vector(doc, {c.b, c.l}, DType::i32);
  }
  return in;
}

const char* kNames[] = {"out", "final_state", "dx", "dweight", "dbias", "dinitial_state"};

// Forward and backward on `device`: x and the state in `dtype` there, weight and bias f32.
std::vector<std::vector<float>> run(const Case& c, const Inputs& in, Device device, DType dtype) {
  auto leaf = [&](const Tensor& t, DType as) {
    if (!t.defined()) return Tensor();
    Tensor l = t.to(device).to(as).detach();
    l.set_requires_grad();
    return l;
  };
  Tensor x = leaf(in.x, dtype), weight = leaf(in.weight, DType::f32), bias = leaf(in.bias, DType::f32),
         init = leaf(in.init, dtype);
  Tensor x_in = x;  // what the op reads
  if (c.cl_offset >= 0) {
    Tensor wide = Tensor::from_vector(std::vector<float>(c.b * c.l * c.cl_stride, std::nanf("")), {c.b, c.l, c.cl_stride});
    {
      NoGradGuard no_grad;
      copy_into(narrow(wide, 2, c.cl_offset, c.d), transpose(in.x, 1, 2));
    }
    x = leaf(wide, dtype);
    x_in = narrow(x, 2, c.cl_offset, c.d);  // (b, l, d), read in place
  }
  CausalConv1dOutputs out = causal_conv1d(
      {x_in, weight, bias, init, in.doc.defined() ? in.doc.to(device) : Tensor(), c.silu, c.cl_offset >= 0}, true);
  Generator gen(4242);
  Tensor dout = rounded(randf(out.out.shape(), gen), c.dtype).to(device).to(dtype);
  run_backward({out.out}, {dout});
  std::vector<std::vector<float>> values{out.out.to_vector(), out.final_state.to_vector(), x.grad().to_vector(),
                                         weight.grad().to_vector()};
  if (bias.defined()) values.push_back(bias.grad().to_vector());
  if (init.defined()) values.push_back(init.grad().to_vector());
  return values;
}

void check_case(const Case& c) {
  SCOPED_TRACE(c.str());
  const Inputs in = make_inputs(c, 17 + c.l + 31 * c.w + c.d);
  const auto ref = run(c, in, Device::cpu(), DType::f32);
  const auto got = run(c, in, kGpu, c.dtype);
  ASSERT_EQ(ref.size(), got.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    const char* name = i < 4 ? kNames[i] : (c.bias && i == 4 ? "dbias" : "dinitial_state");
    // dweight and dbias sum over b * l tokens; the rest over at most w terms.
    const int64_t reduction = (i == 3 || (c.bias && i == 4)) ? c.b * c.l : c.w;
    EXPECT_TRUE(testing::close(got[i], ref[i], c.dtype, reduction)) << name;
  }
}

class CausalConv1dGpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { SSM_REQUIRE_GPU(); }
};

TEST_P(CausalConv1dGpu, MatchesCpuAcrossShapesAndOptions) {
  for (int64_t l : {1, 7, 128, 2049})
    for (int64_t d : {5, 8})
      for (int64_t w : {2, 3, 4})
        for (int options = 0; options < 16; ++options)
          check_case({2, d, l, w, (options & 1) != 0, (options & 2) != 0, (options & 4) != 0, (options & 8) != 0,
                      GetParam()});
}

TEST_P(CausalConv1dGpu, AlignedRowsOverSeveralTiles) {
  for (int64_t w : {2, 4}) {
    check_case({3, 6, 3072, w, true, true, true, true, GetParam()});
    check_case({2, 3, 1040, w, false, true, false, true, GetParam()});
  }
}

// Dense (b, l, d), a slice on a 16-byte boundary with a 16-byte row stride (the vector path
// when d allows), an odd slice (element by element).
std::vector<std::pair<int64_t, int64_t>> layouts(int64_t d) { return {{0, d}, {8, d + 24}, {1, d + 4}}; }

TEST_P(CausalConv1dGpu, ChannelLastMatchesCpuAcrossShapesAndOptions) {
  for (int64_t l : {1, 7, 130, 2049})
    for (int64_t d : {5, 24})
      for (int64_t w : {2, 3, 4})
        for (int options = 0; options < 16; ++options)
          for (auto [offset, stride] : layouts(d)) {
            if (w == 3 && options % 3 != 0) continue;  // fewer cases at width 3
            check_case({2, d, l, w, (options & 1) != 0, (options & 2) != 0, (options & 4) != 0, (options & 8) != 0,
                        GetParam(), offset, stride});
          }
}

TEST_P(CausalConv1dGpu, ChannelLastSeveralChannelBlocksAndTokenTiles) {
  // d 600: three channel blocks for bf16 (256 channels each), five for f32; l 1000: 8 token tiles.
  for (int64_t w : {2, 4})
    for (auto [offset, stride] : layouts(600)) {
      check_case({3, 600, 1000, w, true, true, true, true, GetParam(), offset, stride});
      check_case({2, 600, 333, w, false, false, false, false, GetParam(), offset, stride});
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CausalConv1dGpu, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(CausalConv1dGpuMisc, RepeatedRunsAreBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  for (DType dtype : {DType::bf16, DType::f32}) {
    const Case c{4, 64, 3000, 4, true, true, true, true, dtype};
    const Inputs in = make_inputs(c, 5);
    const auto first = run(c, in, kGpu, dtype);
    const auto second = run(c, in, kGpu, dtype);
    for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(first[i], second[i]) << i << " " << dtype_name(dtype);
    const Case cl{4, 64, 3000, 4, true, true, true, true, dtype, 8, 96};
    const auto cl_first = run(cl, in, kGpu, dtype);
    const auto cl_second = run(cl, in, kGpu, dtype);
    for (size_t i = 0; i < cl_first.size(); ++i)
      EXPECT_EQ(cl_first[i], cl_second[i]) << "channel-last " << i << " " << dtype_name(dtype);
  }
}

TEST(CausalConv1dGpuMisc, StepTokenByTokenEqualsParallelPass) {
  SSM_REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t w : {2, 3, 4}) {
      const Case c{2, 7, 19, w, true, true, false, true, dtype};
      const Inputs in = make_inputs(c, 9 + w);
      Tensor x = in.x.to(kGpu).to(dtype), weight = in.weight.to(kGpu), bias = in.bias.to(kGpu);
      Tensor state = in.init.to(kGpu).to(dtype);
      CausalConv1dOutputs full;
      {
        NoGradGuard no_grad;
        full = causal_conv1d({x, weight, bias, state, {}, true}, true);
      }
      state = state.clone();
      kernels::Conv1dShape shape{c.b, c.d, 1, w, true};
      kernels::Conv1dArgs<void, float> a{nullptr, weight.data_ptr<float>(), bias.data_ptr<float>(), nullptr, nullptr};
      std::vector<float> stepped(c.b * c.d * c.l);
      for (int64_t tok = 0; tok < c.l; ++tok) {
        Tensor xt = narrow(x, -1, tok, 1).contiguous();  // (b, d, 1) = (b, d)
        Tensor out = Tensor::empty({c.b, c.d}, dtype, kGpu);
        kernels::cuda::causal_conv1d_step(shape, dtype, a, xt.data(), state.data(), out.data(), current_stream(0));
        const std::vector<float> o = out.to_vector();
        for (int64_t i = 0; i < c.b * c.d; ++i) stepped[i * c.l + tok] = o[i];
      }
      SCOPED_TRACE(std::string(dtype_name(dtype)) + " w " + std::to_string(w));
      EXPECT_TRUE(testing::close(stepped, full.out.to_vector(), dtype, w));
      EXPECT_EQ(state.to_vector(), full.final_state.to_vector());
    }
}

}  // namespace
}  // namespace ssmtrain
