// See generate.h.
#include "eval/generate.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "autograd/decode_ops.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/stream.h"
#include "kernels/sampling.h"

namespace ssmtrain::eval {
namespace {

kernels::SamplingParams params_of(const SamplingOptions& o) { return {o.temperature, o.top_k, o.top_p, o.seed}; }

#if SSMTRAIN_WITH_CUDA
// Whether LanguageModel::step touches only device memory, so it can be one CUDA graph: the
// Mamba mixers and the MLP do; attention uploads each sequence's position and MoE routes on
// the host.
bool step_is_capturable(const LanguageModel& model) {
  for (const LayerKind& k : model.options().layer_list())
    if (k.mixer == MixerKind::attention || k.ffn == FfnKind::moe) return false;
  return true;
}

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

// One decode step: model.step on the current ids, then the next ids sampled on the logits'
// device into the same tensor (sample_tokens), so only b ids reach the host. Eager, or (on a
// GPU, for a capturable model) the first step eager on the decode stream, the second captured
// with its sampling (the draw counter is a device scalar the graph advances), and every one
// from then on a replay of that graph.
class Stepper {
 public:
  // ids (b) i64 on the model's device: the tokens the first step feeds; draw (1) i64 there:
  // the next draw index.
  Stepper(const LanguageModel& model, const InferenceCache& cache, const Tensor& ids, const Tensor& draw,
          const kernels::SamplingParams& params, bool try_graph)
      : model_(model), cache_(cache), device_(model.device()), params_(params), ids_(ids), draw_(draw) {
#if SSMTRAIN_WITH_CUDA
    if (try_graph && device_.is_cuda() && step_is_capturable(model)) {
      synchronize(device_.index);  // the prefill (on the current stream) is done
      stream_ = decode_stream(device_.index);
      guard_ = std::make_unique<StreamGuard>(device_.index, stream_);
      // The graph's inputs and outputs, allocated on the decode stream that reads them.
      ids_ = Tensor::empty(ids.shape(), DType::i64, device_);
      draw_ = Tensor::empty(draw.shape(), DType::i64, device_);
      copy_into(ids_, ids);
      copy_into(draw_, draw);
      graphable_ = true;
    }
#else
    (void)try_graph;
#endif
  }
  ~Stepper() {
    if (graphable_) synchronize(device_.index);  // before the stream guard goes
  }

  bool graphed() const { return graph_ != nullptr; }

  // Every sequence's next token, after a step that fed each its current one at positions[i].
  std::vector<int64_t> operator()(const std::vector<int64_t>& positions) {
    run(positions);
    return ids_.values<int64_t>();
  }

 private:
  void eager(const std::vector<int64_t>& positions) {
    logits_ = model_.step(ids_, cache_, positions);  // (b, vocab)
    sample_tokens(logits_, params_, 0, draw_, ids_);
  }
  void run(const std::vector<int64_t>& positions) {
    if (graph_) return graph_->replay(stream_);
    if (graphable_ && steps_++ == 1) {  // the first step warmed the allocator's cache and the GEMM workspace
      graph_ = Graph::capture(device_.index, stream_, [&] { eager(positions); });
      if (graph_) return graph_->replay(stream_);
      graphable_ = false;  // not capturable after all: eager from now on, same results
    }
    eager(positions);
  }

  const LanguageModel& model_;
  const InferenceCache& cache_;
  Device device_;
  kernels::SamplingParams params_;
  bool graphable_ = false;
  int64_t steps_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<StreamGuard> guard_;
  std::unique_ptr<Graph> graph_;
  Tensor ids_, draw_, logits_;  // logits_: the graph's output buffer stays allocated while it lives
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
  check_sampling(o);
  int64_t token = 0;
  kernels::cpu::sample_tokens<float>(logits, 1, vocab, params_of(o), sequence, draw, &token);
  return token;
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
  WeightCastCache casts;  // each weight cast to the compute dtype once; outlives the decode graph
  const Device device = model.device();
  InferenceCache cache = model.new_inference_cache(batch, longest + options.max_new_tokens, options.compute_dtype);
  std::vector<Generated> out(static_cast<size_t>(batch));
  std::vector<int64_t> positions(static_cast<size_t>(batch));
  std::vector<bool> done(size_t(batch), false);
  auto take = [&](int64_t i, int64_t token) {
    out[size_t(i)].tokens.push_back(token);
    if (on_token) on_token(i, token);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) != options.stop_tokens.end()) {
      out[size_t(i)].stopped = true;
      done[size_t(i)] = true;
    }
    if (int64_t(out[size_t(i)].tokens.size()) >= options.max_new_tokens) done[size_t(i)] = true;
  };
  // Prefill each prompt into its own row of the cache (prompts differ in length); the last
  // logits of each row are sampled together: draw 0 of every sequence.
  Tensor last;  // (b, vocab)
  for (int64_t i = 0; i < batch; ++i) {
    const std::vector<int64_t>& p = prompts[size_t(i)];
    const int64_t l = int64_t(p.size());
    const Tensor logits = model.prefill(to_device(Tensor::from_vector(p, {1, l}), device), cache.row(i));  // (l, vocab)
    if (!last.defined()) last = Tensor::empty({batch, vocab}, logits.dtype(), device);
    copy_into(narrow(last, 0, i, 1), narrow(logits, 0, l - 1, 1));
    positions[size_t(i)] = l;
  }
  const kernels::SamplingParams params = params_of(options.sampling);
  const Tensor ids = Tensor::empty({batch}, DType::i64, device), draw = Tensor::zeros({1}, DType::i64, device);
  sample_tokens(last, params, 0, draw, ids);
  const std::vector<int64_t> first = ids.values<int64_t>();
  for (int64_t i = 0; i < batch; ++i) take(i, first[size_t(i)]);
  Stepper step(model, cache, ids, draw, params, options.cuda_graph);
  while (std::find(done.begin(), done.end(), false) != done.end()) {
    // Every row steps (finished ones on tokens nobody reads): one batched call. Row i's token
    // is draw `tokens so far` of sequence i, as the draw counter counts steps.
    const std::vector<int64_t> chosen = step(positions);  // (b)
    for (int64_t i = 0; i < batch; ++i) {
      if (done[size_t(i)]) continue;
      ++positions[size_t(i)];
      take(i, chosen[size_t(i)]);
    }
  }
  for (Generated& g : out) g.graphed = step.graphed();
  return out;
}

}  // namespace ssmtrain::eval
