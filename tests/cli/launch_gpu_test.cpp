// `ssmtrain launch --nproc-per-node 1 -- train` on one GPU: the rank runs the nccl backend
// (world size 1) and its losses are the bits of the same run without the launcher (backend
// single). The tiny Mamba-2 recipe, shrunk to shapes the GPU kernels take, in fp32.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include "autograd/device.h"
#include "distributed/communicator.h"
#include "tests/cli/binary.h"
#include "tests/train/run_fixture.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

std::string without_timings(const std::string& text) {
  static const std::regex timing(R"re(, "(ms|tokens_per_s|mfu|save_blocked_ms|comm_ms|comm_exposed_ms)": [0-9.e+-]+)re");
  return std::regex_replace(text, timing, "");
}

std::vector<std::string> train_args(const fs::path& runs, const std::string& name) {
  const std::vector<std::string> sets = testing::tiny_overrides(
      "mamba2", runs, name,
      {"training.micro_batch=2", "training.max_steps=10", "checkpoint.every=0", "model.mamba2.head_dim=32",
       "model.mamba2.chunk_size=64", "model.mamba2.d_state=32"});
  std::vector<std::string> args = {"train", std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/mamba2.yaml"};
  for (const std::string& s : sets) args.insert(args.end(), {"--set", s});
  return args;
}

TEST(LaunchGpu, OneRankThroughTheLauncherRunsNcclAndEqualsThePlainRun) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU";
  if (!dist::nccl_available()) GTEST_SKIP() << "built without NCCL";
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain-launch-gpu-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const testing::CliResult plain = testing::run_binary(dir, train_args(dir, "plain"));
  ASSERT_EQ(plain.status, 0) << plain.out << plain.err;
  EXPECT_NE(plain.out.find("on cuda:0"), std::string::npos) << plain.out;
  std::vector<std::string> launch = {"launch", "--nproc-per-node", "1", "--"};
  const std::vector<std::string> train = train_args(dir, "launched");
  launch.insert(launch.end(), train.begin(), train.end());
  const testing::CliResult launched = testing::run_binary(dir, launch);
  ASSERT_EQ(launched.status, 0) << launched.out << launched.err;
  EXPECT_NE(launched.out.find("data parallel: 1 rank (nccl backend)"), std::string::npos) << launched.out;
  const std::string a = without_timings(testing::read_text(dir / "plain" / "metrics.jsonl"));
  const std::string b = without_timings(testing::read_text(dir / "launched" / "metrics.jsonl"));
  EXPECT_NE(a.find("\"loss\""), std::string::npos) << a;
  EXPECT_EQ(a, b);
  if (!HasFailure()) fs::remove_all(dir);
}

}  // namespace
}  // namespace ssmtrain
