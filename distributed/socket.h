// Blocking-with-a-deadline TCP for the rendezvous and the `tcp` backend: every connect, send and
// receive waits with poll() until a deadline and no longer, so a peer that dies or never comes
// turns into an error instead of a hang. SIGPIPE is never raised (MSG_NOSIGNAL).
#pragma once

#include <chrono>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace ssmtrain::dist {

using Clock = std::chrono::steady_clock;

inline Clock::time_point deadline_after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Why a socket operation failed: the deadline passed, the other side closed the connection
// (it exited or died), or the system refused (what() holds strerror).
class SocketError : public std::runtime_error {
 public:
  enum class Kind { timeout, closed, system };
  SocketError(Kind kind, const std::string& what) : std::runtime_error(what), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// An owned file descriptor of a TCP socket (closed on destruction).
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(other.release()) {}
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { close(); }

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void close();

  // All n bytes, or a SocketError.
  void send_all(const void* data, size_t n, Clock::time_point deadline);
  void recv_all(void* data, size_t n, Clock::time_point deadline);

 private:
  int fd_ = -1;
};

// A listening socket on every interface at `port` (0: the system picks; see port()).
class Listener {
 public:
  explicit Listener(int port);
  int port() const { return port_; }
  // The next connection, or an invalid Socket when the deadline passes first.
  Socket accept_until(Clock::time_point deadline);

 private:
  Socket socket_;
  int port_ = 0;
};

// Connects to host:port, retrying every 100 ms while nobody listens yet, until the deadline
// (then a SocketError of kind timeout naming the address and the last error).
Socket connect_until(const std::string& host, int port, Clock::time_point deadline);

// A TCP port free on this machine right now (bound and released): for a single-node launch.
int free_port();

}  // namespace ssmtrain::dist
