// GPU tests of kernels/cross_entropy.h: loss, count, lse and dlogits against the CPU reference
// in f32 and bf16 with i32 and i64 targets, some rows ignored, vocab up to 256k, on vector
// (16-byte aligned rows) and element paths; bit-for-bit repeatability of forward and backward;
// and the autograd op on bf16 logits: bf16 gradient, no f32 (n, vocab) buffer (peak memory).
#include "kernels/cross_entropy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "autograd/allocator.h"
#include "autograd/ops.h"
#include "autograd/stream.h"
#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace {

using namespace ssmtrain;
using namespace ssmtrain::kernels;
using ssmtrain::testing::close;
using ssmtrain::testing::DeviceBuffer;
using ssmtrain::testing::download;
using ssmtrain::testing::download_bytes;
using ssmtrain::testing::random_vector;
using ssmtrain::testing::round_to;
using ssmtrain::testing::upload;
using ssmtrain::testing::upload_raw;

const std::vector<DType> kDtypes = {DType::f32, DType::bf16};
constexpr int64_t kIgnore = -100;

// Targets in [0, vocab), every fifth row ignore_index (all rows when all_ignored).
std::vector<int64_t> make_targets(int64_t n, int64_t vocab, uint64_t seed, bool all_ignored = false) {
  const std::vector<float> r = random_vector(n, seed);
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = int64_t(std::fabs(r[size_t(i)]) * 7919.0f) % vocab;
    t[size_t(i)] = (all_ignored || i % 5 == 4) ? kIgnore : v;
  }
  return t;
}

struct Case {
  int64_t n, vocab;
  bool all_ignored;
};
const std::vector<Case> kCases = {{1, 7, false},      {7, 1000, false}, {128, 4099, false},
                                  {33, 50257, false}, {4, 256000, false}, {5, 128, true}};

TEST(CrossEntropyGpu, ForwardAndBackwardMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    for (DType target_dtype : {DType::i32, DType::i64}) {
      for (const Case& c : kCases) {
        const int64_t n = c.n, vocab = c.vocab, numel = n * vocab;
        const std::vector<int64_t> targets = make_targets(n, vocab, 1, c.all_ignored);
        const std::vector<int32_t> targets32(targets.begin(), targets.end());
        const void* targets_host = target_dtype == DType::i64
                                       ? static_cast<const void*>(targets.data())
                                       : static_cast<const void*>(targets32.data());
        DeviceBuffer targets_d = target_dtype == DType::i64 ? upload_raw(targets) : upload_raw(targets32);
        const std::vector<float> logits = round_to(dtype, random_vector(numel, 2, 2.0f));

        std::vector<float> lse_ref(static_cast<size_t>(n)), result_ref(2);
        cpu::cross_entropy_forward(logits.data(), target_dtype, targets_host, n, vocab, kIgnore,
                                   lse_ref.data(), result_ref.data());
        DeviceBuffer logits_d = upload(logits, dtype), lse_d(static_cast<size_t>(n) * 4), result_d(8);
        cuda::cross_entropy_forward(dtype, logits_d.get(), target_dtype, targets_d.get(), n, vocab,
                                    kIgnore, lse_d.as<float>(), result_d.as<float>(), nullptr);
        const std::vector<float> result = download(result_d.get(), DType::f32, 2);
        const std::string where = std::string(dtype_name(dtype)) + " n " + std::to_string(n) +
                                  " vocab " + std::to_string(vocab);
        EXPECT_EQ(result[1], result_ref[1]) << "count, " << where;
        // lse and the loss come from the same rounded logits, accumulated in f32 on the GPU.
        EXPECT_TRUE(close(download(lse_d.get(), DType::f32, n), lse_ref, DType::f32, vocab)) << where;
        EXPECT_TRUE(close({result[0]}, {result_ref[0]}, DType::f32, vocab * n)) << "loss, " << where;

        const std::vector<float> dloss = {1.5f};
        std::vector<float> dlogits_ref(static_cast<size_t>(numel));
        cpu::cross_entropy_backward(logits.data(), target_dtype, targets_host, n, vocab, kIgnore,
                                    lse_ref.data(), dloss.data(), result_ref.data(),
                                    dlogits_ref.data());
        DeviceBuffer dloss_d = upload(dloss, DType::f32), lse_ref_d = upload(lse_ref, DType::f32);
        DeviceBuffer result_ref_d = upload(result_ref, DType::f32), dlogits_d(static_cast<size_t>(numel) * 4);
        cuda::cross_entropy_backward(dtype, logits_d.get(), target_dtype, targets_d.get(), n, vocab,
                                     kIgnore, lse_ref_d.as<float>(), dloss_d.as<float>(),
                                     result_ref_d.as<float>(), dlogits_d.get(), nullptr);
        EXPECT_TRUE(close(download(dlogits_d.get(), dtype, numel), dlogits_ref, dtype, 1))
            << "dlogits, " << where;
      }
    }
  }
}

// Logits starting one element off a 16-byte boundary with an aligned vocab: the element path.
TEST(CrossEntropyGpu, MisalignedLogitsMatchCpu) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    const int64_t n = 9, vocab = 32000, numel = n * vocab;
    const size_t elem = size_t(dtype_size(dtype));
    const std::vector<int64_t> targets = make_targets(n, vocab, 5);
    DeviceBuffer targets_d = upload_raw(targets);
    const std::vector<float> logits = round_to(dtype, random_vector(numel, 6, 2.0f));
    std::vector<float> padded(1, 0.0f);
    padded.insert(padded.end(), logits.begin(), logits.end());
    DeviceBuffer logits_d = upload(padded, dtype), lse_d(n * 4), result_d(8), dlogits_d((numel + 1) * elem);
    const void* logits_at = static_cast<char*>(logits_d.get()) + elem;
    void* dlogits_at = static_cast<char*>(dlogits_d.get()) + elem;
    std::vector<float> lse_ref(static_cast<size_t>(n)), result_ref(2), dlogits_ref(static_cast<size_t>(numel));
    const std::vector<float> dloss = {1.0f};
    cpu::cross_entropy_forward(logits.data(), DType::i64, targets.data(), n, vocab, kIgnore, lse_ref.data(),
                               result_ref.data());
    cpu::cross_entropy_backward(logits.data(), DType::i64, targets.data(), n, vocab, kIgnore, lse_ref.data(),
                                dloss.data(), result_ref.data(), dlogits_ref.data());
    DeviceBuffer dloss_d = upload(dloss, DType::f32);
    cuda::cross_entropy_forward(dtype, logits_at, DType::i64, targets_d.get(), n, vocab, kIgnore, lse_d.as<float>(),
                                result_d.as<float>(), nullptr);
    cuda::cross_entropy_backward(dtype, logits_at, DType::i64, targets_d.get(), n, vocab, kIgnore, lse_d.as<float>(),
                                 dloss_d.as<float>(), result_d.as<float>(), dlogits_at, nullptr);
    EXPECT_TRUE(close(download(lse_d.get(), DType::f32, n), lse_ref, DType::f32, vocab)) << dtype_name(dtype);
    EXPECT_TRUE(close(download(dlogits_at, dtype, numel), dlogits_ref, dtype, 1)) << dtype_name(dtype);
  }
}

// The op on bf16 logits (n, vocab): f32 loss, a bf16 gradient, both matching the CPU op on the
// same values in f32; and forward + backward allocate no more than the gradient twice over
// (the node's dlogits and the leaf's .grad copy of it, 4 bytes per logit): an f32 (n, vocab)
// buffer anywhere would add 4 more.
TEST(CrossEntropyGpu, OpOnBf16LogitsKeepsBf16AndNoF32Copy) {
  SSM_REQUIRE_GPU();
  const int64_t n = 1024, vocab = 32000;
  const std::vector<float> values = round_to(DType::bf16, random_vector(n * vocab, 7, 2.0f));
  const std::vector<int64_t> targets = make_targets(n, vocab, 8);
  Tensor logits_cpu = Tensor::from_vector(values, {n, vocab});
  logits_cpu.set_requires_grad();
  Tensor targets_cpu = Tensor::from_vector(targets, {n}, DType::i64);
  Tensor loss_cpu = cross_entropy(logits_cpu, targets_cpu, kIgnore);
  loss_cpu.backward();

  Tensor logits = cast(to_device(Tensor::from_vector(values, {n, vocab}), Device::cuda(0)), DType::bf16);
  logits.set_requires_grad();
  const Tensor targets_gpu = to_device(targets_cpu, Device::cuda(0));
  synchronize(0);
  const int64_t before = cuda_memory_stats(0).allocated;
  reset_peak_memory(0);
  Tensor loss = cross_entropy(logits, targets_gpu, kIgnore);
  loss.backward();
  synchronize(0);
  const int64_t extra = cuda_memory_stats(0).peak_allocated - before;
  const int64_t grad_bytes = n * vocab * 2;
  EXPECT_LE(extra, 2 * grad_bytes + grad_bytes / 4) << "peak above two bf16 gradients: " << extra << " bytes";
  ASSERT_EQ(logits.grad().dtype(), DType::bf16);
  EXPECT_EQ(loss.dtype(), DType::f32);
  EXPECT_TRUE(close({float(loss.item())}, {float(loss_cpu.item())}, DType::f32, n * vocab));
  EXPECT_TRUE(close(cast(logits.grad(), DType::f32).to_vector(), logits_cpu.grad().to_vector(), DType::bf16, 1));
}

TEST(CrossEntropyGpu, RepeatIsBitwiseIdentical) {
  SSM_REQUIRE_GPU();
  for (DType dtype : kDtypes) {
    const int64_t n = 1000, vocab = 32000, numel = n * vocab;
    const size_t elem = size_t(dtype_size(dtype));
    DeviceBuffer targets_d = upload_raw(make_targets(n, vocab, 3));
    DeviceBuffer logits_d = upload(random_vector(numel, 4, 3.0f), dtype);
    DeviceBuffer dloss_d = upload({1.0f}, DType::f32);
    DeviceBuffer lse[2] = {DeviceBuffer(n * 4), DeviceBuffer(n * 4)};
    DeviceBuffer result[2] = {DeviceBuffer(8), DeviceBuffer(8)};
    DeviceBuffer dlogits[2] = {DeviceBuffer(numel * elem), DeviceBuffer(numel * elem)};
    for (int run = 0; run < 2; ++run) {
      cuda::cross_entropy_forward(dtype, logits_d.get(), DType::i64, targets_d.get(), n, vocab,
                                  kIgnore, lse[run].as<float>(), result[run].as<float>(), nullptr);
      cuda::cross_entropy_backward(dtype, logits_d.get(), DType::i64, targets_d.get(), n, vocab,
                                   kIgnore, lse[run].as<float>(), dloss_d.as<float>(),
                                   result[run].as<float>(), dlogits[run].get(), nullptr);
    }
    EXPECT_EQ(download_bytes(result[0].get(), 8), download_bytes(result[1].get(), 8));
    EXPECT_EQ(download_bytes(lse[0].get(), n * 4), download_bytes(lse[1].get(), n * 4));
    EXPECT_EQ(download_bytes(dlogits[0].get(), numel * elem),
              download_bytes(dlogits[1].get(), numel * elem));
  }
}

}  // namespace
