// Whether a checkpoint may continue the run a recipe describes (DESIGN.md section 7): the
// model section, the layout, the sequence length and the data must be the ones it was trained
// with; steps, token budget, batch split, optimizer and schedule values, evaluation, logging
// and checkpoint cadence may change (each change is reported).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "configs/config.h"
#include "train/checkpoint.h"

namespace ssmtrain {

// A checkpoint that cannot continue this run; what() names the file and the key that differs.
class ResumeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Key paths ("model.mamba2.d_state") whose values differ between two configs, in schema
// order, each as "key: saved -> now".
std::vector<std::string> config_differences(const configs::Config& saved, const configs::Config& now);

// Throws ResumeError unless `checkpoint` (read from `path`) can continue a run of `now` with
// model layout `layout` on data `data`; returns one line per other key that changed.
std::vector<std::string> check_resume(const std::string& path, const CheckpointContents& checkpoint,
                                      const configs::Config& now, const std::string& layout,
                                      const DataFingerprint& data);

}  // namespace ssmtrain
