// Sweeps (DESIGN.md section 8): every variant of a recipe's `sweep:` list trained in its own run
// directory, then evaluated (validation loss and perplexity from the run; NIAH on its checkpoint
// and MQAR from its recipe when the recipe asks), one result file per variant, and a report over
// all of them: report.md, report.csv and SVG plots of each measure against the swept value.
//   <out>/<variant>/            the variant's run directory (config.yaml, checkpoints/, ...)
//   <out>/<variant>/sweep_result.json, niah/, mqar/
//   <out>/report.md, report.csv, val_loss.svg, throughput.svg, niah_accuracy.svg, mqar_accuracy.svg
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "configs/config.h"

namespace ssmtrain::eval {

// The evaluations a sweep runs besides the validation loss, chosen by the recipe: NIAH when it
// writes eval.niah, MQAR when it writes an mqar: section.
struct SweepEvals {
  bool niah = false;
  bool mqar = false;
};

// The measures of one variant. NaN: not measured (no validation data, evaluation not asked).
struct SweepPoint {
  std::string name;       // the variant's directory name
  std::string overrides;  // "model.layout.attention_ratio=1:7; ..." as the recipe wrote them
  std::string value;      // the swept key's value as written ("1:7")
  double x = 0;           // its position on the plots' axis (see sweep_axis)
  std::string layout;     // "MMMMAMMM / --------"
  int64_t parameters = 0;
  int64_t steps = 0;
  double train_loss = 0;
  double val_loss = 0, perplexity = 0;
  double tokens_per_second = 0;
  double niah_accuracy = 0, mqar_accuracy = 0;
};

// What the plots put on x: the key the variants differ in (the first override key whose value
// is not the same in every variant) and how its values map to numbers: an attention_ratio to
// the fraction of attention layers the resolved layout has (`mixers`, "MMMMAMMM"; 1:15 on 24
// layers places one, 1/24), a number to itself, anything else to the variant's index.
struct SweepAxis {
  std::string key;    // e.g. "model.layout.attention_ratio" (empty: no override differs)
  std::string label;  // the x-axis label
};
SweepAxis sweep_axis(const std::vector<configs::SweepVariant>& variants);
double sweep_x(const SweepAxis& axis, const std::string& value, int64_t index, const std::string& mixers);

// A directory name for a variant: configs::sweep_variant_name with characters other than
// letters, digits, '.', '_', '-' and '=' replaced by '-' ("attention_ratio=1-7"), unique
// within the sweep (a clash gets "-<index>").
std::vector<std::string> sweep_variant_dirs(const std::vector<configs::SweepVariant>& variants);

// The variant's value of `key` as written in its overrides (empty when it has none).
std::string sweep_value(const configs::SweepVariant& variant, const std::string& key);

// Progress lines (training step lines go to stdout from the trainer).
using SweepLog = std::function<void(const std::string& line)>;

// Trains `variant` (its run.output_dir / run.name set to the variant's directory by the caller)
// and evaluates it; writes <run dir>/sweep_result.json (and niah/, mqar/). A variant whose run
// finished earlier (its checkpoint at the last step and a sweep_result.json beside it) is not
// trained or evaluated again: its result is read back, so an interrupted sweep resumes.
SweepPoint run_sweep_variant(const configs::Config& variant, const SweepEvals& evals, SweepPoint point,
                             const SweepLog& log = {});

// sweep_result.json of one variant directory; throws std::runtime_error naming the file when it
// is missing or not a result.
void write_sweep_point(const SweepPoint& point, const std::string& dir);
SweepPoint read_sweep_point(const std::string& dir);

// report.md (a table of every measure per variant, which plots exist), report.csv (one row per
// variant) and the SVG plots (a measure against the swept value: validation loss, throughput,
// and NIAH / MQAR accuracy when measured) in `dir`. `title` names the sweep in each.
void write_sweep_report(const std::vector<SweepPoint>& points, const SweepAxis& axis, const std::string& title,
                        const std::string& dir);

// sweep.sbatch, a Slurm job-array script: task i runs `<binary> sweep <recipe> --out <out>
// --variant i` (with the --set overrides) on one GPU. `variants` is the array size.
std::string slurm_script(const std::string& binary, const std::string& recipe, const std::string& out,
                         const std::vector<std::string>& overrides, int64_t variants, const std::string& job_name);
// submit.sh: `sbatch` of <out>/sweep.sbatch, then of the report (`--report-only`) with
// --dependency=afterok on the array.
std::string slurm_submit_script(const std::string& binary, const std::string& recipe, const std::string& out,
                                const std::vector<std::string>& overrides, const std::string& job_name);

}  // namespace ssmtrain::eval
