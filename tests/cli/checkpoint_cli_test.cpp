// Checkpoints through the ssmtrain binary, as a cluster meets them: SIGKILL at twenty moments
// of a checkpoint write (SSMTRAIN_CHECKPOINT_FAULT) always leaves a checkpoint that verifies,
// which `resume: auto` picks, and the resumed run ends in the uninterrupted run's state;
// SIGTERM saves and exits 0, and the resumed run matches; `checkpoint info` reports and
// verifies; run files that cannot be written (a full disk, a directory in the way) stop the
// run with the file named; step lines reach a pipe as they are printed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/train/run_fixture.h"
#include "train/checkpoint.h"

extern char** environ;

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct Exit {
  bool signaled = false;
  int code = -1;  // exit status, or the signal number when signaled
  std::string out, err;
};

// A started `ssmtrain ARGS` with stdout and stderr in files of `dir`; `env` entries are added
// to the environment.
class Process {
 public:
  Process(const fs::path& dir, const std::vector<std::string>& args, const std::vector<std::string>& env = {})
      : out_(dir / "out.txt"), err_(dir / "err.txt") {
    std::vector<std::string> argv_text = {SSMTRAIN_BINARY};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_text) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_text;
    for (char** e = environ; *e; ++e)
      if (std::strncmp(*e, "SSMTRAIN_CHECKPOINT_FAULT=", 26) != 0) env_text.push_back(*e);
    env_text.insert(env_text.end(), env.begin(), env.end());
    std::vector<char*> envp;
    for (std::string& e : env_text) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), envp.data()) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  pid_t pid() const { return pid_; }
  std::string out() const { return read_text(out_); }
  Exit wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    Exit e;
    e.signaled = WIFSIGNALED(status);
    e.code = e.signaled ? WTERMSIG(status) : WEXITSTATUS(status);
    e.out = read_text(out_);
    e.err = read_text(err_);
    return e;
  }

 private:
  fs::path out_, err_;
  pid_t pid_ = -1;
};

class CheckpointCli : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = std::make_unique<data::testing::TempDir>("checkpoint-cli"); }
  fs::path dir() const { return dir_->str(); }
  fs::path runs() const { return dir() / "runs"; }

  // `ssmtrain train recipes/tiny/mamba2.yaml` shrunk, as --set arguments.
  std::vector<std::string> train_args(const std::string& name, const std::vector<std::string>& extra) const {
    std::vector<std::string> args = {"train", std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/mamba2.yaml"};
    for (const std::string& o : testing::tiny_overrides("mamba2", runs(), name, extra)) {
      args.push_back("--set");
      args.push_back(o);
    }
    return args;
  }
  Exit run(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) const {
    return Process(dir(), args, env).wait();
  }

  std::unique_ptr<data::testing::TempDir> dir_;
};

// The parameters and moments of two checkpoints are the same bits.
void expect_same_weights(const fs::path& a, const fs::path& b) {
  const CheckpointContents x = read_checkpoint(a), y = read_checkpoint(b);
  ASSERT_EQ(x.model.size(), y.model.size());
  for (size_t i = 0; i < x.model.size(); ++i)
    EXPECT_EQ(x.model[i].second.values, y.model[i].second.values) << x.model[i].first;
  for (const auto& [name, m] : x.optim) EXPECT_EQ(m.exp_avg_sq.values, y.optim.at(name).exp_avg_sq.values) << name;
  EXPECT_EQ(x.progress.losses, y.progress.losses);
}

TEST_F(CheckpointCli, KillDuringAWriteAlwaysLeavesACheckpointThatResumes) {
  const std::vector<std::string> run_keys = {"training.max_steps=6", "checkpoint.every=2", "checkpoint.keep=1",
                                             "training.eval_every=0"};
  ASSERT_EQ(run(train_args("full", run_keys)).code, 0);
  const fs::path full_final = runs() / "full" / "checkpoints" / checkpoint_file_name(6);
  // This model has 20 parameters: a write passes "dataset" 3 x 20 + 4 times. The points
  // span the whole write: creating, datasets early, middle and last, closing, fsync, rename,
  // the folder's fsync, `latest` and pruning; and a kill while creating the very first one.
  const std::vector<std::string> faults = {
      "create@4",      "dataset:1@4",  "dataset:2@4",   "dataset:3@4",   "dataset:10@4",   "dataset:21@4",
      "dataset:30@4",  "dataset:40@4", "dataset:50@4",  "dataset:60@4",  "dataset:64@4",   "close@4",
      "fsync@4",       "rename@4",     "dirsync@4",     "latest-write@4", "latest-fsync@4", "latest-rename@4",
      "prune@4",       "create@2"};
  for (size_t i = 0; i < faults.size(); ++i) {
    SCOPED_TRACE(faults[i]);
    const std::string name = "fault" + std::to_string(i);
    const Exit killed = run(train_args(name, run_keys), {"SSMTRAIN_CHECKPOINT_FAULT=" + faults[i]});
    ASSERT_TRUE(killed.signaled && killed.code == SIGKILL) << "not killed: " << killed.code << killed.err;
    const fs::path folder = runs() / name / "checkpoints";
    if (faults[i] != "create@2") {
      // Before the rename the previous checkpoint (step 2) is the newest; after it, step 4.
      const bool after_rename = faults[i] == "rename@4" || faults[i] == "dirsync@4" || faults[i].rfind("latest", 0) == 0 ||
                                faults[i] == "prune@4";
      const auto found = find_resume_checkpoint(runs() / name, [](const std::string&) {});
      ASSERT_TRUE(found.has_value());
      EXPECT_EQ(found->filename(), checkpoint_file_name(after_rename ? 4 : 2));
      const Exit info = run({"checkpoint", "info", found->string()});
      EXPECT_EQ(info.code, 0) << info.err;
      EXPECT_NE(info.out.find("every checksum verifies"), std::string::npos) << info.out;
    }
    const Exit resumed = run(train_args(name, run_keys));
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    if (faults[i] != "create@2") EXPECT_NE(resumed.out.find("resuming from"), std::string::npos) << resumed.out;
    expect_same_weights(full_final, folder / checkpoint_file_name(6));
    for (const auto& entry : fs::directory_iterator(folder))
      EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  }
}

// SIGTERM (Slurm's and Kubernetes' preemption) finishes the step, saves, exits 0; the same
// command resumes and ends where the uninterrupted run does.
TEST_F(CheckpointCli, SigtermSavesAndExitsZeroAndTheResumedRunMatches) {
  const std::vector<std::string> keys = {"training.max_steps=150", "checkpoint.every=0", "training.eval_every=0",
                                         "logging.every=1"};
  ASSERT_EQ(run(train_args("full", keys)).code, 0);
  Process p(dir(), train_args("stopped", keys));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (p.out().find("step      3 |") == std::string::npos && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(p.pid(), SIGTERM);
  const Exit stopped = p.wait();
  ASSERT_FALSE(stopped.signaled);
  EXPECT_EQ(stopped.code, 0) << stopped.err;
  ASSERT_NE(stopped.out.find("stopped by SIGTERM after step"), std::string::npos) << stopped.out;
  const CheckpointReport saved = inspect_checkpoint(resolve_checkpoint_path(runs() / "stopped"));
  ASSERT_TRUE(saved.ok) << saved.problem;
  EXPECT_LT(saved.step, 150);
  const Exit resumed = run(train_args("stopped", keys));
  ASSERT_EQ(resumed.code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("resuming from"), std::string::npos);
  expect_same_weights(runs() / "full" / "checkpoints" / checkpoint_file_name(150),
                      runs() / "stopped" / "checkpoints" / checkpoint_file_name(150));
}

TEST_F(CheckpointCli, CheckpointInfoReportsAndVerifies) {
  ASSERT_EQ(run(train_args("a", {"training.max_steps=3"})).code, 0);
  const Exit info = run({"checkpoint", "info", (runs() / "a").string()});
  ASSERT_EQ(info.code, 0) << info.err;
  EXPECT_NE(info.out.find("step 3, 768 tokens seen"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("layout MM / --"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("every checksum verifies"), std::string::npos) << info.out;
  const fs::path file = runs() / "a" / "checkpoints" / checkpoint_file_name(3);
  fs::resize_file(file, fs::file_size(file) - 100);
  const Exit bad = run({"checkpoint", "info", file.string()});
  EXPECT_EQ(bad.code, 1);
  EXPECT_EQ(bad.err.rfind(file.string() + ": ", 0), 0u) << bad.err;
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
}

// A full disk (metrics.jsonl is /dev/full) and a directory where config.yaml goes: exit 1 and
// the file named, never a silent exit 0.
TEST_F(CheckpointCli, RunFilesThatCannotBeWrittenStopTheRun) {
  fs::create_directories(runs() / "full-disk");
  fs::create_symlink("/dev/full", runs() / "full-disk" / "metrics.jsonl");
  const Exit full = run(train_args("full-disk", {"training.max_steps=3"}));
  EXPECT_EQ(full.code, 1) << full.out;
  EXPECT_NE(full.err.find("metrics.jsonl: cannot write: No space left on device"), std::string::npos) << full.err;

  fs::create_directories(runs() / "in-the-way" / "config.yaml");
  const Exit blocked = run(train_args("in-the-way", {"training.max_steps=3"}));
  EXPECT_EQ(blocked.code, 1) << blocked.out;
  EXPECT_NE(blocked.err.find("config.yaml: a directory is in the way"), std::string::npos) << blocked.err;

  fs::create_directories(runs() / "no-checkpoints");
  std::ofstream(runs() / "no-checkpoints" / "checkpoints") << "a file where the folder goes";
  const Exit no_folder = run(train_args("no-checkpoints", {"training.max_steps=4", "checkpoint.every=2"}));
  EXPECT_EQ(no_folder.code, 1) << no_folder.out;
  EXPECT_NE(no_folder.err.find("checkpoints: cannot create the checkpoint folder"), std::string::npos) << no_folder.err;
}

// Through a pipe the step lines arrive while the run goes on (stdout is not a terminal).
TEST_F(CheckpointCli, StepLinesReachAPipeAsTheyArePrinted) {
  const std::vector<std::string> args = train_args("piped", {"training.max_steps=100", "logging.every=1",
                                                             "training.eval_every=0", "checkpoint.every=0"});
  std::string command = "'" SSMTRAIN_BINARY "'";
  for (const std::string& a : args) command += " '" + a + "'";
  FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char line[4096];
  bool first_step_seen_early = false;
  while (fgets(line, sizeof(line), pipe)) {
    if (std::string(line).rfind("step      0 |", 0) == 0) {
      // The run is still going when its first line arrives: no checkpoint of the end yet.
      first_step_seen_early = !fs::exists(runs() / "piped" / "checkpoints" / checkpoint_file_name(100));
      break;
    }
  }
  while (fgets(line, sizeof(line), pipe)) {
  }
  EXPECT_EQ(pclose(pipe), 0);
  EXPECT_TRUE(first_step_seen_early);
}

}  // namespace
}  // namespace ssmtrain
