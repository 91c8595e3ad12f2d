// See preemption.h. The handler only stores the signal number (async-signal-safe).
#include "train/preemption.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>

namespace ssmtrain {
namespace {

std::atomic<int> g_requested{0};
std::atomic<bool> g_installed{false};
struct sigaction g_previous[3];
constexpr int kSignals[3] = {SIGTERM, SIGUSR1, SIGINT};

void on_signal(int signal) {
  if (signal == SIGINT && g_requested.load() == SIGINT) {
    // The second Ctrl-C: stop now, with the status a shell expects of an interrupted program.
    ::signal(SIGINT, SIG_DFL);
    ::raise(SIGINT);
    return;
  }
  int expected = 0;
  g_requested.compare_exchange_strong(expected, signal);
  if (signal == SIGINT && expected != 0 && expected != SIGINT) g_requested.store(SIGINT);
  static const char kNote[] = "\nstop requested: finishing this step, then saving a checkpoint\n";
  [[maybe_unused]] const ssize_t ignored = ::write(STDERR_FILENO, kNote, sizeof(kNote) - 1);
}

}  // namespace

StopSignals::StopSignals() {
  if (g_installed.exchange(true)) throw std::logic_error("StopSignals: already installed");
  g_requested.store(0);
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &action, &g_previous[i]);
}

StopSignals::~StopSignals() {
  for (int i = 0; i < 3; ++i) sigaction(kSignals[i], &g_previous[i], nullptr);
  g_installed.store(false);
}

int StopSignals::requested() const { return g_requested.load(); }

const char* StopSignals::name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    case SIGINT: return "SIGINT";
    default: return "a signal";
  }
}

}  // namespace ssmtrain
