// Multi-query associative recall (MQAR, DESIGN.md section 8): the synthetic probe on which pure
// SSMs, hybrids and attention separate. A sequence of training.seq_len tokens holds
// num_pairs key-value pairs, then num_queries of those keys in a random order, each followed by
// its value, then padding (token 0):
//   k1 v1 k2 v2 ... kD vD  q1 a1 q2 a2 ... qQ aQ  0 0 ...
// The loss and the score count only the answers: the target at the position of q_i is a_i,
// every other target is ignored (-100). Keys come from tokens [1, 1 + K), values from
// [1 + K, vocab_size), K = (vocab_size - 1) / 2; keys within a sequence are distinct, values
// may repeat. Every sequence is a function of (seed, split, index) through Philox, so the
// training set, the held-out set and the whole run repeat bit for bit for a seed.
// The queries follow the pairs directly (no gaps); a model must find each key among the pairs,
// so a fixed-size recurrent state that cannot hold num_pairs associations falls below
// attention, which is what the probe measures. Chance is 1 / (number of value tokens).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "configs/config.h"

namespace ssmtrain::eval {

inline constexpr int64_t kMqarIgnore = -100;

enum class MqarSplit : uint64_t { train = 0, test = 1 };

struct MqarInstance {
  std::vector<int64_t> inputs;   // (seq_len)
  std::vector<int64_t> targets;  // (seq_len): the value after each query key, else kMqarIgnore
};

// Queries per sequence: num_queries, or num_pairs when it is 0.
int64_t mqar_queries(const configs::MqarConfig& task);

// Throws configs-style std::invalid_argument naming the key (mqar.num_pairs, mqar.vocab_size,
// training.seq_len, ...) when the task does not fit the model or the sequence length, or the
// batch does not split into micro-batches.
void check_mqar(const configs::Config& config);

MqarInstance mqar_instance(const configs::MqarConfig& task, int64_t seq_len, uint64_t seed, MqarSplit split,
                           int64_t index);

// Answers whose argmax logit is the target: logits (seq_len, vocab) row-major, targets (seq_len)
// with kMqarIgnore elsewhere. Ties go to the lowest id. Adds to *correct and *total.
void mqar_count(const float* logits, int64_t vocab, const std::vector<int64_t>& targets, int64_t* correct,
                int64_t* total);

struct MqarResult {
  std::string layout;         // e.g. "MMMAMMMA"
  int64_t parameters = 0;
  int64_t steps = 0;
  int64_t sequences_per_step = 0;
  std::vector<double> loss_steps, losses;  // training loss (answers only) at the logged steps
  // Held-out accuracy after the steps eval_steps (every training.eval_every steps and after the
  // last one); the last entry is the final accuracy.
  std::vector<double> eval_steps, eval_accuracy;
  double final_loss = 0;
  int64_t correct = 0, answers = 0;  // on the held-out split, after the last step
  double accuracy = 0;
  double chance = 0;          // 1 / number of value tokens
  double train_seconds = 0;
  double tokens_per_second = 0;
  std::string device;
};

// One call per logged step (accuracy < 0) and per evaluation (accuracy in [0, 1]).
using MqarProgress = std::function<void(int64_t step, double loss, double lr, double accuracy)>;

// Trains the recipe's model from its seed on the training split (optim, schedule,
// training.max_steps, global_batch_tokens / seq_len sequences a step in micro_batch rows,
// grad_clip) on the first GPU when one is visible, else the CPU (the device `ssmtrain train`
// picks), scoring the held-out split every training.eval_every steps (0: only at the end) and
// after the last step. Calls check_mqar first; throws std::runtime_error when the loss turns
// non-finite.
MqarResult run_mqar(const configs::Config& config, const MqarProgress& on_step = {});

// mqar.json (config of the task, the result) and mqar_loss.svg in `dir` (created); `recipe`
// names the run in both.
void write_mqar_files(const MqarResult& result, const configs::Config& config, const std::string& recipe,
                      const std::string& dir);

}  // namespace ssmtrain::eval
