// See mqar.h. The training loop is a small one over the model and AdamW (the trainer reads
// token shards; MQAR makes its sequences on the fly): the same schedule, clipping and
// mixed precision as `ssmtrain train`, no checkpoints.
#include "eval/mqar.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "autograd/device.h"
#include "autograd/node.h"
#include "autograd/ops.h"
#include "autograd/stream.h"
#include "kernels/philox.h"
#include "layers/from_config.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/svg.h"

namespace ssmtrain::eval {
namespace {

// 64 random bits: draw `j` of sequence `index` of `split`.
uint64_t bits(uint64_t seed, MqarSplit split, int64_t index, int64_t j) {
  const uint64_t block = (uint64_t(split) << 62) ^ (uint64_t(index) << 24) ^ uint64_t(j);
  const kernels::Philox4 r = kernels::philox_block(seed ^ 0x6d716172ULL, block);  // "mqar"
  return (uint64_t(r.v[0]) << 32) | r.v[1];
}

int64_t key_count(const configs::MqarConfig& t) { return (t.vocab_size - 1) / 2; }

}  // namespace

int64_t mqar_queries(const configs::MqarConfig& t) { return t.num_queries > 0 ? t.num_queries : t.num_pairs; }

void check_mqar(const configs::Config& c) {
  const configs::MqarConfig& t = c.mqar;
  const int64_t queries = mqar_queries(t);
  if (t.vocab_size > c.model.vocab_size)
    throw std::invalid_argument(fmt::format("mqar.vocab_size: {} exceeds model.vocab_size {}", t.vocab_size,
                                            c.model.vocab_size));
  if (key_count(t) < t.num_pairs)
    throw std::invalid_argument(fmt::format("mqar.num_pairs: {} distinct keys need mqar.vocab_size >= {}, got {}",
                                            t.num_pairs, 2 * t.num_pairs + 1, t.vocab_size));
  if (queries > t.num_pairs)
    throw std::invalid_argument(
        fmt::format("mqar.num_queries: {} exceeds mqar.num_pairs {} (each key is queried at most once)", queries,
                    t.num_pairs));
  if (2 * (t.num_pairs + queries) > c.training.seq_len)
    throw std::invalid_argument(fmt::format("training.seq_len: {} pairs and {} queries take {} tokens, more than {}",
                                            t.num_pairs, queries, 2 * (t.num_pairs + queries), c.training.seq_len));
  const int64_t rows = c.training.global_batch_tokens / c.training.seq_len;
  if (rows < 1 || rows * c.training.seq_len != c.training.global_batch_tokens || rows % c.training.micro_batch != 0)
    throw std::invalid_argument(fmt::format(
        "training.global_batch_tokens: {} must be a multiple of training.seq_len ({}) x training.micro_batch ({})",
        c.training.global_batch_tokens, c.training.seq_len, c.training.micro_batch));
  if (c.training.total_steps() < 1) throw std::invalid_argument("training.max_steps: MQAR needs at least one step");
}

MqarInstance mqar_instance(const configs::MqarConfig& t, int64_t seq_len, uint64_t seed, MqarSplit split,
                           int64_t index) {
  const int64_t keys = key_count(t), values = t.vocab_size - 1 - keys, queries = mqar_queries(t);
  int64_t draw = 0;
  // num_pairs distinct keys: a partial Fisher-Yates shuffle of [0, keys).
  std::vector<int64_t> pool(static_cast<size_t>(keys));
  for (int64_t i = 0; i < keys; ++i) pool[size_t(i)] = i;
  for (int64_t i = 0; i < t.num_pairs; ++i) {
    const int64_t j = i + int64_t(bits(seed, split, index, draw++) % uint64_t(keys - i));
    std::swap(pool[size_t(i)], pool[size_t(j)]);
  }
  std::vector<int64_t> value(static_cast<size_t>(t.num_pairs));
  for (int64_t& v : value) v = 1 + keys + int64_t(bits(seed, split, index, draw++) % uint64_t(values));
  // The queried pairs: a random order of the pairs, its first `queries`.
  std::vector<int64_t> order(static_cast<size_t>(t.num_pairs));
  for (int64_t i = 0; i < t.num_pairs; ++i) order[size_t(i)] = i;
  for (int64_t i = 0; i < queries; ++i) {
    const int64_t j = i + int64_t(bits(seed, split, index, draw++) % uint64_t(t.num_pairs - i));
    std::swap(order[size_t(i)], order[size_t(j)]);
  }
  MqarInstance m;
  m.inputs.assign(size_t(seq_len), 0);
  m.targets.assign(size_t(seq_len), kMqarIgnore);
  for (int64_t i = 0; i < t.num_pairs; ++i) {
    m.inputs[size_t(2 * i)] = 1 + pool[size_t(i)];
    m.inputs[size_t(2 * i + 1)] = value[size_t(i)];
  }
  for (int64_t q = 0; q < queries; ++q) {
    const int64_t pos = 2 * t.num_pairs + 2 * q, pair = order[size_t(q)];
    m.inputs[size_t(pos)] = 1 + pool[size_t(pair)];
    m.inputs[size_t(pos + 1)] = value[size_t(pair)];
    m.targets[size_t(pos)] = value[size_t(pair)];
  }
  return m;
}

void mqar_count(const float* logits, int64_t vocab, const std::vector<int64_t>& targets, int64_t* correct,
                int64_t* total) {
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i] == kMqarIgnore) continue;
    const float* row = logits + int64_t(i) * vocab;
    const int64_t best = int64_t(std::max_element(row, row + vocab) - row);
    *correct += best == targets[i] ? 1 : 0;
    ++*total;
  }
}

MqarResult run_mqar(const configs::Config& c, const MqarProgress& on_step) {
  check_mqar(c);
  using Clock = std::chrono::steady_clock;
  const int64_t L = c.training.seq_len, micro = c.training.micro_batch;
  const int64_t rows = c.training.global_batch_tokens / L, accum = rows / micro, steps = c.training.total_steps();
  const uint64_t seed = uint64_t(c.run.seed);
  const Device device = cuda_available() ? Device::cuda(0) : Device::cpu();
  const std::optional<DType> compute =
      device.is_cuda() && c.training.precision != configs::Precision::fp32 ? std::optional<DType>(DType::bf16)
                                                                           : std::nullopt;
  const ModelOptions options = model_options(c.model);
  LanguageModel model(options, seed);
  model.to(device);
  std::vector<NamedParameter> params = model.named_parameters();
  AdamW optimizer(params, AdamWOptions{c.optim.betas[0], c.optim.betas[1], c.optim.eps, c.optim.weight_decay});
  ScheduleOptions schedule;
  schedule.kind = std::string(configs::to_string(c.schedule.kind));
  schedule.lr = c.optim.lr;
  schedule.warmup_steps = c.schedule.warmup_steps;
  schedule.total_steps = steps;
  schedule.min_lr_ratio = c.schedule.min_lr_ratio;
  schedule.decay_fraction = c.schedule.decay_fraction;

  MqarResult r;
  r.layout = options.layout_string();
  r.parameters = model.num_parameters();
  r.steps = steps;
  r.sequences_per_step = rows;
  r.device = device.str();
  // A batch of sequences [first, first + n) of a split, as (n, L) input and target tensors.
  auto batch = [&](MqarSplit split, int64_t first, int64_t n, int64_t modulo) {
    std::vector<int64_t> inputs, targets;
    for (int64_t i = 0; i < n; ++i) {
      const MqarInstance m = mqar_instance(c.mqar, L, seed, split, (first + i) % modulo);
      inputs.insert(inputs.end(), m.inputs.begin(), m.inputs.end());
      targets.insert(targets.end(), m.targets.begin(), m.targets.end());
    }
    return std::make_pair(to_device(Tensor::from_vector(inputs, {n, L}), device),
                          to_device(Tensor::from_vector(targets, {n, L}), device));
  };
  // Held-out accuracy, teacher-forced: every answer scored from one parallel forward.
  const int64_t first_answer = 2 * c.mqar.num_pairs, answer_rows = 2 * mqar_queries(c.mqar);
  auto score = [&](int64_t* correct, int64_t* answers) {
    NoGradGuard no_grad;
    for (int64_t first = 0; first < c.mqar.test_examples; first += micro) {
      const int64_t n = std::min(micro, c.mqar.test_examples - first);
      const auto [inputs, targets] = batch(MqarSplit::test, first, n, c.mqar.test_examples);
      const Tensor logits = model.logits(inputs, Tensor(), compute);  // (n L, vocab)
      const std::vector<int64_t> want = to_device(targets, Device::cpu()).values<int64_t>();
      // Only the rows of the query region leave the device: (2 queries, vocab) per sequence,
      // a fraction of the whole (at vocabulary 8192 the full logits of a batch are gigabytes).
      for (int64_t i = 0; i < n; ++i) {
        const int64_t row0 = i * L + first_answer;
        const std::vector<float> rows =
            cast(to_device(narrow(logits, 0, row0, answer_rows), Device::cpu()), DType::f32).to_vector();
        const std::vector<int64_t> slice(want.begin() + row0, want.begin() + row0 + answer_rows);
        mqar_count(rows.data(), options.config.vocab_size, slice, correct, answers);
      }
    }
  };
  double eval_seconds = 0;
  auto evaluate = [&](int64_t step, double loss, double lr) {
    const auto t0 = Clock::now();
    int64_t correct = 0, answers = 0;
    score(&correct, &answers);
    eval_seconds += std::chrono::duration<double>(Clock::now() - t0).count();
    const double accuracy = answers > 0 ? double(correct) / double(answers) : 0.0;
    r.eval_steps.push_back(double(step));
    r.eval_accuracy.push_back(accuracy);
    r.correct = correct;
    r.answers = answers;
    r.accuracy = accuracy;
    if (on_step) on_step(step, loss, lr, accuracy);
  };
  const auto start = Clock::now();
  const int64_t log_every = std::max<int64_t>(1, c.logging.every), eval_every = c.training.eval_every;
  for (int64_t step = 0; step < steps; ++step) {
    model.zero_grad();
    double loss = 0;
    for (int64_t m = 0; m < accum; ++m) {
      const auto [inputs, targets] = batch(MqarSplit::train, step * rows + m * micro, micro, c.mqar.train_examples);
      const LossTerms terms = model.losses(inputs, targets, Tensor(), compute);
      mul(terms.total, 1.0 / double(accum)).backward();
      loss += terms.lm.item() / double(accum);
    }
    // A diverged run stops before its update reaches the weights, naming the step.
    if (!std::isfinite(loss))
      throw std::runtime_error(fmt::format("mqar: step {}: the loss is {}; lower optim.lr", step, loss));
    const double lr = learning_rate(schedule, step);
    optimizer.step(lr, clip_scale(global_grad_norm(params), c.optim.grad_clip));
    r.final_loss = loss;
    if (step % log_every == 0 || step + 1 == steps) {
      r.loss_steps.push_back(double(step));
      r.losses.push_back(loss);
      if (on_step) on_step(step, loss, lr, -1.0);
    }
    if (step + 1 == steps || (eval_every > 0 && (step + 1) % eval_every == 0)) evaluate(step + 1, loss, lr);
  }
  if (device.is_cuda()) synchronize(device.index);
  r.train_seconds = std::chrono::duration<double>(Clock::now() - start).count() - eval_seconds;
  r.tokens_per_second = double(steps * rows * L) / std::max(r.train_seconds, 1e-9);
  r.chance = 1.0 / double(c.mqar.vocab_size - 1 - key_count(c.mqar));
  return r;
}

void write_mqar_files(const MqarResult& r, const configs::Config& c, const std::string& recipe,
                      const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create the output directory: " + ec.message());
  nlohmann::ordered_json j;
  j["task"] = "mqar";
  j["recipe"] = recipe;
  j["layout"] = r.layout;
  j["parameters"] = r.parameters;
  j["d_model"] = c.model.d_model;
  j["n_layers"] = c.model.n_layers;
  j["seed"] = c.run.seed;
  j["vocab_size"] = c.mqar.vocab_size;
  j["seq_len"] = c.training.seq_len;
  j["num_pairs"] = c.mqar.num_pairs;
  j["num_queries"] = mqar_queries(c.mqar);
  j["train_examples"] = c.mqar.train_examples;
  j["test_examples"] = c.mqar.test_examples;
  j["steps"] = r.steps;
  j["sequences_per_step"] = r.sequences_per_step;
  j["final_loss"] = r.final_loss;
  j["accuracy"] = r.accuracy;
  j["correct"] = r.correct;
  j["answers"] = r.answers;
  j["chance"] = r.chance;
  // A model that answers with a random one of the sequence's values, without matching keys.
  j["copy_baseline"] = 1.0 / double(c.mqar.num_pairs);
  j["train_seconds"] = r.train_seconds;
  j["tokens_per_second"] = r.tokens_per_second;
  j["device"] = r.device;
  j["eval_every"] = c.training.eval_every;
  j["evaluations"] = nlohmann::ordered_json::array();
  for (size_t i = 0; i < r.eval_steps.size(); ++i)
    j["evaluations"].push_back({{"step", int64_t(r.eval_steps[i])}, {"accuracy", r.eval_accuracy[i]}});
  j["loss_curve"] = {{"step", r.loss_steps}, {"loss", r.losses}};
  auto write = [&](const std::string& name, const std::string& text) {
    const std::string path = (fs::path(dir) / name).string();
    std::ofstream out(path);
    out << text;
    if (!out) throw std::runtime_error(path + ": cannot write the MQAR result");
  };
  write("mqar.json", j.dump(2) + "\n");
  write("mqar_loss.svg",
        line_chart_svg(svg_escape(fmt::format("MQAR training loss: {} ({}), accuracy {:.3f}", recipe, r.layout,
                                              r.accuracy)),
                       "step", "loss on answers (nats)", {Series{"train", "#1f77b4", r.loss_steps, r.losses}}));
  write("mqar_accuracy.svg",
        line_chart_svg(svg_escape(fmt::format("MQAR held-out accuracy: {} ({})", recipe, r.layout)), "step",
                       "accuracy (fraction of answers)",
                       {Series{"held-out accuracy", "#d62728", r.eval_steps, r.eval_accuracy},
                        Series{"chance", "#7f7f7f", {0.0, double(r.steps)}, {r.chance, r.chance}}}));
}

}  // namespace ssmtrain::eval
