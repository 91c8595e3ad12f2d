// The MPI backend for CPU tensors. Every collective is non-blocking (MPI_I*) and waited on by
// polling MPI_Test against distributed.timeout, so a dead or stuck peer ends the job with a
// message instead of a hang (MPI_Abort takes every rank down). Reductions gather the ranks'
// terms and add them on every rank in the order of distributed/ordered_sum.h: a little more
// traffic than MPI_Allreduce, and the same bits whatever the message timing.
#include <fmt/core.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>

#include "distributed/communicator.h"
#include "distributed/ordered_sum.h"

#ifdef SSMTRAIN_WITH_MPI
#include <mpi.h>
#endif

namespace ssmtrain::dist {

bool under_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr ||
         std::getenv("PMI_SIZE") != nullptr;
}

#ifndef SSMTRAIN_WITH_MPI

bool mpi_available() { return false; }

std::unique_ptr<Communicator> make_mpi_communicator(double) {
  throw CommunicatorError(
      "distributed.backend: mpi: this ssmtrain was built without MPI (install libopenmpi-dev, e.g. with "
      "scripts/install-deps.sh, and configure again)");
}

#else

bool mpi_available() { return true; }

namespace {

using Clock = std::chrono::steady_clock;

void check_f32(const Tensor& t, const char* what) {
  if (t.dtype() != DType::f32 || t.is_cuda() || !t.is_contiguous())
    throw CommunicatorError(fmt::format("mpi {}: expected a contiguous f32 CPU tensor, got {}", what, t.str()));
}

struct MpiRuntime {
  MpiRuntime() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      owned = true;
    }
  }
  ~MpiRuntime() {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (owned && !finalised) MPI_Finalize();
  }
  bool owned = false;
};

class MpiCommunicator;

// Waits for one request within the timeout; on expiry names rank, operation and step, and aborts.
void wait_bounded(MPI_Request& request, const Communicator& comm, const char* operation) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(comm.timeout_s());
  auto pause = std::chrono::microseconds(1);
  for (;;) {
    int done = 0;
    MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    if (done) return;
    if (Clock::now() > deadline) {
      fmt::print(stderr,
                 "ssmtrain: rank {} of {}: {} at step {} did not finish within distributed.timeout_s = {:g} s "
                 "(a rank died or stopped answering); aborting every rank\n",
                 comm.rank(), comm.world_size(), operation, comm.step(), comm.timeout_s());
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
      std::_Exit(1);
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

// A started collective and what to do once its messages are in.
class MpiPending final : public Pending {
 public:
  MpiPending(const Communicator& comm, const char* operation) : comm_(comm), operation_(operation) {}
  ~MpiPending() override {
    if (!waited_) wait();
  }
  void wait() override {
    if (waited_) return;
    waited_ = true;
    wait_bounded(request, comm_, operation_);
    if (then) then();
  }
  MPI_Request request = MPI_REQUEST_NULL;
  std::vector<float> scratch;
  std::function<void()> then;

 private:
  const Communicator& comm_;
  const char* operation_;
  bool waited_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout) {
    static MpiRuntime runtime;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    timeout_s_ = timeout;
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "mpi"; }

  Handle all_reduce(Tensor& t, ReduceOp op) override {
    check_f32(t, "all_reduce");
    const int64_t n = t.numel();
    auto pending = std::make_unique<MpiPending>(*this, "all_reduce");
    pending->scratch.resize(size_t(n * world_));
    MPI_Iallgather(t.data(), int(n), MPI_FLOAT, pending->scratch.data(), int(n), MPI_FLOAT, MPI_COMM_WORLD,
                   &pending->request);
    float* out = t.data_ptr<float>();
    MpiPending* p = pending.get();
    pending->then = [p, out, n, op, world = world_] {
      std::vector<const float*> terms;
      for (int r = 0; r < world; ++r) terms.push_back(p->scratch.data() + r * n);
      ordered_sum(terms, n, out);
      if (op == ReduceOp::average) scale(out, n, 1.0f / float(world));
    };
    return pending;
  }

  Handle reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override {
    check_f32(input, "reduce_scatter");
    check_f32(output, "reduce_scatter");
    const int64_t n = output.numel();
    if (input.numel() != n * world_)
      throw CommunicatorError(fmt::format("mpi reduce_scatter: input holds {} elements, expected {} ranks x {}",
                                          input.numel(), world_, n));
    auto pending = std::make_unique<MpiPending>(*this, "reduce_scatter");
    pending->scratch.resize(size_t(n * world_));
    // Block r of every rank's input goes to rank r: the terms of this rank's block, in rank order.
    MPI_Ialltoall(input.data(), int(n), MPI_FLOAT, pending->scratch.data(), int(n), MPI_FLOAT, MPI_COMM_WORLD,
                  &pending->request);
    float* out = output.data_ptr<float>();
    MpiPending* p = pending.get();
    pending->then = [p, out, n, op, world = world_] {
      std::vector<const float*> terms;
      for (int r = 0; r < world; ++r) terms.push_back(p->scratch.data() + r * n);
      ordered_sum(terms, n, out);
      if (op == ReduceOp::average) scale(out, n, 1.0f / float(world));
    };
    return pending;
  }

  Handle all_gather(const Tensor& input, Tensor& output) override {
    check_f32(input, "all_gather");
    check_f32(output, "all_gather");
    const int64_t n = input.numel();
    if (output.numel() != n * world_)
      throw CommunicatorError(fmt::format("mpi all_gather: output holds {} elements, expected {} ranks x {}",
                                          output.numel(), world_, n));
    auto pending = std::make_unique<MpiPending>(*this, "all_gather");
    MPI_Iallgather(input.data(), int(n), MPI_FLOAT, output.data(), int(n), MPI_FLOAT, MPI_COMM_WORLD,
                   &pending->request);
    return pending;
  }

  Handle broadcast(Tensor& t, int root) override {
    check_f32(t, "broadcast");
    if (root < 0 || root >= world_) throw CommunicatorError(fmt::format("mpi broadcast: root {} of {} ranks", root, world_));
    auto pending = std::make_unique<MpiPending>(*this, "broadcast");
    MPI_Ibcast(t.data(), int(t.numel()), MPI_FLOAT, root, MPI_COMM_WORLD, &pending->request);
    return pending;
  }

  void barrier() override {
    MPI_Request request;
    MPI_Ibarrier(MPI_COMM_WORLD, &request);
    wait_bounded(request, *this, "barrier");
  }

  std::vector<std::string> all_gather_bytes(const std::string& mine) override {
    int length = int(mine.size());
    std::vector<int> lengths(static_cast<size_t>(world_));
    MPI_Request request;
    MPI_Iallgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD, &request);
    wait_bounded(request, *this, "all_gather_bytes");
    std::vector<int> offsets(static_cast<size_t>(world_));
    int total = 0;
    for (int r = 0; r < world_; ++r) offsets[size_t(r)] = total, total += lengths[size_t(r)];
    std::string all(size_t(total), '\0');
    MPI_Iallgatherv(mine.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR,
                    MPI_COMM_WORLD, &request);
    wait_bounded(request, *this, "all_gather_bytes");
    std::vector<std::string> out;
    for (int r = 0; r < world_; ++r) out.push_back(all.substr(size_t(offsets[size_t(r)]), size_t(lengths[size_t(r)])));
    return out;
  }

 private:
  static void scale(float* x, int64_t n, float factor) {
    for (int64_t i = 0; i < n; ++i) x[i] *= factor;
  }
  int rank_ = 0, world_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(double timeout_s) {
  return std::make_unique<MpiCommunicator>(timeout_s);
}

#endif

}  // namespace ssmtrain::dist
