// See generate.h.
#include "eval/generate.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>

#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/stream.h"
#include "kernels/philox.h"

namespace ssmtrain::eval {
namespace {

// A uniform double in [0, 1) from 53 bits of Philox(seed, block (sequence, draw)).
double uniform(uint64_t seed, int64_t sequence, int64_t draw) {
  const uint64_t block = (uint64_t(sequence) << 40) ^ uint64_t(draw);
  const kernels::Philox4 r = kernels::philox_block(seed, block);
  const uint64_t bits = (uint64_t(r.v[0]) << 21) ^ (uint64_t(r.v[1]) >> 11);
  return double(bits & ((uint64_t(1) << 53) - 1)) / double(uint64_t(1) << 53);
}

// The logits as host floats (rows, vocab).
std::vector<float> host_rows(const Tensor& logits) { return cast(to_device(logits, Device::cpu()), DType::f32).to_vector(); }

// Whether LanguageModel::step touches only device memory, so it can be one CUDA graph: the
// Mamba mixers and the MLP do; attention uploads each sequence's position and MoE routes on
// the host.
bool step_is_capturable(const LanguageModel& model) {
  for (const LayerKind& k : model.options().layer_list())
    if (k.mixer == MixerKind::attention || k.ffn == FfnKind::moe) return false;
  return true;
}

#if SSMTRAIN_WITH_CUDA
// The stream decode graphs are captured and replayed on, one per device for the process: its
// blocks in the caching allocator serve only the graphs, so nothing else reuses their memory.
cudaStream_t decode_stream(int device) {
  static std::mutex mutex;
  static std::vector<std::unique_ptr<Stream>> streams;
  std::lock_guard<std::mutex> lock(mutex);
  if (size_t(device) >= streams.size()) streams.resize(size_t(device) + 1);
  if (!streams[size_t(device)]) streams[size_t(device)] = std::make_unique<Stream>(device);
  return streams[size_t(device)]->get();
}
#endif

// model.step for the decode loop: eager, or (on a GPU, for a capturable model) the first step
// eager on the decode stream, the second captured, and every one from then on a replay of
// that graph with the new ids copied into the tensor the graph reads.
class Stepper {
 public:
  Stepper(const LanguageModel& model, const InferenceCache& cache, int64_t batch, bool try_graph)
      : model_(model), cache_(cache), device_(model.device()) {
#if SSMTRAIN_WITH_CUDA
    if (try_graph && device_.is_cuda() && step_is_capturable(model)) {
      synchronize(device_.index);  // the prefill (on the current stream) is done
      stream_ = decode_stream(device_.index);
      guard_ = std::make_unique<StreamGuard>(device_.index, stream_);
      ids_ = Tensor::empty({batch}, DType::i64, device_);
      graphable_ = true;
    }
#else
    (void)batch;
    (void)try_graph;
#endif
  }
  ~Stepper() {
    if (graphable_) synchronize(device_.index);  // before the stream guard goes
  }

  bool graphed() const { return graph_ != nullptr; }

  Tensor operator()(const std::vector<int64_t>& next, const std::vector<int64_t>& positions) {
    const Tensor host_ids = Tensor::from_vector(next, {int64_t(next.size())});
    if (!graphable_) return model_.step(to_device(host_ids, device_), cache_, positions);
    copy_into(ids_, host_ids);
    if (graph_) {
      graph_->replay(stream_);
      return logits_;
    }
    if (steps_++ == 1) {  // the first step warmed the allocator's cache and the GEMM workspace
      graph_ = Graph::capture(device_.index, stream_, [&] { logits_ = model_.step(ids_, cache_, positions); });
      if (graph_) {
        graph_->replay(stream_);
        return logits_;
      }
      graphable_ = false;  // not capturable after all: eager from now on, same results
      logits_ = Tensor();
    }
    return model_.step(ids_, cache_, positions);
  }

 private:
  const LanguageModel& model_;
  const InferenceCache& cache_;
  Device device_;
  bool graphable_ = false;
  int64_t steps_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<StreamGuard> guard_;
  std::unique_ptr<Graph> graph_;
  Tensor ids_, logits_;
};

}  // namespace

void check_sampling(const SamplingOptions& o) {
  if (!(o.temperature >= 0.0) || !std::isfinite(o.temperature))
    throw std::invalid_argument("sampling: temperature must be >= 0, got " + std::to_string(o.temperature));
  if (o.top_k < 0) throw std::invalid_argument("sampling: top_k must be >= 0, got " + std::to_string(o.top_k));
  if (!(o.top_p > 0.0 && o.top_p <= 1.0))
    throw std::invalid_argument("sampling: top_p must be in (0, 1], got " + std::to_string(o.top_p));
}

int64_t sample_token(const float* logits, int64_t vocab, const SamplingOptions& o, int64_t sequence, int64_t draw) {
  if (o.temperature == 0.0) return int64_t(std::max_element(logits, logits + vocab) - logits);
  // Candidates in descending logit order (ties: lower id first), cut by top-k.
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  const int64_t keep = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  order.resize(size_t(keep));
  std::vector<double> prob(order.size());
  const double top = double(logits[order[0]]);
  double total = 0.0;
  for (size_t i = 0; i < order.size(); ++i) total += prob[i] = std::exp((double(logits[order[i]]) - top) / o.temperature);
  // Nucleus: the smallest prefix whose probability reaches top_p.
  size_t n = order.size();
  if (o.top_p < 1.0) {
    double cum = 0.0;
    for (size_t i = 0; i < order.size(); ++i) {
      cum += prob[i] / total;
      if (cum >= o.top_p) {
        n = i + 1;
        break;
      }
    }
    total = std::accumulate(prob.begin(), prob.begin() + long(n), 0.0);
  }
  const double u = uniform(o.seed, sequence, draw) * total;
  double cum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    cum += prob[i];
    if (u < cum) return order[i];
  }
  return order[n - 1];
}

std::vector<Generated> generate(const LanguageModel& model, const std::vector<std::vector<int64_t>>& prompts,
                                const GenerateOptions& options, const TokenCallback& on_token) {
  check_sampling(options.sampling);
  if (prompts.empty()) throw std::invalid_argument("generate: no prompts");
  if (options.max_new_tokens < 1)
    throw std::invalid_argument("generate: max_new_tokens must be positive, got " + std::to_string(options.max_new_tokens));
  const int64_t vocab = model.options().config.vocab_size, batch = int64_t(prompts.size());
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw std::invalid_argument("generate: prompt " + std::to_string(i) + " is empty");
    for (int64_t t : prompts[i])
      if (t < 0 || t >= vocab)
        throw std::invalid_argument("generate: prompt " + std::to_string(i) + " has token " + std::to_string(t) +
                                    ", outside the vocabulary of " + std::to_string(vocab));
    longest = std::max(longest, int64_t(prompts[i].size()));
  }
  NoGradGuard no_grad;
  const Device device = model.device();
  InferenceCache cache = model.new_inference_cache(batch, longest + options.max_new_tokens, options.compute_dtype);
  std::vector<Generated> out(static_cast<size_t>(batch));
  std::vector<int64_t> positions(static_cast<size_t>(batch)), next(static_cast<size_t>(batch));
  std::vector<bool> done(size_t(batch), false);
  auto take = [&](int64_t i, int64_t token) {
    out[size_t(i)].tokens.push_back(token);
    next[size_t(i)] = token;
    if (on_token) on_token(i, token);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) != options.stop_tokens.end()) {
      out[size_t(i)].stopped = true;
      done[size_t(i)] = true;
    }
    if (int64_t(out[size_t(i)].tokens.size()) >= options.max_new_tokens) done[size_t(i)] = true;
  };
  // Prefill each prompt into its own row of the cache (prompts differ in length).
  for (int64_t i = 0; i < batch; ++i) {
    const std::vector<int64_t>& p = prompts[size_t(i)];
    const int64_t l = int64_t(p.size());
    const Tensor logits = model.prefill(to_device(Tensor::from_vector(p, {1, l}), device), cache.row(i));  // (l, vocab)
    const std::vector<float> last = host_rows(narrow(logits, 0, l - 1, 1));
    positions[size_t(i)] = l;
    take(i, sample_token(last.data(), vocab, options.sampling, i, 0));
  }
  Stepper step(model, cache, batch, options.cuda_graph);
  while (std::find(done.begin(), done.end(), false) != done.end()) {
    // Every row steps (finished ones on their last token, results ignored): one batched call.
    const std::vector<float> rows = host_rows(step(next, positions));  // (b, vocab)
    for (int64_t i = 0; i < batch; ++i) {
      if (done[size_t(i)]) continue;
      ++positions[size_t(i)];
      take(i, sample_token(rows.data() + i * vocab, vocab, options.sampling, i, int64_t(out[size_t(i)].tokens.size())));
    }
  }
  for (Generated& g : out) g.graphed = step.graphed();
  return out;
}

}  // namespace ssmtrain::eval
