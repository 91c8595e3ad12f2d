// CUDA attention against the CPU reference (kernels/attention.h): the cuDNN path (bf16, head
// dims 64 and 128, MHA and GQA) and the fallback kernels (bf16 and f32, head dims 64, 128 and
// odd ones, GQA, documents, lengths off the tile, l = 1), forward and backward; bitwise-equal
// repeated runs; the decode kernel token by token against the parallel forward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "tests/support/compare.h"
#include "tests/support/device_buffer.h"

namespace ssmtrain::kernels {
namespace {

using cuda::AttentionBackend;
using testing::close;
using testing::DeviceBuffer;
using testing::download;
using testing::random_vector;
using testing::round_to;
using testing::upload;

struct Case {
  int64_t b, l, h, hk, dh;
  DType dtype;
  bool docs;
  AttentionBackend backend;
};

std::string name(const Case& c) {
  return std::string(c.backend == AttentionBackend::cudnn ? "cudnn" : "fallback") + "_" + dtype_name(c.dtype) +
         "_b" + std::to_string(c.b) + "_l" + std::to_string(c.l) + "_h" + std::to_string(c.h) + "_hk" +
         std::to_string(c.hk) + "_dh" + std::to_string(c.dh) + (c.docs ? "_docs" : "");
}

std::vector<int32_t> documents(int64_t b, int64_t l) {
  std::vector<int32_t> doc;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t t = 0; t < l; ++t) doc.push_back(bi % 2 == 0 ? int32_t(t / 23) : int32_t((t >= 3) + (t >= 40)));
  return doc;
}

struct Outputs {
  std::vector<float> out, lse, dq, dk, dv;
  std::vector<uint8_t> bits;  // every output's raw bytes, for the repeat check
};

struct Problem {
  Case c;
  AttentionShape s;
  std::vector<float> q, k, v, dout;  // rounded to the dtype
  std::vector<int32_t> doc;
};

Problem make(const Case& c) {
  Problem p{c, {c.b, c.l, c.h, c.hk, c.dh, 0}, {}, {}, {}, {}, {}};
  const int64_t nq = c.b * c.l * c.h * c.dh, nk = c.b * c.l * c.hk * c.dh;
  p.q = round_to(c.dtype, random_vector(nq, 1));
  p.k = round_to(c.dtype, random_vector(nk, 2));
  p.v = round_to(c.dtype, random_vector(nk, 3));
  p.dout = round_to(c.dtype, random_vector(nq, 4));
  if (c.docs) p.doc = documents(c.b, c.l);
  return p;
}

Outputs run_gpu(const Problem& p) {
  const Case& c = p.c;
  const int64_t nq = c.b * c.l * c.h * c.dh, nk = c.b * c.l * c.hk * c.dh, nl = c.b * c.h * c.l;
  DeviceBuffer q = upload(p.q, c.dtype), k = upload(p.k, c.dtype), v = upload(p.v, c.dtype),
               dout = upload(p.dout, c.dtype);
  DeviceBuffer doc = c.docs ? testing::upload_raw(p.doc) : DeviceBuffer();
  const int64_t es = dtype_size(c.dtype);
  DeviceBuffer out(size_t(nq * es)), lse(size_t(nl * 4)), dq(size_t(nq * es)), dk(size_t(nk * es)),
      dv(size_t(nk * es));
  cuda::attention_forward(p.s, c.dtype, q.get(), k.get(), v.get(), doc.as<int32_t>(), out.get(), lse.as<float>(),
                          nullptr, c.backend);
  cuda::attention_backward(p.s, c.dtype, q.get(), k.get(), v.get(), doc.as<int32_t>(), out.get(), lse.as<float>(),
                           dout.get(), dq.get(), dk.get(), dv.get(), nullptr, c.backend);
  Outputs r;
  r.out = download(out.get(), c.dtype, nq);
  r.lse = download(lse.get(), DType::f32, nl);
  r.dq = download(dq.get(), c.dtype, nq);
  r.dk = download(dk.get(), c.dtype, nk);
  r.dv = download(dv.get(), c.dtype, nk);
  for (const DeviceBuffer* b : {&out, &lse, &dq, &dk, &dv}) {
    const auto bytes = testing::download_bytes(b->get(), b->bytes());
    r.bits.insert(r.bits.end(), bytes.begin(), bytes.end());
  }
  return r;
}

Outputs run_cpu(const Problem& p) {
  const Case& c = p.c;
  const int64_t nq = c.b * c.l * c.h * c.dh, nk = c.b * c.l * c.hk * c.dh;
  Outputs r;
  r.out.resize(size_t(nq));
  r.lse.resize(size_t(c.b * c.h * c.l));
  r.dq.resize(size_t(nq));
  r.dk.resize(size_t(nk));
  r.dv.resize(size_t(nk));
  const int32_t* doc = c.docs ? p.doc.data() : nullptr;
  cpu::attention_forward<float>(p.s, p.q.data(), p.k.data(), p.v.data(), doc, r.out.data(), r.lse.data());
  cpu::attention_backward<float>(p.s, p.q.data(), p.k.data(), p.v.data(), doc, r.out.data(), r.lse.data(),
                                 p.dout.data(), r.dq.data(), r.dk.data(), r.dv.data());
  return r;
}

class AttentionGpu : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionGpu, MatchesCpuAndRepeatsBitwise) {
  SSM_REQUIRE_GPU();
  const Case& c = GetParam();
  const Problem p = make(c);
  if (c.backend == AttentionBackend::cudnn)
    ASSERT_TRUE(cuda::attention_cudnn_supported(p.s, c.dtype, c.docs)) << name(c) << ": cuDNN rejected the case";
  const Outputs gpu = run_gpu(p), ref = run_cpu(p);
  const int64_t reduction = c.l * (c.h / c.hk);
  EXPECT_TRUE(close(gpu.out, ref.out, c.dtype, c.l)) << name(c) << " out";
  EXPECT_TRUE(close(gpu.lse, ref.lse, c.dtype, c.l)) << name(c) << " lse";
  EXPECT_TRUE(testing::close_cancelling(gpu.dq, ref.dq, c.dtype, reduction)) << name(c) << " dq";
  EXPECT_TRUE(testing::close_cancelling(gpu.dk, ref.dk, c.dtype, reduction)) << name(c) << " dk";
  EXPECT_TRUE(testing::close_cancelling(gpu.dv, ref.dv, c.dtype, reduction)) << name(c) << " dv";
  const Outputs again = run_gpu(p);
  EXPECT_TRUE(gpu.bits == again.bits) << name(c) << ": a repeated run gave different bits";
}

constexpr auto kCudnn = AttentionBackend::cudnn;
constexpr auto kFallback = AttentionBackend::fallback;

INSTANTIATE_TEST_SUITE_P(
    Cudnn, AttentionGpu,
    ::testing::Values(Case{2, 128, 4, 4, 64, DType::bf16, false, kCudnn}, Case{2, 96, 4, 2, 128, DType::bf16, false, kCudnn},
                      Case{1, 77, 6, 2, 64, DType::bf16, false, kCudnn}, Case{2, 1, 2, 1, 64, DType::bf16, false, kCudnn},
                      Case{1, 300, 2, 1, 128, DType::bf16, false, kCudnn}),
    [](const auto& info) { return name(info.param); });

INSTANTIATE_TEST_SUITE_P(
    Fallback, AttentionGpu,
    ::testing::Values(Case{2, 128, 4, 4, 64, DType::bf16, false, kFallback},
                      Case{2, 96, 4, 2, 128, DType::bf16, false, kFallback},
                      Case{2, 77, 4, 2, 64, DType::f32, false, kFallback},
                      Case{1, 53, 6, 3, 37, DType::f32, false, kFallback},
                      Case{2, 61, 4, 1, 128, DType::f32, true, kFallback},
                      Case{2, 100, 4, 2, 64, DType::bf16, true, kFallback},
                      Case{2, 1, 2, 2, 16, DType::f32, false, kFallback},
                      Case{3, 19, 2, 2, 5, DType::f32, true, kFallback}),
    [](const auto& info) { return name(info.param); });

// The automatic choice runs documents on the fallback and equals it bit for bit.
TEST(AttentionGpuDispatch, DocumentsGoToTheFallback) {
  SSM_REQUIRE_GPU();
  Case c{2, 70, 4, 2, 64, DType::bf16, true, AttentionBackend::automatic};
  const Problem p = make(c);
  EXPECT_FALSE(cuda::attention_cudnn_supported(p.s, c.dtype, true));
  const Outputs automatic = run_gpu(p);
  Problem pf = p;
  pf.c.backend = kFallback;
  EXPECT_TRUE(automatic.bits == run_gpu(pf).bits);
  pf.c.backend = kCudnn;
  EXPECT_THROW(run_gpu(pf), KernelError);
}

// Decoding token by token over a KV cache equals the rows of the parallel forward.
TEST(AttentionGpuDecode, TokenByTokenMatchesForward) {
  SSM_REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t dh : {64, 37, 128}) {
      const int64_t b = 2, l = 45, h = 4, hk = 2, cap = 64;
      Case c{b, l, h, hk, dh, dtype, false, kFallback};
      const Problem p = make(c);
      const Outputs ref = run_cpu(p);
      std::vector<float> kc(size_t(b * cap * hk * dh), 0.0f), vc(kc.size(), 0.0f);
      AttentionShape ds{b, cap, h, hk, dh, 0};
      for (int64_t t = 0; t < l; ++t) {
        std::vector<float> qt(static_cast<size_t>(b * h * dh)), want(qt.size());
        for (int64_t bi = 0; bi < b; ++bi) {
          for (int64_t x = 0; x < hk * dh; ++x) {
            kc[size_t((bi * cap + t) * hk * dh + x)] = p.k[size_t((bi * l + t) * hk * dh + x)];
            vc[size_t((bi * cap + t) * hk * dh + x)] = p.v[size_t((bi * l + t) * hk * dh + x)];
          }
          for (int64_t x = 0; x < h * dh; ++x) {
            qt[size_t(bi * h * dh + x)] = p.q[size_t((bi * l + t) * h * dh + x)];
            want[size_t(bi * h * dh + x)] = ref.out[size_t((bi * l + t) * h * dh + x)];
          }
        }
        DeviceBuffer q = upload(qt, dtype), k = upload(kc, dtype), v = upload(vc, dtype),
                     lengths = testing::upload_raw(std::vector<int32_t>(size_t(b), int32_t(t + 1))),
                     out(size_t(b * h * dh * dtype_size(dtype)));
        cuda::attention_decode(ds, dtype, q.get(), k.get(), v.get(), lengths.as<int32_t>(), out.get(), nullptr);
        ASSERT_TRUE(close(download(out.get(), dtype, b * h * dh), want, dtype, t + 1))
            << dtype_name(dtype) << " dh " << dh << " token " << t;
      }
    }
}

}  // namespace
}  // namespace ssmtrain::kernels
