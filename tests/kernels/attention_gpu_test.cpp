// CUDA attention against the CPU reference (kernels/attention.h): the cuDNN path (bf16, head
// dims 64 and 128, MHA and GQA; its autotuned engines, and its nondeterministic atomic-dQ
// backward) and the fallback, forward and backward: its tensor-core flash
// kernels (bf16, head dims 64 and 128) and its scalar kernels (f32, odd head dims, unaligned
// tensors), with GQA, lengths off the tiles, l = 1 and several document layouts (many short
// documents, documents spanning tiles, ids that are not monotone); bitwise-equal repeated runs;
// one document equal to none, bit for bit; the decode kernel token by token against the forward.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
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

// Document layouts (doc_index (b, l)):
//   mixed: even sequences in documents of 23 tokens, odd ones split at 3 and 40;
//   short_docs: lengths cycling 1, 2, ..., 7 (many documents per tile, many single tokens);
//   long_docs: documents of 150 tokens, each spanning tiles, so whole key tiles lie before a
//     query tile's first document (the flash kernels skip them);
//   one_doc: every token in document 7;
//   unsorted: id (t / 5) % 3, not monotone: a query sees the earlier runs of its id too.
enum class Docs { none, mixed, short_docs, long_docs, one_doc, unsorted };

struct Case {
  int64_t b, l, h, hk, dh;
  DType dtype;
  Docs docs;
  AttentionBackend backend;
  bool deterministic = true;  // false: cuDNN may take its atomic-dQ backward (no repeat check)
};

std::string docs_name(Docs d) {
  switch (d) {
    case Docs::none: return "";
    case Docs::mixed: return "_docs";
    case Docs::short_docs: return "_shortdocs";
    case Docs::long_docs: return "_longdocs";
    case Docs::one_doc: return "_onedoc";
    case Docs::unsorted: return "_unsorteddocs";
  }
  return "";
}

std::string name(const Case& c) {
  return std::string(c.backend == AttentionBackend::cudnn ? "cudnn" : "fallback") + "_" + dtype_name(c.dtype) +
         "_b" + std::to_string(c.b) + "_l" + std::to_string(c.l) + "_h" + std::to_string(c.h) + "_hk" +
         std::to_string(c.hk) + "_dh" + std::to_string(c.dh) + docs_name(c.docs) +
         (c.deterministic ? "" : "_nondeterministic");
}

std::vector<int32_t> documents(Docs layout, int64_t b, int64_t l) {
  std::vector<int32_t> doc;
  for (int64_t bi = 0; bi < b; ++bi) {
    int32_t id = 0, left = 1;  // short_docs: the current document and the tokens it has left
    for (int64_t t = 0; t < l; ++t) {
      switch (layout) {
        case Docs::none: return {};
        case Docs::mixed: doc.push_back(bi % 2 == 0 ? int32_t(t / 23) : int32_t((t >= 3) + (t >= 40))); break;
        case Docs::short_docs:
          if (left == 0) left = ++id % 7 + 1;
          doc.push_back(id);
          --left;
          break;
        case Docs::long_docs: doc.push_back(int32_t((t + 40 * bi) / 150)); break;
        case Docs::one_doc: doc.push_back(7); break;
        case Docs::unsorted: doc.push_back(int32_t((t / 5) % 3)); break;
      }
    }
  }
  return doc;
}

bool has_docs(const Case& c) { return c.docs != Docs::none; }

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
  Problem p{c, {c.b, c.l, c.h, c.hk, c.dh, 0, c.deterministic}, {}, {}, {}, {}, {}};
  const int64_t nq = c.b * c.l * c.h * c.dh, nk = c.b * c.l * c.hk * c.dh;
  p.q = round_to(c.dtype, random_vector(nq, 1));
  p.k = round_to(c.dtype, random_vector(nk, 2));
  p.v = round_to(c.dtype, random_vector(nk, 3));
  p.dout = round_to(c.dtype, random_vector(nq, 4));
  p.doc = documents(c.docs, c.b, c.l);
  return p;
}

// `misalign` elements of padding before every tensor (q, k, v, out, dout, dq, dk, dv): with 1 the
// pointers are not 16-byte aligned, as for a view at an odd offset.
Outputs run_gpu(const Problem& p, int64_t misalign = 0) {
  const Case& c = p.c;
  const int64_t nq = c.b * c.l * c.h * c.dh, nk = c.b * c.l * c.hk * c.dh, nl = c.b * c.h * c.l;
  const auto padded = [&](const std::vector<float>& x) {
    std::vector<float> y(size_t(misalign), 0.0f);
    y.insert(y.end(), x.begin(), x.end());
    return y;
  };
  DeviceBuffer q = upload(padded(p.q), c.dtype), k = upload(padded(p.k), c.dtype), v = upload(padded(p.v), c.dtype),
               dout = upload(padded(p.dout), c.dtype);
  DeviceBuffer doc = has_docs(c) ? testing::upload_raw(p.doc) : DeviceBuffer();
  const int64_t es = dtype_size(c.dtype);
  DeviceBuffer out(size_t((nq + misalign) * es)), lse(size_t(nl * 4)), dq(size_t((nq + misalign) * es)),
      dk(size_t((nk + misalign) * es)), dv(size_t((nk + misalign) * es));
  const auto at = [&](const DeviceBuffer& b) { return static_cast<void*>(b.as<char>() + misalign * es); };
  cuda::attention_forward(p.s, c.dtype, at(q), at(k), at(v), doc.as<int32_t>(), at(out), lse.as<float>(), nullptr,
                          c.backend);
  cuda::attention_backward(p.s, c.dtype, at(q), at(k), at(v), doc.as<int32_t>(), at(out), lse.as<float>(), at(dout),
                           at(dq), at(dk), at(dv), nullptr, c.backend);
  Outputs r;
  r.out = download(at(out), c.dtype, nq);
  r.lse = download(lse.get(), DType::f32, nl);
  r.dq = download(at(dq), c.dtype, nq);
  r.dk = download(at(dk), c.dtype, nk);
  r.dv = download(at(dv), c.dtype, nk);
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
  const int32_t* doc = has_docs(c) ? p.doc.data() : nullptr;
  cpu::attention_forward<float>(p.s, p.q.data(), p.k.data(), p.v.data(), doc, r.out.data(), r.lse.data());
  cpu::attention_backward<float>(p.s, p.q.data(), p.k.data(), p.v.data(), doc, r.out.data(), r.lse.data(),
                                 p.dout.data(), r.dq.data(), r.dk.data(), r.dv.data());
  return r;
}

class AttentionGpu : public ::testing::TestWithParam<Case> {};

void expect_matches(const Outputs& gpu, const Outputs& ref, const Case& c, const std::string& what) {
  const int64_t reduction = c.l * (c.h / c.hk);
  EXPECT_TRUE(close(gpu.out, ref.out, c.dtype, c.l)) << what << " out";
  EXPECT_TRUE(close(gpu.lse, ref.lse, c.dtype, c.l)) << what << " lse";
  EXPECT_TRUE(testing::close_cancelling(gpu.dq, ref.dq, c.dtype, reduction)) << what << " dq";
  EXPECT_TRUE(testing::close_cancelling(gpu.dk, ref.dk, c.dtype, reduction)) << what << " dk";
  EXPECT_TRUE(testing::close_cancelling(gpu.dv, ref.dv, c.dtype, reduction)) << what << " dv";
}

TEST_P(AttentionGpu, MatchesCpuAndRepeatsBitwise) {
  SSM_REQUIRE_GPU();
  const Case& c = GetParam();
  const Problem p = make(c);
  if (c.backend == AttentionBackend::cudnn)
    ASSERT_TRUE(cuda::attention_cudnn_supported(p.s, c.dtype, has_docs(c))) << name(c) << ": cuDNN rejected the case";
  const Outputs gpu = run_gpu(p), ref = run_cpu(p);
  expect_matches(gpu, ref, c, name(c));
  if (!c.deterministic) return;  // dq may differ in its last bits from run to run
  const Outputs again = run_gpu(p);
  EXPECT_TRUE(gpu.bits == again.bits) << name(c) << ": a repeated run gave different bits";
}

constexpr auto kCudnn = AttentionBackend::cudnn;
constexpr auto kFallback = AttentionBackend::fallback;

constexpr auto kNone = Docs::none;

INSTANTIATE_TEST_SUITE_P(
    Cudnn, AttentionGpu,
    ::testing::Values(Case{2, 128, 4, 4, 64, DType::bf16, kNone, kCudnn}, Case{2, 96, 4, 2, 128, DType::bf16, kNone, kCudnn},
                      Case{1, 77, 6, 2, 64, DType::bf16, kNone, kCudnn}, Case{2, 1, 2, 1, 64, DType::bf16, kNone, kCudnn},
                      Case{1, 300, 2, 1, 128, DType::bf16, kNone, kCudnn}),
    [](const auto& info) { return name(info.param); });

// cuDNN with nondeterminism allowed: the atomic-dQ backward graph where cuDNN takes it (else its
// deterministic one), against the reference; MHA, GQA, both head dims, lengths off the tiles.
INSTANTIATE_TEST_SUITE_P(
    CudnnNondeterministic, AttentionGpu,
    ::testing::Values(Case{2, 128, 4, 4, 64, DType::bf16, kNone, kCudnn, false},
                      Case{2, 96, 4, 2, 128, DType::bf16, kNone, kCudnn, false},
                      Case{1, 77, 6, 2, 64, DType::bf16, kNone, kCudnn, false},
                      Case{1, 300, 2, 1, 128, DType::bf16, kNone, kCudnn, false}),
    [](const auto& info) { return name(info.param); });

// After the first run of a shape, the engine description names the chosen engines (autotuned
// unless SSMTRAIN_ATTENTION_TUNE=0), and allowing nondeterminism leaves the forward unchanged, bit
// for bit (one forward graph serves both).
TEST(AttentionGpuCudnn, EnginesAreChosenAndForwardIgnoresDeterminism) {
  SSM_REQUIRE_GPU();
  Case c{2, 160, 4, 2, 64, DType::bf16, kNone, kCudnn};
  const Problem det = make(c);
  ASSERT_TRUE(cuda::attention_cudnn_supported(det.s, c.dtype, false));
  const Outputs a = run_gpu(det);
  const std::string engines = cuda::attention_cudnn_engines(det.s, c.dtype);
  EXPECT_NE(engines.find("forward: engine"), std::string::npos) << engines;
  EXPECT_NE(engines.find("backward (deterministic): engine"), std::string::npos) << engines;
  EXPECT_EQ(engines.find("not yet run"), std::string::npos) << engines;
  std::cout << "cuDNN engines: " << engines << "\n";

  Case cn = c;
  cn.deterministic = false;
  const Problem nondet = make(cn);
  const Outputs b = run_gpu(nondet);
  EXPECT_TRUE(a.out == b.out && a.lse == b.lse) << "the forward changed with deterministic = false";
  std::cout << "cuDNN engines, nondeterminism allowed: " << cuda::attention_cudnn_engines(nondet.s, c.dtype)
            << "\n";
}

// The scalar kernels: f32 and head dims other than 64 / 128.
INSTANTIATE_TEST_SUITE_P(
    Fallback, AttentionGpu,
    ::testing::Values(Case{2, 77, 4, 2, 64, DType::f32, kNone, kFallback},
                      Case{1, 53, 6, 3, 37, DType::f32, kNone, kFallback},
                      Case{2, 61, 4, 1, 128, DType::f32, Docs::mixed, kFallback},
                      Case{2, 1, 2, 2, 16, DType::f32, kNone, kFallback},
                      Case{3, 19, 2, 2, 5, DType::f32, Docs::mixed, kFallback},
                      Case{2, 70, 2, 1, 32, DType::bf16, Docs::short_docs, kFallback}),
    [](const auto& info) { return name(info.param); });

// The flash kernels (bf16, head dims 64 and 128): blocks of 128 queries (forward, dq) or keys
// (dk/dv), key tiles of 64, query tiles of 64 in dk/dv; lengths on and off those multiples, l = 1,
// GQA groups of 1 to 4, and every document layout.
INSTANTIATE_TEST_SUITE_P(
    Flash, AttentionGpu,
    ::testing::Values(Case{2, 128, 4, 4, 64, DType::bf16, kNone, kFallback},
                      Case{2, 96, 4, 2, 128, DType::bf16, kNone, kFallback},
                      Case{2, 200, 4, 2, 64, DType::bf16, kNone, kFallback},
                      Case{1, 77, 2, 1, 128, DType::bf16, kNone, kFallback},
                      Case{2, 1, 2, 1, 64, DType::bf16, kNone, kFallback},
                      Case{1, 1, 4, 2, 128, DType::bf16, Docs::mixed, kFallback},
                      Case{2, 100, 4, 2, 64, DType::bf16, Docs::mixed, kFallback},
                      Case{2, 333, 4, 1, 64, DType::bf16, Docs::short_docs, kFallback},
                      Case{1, 300, 8, 2, 128, DType::bf16, Docs::long_docs, kFallback},
                      Case{1, 1030, 2, 2, 64, DType::bf16, Docs::long_docs, kFallback},
                      Case{2, 450, 2, 2, 64, DType::bf16, Docs::unsorted, kFallback},
                      Case{1, 257, 4, 4, 128, DType::bf16, Docs::unsorted, kFallback},
                      Case{2, 129, 2, 1, 128, DType::bf16, Docs::short_docs, kFallback}),
    [](const auto& info) { return name(info.param); });

// The automatic choice runs documents on the fallback and equals it bit for bit.
TEST(AttentionGpuDispatch, DocumentsGoToTheFallback) {
  SSM_REQUIRE_GPU();
  Case c{2, 70, 4, 2, 64, DType::bf16, Docs::mixed, AttentionBackend::automatic};
  const Problem p = make(c);
  EXPECT_FALSE(cuda::attention_cudnn_supported(p.s, c.dtype, true));
  const Outputs automatic = run_gpu(p);
  Problem pf = p;
  pf.c.backend = kFallback;
  EXPECT_TRUE(automatic.bits == run_gpu(pf).bits);
  pf.c.backend = kCudnn;
  EXPECT_THROW(run_gpu(pf), KernelError);
}

// A doc_index that puts every token in one document changes nothing, bit for bit, on both
// fallback paths (flash: bf16 dh 64 / 128; scalar: f32).
TEST(AttentionGpuDispatch, OneDocumentEqualsNoDocuments) {
  SSM_REQUIRE_GPU();
  for (const Case& c : {Case{2, 150, 4, 2, 64, DType::bf16, Docs::one_doc, kFallback},
                        Case{1, 200, 2, 1, 128, DType::bf16, Docs::one_doc, kFallback},
                        Case{2, 45, 2, 2, 64, DType::f32, Docs::one_doc, kFallback}}) {
    const Problem with = make(c);
    Problem without = with;
    without.c.docs = kNone;
    without.doc.clear();
    EXPECT_TRUE(run_gpu(with).bits == run_gpu(without).bits) << name(c);
  }
}

// Tensors at offsets that are not 16-byte aligned (views) leave the flash kernels for the scalar
// ones and still match the reference, for the shapes the flash kernels would otherwise take.
TEST(AttentionGpuDispatch, UnalignedTensorsMatchCpu) {
  SSM_REQUIRE_GPU();
  for (const Case& c : {Case{2, 90, 4, 2, 64, DType::bf16, Docs::mixed, kFallback},
                        Case{1, 70, 2, 1, 128, DType::bf16, kNone, kFallback}}) {
    const Problem p = make(c);
    const Outputs ref = run_cpu(p);
    expect_matches(run_gpu(p, 1), ref, c, name(c) + " misaligned by one element");
    expect_matches(run_gpu(p, 8), ref, c, name(c) + " offset by 16 bytes");
  }
}

// Decoding token by token over a KV cache equals the rows of the parallel forward.
TEST(AttentionGpuDecode, TokenByTokenMatchesForward) {
  SSM_REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t dh : {64, 37, 128}) {
      const int64_t b = 2, l = 45, h = 4, hk = 2, cap = 64;
      Case c{b, l, h, hk, dh, dtype, kNone, kFallback};
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
