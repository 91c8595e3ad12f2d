// distributed.backend resolved from the launcher's environment (distributed/communicator.h):
// what `auto` picks under no launcher, `ssmtrain launch`/torchrun, srun and mpirun, on CPUs and
// GPUs; and the pre-flight reasons a choice cannot run (nccl without NCCL or a GPU, a CPU
// backend for a GPU run, single under a launcher of several ranks, an unknown name).
#include "distributed/communicator.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace ssmtrain::dist {
namespace {

// Sets exactly `vars` of the launcher variables for one test (the rest unset), restored after.
class Environment : public ::testing::Test {
 protected:
  static constexpr const char* kNames[] = {"RANK",          "WORLD_SIZE", "LOCAL_RANK",          "MASTER_ADDR",
                                           "MASTER_PORT",   "SLURM_PROCID", "SLURM_NTASKS",      "SLURM_LOCALID",
                                           "SLURM_JOB_NODELIST", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                                           "PMIX_RANK",     "PMI_SIZE"};
  void SetUp() override {
    for (const char* name : kNames) {
      if (const char* v = std::getenv(name)) saved_.push_back({name, v});
      ::unsetenv(name);
    }
  }
  void TearDown() override {
    for (const char* name : kNames) ::unsetenv(name);
    for (const auto& [name, value] : saved_) ::setenv(name.c_str(), value.c_str(), 1);
  }
  void set(const std::vector<std::pair<const char*, const char*>>& vars) {
    for (const auto& [name, value] : vars) ::setenv(name, value, 1);
  }
  std::vector<std::pair<std::string, std::string>> saved_;
};

TEST_F(Environment, AutoWithoutALauncherIsSingleOnCpuAndGpu) {
  EXPECT_EQ(resolve_backend("auto", false), "single");
  EXPECT_EQ(resolve_backend("auto", true), "single");
  EXPECT_EQ(backend_problem("auto", false), "");
  EXPECT_EQ(backend_problem("auto", true), "");
}

TEST_F(Environment, AutoUnderALauncherIsTcpOnCpusAndNcclOnGpus) {
  set({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
  EXPECT_EQ(resolve_backend("auto", false), "tcp");
  if (nccl_available()) {
    EXPECT_EQ(resolve_backend("auto", true), "nccl");
    EXPECT_EQ(backend_problem("auto", true), "");
  } else {
    EXPECT_NE(backend_problem("auto", true).find("2 ranks on GPUs need the NCCL backend"), std::string::npos);
  }
  // One rank from the launcher on a GPU: nccl too (the launcher's job runs its real backend).
  set({{"RANK", "0"}, {"WORLD_SIZE", "1"}});
  EXPECT_EQ(resolve_backend("auto", true), nccl_available() ? "nccl" : "single");
  EXPECT_EQ(resolve_backend("auto", false), "single");
}

TEST_F(Environment, AutoUnderSrunIsTcpAndUnderMpirunMpi) {
  set({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_JOB_NODELIST", "node[01-02]"}});
  EXPECT_EQ(resolve_backend("auto", false), "tcp");
  ::unsetenv("SLURM_PROCID");
  ::unsetenv("SLURM_NTASKS");
  set({{"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_RANK", "0"}});
  EXPECT_EQ(resolve_backend("auto", false), "mpi");
  if (!mpi_available()) EXPECT_NE(backend_problem("auto", false).find("built without MPI"), std::string::npos);
}

TEST_F(Environment, NamedBackendsPassThrough) {
  for (const char* name : {"single", "mpi", "tcp", "nccl"}) EXPECT_EQ(resolve_backend(name, false), name);
}

TEST_F(Environment, NcclWithoutNcclOrWithoutAGpuSaysWhy) {
  const std::string cpu = backend_problem("nccl", false);
  EXPECT_NE(cpu.find(nccl_available() ? "no GPU is visible here" : "built without NCCL"), std::string::npos) << cpu;
  EXPECT_NE(cpu.find("use mpi"), std::string::npos) << cpu;
  if (!nccl_available()) EXPECT_NE(backend_problem("nccl", true).find("built without NCCL"), std::string::npos);
  else EXPECT_EQ(backend_problem("nccl", true), "");
}

TEST_F(Environment, CpuBackendsRefuseAGpuRunAndSingleRefusesSeveralRanks) {
  EXPECT_NE(backend_problem("tcp", true).find("tcp reduces CPU tensors, but this run trains on a GPU"),
            std::string::npos);
  EXPECT_NE(backend_problem("mpi", true).find("mpi reduces CPU tensors"), std::string::npos);
  EXPECT_EQ(backend_problem("single", false), "");
  set({{"RANK", "0"}, {"WORLD_SIZE", "3"}});
  EXPECT_NE(backend_problem("single", false).find("the torchrun launcher started 3 ranks"), std::string::npos)
      << backend_problem("single", false);
  EXPECT_NE(backend_problem("gloo", false).find("unknown backend 'gloo'"), std::string::npos);
}

TEST_F(Environment, AnInconsistentLauncherEnvironmentIsTheProblem) {
  set({{"RANK", "0"}});
  EXPECT_NE(backend_problem("auto", false).find("RANK is set but WORLD_SIZE is not"), std::string::npos);
  EXPECT_THROW(make_communicator("auto", false, 1), CommunicatorError);
}

}  // namespace
}  // namespace ssmtrain::dist
