// See schedule.h.
#include "optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace ssmtrain {

double learning_rate(const ScheduleOptions& o, int64_t step) {
  if (o.warmup_steps > 0 && step < o.warmup_steps) return o.lr * double(step + 1) / double(o.warmup_steps);
  const double floor = o.lr * o.min_lr_ratio;
  if (o.kind == "constant") return o.lr;
  if (o.kind == "cosine") {
    const double span = double(std::max<int64_t>(1, o.total_steps - o.warmup_steps));
    const double progress = std::min(1.0, double(step - o.warmup_steps) / span);
    return floor + 0.5 * (o.lr - floor) * (1.0 + std::cos(M_PI * progress));
  }
  if (o.kind == "wsd") {
    const int64_t decay_steps = std::max<int64_t>(1, int64_t(std::llround(o.decay_fraction * double(o.total_steps))));
    const int64_t decay_start = o.total_steps - decay_steps;
    if (step < decay_start) return o.lr;
    const double progress = std::min(1.0, double(step - decay_start) / double(decay_steps));
    return o.lr + (floor - o.lr) * progress;
  }
  throw std::invalid_argument("schedule kind '" + o.kind + "' is not one of cosine, wsd, constant");
}

}  // namespace ssmtrain
