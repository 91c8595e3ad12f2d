// `ssmtrain launch` end to end on the CPU (the built binary, the tcp backend that `auto` picks
// for a launcher's CPU ranks, the tiny Mamba-2 recipe shrunk by tests/train/run_fixture.h):
// 2 ranks give the metrics and final parameters of 1 rank with the same global batch, bit for
// bit; SIGTERM to the launcher writes one checkpoint and every rank exits 0; a rank that is
// killed, or one that stops answering, ends the job within distributed.timeout_s + 10 s with a
// message naming the operation; a rank that fails on its own makes the launcher exit non-zero
// naming it, with that rank's error lines shown "[rank N] ...".
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "autograd/device.h"
#include "distributed/communicator.h"
#include "tests/cli/binary.h"
#include "tests/train/run_fixture.h"
#include "train/checkpoint.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;
using testing::read_text;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string without_timings(const std::string& text) {
  static const std::regex timing(R"re(, "(ms|tokens_per_s|mfu|save_blocked_ms|comm_ms|comm_exposed_ms)": [0-9.e+-]+)re");
  return std::regex_replace(text, timing, "");
}

// `train <tiny mamba2> --set ...` as arguments: 8 sequences a step in micro-batches of 2.
std::vector<std::string> train_args(const fs::path& runs, const std::string& name,
                                    const std::vector<std::string>& extra) {
  std::vector<std::string> sets = testing::tiny_overrides("mamba2", runs, name, {"training.micro_batch=2"});
  sets.insert(sets.end(), extra.begin(), extra.end());
  std::vector<std::string> args = {"train", std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/mamba2.yaml"};
  for (const std::string& s : sets) args.insert(args.end(), {"--set", s});
  return args;
}

std::vector<std::string> launch_args(int ranks, const std::vector<std::string>& command,
                                     const std::vector<std::string>& launcher_options = {}) {
  std::vector<std::string> args = {"launch", "--nproc-per-node", std::to_string(ranks)};
  args.insert(args.end(), launcher_options.begin(), launcher_options.end());
  args.push_back("--");
  args.insert(args.end(), command.begin(), command.end());
  return args;
}

// The binary running in the background, stdout and stderr to dir/out.txt, dir/err.txt.
struct Background {
  pid_t pid = -1;
  fs::path dir;
  int status = -1;

  static Background start(const fs::path& dir, const std::vector<std::string>& args) {
    Background b;
    b.dir = dir;
    const std::string out = (dir / "out.txt").string(), err = (dir / "err.txt").string();
    b.pid = ::fork();
    if (b.pid == 0) {
      const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(o, STDOUT_FILENO);
      ::dup2(e, STDERR_FILENO);
      std::vector<std::string> copy = args;
      std::vector<char*> argv = {const_cast<char*>(SSMTRAIN_BINARY)};
      for (std::string& a : copy) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(SSMTRAIN_BINARY, argv.data());
      std::_Exit(127);
    }
    return b;
  }
  // True when it ended within `seconds` (status set).
  bool wait(double seconds) {
    const auto begin = Clock::now();
    while (seconds_since(begin) < seconds) {
      if (::waitpid(pid, &status, WNOHANG) == pid) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }
  int exit_code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
  std::string out() const { return read_text(dir / "out.txt"); }
  std::string err() const { return read_text(dir / "err.txt"); }
  // Ends it (and, through PR_SET_PDEATHSIG, its ranks) if a test left it running.
  ~Background() {
    if (pid > 0 && ::waitpid(pid, &status, WNOHANG) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
  }
};

// The pid of the launcher's child whose environment says RANK=rank; -1 when none (yet).
pid_t rank_pid(pid_t launcher, int rank) {
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string stat = read_text(entry.path() / "stat");
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream fields(stat.substr(paren + 2));
    std::string state;
    pid_t parent = 0;
    fields >> state >> parent;
    if (parent != launcher) continue;
    const std::string env = read_text(entry.path() / "environ");
    const std::string wanted = "RANK=" + std::to_string(rank);
    for (size_t at = 0; at < env.size(); at = env.find('\0', at) + 1) {
      if (env.compare(at, wanted.size() + 1, wanted + '\0') == 0) return pid_t(std::stoi(name));
      if (env.find('\0', at) == std::string::npos) break;
    }
  }
  return -1;
}

// Waits until the run's metrics.jsonl records a training step (the ranks are past the start).
bool wait_for_training(const fs::path& run_dir, double seconds) {
  const auto begin = Clock::now();
  while (seconds_since(begin) < seconds) {
    if (read_text(run_dir / "metrics.jsonl").find("\"loss\"") != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

int count_checkpoints(const fs::path& run_dir) {
  int n = 0;
  if (!fs::exists(checkpoint_folder(run_dir))) return 0;
  for (const auto& entry : fs::directory_iterator(checkpoint_folder(run_dir)))
    if (std::regex_match(entry.path().filename().string(), std::regex(R"(step_[0-9]+\.h5)"))) ++n;
  return n;
}

class Launch : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::prepared_corpus();  // before the clock of any test starts
    ::setenv("OMP_NUM_THREADS", "1", 1);
    ::setenv("CUDA_VISIBLE_DEVICES", "", 1);  // CPU ranks (tcp) also on a machine with a GPU
    ::unsetenv("SSMTRAIN_TEST_RANK_ARGS");
    dir_ = fs::temp_directory_path() / ("ssmtrain-launch-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    ::unsetenv("SSMTRAIN_TEST_RANK_ARGS");
    if (!HasFailure()) fs::remove_all(dir_);
  }
  fs::path dir_;
};

TEST_F(Launch, TwoRanksOverTcpEqualOneRankBitForBit) {
  const std::vector<std::string> steps = {"training.max_steps=10", "checkpoint.every=0"};
  const testing::CliResult one = testing::run_binary(dir_, train_args(dir_, "one", steps));
  ASSERT_EQ(one.status, 0) << one.err;
  fs::create_directories(dir_ / "launcher");
  const testing::CliResult two = testing::run_binary(dir_ / "launcher", launch_args(2, train_args(dir_, "two", steps)));
  ASSERT_EQ(two.status, 0) << two.out << two.err;
  EXPECT_NE(two.out.find("data parallel: 2 ranks (tcp backend), 4 rows of each global batch per rank"),
            std::string::npos)
      << two.out;
  EXPECT_EQ(two.err.find("[rank 1]"), std::string::npos) << "rank 1 said nothing worth showing:\n" << two.err;
  EXPECT_EQ(without_timings(read_text(dir_ / "one" / "metrics.jsonl")),
            without_timings(read_text(dir_ / "two" / "metrics.jsonl")));
  const CheckpointContents a = read_checkpoint(checkpoint_folder(dir_ / "one") / checkpoint_file_name(10));
  const CheckpointContents b = read_checkpoint(checkpoint_folder(dir_ / "two") / checkpoint_file_name(10));
  ASSERT_EQ(a.model.size(), b.model.size());
  for (size_t i = 0; i < a.model.size(); ++i) {
    const std::vector<float>&x = a.model[i].second.values, &y = b.model[i].second.values;
    ASSERT_EQ(x.size(), y.size()) << a.model[i].first;
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << a.model[i].first << " differs";
  }
}

// ZeRO-1 over tcp: each rank updates its own parameters; the run ends with 1 rank's bits.
TEST_F(Launch, TwoShardedRanksOverTcpEqualOneRankBitForBit) {
  const std::vector<std::string> steps = {"training.max_steps=6", "checkpoint.every=3"};
  const testing::CliResult one = testing::run_binary(dir_, train_args(dir_, "one", steps));
  ASSERT_EQ(one.status, 0) << one.err;
  std::vector<std::string> sharded = steps;
  sharded.push_back("distributed.shard_optimizer=true");
  fs::create_directories(dir_ / "launcher");
  const testing::CliResult two =
      testing::run_binary(dir_ / "launcher", launch_args(2, train_args(dir_, "zero", sharded)));
  ASSERT_EQ(two.status, 0) << two.out << two.err;
  std::smatch share;
  ASSERT_TRUE(std::regex_search(two.out, share, std::regex(R"(rank 0 updates ([0-9]+) of ([0-9]+) parameters)")))
      << two.out;
  EXPECT_GT(std::stoi(share[1]), 0);
  EXPECT_LT(std::stoi(share[1]), std::stoi(share[2])) << "rank 1 must own some parameters";
  EXPECT_EQ(without_timings(read_text(dir_ / "one" / "metrics.jsonl")),
            without_timings(read_text(dir_ / "zero" / "metrics.jsonl")));
  for (int64_t step : {3, 6}) {
    const CheckpointContents a = read_checkpoint(checkpoint_folder(dir_ / "one") / checkpoint_file_name(step));
    const CheckpointContents b = read_checkpoint(checkpoint_folder(dir_ / "zero") / checkpoint_file_name(step));
    ASSERT_EQ(a.model.size(), b.model.size());
    for (size_t i = 0; i < a.model.size(); ++i) {
      const std::vector<float>&x = a.model[i].second.values, &y = b.model[i].second.values;
      ASSERT_EQ(x.size(), y.size());
      EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << a.model[i].first;
    }
    ASSERT_EQ(a.optim.size(), b.optim.size());
    for (const auto& [name, m] : a.optim) {
      ASSERT_TRUE(b.optim.count(name)) << name;
      const auto& n = b.optim.at(name);
      EXPECT_EQ(m.exp_avg.values, n.exp_avg.values) << name;
      EXPECT_EQ(m.exp_avg_sq.values, n.exp_avg_sq.values) << name;
    }
  }
}

TEST_F(Launch, SigtermToTheLauncherSavesOneCheckpointAndEveryRankExitsZero) {
  Background job = Background::start(
      dir_, launch_args(2, train_args(dir_, "run", {"training.max_steps=100000", "checkpoint.every=0",
                                                     "logging.every=1"})));
  ASSERT_TRUE(wait_for_training(dir_ / "run", 40)) << job.err();
  ASSERT_EQ(::kill(job.pid, SIGTERM), 0);
  ASSERT_TRUE(job.wait(30)) << "the launcher did not end within 30 s of SIGTERM:\n" << job.err();
  EXPECT_EQ(job.exit_code(), 0) << job.out() << job.err();  // 0 only when every rank exited 0
  EXPECT_NE(job.out().find("stopped by SIGTERM after step"), std::string::npos) << job.out();
  EXPECT_EQ(job.err().find("failed"), std::string::npos) << job.err();
  EXPECT_EQ(count_checkpoints(dir_ / "run"), 1);
}

TEST_F(Launch, KilledRankEndsTheJobWithinTheTimeoutNamingTheOperation) {
  const double timeout = 5;
  Background job = Background::start(
      dir_, launch_args(2, train_args(dir_, "run", {"training.max_steps=100000", "checkpoint.every=0",
                                                     "logging.every=1", "distributed.timeout_s=5"})));
  ASSERT_TRUE(wait_for_training(dir_ / "run", 40)) << job.err();
  const pid_t rank1 = rank_pid(job.pid, 1);
  ASSERT_GT(rank1, 0);
  ASSERT_EQ(::kill(rank1, SIGKILL), 0);
  const auto killed = Clock::now();
  ASSERT_TRUE(job.wait(timeout + 10)) << "still running " << timeout + 10 << " s after the kill:\n" << job.err();
  EXPECT_LT(seconds_since(killed), timeout + 10);
  EXPECT_EQ(job.exit_code(), 1);
  const std::string err = job.err();
  EXPECT_NE(err.find("rank 1 (pid " + std::to_string(rank1) + ") was killed by signal 9 (KILL)"), std::string::npos)
      << err;
  EXPECT_TRUE(std::regex_search(err, std::regex("rank 0 of 2: [a-z_]+ at step [0-9]+ failed: rank 1 closed its "
                                                "connection")))
      << err;
}

TEST_F(Launch, RankThatStopsAnsweringTimesOutNamingTheOperationAndRank) {
  const double timeout = 3;
  Background job = Background::start(
      dir_, launch_args(2,
                        train_args(dir_, "run", {"training.max_steps=100000", "checkpoint.every=0", "logging.every=1",
                                                 "distributed.timeout_s=3"}),
                        {"--stop-timeout", "2"}));
  ASSERT_TRUE(wait_for_training(dir_ / "run", 40)) << job.err();
  const pid_t rank1 = rank_pid(job.pid, 1);
  ASSERT_GT(rank1, 0);
  ASSERT_EQ(::kill(rank1, SIGSTOP), 0);  // alive, connections open, silent
  const auto stopped = Clock::now();
  const bool ended = job.wait(timeout + 10);
  ::kill(rank1, SIGKILL);  // in case the launcher did not
  ASSERT_TRUE(ended) << "still running " << timeout + 10 << " s after rank 1 stopped:\n" << job.err();
  EXPECT_GE(seconds_since(stopped), timeout - 0.5);
  EXPECT_EQ(job.exit_code(), 1);
  const std::string out_and_err = job.out() + job.err();
  EXPECT_TRUE(std::regex_search(out_and_err, std::regex("rank 0 of 2: [a-z_]+ at step [0-9]+ failed: no answer from "
                                                        "rank 1 within distributed.timeout_s = 3 s")))
      << out_and_err;
  EXPECT_NE(out_and_err.find("ssmtrain launch: failed: rank 0 exited with status 1"), std::string::npos)
      << out_and_err;
}

TEST_F(Launch, OneRankFailingIsNamedWithItsErrorLines) {
  // Rank 1 alone sees a misspelt key: its recipe error has no "error" in it.
  ::setenv("SSMTRAIN_TEST_RANK_ARGS", "1:--set model.d_modle=64", 1);
  const auto begin = Clock::now();
  const testing::CliResult r = testing::run_binary(
      dir_, launch_args(2, train_args(dir_, "run", {"training.max_steps=10", "distributed.timeout_s=30"})));
  EXPECT_LT(seconds_since(begin), 30) << "rank 0 must be stopped, not left to its rendezvous timeout";
  EXPECT_EQ(r.status, 2) << r.err;  // the failed rank's status: a recipe error
  EXPECT_TRUE(std::regex_search(r.err, std::regex(R"(rank 1 \(pid [0-9]+\) exited with status 2)"))) << r.err;
  EXPECT_NE(r.err.find("[rank 1] --set: model.d_modle: unknown key; did you mean d_model?"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("ssmtrain launch: failed: rank 1 exited with status 2"), std::string::npos) << r.err;
}

// Pre-flight: before any data is read (the corpus path here does not exist), exit 2 naming the key.
TEST_F(Launch, NcclWithoutNcclOrAGpuIsARecipeErrorBeforeAnyData) {
  if (dist::nccl_available() && cuda_available()) GTEST_SKIP() << "this machine can run the nccl backend";
  std::vector<std::string> args = train_args(dir_, "run", {"distributed.backend=nccl", "data.train=no/such/corpus"});
  testing::CliResult r = testing::run_binary(dir_, args);
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("distributed.backend"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(dist::nccl_available() ? "no GPU is visible here" : "built without NCCL"), std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("no/such/corpus"), std::string::npos) << "the data was looked at first:\n" << r.err;
  // Through the launcher: every rank refuses the same way (rank 0's line passes through; rank
  // 1's shows too unless the launcher stopped it first); the launcher passes the status on.
  r = testing::run_binary(dir_, launch_args(2, args));
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find(dist::nccl_available() ? "no GPU is visible here" : "built without NCCL"), std::string::npos)
      << r.err;
}

TEST_F(Launch, UsageErrors) {
  testing::CliResult r = testing::run_binary(dir_, {"launch", "--nproc-per-node", "2", "--", "launch", "x"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("after -- give the subcommand each rank runs"), std::string::npos) << r.err;
  r = testing::run_binary(dir_, {"launch", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "2", "--",
                                 "train", "x.yaml"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--node-rank 2 is not below --nnodes 2"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ssmtrain
