// The CUDA SSD (kernels/cuda/ssd.cu, through the autograd node) against the CPU reference in
// f64: output, final states and every gradient, for lengths that are and are not multiples of
// the chunk, each supported p, n and g, chunk sizes 64..256, initial states, document
// boundaries, D as (h) and (h, p), z, dt_bias and the dt clamp, in f32 and bf16; bitwise
// repeats; the two bf16 tensor-core backward variants (v6, the default, and v5) against each
// other; and the decoding step token by token against the parallel result.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "autograd/ssd_ops.h"
#include "autograd/stream.h"
#include "kernels/ssd.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

const Device kGpu = Device::cuda(0);

struct Case {
  int64_t b, l, h, p, n, g, chunk;
  bool optional;   // initial states, D, z, dt_bias
  bool D_headdim;  // D (h, p) rather than (h)
  bool docs;
  bool clamp;
  DType dtype;
  std::string str() const {
    return "b" + std::to_string(b) + " l" + std::to_string(l) + " h" + std::to_string(h) + " p" + std::to_string(p) +
           " n" + std::to_string(n) + " g" + std::to_string(g) + " chunk" + std::to_string(chunk) +
           (optional ? " +opt" : "") + (D_headdim ? " D(h,p)" : "") + (docs ? " +docs" : "") +
           (clamp ? " +clamp" : "") + " " + dtype_name(dtype);
  }
};

// Values rounded to the case's dtype, so both sides see the same inputs.
std::vector<float> values(int64_t count, uint64_t seed, DType dtype, float std = 1.0f, float mean = 0.0f) {
  return testing::round_to(dtype, testing::random_vector(count, seed, std, mean));
}

struct Inputs {
  std::vector<std::vector<float>> v;  // x, dt, A, B, C, D, z, dt_bias, initial_states (empty: absent)
  std::vector<Shape> shapes;
  std::vector<int64_t> doc;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  const DType act = c.dtype;
  std::vector<float> A = testing::random_vector(c.h, seed + 2, 0.5f);
  for (float& a : A) a = -std::exp(a);  // A = -exp(A_log)
  in.v = {values(c.b * c.l * c.h * c.p, seed, act), values(c.b * c.l * c.h, seed + 1, act, 0.5f, -1.0f), A,
          values(c.b * c.l * c.g * c.n, seed + 3, act), values(c.b * c.l * c.g * c.n, seed + 4, act)};
  in.shapes = {{c.b, c.l, c.h, c.p}, {c.b, c.l, c.h}, {c.h}, {c.b, c.l, c.g, c.n}, {c.b, c.l, c.g, c.n},
               c.D_headdim ? Shape{c.h, c.p} : Shape{c.h}, {c.b, c.l, c.h, c.p}, {c.h}, {c.b, c.h, c.p, c.n}};
  if (c.optional) {
    in.v.push_back(testing::random_vector(c.D_headdim ? c.h * c.p : c.h, seed + 5));
    in.v.push_back(values(c.b * c.l * c.h * c.p, seed + 6, act));
    in.v.push_back(testing::random_vector(c.h, seed + 7, 0.1f));
    in.v.push_back(testing::random_vector(c.b * c.h * c.p * c.n, seed + 8));
  } else {
    in.v.resize(9);
  }
  if (c.docs)  // batch 0: documents start on and around chunk starts; others every 37 tokens
    for (int64_t b = 0; b < c.b; ++b) {
      int64_t id = 0;
      for (int64_t t = 0; t < c.l; ++t) {
        if (b == 0) id += (t == 3 || t == 63 || t == 64 || t == 65 || t == 128 || t == c.chunk + 1);
        else id = t / 37;
        in.doc.push_back(b * 1000 + id);
      }
    }
  return in;
}

struct Result {
  std::vector<std::vector<float>> values;  // out, final states, then the gradients of the inputs given
};

// Forward and backward on `device`: on the CPU in f64, on the GPU activations in the case's
// dtype and parameters in f32.
Result run(const Case& c, const Inputs& in, Device device) {
  const bool cpu = device.is_cpu();
  std::vector<Tensor> leaves;
  for (size_t i = 0; i < in.v.size(); ++i) {
    if (in.v[i].empty()) {
      leaves.emplace_back();
      continue;
    }
    const bool activation = i == 0 || i == 1 || i == 3 || i == 4 || i == 6;
    const DType dtype = cpu ? DType::f64 : activation ? c.dtype : DType::f32;
    Tensor leaf = Tensor::from_vector(in.v[i], in.shapes[i]).to(device).to(dtype).detach();
    leaf.set_requires_grad();
    leaves.push_back(leaf);
  }
  SsdInputs si{leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6], leaves[7], leaves[8]};
  if (!in.doc.empty()) si.doc_index = Tensor::from_vector(in.doc, {c.b, c.l}, DType::i32).to(device);
  si.chunk_size = c.chunk;
  if (c.clamp) {
    si.dt_min = 0.2;
    si.dt_max = 0.45;
  }
  SsdOutputs out = ssd(si, true);
  const DType act = cpu ? DType::f64 : c.dtype;
  Tensor dout = Tensor::from_vector(values(c.b * c.l * c.h * c.p, 4242, c.dtype), out.out.shape()).to(device).to(act);
  Tensor dfinal = Tensor::from_vector(testing::random_vector(c.b * c.h * c.p * c.n, 4243), out.final_states.shape())
                      .to(device)
                      .to(cpu ? DType::f64 : DType::f32);
  run_backward({out.out, out.final_states}, {dout, dfinal});
  Result r;
  r.values.push_back(out.out.to(DType::f32).to_vector());
  r.values.push_back(out.final_states.to(DType::f32).to_vector());
  for (const Tensor& leaf : leaves)
    if (leaf.defined()) r.values.push_back(leaf.grad().to(DType::f32).to_vector());
  return r;
}

const char* kNames[] = {"out", "final_states", "dx", "ddt", "dA", "dB", "dC", "dD", "dz", "ddt_bias", "dinitial"};

void check_case(const Case& c) {
  SCOPED_TRACE(c.str());
  const Inputs in = make_inputs(c, 17 + c.l + 31 * c.n + c.p);
  const Result ref = run(c, in, Device::cpu());
  const Result got = run(c, in, kGpu);
  ASSERT_EQ(ref.values.size(), got.values.size());
  // Errors build up along the chunk's sums (chunk * n terms) and the sums over b * l of dA,
  // dD and ddt_bias.
  const int64_t reduction = std::max(c.chunk * c.n, c.b * c.l);
  for (size_t i = 0; i < ref.values.size(); ++i)
    EXPECT_TRUE(testing::close(got.values[i], ref.values[i], c.dtype, reduction)) << kNames[i];
}

class SsdGpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { SSM_REQUIRE_GPU(); }
};

TEST_P(SsdGpu, LengthsAndChunks) {
  const DType dt = GetParam();
  // A whole number of chunks, a partial last chunk, one token, and chunks that are not a
  // multiple of the 64-token tile.
  check_case({2, 128, 2, 64, 64, 1, 64, false, false, false, false, dt});
  check_case({2, 200, 2, 64, 64, 1, 64, true, false, false, false, dt});
  check_case({1, 1, 2, 64, 64, 1, 64, true, false, false, false, dt});
  check_case({2, 333, 2, 64, 32, 1, 100, true, false, true, false, dt});
  check_case({1, 600, 2, 32, 64, 2, 256, true, true, true, false, dt});
}

TEST_P(SsdGpu, HeadDimsStateSizesGroups) {
  const DType dt = GetParam();
  check_case({2, 300, 4, 32, 16, 2, 128, true, false, true, false, dt});
  check_case({1, 257, 2, 128, 32, 1, 256, true, true, false, true, dt});
  check_case({2, 130, 3, 64, 128, 3, 64, true, false, true, false, dt});
  check_case({1, 190, 4, 32, 256, 2, 128, true, false, false, true, dt});
  check_case({1, 150, 2, 128, 256, 1, 64, true, true, true, false, dt});
}

TEST_P(SsdGpu, TensorCoreShapes) {
  const DType dt = GetParam();
  // Shapes of the bf16 tensor-core kernels' backward (n 64 or 128): p 128, several heads
  // per group (split into slices whose dB and dC partials are summed), no optional inputs,
  // a chunk of 3 tiles, and the benchmark's p 64, n 128 with 4 tiles per chunk.
  check_case({2, 300, 4, 128, 128, 1, 128, true, true, true, false, dt});
  check_case({1, 520, 6, 32, 128, 2, 256, true, false, true, true, dt});
  check_case({2, 192, 4, 64, 64, 2, 64, false, false, false, false, dt});
  check_case({1, 333, 4, 128, 64, 1, 192, true, false, false, false, dt});
  check_case({2, 600, 8, 64, 128, 1, 256, true, false, true, false, dt});
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SsdGpu, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(SsdGpuMisc, RepeatedRunsAreBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  const Case c{2, 700, 4, 64, 128, 1, 256, true, false, true, false, DType::bf16};
  const Inputs in = make_inputs(c, 5);
  const Result first = run(c, in, kGpu);
  const Result second = run(c, in, kGpu);
  for (size_t i = 0; i < first.values.size(); ++i) EXPECT_EQ(first.values[i], second.values[i]) << kNames[i];
}

// Every tensor-core backward shape against the CPU: p 32, 64, 128, n 64 and 128, chunks
// 64..256 (1 to 4 tiles), ragged lengths, several head slices, groups, documents, initial
// states.
TEST(SsdGpuMisc, TensorCoreBackwardShapes) {
  SSM_REQUIRE_GPU();
  check_case({2, 700, 8, 64, 128, 1, 256, true, false, true, false, DType::bf16});
  check_case({3, 250, 12, 32, 64, 3, 100, true, true, true, false, DType::bf16});
}

TEST(SsdGpuMisc, StepTokenByTokenEqualsParallel) {
  SSM_REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Case c{2, 40, 4, 32, 16, 2, 64, true, true, false, false, dtype};
    const Inputs in = make_inputs(c, 9);
    std::vector<Tensor> t;
    for (size_t i = 0; i < in.v.size(); ++i) {
      const bool activation = i == 0 || i == 1 || i == 3 || i == 4 || i == 6;
      t.push_back(Tensor::from_vector(in.v[i], in.shapes[i]).to(kGpu).to(activation ? dtype : DType::f32));
    }
    SsdOutputs full;
    {
      NoGradGuard no_grad;
      SsdInputs si{t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]};
      si.chunk_size = 64;
      full = ssd(si, true);
    }
    Tensor states = t[8].clone();  // (b, h, p, n) f32
    kernels::SsdShape shape;
    shape.batch = c.b;
    shape.seq_len = 1;
    shape.n_heads = c.h;
    shape.head_dim = c.p;
    shape.d_state = c.n;
    shape.ngroups = c.g;
    shape.chunk_size = 64;
    shape.D_has_head_dim = c.D_headdim;
    shape.dt_softplus = true;
    std::vector<float> stepped(c.b * c.l * c.h * c.p);
    for (int64_t tok = 0; tok < c.l; ++tok) {
      auto at = [&](const Tensor& x) { return narrow(x, 1, tok, 1).contiguous(); };
      Tensor x = at(t[0]), dt = at(t[1]), B = at(t[3]), C = at(t[4]), z = at(t[6]);
      Tensor out = Tensor::empty({c.b, c.h, c.p}, dtype, kGpu);
      kernels::SsdArgs<void, float> a{x.data(), dt.data(), t[2].data_ptr<float>(), B.data(), C.data(),
                                      t[5].data_ptr<float>(), z.data(), t[7].data_ptr<float>(), nullptr, nullptr};
      kernels::cuda::ssd_step(shape, dtype, a, states.data_ptr<float>(), out.data(), current_stream(0));
      const std::vector<float> o = out.to(DType::f32).to_vector();
      const int64_t row = c.h * c.p;
      for (int64_t b = 0; b < c.b; ++b)
        for (int64_t i = 0; i < row; ++i) stepped[(b * c.l + tok) * row + i] = o[b * row + i];
    }
    EXPECT_TRUE(testing::close(stepped, full.out.to(DType::f32).to_vector(), dtype, c.l * c.n)) << dtype_name(dtype);
    EXPECT_TRUE(testing::close(states.to_vector(), full.final_states.to_vector(), DType::f32, c.l * c.n));
  }
}

TEST(SsdGpuMisc, UnsupportedShapeNamesTheLimits) {
  SSM_REQUIRE_GPU();
  kernels::SsdShape s;
  s.batch = 1;
  s.seq_len = 8;
  s.n_heads = 2;
  s.head_dim = 48;
  s.d_state = 16;
  s.chunk_size = 64;
  try {
    kernels::cuda::ssd_num_chunks(s);
    FAIL() << "expected an error";
  } catch (const kernels::KernelError& e) {
    EXPECT_NE(std::string(e.what()).find("p in {32, 64, 128}"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ssmtrain
