// The CUDA selective scan against the CPU reference: forward, final state and every
// gradient, over sequence lengths that are and are not multiples of the chunk, state sizes
// 1..64, groups, every optional input, document boundaries, f32 and bf16; bitwise repeats;
// and the decode step token by token against the parallel scan.
#include <algorithm>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "autograd/selective_scan_ops.h"
#include "autograd/stream.h"
#include "kernels/selective_scan.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

const Device kGpu = Device::cuda(0);

struct Case {
  int64_t b, d, l, n, g;
  bool optional;  // D, z, delta_bias, initial state
  bool docs;
  DType dtype;
  std::string str() const {
    return "b" + std::to_string(b) + " d" + std::to_string(d) + " l" + std::to_string(l) + " n" +
           std::to_string(n) + " g" + std::to_string(g) + (optional ? " +opt" : "") + (docs ? " +docs" : "") +
           " " + dtype_name(dtype);
  }
};

Tensor randf(const Shape& shape, Generator& gen, float std = 1.0f, float mean = 0.0f) {
  return Tensor::randn(shape, gen, DType::f32, Device::cpu(), mean, std);
}

// Activation-like inputs are rounded to the case's dtype so both sides see the same values.
Tensor rounded(const Tensor& t, DType dtype) {
  return Tensor::from_vector(testing::round_to(dtype, t.to_vector()), t.shape());
}

struct Inputs {
  std::vector<Tensor> tensors;  // u, delta, A, B, C, D, z, delta_bias, initial_state
  Tensor doc;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Generator gen(seed);
  Inputs in;
  in.tensors = {rounded(randf({c.b, c.d, c.l}, gen), c.dtype),
                rounded(randf({c.b, c.d, c.l}, gen, 0.5f, -1.0f), c.dtype),
                // A < 0 as in Mamba (A = -exp(A_log)): decaying, never exploding states.
                Tensor::rand({c.d, c.n}, gen, DType::f32, Device::cpu(), -2.0f, -0.05f),
                rounded(randf({c.b, c.g, c.n, c.l}, gen), c.dtype),
                rounded(randf({c.b, c.g, c.n, c.l}, gen), c.dtype)};
  if (c.optional) {
    in.tensors.push_back(randf({c.d}, gen));
    in.tensors.push_back(rounded(randf({c.b, c.d, c.l}, gen), c.dtype));
    in.tensors.push_back(randf({c.d}, gen, 0.1f));
    in.tensors.push_back(randf({c.b, c.d, c.n}, gen));
  } else {
    in.tensors.resize(9);
  }
  if (c.docs) {
    std::vector<int64_t> doc;
    for (int64_t b = 0; b < c.b; ++b)
      for (int64_t t = 0; t < c.l; ++t) doc.push_back(b * 1000 + (t * 7) / (c.l / 3 + 5));
    in.doc = Tensor::from_vector(doc, {c.b, c.l}, DType::i32);
  }
  return in;
}

struct Result {
  std::vector<std::vector<float>> values;  // out, final state, then the gradients
};

// Runs forward and backward on `device`; activations in `dtype` there, parameters f32.
Result run(const Case& c, const Inputs& in, Device device, DType dtype) {
  std::vector<Tensor> leaves;
  for (size_t i = 0; i < in.tensors.size(); ++i) {
    const Tensor& t = in.tensors[i];
    if (!t.defined()) {
      leaves.emplace_back();
      continue;
    }
    const bool activation = i == 0 || i == 1 || i == 3 || i == 4 || i == 6;
    Tensor leaf = t.to(device).to(activation ? dtype : DType::f32).detach();
    leaf.set_requires_grad();
    leaves.push_back(leaf);
  }
  SelectiveScanInputs si{leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], leaves[6],
                         leaves[7], leaves[8], in.doc.defined() ? in.doc.to(device) : Tensor(), true};
  SelectiveScanOutputs out = selective_scan(si, true);
  Generator gen(4242);
  Tensor dout = rounded(randf(out.out.shape(), gen), c.dtype).to(device).to(out.out.dtype());
  Tensor dfinal = randf(out.final_state.shape(), gen).to(device);
  run_backward({out.out, out.final_state}, {dout, dfinal});
  Result r;
  r.values.push_back(out.out.to_vector());
  r.values.push_back(out.final_state.to_vector());
  for (const Tensor& leaf : leaves)
    if (leaf.defined()) r.values.push_back(leaf.grad().to_vector());
  return r;
}

const char* kNames[] = {"out", "final_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinitial"};

kernels::ScanShape shape_of(const Case& c) { return {c.b, c.d, c.l, c.n, c.g, true}; }

// Documents that start at the given tokens of every sequence (and at 0).
Tensor docs_starting_at(const Case& c, std::vector<int64_t> starts) {
  std::sort(starts.begin(), starts.end());
  std::vector<int64_t> doc;
  for (int64_t b = 0; b < c.b; ++b)
    for (int64_t t = 0; t < c.l; ++t)
      doc.push_back(b * 1000 + (std::upper_bound(starts.begin(), starts.end(), t) - starts.begin()));
  return Tensor::from_vector(doc, {c.b, c.l}, DType::i32);
}

void check_case(const Case& c, const Tensor& doc = {}) {
  SCOPED_TRACE(c.str());
  Inputs in = make_inputs(c, 17 + c.l + 31 * c.n);
  if (doc.defined()) in.doc = doc;
  const Result ref = run(c, in, Device::cpu(), DType::f32);
  const Result got = run(c, in, kGpu, c.dtype);
  ASSERT_EQ(ref.values.size(), got.values.size());
  // Scans carry error along the sequence and dA, dD, ddelta_bias sum over b * l.
  const int64_t reduction = c.b * c.l * c.n;
  for (size_t i = 0; i < ref.values.size(); ++i)
    EXPECT_TRUE(testing::close(got.values[i], ref.values[i], c.dtype, reduction)) << kNames[i];
}

class SelectiveScanGpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { SSM_REQUIRE_GPU(); }
};

TEST_P(SelectiveScanGpu, MatchesCpuAcrossLengthsAndStateSizes) {
  for (int64_t l : {1, 7, 128, 2049, 8192})
    for (int64_t n : {1, 4, 16, 64}) check_case({2, 8, l, n, 1, l % 2 == 1, false, GetParam()});
}

TEST_P(SelectiveScanGpu, OptionalInputsGroupsAndDocuments) {
  for (bool optional : {false, true})
    for (bool docs : {false, true})
      for (int64_t g : {1, 4}) check_case({2, 32, 777, 16, g, optional, docs, GetParam()});
  check_case({1, 48, 1500, 64, 3, true, true, GetParam()});  // 16 channels per group, K = 1
  check_case({3, 6, 300, 32, 2, true, true, GetParam()});    // 3 channels per group, K = 2
  // Enough channels (b * d / 8 >= 8 warps per multiprocessor) for the one-pass forward.
  check_case({4, 2176, 300, 16, 2, true, true, GetParam()});
  // The same with rows on 16-byte boundaries (vector loads), the last tile partly past l.
  check_case({4, 2176, 328, 16, 1, true, true, GetParam()});
}

// Few channels and long sequences (b * d / 8 warps short of filling the GPU): forward and
// backward over segments run in parallel. Documents start inside segments, exactly at
// segment starts, one token after them and at the last token; the initial state and every
// optional input are on in most cases.
TEST_P(SelectiveScanGpu, SegmentedPathMatchesCpu) {
  struct Long {
    Case c;
    bool boundary_docs;
  };
  const DType dt = GetParam();
  for (const Long& x : {Long{{1, 64, 4096, 16, 1, true, false, dt}, true},
                        Long{{2, 32, 8192, 16, 1, false, false, dt}, true},
                        Long{{1, 64, 5000, 16, 2, true, true, dt}, false},   // last tile partly past l
                        Long{{1, 1536, 8192, 16, 1, true, false, dt}, true},  // longer segments
                        Long{{1, 64, 32768, 16, 1, true, false, dt}, true}}) {
    const kernels::cuda::ScanPlan plan = kernels::cuda::selective_scan_plan(shape_of(x.c));
    ASSERT_EQ(plan.path, kernels::cuda::ScanPath::sequential_segmented) << x.c.str();
    ASSERT_GT(plan.segments, 2) << x.c.str();
    ASSERT_EQ(plan.segment_len % plan.chunk_len, 0) << x.c.str();
    Tensor doc;
    if (x.boundary_docs) {
      const int64_t L = plan.segment_len;
      doc = docs_starting_at(x.c, {L / 2 + 3, L, 2 * L + 1, 3 * L - 5, x.c.l - 1});
    }
    check_case(x.c, doc);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SelectiveScanGpu, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(SelectiveScanGpuMisc, RepeatedRunsAreBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  // The block-scan path (channels not in groups of 32), the segmented path (few channels)
  // and the one-pass path (b * d / 8 warps fill the GPU).
  for (const Case& c : {Case{4, 48, 3000, 16, 1, true, true, DType::bf16},
                        Case{1, 64, 9000, 16, 1, true, true, DType::bf16},
                        Case{4, 2176, 700, 16, 1, true, true, DType::bf16}}) {
    const Inputs in = make_inputs(c, 5);
    const Result first = run(c, in, kGpu, c.dtype);
    const Result second = run(c, in, kGpu, c.dtype);
    for (size_t i = 0; i < first.values.size(); ++i)
      EXPECT_EQ(first.values[i], second.values[i]) << c.str() << " " << kNames[i];
  }
}

TEST(SelectiveScanGpuMisc, PlanSegmentsOnlyWhatDoesNotFillTheGpu) {
  SSM_REQUIRE_GPU();
  using kernels::cuda::ScanPath;
  using kernels::cuda::selective_scan_plan;
  int sms = 0;
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  // Enough channels for one pass: b * d / 8 >= 8 warps per multiprocessor.
  const int64_t many = 8 * sms * 8;  // d at b = 1
  const auto one = selective_scan_plan({1, many, 4096, 16, 1, true});
  EXPECT_EQ(one.path, ScanPath::sequential);
  EXPECT_EQ(one.segments, 1);
  EXPECT_EQ(one.chunk_len, 32);
  // Half of that: segments until the warps of all segments reach 32 per multiprocessor.
  for (int64_t l : {8192, 32768}) {
    const auto seg = selective_scan_plan({1, many / 2, l, 16, 1, true});
    EXPECT_EQ(seg.path, ScanPath::sequential_segmented) << l;
    EXPECT_GE(seg.segments * (many / 2 / 8), 32 * sms) << l;
    EXPECT_EQ(seg.segment_len % 32, 0);
    EXPECT_GE(seg.segment_len * seg.segments, l);
    EXPECT_LT(seg.segment_len * (seg.segments - 1), l);
  }
  // Short sequences stay one pass; other state sizes and groups not of 32 channels use the
  // block scan.
  EXPECT_EQ(selective_scan_plan({1, 64, 100, 16, 1, true}).path, ScanPath::sequential);
  EXPECT_EQ(selective_scan_plan({1, 64, 8192, 32, 1, true}).path, ScanPath::block_scan);
  EXPECT_EQ(selective_scan_plan({1, 64, 8192, 16, 4, true}).path, ScanPath::block_scan);
}

TEST(SelectiveScanGpuMisc, StepTokenByTokenEqualsParallelScan) {
  SSM_REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Case c{2, 16, 40, 16, 2, true, false, dtype};
    const Inputs in = make_inputs(c, 9);
    std::vector<Tensor> t;
    for (const Tensor& x : in.tensors) t.push_back(x.to(kGpu));
    for (int i : {0, 1, 3, 4, 6}) t[i] = t[i].to(dtype);
    SelectiveScanOutputs full;
    {
      NoGradGuard no_grad;
      full = selective_scan({t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], {}, true}, true);
    }
    Tensor state = t[8].clone();  // (b, d, n) f32
    kernels::ScanShape shape{c.b, c.d, 1, c.n, c.g, true};
    std::vector<float> stepped(c.b * c.d * c.l);
    for (int64_t tok = 0; tok < c.l; ++tok) {
      auto at = [&](const Tensor& x) { return narrow(x, -1, tok, 1).contiguous(); };
      Tensor u = at(t[0]), delta = at(t[1]), B = at(t[3]), C = at(t[4]), z = at(t[6]);
      Tensor out = Tensor::empty({c.b, c.d}, dtype, kGpu);
      kernels::ScanArgs<void, float> a{u.data(), delta.data(), t[2].data_ptr<float>(), B.data(), C.data(),
                                       t[5].data_ptr<float>(), z.data(), t[7].data_ptr<float>(), nullptr, nullptr};
      kernels::cuda::selective_scan_step(shape, dtype, a, state.data_ptr<float>(), out.data(), current_stream(0));
      const std::vector<float> o = out.to_vector();
      for (int64_t i = 0; i < c.b * c.d; ++i) stepped[i * c.l + tok] = o[i];
    }
    EXPECT_TRUE(testing::close(stepped, full.out.to_vector(), dtype, c.l * c.n)) << dtype_name(dtype);
    EXPECT_TRUE(testing::close(state.to_vector(), full.final_state.to_vector(), DType::f32, c.l * c.n));
  }
}

}  // namespace
}  // namespace ssmtrain
