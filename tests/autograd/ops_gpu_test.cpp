// Every differentiable op on the GPU against the same op on the CPU (the fp32 references),
// forward and backward, in f32 and bf16; plus bitwise repeatability and RNG equality.
#include <gtest/gtest.h>

#include <functional>

#include "autograd/allocator.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "tests/support/compare.h"

namespace ssmtrain {
namespace {

using V = std::vector<Tensor>;
using testing::close;

const Device kGpu = Device::cuda(0);

Tensor randf(const Shape& shape, uint64_t seed, float std = 1.0f, float mean = 0.0f) {
  Generator g(seed);
  return Tensor::randn(shape, g, DType::f32, Device::cpu(), mean, std);
}

Tensor ids(const std::vector<int64_t>& v, DType dtype = DType::i64) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, dtype);
}

// Runs fn on CPU (f32 on dtype-rounded inputs) and GPU (dtype), backpropagates the same
// upstream gradient, and compares outputs and every float input's gradient.
void check_op(const std::string& name, const std::function<Tensor(const V&)>& fn, const V& inputs,
              DType dtype, int64_t reduction_len) {
  SCOPED_TRACE(name + " " + dtype_name(dtype));
  V cpu_in, gpu_in;
  for (const Tensor& x : inputs) {
    if (!dtype_is_float(x.dtype())) {
      cpu_in.push_back(x);
      gpu_in.push_back(x.to(kGpu));
      continue;
    }
    const std::vector<float> vals = testing::round_to(dtype, x.to_vector());
    Tensor c = Tensor::from_vector(vals, x.shape());
    Tensor g = Tensor::from_vector(vals, x.shape(), dtype, kGpu);
    c.set_requires_grad();
    g.set_requires_grad();
    cpu_in.push_back(c);
    gpu_in.push_back(g);
  }
  Tensor out_cpu = fn(cpu_in);
  Tensor out_gpu = fn(gpu_in);
  ASSERT_TRUE(out_gpu.is_cuda());
  ASSERT_EQ(out_cpu.shape(), out_gpu.shape());
  EXPECT_TRUE(close(out_gpu.to_vector(), out_cpu.to_vector(), dtype, reduction_len)) << "forward";

  const std::vector<float> w = testing::round_to(dtype, randf(out_cpu.shape(), 999).to_vector());
  out_cpu.backward(Tensor::from_vector(w, out_cpu.shape()));
  out_gpu.backward(Tensor::from_vector(w, out_gpu.shape(), out_gpu.dtype(), kGpu));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!dtype_is_float(inputs[i].dtype())) continue;
    ASSERT_TRUE(gpu_in[i].grad().defined()) << "input " << i;
    EXPECT_EQ(gpu_in[i].grad().dtype(), dtype);
    EXPECT_TRUE(close(gpu_in[i].grad().to_vector(), cpu_in[i].grad().to_vector(), dtype, reduction_len))
        << "gradient of input " << i;
  }
}

class OpsGpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override { SSM_REQUIRE_GPU(); }
};

TEST_P(OpsGpu, Matmul) {
  const DType dt = GetParam();
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const Tensor a = randf(ta ? Shape{67, 33} : Shape{33, 67}, 1);
      const Tensor b = randf(tb ? Shape{45, 67} : Shape{67, 45}, 2);
      check_op("matmul", [=](const V& x) { return matmul(x[0], x[1], ta, tb); }, {a, b}, dt, 67);
    }
  check_op("bmm", [](const V& x) { return matmul(x[0], x[1], false, true); },
           {randf({3, 17, 64}, 3), randf({3, 9, 64}, 4)}, dt, 64);
  // One operand shared by the batch (batch stride 0 in cuBLASLt; its gradient summed over the
  // batch in f32): the channel-major GEMMs of the Mamba-1 mixer.
  check_op("shared W @ x", [](const V& x) { return matmul(x[0], x[1]); },
           {randf({40, 72}, 8), randf({3, 72, 50}, 9)}, dt, 72 * 3);
  check_op("shared W @ x^T", [](const V& x) { return matmul(x[0], x[1], false, true); },
           {randf({40, 72}, 10), randf({3, 50, 72}, 11)}, dt, 72 * 3);
  check_op("y^T @ shared W^T", [](const V& x) { return matmul(x[0], x[1], true, true); },
           {randf({3, 72, 50}, 12), randf({40, 72}, 13)}, dt, 72 * 3);
  check_op("linear", [](const V& x) { return linear(x[0], x[1], x[2]); },
           {randf({2, 129, 96}, 5), randf({80, 96}, 6), randf({80}, 7)}, dt, 258);
}

TEST_P(OpsGpu, BinaryBroadcast) {
  const DType dt = GetParam();
  const Tensor a = randf({4, 1, 130}, 8), b = randf({7, 130}, 9);
  const Tensor b_pos = add(mul(randf({7, 130}, 10), 0.2), 2.0);
  check_op("add", [](const V& x) { return add(x[0], x[1]); }, {a, b}, dt, 4);
  check_op("sub", [](const V& x) { return sub(x[0], x[1]); }, {a, b}, dt, 4);
  check_op("mul", [](const V& x) { return mul(x[0], x[1]); }, {a, b}, dt, 7);
  check_op("div", [](const V& x) { return div(x[0], x[1]); }, {a, b_pos}, dt, 7);
  check_op("mul same", [](const V& x) { return mul(x[0], x[1]); }, {randf({1001}, 11), randf({1001}, 12)}, dt, 1);
}

TEST_P(OpsGpu, ScalarAndUnary) {
  const DType dt = GetParam();
  const Tensor x = randf({3, 1000}, 13, 2.0f);
  const Tensor pos = add(mul(randf({3, 1000}, 14), 0.2), 1.5);
  check_op("affine", [](const V& v) { return affine(v[0], 0.5, -1.0); }, {x}, dt, 1);
  check_op("pow", [](const V& v) { return pow(v[0], 1.5); }, {pos}, dt, 1);
  check_op("neg", [](const V& v) { return neg(v[0]); }, {x}, dt, 1);
  check_op("exp", [](const V& v) { return exp(v[0]); }, {x}, dt, 1);
  check_op("log", [](const V& v) { return log(v[0]); }, {pos}, dt, 1);
  check_op("sqrt", [](const V& v) { return sqrt(v[0]); }, {pos}, dt, 1);
  check_op("square", [](const V& v) { return square(v[0]); }, {x}, dt, 1);
  check_op("sigmoid", [](const V& v) { return sigmoid(v[0]); }, {x}, dt, 1);
  check_op("silu", [](const V& v) { return silu(v[0]); }, {x}, dt, 1);
  check_op("gelu", [](const V& v) { return gelu(v[0]); }, {x}, dt, 1);
  check_op("softplus", [](const V& v) { return softplus(v[0]); }, {x}, dt, 1);
}

TEST_P(OpsGpu, Reductions) {
  const DType dt = GetParam();
  const Tensor x = randf({6, 257, 5}, 15);
  for (int64_t dim : {0, 1, 2}) {
    check_op("sum", [=](const V& v) { return sum(v[0], dim); }, {x}, dt, x.size(dim));
    check_op("mean", [=](const V& v) { return mean(v[0], dim, true); }, {x}, dt, x.size(dim));
    check_op("softmax", [=](const V& v) { return softmax(v[0], dim); }, {x}, dt, x.size(dim));
    check_op("log_softmax", [=](const V& v) { return log_softmax(v[0], dim); }, {x}, dt, x.size(dim));
  }
  check_op("sum all", [](const V& v) { return sum(v[0]); }, {x}, dt, x.numel());
  check_op("softmax wide", [](const V& v) { return softmax(v[0], -1); }, {randf({3, 5000}, 16)}, dt, 5000);
}

TEST_P(OpsGpu, RmsNormEmbeddingCrossEntropy) {
  const DType dt = GetParam();
  check_op("rmsnorm", [](const V& v) { return rmsnorm(v[0], v[1], 1e-5); },
           {randf({3, 67, 768}, 17), randf({768}, 18, 0.1f, 1.0f)}, dt, 768 * 3);
  check_op("rmsnorm odd", [](const V& v) { return rmsnorm(v[0], v[1], 1e-5); },
           {randf({1, 7}, 19), randf({7}, 20)}, dt, 7);
  std::vector<int64_t> many;
  for (int i = 0; i < 3000; ++i) many.push_back((i * 7919) % 37 == 0 ? 5 : (i * 31) % 101);
  for (DType index : {DType::i32, DType::i64})
    check_op("embedding", [](const V& v) { return embedding(v[0], v[1]); },
             {ids(many, index), randf({101, 96}, 21)}, dt, 3000);
  std::vector<int64_t> targets;
  for (int i = 0; i < 300; ++i) targets.push_back(i % 13 == 0 ? -100 : (i * 104729) % 32000);
  check_op("cross_entropy", [](const V& v) { return cross_entropy(v[0], v[1]); },
           {randf({300, 32000}, 22, 2.0f), ids(targets)}, dt, 32000);
  check_op("cross_entropy small", [](const V& v) { return cross_entropy(v[0], v[1], 2); },
           {randf({5, 3}, 23), ids({0, 2, 1, 2, 0}, DType::i32)}, dt, 3);
}

TEST_P(OpsGpu, ShapeOps) {
  const DType dt = GetParam();
  const Tensor x = randf({3, 65, 9}, 24);
  check_op("transpose", [](const V& v) { return transpose(v[0], 0, 2); }, {x}, dt, 1);
  check_op("narrow", [](const V& v) { return mul(narrow(v[0], 1, 3, 60), 2.0); }, {x}, dt, 1);
  check_op("reshape", [](const V& v) { return reshape(narrow(v[0], 2, 1, 7), {-1}); }, {x}, dt, 1);
  check_op("concat", [](const V& v) { return concat({v[0], v[1], v[0]}, 1); }, {x, randf({3, 2, 9}, 25)}, dt, 2);
  check_op("split", [](const V& v) {
    V parts = split(v[0], {2, 5, 2}, 2);
    return mul(parts[1], sum(parts[0], 2, true));
  }, {x}, dt, 2);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OpsGpu, ::testing::Values(DType::f32, DType::bf16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(OpsGpuMisc, CastAndDeviceMovesRoundTrip) {
  SSM_REQUIRE_GPU();
  Tensor x = randf({1001}, 26);
  x.set_requires_grad();
  Tensor y = x.to(kGpu).to(DType::bf16).to(DType::f32).to(Device::cpu());
  EXPECT_EQ(y.to_vector(), testing::round_to(DType::bf16, x.to_vector()));
  sum(mul(y, 3.0)).backward();
  for (float g : x.grad().to_vector()) EXPECT_EQ(g, 3.0f);
  // i64 <-> i32 and f16 casts on the device.
  Tensor i = ids({-3, 0, 70000}).to(kGpu);
  EXPECT_EQ(i.to(DType::i32).to(DType::i64).values<int64_t>(), (std::vector<int64_t>{-3, 0, 70000}));
  Tensor h = x.detach().to(kGpu).to(DType::f16);
  EXPECT_EQ(h.to_vector(), testing::round_to(DType::f16, x.to_vector()));
}

TEST(OpsGpuMisc, RandomDrawsAreBitIdenticalToCpu) {
  SSM_REQUIRE_GPU();
  for (int64_t n : {1, 7, 4099, 1 << 20}) {
    Generator c(123, 5), g(123, 5);
    EXPECT_EQ(Tensor::randn({n}, c).to_vector(), Tensor::randn({n}, g, DType::f32, kGpu).to_vector()) << n;
    EXPECT_EQ(Tensor::rand({n}, c, DType::f32, Device::cpu(), -2, 2).to_vector(),
              Tensor::rand({n}, g, DType::f32, kGpu, -2, 2).to_vector()) << n;
    EXPECT_EQ(Tensor::randn({n}, c, DType::bf16).to_vector(),
              Tensor::randn({n}, g, DType::bf16, kGpu).to_vector()) << n;
  }
}

TEST(OpsGpuMisc, TrainingStepGradientsAreBitwiseRepeatable) {
  SSM_REQUIRE_GPU();
  auto run = [] {
    Generator gen(77);
    Tensor table = Tensor::randn({500, 128}, gen, DType::bf16, kGpu);
    Tensor w = Tensor::randn({128, 128}, gen, DType::bf16, kGpu, 0.0f, 0.1f);
    Tensor norm_w = Tensor::ones({128}, DType::bf16, kGpu);
    for (Tensor* p : {&table, &w, &norm_w}) p->set_requires_grad();
    std::vector<int64_t> tok;
    for (int i = 0; i < 2048; ++i) tok.push_back((i * 37 + i / 3) % 500);
    Tensor x = embedding(ids(tok).to(kGpu), table);                 // (2048, 128)
    Tensor h = rmsnorm(add(x, silu(linear(x, w))), norm_w);         // (2048, 128)
    Tensor logits = matmul(h, table, false, true);                  // (2048, 500)
    std::vector<int64_t> next(tok.begin() + 1, tok.end());
    next.push_back(-100);
    Tensor loss = cross_entropy(logits, ids(next).to(kGpu));
    loss.backward();
    V grads{loss.detach(), table.grad(), w.grad(), norm_w.grad()};
    std::vector<std::vector<float>> out;
    for (const Tensor& g : grads) out.push_back(g.to_vector());
    return out;
  };
  const auto first = run();
  const auto second = run();
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) EXPECT_EQ(first[i], second[i]) << "tensor " << i;
}

TEST(CachingAllocator, ReusesBlocksAndReportsStats) {
  SSM_REQUIRE_GPU();
  reset_peak_memory(0);
  const MemoryStats before = cuda_memory_stats(0);
  {
    Tensor a = Tensor::empty({1 << 20}, DType::f32, kGpu);  // 4 MiB
    const MemoryStats during = cuda_memory_stats(0);
    EXPECT_EQ(during.allocated - before.allocated, 4 << 20);
    EXPECT_GE(during.reserved, during.allocated);
  }
  const MemoryStats after_free = cuda_memory_stats(0);
  EXPECT_EQ(after_free.allocated, before.allocated);
  EXPECT_EQ(after_free.peak_allocated - before.allocated, 4 << 20);
  for (int i = 0; i < 10; ++i) Tensor b = Tensor::empty({1 << 20}, DType::f32, kGpu);
  EXPECT_EQ(cuda_memory_stats(0).num_device_mallocs, after_free.num_device_mallocs) << "cache missed";
  empty_cuda_cache();
  EXPECT_EQ(cuda_memory_stats(0).reserved, cuda_memory_stats(0).allocated);
}

}  // namespace
}  // namespace ssmtrain
