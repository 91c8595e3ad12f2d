// The MPI communicator on 2 and 3 ranks (mpirun --oversubscribe): every collective against
// the same reduction computed locally from every rank's (deterministic) inputs, bit for bit;
// and a collective that a peer never joins ends the job within the timeout, naming the rank,
// the operation and the step. The Ranks* tests start mpirun on this executable, whose Worker*
// tests then run on every rank (alone, outside mpirun, they skip).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "distributed/communicator.h"
#include "distributed/ordered_sum.h"

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

std::vector<float> expected_sum(int world, int64_t n, int64_t begin, int64_t count) {
  std::vector<std::vector<float>> blocks;
  std::vector<const float*> terms;
  for (int r = 0; r < world; ++r) blocks.push_back(input_of(r, n));
  for (const auto& b : blocks) terms.push_back(b.data() + begin);
  std::vector<float> out(static_cast<size_t>(count));
  ordered_sum(terms, count, out.data());
  return out;
}

void expect_bits(const Tensor& t, const std::vector<float>& expected, const char* what) {
  ASSERT_EQ(t.numel(), int64_t(expected.size())) << what;
  EXPECT_EQ(std::memcmp(t.data(), expected.data(), expected.size() * sizeof(float)), 0) << what;
}

bool worker() { return under_mpirun(); }

TEST(Worker, Collectives) {
  if (!worker()) GTEST_SKIP() << "runs under mpirun (started by Ranks.*)";
  auto comm = make_communicator("auto", false, 60);
  ASSERT_EQ(comm->backend(), "mpi");
  const int world = comm->world_size(), rank = comm->rank();
  const int64_t n = 1000 * world;

  Tensor t = tensor_of(input_of(rank, n));
  comm->all_reduce(t, ReduceOp::sum)->wait();
  expect_bits(t, expected_sum(world, n, 0, n), "all_reduce sum");

  Tensor a = tensor_of(input_of(rank, n));
  comm->all_reduce(a, ReduceOp::average)->wait();
  std::vector<float> avg = expected_sum(world, n, 0, n);
  for (float& x : avg) x *= 1.0f / float(world);
  expect_bits(a, avg, "all_reduce average");

  Tensor block = Tensor::empty({n / world});
  comm->reduce_scatter(tensor_of(input_of(rank, n)), block, ReduceOp::sum)->wait();
  expect_bits(block, expected_sum(world, n, rank * (n / world), n / world), "reduce_scatter");

  Tensor gathered = Tensor::empty({n * world});
  comm->all_gather(tensor_of(input_of(rank, n)), gathered)->wait();
  std::vector<float> all;
  for (int r = 0; r < world; ++r) {
    const auto v = input_of(r, n);
    all.insert(all.end(), v.begin(), v.end());
  }
  expect_bits(gathered, all, "all_gather");

  Tensor b = tensor_of(input_of(rank, 17));
  comm->broadcast(b, world - 1)->wait();
  expect_bits(b, input_of(world - 1, 17), "broadcast");

  // Several in flight at once, waited in reverse.
  Tensor x = tensor_of(input_of(rank, 64)), y = tensor_of(input_of(rank + 1, 64));
  Handle hx = comm->all_reduce(x, ReduceOp::sum);
  Handle hy = comm->all_reduce(y, ReduceOp::sum);
  hy->wait();
  hx->wait();
  expect_bits(x, expected_sum(world, 64, 0, 64), "overlapped all_reduce");

  const auto texts = comm->all_gather_bytes(std::string(size_t(rank), 'x') + std::to_string(rank));
  ASSERT_EQ(int(texts.size()), world);
  for (int r = 0; r < world; ++r) EXPECT_EQ(texts[size_t(r)], std::string(size_t(r), 'x') + std::to_string(r));
  comm->barrier();

  Tensor wrong = Tensor::empty({3});
  EXPECT_THROW(comm->reduce_scatter(tensor_of(input_of(rank, 7)), wrong, ReduceOp::sum), CommunicatorError);
}

// Rank 1 never joins the all-reduce: rank 0 must give up after the timeout.
TEST(Worker, PeerThatNeverJoins) {
  if (!worker() || !std::getenv("SSMTRAIN_TEST_STALL")) GTEST_SKIP() << "started by Ranks.TimeoutNamesRankOperationStep";
  auto comm = make_communicator("mpi", false, 1.5);
  comm->set_step(7);
  if (comm->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return;
  }
  Tensor t = Tensor::zeros({10});
  comm->all_reduce(t, ReduceOp::sum)->wait();
  FAIL() << "the all-reduce finished without its peer";
}

struct MpiRun {
  int status;
  std::string output;
  double seconds;
};

MpiRun mpirun(int ranks, const std::string& filter, const std::string& env = "") {
  const fs::path log = fs::temp_directory_path() / ("communicator_mpi_" + std::to_string(getpid()) + ".log");
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  // CI containers run as root, which mpirun refuses unless told.
  const std::string command = env + " OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 timeout -s KILL 120 mpirun -np " + std::to_string(ranks) +
                              " --oversubscribe " + self + " --gtest_color=no --gtest_filter=" + filter + " > " + log.string() + " 2>&1";
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(command.c_str());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::ifstream in(log);
  MpiRun run{status, std::string(std::istreambuf_iterator<char>(in), {}), seconds};
  fs::remove(log);
  return run;
}

TEST(Ranks, CollectivesOnTwoAndThreeRanks) {
  if (worker()) GTEST_SKIP();
  for (int ranks : {2, 3}) {
    const MpiRun run = mpirun(ranks, "Worker.Collectives");
    EXPECT_EQ(run.status, 0) << run.output;
    EXPECT_NE(run.output.find("[  PASSED  ] 1 test"), std::string::npos) << run.output;
  }
}

TEST(Ranks, TimeoutNamesRankOperationStep) {
  if (worker()) GTEST_SKIP();
  const MpiRun run = mpirun(2, "Worker.PeerThatNeverJoins", "SSMTRAIN_TEST_STALL=1");
  EXPECT_NE(run.status, 0);
  EXPECT_NE(run.output.find("rank 0 of 2: all_reduce at step 7 did not finish within distributed.timeout_s = 1.5 s"),
            std::string::npos)
      << run.output;
  EXPECT_LT(run.seconds, 1.5 + 10) << run.output;
}

}  // namespace
}  // namespace ssmtrain::dist
