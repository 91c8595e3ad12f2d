// See checkpoint.h. The file layout (docs/checkpoints.md):
//   /                 attributes: format, format_version, config, layout, ssmtrain_version, commit,
//                     tokenizer_checksum, shard_checksums (one per line), metadata_xxh64
//   /model/<name>     f32, the parameter's global shape; attribute xxh64
//   /optim            attribute step; /optim/<name>/exp_avg, /optim/<name>/exp_avg_sq as /model
//   /train            attributes step, tokens_seen, loader_epoch, loader_cursor, rng_seed,
//                     rng_offset, skipped_steps, elapsed_s, state_xxh64; datasets loss_steps,
//                     losses, val_steps, val_losses (f64, attribute xxh64)
#include "train/checkpoint.h"

#include <fcntl.h>
#include <fmt/core.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "autograd/node.h"
#include "autograd/stream.h"
#include "configs/load.h"
#include "data/errors.h"
#include "data/hash.h"
#include "data/hdf5.h"
#include "layers/from_config.h"

namespace ssmtrain {
namespace fs = std::filesystem;
using data::Handle;

int64_t CheckpointContents::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, array] : model) n += array.size();
  return n;
}

namespace {

// ---- fault injection (tests only) ----
// SSMTRAIN_CHECKPOINT_FAULT="POINT[:N][@STEP]" kills the process with SIGKILL at the N-th time
// (default 1) the write of the checkpoint of step STEP (default: any) passes POINT, one of
// create, dataset, close, fsync, rename, dirsync, latest-write, latest-fsync, latest-rename,
// prune. The fault tests use it to crash a save at twenty different moments.
struct FaultPlan {
  std::string point;
  int64_t occurrence = 1;
  int64_t step = -1;
  bool active = false;
};

FaultPlan parse_fault_plan() {
  FaultPlan plan;
  const char* text = std::getenv("SSMTRAIN_CHECKPOINT_FAULT");
  if (text == nullptr || *text == '\0') return plan;
  std::string spec = text;
  if (const size_t at = spec.find('@'); at != std::string::npos) {
    plan.step = std::stoll(spec.substr(at + 1));
    spec = spec.substr(0, at);
  }
  if (const size_t colon = spec.find(':'); colon != std::string::npos) {
    plan.occurrence = std::stoll(spec.substr(colon + 1));
    spec = spec.substr(0, colon);
  }
  plan.point = spec;
  plan.active = true;
  return plan;
}

// Counts the fault points one checkpoint write passes.
class FaultPoints {
 public:
  explicit FaultPoints(int64_t step) : plan_(parse_fault_plan()), step_(step) {}
  void pass(const char* point) {
    if (!plan_.active || plan_.point != point || (plan_.step >= 0 && plan_.step != step_)) return;
    if (++seen_ == plan_.occurrence) ::raise(SIGKILL);
  }

 private:
  FaultPlan plan_;
  int64_t step_;
  int64_t seen_ = 0;
};

// ---- small file-system helpers ----

void fsync_path(const fs::path& path, bool directory, const std::string& what) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) throw CheckpointError(path.string(), fmt::format("cannot open to fsync {}: {}", what, std::strerror(errno)));
  const int status = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (status != 0) throw CheckpointError(path.string(), fmt::format("fsync failed: {}", std::strerror(error)));
}

// Writes `text` to `path` through a temporary file, fsync and rename.
void write_text_atomically(const fs::path& path, const std::string& text, FaultPoints* faults) {
  const fs::path temp = path.string() + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(temp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ignored;
      fs::remove(temp, ignored);
      throw CheckpointError(temp.string(), fmt::format("cannot write: {}", std::strerror(errno)));
    }
  }
  if (faults) faults->pass("latest-write");
  fsync_path(temp, false, "the file");
  if (faults) faults->pass("latest-fsync");
  std::error_code error;
  fs::rename(temp, path, error);
  if (error) {
    fs::remove(temp, error);
    throw CheckpointError(path.string(), "cannot replace: " + error.message());
  }
  if (faults) faults->pass("latest-rename");
  fsync_path(path.parent_path().empty() ? fs::path(".") : path.parent_path(), true, "the folder");
}

uint64_t checksum_of(const void* data, size_t bytes) { return data::xxh64(data, bytes); }

// ---- writing ----

class FileWriter {
 public:
  FileWriter(const fs::path& temp, FaultPoints& faults) : path_(temp.string()), faults_(faults) {
    file_ = H5Fcreate(path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file_ < 0) throw CheckpointError(path_, fmt::format("cannot create: {}", std::strerror(errno)));
    faults_.pass("create");
  }
  ~FileWriter() {
    if (file_ >= 0) H5Fclose(file_);
  }
  hid_t root() const { return file_; }
  const std::string& path() const { return path_; }

  hid_t group(const std::string& name) {
    Handle* existing = nullptr;
    for (auto& [n, h] : groups_)
      if (n == name) existing = h.get();
    if (existing) return existing->get();
    hid_t id = H5Gcreate2(file_, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (id < 0) throw CheckpointError(path_, "cannot create group " + name);
    groups_.emplace_back(name, std::make_unique<Handle>(id));
    return id;
  }

  // A contiguous dataset of `shape` with its XXH64 checksum attribute.
  void dataset(const std::string& name, const Shape& shape, const void* data, hid_t file_type, hid_t memory_type,
               size_t element_bytes) {
    std::vector<hsize_t> dims(shape.begin(), shape.end());
    Handle space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr));
    Handle plist(H5Pcreate(H5P_LINK_CREATE));
    H5Pset_create_intermediate_group(plist.get(), 1);
    Handle set(H5Dcreate2(file_, name.c_str(), file_type, space.get(), plist.get(), H5P_DEFAULT, H5P_DEFAULT));
    if (!set.ok()) throw CheckpointError(path_, "cannot create dataset " + name);
    const size_t count = size_t(shape_numel(shape));
    if (count > 0 && H5Dwrite(set.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
      throw CheckpointError(path_, fmt::format("cannot write dataset {} ({})", name, std::strerror(errno)));
    data::write_string_attribute(set.get(), "xxh64", data::checksum_string(checksum_of(data, count * element_bytes)),
                                 path_);
    faults_.pass("dataset");
  }
  void array(const std::string& name, const HostArray& a) {
    if (a.size() != shape_numel(a.shape))
      throw CheckpointError(path_, fmt::format("{}: {} values for shape {}", name, a.size(), shape_str(a.shape)));
    dataset(name, a.shape, a.data(), H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, sizeof(float));
  }
  void doubles(const std::string& name, const std::vector<double>& values) {
    dataset(name, {int64_t(values.size())}, values.data(), H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, sizeof(double));
  }

  void close() {
    groups_.clear();
    if (H5Fflush(file_, H5F_SCOPE_GLOBAL) < 0 || H5Fclose(file_) < 0) {
      file_ = -1;
      throw CheckpointError(path_, fmt::format("cannot flush and close: {}", std::strerror(errno)));
    }
    file_ = -1;
    faults_.pass("close");
  }

 private:
  std::string path_;
  FaultPoints& faults_;
  hid_t file_ = -1;
  std::vector<std::pair<std::string, std::unique_ptr<Handle>>> groups_;
};

std::string join_lines(const std::vector<std::string>& lines) {
  std::string text;
  for (const std::string& line : lines) text += line + "\n";
  return text;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

// The text the root's metadata_xxh64 covers: every root attribute but the checksum itself.
std::string metadata_text(const CheckpointContents& c) {
  return c.config_yaml + "\n\x1f" + c.layout + "\n\x1f" + c.ssmtrain_version + "\n\x1f" + c.commit + "\n\x1f" +
         c.data.tokenizer_checksum + "\n\x1f" + join_lines(c.data.shard_checksums);
}

// The text /train's state_xxh64 covers: its scalar attributes and the optimizer step.
std::string state_text(const TrainProgress& p, int64_t adamw_step) {
  return fmt::format("{} {} {} {} {} {} {} {:a} {}", p.step, p.tokens_seen, p.loader.epoch, p.loader.cursor, p.rng_seed,
                     p.rng_offset, p.skipped_steps, p.elapsed_s, adamw_step);
}

void write_contents(FileWriter& w, const CheckpointContents& c) {
  const std::string& path = w.path();
  const hid_t root = w.root();
  data::write_string_attribute(root, "format", kCheckpointFormatName, path);
  data::write_u64_attribute(root, "format_version", kCheckpointFormatVersion, path);
  data::write_string_attribute(root, "config", c.config_yaml, path);
  data::write_string_attribute(root, "layout", c.layout, path);
  data::write_string_attribute(root, "ssmtrain_version", c.ssmtrain_version, path);
  data::write_string_attribute(root, "commit", c.commit, path);
  data::write_string_attribute(root, "tokenizer_checksum", c.data.tokenizer_checksum, path);
  data::write_string_attribute(root, "shard_checksums", join_lines(c.data.shard_checksums), path);
  const std::string metadata = metadata_text(c);
  data::write_string_attribute(root, "metadata_xxh64",
                               data::checksum_string(checksum_of(metadata.data(), metadata.size())), path);

  w.group("/model");
  for (const auto& [name, array] : c.model) w.array("/model/" + name, array);

  const hid_t optim = w.group("/optim");
  data::write_i64_attribute(optim, "step", c.adamw_step, path);
  for (const auto& [name, moments] : c.optim) {
    w.array("/optim/" + name + "/exp_avg", moments.exp_avg);
    w.array("/optim/" + name + "/exp_avg_sq", moments.exp_avg_sq);
  }

  const TrainProgress& p = c.progress;
  const hid_t train = w.group("/train");
  data::write_i64_attribute(train, "step", p.step, path);
  data::write_i64_attribute(train, "tokens_seen", p.tokens_seen, path);
  data::write_u64_attribute(train, "loader_epoch", p.loader.epoch, path);
  data::write_u64_attribute(train, "loader_cursor", p.loader.cursor, path);
  data::write_u64_attribute(train, "rng_seed", p.rng_seed, path);
  data::write_u64_attribute(train, "rng_offset", p.rng_offset, path);
  data::write_i64_attribute(train, "skipped_steps", p.skipped_steps, path);
  data::write_f64_attribute(train, "elapsed_s", p.elapsed_s, path);
  const std::string state = state_text(p, c.adamw_step);
  data::write_string_attribute(train, "state_xxh64", data::checksum_string(checksum_of(state.data(), state.size())),
                               path);
  w.doubles("/train/loss_steps", p.loss_steps);
  w.doubles("/train/losses", p.losses);
  w.doubles("/train/val_steps", p.val_steps);
  w.doubles("/train/val_losses", p.val_losses);
}

void write_checkpoint_file(const fs::path& path, const CheckpointContents& contents, FaultPoints& faults) {
  const fs::path folder = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  const fs::path temp = path.string() + ".tmp-" + std::to_string(::getpid());
  try {
    data::QuietHdf5 quiet;
    FileWriter writer(temp, faults);
    write_contents(writer, contents);
    writer.close();
    fsync_path(temp, false, "the file");
    faults.pass("fsync");
    std::error_code error;
    fs::rename(temp, path, error);
    if (error) throw CheckpointError(path.string(), "cannot rename the finished file into place: " + error.message());
    faults.pass("rename");
    fsync_path(folder, true, "the folder");
    faults.pass("dirsync");
  } catch (const data::DataError& e) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw CheckpointError(temp.string(), e.what());
  } catch (...) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw;
  }
}

// ---- reading ----

class FileReader {
 public:
  explicit FileReader(const fs::path& path) : path_(path.string()) {
    std::error_code error;
    if (!fs::exists(path, error)) throw CheckpointError(path_, "no such file");
    if (fs::is_directory(path, error)) throw CheckpointError(path_, "is a directory, not a checkpoint file");
    if (H5Fis_hdf5(path_.c_str()) <= 0)
      throw CheckpointError(path_, fmt::format("not a readable HDF5 file (truncated or corrupt?), {} bytes",
                                               fs::file_size(path, error)));
    file_ = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file_ < 0) throw CheckpointError(path_, "cannot open as HDF5 (truncated or corrupt?)");
  }
  ~FileReader() {
    if (file_ >= 0) H5Fclose(file_);
  }
  hid_t root() const { return file_; }
  const std::string& path() const { return path_; }

  bool exists(const std::string& name) const { return H5Lexists(file_, name.c_str(), H5P_DEFAULT) > 0; }

  hid_t group(const std::string& name) {
    if (!exists(name)) throw CheckpointError(path_, "the group " + name + " is missing");
    hid_t id = H5Gopen2(file_, name.c_str(), H5P_DEFAULT);
    if (id < 0) throw CheckpointError(path_, "cannot open the group " + name);
    groups_.push_back(std::make_unique<Handle>(id));
    return id;
  }

  // The names of the links directly below `group_name`, in name order.
  std::vector<std::string> children(const std::string& group_name) {
    const hid_t g = group(group_name);
    H5G_info_t info{};
    if (H5Gget_info(g, &info) < 0) throw CheckpointError(path_, "cannot list the group " + group_name);
    std::vector<std::string> names;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      const ssize_t length = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
      if (length < 0) throw CheckpointError(path_, "cannot list the group " + group_name);
      std::string name(size_t(length) + 1, '\0');
      H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
      name.resize(size_t(length));
      names.push_back(name);
    }
    return names;
  }

  // Reads a dataset of `element_bytes` elements and checks its checksum.
  template <typename T>
  std::vector<T> read(const std::string& name, hid_t memory_type, hid_t expected_class, Shape* shape) {
    if (!exists(name)) throw CheckpointError(path_, "the dataset " + name + " is missing");
    Handle set(H5Dopen2(file_, name.c_str(), H5P_DEFAULT));
    if (!set.ok()) throw CheckpointError(path_, "cannot open the dataset " + name);
    Handle type(H5Dget_type(set.get()));
    if (H5Tget_class(type.get()) != expected_class || H5Tget_size(type.get()) != sizeof(T))
      throw CheckpointError(path_, "the dataset " + name + " has an unexpected type");
    Handle space(H5Dget_space(set.get()));
    const int rank = H5Sget_simple_extent_ndims(space.get());
    std::vector<hsize_t> dims(size_t(std::max(rank, 0)));
    if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
    Shape s(dims.begin(), dims.end());
    std::vector<T> values(size_t(shape_numel(s)));
    if (!values.empty() && H5Dread(set.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0)
      throw CheckpointError(path_, "cannot read the dataset " + name + " (truncated file?)");
    const std::string expected = data::read_string_attribute(set.get(), "xxh64", path_);
    const std::string actual = data::checksum_string(checksum_of(values.data(), values.size() * sizeof(T)));
    if (expected != actual)
      throw CheckpointError(path_, fmt::format("checksum mismatch in dataset {} (stored {}, computed {}): the file is "
                                               "corrupt",
                                               name, expected, actual));
    if (shape) *shape = s;
    return values;
  }
  HostArray array(const std::string& name) {
    HostArray a;
    a.values = read<float>(name, H5T_NATIVE_FLOAT, H5T_FLOAT, &a.shape);
    return a;
  }
  std::vector<double> doubles(const std::string& name) {
    return read<double>(name, H5T_NATIVE_DOUBLE, H5T_FLOAT, nullptr);
  }

 private:
  std::string path_;
  hid_t file_ = -1;
  std::vector<std::unique_ptr<Handle>> groups_;
};

// Reads the whole file, checking the format and every checksum.
CheckpointContents read_contents(const fs::path& path) {
  data::QuietHdf5 quiet;
  FileReader r(path);
  const std::string& p = r.path();
  const hid_t root = r.root();
  const std::string format =
      data::has_attribute(root, "format") ? data::read_string_attribute(root, "format", p) : std::string();
  if (format != kCheckpointFormatName)
    throw CheckpointError(p, format.empty() ? "not an ssmtrain checkpoint (no format attribute)"
                                            : fmt::format("not an ssmtrain checkpoint (format '{}')", format));
  const uint64_t version = data::read_u64_attribute(root, "format_version", p);
  if (version != uint64_t(kCheckpointFormatVersion))
    throw CheckpointError(p, fmt::format("format version {} is not supported (this ssmtrain reads version {})",
                                         version, kCheckpointFormatVersion));
  CheckpointContents c;
  c.config_yaml = data::read_string_attribute(root, "config", p);
  c.layout = data::read_string_attribute(root, "layout", p);
  c.ssmtrain_version = data::read_string_attribute(root, "ssmtrain_version", p);
  c.commit = data::read_string_attribute(root, "commit", p);
  c.data.tokenizer_checksum = data::read_string_attribute(root, "tokenizer_checksum", p);
  c.data.shard_checksums = split_lines(data::read_string_attribute(root, "shard_checksums", p));
  const std::string metadata = metadata_text(c);
  if (data::read_string_attribute(root, "metadata_xxh64", p) !=
      data::checksum_string(checksum_of(metadata.data(), metadata.size())))
    throw CheckpointError(p, "checksum mismatch in the root attributes (config, layout, data fingerprint)");

  const hid_t optim = r.group("/optim");
  c.adamw_step = data::read_i64_attribute(optim, "step", p);
  const hid_t train = r.group("/train");
  TrainProgress& t = c.progress;
  t.step = data::read_i64_attribute(train, "step", p);
  t.tokens_seen = data::read_i64_attribute(train, "tokens_seen", p);
  t.loader.epoch = data::read_u64_attribute(train, "loader_epoch", p);
  t.loader.cursor = data::read_u64_attribute(train, "loader_cursor", p);
  t.rng_seed = data::read_u64_attribute(train, "rng_seed", p);
  t.rng_offset = data::read_u64_attribute(train, "rng_offset", p);
  t.skipped_steps = data::read_i64_attribute(train, "skipped_steps", p);
  t.elapsed_s = data::read_f64_attribute(train, "elapsed_s", p);
  const std::string state = state_text(t, c.adamw_step);
  if (data::read_string_attribute(train, "state_xxh64", p) !=
      data::checksum_string(checksum_of(state.data(), state.size())))
    throw CheckpointError(p, "checksum mismatch in the /train attributes");
  t.loss_steps = r.doubles("/train/loss_steps");
  t.losses = r.doubles("/train/losses");
  t.val_steps = r.doubles("/train/val_steps");
  t.val_losses = r.doubles("/train/val_losses");
  if (t.loss_steps.size() != t.losses.size() || t.val_steps.size() != t.val_losses.size())
    throw CheckpointError(p, "the loss curve datasets of /train differ in length");

  for (const std::string& name : r.children("/model")) c.model.emplace_back(name, r.array("/model/" + name));
  for (const std::string& name : r.children("/optim")) {
    CheckpointContents::Moments m{r.array("/optim/" + name + "/exp_avg"), r.array("/optim/" + name + "/exp_avg_sq")};
    const auto it = std::find_if(c.model.begin(), c.model.end(), [&](const auto& e) { return e.first == name; });
    if (it == c.model.end()) throw CheckpointError(p, "optimizer state for " + name + ", which /model does not have");
    if (m.exp_avg.shape != it->second.shape || m.exp_avg_sq.shape != it->second.shape)
      throw CheckpointError(p, "the optimizer state of " + name + " has another shape than the parameter");
    c.optim.emplace(name, std::move(m));
  }
  return c;
}

// The step of a file named step_<N>.h5, or -1.
int64_t step_of_file_name(const std::string& name) {
  if (name.size() < 9 || name.rfind("step_", 0) != 0 || name.substr(name.size() - 3) != ".h5") return -1;
  const std::string digits = name.substr(5, name.size() - 8);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return -1;
  return std::stoll(digits);
}

// step_*.h5 files of a checkpoint folder, newest first.
std::vector<std::pair<int64_t, fs::path>> checkpoint_files(const fs::path& folder) {
  std::vector<std::pair<int64_t, fs::path>> files;
  std::error_code error;
  if (!fs::is_directory(folder, error)) return files;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder, error)) {
    const int64_t step = step_of_file_name(entry.path().filename().string());
    if (step >= 0 && entry.is_regular_file(error)) files.emplace_back(step, entry.path());
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return files;
}

// The file `latest` names, or empty when it is missing or unreadable.
std::string read_latest(const fs::path& folder) {
  std::ifstream in(folder / "latest");
  std::string name;
  if (in) std::getline(in, name);
  return name;
}

}  // namespace

void write_checkpoint(const fs::path& path, const CheckpointContents& contents) {
  FaultPoints faults(contents.progress.step);
  write_checkpoint_file(path, contents, faults);
}

CheckpointContents read_checkpoint(const fs::path& path) {
  try {
    return read_contents(path);
  } catch (const data::DataError& e) {
    const std::string text = e.what(), prefix = path.string() + ": ";
    throw CheckpointError(path.string(), text.rfind(prefix, 0) == 0 ? text.substr(prefix.size()) : text);
  }
}

fs::path checkpoint_folder(const fs::path& run_dir) { return run_dir / "checkpoints"; }

std::string checkpoint_file_name(int64_t step) { return fmt::format("step_{:08d}.h5", step); }

fs::path resolve_checkpoint_path(const fs::path& path) {
  std::error_code error;
  if (!fs::exists(path, error)) throw CheckpointError(path.string(), "no such file or directory");
  if (!fs::is_directory(path, error)) return path;
  const fs::path folder = fs::exists(path / "latest") || path.filename() == "checkpoints" ? path : checkpoint_folder(path);
  if (!fs::is_directory(folder, error))
    throw CheckpointError(path.string(), "a directory without checkpoints/ (is it a run directory?)");
  const std::string latest = read_latest(folder);
  if (latest.empty()) throw CheckpointError((folder / "latest").string(), "missing or empty: no complete checkpoint");
  const fs::path file = folder / latest;
  if (!fs::exists(file, error))
    throw CheckpointError((folder / "latest").string(), "names " + latest + ", which does not exist");
  return file;
}

CheckpointReport inspect_checkpoint(const fs::path& path) {
  CheckpointReport report;
  report.path = path;
  try {
    const CheckpointContents c = read_checkpoint(path);
    report.ok = true;
    report.step = c.progress.step;
    report.tokens_seen = c.progress.tokens_seen;
    report.parameters = c.num_parameters();
    report.layout = c.layout;
  } catch (const CheckpointError& e) {
    report.problem = e.problem();
  }
  return report;
}

std::optional<fs::path> find_resume_checkpoint(const fs::path& run_dir,
                                               const std::function<void(const std::string&)>& warn) {
  const fs::path folder = checkpoint_folder(run_dir);
  const auto files = checkpoint_files(folder);
  if (files.empty()) return std::nullopt;
  const std::string latest = read_latest(folder);
  if (latest.empty())
    warn(fmt::format("{}: missing; looking for the newest checkpoint that verifies", (folder / "latest").string()));
  else if (!fs::exists(folder / latest))
    warn(fmt::format("{}: names {}, which does not exist; looking for the newest checkpoint that verifies",
                     (folder / "latest").string(), latest));
  for (const auto& [step, file] : files) {
    const CheckpointReport report = inspect_checkpoint(file);
    if (report.ok) return file;
    warn(fmt::format("skipping {}: {}", file.string(), report.problem));
  }
  return std::nullopt;
}

// ---- the background writer ----

struct CheckpointWriter::State {
  fs::path run_dir;
  int64_t keep = 1;
  std::mutex mutex;
  std::condition_variable changed;
  std::thread thread;
  bool busy = false;
  std::exception_ptr failure;
  fs::path last;
};

namespace {

// Leftovers of writes that a crash interrupted: PATH.tmp-<pid> files.
void remove_stale_temporaries(const fs::path& folder) {
  std::error_code error;
  for (const fs::directory_entry& entry : fs::directory_iterator(folder, error)) {
    if (entry.path().filename().string().find(".tmp-") != std::string::npos) fs::remove(entry.path(), error);
  }
}

// Writes one checkpoint of a run: the file, then `latest`, then pruning to the newest `keep`.
fs::path save_into_run(const fs::path& run_dir, int64_t keep, const CheckpointContents& contents) {
  const fs::path folder = checkpoint_folder(run_dir);
  std::error_code error;
  fs::create_directories(folder, error);
  if (error) throw CheckpointError(folder.string(), "cannot create the checkpoint folder: " + error.message());
  const int64_t step = contents.progress.step;
  const fs::path file = folder / checkpoint_file_name(step);
  FaultPoints faults(step);
  write_checkpoint_file(file, contents, faults);
  write_text_atomically(folder / "latest", file.filename().string() + "\n", &faults);
  // The file just written is complete (fsynced before its rename), so deleting older ones
  // never leaves the run without a checkpoint.
  const auto files = checkpoint_files(folder);
  for (size_t i = 0; i < files.size(); ++i) {
    if (files[i].first == step || int64_t(i) < keep) continue;
    fs::remove(files[i].second, error);
    faults.pass("prune");
  }
  return file;
}

}  // namespace

CheckpointWriter::CheckpointWriter(fs::path run_dir, int64_t keep) : state_(std::make_unique<State>()) {
  state_->run_dir = std::move(run_dir);
  state_->keep = std::max<int64_t>(1, keep);
  remove_stale_temporaries(checkpoint_folder(state_->run_dir));
}

CheckpointWriter::~CheckpointWriter() {
  try {
    wait();
  } catch (const std::exception& e) {
    fmt::print(stderr, "checkpoint: {}\n", e.what());
  }
}

void CheckpointWriter::save(CheckpointContents contents) {
  wait();
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->busy = true;
  State* s = state_.get();
  state_->thread = std::thread([s, contents = std::move(contents)] {
    std::exception_ptr failure;
    fs::path written;
    try {
      written = save_into_run(s->run_dir, s->keep, contents);
    } catch (...) {
      failure = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(s->mutex);
    s->busy = false;
    s->failure = failure;
    if (!failure) s->last = written;
    s->changed.notify_all();
  });
}

void CheckpointWriter::wait() {
  std::thread finished;
  {
    std::unique_lock<std::mutex> lock(state_->mutex);
    state_->changed.wait(lock, [&] { return !state_->busy; });
    finished = std::move(state_->thread);
  }
  if (finished.joinable()) finished.join();
  check();
}

void CheckpointWriter::check() {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (state_->failure) {
    std::exception_ptr failure = state_->failure;
    state_->failure = nullptr;
    std::rethrow_exception(failure);
  }
}

fs::path CheckpointWriter::last_written() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->last;
}

// ---- snapshots ----

void CheckpointStaging::reserve(const std::string& key, const Tensor& like) {
  if (buffers_.count(key)) return;
  Tensor buffer;
  if (like.device().is_cuda()) {
    try {
      buffer = Tensor::empty_pinned(like.shape(), DType::f32);
    } catch (const std::exception&) {
      buffer = Tensor::empty(like.shape(), DType::f32);  // too much to lock: pageable copies, slower
    }
  } else {
    buffer = Tensor::empty(like.shape(), DType::f32);
  }
  bytes_ += buffer.numel() * int64_t(sizeof(float));
  buffers_.emplace(key, buffer);
}

HostArray CheckpointStaging::stage(const std::string& key, const Tensor& tensor) {
  reserve(key, tensor);
  const Tensor& buffer = buffers_.at(key);
  if (buffer.shape() != tensor.shape())
    throw std::logic_error("CheckpointStaging: " + key + " changed shape from " + shape_str(buffer.shape()) + " to " +
                           shape_str(tensor.shape()));
  NoGradGuard no_grad;
  const Tensor source = tensor.dtype() == DType::f32 ? tensor.detach() : tensor.detach().to(DType::f32);
  if (source.device().is_cuda()) copy_into_async(buffer, source.contiguous());
  else copy_into(buffer, source);
  return HostArray{buffer.shape(), {}, buffer};
}

void CheckpointStaging::finish(Device device) {
  if (device.is_cuda()) synchronize(device.index);
}

// ---- models ----

std::vector<std::pair<std::string, HostArray>> model_arrays(LanguageModel& model) {
  std::vector<std::pair<std::string, HostArray>> arrays;
  for (const NamedParameter& p : model.named_parameters()) {
    const Tensor host = p.value->detach().to(Device::cpu()).to(DType::f32).contiguous();
    HostArray a;
    a.shape = host.shape();
    a.values.assign(host.data_ptr<float>(), host.data_ptr<float>() + host.numel());
    arrays.emplace_back(p.name, std::move(a));
  }
  return arrays;
}

void load_model_arrays(LanguageModel& model, const std::vector<std::pair<std::string, HostArray>>& arrays,
                       const std::string& source) {
  NoGradGuard no_grad;
  std::map<std::string, const HostArray*> by_name;
  for (const auto& [name, array] : arrays) by_name[name] = &array;
  const std::vector<NamedParameter> params = model.named_parameters();
  for (const NamedParameter& p : params) {
    const auto it = by_name.find(p.name);
    if (it == by_name.end()) throw CheckpointError(source, "has no parameter " + p.name + " (another model?)");
    if (it->second->shape != p.value->shape())
      throw CheckpointError(source, fmt::format("parameter {} has shape {}, the model's is {} (another model?)", p.name,
                                                shape_str(it->second->shape), shape_str(p.value->shape())));
    copy_into(*p.value, Tensor::from_vector(it->second->values, it->second->shape, DType::f32));
    by_name.erase(it);
  }
  if (!by_name.empty())
    throw CheckpointError(source, "has parameter " + by_name.begin()->first + ", which the model does not (another model?)");
}

LoadedModel load_model(const fs::path& path, Device device) {
  LoadedModel loaded;
  loaded.path = resolve_checkpoint_path(path);
  loaded.contents = read_checkpoint(loaded.path);
  loaded.contents.optim.clear();
  try {
    loaded.config = configs::parse_config(loaded.contents.config_yaml, loaded.path.string() + ":config");
  } catch (const std::exception& e) {
    throw CheckpointError(loaded.path.string(), std::string("its config does not load: ") + e.what());
  }
  loaded.model = std::make_unique<LanguageModel>(model_options(loaded.config.model), uint64_t(loaded.config.run.seed));
  load_model_arrays(*loaded.model, loaded.contents.model, loaded.path.string());
  loaded.model->to(device);
  loaded.contents.model.clear();  // the weights live in the model now
  return loaded;
}

}  // namespace ssmtrain
