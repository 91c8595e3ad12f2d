// See socket.h.
#include "distributed/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/core.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

namespace ssmtrain::dist {
namespace {

int milliseconds_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : int(std::min<long long>(left, 1000));  // wake at least once a second
}

SocketError system_error(const char* what) {
  return SocketError(SocketError::Kind::system, fmt::format("{}: {}", what, std::strerror(errno)));
}

// Waits until fd is ready for `events` or the deadline passes (false).
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int ready = ::poll(&p, 1, milliseconds_left(deadline));
    if (ready > 0) return true;
    if (ready < 0 && errno != EINTR) throw system_error("poll");
    if (Clock::now() >= deadline) return false;
  }
}

void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw system_error("fcntl");
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.release();
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Socket::send_all(const void* data, size_t n, Clock::time_point deadline) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t sent = ::send(fd_, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent > 0) {
      p += sent, n -= size_t(sent);
      continue;
    }
    if (sent < 0 && (errno == EPIPE || errno == ECONNRESET))
      throw SocketError(SocketError::Kind::closed, "the other side closed the connection");
    if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) throw system_error("send");
    if (!wait_ready(fd_, POLLOUT, deadline)) throw SocketError(SocketError::Kind::timeout, "send timed out");
  }
}

void Socket::recv_all(void* data, size_t n, Clock::time_point deadline) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t got = ::recv(fd_, p, n, MSG_DONTWAIT);
    if (got > 0) {
      p += got, n -= size_t(got);
      continue;
    }
    if (got == 0 || (got < 0 && errno == ECONNRESET))
      throw SocketError(SocketError::Kind::closed, "the other side closed the connection");
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) throw system_error("recv");
    if (!wait_ready(fd_, POLLIN, deadline)) throw SocketError(SocketError::Kind::timeout, "receive timed out");
  }
}

Listener::Listener(int port) {
  socket_ = Socket(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket_.valid()) throw system_error("socket");
  int one = 1;
  ::setsockopt(socket_.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = htons(uint16_t(port));
  if (::bind(socket_.fd(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0)
    throw SocketError(SocketError::Kind::system,
                      fmt::format("cannot listen on port {}: {} (another job on this port? choose another "
                                  "MASTER_PORT)", port, std::strerror(errno)));
  if (::listen(socket_.fd(), 128) != 0) throw system_error("listen");
  socklen_t length = sizeof(address);
  ::getsockname(socket_.fd(), reinterpret_cast<sockaddr*>(&address), &length);
  port_ = ntohs(address.sin_port);
  set_nonblocking(socket_.fd());
}

Socket Listener::accept_until(Clock::time_point deadline) {
  for (;;) {
    const int fd = ::accept4(socket_.fd(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      set_nodelay(fd);
      return Socket(fd);
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
      throw system_error("accept");
    if (!wait_ready(socket_.fd(), POLLIN, deadline)) return Socket();
  }
}

Socket connect_until(const std::string& host, int port, Clock::time_point deadline) {
  std::string last_error = "nobody listening";
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int resolved = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
    if (resolved != 0) {
      last_error = fmt::format("cannot resolve '{}': {}", host, ::gai_strerror(resolved));
    } else {
      Socket s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      const int rc = ::connect(s.fd(), found->ai_addr, found->ai_addrlen);
      ::freeaddrinfo(found);
      bool connected = rc == 0;
      if (!connected && errno == EINPROGRESS && wait_ready(s.fd(), POLLOUT, deadline)) {
        int error = 0;
        socklen_t length = sizeof(error);
        ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &error, &length);
        connected = error == 0;
        if (!connected) errno = error;
      }
      if (connected) {
        set_nodelay(s.fd());
        return s;
      }
      last_error = std::strerror(errno);
    }
    if (Clock::now() + std::chrono::milliseconds(100) >= deadline)
      throw SocketError(SocketError::Kind::timeout,
                        fmt::format("could not connect to {}:{} before the deadline ({})", host, port, last_error));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

int free_port() {
  Listener probe(0);
  return probe.port();
}

}  // namespace ssmtrain::dist
