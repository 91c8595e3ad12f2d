// The training loop of `ssmtrain train`: the model of the recipe, AdamW with its schedule,
// gradient accumulation over micro-batches from the token loader, gradient clipping, periodic
// validation loss; one step line `step | loss | grad norm | lr | ms | tok/s | MFU | mem`
// (with ETA on a terminal), metrics.jsonl, config.yaml and loss_curve.svg in the run
// directory. bf16 activations with f32 master weights on a GPU, f32 on the CPU.
#pragma once

#include <string>

#include "configs/config.h"

namespace ssmtrain {

struct TrainSummary {
  std::string run_dir;
  int64_t steps = 0;
  double first_loss = 0;       // training loss of step 0
  double final_loss = 0;       // training loss of the last step
  double final_val_loss = -1;  // validation loss at the end (-1: no validation data)
  double tokens_per_second = 0;
  double unigram_entropy = 0;  // of the training tokens, from the data manifest (0: not recorded)
};

// Runs the whole job of a loaded config on the first GPU when one is visible, else the CPU.
// Throws std::invalid_argument for what the recipe asks but ssmtrain cannot build yet, and
// the data layer's errors for a missing or corrupt corpus.
TrainSummary train(const configs::Config& config);

}  // namespace ssmtrain
