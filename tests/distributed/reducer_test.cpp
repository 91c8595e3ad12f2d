// The bucketed gradient reduction on tcp ranks forked here (2, 3 and 4 of them), with and
// without gradient accumulation: each bucket size (one element, smaller than a parameter; a
// few hundred; larger than the model) gives the world-1 gradients bit for bit, and the hook
// reports each reached parameter once per step (tests/distributed/reducer_cases.h).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "tests/distributed/forked_ranks.h"
#include "tests/distributed/reducer_cases.h"

namespace ssmtrain::dist {
namespace {

namespace fs = std::filesystem;

void run(int world, int accum) {
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain-reducer-" + std::to_string(::getpid()) + "-w" +
                                                    std::to_string(world) + "a" + std::to_string(accum));
  fs::remove_all(dir);
  testing::ForkedJob job = testing::fork_tcp_ranks(
      dir, world, 60, [&](Communicator& comm, int) { return testing::bucketed_equals_world_one(comm, accum); });
  const bool ended = job.wait_for(120);
  if (!ended) job.kill_all();
  ASSERT_TRUE(ended) << "the ranks did not finish within 120 s";
  bool ok = true;
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(job.exit_code(r), 0) << "rank " << r << ":\n" << job.log(r);
    ok = ok && job.exit_code(r) == 0;
  }
  if (ok) fs::remove_all(dir);
}

TEST(BucketedReducer, TwoRanksEqualOneRank) { run(2, 1); }
TEST(BucketedReducer, TwoRanksWithTwoMicroBatchesEqualOneRank) { run(2, 2); }
TEST(BucketedReducer, ThreeRanksWithTwoMicroBatchesEqualOneRank) { run(3, 2); }
TEST(BucketedReducer, FourRanksWithFourMicroBatchesEqualOneRank) { run(4, 4); }

}  // namespace
}  // namespace ssmtrain::dist
