// Cluster preemption: SIGTERM and SIGUSR1 (Slurm, Kubernetes) and SIGINT (Ctrl-C) ask the
// training loop to stop at the next step boundary, save a checkpoint and exit 0. A second
// SIGINT ends the process at once, as Ctrl-C twice does elsewhere.
#pragma once

namespace ssmtrain {

// Installs the handlers for its lifetime (the previous ones come back after). One at a time.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal that asked to stop (SIGTERM, SIGUSR1, SIGINT), or 0.
  int requested() const;
  static const char* name(int signal);
};

}  // namespace ssmtrain
