// eval.every during `ssmtrain train` (DESIGN.md section 8): the evaluations the trainer runs on
// the model it is training, every eval.every steps and after the last (train/trainer.h,
// TrainOptions::evaluate). The trainer logs the validation loss and perplexity itself; this adds
// NIAH accuracy over eval.niah when the recipe writes that section.
#pragma once

#include <string>

#include "configs/load.h"
#include "train/trainer.h"

namespace ssmtrain::eval {

// Whether the recipe file (or a --set) wrote `key_path` or a key below it ("eval.niah").
bool recipe_writes(const configs::Recipe& recipe, const std::string& key_path);

// The measures of eval.every for `config`: {"niah_accuracy": ...} when `niah` (the recipe writes
// eval.niah; the haystack from its held-out data, 4 trials per cell, seed 0), else none (an
// empty function).
// The tokenizer and haystack load at the first evaluation; a recipe without a tokenizer throws
// std::runtime_error naming eval.niah.
TrainEvaluate training_evaluator(const configs::Config& config, bool niah);

}  // namespace ssmtrain::eval
