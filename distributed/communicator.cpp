// distributed.backend resolved to a communicator (see communicator.h).
#include <fmt/core.h>

#include "distributed/bootstrap.h"
#include "distributed/communicator.h"

namespace ssmtrain::dist {

std::unique_ptr<Communicator> make_communicator(const std::string& backend, bool gpu, double timeout_s) {
  std::unique_ptr<Communicator> comm;
  if (backend == "single") {
    comm = make_single_communicator();
  } else if (backend == "mpi" || backend == "tcp") {
    if (gpu)
      throw CommunicatorError(fmt::format(
          "distributed.backend: {} reduces CPU tensors, but this run trains on a GPU; use nccl (or auto)", backend));
    comm = backend == "mpi" ? make_mpi_communicator(timeout_s) : make_tcp_communicator(timeout_s);
  } else if (backend == "nccl") {
    throw CommunicatorError(
        gpu ? "distributed.backend: nccl: this ssmtrain has no NCCL backend yet; use auto or single on one GPU"
            : "distributed.backend: nccl needs a GPU, and none is visible here; use mpi (under mpirun), tcp or auto");
  } else if (backend == "auto") {
    const LaunchEnv env = launch_env();
    if (under_mpirun() && !mpi_available())
      throw CommunicatorError("distributed.backend: auto: started by mpirun, but this ssmtrain was built without MPI");
    if (!gpu && under_mpirun()) comm = make_mpi_communicator(timeout_s);
    else if (!gpu && env.world_size > 1) comm = make_tcp_communicator(timeout_s);
    else if (gpu && env.world_size > 1)
      throw CommunicatorError(fmt::format(
          "distributed.backend: auto: {} ranks on GPUs need the NCCL backend, which this ssmtrain lacks (build it "
          "with NCCL found), or set CUDA_VISIBLE_DEVICES= to train on the CPU",
          env.world_size));
    else comm = make_single_communicator();
  } else {
    throw CommunicatorError("distributed.backend: unknown backend '" + backend + "' (auto, nccl, mpi, tcp, single)");
  }
  comm->set_timeout(timeout_s);
  return comm;
}

}  // namespace ssmtrain::dist
