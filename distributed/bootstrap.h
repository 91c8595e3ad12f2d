// Who this process is in a job, read from the launcher's environment: torchrun-style
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; also what `ssmtrain launch` sets),
// OpenMPI (OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK) or Slurm (SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID, the first host of SLURM_JOB_NODELIST as the master). The job token that the
// rendezvous (distributed/rendezvous.h) asks of every peer: SSMTRAIN_JOB_TOKEN, else
// SLURM_JOB_ID. Nothing set at all: one rank.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>

namespace ssmtrain::dist {

struct LaunchEnv {
  std::string launcher = "none";  // torchrun | openmpi | slurm | none
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string token;  // empty: none given
};

// A launcher environment that does not make sense; what() names the variable and its value.
class BootstrapError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using EnvLookup = std::function<const char*(const char*)>;  // like std::getenv

// Precedence when several are present: torchrun-style RANK/WORLD_SIZE (set explicitly by the
// launcher or the user), then OpenMPI (mpirun, also under Slurm), then Slurm (srun).
LaunchEnv launch_env(const EnvLookup& lookup);
LaunchEnv launch_env();  // from this process's environment

// The GPU this rank trains on, of the `device_count` it sees: LOCAL_RANK, or 0 when the
// launcher left it one GPU (srun --gpus-per-task 1, CUDA_VISIBLE_DEVICES per rank). Throws
// BootstrapError naming LOCAL_RANK when it has no GPU of its own.
int local_device(int local_rank, int device_count);

// The first host of a Slurm node list: "node[01-04],gpu7" -> "node01", "a,b" -> "a",
// "gpu[3,5-6]" -> "gpu3", "n-[009-010]x" -> "n-009x". Throws BootstrapError on an empty or
// malformed list.
std::string first_slurm_host(const std::string& nodelist);

}  // namespace ssmtrain::dist
