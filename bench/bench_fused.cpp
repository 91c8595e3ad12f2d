// ssmtrain_bench_fused [--out FILE.json] [--reps N]: times the fused kernels every training step
// uses against this GPU's copy bandwidth: cross-entropy forward + backward on bf16 logits
// (16384 tokens, vocab 32000; bench/pytorch/cross_entropy.py times PyTorch on the same shape),
// add_rmsnorm, swiglu, and the multi-tensor AdamW step and gradient norm over a 130M-parameter
// list shaped like a Mamba-1 130M model. Also prints the cross-entropy's peak extra memory.
#include <fmt/core.h>

#include <cstdint>
#include <vector>

#include "bench/harness.h"
#include "kernels/adamw.h"
#include "kernels/cross_entropy.h"
#include "kernels/norm.h"
#include "kernels/philox.h"
#include "kernels/swiglu.h"

namespace {

using namespace ssmtrain;
using bench::Bound;
using bench::DeviceBuffer;
using bench::Report;
using bench::Timer;

// Bytes of the default stream-ordered pool in use at its high-water mark since the last reset.
size_t pool_high_water(bool reset) {
  int device = 0;
  BENCH_CUDA_CHECK(cudaGetDevice(&device));
  cudaMemPool_t pool;
  BENCH_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  uint64_t value = 0;  // the attribute is a cuuint64_t
  if (reset) {
    BENCH_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &value));
    return 0;
  }
  BENCH_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &value));
  return size_t(value);
}

void bench_cross_entropy(Report& report, Timer& timer, int64_t n, int64_t vocab) {
  cudaStream_t s = timer.stream();
  const int64_t numel = n * vocab;
  DeviceBuffer logits(2 * numel), dlogits(2 * numel), targets(8 * n), lse(4 * n), result(8), dloss(4);
  bench::fill_random(DType::bf16, logits.get(), numel, 1, s);
  std::vector<int64_t> host_targets(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) host_targets[size_t(i)] = (i * 7919 + 13) % vocab;
  BENCH_CUDA_CHECK(cudaMemcpy(targets.get(), host_targets.data(), 8 * n, cudaMemcpyHostToDevice));
  const float one = 1.0f;
  BENCH_CUDA_CHECK(cudaMemcpy(dloss.get(), &one, 4, cudaMemcpyHostToDevice));
  auto forward = [&] {
    kernels::cuda::cross_entropy_forward(DType::bf16, logits.get(), DType::i64, targets.get(), n, vocab, -100,
                                         lse.as<float>(), result.as<float>(), s);
  };
  auto backward = [&] {
    kernels::cuda::cross_entropy_backward(DType::bf16, logits.get(), DType::i64, targets.get(), n, vocab, -100,
                                          lse.as<float>(), dloss.as<float>(), result.as<float>(), dlogits.get(), s);
  };
  const std::string dims = fmt::format("n={} vocab={} bf16 logits", n, vocab);
  report.measure("cross_entropy forward", dims, Bound::memory, 2.0 * numel, 0, [&] { return timer.time(forward); });
  report.measure("cross_entropy fwd+bwd", dims, Bound::memory, 3 * 2.0 * numel, 0, [&] {
    return timer.time([&] {
      forward();
      backward();
    });
  });
  // Memory beyond the inputs (logits, targets): dlogits, lse, result, dloss and pool scratch.
  BENCH_CUDA_CHECK(cudaStreamSynchronize(s));
  pool_high_water(true);
  forward();
  backward();
  BENCH_CUDA_CHECK(cudaStreamSynchronize(s));
  const size_t scratch = pool_high_water(false);
  const size_t extra = dlogits.bytes() + lse.bytes() + result.bytes() + dloss.bytes() + scratch;
  fmt::print("cross_entropy fwd+bwd {}: extra memory beyond logits and targets {:.1f} MiB "
             "(dlogits {:.1f} MiB, scratch {:.3f} MiB)\n",
             dims, extra / 1048576.0, dlogits.bytes() / 1048576.0, scratch / 1048576.0);
  std::fflush(stdout);
}

void bench_add_rmsnorm(Report& report, Timer& timer, int64_t rows, int64_t d) {
  cudaStream_t s = timer.stream();
  const int64_t numel = rows * d;
  DeviceBuffer x(2 * numel), r(2 * numel), w(2 * d), sum(2 * numel), y(2 * numel), rstd(4 * rows);
  DeviceBuffer dy(2 * numel), dsum(2 * numel), dx(2 * numel), dw(2 * d);
  uint64_t seed = 10;
  for (DeviceBuffer* b : {&x, &r, &w, &dy, &dsum}) bench::fill_random(DType::bf16, b->get(), b->bytes() / 2, seed++, s);
  const std::string dims = fmt::format("rows={} d={} bf16", rows, d);
  report.measure("add_rmsnorm forward", dims, Bound::memory, 2.0 * 4 * numel, 0, [&] {
    return timer.time([&] {
      kernels::cuda::add_rmsnorm_forward(DType::bf16, x.get(), r.get(), w.get(), rows, d, 1e-5, sum.get(), y.get(),
                                         rstd.as<float>(), s);
    });
  });
  report.measure("add_rmsnorm backward", dims, Bound::memory, 2.0 * 4 * numel, 0, [&] {
    return timer.time([&] {
      kernels::cuda::add_rmsnorm_backward(DType::bf16, sum.get(), w.get(), rstd.as<float>(), dy.get(), dsum.get(),
                                          rows, d, dx.get(), dw.get(), s);
    });
  });
}

void bench_swiglu(Report& report, Timer& timer, int64_t rows, int64_t f) {
  cudaStream_t s = timer.stream();
  const int64_t out_numel = rows * f;
  DeviceBuffer gate_up(4 * out_numel), out(2 * out_numel), dout(2 * out_numel), dgate_up(4 * out_numel);
  bench::fill_random(DType::bf16, gate_up.get(), 2 * out_numel, 20, s);
  bench::fill_random(DType::bf16, dout.get(), out_numel, 21, s);
  const std::string dims = fmt::format("rows={} f={} bf16", rows, f);
  report.measure("swiglu forward", dims, Bound::memory, 2.0 * 3 * out_numel, 0, [&] {
    return timer.time([&] { kernels::cuda::swiglu_forward(DType::bf16, gate_up.get(), rows, f, out.get(), s); });
  });
  report.measure("swiglu backward", dims, Bound::memory, 2.0 * 5 * out_numel, 0, [&] {
    return timer.time([&] {
      kernels::cuda::swiglu_backward(DType::bf16, gate_up.get(), dout.get(), rows, f, dgate_up.get(), s);
    });
  });
}

// The tensor sizes of a Mamba-1 130M model (d_model 768, 24 layers, vocab 50280, expand 2,
// d_state 16, dt_rank 48, conv width 4): ~129.6M parameters in ~220 tensors.
std::vector<int64_t> mamba_130m_sizes() {
  const int64_t d = 768, di = 1536, n = 16, r = 48, vocab = 50280;
  std::vector<int64_t> sizes = {vocab * d};
  for (int layer = 0; layer < 24; ++layer)
    for (int64_t size : {d, 2 * di * d, di * 4, di, (r + 2 * n) * di, di * r, di, di * n, di, d * di})
      sizes.push_back(size);
  sizes.push_back(d);
  return sizes;
}

void bench_adamw(Report& report, Timer& timer) {
  cudaStream_t s = timer.stream();
  const std::vector<int64_t> sizes = mamba_130m_sizes();
  int64_t total = 0;
  std::vector<int64_t> offsets;
  for (int64_t size : sizes) {
    offsets.push_back(total);
    total += (size + 63) / 64 * 64;  // each tensor on a 256-byte boundary, as the allocator gives
  }
  DeviceBuffer param(4 * total), grad(4 * total), m(4 * total), v(4 * total), copy(2 * total), norm(4);
  bench::fill_random(DType::f32, param.get(), total, 30, s);
  bench::fill_random(DType::f32, grad.get(), total, 31, s);
  BENCH_CUDA_CHECK(cudaMemsetAsync(m.get(), 0, m.bytes(), s));
  BENCH_CUDA_CHECK(cudaMemsetAsync(v.get(), 0, v.bytes(), s));
  std::vector<kernels::AdamWTensor<float, void>> list;
  std::vector<const void*> grads;
  std::vector<void*> mgrads;
  int64_t numel = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    const int64_t o = offsets[t];
    list.push_back({param.as<float>() + o, grad.as<float>() + o, m.as<float>() + o, v.as<float>() + o,
                    copy.as<uint16_t>() + o, sizes[t], sizes[t] > 2 * 768});
    grads.push_back(grad.as<float>() + o);
    mgrads.push_back(grad.as<float>() + o);
    numel += sizes[t];
  }
  kernels::AdamWStep h;
  h.lr = 1e-4;
  h.weight_decay = 0.1;
  h.bias_correction1 = 0.1;
  h.bias_correction2 = 0.05;
  const std::string dims = fmt::format("{} tensors, {:.1f}M f32 params", sizes.size(), numel / 1e6);
  // param, m, v read and written; grad read; bf16 copy written.
  report.measure("multi-tensor adamw (+bf16 copy)", dims, Bound::memory, double(numel) * (3 * 8 + 4 + 2), 0, [&] {
    return timer.time([&] { kernels::cuda::adamw_step(DType::f32, list.data(), int64_t(list.size()), h, s); });
  });
  std::vector<kernels::AdamWTensor<float, void>> no_copy = list;
  for (auto& a : no_copy) a.param_copy = nullptr;
  report.measure("multi-tensor adamw", dims, Bound::memory, double(numel) * (3 * 8 + 4), 0, [&] {
    return timer.time([&] { kernels::cuda::adamw_step(DType::f32, no_copy.data(), int64_t(no_copy.size()), h, s); });
  });
  report.measure("multi-tensor grad sum of squares", dims, Bound::memory, double(numel) * 4, 0, [&] {
    return timer.time([&] {
      kernels::cuda::sum_squares(DType::f32, grads.data(), sizes.data(), int64_t(sizes.size()), norm.as<float>(), s);
    });
  });
  report.measure("multi-tensor grad scale", dims, Bound::memory, double(numel) * 8, 0, [&] {
    return timer.time([&] {
      kernels::cuda::scale(DType::f32, mgrads.data(), sizes.data(), int64_t(sizes.size()), 0.999f, s);
    });
  });
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "fused",
                           "Times fused cross-entropy, add_rmsnorm, swiglu and multi-tensor AdamW against this "
                           "GPU's ceilings",
                           [](Report& report, Timer& timer) {
                             bench_cross_entropy(report, timer, 16384, 32000);
                             bench_add_rmsnorm(report, timer, 16384, 768);
                             bench_add_rmsnorm(report, timer, 16384, 2048);
                             bench_swiglu(report, timer, 16384, 2048);
                             bench_adamw(report, timer);
                           });
}
