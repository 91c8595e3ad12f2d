// See rendezvous.h.
#include "distributed/rendezvous.h"

#include "distributed/communicator.h"

#include <arpa/inet.h>
#include <fmt/core.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>

namespace ssmtrain::dist {
namespace {

constexpr uint32_t kVersion = 1;
constexpr double kHelloSeconds = 5;  // a connected peer that says nothing for this long is refused

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}

uint32_t get_u32(const unsigned char* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

uint32_t recv_u32(Socket& s, Clock::time_point deadline) {
  unsigned char bytes[4];
  s.recv_all(bytes, 4, deadline);
  return get_u32(bytes);
}

std::string framed(const char tag[4], const std::string& body) {
  std::string out(tag, 4);
  put_u32(out, uint32_t(body.size()));
  return out + body;
}

std::string peer_address(const Socket& s) {
  sockaddr_in address{};
  socklen_t length = sizeof(address);
  if (::getpeername(s.fd(), reinterpret_cast<sockaddr*>(&address), &length) != 0) return "an unknown address";
  char text[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &address.sin_addr, text, sizeof(text));
  return fmt::format("{}:{}", text, ntohs(address.sin_port));
}

struct Hello {
  int rank = -1;
  std::string refusal;  // empty: accepted
};

// Reads one peer's hello and judges it against the job; a refusal says why.
Hello read_hello(Socket& s, const RendezvousOptions& o, const std::vector<bool>& arrived, Clock::time_point deadline) {
  const Clock::time_point hello_deadline = std::min(deadline, deadline_after(kHelloSeconds));
  Hello h;
  try {
    char magic[4];
    s.recv_all(magic, 4, hello_deadline);
    if (std::memcmp(magic, "SSMR", 4) != 0) {
      h.refusal = "malformed message: not an ssmtrain rendezvous hello";
      return h;
    }
    const uint32_t version = recv_u32(s, hello_deadline);
    if (version != kVersion) {
      h.refusal = fmt::format("rendezvous version {}, rank 0 speaks version {} (mixed ssmtrain builds?)", version, kVersion);
      return h;
    }
    const uint32_t rank = recv_u32(s, hello_deadline), world = recv_u32(s, hello_deadline);
    const uint32_t token_length = recv_u32(s, hello_deadline);
    if (token_length > kMaxTokenBytes) {
      h.refusal = fmt::format("malformed message: a token of {} bytes (at most {})", token_length, kMaxTokenBytes);
      return h;
    }
    std::string token(token_length, '\0');
    s.recv_all(token.data(), token_length, hello_deadline);
    if (token != o.token) h.refusal = "wrong job token (every rank needs the same SSMTRAIN_JOB_TOKEN)";
    else if (int(world) != o.world_size)
      h.refusal = fmt::format("rank {} says the world size is {}, rank 0 says {}", rank, world, o.world_size);
    else if (rank == 0 || int(rank) >= o.world_size)
      h.refusal = fmt::format("rank {} is out of range: peers are ranks 1 to {}", rank, o.world_size - 1);
    else if (arrived[rank]) h.refusal = fmt::format("rank {} is already taken by another process", rank);
    else h.rank = int(rank);
  } catch (const SocketError& e) {
    h.refusal = fmt::format("malformed message: the hello ended early ({})", e.what());
  }
  return h;
}

Rendezvous serve(const RendezvousOptions& o, const std::string& payload, Listener* given) {
  const Clock::time_point deadline = deadline_after(o.timeout_s);
  std::optional<Listener> own;
  Listener* listener = given;
  if (listener == nullptr) {
    try {
      own.emplace(o.master_port);
    } catch (const SocketError& e) {
      throw RendezvousError(fmt::format("rendezvous: rank 0 {}", e.what()));
    }
    listener = &*own;
  }
  Rendezvous result;
  result.payload = payload;
  result.peers.resize(size_t(o.world_size));
  std::vector<bool> arrived(size_t(o.world_size), false);
  arrived[0] = true;
  std::vector<std::string> refused;
  int waiting = o.world_size - 1;
  while (waiting > 0) {
    Socket s = listener->accept_until(deadline);
    if (!s.valid()) {
      std::string missing;
      for (int r = 1; r < o.world_size; ++r)
        if (!arrived[size_t(r)]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      std::string also;
      for (const std::string& why : refused) also += "; refused meanwhile: " + why;
      throw RendezvousError(fmt::format(
          "rendezvous on port {}: after distributed.timeout_s = {:g} s, rank(s) {} of {} have not arrived (did "
          "they start, with MASTER_ADDR pointing at this host and the same MASTER_PORT?){}",
          listener->port(), o.timeout_s, missing, o.world_size, also));
    }
    const std::string from = peer_address(s);
    const Hello h = read_hello(s, o, arrived, deadline);
    if (!h.refusal.empty()) {
      fmt::print(stderr, "warning: rendezvous: refused a peer from {}: {}\n", from, h.refusal);
      refused.push_back(from + ": " + h.refusal);
      try {
        const std::string reply = framed("FAIL", h.refusal);
        s.send_all(reply.data(), reply.size(), std::min(deadline, deadline_after(kHelloSeconds)));
      } catch (const SocketError&) {
        // A stranger that does not listen to the refusal: nothing more to tell it.
      }
      continue;
    }
    arrived[size_t(h.rank)] = true;
    result.peers[size_t(h.rank)] = std::move(s);
    --waiting;
  }
  const std::string reply = framed("OKAY", payload);
  for (int r = 1; r < o.world_size; ++r) {
    try {
      result.peers[size_t(r)].send_all(reply.data(), reply.size(), deadline);
    } catch (const SocketError& e) {
      throw RendezvousError(fmt::format("rendezvous: sending the start to rank {} failed: {}", r, e.what()));
    }
  }
  return result;
}

Rendezvous join(const RendezvousOptions& o) {
  const Clock::time_point deadline = deadline_after(o.timeout_s);
  const std::string where = fmt::format("{}:{}", o.master_addr, o.master_port);
  Rendezvous result;
  try {
    result.master = connect_until(o.master_addr, o.master_port, deadline);
    std::string hello("SSMR", 4);
    put_u32(hello, kVersion);
    put_u32(hello, uint32_t(o.rank));
    put_u32(hello, uint32_t(o.world_size));
    put_u32(hello, uint32_t(o.token.size()));
    hello += o.token;
    result.master.send_all(hello.data(), hello.size(), deadline);
    char tag[4];
    result.master.recv_all(tag, 4, deadline);
    const bool ok = std::memcmp(tag, "OKAY", 4) == 0;
    if (!ok && std::memcmp(tag, "FAIL", 4) != 0)
      throw RendezvousError(fmt::format("rendezvous: rank {}: {} answered with a malformed message (another "
                                        "service on MASTER_PORT?)", o.rank, where));
    const uint32_t length = recv_u32(result.master, deadline);
    if (length > kMaxPayloadBytes)
      throw RendezvousError(fmt::format("rendezvous: rank {}: {} sent a malformed answer of {} bytes", o.rank, where, length));
    std::string body(length, '\0');
    result.master.recv_all(body.data(), length, deadline);
    if (!ok) throw RendezvousError(fmt::format("rendezvous: rank 0 at {} refused rank {}: {}", where, o.rank, body));
    result.payload = std::move(body);
  } catch (const SocketError& e) {
    throw RendezvousError(fmt::format(
        "rendezvous: rank {} of {} with rank 0 at {}: {}{}", o.rank, o.world_size, where, e.what(),
        e.kind() == SocketError::Kind::closed ? " (rank 0 exited or gave up)"
        : e.kind() == SocketError::Kind::timeout
            ? fmt::format(" within distributed.timeout_s = {:g} s (are all ranks started?)", o.timeout_s)
            : std::string()));
  }
  return result;
}

}  // namespace

Rendezvous rendezvous(const RendezvousOptions& options, const std::string& payload, Listener* listener) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size)
    throw RendezvousError(fmt::format("rendezvous: rank {} of world size {}", options.rank, options.world_size));
  if (options.token.size() > kMaxTokenBytes)
    throw RendezvousError(fmt::format("rendezvous: the job token has {} bytes, at most {}", options.token.size(), kMaxTokenBytes));
  if (payload.size() > kMaxPayloadBytes)
    throw RendezvousError(fmt::format("rendezvous: a payload of {} bytes, at most {}", payload.size(), kMaxPayloadBytes));
  if (options.rank == 0) return serve(options, payload, listener);
  return join(options);
}

RendezvousOptions rendezvous_options(const LaunchEnv& env, double timeout_s, const std::string& backend) {
  if (env.world_size > 1 && env.token.empty())
    throw CommunicatorError(fmt::format(
        "distributed.backend: {}: no job token: set SSMTRAIN_JOB_TOKEN to the same secret on all {} ranks "
        "(`ssmtrain launch` and Slurm, through SLURM_JOB_ID, provide one)", backend, env.world_size));
  RendezvousOptions o;
  o.master_addr = env.master_addr;
  o.master_port = env.master_port;
  o.token = env.token;
  o.rank = env.rank;
  o.world_size = env.world_size;
  o.timeout_s = timeout_s;
  return o;
}

}  // namespace ssmtrain::dist
