// Launcher environments: torchrun-style, OpenMPI and Slurm variables give rank, world size,
// local rank, master address and port and the job token; the Slurm node-list forms; and
// inconsistent environments are refused naming the variable.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "distributed/bootstrap.h"

namespace ssmtrain::dist {
namespace {

LaunchEnv from(const std::map<std::string, std::string>& vars) {
  return launch_env([&](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

std::string error_of(const std::map<std::string, std::string>& vars) {
  try {
    from(vars);
  } catch (const BootstrapError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Bootstrap, NothingSetIsOneRank) {
  const LaunchEnv env = from({});
  EXPECT_EQ(env.launcher, "none");
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.token, "");
}

TEST(Bootstrap, Torchrun) {
  const LaunchEnv env = from({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.7"},
                              {"MASTER_PORT", "1234"}, {"SSMTRAIN_JOB_TOKEN", "abc"}, {"SLURM_JOB_ID", "99"}});
  EXPECT_EQ(env.launcher, "torchrun");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "10.0.0.7");
  EXPECT_EQ(env.master_port, 1234);
  EXPECT_EQ(env.token, "abc");  // SSMTRAIN_JOB_TOKEN before SLURM_JOB_ID
}

TEST(Bootstrap, OpenMpiUnderSlurmTakesTheFirstNodeAsMaster) {
  const LaunchEnv env = from({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                              {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"SLURM_JOB_NODELIST", "node[01-04],gpu7"},
                              {"SLURM_JOB_ID", "4242"}});
  EXPECT_EQ(env.launcher, "openmpi");
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.master_addr, "node01");
  EXPECT_EQ(env.master_port, 29500);
  EXPECT_EQ(env.token, "4242");
}

TEST(Bootstrap, Slurm) {
  const LaunchEnv env = from({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "2"},
                              {"SLURM_JOB_NODELIST", "gpu[3,5-6]"}, {"SLURM_JOB_ID", "77"}, {"MASTER_PORT", "4000"}});
  EXPECT_EQ(env.launcher, "slurm");
  EXPECT_EQ(env.rank, 6);
  EXPECT_EQ(env.world_size, 16);
  EXPECT_EQ(env.local_rank, 2);
  EXPECT_EQ(env.master_addr, "gpu3");
  EXPECT_EQ(env.master_port, 4000);
  EXPECT_EQ(env.token, "77");
}

TEST(Bootstrap, SlurmNodeLists) {
  EXPECT_EQ(first_slurm_host("node[01-04],gpu7"), "node01");
  EXPECT_EQ(first_slurm_host("gpu7,node[01-04]"), "gpu7");
  EXPECT_EQ(first_slurm_host("a"), "a");
  EXPECT_EQ(first_slurm_host("n-[009-010]x,b"), "n-009x");
  EXPECT_EQ(first_slurm_host("rack[7]"), "rack7");
  EXPECT_THROW(first_slurm_host(""), BootstrapError);
  EXPECT_THROW(first_slurm_host("node[01-04"), BootstrapError);
  EXPECT_THROW(first_slurm_host("node]1["), BootstrapError);
  EXPECT_THROW(first_slurm_host("node[x-y]"), BootstrapError);
  EXPECT_THROW(first_slurm_host(",a"), BootstrapError);
}

TEST(Bootstrap, InconsistentEnvironmentsNameTheVariable) {
  EXPECT_NE(error_of({{"RANK", "4"}, {"WORLD_SIZE", "4"}}).find("RANK=4 is not below WORLD_SIZE=4"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}}).find("WORLD_SIZE"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}}).find("RANK='x'"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "0"}}).find("WORLD_SIZE='0'"), std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}).find("MASTER_PORT"),
            std::string::npos);
  EXPECT_NE(error_of({{"SLURM_PROCID", "0"}}).find("SLURM_NTASKS"), std::string::npos);
  EXPECT_NE(error_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_JOB_NODELIST", "n[1"}})
                .find("SLURM_JOB_NODELIST='n[1'"),
            std::string::npos);
}

TEST(Bootstrap, LocalDeviceIsLocalRankOrTheOnlyGpu) {
  EXPECT_EQ(local_device(0, 8), 0);
  EXPECT_EQ(local_device(5, 8), 5);
  EXPECT_EQ(local_device(3, 1), 0);  // the launcher gave this rank one GPU of its own
  try {
    local_device(4, 4);
    ADD_FAILURE() << "LOCAL_RANK 4 of 4 GPUs accepted";
  } catch (const BootstrapError& e) {
    EXPECT_NE(std::string(e.what()).find("LOCAL_RANK=4 but this rank sees only 4 GPUs"), std::string::npos) << e.what();
  }
  EXPECT_THROW(local_device(0, 0), BootstrapError);
}

}  // namespace
}  // namespace ssmtrain::dist
