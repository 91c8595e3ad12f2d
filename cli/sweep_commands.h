// `ssmtrain sweep`: its arguments and what it runs (cli/sweep_commands.cpp); eval_commands.cpp
// lists it with the other evaluations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ssmtrain::cli {

struct SweepArgs {
  std::string recipe;
  std::vector<std::string> overrides;
  std::string out;          // empty: run.output_dir / run.name
  bool slurm = false;       // write a job array instead of running
  int64_t variant = -1;     // run only this variant (an array task); no report
  bool report_only = false; // read every variant's result and write the report
};

int run_sweep(const SweepArgs& args);

}  // namespace ssmtrain::cli
