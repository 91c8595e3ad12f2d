// The files of a run directory besides its checkpoints (config.yaml, metrics.jsonl,
// loss_curve.svg), written so that a failure is an error naming the file: a full disk, a
// read-only folder or a directory in the way never leaves a silent 0-byte file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>

namespace ssmtrain {

// A run file that could not be written: what() is "PATH: problem".
class RunFileError : public std::runtime_error {
 public:
  RunFileError(const std::filesystem::path& path, const std::string& problem)
      : std::runtime_error(path.string() + ": " + problem), path_(path) {}
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Writes `text` to PATH.tmp, checks every byte reached the file, then renames it to `path`.
void write_run_file(const std::filesystem::path& path, const std::string& text);

// A JSON number, or null for a non-finite value (JSON has no nan or inf).
std::string json_number(double value, int precision = 6);

// metrics.jsonl: one JSON object per line, each with a "step". Every line is flushed and
// checked as it is written.
class MetricsLog {
 public:
  MetricsLog() = default;
  // A new file (an existing one is replaced).
  static MetricsLog create(const std::filesystem::path& path);
  // Continues an existing file after a resume from the checkpoint of `next_step`: rows of
  // steps >= next_step (written after that checkpoint) are dropped, so the file has each step
  // once. A missing file starts empty.
  static MetricsLog resume(const std::filesystem::path& path, int64_t next_step);

  bool is_open() const { return out_.is_open(); }
  void write(const std::string& json_line);  // the object without the newline
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

}  // namespace ssmtrain
