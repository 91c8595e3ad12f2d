// The training loop of `ssmtrain train`: the model of the recipe, AdamW with its schedule,
// gradient accumulation over micro-batches from the token loader, gradient clipping, periodic
// validation loss; one step line `step | loss | grad norm | lr | ms | tok/s | MFU | mem | ETA`
// (flushed as printed), metrics.jsonl, config.yaml and loss_curve.svg in the run directory,
// and checkpoints (train/checkpoint.h) it resumes from bit for bit. SIGTERM, SIGUSR1 and
// SIGINT stop it at a step boundary with a checkpoint. bf16 activations with f32 master
// weights on a GPU, f32 on the CPU.
#pragma once

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "configs/config.h"
#include "kernels/common.h"

namespace ssmtrain {

class LanguageModel;

// Evaluations of the model being trained (eval/ supplies them; train/ cannot call eval/): the
// model and its activation dtype (nullopt: f32) -> named measures, e.g. {"niah_accuracy", 0.5}.
using TrainEvaluate =
    std::function<std::vector<std::pair<std::string, double>>(const LanguageModel& model, std::optional<DType> compute)>;

struct TrainOptions {
  // auto, none or a checkpoint path; empty: the recipe's checkpoint.resume.
  std::string resume;
  // With eval.every > 0: called on rank 0 after every eval.every-th step and after the last,
  // logged to metrics.jsonl as {"step": N, "eval": {"val_loss": ..., "perplexity": ..., ...}}
  // (the validation loss from the val split when there is one) and a step line.
  TrainEvaluate evaluate;
  // Non-empty (`train --dump-batches DIR`): for a parity run against another trainer
  // (bench/pytorch/parity.py), writes DIR/init.h5, a checkpoint of the step-0 weights that
  // `export hf` converts, and DIR/batches.bin, every step's token batch as the loader yields it
  // (format in write_dumped_batch). One rank, a fresh start only.
  std::string dump_batches;
};

struct TrainSummary {
  std::string run_dir;
  int64_t steps = 0;           // optimizer steps completed, including those of earlier runs resumed
  int64_t resumed_from = -1;   // the step of the checkpoint this run continued (-1: a fresh start)
  double first_loss = 0;       // training loss of step 0
  double final_loss = 0;       // training loss of the last step
  double final_val_loss = -1;  // validation loss at the end (-1: no validation data)
  double tokens_per_second = 0;  // of this invocation's steps
  double unigram_entropy = 0;  // of the training tokens, from the data manifest (0: not recorded)
  std::string checkpoint;      // the newest checkpoint written (empty: none)
  std::string stopped_by;      // "SIGTERM" etc. when a signal ended the run early
  bool already_complete = false;  // the checkpoint resumed was already at the last step
  int rank = 0;                   // this process's rank in a data-parallel job (0: the one that reports)
  int world_size = 1;
};

// A run that cannot go on: diverged (a non-finite loss beyond training.skip_nonfinite_steps),
// a run directory that holds another run, a checkpoint that does not fit. what() is one or
// two lines saying what happened, where, and what was kept.
class TrainError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Runs the whole job of a loaded config on the first GPU when one is visible, else the CPU.
// Throws TrainError (above), RunFileError (train/run_files.h) and CheckpointError
// (train/checkpoint.h) naming the file, std::invalid_argument for what the recipe asks but
// ssmtrain cannot build yet, and the data layer's errors for a missing or corrupt corpus.
TrainSummary train(const configs::Config& config, const TrainOptions& options = {});

}  // namespace ssmtrain
