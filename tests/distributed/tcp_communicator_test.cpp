// The `tcp` communicator (distributed/tcp_communicator.cpp) on forked ranks meeting on
// 127.0.0.1 with the torchrun-style environment: on 3 ranks every collective equals the same
// reduction computed locally in the ordered_sum order from every rank's (deterministic) inputs,
// bit for bit; a peer that exits, or one that stops answering, ends the waiting ranks within
// the timeout with a message naming the rank, the operation, the step and the peer.
// A collective's failure ends its process (std::_Exit), which is why each rank is a process
// (the harness: tests/distributed/forked_ranks.h).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "distributed/communicator.h"
#include "distributed/ordered_sum.h"
#include "distributed/socket.h"
#include "tests/distributed/forked_ranks.h"

namespace ssmtrain::dist {
namespace {

namespace fs = std::filesystem;

// Rank r's input of n floats: values whose sums round differently in other orders.
std::vector<float> input_of(int rank, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[size_t(i)] = std::sin(float(i * 7 + rank * 131)) * std::pow(10.0f, float((i + rank) % 5) - 2);
  return v;
}

Tensor tensor_of(const std::vector<float>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())});
  std::memcpy(t.data(), v.data(), v.size() * sizeof(float));
  return t;
}

// Elements [begin, begin + count) of the ranks' inputs of n, summed in rank order.
std::vector<float> expected_sum(int world, int64_t n, int64_t begin, int64_t count) {
  std::vector<std::vector<float>> blocks;
  std::vector<const float*> terms;
  for (int r = 0; r < world; ++r) blocks.push_back(input_of(r, n));
  for (const auto& b : blocks) terms.push_back(b.data() + begin);
  std::vector<float> out(static_cast<size_t>(count));
  ordered_sum(terms, count, out.data());
  return out;
}

std::vector<float> scaled(std::vector<float> v, int world) {
  for (float& x : v) x *= 1.0f / float(world);
  return v;
}

// Empty when t holds exactly `expected`; else what differs.
std::string differs(const Tensor& t, const std::vector<float>& expected, const std::string& what) {
  if (t.numel() != int64_t(expected.size()))
    return what + ": " + std::to_string(t.numel()) + " elements, expected " + std::to_string(expected.size());
  const float* got = t.data_ptr<float>();
  for (size_t i = 0; i < expected.size(); ++i)
    if (std::memcmp(&got[i], &expected[i], sizeof(float)) != 0)
      return what + ": element " + std::to_string(i) + " is " + std::to_string(got[i]) + ", expected " +
             std::to_string(expected[i]);
  return "";
}

class Tcp : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ssmtrain-tcp-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  fs::path dir_;
};

// Every collective on every rank; the first difference is reported on stderr (exit 1).
int collectives(Communicator& comm, int rank) {
  const int world = comm.world_size();
  std::vector<std::string> problems;
  const auto check = [&](const std::string& problem) {
    if (!problem.empty()) problems.push_back(problem);
  };
  if (comm.rank() != rank || world != 3 || comm.backend() != "tcp") check("identity: rank/world/backend wrong");
  comm.set_step(1);

  const int64_t n = 1001;  // odd
  Tensor sum = tensor_of(input_of(rank, n));
  comm.all_reduce(sum, ReduceOp::sum)->wait();
  check(differs(sum, expected_sum(world, n, 0, n), "all_reduce sum"));
  Tensor average = tensor_of(input_of(rank, n));
  comm.all_reduce(average, ReduceOp::average)->wait();
  check(differs(average, scaled(expected_sum(world, n, 0, n), world), "all_reduce average"));

  const int64_t block = 333;  // reduce_scatter: world blocks of 333
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::average}) {
    const Tensor input = tensor_of(input_of(rank, block * world));
    Tensor output = Tensor::empty({block});
    comm.reduce_scatter(input, output, op)->wait();
    std::vector<float> expected = expected_sum(world, block * world, rank * block, block);
    if (op == ReduceOp::average) expected = scaled(expected, world);
    check(differs(output, expected, op == ReduceOp::sum ? "reduce_scatter sum" : "reduce_scatter average"));
  }

  const int64_t piece = 257;
  const Tensor mine = tensor_of(input_of(rank, piece));
  Tensor gathered = Tensor::empty({piece * world});
  comm.all_gather(mine, gathered)->wait();
  std::vector<float> expected_gather;
  for (int r = 0; r < world; ++r) {
    const std::vector<float> part = input_of(r, piece);
    expected_gather.insert(expected_gather.end(), part.begin(), part.end());
  }
  check(differs(gathered, expected_gather, "all_gather"));

  for (int root : {0, 2}) {  // root 2: rank 0 relays it
    Tensor t = tensor_of(input_of(rank, 77));
    comm.broadcast(t, root)->wait();
    check(differs(t, input_of(root, 77), "broadcast from root " + std::to_string(root)));
  }

  comm.barrier();
  const std::vector<std::string> bytes = comm.all_gather_bytes(std::string(size_t(rank) * 3, char('a' + rank)));
  for (int r = 0; r < world; ++r)
    if (int(bytes.size()) != world || bytes[size_t(r)] != std::string(size_t(r) * 3, char('a' + r)))
      check("all_gather_bytes: entry " + std::to_string(r) + " wrong");

  for (const std::string& p : problems) std::fprintf(stderr, "rank %d: %s\n", rank, p.c_str());
  return problems.empty() ? 0 : 1;
}

TEST_F(Tcp, EveryCollectiveOnThreeRanksEqualsTheOrderedSumBitForBit) {
  testing::ForkedJob job = testing::fork_tcp_ranks(dir_, 3, 30, collectives);
  const bool ended = job.wait_for(60);
  job.kill_all();
  ASSERT_TRUE(ended) << "the ranks did not finish within 60 s";
  for (int r = 0; r < 3; ++r) EXPECT_EQ(job.exit_code(r), 0) << "rank " << r << ":\n" << job.log(r);
}

TEST_F(Tcp, PeerThatExitsEndsRankZeroNamingTheOperationStepAndPeer) {
  testing::ForkedJob job = testing::fork_tcp_ranks(dir_, 2, 30, [](Communicator& comm, int rank) {
    if (rank == 1) return 0;  // leaves before the collective: its connection closes
    comm.set_step(7);
    Tensor t = tensor_of(input_of(0, 10));
    comm.all_reduce(t, ReduceOp::sum)->wait();
    return 0;  // not reached: the failure ends the process
  });
  const auto begin = Clock::now();
  const bool ended = job.wait_for(20);
  job.kill_all();
  ASSERT_TRUE(ended);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - begin).count(), 10) << "a closed peer is seen at once";
  EXPECT_EQ(job.exit_code(1), 0);
  EXPECT_EQ(job.exit_code(0), 1);
  EXPECT_NE(job.log(0).find("rank 0 of 2: all_reduce at step 7 failed: rank 1 closed its connection"),
            std::string::npos)
      << job.log(0);
}

TEST_F(Tcp, SilentPeerTimesOutAndTheOthersFollowWithinTheTimeout) {
  const double timeout = 1.5;
  testing::ForkedJob job = testing::fork_tcp_ranks(dir_, 3, timeout, [](Communicator& comm, int rank) {
    if (rank == 2) {  // in the job, but never joins the collective
      std::this_thread::sleep_for(std::chrono::seconds(60));
      return 0;
    }
    if (rank == 1) std::this_thread::sleep_for(std::chrono::milliseconds(500));  // its deadline comes after rank 0's
    comm.set_step(3);
    const Tensor input = tensor_of(input_of(rank, 30));
    Tensor output = Tensor::empty({10});
    comm.reduce_scatter(input, output, ReduceOp::sum)->wait();
    return 0;
  });
  const auto begin = Clock::now();
  const bool ended = job.wait_for(timeout + 10, {0, 1});
  const double seconds = std::chrono::duration<double>(Clock::now() - begin).count();
  job.kill_all();
  ASSERT_TRUE(ended) << "ranks 0 and 1 still waited " << timeout + 10 << " s after the start";
  EXPECT_GE(seconds, timeout - 0.1);
  EXPECT_EQ(job.exit_code(0), 1);
  EXPECT_EQ(job.exit_code(1), 1);
  EXPECT_NE(job.log(0).find("rank 0 of 3: reduce_scatter at step 3 failed: no answer from rank 2 within "
                                "distributed.timeout_s = 1.5 s"),
            std::string::npos)
      << job.log(0);
  // Rank 1 had sent its part and waited for its block: rank 0's exit closed the connection.
  EXPECT_NE(job.log(1).find("rank 1 of 3: reduce_scatter at step 3 failed: rank 0 closed its connection"),
            std::string::npos)
      << job.log(1);
}

TEST_F(Tcp, NoTokenIsRefusedNamingTheVariable) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("RANK", "1", 1);
    ::setenv("WORLD_SIZE", "2", 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", "1", 1);
    ::unsetenv("SSMTRAIN_JOB_TOKEN");
    ::unsetenv("SLURM_JOB_ID");
    try {
      make_tcp_communicator(1);
    } catch (const CommunicatorError& e) {
      std::_Exit(std::string(e.what()).find("SSMTRAIN_JOB_TOKEN") != std::string::npos ? 0 : 1);
    }
    std::_Exit(2);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace ssmtrain::dist
