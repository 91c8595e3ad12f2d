// The bucketed gradient reduction on mpi ranks (mpirun --oversubscribe, 2 and 4 ranks): the
// same cases as the tcp test (tests/distributed/reducer_cases.h): every bucket size gives the
// world-1 gradients bit for bit, with and without gradient accumulation. The Ranks tests start
// mpirun on this executable, whose Worker test then runs on every rank (alone it skips).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/distributed/reducer_cases.h"

namespace ssmtrain::dist {
namespace {

namespace fs = std::filesystem;

TEST(Worker, BucketedEqualsWorldOne) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (started by Ranks.*)";
  auto comm = make_communicator("auto", false, 60);
  ASSERT_EQ(comm->backend(), "mpi");
  const char* accum = std::getenv("SSMTRAIN_TEST_ACCUM");
  EXPECT_EQ(testing::bucketed_equals_world_one(*comm, accum ? std::atoi(accum) : 1), 0)
      << "the differences are on stderr";
}

void expect_ranks_pass(int ranks, int accum) {
  const fs::path log = fs::temp_directory_path() / ("reducer_mpi_" + std::to_string(::getpid()) + ".log");
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  // CI containers run as root, which mpirun refuses unless told.
  const std::string command = "SSMTRAIN_TEST_ACCUM=" + std::to_string(accum) +
                              " OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
                              "timeout -s KILL 120 mpirun -np " + std::to_string(ranks) + " --oversubscribe " + self +
                              " --gtest_color=no --gtest_filter=Worker.BucketedEqualsWorldOne > " + log.string() +
                              " 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream in(log);
  const std::string output(std::istreambuf_iterator<char>(in), {});
  fs::remove(log);
  EXPECT_EQ(status, 0) << output;
  EXPECT_NE(output.find("[  PASSED  ] 1 test"), std::string::npos) << output;
}

TEST(Ranks, TwoRanksWithTwoMicroBatches) {
  if (under_mpirun()) GTEST_SKIP();
  expect_ranks_pass(2, 2);
}

TEST(Ranks, FourRanks) {
  if (under_mpirun()) GTEST_SKIP();
  expect_ranks_pass(4, 1);
}

}  // namespace
}  // namespace ssmtrain::dist
