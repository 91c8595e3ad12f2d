// ssmtrain_bench_attention [--out FILE.json] [--reps N]: times causal bf16 attention, forward and
// forward + backward, through cuDNN's fused SDPA (deterministic, and with its faster atomic-dQ
// backward allowed: "cudnn nondeterministic") and through the fallback (its tensor-core flash
// kernels at these head dims), the fallback also with packed documents (doc_index), at the shapes
// of the attention issue, against this GPU's bf16 GEMM rate. The cuDNN rows record the engines
// that ran (autotuned on first use; SSMTRAIN_ATTENTION_VERBOSE=1 prints every candidate) in
// their "details" field.
// bench/pytorch/attention.py times torch's scaled_dot_product_attention at the same shapes.
#include <fmt/core.h>

#include <algorithm>
#include <exception>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "kernels/attention.h"

namespace {

using namespace ssmtrain;
using bench::Bound;
using bench::DeviceBuffer;
using bench::Report;
using bench::Timer;
using kernels::cuda::AttentionBackend;

// Packed training documents: lengths cycle through these (mean about 1100 tokens), each sequence
// starting with a fresh document. Returns doc_index (b, l) and the number of visible (query, key)
// pairs per head, sum over documents of n (n + 1) / 2.
std::vector<int32_t> packed_documents(int64_t b, int64_t l, double& visible_pairs) {
  const int64_t lengths[] = {700, 1500, 300, 2600, 900, 120, 1800};
  std::vector<int32_t> doc;
  visible_pairs = 0;
  for (int64_t bi = 0; bi < b; ++bi) {
    int64_t t = 0;
    for (int32_t id = 0; t < l; ++id) {
      const int64_t n = std::min(lengths[(bi + id) % 7], l - t);
      doc.insert(doc.end(), static_cast<size_t>(n), id);
      visible_pairs += 0.5 * double(n) * double(n + 1);
      t += n;
    }
  }
  return doc;
}

void bench_attention(Report& report, Timer& timer, int64_t b, int64_t h, int64_t l, int64_t dh) {
  cudaStream_t s = timer.stream();
  const int64_t n = b * l * h * dh;  // q, k, v, out and their gradients: (b, l, h, dh), MHA
  DeviceBuffer q(2 * n), k(2 * n), v(2 * n), out(2 * n), dout(2 * n), dq(2 * n), dk(2 * n), dv(2 * n);
  DeviceBuffer lse(4 * b * h * l);
  uint64_t seed = 1;
  for (DeviceBuffer* x : {&q, &k, &v, &dout}) bench::fill_random(DType::bf16, x->get(), n, seed++, s);
  const kernels::AttentionShape deterministic_shape{b, l, h, h, dh, 0.0, /*deterministic=*/true};
  const kernels::AttentionShape nondeterministic_shape{b, l, h, h, dh, 0.0, /*deterministic=*/false};
  const std::string dims = fmt::format("b={} h={} l={} dh={} causal", b, h, l, dh);
  // Causal: half of the l x l scores. Forward: 2 matmuls of 2 l^2 dh flops; backward: 5.
  const double fwd_flops = 2.0 * 2.0 * double(b) * h * l * l * dh / 2.0;
  const double bwd_flops = 2.5 * fwd_flops;
  double doc_pairs = 0;
  const std::vector<int32_t> doc_host = packed_documents(b, l, doc_pairs);
  DeviceBuffer doc(sizeof(int32_t) * doc_host.size());
  BENCH_CUDA_CHECK(cudaMemcpy(doc.get(), doc_host.data(), doc.bytes(), cudaMemcpyHostToDevice));
  // With documents only the visible pairs count: flops scale by doc_pairs / (l^2 / 2) per sequence.
  const double doc_fraction = doc_pairs / (double(b) * l * l / 2.0);
  struct Variant {
    const char* tag;
    AttentionBackend backend;
    const int32_t* doc;
    double flop_fraction;
    bool deterministic;
    bool time_forward;  // false where the forward equals another row's (determinism is a backward matter)
  };
  for (const Variant& x :
       {Variant{"cudnn", AttentionBackend::cudnn, nullptr, 1.0, true, true},
        Variant{"cudnn nondeterministic", AttentionBackend::cudnn, nullptr, 1.0, false, false},
        Variant{"fallback", AttentionBackend::fallback, nullptr, 1.0, true, true},
        Variant{"fallback docs", AttentionBackend::fallback, doc.as<int32_t>(), doc_fraction, true, true}}) {
    const std::string tag = x.tag;
    const AttentionBackend backend = x.backend;
    const kernels::AttentionShape& shape = x.deterministic ? deterministic_shape : nondeterministic_shape;
    const std::string shape_text = x.doc ? dims + " packed docs" : dims;
    auto forward = [&] {
      kernels::cuda::attention_forward(shape, DType::bf16, q.get(), k.get(), v.get(), x.doc, out.get(),
                                       lse.as<float>(), s, backend);
    };
    auto backward = [&] {
      kernels::cuda::attention_backward(shape, DType::bf16, q.get(), k.get(), v.get(), x.doc, out.get(),
                                        lse.as<float>(), dout.get(), dq.get(), dk.get(), dv.get(), s, backend);
    };
    const std::string forward_name = "attention forward bf16 " + tag;
    const std::string both_name = "attention fwd+bwd bf16 " + tag;
    if (x.time_forward)
      report.measure(forward_name, shape_text, Bound::compute, 8.0 * n, fwd_flops * x.flop_fraction,
                     [&] { return timer.time(forward); });
    report.measure(both_name, shape_text, Bound::compute, 2.0 * 11 * n, (fwd_flops + bwd_flops) * x.flop_fraction,
                   [&] {
                     return timer.time([&] {
                       forward();
                       backward();
                     });
                   });
    if (backend == AttentionBackend::cudnn) {
      try {
        const std::string engines = kernels::cuda::attention_cudnn_engines(shape, DType::bf16);
        fmt::print("{} ({}): {}\n", tag, dims, engines);
        report.set_details(forward_name, shape_text, engines);
        report.set_details(both_name, shape_text, engines);
      } catch (const std::exception& e) {
        fmt::print(stderr, "bench: cannot describe the cuDNN engines of {}: {}\n", dims, e.what());
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  return bench::bench_main(argc, argv, "attention", "Times causal attention (cuDNN and fallback) against this GPU's ceilings",
                           [](Report& report, Timer& timer) {
                             bench_attention(report, timer, 8, 12, 2048, 64);
                             bench_attention(report, timer, 2, 12, 8192, 64);
                             bench_attention(report, timer, 8, 6, 2048, 128);
                           });
}
