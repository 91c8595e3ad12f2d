// `ssmtrain sweep RECIPE`: every variant of the recipe's sweep: list trained and evaluated one
// after another (eval/sweep.h), then report.md, report.csv and the SVG plots; or, with --slurm,
// a job array that runs one variant per task and a report job after them.
#include "cli/sweep_commands.h"

#include <fmt/core.h>

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "autograd/device.h"
#include "configs/errors.h"
#include "configs/layout.h"
#include "configs/load.h"
#include "eval/during_training.h"
#include "eval/sweep.h"
#include "layers/preflight.h"

namespace ssmtrain::cli {
namespace {

namespace fs = std::filesystem;

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error(path.string() + ": cannot write");
}

std::string overrides_text(const configs::SweepVariant& v) {
  std::string s;
  for (const auto& [key, value] : v.overrides) s += (s.empty() ? "" : "; ") + key + "=" + value;
  return s;
}

}  // namespace

int run_sweep(const SweepArgs& a) {
  configs::Recipe recipe;
  try {
    recipe = configs::load_recipe(a.recipe, a.overrides);
    if (recipe.sweep_variants.empty())
      throw configs::ConfigError(recipe.locate("sweep"), "sweep",
                                 "expected a list of variants ({key.path: value, ...} each); this recipe has none: "
                                 "`ssmtrain train` runs it");
    if (a.variant >= int64_t(recipe.sweep_variants.size()))
      throw std::invalid_argument(fmt::format("--variant {}: the sweep has variants 0 to {}", a.variant,
                                              recipe.sweep_variants.size() - 1));
    check_kernels_support(recipe, cuda_available());
  } catch (const configs::ConfigError& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "ssmtrain sweep: {}: {}\n", a.recipe, e.what());
    return 2;
  }
  const configs::Config& base = recipe.config;
  const fs::path out = a.out.empty() ? fs::path(base.run.output_dir) / base.run.name : fs::path(a.out);
  const std::vector<configs::SweepVariant>& variants = base.sweep;
  const std::vector<std::string> dirs = eval::sweep_variant_dirs(variants);
  const eval::SweepAxis axis = eval::sweep_axis(variants);
  eval::SweepEvals evals;
  evals.niah = eval::recipe_writes(recipe, "eval.niah");
  evals.mqar = eval::recipe_writes(recipe, "mqar");
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw std::runtime_error(out.string() + ": cannot create the sweep directory: " + ec.message());

  if (a.slurm) {
    const std::string binary = fs::read_symlink("/proc/self/exe", ec).string();
    const std::string recipe_path = fs::absolute(a.recipe).string();
    write_file(out / "sweep.sbatch", eval::slurm_script(binary.empty() ? "ssmtrain" : binary, recipe_path,
                                                        fs::absolute(out).string(), a.overrides,
                                                        int64_t(variants.size()), base.run.name));
    write_file(out / "submit.sh", eval::slurm_submit_script(binary.empty() ? "ssmtrain" : binary, recipe_path,
                                                            fs::absolute(out).string(), a.overrides, base.run.name));
    fmt::print("sweep {}: {} variants; wrote {}/sweep.sbatch (one array task each) and {}/submit.sh (the array, "
               "then the report); submit with: bash {}/submit.sh\n",
               base.run.name, variants.size(), out.string(), out.string(), out.string());
    return 0;
  }

  std::vector<eval::SweepPoint> points;
  for (size_t i = 0; i < variants.size(); ++i) {
    if (a.variant >= 0 && int64_t(i) != a.variant) continue;
    const fs::path dir = out / dirs[i];
    if (a.report_only) {
      points.push_back(eval::read_sweep_point(dir.string()));
      continue;
    }
    configs::Config c = recipe.sweep_variants[i];
    c.run.output_dir = out.string();
    c.run.name = dirs[i];
    eval::SweepPoint p;
    p.name = dirs[i];
    p.overrides = overrides_text(variants[i]);
    p.value = axis.key.empty() ? dirs[i] : eval::sweep_value(variants[i], axis.key);
    p.x = eval::sweep_x(axis, p.value, int64_t(i), configs::resolve_layout(c.model).mixer_string());
    fmt::print(stderr, "sweep {}: variant {}/{}: {} ({})\n", base.run.name, i + 1, variants.size(), dirs[i],
               p.overrides);
    points.push_back(eval::run_sweep_variant(c, evals, p, [](const std::string& line) {
      fmt::print(stderr, "sweep: {}\n", line);
    }));
  }
  if (a.variant >= 0) {
    fmt::print("sweep {}: variant {} done; wrote {}/sweep_result.json\n", base.run.name, a.variant,
               (out / dirs[size_t(a.variant)]).string());
    return 0;
  }
  eval::write_sweep_report(points, axis, base.run.name, out.string());
  fmt::print("sweep {}: {} variants; wrote {}/report.md, report.csv and the SVG plots\n", base.run.name,
             points.size(), out.string());
  return 0;
}

}  // namespace ssmtrain::cli
