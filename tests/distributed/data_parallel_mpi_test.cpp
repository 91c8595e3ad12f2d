// Data-parallel training through the ssmtrain binary under mpirun (--oversubscribe, one
// OpenMP thread per rank): for the tiny Mamba-2 and Jamba recipes, 10 steps on 2 ranks end
// with the same bits as on 1 rank with the same global batch (every parameter and AdamW
// moment; metrics.jsonl equal up to timings), and a checkpoint saved on 2 ranks resumes on 1
// and on 4 ranks and ends exactly like the uninterrupted 2-rank run. Global batch: 8 sequences
// in micro-batches of 2, i.e. 4 micro-batches on 1 rank, 2 per rank on 2, 1 per rank on 4:
// every case adds the same pairs of gradients (distributed/ordered_sum.h). The same with the
// optimizer state sharded (ZeRO-1). Also: ranks that disagree on the recipe refuse to start.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "tests/train/run_fixture.h"
#include "train/checkpoint.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string without_timings(const std::string& text) {
  static const std::regex timing(R"re(, "(ms|tokens_per_s|mfu|save_blocked_ms|comm_ms|comm_exposed_ms)": [0-9.e+-]+)re");
  return std::regex_replace(text, timing, "");
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

struct Result {
  int status = -1;
  std::string output;
};

// `ssmtrain train RECIPE --set ...` on `ranks` ranks (0: without mpirun), bounded in time.
Result train(const fs::path& runs, const std::string& recipe, const std::string& name, int ranks,
             const std::vector<std::string>& extra = {}, const std::string& per_rank_prefix = "") {
  std::vector<std::string> sets = testing::tiny_overrides(
      recipe, runs, name, {"training.micro_batch=2", "training.max_steps=10", "checkpoint.every=5", "checkpoint.keep=5"});
  sets.insert(sets.end(), extra.begin(), extra.end());
  // The CPU's ordered reductions are what these compare: no GPU even on a machine with one.
  std::string command = "CUDA_VISIBLE_DEVICES= OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                        "OMP_NUM_THREADS=1 timeout -s KILL 300 ";
  if (ranks > 0) command += "mpirun -np " + std::to_string(ranks) + " --oversubscribe " + per_rank_prefix;
  command += std::string(SSMTRAIN_BINARY) + " train " + SSMTRAIN_SOURCE_DIR + "/recipes/tiny/" + recipe + ".yaml";
  for (const std::string& s : sets) command += " --set " + quoted(s);
  const fs::path log = runs / (name + ".log");
  command += " > " + log.string() + " 2>&1";
  Result r;
  r.status = std::system(command.c_str());
  r.output = read_text(log);
  return r;
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what << " differs";
}

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
  EXPECT_EQ(a.progress.loader.epoch, b.progress.loader.epoch);
  EXPECT_EQ(a.progress.loader.cursor, b.progress.loader.cursor);
  EXPECT_EQ(a.progress.losses, b.progress.losses);
}

fs::path checkpoint_at(const fs::path& runs, const std::string& name, int64_t step) {
  return checkpoint_folder(runs / name) / checkpoint_file_name(step);
}

class DataParallel : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    runs_ = fs::temp_directory_path() / ("ssmtrain-dp-" + std::to_string(::getpid()) + "-" + GetParam());
    fs::remove_all(runs_);
    fs::create_directories(runs_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(runs_);
  }
  fs::path runs_;
};

TEST_P(DataParallel, TwoRanksEqualOneAndResumeOnOneAndFour) {
  const std::string recipe = GetParam();
  const Result one = train(runs_, recipe, "one", 0);
  ASSERT_EQ(one.status, 0) << one.output;
  const Result two = train(runs_, recipe, "two", 2);
  ASSERT_EQ(two.status, 0) << two.output;
  EXPECT_NE(two.output.find("data parallel: 2 ranks (mpi backend), 4 rows of each global batch per rank"),
            std::string::npos)
      << two.output;
  // Rank 0 alone prints: one start line.
  EXPECT_EQ(std::count(two.output.begin(), two.output.end(), '\n'),
            std::count(one.output.begin(), one.output.end(), '\n') + 1)
      << two.output;
  expect_same_state(checkpoint_at(runs_, "one", 10), checkpoint_at(runs_, "two", 10));
  expect_same_state(checkpoint_at(runs_, "one", 5), checkpoint_at(runs_, "two", 5));
  EXPECT_EQ(without_timings(read_text(runs_ / "one" / "metrics.jsonl")),
            without_timings(read_text(runs_ / "two" / "metrics.jsonl")));
  // Communication timing (comm_ms, comm_exposed_ms) on 2 ranks only.
  EXPECT_EQ(read_text(runs_ / "one" / "metrics.jsonl").find("comm_ms"), std::string::npos);
  const std::string two_metrics = read_text(runs_ / "two" / "metrics.jsonl");
  EXPECT_TRUE(std::regex_search(two_metrics, std::regex(R"re("comm_ms": [0-9.]+, "comm_exposed_ms": [0-9.]+\})re"))) << two_metrics;

  const std::string saved = checkpoint_at(runs_, "two", 5).string();
  for (int ranks : {1, 4}) {
    const std::string name = "resumed-on-" + std::to_string(ranks);
    const Result resumed = train(runs_, recipe, name, ranks == 1 ? 0 : ranks, {"checkpoint.resume=" + saved});
    ASSERT_EQ(resumed.status, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resuming from " + saved), std::string::npos) << resumed.output;
    expect_same_state(checkpoint_at(runs_, "two", 10), checkpoint_at(runs_, name, 10));
  }
}

// ZeRO-1: 2 sharded ranks end with the bits of 1 rank (parameters, every AdamW moment gathered
// into the checkpoint with global shapes, metrics); its checkpoint resumes sharded on 4 ranks
// and ends like the uninterrupted run.
TEST_P(DataParallel, ShardedOptimizerEqualsUnshardedAndResumesOnFour) {
  const std::string recipe = GetParam();
  const Result one = train(runs_, recipe, "one", 0);
  ASSERT_EQ(one.status, 0) << one.output;
  const Result zero = train(runs_, recipe, "zero", 2, {"distributed.shard_optimizer=true"});
  ASSERT_EQ(zero.status, 0) << zero.output;
  EXPECT_NE(zero.output.find("optimizer state sharded (ZeRO-1"), std::string::npos) << zero.output;
  expect_same_state(checkpoint_at(runs_, "one", 5), checkpoint_at(runs_, "zero", 5));
  expect_same_state(checkpoint_at(runs_, "one", 10), checkpoint_at(runs_, "zero", 10));
  EXPECT_EQ(without_timings(read_text(runs_ / "one" / "metrics.jsonl")),
            without_timings(read_text(runs_ / "zero" / "metrics.jsonl")));
  const std::string saved = checkpoint_at(runs_, "zero", 5).string();
  const Result resumed =
      train(runs_, recipe, "zero-on-4", 4, {"checkpoint.resume=" + saved, "distributed.shard_optimizer=true"});
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  expect_same_state(checkpoint_at(runs_, "one", 10), checkpoint_at(runs_, "zero-on-4", 10));
}

INSTANTIATE_TEST_SUITE_P(TinyRecipes, DataParallel, ::testing::Values("mamba2", "jamba"));

TEST(DataParallelStart, RanksThatDisagreeOnTheRecipeRefuse) {
  const fs::path runs = fs::temp_directory_path() / ("ssmtrain-dp-disagree-" + std::to_string(::getpid()));
  fs::remove_all(runs);
  fs::create_directories(runs);
  // Rank 1 gets another learning rate through the environment of its own command line.
  const fs::path wrapper = runs / "rank_wrapper.sh";
  std::ofstream(wrapper) << "#!/bin/sh\nif [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then exec \"$@\" --set optim.lr=0.5; fi\nexec \"$@\"\n";
  fs::permissions(wrapper, fs::perms::owner_all);
  const Result r = train(runs, "mamba2", "disagree", 2, {}, wrapper.string() + " ");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("rank 1 does not agree with rank 0 on the resolved config"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("lr: 0.5"), std::string::npos) << r.output;
  fs::remove_all(runs);
}

}  // namespace
}  // namespace ssmtrain
