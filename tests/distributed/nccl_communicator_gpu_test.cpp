// The `nccl` backend (distributed/nccl_communicator.cpp) on device tensors. One GPU: a world of
// one rank passes every collective's data through unchanged, in f32, bf16 and i64, ordered
// after the op that produced it on the compute stream, and refuses CPU tensors and integer
// averages. Two or more GPUs (skipped otherwise): two ranks, started as processes of this
// executable (NcclWorker.*) meeting through the TCP rendezvous, sum exactly like the
// ordered_sum reference (one addition per element: no order to differ) and gather, scatter and
// broadcast right; a rank that never joins a collective ends the other through the watchdog
// within the timeout, naming the rank, the operation and the step.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "autograd/device.h"
#include "autograd/ops.h"
#include "distributed/communicator.h"
#include "distributed/ordered_sum.h"
#include "distributed/socket.h"

namespace ssmtrain::dist {
namespace {

namespace fs = std::filesystem;

std::vector<float> input_of(int rank, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[size_t(i)] = std::sin(float(i * 7 + rank * 131)) * std::pow(10.0f, float((i + rank) % 5) - 2);
  return v;
}

Tensor on_gpu(const std::vector<float>& v, int device = 0) {
  return Tensor::from_vector(v, {int64_t(v.size())}).to(Device::cuda(device));
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void clear_launcher_environment() {
  for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                           "SLURM_PROCID", "SLURM_NTASKS", "PMIX_RANK", "PMI_SIZE"})
    ::unsetenv(name);
}

void require_gpu_and_nccl() {
  if (!cuda_available()) GTEST_SKIP() << "no GPU";
  if (!nccl_available()) GTEST_SKIP() << "built without NCCL";
}

bool worker() { return std::getenv("SSMTRAIN_NCCL_WORKER") != nullptr; }

TEST(Nccl, WorldOfOneOnDeviceTensors) {
  if (worker()) GTEST_SKIP();
  require_gpu_and_nccl();
  if (IsSkipped()) return;
  clear_launcher_environment();
  auto comm = make_nccl_communicator(60);
  ASSERT_EQ(comm->backend(), "nccl");
  ASSERT_EQ(comm->world_size(), 1);
  ASSERT_EQ(comm->rank(), 0);
  const int64_t n = 1001;
  const std::vector<float> x = input_of(0, n);
  std::vector<float> doubled = x;
  for (float& v : doubled) v *= 2.0f;

  // Inputs written by a kernel on the compute stream just before: the collective waits for it.
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::average}) {
    Tensor t = mul(on_gpu(x), 2.0);
    comm->all_reduce(t, op)->wait();
    EXPECT_TRUE(same_bits(t.to(Device::cpu()).to_vector(), doubled)) << "all_reduce";
  }
  {
    const Tensor input = mul(on_gpu(x), 2.0);
    Tensor output = Tensor::empty({n}, DType::f32, Device::cuda(0));
    comm->reduce_scatter(input, output, ReduceOp::sum)->wait();
    EXPECT_TRUE(same_bits(output.to(Device::cpu()).to_vector(), doubled)) << "reduce_scatter";
    Tensor gathered = Tensor::empty({n}, DType::f32, Device::cuda(0));
    comm->all_gather(input, gathered)->wait();
    EXPECT_TRUE(same_bits(gathered.to(Device::cpu()).to_vector(), doubled)) << "all_gather";
    Tensor b = mul(on_gpu(x), 2.0);
    comm->broadcast(b, 0)->wait();
    EXPECT_TRUE(same_bits(b.to(Device::cpu()).to_vector(), doubled)) << "broadcast";
  }
  // Several in flight, then waited in reverse; bf16 and i64 pass unchanged too.
  {
    std::vector<Tensor> ts;
    std::vector<Handle> hs;
    for (int k = 0; k < 4; ++k) {
      ts.push_back(on_gpu(input_of(k, 257)));
      hs.push_back(comm->all_reduce(ts.back(), ReduceOp::sum));
    }
    for (int k = 3; k >= 0; --k) hs[size_t(k)]->wait();
    for (int k = 0; k < 4; ++k) EXPECT_TRUE(same_bits(ts[size_t(k)].to(Device::cpu()).to_vector(), input_of(k, 257)));
    Tensor half = on_gpu(x).to(DType::bf16);
    const std::vector<float> before = half.to(DType::f32).to(Device::cpu()).to_vector();
    comm->all_reduce(half, ReduceOp::average)->wait();
    EXPECT_TRUE(same_bits(half.to(DType::f32).to(Device::cpu()).to_vector(), before)) << "bf16";
    Tensor counts = Tensor::from_vector(std::vector<int64_t>{3, 1, 4, 1, 5}, {5}).to(Device::cuda(0));
    comm->all_reduce(counts, ReduceOp::sum)->wait();
    EXPECT_EQ(counts.to(Device::cpu()).values<int64_t>(), (std::vector<int64_t>{3, 1, 4, 1, 5}));
  }
  comm->barrier();
  EXPECT_EQ(comm->all_gather_bytes("rank zero"), std::vector<std::string>{"rank zero"});
  EXPECT_EQ(comm->all_gather_bytes(""), std::vector<std::string>{""});

  Tensor cpu = Tensor::from_vector(x, {n});
  EXPECT_THROW(comm->all_reduce(cpu, ReduceOp::sum), CommunicatorError);
  Tensor ints = Tensor::from_vector(std::vector<int64_t>{1, 2}, {2}).to(Device::cuda(0));
  EXPECT_THROW(comm->all_reduce(ints, ReduceOp::average), CommunicatorError);
}

// --- two ranks on two GPUs ---------------------------------------------------------------

// Rank r of 2 (SSMTRAIN_NCCL_WORKER=collectives): every collective against the reference.
TEST(NcclWorker, Collectives) {
  if (!worker() || std::string(std::getenv("SSMTRAIN_NCCL_WORKER")) != "collectives") GTEST_SKIP();
  auto comm = make_nccl_communicator(60);
  const int world = comm->world_size(), rank = comm->rank();
  const int device = rank;  // LOCAL_RANK
  ASSERT_EQ(world, 2);
  const int64_t n = 1001;
  std::vector<std::vector<float>> inputs = {input_of(0, n * world), input_of(1, n * world)};
  std::vector<float> sum(size_t(n * world));
  ordered_sum({inputs[0].data(), inputs[1].data()}, n * world, sum.data());

  Tensor t = on_gpu(inputs[size_t(rank)], device);
  comm->all_reduce(t, ReduceOp::sum)->wait();
  EXPECT_TRUE(same_bits(t.to(Device::cpu()).to_vector(), sum)) << "all_reduce sum";

  const Tensor input = on_gpu(inputs[size_t(rank)], device);
  Tensor block = Tensor::empty({n}, DType::f32, Device::cuda(device));
  comm->reduce_scatter(input, block, ReduceOp::sum)->wait();
  EXPECT_TRUE(same_bits(block.to(Device::cpu()).to_vector(),
                        std::vector<float>(sum.begin() + rank * n, sum.begin() + (rank + 1) * n)))
      << "reduce_scatter";

  const std::vector<float> piece = input_of(rank, 300);
  Tensor gathered = Tensor::empty({600}, DType::f32, Device::cuda(device));
  comm->all_gather(on_gpu(piece, device), gathered)->wait();
  std::vector<float> expected = input_of(0, 300);
  const std::vector<float> second = input_of(1, 300);
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_TRUE(same_bits(gathered.to(Device::cpu()).to_vector(), expected)) << "all_gather";

  Tensor b = on_gpu(input_of(rank, 77), device);
  comm->broadcast(b, 1)->wait();
  EXPECT_TRUE(same_bits(b.to(Device::cpu()).to_vector(), input_of(1, 77))) << "broadcast";

  comm->barrier();
  const std::vector<std::string> bytes = comm->all_gather_bytes(std::string(size_t(rank) * 5, 'x'));
  EXPECT_EQ(bytes, (std::vector<std::string>{"", "xxxxx"}));
}

// SSMTRAIN_NCCL_WORKER=stall: rank 1 never joins; rank 0's all_reduce at step 5 must time out.
TEST(NcclWorker, PeerThatNeverJoins) {
  if (!worker() || std::string(std::getenv("SSMTRAIN_NCCL_WORKER")) != "stall") GTEST_SKIP();
  auto comm = make_nccl_communicator(3);
  if (comm->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return;
  }
  comm->set_step(5);
  Tensor t = on_gpu(input_of(0, 100), 0);
  comm->all_reduce(t, ReduceOp::sum)->wait();
  comm->barrier();  // blocks on the host until the watchdog ends the process
  ADD_FAILURE() << "the collective finished without its peer";
}

struct Ranks {
  std::vector<pid_t> pids;
  std::vector<int> status;
  fs::path dir;
};

// This executable's NcclWorker.* on two ranks, GPUs 0 and 1, each's output in dir/rank<r>.log.
Ranks start_two(const std::string& mode, const fs::path& dir) {
  fs::create_directories(dir);
  Ranks ranks{{}, {-1, -1}, dir};
  const int port = free_port();
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  for (int rank = 0; rank < 2; ++rank) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      const std::string log = (dir / ("rank" + std::to_string(rank) + ".log")).string();
      if (!std::freopen(log.c_str(), "w", stdout) || !std::freopen(log.c_str(), "a", stderr)) std::_Exit(120);
      clear_launcher_environment();
      ::setenv("SSMTRAIN_NCCL_WORKER", mode.c_str(), 1);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", "2", 1);
      ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("SSMTRAIN_JOB_TOKEN", "nccl-test", 1);
      const std::string filter = "--gtest_filter=NcclWorker.*";
      ::execl(self.c_str(), self.c_str(), filter.c_str(), static_cast<char*>(nullptr));
      std::_Exit(127);
    }
    ranks.pids.push_back(pid);
  }
  return ranks;
}

bool wait_ranks(Ranks& r, const std::vector<int>& which, double seconds) {
  const auto deadline = deadline_after(seconds);
  for (;;) {
    bool all = true;
    for (int k : which)
      if (r.status[size_t(k)] == -1) {
        int s = 0;
        if (::waitpid(r.pids[size_t(k)], &s, WNOHANG) == r.pids[size_t(k)]) r.status[size_t(k)] = s;
        else all = false;
      }
    if (all) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void kill_rest(Ranks& r) {
  for (size_t k = 0; k < r.pids.size(); ++k)
    if (r.status[k] == -1) {
      ::kill(r.pids[k], SIGKILL);
      ::waitpid(r.pids[k], &r.status[k], 0);
    }
}

std::string log_of(const Ranks& r, int rank) {
  std::ifstream in(r.dir / ("rank" + std::to_string(rank) + ".log"));
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(NcclRanks, TwoGpusEqualTheOrderedSum) {
  if (worker()) GTEST_SKIP();
  require_gpu_and_nccl();
  if (IsSkipped()) return;
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two GPUs";
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain-nccl-" + std::to_string(::getpid()));
  Ranks r = start_two("collectives", dir);
  const bool ended = wait_ranks(r, {0, 1}, 180);
  kill_rest(r);
  ASSERT_TRUE(ended);
  for (int k = 0; k < 2; ++k)
    EXPECT_TRUE(WIFEXITED(r.status[size_t(k)]) && WEXITSTATUS(r.status[size_t(k)]) == 0) << log_of(r, k);
}

TEST(NcclRanks, PeerThatNeverJoinsEndsTheOtherThroughTheWatchdog) {
  if (worker()) GTEST_SKIP();
  require_gpu_and_nccl();
  if (IsSkipped()) return;
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two GPUs";
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain-nccl-stall-" + std::to_string(::getpid()));
  Ranks r = start_two("stall", dir);
  const bool ended = wait_ranks(r, {0}, 120);  // start-up (up to a minute), then 3 s + the watchdog
  kill_rest(r);
  ASSERT_TRUE(ended);
  EXPECT_TRUE(WIFEXITED(r.status[0]) && WEXITSTATUS(r.status[0]) == 1) << log_of(r, 0);
  EXPECT_NE(log_of(r, 0).find("rank 0 of 2: all_reduce at step 5 did not finish within distributed.timeout_s = 3 s"),
            std::string::npos)
      << log_of(r, 0);
}

}  // namespace
}  // namespace ssmtrain::dist
