// See sweep.h. A variant is trained by the same train() as `ssmtrain train`, so a sweep's runs
// are ordinary run directories that `eval ...` and `checkpoint info` read.
#include "eval/sweep.h"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "eval/context.h"
#include "eval/during_training.h"
#include "eval/mqar.h"
#include "eval/retrieval.h"
#include "layers/from_config.h"
#include "train/svg.h"
#include "train/trainer.h"

namespace ssmtrain::eval {
namespace fs = std::filesystem;
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A value as the recipe meant it: the text of a scalar, else its flow YAML (quotes dropped).
std::string plain(const std::string& flow_yaml) {
  if (flow_yaml.size() >= 2 && (flow_yaml.front() == '"' || flow_yaml.front() == '\'') &&
      flow_yaml.back() == flow_yaml.front())
    return flow_yaml.substr(1, flow_yaml.size() - 2);
  return flow_yaml;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error(path.string() + ": cannot write the sweep report");
}

// JSON has no NaN: a measure not taken is null.
nlohmann::ordered_json number_or_null(double v) { return std::isfinite(v) ? nlohmann::ordered_json(v) : nullptr; }
double number_or_nan(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : kNaN;
}

std::string cell(double v, const char* format = "{:.4f}") {
  return std::isfinite(v) ? fmt::format(fmt::runtime(format), v) : "-";
}

}  // namespace

std::string sweep_value(const configs::SweepVariant& variant, const std::string& key) {
  for (const auto& [k, v] : variant.overrides)
    if (k == key) return plain(v);
  return "";
}

SweepAxis sweep_axis(const std::vector<configs::SweepVariant>& variants) {
  SweepAxis axis;
  std::vector<std::string> keys;
  for (const configs::SweepVariant& v : variants)
    for (const auto& [k, value] : v.overrides)
      if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  for (const std::string& k : keys) {
    std::set<std::string> values;
    for (const configs::SweepVariant& v : variants) values.insert(sweep_value(v, k));
    if (values.size() > 1) {
      axis.key = k;
      break;
    }
  }
  const std::string leaf = axis.key.substr(axis.key.rfind('.') + 1);
  if (axis.key.empty())
    axis.label = "variant";
  else if (leaf == "attention_ratio")
    axis.label = "fraction of layers that are attention (from attention_ratio)";
  else
    axis.label = axis.key;
  return axis;
}

double sweep_x(const SweepAxis& axis, const std::string& value, int64_t index, const std::string& mixers) {
  if (axis.key.empty()) return double(index);
  const std::string leaf = axis.key.substr(axis.key.rfind('.') + 1);
  if (leaf == "attention_ratio" && !mixers.empty())
    return double(std::count(mixers.begin(), mixers.end(), 'A')) / double(mixers.size());
  try {
    size_t used = 0;
    const double x = std::stod(value, &used);
    if (used == value.size() && std::isfinite(x)) return x;
  } catch (const std::exception&) {
  }
  return double(index);
}

std::vector<std::string> sweep_variant_dirs(const std::vector<configs::SweepVariant>& variants) {
  std::vector<std::string> dirs;
  std::set<std::string> taken;
  for (size_t i = 0; i < variants.size(); ++i) {
    std::string name = configs::sweep_variant_name(variants[i]);
    for (char& c : name)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' && c != '=') c = '-';
    if (name.empty() || name == "." || name == "..") name = "variant";
    if (!taken.insert(name).second) {
      name += fmt::format("-{}", i);
      taken.insert(name);
    }
    dirs.push_back(name);
  }
  return dirs;
}

void write_sweep_point(const SweepPoint& p, const std::string& dir) {
  nlohmann::ordered_json j;
  j["format"] = "ssmtrain-sweep-result";
  j["version"] = 1;
  j["name"] = p.name;
  j["overrides"] = p.overrides;
  j["value"] = p.value;
  j["x"] = p.x;
  j["layout"] = p.layout;
  j["parameters"] = p.parameters;
  j["steps"] = p.steps;
  j["train_loss"] = number_or_null(p.train_loss);
  j["val_loss"] = number_or_null(p.val_loss);
  j["perplexity"] = number_or_null(p.perplexity);
  j["tokens_per_second"] = number_or_null(p.tokens_per_second);
  j["niah_accuracy"] = number_or_null(p.niah_accuracy);
  j["mqar_accuracy"] = number_or_null(p.mqar_accuracy);
  write_text(fs::path(dir) / "sweep_result.json", j.dump(2) + "\n");
}

SweepPoint read_sweep_point(const std::string& dir) {
  const fs::path path = fs::path(dir) / "sweep_result.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": missing: this variant has not finished (run it first)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw std::runtime_error(path.string() + ": not valid JSON: " + e.what());
  }
  if (j.value("format", "") != "ssmtrain-sweep-result" || j.value("version", 0) != 1)
    throw std::runtime_error(path.string() + ": not a sweep result (format ssmtrain-sweep-result, version 1)");
  SweepPoint p;
  p.name = j.value("name", "");
  p.overrides = j.value("overrides", "");
  p.value = j.value("value", "");
  p.x = number_or_nan(j, "x");
  p.layout = j.value("layout", "");
  p.parameters = j.value("parameters", int64_t(0));
  p.steps = j.value("steps", int64_t(0));
  p.train_loss = number_or_nan(j, "train_loss");
  p.val_loss = number_or_nan(j, "val_loss");
  p.perplexity = number_or_nan(j, "perplexity");
  p.tokens_per_second = number_or_nan(j, "tokens_per_second");
  p.niah_accuracy = number_or_nan(j, "niah_accuracy");
  p.mqar_accuracy = number_or_nan(j, "mqar_accuracy");
  return p;
}

SweepPoint run_sweep_variant(const configs::Config& c, const SweepEvals& evals, SweepPoint p, const SweepLog& log) {
  auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  const fs::path run_dir = fs::path(c.run.output_dir) / c.run.name;
  const ModelOptions options = model_options(c.model);
  p.layout = options.layout_string();
  p.parameters = parameter_counts(options).total;
  p.niah_accuracy = p.mqar_accuracy = p.val_loss = p.perplexity = kNaN;

  TrainOptions train_options;
  if (c.eval.every > 0) train_options.evaluate = training_evaluator(c, evals.niah);
  const TrainSummary summary = train(c, train_options);
  if (summary.rank != 0) return p;  // rank 0 evaluates and reports for a data-parallel job
  if (summary.already_complete && fs::exists(run_dir / "sweep_result.json")) {
    say(fmt::format("{}: finished earlier; its sweep_result.json is reused", p.name));
    return read_sweep_point(run_dir.string());
  }
  p.steps = summary.steps;
  p.train_loss = summary.final_loss;
  p.tokens_per_second = summary.tokens_per_second > 0 ? summary.tokens_per_second : kNaN;
  if (summary.final_val_loss >= 0) {
    p.val_loss = summary.final_val_loss;
    p.perplexity = std::exp(p.val_loss);
  }
  if (evals.niah) {
    const EvalContext ctx = open_checkpoint(run_dir);
    if (!ctx.tokenizer)
      throw std::runtime_error(p.name + ": eval.niah needs a tokenizer; the recipe's data names none");
    RetrievalOptions o;
    o.lengths = c.eval.niah.lengths;
    o.depths = c.eval.niah.depths;
    o.compute_dtype = ctx.compute;
    const RetrievalResult r = run_niah(ctx.model(), *ctx.tokenizer, ctx.data_dir, o);
    write_retrieval_files(r, ctx.checkpoint_name(), c.training.seq_len, (run_dir / "niah").string());
    p.niah_accuracy = r.accuracy();
    say(fmt::format("{}: NIAH accuracy {:.4f} over {} prompts", p.name, p.niah_accuracy, r.samples.size()));
  }
  if (evals.mqar) {
    const MqarResult r = run_mqar(c);
    write_mqar_files(r, c, p.name, (run_dir / "mqar").string());
    p.mqar_accuracy = r.accuracy;
    say(fmt::format("{}: MQAR accuracy {:.4f} (chance {:.4f})", p.name, r.accuracy, r.chance));
  }
  write_sweep_point(p, run_dir.string());
  return p;
}

void write_sweep_report(const std::vector<SweepPoint>& points, const SweepAxis& axis, const std::string& title,
                        const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create the report directory: " + ec.message());
  const std::string swept = axis.key.empty() ? "variant" : axis.key;

  // report.csv: one row per variant; an empty field is a measure not taken.
  auto csv_num = [](double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : std::string(); };
  auto csv_text = [](const std::string& s) {
    std::string o = "\"";
    for (char ch : s) o += ch == '"' ? std::string("\"\"") : std::string(1, ch);
    return o + "\"";
  };
  std::string csv = "variant,swept_key,value,x,layout,parameters,steps,train_loss,val_loss,perplexity,tokens_per_second,"
                    "niah_accuracy,mqar_accuracy\n";
  for (const SweepPoint& p : points)
    csv += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{}\n", csv_text(p.name), csv_text(swept), csv_text(p.value),
                       csv_num(p.x), csv_text(p.layout), p.parameters, p.steps, csv_num(p.train_loss),
                       csv_num(p.val_loss), csv_num(p.perplexity), csv_num(p.tokens_per_second),
                       csv_num(p.niah_accuracy), csv_num(p.mqar_accuracy));
  write_text(fs::path(dir) / "report.csv", csv);

  // The plots: one measure against x, the points in x order, only where it was measured.
  std::vector<size_t> order(points.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return points[a].x < points[b].x; });
  struct Plot {
    std::string file, measure, y_label, color;
    double SweepPoint::*field;
  };
  const std::vector<Plot> plots = {
      {"val_loss.svg", "validation loss", "validation loss (nats per token)", "#1f77b4", &SweepPoint::val_loss},
      {"throughput.svg", "training throughput", "tokens per second", "#2ca02c", &SweepPoint::tokens_per_second},
      {"niah_accuracy.svg", "NIAH accuracy", "needle-in-a-haystack accuracy", "#d62728", &SweepPoint::niah_accuracy},
      {"mqar_accuracy.svg", "MQAR accuracy", "MQAR accuracy (held-out answers)", "#9467bd",
       &SweepPoint::mqar_accuracy},
  };
  std::vector<std::string> written;
  for (const Plot& plot : plots) {
    Series s{plot.measure, plot.color, {}, {}};
    for (size_t i : order)
      if (std::isfinite(points[i].*plot.field)) {
        s.x.push_back(points[i].x);
        s.y.push_back(points[i].*plot.field);
      }
    const fs::path file = fs::path(dir) / plot.file;
    if (s.x.empty()) {
      fs::remove(file, ec);  // a plot of an earlier report with this measure would mislead
      continue;
    }
    write_text(file, line_chart_svg(svg_escape(fmt::format("{}: {}", title, plot.measure)),
                                    svg_escape(axis.label), svg_escape(plot.y_label), {s}));
    written.push_back(plot.file);
  }

  // report.md: what was swept, a table, the plots.
  std::string md = fmt::format("# Sweep {}\n\n{} variants of `{}`; x on the plots: {}.\n\n", title, points.size(),
                               swept, axis.label);
  md += "| variant | value | x | layout | parameters | steps | train loss | val loss | perplexity | tokens/s | NIAH | "
        "MQAR |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (size_t i : order) {
    const SweepPoint& p = points[i];
    md += fmt::format("| {} | {} | {} | `{}` | {:.2f}M | {} | {} | {} | {} | {} | {} | {} |\n", p.name, p.value,
                      cell(p.x, "{:.4g}"), p.layout, double(p.parameters) / 1e6, p.steps, cell(p.train_loss),
                      cell(p.val_loss), cell(p.perplexity, "{:.2f}"), cell(p.tokens_per_second, "{:.0f}"),
                      cell(p.niah_accuracy, "{:.3f}"), cell(p.mqar_accuracy, "{:.3f}"));
  }
  md += "\n\"-\": not measured (no validation data, or the recipe asks for no NIAH / MQAR). Validation loss and "
        "perplexity are at the end of each run; tokens/s is the training throughput of the run; NIAH is exact-match "
        "accuracy over the recipe's eval.niah grid; MQAR is held-out accuracy of the recipe's mqar: task.\n\n";
  for (const std::string& f : written) md += fmt::format("![{}]({})\n", f, f);
  write_text(fs::path(dir) / "report.md", md);
}

std::string slurm_script(const std::string& binary, const std::string& recipe, const std::string& out,
                         const std::vector<std::string>& overrides, int64_t variants, const std::string& job_name) {
  auto quote = [](const std::string& s) {
    std::string o = "'";
    for (char ch : s) o += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
    return o + "'";
  };
  std::string sets;
  for (const std::string& o : overrides) sets += " --set " + quote(o);
  const std::string base = fmt::format("{} sweep {} --out {}{}", quote(binary), quote(recipe), quote(out), sets);
  return fmt::format(
      "#!/bin/bash\n"
      "# Sweep {0}: one array task per variant (ssmtrain sweep --slurm wrote this).\n"
      "# Submit from this directory:   bash {2}/submit.sh\n"
      "# (it submits this array, then the report once every task has succeeded).\n"
      "#SBATCH --job-name={0}\n"
      "#SBATCH --array=0-{1}\n"
      "#SBATCH --nodes=1\n"
      "#SBATCH --ntasks-per-node=1\n"
      "#SBATCH --gpus-per-node=1\n"
      "#SBATCH --output={2}/slurm-%A_%a.out\n"
      "set -euo pipefail\n"
      "{3} --variant \"$SLURM_ARRAY_TASK_ID\"\n",
      job_name, variants - 1, out, base);
}

std::string slurm_submit_script(const std::string& binary, const std::string& recipe, const std::string& out,
                                const std::vector<std::string>& overrides, const std::string& job_name) {
  auto quote = [](const std::string& s) {
    std::string o = "'";
    for (char ch : s) o += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
    return o + "'";
  };
  std::string sets;
  for (const std::string& o : overrides) sets += " --set " + quote(o);
  return fmt::format(
      "#!/bin/bash\n"
      "# Submits the sweep's job array, then its report once every array task has succeeded.\n"
      "set -euo pipefail\n"
      "array=$(sbatch --parsable {0}/sweep.sbatch)\n"
      "sbatch --dependency=afterok:\"${{array%%;*}}\" --job-name={1}-report --output={0}/slurm-report-%j.out "
      "--wrap {2}\n"
      "echo \"submitted array $array and its report\"\n",
      quote(out), job_name,
      quote(fmt::format("{} sweep {} --out {}{} --report-only", quote(binary), quote(recipe), quote(out), sets)));
}

}  // namespace ssmtrain::eval
