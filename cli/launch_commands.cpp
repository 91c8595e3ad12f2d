// `ssmtrain launch`: starts the local ranks of a data-parallel job (DESIGN.md section 6) as
// children running this same binary, with the torchrun-style environment (RANK, WORLD_SIZE,
// LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and the job token
// (SSMTRAIN_JOB_TOKEN: inherited, else SLURM_JOB_ID, else generated here). It forwards
// SIGTERM, SIGUSR1 and SIGINT to every rank; passes rank 0's output through and, of the other
// ranks, only the lines that are warnings or errors, prefixed "[rank N] ". A rank that fails on
// its own (not stopped by the launcher) also gets its last held-back lines shown, so an error
// worded without "error" (a recipe error "recipe.yaml:3:5: ...") still reaches the user. When
// one rank fails it stops the others (SIGTERM, then SIGKILL after --stop-timeout seconds) and
// exits non-zero naming that rank and how it ended.
// For tests: SSMTRAIN_TEST_RANK_ARGS="R:ARG ARG..." appends those arguments to rank R's
// command only (a rank that sees another --set than the others).
#include <fcntl.h>
#include <fmt/core.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cli/options.h"
#include "cli/subcommand.h"
#include "distributed/socket.h"

namespace ssmtrain::cli {
namespace {

struct LaunchArgs {
  int nproc_per_node = 0;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;  // 0: a free port on a single node, 29500 on several
  double stop_timeout = 30;
  std::vector<std::string> command;  // the ssmtrain subcommand each rank runs
};

void launch_options(CLI::App& app, LaunchArgs& a) {
  app.add_option("--nproc-per-node", a.nproc_per_node, "Ranks to start on this machine (one per GPU)")
      ->required()
      ->check(kPositive);
  app.add_option("--nnodes", a.nnodes, "Machines in the job (each runs its own `ssmtrain launch`)")
      ->check(kPositive);
  app.add_option("--node-rank", a.node_rank, "This machine's index, 0 .. nnodes-1 (node 0 hosts rank 0)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--master-addr", a.master_addr, "Host of rank 0, reachable from every node")
      ->capture_default_str();
  app.add_option("--master-port", a.master_port,
                 "TCP port of the rendezvous on the master (default: a free port on one node, 29500 on several)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--stop-timeout", a.stop_timeout,
                 "Seconds the other ranks get to stop after one fails, before SIGKILL")
      ->capture_default_str()
      ->check(kPositive);
  app.add_option("command", a.command, "The subcommand every rank runs, after --, e.g. -- train RECIPE.yaml")
      ->required();
}

volatile std::sig_atomic_t g_signal = 0;  // the last forwarded signal not yet passed on
extern "C" void on_signal(int signal) { g_signal = signal; }

std::string generated_token() {
  std::ifstream random("/dev/urandom", std::ios::binary);
  unsigned char bytes[16] = {};
  random.read(reinterpret_cast<char*>(bytes), sizeof(bytes));
  std::string token;
  for (unsigned char b : bytes) token += fmt::format("{:02x}", b);
  return token;
}

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int signal = WTERMSIG(status);
    return fmt::format("was killed by signal {} ({})", signal, sigabbrev_np(signal) ? sigabbrev_np(signal) : "?");
  }
  return "ended";
}

// Another rank's line worth showing: a warning, an error or ssmtrain's own failure line.
bool worth_showing(const std::string& line) {
  std::string lower(line);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return lower.find("warning") != std::string::npos || lower.find("error") != std::string::npos ||
         lower.rfind("ssmtrain:", 0) == 0;
}

constexpr size_t kHeldLines = 20;  // of another rank's hidden lines, the last ones are kept

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  int output = -1;     // read end of the pipe carrying its stdout and stderr (-1: inherited or closed)
  std::string partial;  // an unfinished line
  std::deque<std::string> held;  // the last lines not shown, for when this rank fails
  bool running = true;
  bool stopped = false;  // the launcher sent it SIGTERM because another rank failed
  int status = 0;
};

void show(Rank& r, const std::string& line) {
  if (worth_showing(line)) {
    fmt::print(stderr, "[rank {}] {}\n", r.rank, line);
    return;
  }
  r.held.push_back(line);
  if (r.held.size() > kHeldLines) r.held.pop_front();
}

// Reads what a rank wrote; false at end of file.
bool drain(Rank& r) {
  char buffer[4096];
  const ssize_t got = ::read(r.output, buffer, sizeof(buffer));
  if (got < 0 && (errno == EAGAIN || errno == EINTR)) return true;
  if (got <= 0) {
    if (!r.partial.empty()) show(r, r.partial);
    r.partial.clear();
    ::close(r.output);
    r.output = -1;
    return false;
  }
  r.partial.append(buffer, size_t(got));
  size_t newline;
  while ((newline = r.partial.find('\n')) != std::string::npos) {
    show(r, r.partial.substr(0, newline));
    r.partial.erase(0, newline + 1);
  }
  return true;
}

// Everything a rank that ended wrote, up to EOF (or a second, should a grandchild hold the pipe).
void drain_to_end(Rank& r) {
  const dist::Clock::time_point deadline = dist::deadline_after(1.0);
  while (r.output >= 0 && dist::Clock::now() < deadline) {
    pollfd fd{r.output, POLLIN, 0};
    if (::poll(&fd, 1, 100) > 0) drain(r);
  }
}

// A failed rank's hidden last lines: what it said before it ended.
void show_held(Rank& r) {
  if (r.held.empty()) return;
  fmt::print(stderr, "ssmtrain launch: the last lines rank {} wrote:\n", r.rank);
  for (const std::string& line : r.held) fmt::print(stderr, "[rank {}] {}\n", r.rank, line);
  r.held.clear();
}

// SSMTRAIN_TEST_RANK_ARGS="R:ARG ARG...": the extra arguments of rank R (none for others).
std::vector<std::string> test_args_of(int rank) {
  const char* spec = std::getenv("SSMTRAIN_TEST_RANK_ARGS");
  if (spec == nullptr) return {};
  const std::string text(spec);
  const size_t colon = text.find(':');
  if (colon == std::string::npos || text.substr(0, colon) != std::to_string(rank)) return {};
  std::vector<std::string> args;
  std::string word;
  for (char c : text.substr(colon + 1) + " ") {
    if (c != ' ') word += c;
    else if (!word.empty()) args.push_back(word), word.clear();
  }
  return args;
}

[[noreturn]] void exec_rank(const std::string& binary, const std::vector<std::string>& command, int write_end) {
  // The ranks die with the launcher rather than train on unsupervised.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  // Own process group: a terminal's Ctrl-C reaches the launcher only, which forwards it once.
  ::setpgid(0, 0);
  if (write_end >= 0) {
    ::dup2(write_end, STDOUT_FILENO);
    ::dup2(write_end, STDERR_FILENO);
    ::close(write_end);
  }
  std::vector<char*> argv;
  std::string name = "ssmtrain";
  argv.push_back(name.data());
  std::vector<std::string> args = command;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(binary.c_str(), argv.data());
  fmt::print(stderr, "ssmtrain launch: cannot run {}: {}\n", binary, std::strerror(errno));
  std::_Exit(127);
}

int run_launch(const LaunchArgs& a) {
  if (a.node_rank >= a.nnodes) {
    fmt::print(stderr, "ssmtrain launch: --node-rank {} is not below --nnodes {}\n", a.node_rank, a.nnodes);
    return 2;
  }
  if (a.command.empty() || a.command[0] == "launch") {
    fmt::print(stderr, "ssmtrain launch: after -- give the subcommand each rank runs, e.g. -- train RECIPE.yaml\n");
    return 2;
  }
  std::string token;
  if (const char* t = std::getenv("SSMTRAIN_JOB_TOKEN"); t && *t) token = t;
  else if (const char* job = std::getenv("SLURM_JOB_ID"); job && *job) token = job;
  else if (a.nnodes > 1) {
    fmt::print(stderr, "ssmtrain launch: --nnodes {}: set SSMTRAIN_JOB_TOKEN to the same secret on every node (a "
                       "token generated here would differ from the other nodes')\n", a.nnodes);
    return 2;
  } else token = generated_token();
  int port = a.master_port;
  if (port == 0) port = a.nnodes == 1 ? dist::free_port() : 29500;
  const int world = a.nnodes * a.nproc_per_node;
  const std::string binary = std::filesystem::read_symlink("/proc/self/exe").string();

  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  for (int s : {SIGTERM, SIGUSR1, SIGINT}) ::sigaction(s, &action, nullptr);
  std::fflush(stdout);
  std::fflush(stderr);

  std::vector<Rank> ranks(size_t(a.nproc_per_node));
  for (int local = 0; local < a.nproc_per_node; ++local) {
    Rank& r = ranks[size_t(local)];
    r.rank = a.node_rank * a.nproc_per_node + local;
    int pipe_ends[2] = {-1, -1};
    if (r.rank != 0 && ::pipe2(pipe_ends, O_CLOEXEC) != 0) {
      fmt::print(stderr, "ssmtrain launch: pipe: {}\n", std::strerror(errno));
      return 1;
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      fmt::print(stderr, "ssmtrain launch: fork: {}\n", std::strerror(errno));
      return 1;
    }
    if (pid == 0) {
      for (int s : {SIGTERM, SIGUSR1, SIGINT}) std::signal(s, SIG_DFL);
      ::setenv("RANK", std::to_string(r.rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(a.nproc_per_node).c_str(), 1);
      ::setenv("MASTER_ADDR", a.master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("SSMTRAIN_JOB_TOKEN", token.c_str(), 1);
      std::vector<std::string> command = a.command;
      for (std::string& extra : test_args_of(r.rank)) command.push_back(extra);
      exec_rank(binary, command, pipe_ends[1]);
    }
    r.pid = pid;
    if (pipe_ends[1] >= 0) {
      ::close(pipe_ends[1]);
      r.output = pipe_ends[0];
      ::fcntl(r.output, F_SETFL, O_NONBLOCK);
    }
  }

  const Rank* failed = nullptr;
  bool killed = false;
  dist::Clock::time_point kill_at{};
  for (;;) {
    if (const int signal = g_signal; signal != 0) {
      g_signal = 0;
      for (Rank& r : ranks)
        if (r.running) ::kill(r.pid, signal);
    }
    std::vector<pollfd> fds;
    std::vector<Rank*> owners;
    for (Rank& r : ranks)
      if (r.output >= 0) fds.push_back({r.output, POLLIN, 0}), owners.push_back(&r);
    if (!fds.empty()) {
      if (::poll(fds.data(), fds.size(), 100) > 0)
        for (size_t i = 0; i < fds.size(); ++i)
          if (fds[i].revents != 0) drain(*owners[i]);
    } else {
      ::usleep(100 * 1000);
    }
    // Reap first, judge after: a rank killed by a signal and the peer that saw its connection
    // close (and exited 1 saying so) often end within one round; the killed one is the cause.
    int running = 0;
    std::vector<Rank*> ended;
    for (Rank& r : ranks) {
      if (!r.running) continue;
      if (::waitpid(r.pid, &r.status, WNOHANG) != r.pid) {
        ++running;
        continue;
      }
      r.running = false;
      ended.push_back(&r);
    }
    const auto failing = [](const Rank* r) { return !(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 0); };
    if (failed == nullptr && std::any_of(ended.begin(), ended.end(), failing) &&
        std::none_of(ended.begin(), ended.end(), [](const Rank* r) { return WIFSIGNALED(r->status); })) {
      // A peer's socket closes before its death can be reaped: wait a moment for a killed rank.
      const dist::Clock::time_point settle = dist::deadline_after(0.5);
      while (dist::Clock::now() < settle && running > 0) {
        ::usleep(10 * 1000);
        for (Rank& r : ranks)
          if (r.running && ::waitpid(r.pid, &r.status, WNOHANG) == r.pid) {
            r.running = false;
            --running;
            ended.push_back(&r);
          }
        if (WIFSIGNALED(ended.back()->status)) break;
      }
    }
    std::stable_partition(ended.begin(), ended.end(), [](const Rank* r) { return WIFSIGNALED(r->status); });
    for (Rank* ended_rank : ended) {
      Rank& r = *ended_rank;
      const bool ok = WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0;
      if (!ok && !r.stopped) drain_to_end(r);  // all it said before the verdict below
      if (!ok && failed == nullptr) {
        failed = &r;
        fmt::print(stderr, "ssmtrain launch: rank {} (pid {}) {}; stopping the other ranks\n", r.rank, r.pid,
                   describe(r.status));
        for (Rank& other : ranks)
          if (other.running && &other != &r) {
            other.stopped = true;
            ::kill(other.pid, SIGTERM);
          }
        kill_at = dist::deadline_after(a.stop_timeout);
      }
      if (!ok && !r.stopped) show_held(r);
    }
    if (running == 0) break;
    if (failed != nullptr && !killed && dist::Clock::now() >= kill_at) {
      killed = true;
      for (Rank& r : ranks)
        if (r.running) {
          fmt::print(stderr, "ssmtrain launch: rank {} did not stop within --stop-timeout {:g} s: SIGKILL\n", r.rank,
                     a.stop_timeout);
          ::kill(r.pid, SIGKILL);
        }
    }
  }
  for (Rank& r : ranks)
    while (r.output >= 0) drain(r);
  if (failed == nullptr) return 0;
  fmt::print(stderr, "ssmtrain launch: failed: rank {} {}\n", failed->rank, describe(failed->status));
  return WIFEXITED(failed->status) ? WEXITSTATUS(failed->status) : 1;
}

}  // namespace

std::vector<Subcommand> launch_commands() {
  return {command<LaunchArgs>("launch", "Start local ranks: launch --nproc-per-node N -- train ...", launch_options,
                              run_launch)};
}

}  // namespace ssmtrain::cli
