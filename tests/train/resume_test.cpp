// Resume is exact: for the tiny Mamba-1, Mamba-2 and Jamba (MoE) recipes, a run continued from
// its step-10 checkpoint to step 20 ends with the same bits as the uninterrupted 20-step run
// (every logged loss, every parameter, every AdamW moment), also with 3 micro-batches per step
// and across an epoch boundary of the loader; metrics.jsonl continues without duplicated or
// missing steps. And what must not resume does not: another model, other data, a run
// directory that holds another run (unless run.overwrite, or it has no checkpoint at all); a diverging run stops naming its step.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "data/loader.h"
#include "tests/train/run_fixture.h"
#include "train/checkpoint.h"
#include "train/resume.h"
#include "train/run_files.h"
#include "train/trainer.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;
using testing::tiny_config;

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// metrics.jsonl without what depends on the clock.
std::string without_timings(const std::string& text) {
  static const std::regex timing(R"re(, "(ms|tokens_per_s|mfu|save_blocked_ms)": [0-9.e+-]+)re");
  return std::regex_replace(text, timing, "");
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what << " differs";
}

// Two checkpoints hold the same training state bit for bit.
void expect_same_state(const fs::path& a_path, const fs::path& b_path) {
  const CheckpointContents a = read_checkpoint(a_path), b = read_checkpoint(b_path);
  ASSERT_EQ(a.model.size(), b.model.size());
  for (size_t i = 0; i < a.model.size(); ++i) {
    ASSERT_EQ(a.model[i].first, b.model[i].first);
    EXPECT_EQ(a.model[i].second.shape, b.model[i].second.shape);
    expect_same_bits(a.model[i].second.values, b.model[i].second.values, "parameter " + a.model[i].first);
  }
  ASSERT_EQ(a.optim.size(), b.optim.size());
  for (const auto& [name, m] : a.optim) {
    ASSERT_TRUE(b.optim.count(name)) << name;
    expect_same_bits(m.exp_avg.values, b.optim.at(name).exp_avg.values, "exp_avg of " + name);
    expect_same_bits(m.exp_avg_sq.values, b.optim.at(name).exp_avg_sq.values, "exp_avg_sq of " + name);
  }
  EXPECT_EQ(a.adamw_step, b.adamw_step);
  EXPECT_EQ(a.progress.step, b.progress.step);
  EXPECT_EQ(a.progress.tokens_seen, b.progress.tokens_seen);
  EXPECT_EQ(a.progress.loader, b.progress.loader);
  EXPECT_EQ(a.progress.loss_steps, b.progress.loss_steps);
  EXPECT_EQ(a.progress.losses, b.progress.losses);  // exact doubles
  EXPECT_EQ(a.progress.val_steps, b.progress.val_steps);
  EXPECT_EQ(a.progress.val_losses, b.progress.val_losses);
}

// The step of the first row of metrics.jsonl marked skipped.
int64_t first_skipped_step(const std::string& metrics) {
  std::istringstream in(metrics);
  for (std::string line; std::getline(in, line);)
    if (line.find("\"skipped\"") != std::string::npos) return std::stoll(line.substr(line.find(':') + 1));
  return -1;
}

class ResumeTest : public ::testing::Test {
 protected:
  void SetUp() override { runs_ = std::make_unique<data::testing::TempDir>("resume"); }
  fs::path runs() const { return runs_->str(); }
  fs::path checkpoint(const std::string& run, int64_t step) const {
    return runs() / run / "checkpoints" / checkpoint_file_name(step);
  }

  // The uninterrupted 20-step run "full", then a run "resumed" from its step-10 checkpoint in
  // another directory, and a copy of "full" cut back to step 10 and resumed in place (the
  // usual case: metrics.jsonl continues). All three end in the same state.
  void check_stop_and_resume(const std::string& recipe, std::vector<std::string> extra = {}) {
    extra.insert(extra.end(), {"training.max_steps=20", "checkpoint.every=10", "checkpoint.keep=5"});
    const TrainSummary full = train(tiny_config(recipe, runs(), "full", extra));
    ASSERT_EQ(full.steps, 20);
    ASSERT_TRUE(fs::exists(checkpoint("full", 10)));

    std::vector<std::string> resumed_extra = extra;
    resumed_extra.push_back("checkpoint.resume=" + checkpoint("full", 10).string());
    const TrainSummary resumed = train(tiny_config(recipe, runs(), "resumed", resumed_extra));
    EXPECT_EQ(resumed.resumed_from, 10);
    EXPECT_EQ(resumed.final_loss, full.final_loss);
    EXPECT_EQ(resumed.final_val_loss, full.final_val_loss);
    expect_same_state(checkpoint("full", 20), checkpoint("resumed", 20));

    // In place: the run directory as it was after step 10 (the later checkpoint never written).
    fs::copy(runs() / "full", runs() / "cut", fs::copy_options::recursive);
    fs::remove(checkpoint("cut", 20));
    std::ofstream(runs() / "cut" / "checkpoints" / "latest") << checkpoint_file_name(10) << "\n";
    const TrainSummary in_place = train(tiny_config(recipe, runs(), "cut", extra));
    EXPECT_EQ(in_place.resumed_from, 10);
    expect_same_state(checkpoint("full", 20), checkpoint("cut", 20));
    EXPECT_EQ(without_timings(read_text(runs() / "cut" / "metrics.jsonl")),
              without_timings(read_text(runs() / "full" / "metrics.jsonl")));
  }

  std::unique_ptr<data::testing::TempDir> runs_;
};

TEST_F(ResumeTest, Mamba1IsBitExact) { check_stop_and_resume("mamba1"); }
TEST_F(ResumeTest, Mamba2IsBitExact) { check_stop_and_resume("mamba2"); }
TEST_F(ResumeTest, JambaWithMoeIsBitExact) { check_stop_and_resume("jamba", {"training.max_steps=20"}); }

TEST_F(ResumeTest, ThreeMicroBatchesPerStepIsBitExact) {
  check_stop_and_resume("mamba2", {"training.global_batch_tokens=384"});  // 3 x 4 x 32
}

// The batch size is chosen so that the loader's first epoch ends between steps 10 and 20.
TEST_F(ResumeTest, AcrossAnEpochBoundaryIsBitExact) {
  data::LoaderOptions probe;
  probe.data_dir = testing::prepared_corpus();
  probe.seq_len = 32;
  probe.global_batch = 1;
  probe.prefetch = 0;
  const int64_t windows = int64_t(data::TokenLoader(probe).windows_per_epoch());
  const int64_t micro_batch = windows / 15 + 1;  // 15 steps of one micro-batch: past one epoch at step ~15
  const std::string batch_tokens = std::to_string(micro_batch * 32);
  check_stop_and_resume("mamba1", {"training.micro_batch=" + std::to_string(micro_batch),
                                   "training.global_batch_tokens=" + batch_tokens});
  EXPECT_EQ(read_checkpoint(checkpoint("full", 10)).progress.loader.epoch, 0u);
  EXPECT_EQ(read_checkpoint(checkpoint("full", 20)).progress.loader.epoch, 1u);
}

// Steps, evaluation and logging cadence may change on resume: a run continued to 30 steps
// with another logging.every goes on from the checkpoint.
TEST_F(ResumeTest, LongerRunContinuesFromTheCheckpoint) {
  train(tiny_config("mamba2", runs(), "a", {"training.max_steps=10", "checkpoint.every=0"}));
  const TrainSummary more =
      train(tiny_config("mamba2", runs(), "a", {"training.max_steps=14", "logging.every=1", "checkpoint.every=0"}));
  EXPECT_EQ(more.resumed_from, 10);
  EXPECT_EQ(more.steps, 14);
  const CheckpointContents c = read_checkpoint(checkpoint("a", 14));
  EXPECT_EQ(c.progress.losses.size(), 14u);
  const TrainSummary again = train(tiny_config("mamba2", runs(), "a", {"training.max_steps=14"}));
  EXPECT_TRUE(again.already_complete);
}

TEST_F(ResumeTest, AnotherModelIsRefusedNamingTheKey) {
  train(tiny_config("mamba2", runs(), "a", {"training.max_steps=3"}));
  try {
    train(tiny_config("mamba2", runs(), "a", {"training.max_steps=6", "model.mamba2.d_state=32"}));
    FAIL() << "resumed a checkpoint of another model";
  } catch (const ResumeError& e) {
    EXPECT_NE(std::string(e.what()).find("model.mamba2.d_state: 16 -> 32"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(checkpoint_file_name(3)), std::string::npos) << e.what();
  }
  EXPECT_THROW(train(tiny_config("mamba2", runs(), "a", {"training.max_steps=6", "training.seq_len=16"})),
               ResumeError);
}

TEST_F(ResumeTest, OtherDataIsRefusedUnlessAllowed) {
  train(tiny_config("mamba2", runs(), "a", {"training.max_steps=3"}));
  CheckpointContents c = read_checkpoint(checkpoint("a", 3));
  const configs::Config now = tiny_config("mamba2", runs(), "a", {"training.max_steps=6"});
  DataFingerprint other = c.data;
  other.shard_checksums.back() = "xxh64:0000000000000000";
  try {
    check_resume("ckpt.h5", c, now, read_checkpoint(checkpoint("a", 3)).layout, other);
    FAIL() << "resumed on other data";
  } catch (const ResumeError& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint.allow_data_change=true"), std::string::npos) << e.what();
  }
  configs::Config allowed = now;
  allowed.checkpoint.allow_data_change = true;
  EXPECT_NO_THROW(check_resume("ckpt.h5", c, allowed, c.layout, other));
}

TEST_F(ResumeTest, ARunDirectoryIsNotOverwrittenSilently) {
  train(tiny_config("mamba2", runs(), "a", {"training.max_steps=3"}));
  try {
    train(tiny_config("mamba2", runs(), "a", {"training.max_steps=3", "checkpoint.resume=none"}));
    FAIL() << "started afresh over an existing run";
  } catch (const TrainError& e) {
    EXPECT_NE(std::string(e.what()).find("run.overwrite=true"), std::string::npos) << e.what();
  }
  // Checkpoints that are all damaged: not discarded without run.overwrite.
  const fs::path only = checkpoint("a", 3);
  fs::resize_file(only, fs::file_size(only) / 2);
  EXPECT_THROW(train(tiny_config("mamba2", runs(), "a", {"training.max_steps=3"})), TrainError);
  // An attempt that stopped before its first checkpoint: auto starts afresh (nothing to lose).
  fs::remove_all(runs() / "a" / "checkpoints");
  EXPECT_EQ(train(tiny_config("mamba2", runs(), "a", {"training.max_steps=3"})).resumed_from, -1);
  const TrainSummary fresh = train(tiny_config("mamba2", runs(), "a", {"training.max_steps=3", "run.overwrite=true"}));
  EXPECT_EQ(fresh.resumed_from, -1);
  EXPECT_EQ(fresh.steps, 3);
}

// A learning rate of 1e6 makes the loss non-finite within a few steps: the run stops naming
// the step, metrics.jsonl stays JSON (null, never a bare nan), and skip_nonfinite_steps skips
// that many such steps first.
TEST_F(ResumeTest, DivergenceStopsTheRunNamingTheStep) {
  const auto run = [&](const std::string& name, int skip) -> std::string {
    try {
      train(tiny_config("mamba2", runs(), name,
                        {"training.max_steps=30", "optim.lr=1e6", "optim.grad_clip=0", "schedule.warmup_steps=0",
                         "checkpoint.every=1", "training.skip_nonfinite_steps=" + std::to_string(skip)}));
    } catch (const TrainError& e) {
      return e.what();
    }
    return "";
  };
  const std::string stopped = run("a", 0);
  ASSERT_NE(stopped.find("training diverged"), std::string::npos) << stopped;
  EXPECT_NE(stopped.find("the last good checkpoint is"), std::string::npos) << stopped;
  const std::string metrics = read_text(runs() / "a" / "metrics.jsonl");
  EXPECT_EQ(metrics.find("nan"), std::string::npos) << metrics;
  EXPECT_EQ(metrics.find("inf"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"skipped\": true"), std::string::npos) << metrics;

  const std::string skipped = run("b", 2);
  ASSERT_NE(skipped.find("training diverged"), std::string::npos) << skipped;
  const std::string b = read_text(runs() / "b" / "metrics.jsonl");
  size_t count = 0;
  for (size_t at = b.find("\"skipped\""); at != std::string::npos; at = b.find("\"skipped\"", at + 1)) ++count;
  EXPECT_EQ(count, 3u);  // two skipped, the third stops the run
  // Step numbers: the stop names the step after the two skipped ones.
  const int64_t stop_step = first_skipped_step(metrics) + 2;
  EXPECT_NE(skipped.find("step " + std::to_string(stop_step) + ":"), std::string::npos) << skipped;
}

}  // namespace
}  // namespace ssmtrain
