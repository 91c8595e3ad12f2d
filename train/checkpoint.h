// Checkpoints (DESIGN.md section 7): one HDF5 file per checkpoint ("ssmtrain-checkpoint" v1)
// holding the model and AdamW state in fp32 with global shapes, the loop state of /train, the
// resolved config and the data fingerprint, with an XXH64 checksum on every dataset. Files are
// written under a temporary name, fsynced and renamed, then `latest` is replaced atomically,
// so a crash at any moment leaves the previous checkpoint usable. docs/checkpoints.md has the
// layout; `h5ls -r` and `h5dump` read it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "autograd/device.h"
#include "autograd/tensor.h"
#include "configs/config.h"
#include "data/loader.h"
#include "layers/model.h"

namespace ssmtrain {

inline constexpr const char* kCheckpointFormatName = "ssmtrain-checkpoint";
inline constexpr int kCheckpointFormatVersion = 1;

// A checkpoint that cannot be used: what() is one line, "PATH: problem".
class CheckpointError : public std::runtime_error {
 public:
  CheckpointError(const std::string& path, const std::string& problem)
      : std::runtime_error(path + ": " + problem), path_(path), problem_(problem) {}
  const std::string& path() const { return path_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string path_, problem_;
};

// An fp32 array on the host with its global shape: its values in `values`, or, for a
// snapshot taken through CheckpointStaging, in the contiguous f32 CPU tensor `host`.
struct HostArray {
  Shape shape;
  std::vector<float> values;
  Tensor host;
  const float* data() const { return host.defined() ? host.data_ptr<float>() : values.data(); }
  int64_t size() const { return host.defined() ? host.numel() : int64_t(values.size()); }
};

// Page-locked host buffers for a run's snapshots, one per tensor, allocated up front and reused
// by every save: taking a snapshot is one device-to-host copy per tensor at the copy engine's
// speed (no allocation, no page faults). The arrays it hands out alias its buffers, so the next
// stage() must wait until the checkpoint written from them is on disk (CheckpointWriter::wait).
class CheckpointStaging {
 public:
  // Allocates a buffer for `key` of `like`'s shape (pinned memory where a GPU is present).
  void reserve(const std::string& key, const Tensor& like);
  // Queues the copy of `tensor` into the buffer of `key` (reserved on first use) and returns
  // the array; the values are there after finish().
  HostArray stage(const std::string& key, const Tensor& tensor);
  // Waits for the queued copies.
  void finish(Device device);
  int64_t bytes() const { return bytes_; }

 private:
  std::map<std::string, Tensor> buffers_;
  int64_t bytes_ = 0;
};

// The data a run trains on, as the manifest records it: resuming on other data is refused
// unless the recipe allows it (checkpoint.allow_data_change).
struct DataFingerprint {
  std::string tokenizer_checksum;           // "xxh64:..."
  std::vector<std::string> shard_checksums;  // of the train split, in manifest order
  bool operator==(const DataFingerprint&) const = default;
};

// The loop state of /train: everything beyond the weights that an exact resume needs.
struct TrainProgress {
  int64_t step = 0;         // optimizer steps completed; the next step to run
  int64_t tokens_seen = 0;  // training tokens consumed, all ranks together
  data::LoaderState loader;  // the train loader after the last completed step
  uint64_t rng_seed = 0;     // the trainer's Philox generator (autograd/rng.h)
  uint64_t rng_offset = 0;
  int64_t skipped_steps = 0;  // steps skipped for a non-finite loss (training.skip_nonfinite_steps)
  double elapsed_s = 0;       // training wall time before this checkpoint (ETA, tokens/s)
  // The loss curve so far, so that loss_curve.svg and the summary continue: (step, loss) of
  // every step and (step, loss) of every validation.
  std::vector<double> loss_steps, losses;
  std::vector<double> val_steps, val_losses;
};

// Everything a checkpoint file holds.
struct CheckpointContents {
  std::string config_yaml;  // the resolved config (configs::dump_config)
  std::string layout;       // e.g. "MMMMAMMM/-E-E-E-E"
  std::string ssmtrain_version, commit;
  DataFingerprint data;
  // /model/<dotted name>, in the model's parameter order.
  std::vector<std::pair<std::string, HostArray>> model;
  // /optim/<dotted name>/{exp_avg, exp_avg_sq}; empty for a checkpoint without optimizer state
  // (an import from HuggingFace).
  struct Moments {
    HostArray exp_avg, exp_avg_sq;
  };
  std::map<std::string, Moments> optim;
  int64_t adamw_step = 0;
  TrainProgress progress;

  int64_t num_parameters() const;
};

// ---- files ----

// Writes `contents` to `path` atomically: PATH.tmp-<pid> in the same folder, flushed and
// fsynced, renamed to `path`, then the folder fsynced. Throws CheckpointError naming the path
// (disk full, read-only folder, ...); the temporary file is removed and nothing else changes.
void write_checkpoint(const std::filesystem::path& path, const CheckpointContents& contents);

// Reads and verifies a checkpoint file: format name and version, every dataset's checksum,
// shapes that match between model and optimizer state. Throws CheckpointError naming the
// file and the problem (truncated, not HDF5, wrong format, checksum mismatch in DATASET, ...).
CheckpointContents read_checkpoint(const std::filesystem::path& path);

// A checkpoint PATH as the command line takes it: a checkpoint file, a run directory or its
// checkpoints/ folder (whose `latest` names the file). Throws CheckpointError.
std::filesystem::path resolve_checkpoint_path(const std::filesystem::path& path);

// What `ssmtrain checkpoint info` prints and `resume: auto` decides on.
struct CheckpointReport {
  std::filesystem::path path;
  bool ok = false;
  std::string problem;  // when !ok
  int64_t step = 0, tokens_seen = 0, parameters = 0;
  std::string layout;
};
CheckpointReport inspect_checkpoint(const std::filesystem::path& path);

// ---- the checkpoints/ folder of a run ----

// The folder of a run's checkpoints: step_<NNNNNNNN>.h5 files and `latest`, a one-line text
// file naming the newest complete one.
std::filesystem::path checkpoint_folder(const std::filesystem::path& run_dir);
std::string checkpoint_file_name(int64_t step);  // "step_00000100.h5"

// The newest checkpoint of `run_dir` that verifies, or nullopt when it has none. Each one it
// skips (corrupt, truncated, incomplete, a `latest` that is missing or dangling) is reported
// through `warn` as one line naming the file and the problem.
std::optional<std::filesystem::path> find_resume_checkpoint(const std::filesystem::path& run_dir,
                                                            const std::function<void(const std::string&)>& warn);

// Saves a run's checkpoints: the caller hands over host copies taken at a step boundary, a
// background thread writes the file, replaces `latest` and deletes all but the newest `keep`
// (never the only one that verifies). A second save waits for the first. A failed write is
// kept and rethrown (CheckpointError) by the next save(), wait() or check(); the previous
// checkpoint stays.
class CheckpointWriter {
 public:
  CheckpointWriter(std::filesystem::path run_dir, int64_t keep);
  ~CheckpointWriter();  // waits for a write in flight (errors are printed, not thrown)
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Queues contents for step contents.progress.step; returns once the write has started.
  void save(CheckpointContents contents);
  // Blocks until no write is in flight; rethrows a failed write's error.
  void wait();
  // Rethrows a failed write's error without waiting.
  void check();
  // The newest file this writer completed (empty before the first).
  std::filesystem::path last_written() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// ---- models from checkpoints, for evaluation and export ----

struct LoadedModel {
  configs::Config config;  // parsed from the checkpoint's config text
  std::unique_ptr<LanguageModel> model;  // on `device`, weights from the checkpoint
  CheckpointContents contents;           // the rest of the file (optimizer state dropped)
  std::filesystem::path path;            // the file it came from
};

// Reads a checkpoint (resolve_checkpoint_path rules), builds the model of its config on
// `device` and loads its weights. Throws CheckpointError for a file that does not verify or
// whose parameters do not match the model (naming the parameter).
LoadedModel load_model(const std::filesystem::path& path, Device device);

// Host fp32 copies of a model's parameters (and back). load throws CheckpointError naming
// a parameter that is missing, extra or of another shape.
std::vector<std::pair<std::string, HostArray>> model_arrays(LanguageModel& model);
void load_model_arrays(LanguageModel& model, const std::vector<std::pair<std::string, HostArray>>& arrays,
                       const std::string& source);

}  // namespace ssmtrain
