// See run_files.h.
#include "train/run_files.h"

#include <fmt/core.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>
#include <vector>

namespace ssmtrain {
namespace fs = std::filesystem;

namespace {

std::string io_problem(const char* what) {
  return errno != 0 ? fmt::format("{}: {}", what, std::strerror(errno)) : std::string(what);
}

// The "step" of a metrics row, or -1 when the line has none.
int64_t step_of_row(const std::string& line) {
  const size_t key = line.find("\"step\":");
  if (key == std::string::npos) return -1;
  try {
    return std::stoll(line.substr(key + 7));
  } catch (const std::exception&) {
    return -1;
  }
}

}  // namespace

void write_run_file(const fs::path& path, const std::string& text) {
  const fs::path temp = path.string() + ".tmp";
  std::error_code ignored;
  if (fs::is_directory(path, ignored)) throw RunFileError(path, "a directory is in the way of this run file");
  errno = 0;
  {
    std::ofstream out(temp, std::ios::trunc | std::ios::binary);
    if (!out) throw RunFileError(path, io_problem("cannot create"));
    out.write(text.data(), std::streamsize(text.size()));
    out.flush();
    if (!out) {
      const std::string problem = io_problem("cannot write");
      out.close();
      fs::remove(temp, ignored);
      throw RunFileError(path, problem);
    }
    out.close();
    if (!out) {
      fs::remove(temp, ignored);
      throw RunFileError(path, io_problem("cannot write"));
    }
  }
  std::error_code error;
  fs::rename(temp, path, error);
  if (error) {
    fs::remove(temp, ignored);
    throw RunFileError(path, "cannot replace: " + error.message());
  }
}

std::string json_number(double value, int precision) {
  if (!std::isfinite(value)) return "null";
  return fmt::format("{:.{}f}", value, precision);
}

MetricsLog MetricsLog::create(const fs::path& path) {
  MetricsLog log;
  log.path_ = path;
  std::error_code ignored;
  if (fs::is_directory(path, ignored)) throw RunFileError(path, "a directory is in the way of this run file");
  errno = 0;
  log.out_.open(path, std::ios::trunc);
  if (!log.out_) throw RunFileError(path, io_problem("cannot create"));
  return log;
}

MetricsLog MetricsLog::resume(const fs::path& path, int64_t next_step) {
  std::vector<std::string> kept;
  {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      const int64_t step = step_of_row(line);
      if (step >= 0 && step < next_step) kept.push_back(line);
    }
  }
  std::string text;
  for (const std::string& line : kept) text += line + "\n";
  write_run_file(path, text);
  MetricsLog log;
  log.path_ = path;
  errno = 0;
  log.out_.open(path, std::ios::app);
  if (!log.out_) throw RunFileError(path, io_problem("cannot open for appending"));
  return log;
}

void MetricsLog::write(const std::string& json_line) {
  errno = 0;
  out_ << json_line << '\n';
  out_.flush();
  if (!out_) throw RunFileError(path_, io_problem("cannot write"));
}

}  // namespace ssmtrain
