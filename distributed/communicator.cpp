// distributed.backend resolved to a communicator (see communicator.h), and the pre-flight
// check of the same choice that `ssmtrain train` runs before reading any data.
#include <fmt/core.h>

#include "distributed/bootstrap.h"
#include "distributed/communicator.h"

namespace ssmtrain::dist {

#ifndef SSMTRAIN_WITH_NCCL
bool nccl_available() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(double) {
  throw CommunicatorError("distributed.backend: nccl: " + backend_problem("nccl", true));
}
#endif

std::string backend_problem(const std::string& backend, bool gpu) {
  const char* cpu_choices = "use mpi (under mpirun), tcp (under `ssmtrain launch`, torchrun or srun) or auto";
  LaunchEnv env;
  try {
    env = launch_env();
  } catch (const BootstrapError& e) {
    return e.what();
  }
  if (backend == "single") {
    if (env.world_size > 1)
      return fmt::format("single trains one rank alone, but the {} launcher started {} ranks (each would train the "
                         "whole job and write the same run directory); use auto",
                         env.launcher, env.world_size);
    return "";
  }
  if (backend == "mpi" || backend == "tcp") {
    if (gpu)
      return fmt::format("{} reduces CPU tensors, but this run trains on a GPU; use nccl (or auto)", backend);
    if (backend == "mpi" && !mpi_available())
      return "mpi: this ssmtrain was built without MPI (install libopenmpi-dev, e.g. with scripts/install-deps.sh, "
             "and configure again); or use tcp under `ssmtrain launch`";
    return "";
  }
  if (backend == "nccl") {
    if (!nccl_available())
      return fmt::format("nccl: this ssmtrain was built without NCCL (it needs a CUDA build that found nccl.h and "
                         "libnccl: install libnccl-dev and configure again with -DSSMTRAIN_CUDA=ON){}",
                         gpu ? "" : fmt::format(", and no GPU is visible here; {}", cpu_choices));
    if (!gpu)
      return fmt::format("nccl reduces GPU tensors, but no GPU is visible here (no CUDA device, or "
                         "CUDA_VISIBLE_DEVICES hides them); {}", cpu_choices);
    return "";
  }
  if (backend == "auto") {
    if (under_mpirun() && !mpi_available() && !gpu)
      return "auto: started by mpirun, but this ssmtrain was built without MPI; start it with `ssmtrain launch` "
             "instead (tcp backend)";
    if (gpu && env.world_size > 1 && !nccl_available())
      return fmt::format("auto: {} ranks on GPUs need the NCCL backend, which this ssmtrain lacks (build it with "
                         "NCCL found), or set CUDA_VISIBLE_DEVICES= to train on the CPU",
                         env.world_size);
    return "";
  }
  return "unknown backend '" + backend + "' (auto, nccl, mpi, tcp, single)";
}

std::string resolve_backend(const std::string& backend, bool gpu) {
  if (backend != "auto") return backend;
  const LaunchEnv env = launch_env();
  if (gpu) return nccl_available() && (env.world_size > 1 || env.launcher != "none") ? "nccl" : "single";
  if (under_mpirun()) return "mpi";
  return env.world_size > 1 ? "tcp" : "single";
}

std::unique_ptr<Communicator> make_communicator(const std::string& backend, bool gpu, double timeout_s) {
  if (const std::string why = backend_problem(backend, gpu); !why.empty())
    throw CommunicatorError("distributed.backend: " + why);
  const std::string chosen = resolve_backend(backend, gpu);
  std::unique_ptr<Communicator> comm;
  if (chosen == "single") comm = make_single_communicator();
  else if (chosen == "mpi") comm = make_mpi_communicator(timeout_s);
  else if (chosen == "tcp") comm = make_tcp_communicator(timeout_s);
  else comm = make_nccl_communicator(timeout_s);
  comm->set_timeout(timeout_s);
  return comm;
}

}  // namespace ssmtrain::dist
