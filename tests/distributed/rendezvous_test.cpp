// The TCP rendezvous on 127.0.0.1 with one thread per rank: four ranks meet and all receive
// rank 0's 128-byte payload; a wrong token, a duplicate rank, a rank out of range, another
// world size and garbage bytes are refused with the reason told to the refused peer, while the
// real ranks still get in; nobody coming (or no rank 0) is an error within the timeout.
#include "distributed/rendezvous.h"
#include "distributed/communicator.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace ssmtrain::dist {
namespace {

// 128 bytes like an NCCL unique id, zeros included.
std::string unique_id() {
  std::string id(128, '\0');
  for (size_t i = 0; i < id.size(); ++i) id[i] = char((i * 37 + 11) % 256);
  id[5] = '\0';
  return id;
}

RendezvousOptions options(int port, int rank, int world, const std::string& token = "job-42", double timeout = 20) {
  RendezvousOptions o;
  o.master_addr = "127.0.0.1";
  o.master_port = port;
  o.token = token;
  o.rank = rank;
  o.world_size = world;
  o.timeout_s = timeout;
  return o;
}

// A peer's attempt: its payload, or the error it got.
struct Outcome {
  std::string payload, error;
};

std::future<Outcome> join_async(const RendezvousOptions& o) {
  return std::async(std::launch::async, [o] {
    Outcome out;
    try {
      Rendezvous r = rendezvous(o);
      out.payload = r.payload;
      // The connection stays usable: echo one byte from rank 0.
      char byte = 0;
      r.master.recv_all(&byte, 1, deadline_after(10));
      out.payload += byte;
    } catch (const RendezvousError& e) {
      out.error = e.what();
    } catch (const SocketError& e) {
      out.error = std::string("socket: ") + e.what();
    }
    return out;
  });
}

// Rank 0 in a thread; after the rendezvous it sends one byte 'A' + rank to every peer.
std::future<Outcome> serve_async(Listener& listener, int world, double timeout = 20) {
  return std::async(std::launch::async, [&listener, world, timeout] {
    Outcome out;
    try {
      Rendezvous r = rendezvous(options(listener.port(), 0, world, "job-42", timeout), unique_id(), &listener);
      out.payload = r.payload;
      for (int peer = 1; peer < world; ++peer) {
        const char byte = char('A' + peer);
        r.peers[size_t(peer)].send_all(&byte, 1, deadline_after(10));
      }
    } catch (const RendezvousError& e) {
      out.error = e.what();
    }
    return out;
  });
}

TEST(Rendezvous, FourRanksMeetAndReceiveThePayload) {
  Listener listener(0);
  auto master = serve_async(listener, 4);
  std::vector<std::future<Outcome>> peers;
  for (int r = 3; r >= 1; --r) peers.push_back(join_async(options(listener.port(), r, 4)));
  const Outcome m = master.get();
  EXPECT_EQ(m.error, "");
  for (int i = 0; i < 3; ++i) {
    const int rank = 3 - i;
    const Outcome p = peers[size_t(i)].get();
    EXPECT_EQ(p.error, "") << "rank " << rank;
    EXPECT_EQ(p.payload, unique_id() + char('A' + rank)) << "rank " << rank;
  }
}

TEST(Rendezvous, WrongTokenIsRefusedAndTheRealRankStillGetsIn) {
  Listener listener(0);
  auto master = serve_async(listener, 2);
  const Outcome stranger = join_async(options(listener.port(), 1, 2, "guess")).get();
  EXPECT_NE(stranger.error.find("refused rank 1: wrong job token"), std::string::npos) << stranger.error;
  const Outcome real = join_async(options(listener.port(), 1, 2)).get();
  EXPECT_EQ(real.error, "");
  EXPECT_EQ(real.payload, unique_id() + 'B');
  EXPECT_EQ(master.get().error, "");
}

TEST(Rendezvous, DuplicateRankIsRefused) {
  Listener listener(0);
  auto master = serve_async(listener, 3);
  auto first = join_async(options(listener.port(), 1, 3));
  auto second = join_async(options(listener.port(), 1, 3));
  // Whichever of the two came second is refused at once; the other waits for rank 2.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto third = join_async(options(listener.port(), 2, 3));
  const Outcome a = first.get(), b = second.get();
  const Outcome& refused = a.error.empty() ? b : a;
  const Outcome& accepted = a.error.empty() ? a : b;
  EXPECT_NE(refused.error.find("rank 1 is already taken"), std::string::npos) << refused.error;
  EXPECT_EQ(accepted.error, "");
  EXPECT_EQ(accepted.payload, unique_id() + 'B');
  EXPECT_EQ(third.get().error, "");
  EXPECT_EQ(master.get().error, "");
}

// A hello written by hand (rendezvous() itself refuses to send a rank outside its world):
// returns rank 0's reason for refusing it, or "" when accepted.
std::string raw_hello(int port, uint32_t rank, uint32_t world, const std::string& token) {
  Socket s = connect_until("127.0.0.1", port, deadline_after(5));
  std::string hello("SSMR", 4);
  for (uint32_t v : {1u, rank, world, uint32_t(token.size())})
    for (int i = 0; i < 4; ++i) hello.push_back(char((v >> (8 * i)) & 0xff));
  hello += token;
  s.send_all(hello.data(), hello.size(), deadline_after(5));
  char reply[8];
  s.recv_all(reply, 8, deadline_after(10));
  if (std::string(reply, 4) != "FAIL") return "";
  const uint32_t length = uint32_t((unsigned char)reply[4]) | uint32_t((unsigned char)reply[5]) << 8;
  std::string reason(length, '\0');
  s.recv_all(reason.data(), length, deadline_after(10));
  return reason;
}

TEST(Rendezvous, RankOutOfRangeAndOtherWorldSizeAreRefused) {
  Listener listener(0);
  auto master = serve_async(listener, 2);
  const Outcome other_world = join_async(options(listener.port(), 5, 6)).get();
  EXPECT_NE(other_world.error.find("world size is 6, rank 0 says 2"), std::string::npos) << other_world.error;
  EXPECT_NE(raw_hello(listener.port(), 2, 2, "job-42").find("rank 2 is out of range: peers are ranks 1 to 1"),
            std::string::npos);
  EXPECT_NE(raw_hello(listener.port(), 0, 2, "job-42").find("rank 0 is out of range"), std::string::npos);
  const Outcome real = join_async(options(listener.port(), 1, 2)).get();
  EXPECT_EQ(real.error, "");
  EXPECT_EQ(master.get().error, "");
}

TEST(Rendezvous, GarbageIsRefusedWithAReason) {
  Listener listener(0);
  auto master = serve_async(listener, 2);
  {
    Socket s = connect_until("127.0.0.1", listener.port(), deadline_after(5));
    const std::string garbage = "GET / HTTP/1.0\r\n\r\n";
    s.send_all(garbage.data(), garbage.size(), deadline_after(5));
    char reply[8];
    s.recv_all(reply, 8, deadline_after(10));
    EXPECT_EQ(std::string(reply, 4), "FAIL");
    uint32_t length = uint32_t((unsigned char)reply[4]) | uint32_t((unsigned char)reply[5]) << 8;
    std::string reason(length, '\0');
    s.recv_all(reason.data(), length, deadline_after(10));
    EXPECT_NE(reason.find("malformed message"), std::string::npos) << reason;
  }
  {
    // A hello cut short: the right magic, then the connection closes.
    Socket s = connect_until("127.0.0.1", listener.port(), deadline_after(5));
    s.send_all("SSMR\x01", 5, deadline_after(5));
  }
  const Outcome real = join_async(options(listener.port(), 1, 2)).get();
  EXPECT_EQ(real.error, "");
  EXPECT_EQ(master.get().error, "");
}

TEST(Rendezvous, NobodyComesIsAnErrorWithinTheTimeout) {
  Listener listener(0);
  const auto start = std::chrono::steady_clock::now();
  auto master = serve_async(listener, 3, 1.0);
  auto only = join_async(options(listener.port(), 2, 3, "job-42", 5.0));
  const Outcome m = master.get();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 4.0);
  EXPECT_NE(m.error.find("rank(s) 1 of 3 have not arrived"), std::string::npos) << m.error;
  // Rank 2 was in; rank 0 giving up closes its connection, and rank 2 hears it.
  const Outcome p = only.get();
  EXPECT_NE(p.error.find("rank 0 exited or gave up"), std::string::npos) << p.error;
}

TEST(Rendezvous, NoRankZeroIsAnErrorWithinTheTimeout) {
  const int port = free_port();
  const auto start = std::chrono::steady_clock::now();
  const Outcome p = join_async(options(port, 1, 2, "job-42", 1.0)).get();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 4.0);
  EXPECT_NE(p.error.find("could not connect to 127.0.0.1:" + std::to_string(port)), std::string::npos) << p.error;
  EXPECT_NE(p.error.find("distributed.timeout_s = 1 s"), std::string::npos) << p.error;
}

TEST(Rendezvous, BadOptionsAreRefusedBeforeAnyNetworking) {
  EXPECT_THROW(rendezvous(options(1, 2, 2)), RendezvousError);
  EXPECT_THROW(rendezvous(options(1, 0, 1, std::string(kMaxTokenBytes + 1, 'x'))), RendezvousError);
}

}  // namespace
}  // namespace ssmtrain::dist

namespace ssmtrain::dist {
namespace {

// The launcher's fields, field by field, for tcp and nccl alike; several ranks without a token
// are refused naming the backend, the variable and the world size; one rank needs none.
TEST(RendezvousOptions, FromTheLaunchEnvironmentAndNoTokenRefused) {
  LaunchEnv env;
  env.rank = 2;
  env.world_size = 4;
  env.master_addr = "10.1.2.3";
  env.master_port = 31234;
  env.token = "secret";
  const RendezvousOptions o = rendezvous_options(env, 42.5, "tcp");
  EXPECT_EQ(o.master_addr, "10.1.2.3");
  EXPECT_EQ(o.master_port, 31234);
  EXPECT_EQ(o.token, "secret");
  EXPECT_EQ(o.rank, 2);
  EXPECT_EQ(o.world_size, 4);
  EXPECT_EQ(o.timeout_s, 42.5);
  env.token.clear();
  try {
    rendezvous_options(env, 10, "nccl");
    ADD_FAILURE() << "no token accepted";
  } catch (const CommunicatorError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("distributed.backend: nccl: no job token"), std::string::npos) << what;
    EXPECT_NE(what.find("SSMTRAIN_JOB_TOKEN"), std::string::npos) << what;
    EXPECT_NE(what.find("all 4 ranks"), std::string::npos) << what;
  }
  env.world_size = 1;
  env.rank = 0;
  EXPECT_EQ(rendezvous_options(env, 10, "tcp").token, "");
}

}  // namespace
}  // namespace ssmtrain::dist
