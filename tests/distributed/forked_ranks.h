// The forked-rank harness of the tests of distributed/: `world` child processes that meet
// through make_tcp_communicator on 127.0.0.1 with the torchrun-style environment, each running
// a body and exiting with its status (a collective's failure ends its process, which is why
// each rank is a process). Each rank's stderr goes to dir/rank<r>.log.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "distributed/communicator.h"
#include "distributed/socket.h"

namespace ssmtrain::dist::testing {

struct ForkedJob {
  std::filesystem::path dir;
  std::vector<pid_t> pids;
  std::vector<int> status;  // waitpid status; -1: still running

  // Waits up to `seconds` for the ranks in `which` (all when empty); true when they all ended.
  bool wait_for(double seconds, const std::vector<int>& which = {}) {
    std::vector<int> ranks = which;
    if (ranks.empty())
      for (int r = 0; r < int(pids.size()); ++r) ranks.push_back(r);
    const auto deadline = deadline_after(seconds);
    for (;;) {
      bool all = true;
      for (int r : ranks) {
        if (status[size_t(r)] != -1) continue;
        int s = 0;
        if (::waitpid(pids[size_t(r)], &s, WNOHANG) == pids[size_t(r)]) status[size_t(r)] = s;
        else all = false;
      }
      if (all) return true;
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  void kill_all() {
    for (size_t r = 0; r < pids.size(); ++r)
      if (status[r] == -1) {
        ::kill(pids[r], SIGKILL);
        ::waitpid(pids[r], &status[r], 0);
      }
  }
  std::string log(int rank) const {
    std::ifstream in(dir / ("rank" + std::to_string(rank) + ".log"));
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  int exit_code(int rank) const {
    const int s = status[size_t(rank)];
    return WIFEXITED(s) ? WEXITSTATUS(s) : -1;
  }
};

// Forks the ranks; body(comm, rank) returns the rank's exit status (an exception: 3).
inline ForkedJob fork_tcp_ranks(const std::filesystem::path& dir, int world, double timeout_s,
                                const std::function<int(Communicator&, int)>& body) {
  std::filesystem::create_directories(dir);
  const int port = free_port();
  ForkedJob job{dir, {}, std::vector<int>(size_t(world), -1)};
  for (int rank = 0; rank < world; ++rank) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      const std::string log = (dir / ("rank" + std::to_string(rank) + ".log")).string();
      if (!std::freopen(log.c_str(), "w", stderr)) std::_Exit(120);
      for (const char* v : {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "SLURM_NTASKS"})
        ::unsetenv(v);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("SSMTRAIN_JOB_TOKEN", "forked-ranks-test-token", 1);
      int code = 0;
      try {
        std::unique_ptr<Communicator> comm = make_tcp_communicator(timeout_s);
        code = body(*comm, rank);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
        code = 3;
      }
      std::fflush(stderr);
      std::_Exit(code);
    }
    job.pids.push_back(pid);
  }
  return job;
}

}  // namespace ssmtrain::dist::testing
