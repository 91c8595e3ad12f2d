// See resume.h. Configs are compared through their canonical YAML (configs::dump_config: one
// key per line, two spaces per level), so every key, present or future, takes part.
#include "train/resume.h"

#include <fmt/core.h>

#include <sstream>
#include <utility>

#include "configs/load.h"

namespace ssmtrain {
namespace {

// (key.path, value text) for every leaf of a dumped config, in order.
std::vector<std::pair<std::string, std::string>> flatten(const std::string& yaml) {
  std::vector<std::pair<std::string, std::string>> leaves;
  std::vector<std::string> path;  // the section names above the current line
  std::istringstream in(yaml);
  for (std::string line; std::getline(in, line);) {
    const size_t indent = line.find_first_not_of(' ');
    if (indent == std::string::npos) continue;
    const std::string body = line.substr(indent);
    if (body.rfind("- ", 0) == 0 || body == "-") {  // a block list item: part of the last key's value
      if (!leaves.empty()) leaves.back().second += " " + body;
      continue;
    }
    const size_t colon = body.find(':');
    if (colon == std::string::npos) continue;
    path.resize(std::min(path.size(), indent / 2));
    const std::string key = body.substr(0, colon);
    std::string value = colon + 1 < body.size() ? body.substr(colon + 2) : "";
    std::string full;
    for (const std::string& p : path) full += p + ".";
    full += key;
    if (value.empty()) path.push_back(key);
    leaves.emplace_back(full, value);
  }
  return leaves;
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

}  // namespace

std::vector<std::string> config_differences(const configs::Config& saved, const configs::Config& now) {
  const auto a = flatten(configs::dump_config(saved)), b = flatten(configs::dump_config(now));
  std::vector<std::string> differences;
  for (const auto& [key, value] : b) {
    std::string before = "(absent)";
    for (const auto& [k, v] : a)
      if (k == key) before = v;
    if (before != value) differences.push_back(fmt::format("{}: {} -> {}", key, before, value));
  }
  for (const auto& [key, value] : a) {
    bool present = false;
    for (const auto& [k, v] : b) present = present || k == key;
    if (!present) differences.push_back(fmt::format("{}: {} -> (absent)", key, value));
  }
  return differences;
}

std::vector<std::string> check_resume(const std::string& path, const CheckpointContents& checkpoint,
                                      const configs::Config& now, const std::string& layout,
                                      const DataFingerprint& data) {
  configs::Config saved;
  try {
    saved = configs::parse_config(checkpoint.config_yaml, path + ":config");
  } catch (const std::exception& e) {
    throw ResumeError(fmt::format("{}: its config does not load: {}", path, e.what()));
  }
  std::vector<std::string> notes;
  for (const std::string& difference : config_differences(saved, now)) {
    const bool model = starts_with(difference, "model.");
    if (model || starts_with(difference, "training.seq_len:"))
      throw ResumeError(fmt::format("{}: cannot resume: {} (the checkpoint's value -> the recipe's); {} must be the "
                                    "checkpoint's, or start a new run (another run.name, or run.overwrite=true)",
                                    path, difference, difference.substr(0, difference.find(':'))));
    if (starts_with(difference, "run.") || starts_with(difference, "data.") || starts_with(difference, "checkpoint.resume"))
      continue;  // where the files are and how this run was started: not a change of the run
    notes.push_back(difference);
  }
  if (checkpoint.layout != layout)
    throw ResumeError(fmt::format("{}: cannot resume: the layout is {} in the checkpoint and {} in the recipe", path,
                                  checkpoint.layout, layout));
  if (!(checkpoint.data == data) && !now.checkpoint.allow_data_change) {
    const std::string what = checkpoint.data.tokenizer_checksum != data.tokenizer_checksum
                                 ? fmt::format("the tokenizer differs ({} in the checkpoint, {} now)",
                                               checkpoint.data.tokenizer_checksum, data.tokenizer_checksum)
                                 : fmt::format("the training shards differ ({} in the checkpoint, {} now, or other "
                                               "contents)",
                                               checkpoint.data.shard_checksums.size(), data.shard_checksums.size());
    throw ResumeError(fmt::format("{}: cannot resume on other data (data.train): {}; pass --set "
                                  "checkpoint.allow_data_change=true to continue on this data on purpose",
                                  path, what));
  }
  return notes;
}

}  // namespace ssmtrain
