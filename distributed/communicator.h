// Collectives between the ranks of a data-parallel job (DESIGN.md section 6): all-reduce (sum,
// average), reduce-scatter, all-gather, broadcast and barrier, each asynchronous with a handle
// to wait on. Backends: `single` (one rank, no communication), `mpi` (OpenMPI, CPU tensors),
// `tcp` (CPU tensors over the rendezvous sockets, for ranks started without mpirun) and `nccl`
// (GPU tensors, in builds with CUDA and NCCL).
// On the CPU every sum is taken in a fixed order, the same on every rank: the pairwise tree of
// distributed/ordered_sum.h over the ranks' terms in rank order, so results do not depend on
// message timing and N ranks can reproduce one rank bit for bit (train/trainer.cpp).
// A collective that does not finish within the timeout ends every rank with a message that
// names this rank, the operation and the training step.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/tensor.h"

namespace ssmtrain::dist {

enum class ReduceOp { sum, average };

// A collective that cannot run: a shape that does not fit, a backend this build lacks.
class CommunicatorError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The handle of a started collective. wait() returns when its output may be read; a handle
// destroyed unwaited waits in its destructor (the buffers it writes must outlive it).
class Pending {
 public:
  virtual ~Pending() = default;
  virtual void wait() = 0;
};
using Handle = std::unique_ptr<Pending>;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend() const = 0;

  // All tensors: contiguous f32 on the backend's device. In place on `t`.
  virtual Handle all_reduce(Tensor& t, ReduceOp op) = 0;
  // input: world_size equal blocks (numel divisible by world_size); output: this rank's block
  // of the reduction, numel = input.numel() / world_size.
  virtual Handle reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) = 0;
  // output: world_size blocks of input.numel(), block r from rank r.
  virtual Handle all_gather(const Tensor& input, Tensor& output) = 0;
  virtual Handle broadcast(Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Host bytes of any length from every rank, in rank order (blocking): configs, fingerprints,
  // per-micro-batch losses.
  virtual std::vector<std::string> all_gather_bytes(const std::string& mine) = 0;

  // For the timeout message: which step the collectives belong to.
  void set_step(int64_t step) { step_ = step; }
  int64_t step() const { return step_; }
  double timeout_s() const { return timeout_s_; }
  void set_timeout(double seconds) { timeout_s_ = seconds; }

 protected:
  int64_t step_ = -1;
  double timeout_s_ = 600;
};

// The one-rank backend: every collective is the identity (average of one term is itself).
std::unique_ptr<Communicator> make_single_communicator();

// OpenMPI over MPI_COMM_WORLD (initialises MPI on first use, finalises at exit). Throws
// CommunicatorError when this build has no MPI.
std::unique_ptr<Communicator> make_mpi_communicator(double timeout_s);
bool mpi_available();  // built with MPI
bool under_mpirun();   // OMPI_COMM_WORLD_SIZE (or PMI_SIZE / PMIX_RANK) in the environment

// The ranks that `ssmtrain launch`, torchrun or srun start (without mpirun), meeting through
// the TCP rendezvous on MASTER_ADDR:MASTER_PORT (distributed/rendezvous.h) and exchanging CPU
// tensors over its sockets, in a star around rank 0, summed in the same order as `mpi`.
// Identity from distributed/bootstrap.h. Throws CommunicatorError (rendezvous failed, no token).
std::unique_ptr<Communicator> make_tcp_communicator(double timeout_s);

// GPU tensors through NCCL on this rank's own CUDA stream (device LOCAL_RANK), the unique id
// through the TCP rendezvous (or MPI_Bcast under mpirun), a watchdog that aborts a collective
// slower than the timeout. Throws CommunicatorError when this build has no NCCL.
std::unique_ptr<Communicator> make_nccl_communicator(double timeout_s);
bool nccl_available();  // built with CUDA and NCCL

// Why distributed.backend = `backend` cannot run here, in words that follow the key (empty
// when it can): a backend this build lacks (nccl without NCCL, mpi without MPI), a CPU backend
// for a GPU run or nccl without a visible GPU, `single` under a launcher of several ranks, an
// unknown name. `gpu`: the trainer runs on a CUDA device. Reads only the environment, so
// `ssmtrain train` runs it before any data is read.
std::string backend_problem(const std::string& backend, bool gpu);

// `auto` made concrete (other names pass through): nccl on GPUs started by a launcher (when
// built with NCCL), mpi under mpirun, tcp for several CPU ranks from another launcher, else single.
std::string resolve_backend(const std::string& backend, bool gpu);

// distributed.backend resolved and started. `backend` is the config's string (auto, nccl,
// mpi, tcp, single). Throws CommunicatorError naming distributed.backend for a choice this
// machine or build cannot run (backend_problem), or a failed start.
std::unique_ptr<Communicator> make_communicator(const std::string& backend, bool gpu, double timeout_s);

}  // namespace ssmtrain::dist
