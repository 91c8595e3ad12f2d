// Learning-rate schedules as pure functions of the step: linear warmup, then cosine decay to
// min_lr_ratio * lr, WSD (warmup, stable, then a linear decay over the last decay_fraction
// of the steps), or constant.
#pragma once

#include <cstdint>
#include <string>

namespace ssmtrain {

struct ScheduleOptions {
  std::string kind = "cosine";  // cosine | wsd | constant
  double lr = 3e-4;
  int64_t warmup_steps = 100;
  int64_t total_steps = 1000;
  double min_lr_ratio = 0.1;    // cosine and wsd end at lr * min_lr_ratio
  double decay_fraction = 0.2;  // wsd: the share of total_steps spent decaying
};

// The learning rate of step `step` (0-based); throws std::invalid_argument for an unknown kind.
double learning_rate(const ScheduleOptions& options, int64_t step);

}  // namespace ssmtrain
