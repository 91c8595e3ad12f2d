// The `tcp` backend for CPU tensors: the ranks that `ssmtrain launch` (or torchrun, srun)
// starts without mpirun talk over the sockets of the rendezvous (distributed/rendezvous.h),
// in a star around rank 0. Rank 0 receives every rank's terms, adds them in rank order with
// distributed/ordered_sum.h (so the sums are the bits of the MPI backend and of one rank) and
// sends each rank its result. Simple and bounded rather than fast: it serves CPU jobs, tests
// and CI; GPUs use NCCL. Every collective has one deadline, distributed.timeout_s after it
// starts; a peer that closes its connection (it died or exited) or misses the deadline ends
// this rank at once with a message naming the rank, the operation, the step and the peer, and
// that closes its own connections, so the other ranks follow within the timeout.
// Collectives run to completion in the call; the handles they return are already done.
#include <fmt/core.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "distributed/bootstrap.h"
#include "distributed/communicator.h"
#include "distributed/ordered_sum.h"
#include "distributed/rendezvous.h"

namespace ssmtrain::dist {
namespace {

enum class Op : uint32_t { all_reduce = 1, reduce_scatter, all_gather, broadcast, barrier, all_gather_bytes };

const char* op_name(uint32_t op) {
  switch (Op(op)) {
    case Op::all_reduce: return "all_reduce";
    case Op::reduce_scatter: return "reduce_scatter";
    case Op::all_gather: return "all_gather";
    case Op::broadcast: return "broadcast";
    case Op::barrier: return "barrier";
    case Op::all_gather_bytes: return "all_gather_bytes";
  }
  return "an unknown operation";
}

struct Done final : Pending {
  void wait() override {}
};

void check_f32(const Tensor& t, const char* what) {
  if (t.dtype() != DType::f32 || t.is_cuda() || !t.is_contiguous())
    throw CommunicatorError(fmt::format("tcp {}: expected a contiguous f32 CPU tensor, got {}", what, t.str()));
}

struct Header {
  uint32_t op = 0;
  uint32_t unused = 0;
  uint64_t bytes = 0;
};

class TcpCommunicator final : public Communicator {
 public:
  TcpCommunicator(Rendezvous links, int rank, int world, double timeout)
      : links_(std::move(links)), rank_(rank), world_(world) {
    timeout_s_ = timeout;
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "tcp"; }

  Handle all_reduce(Tensor& t, ReduceOp op) override {
    check_f32(t, "all_reduce");
    const int64_t n = t.numel();
    float* values = t.data_ptr<float>();
    Collective c(*this, Op::all_reduce);
    if (rank_ != 0) {
      c.send(0, values, n * 4);
      c.receive(0, values, n * 4);
      return done();
    }
    std::vector<std::vector<float>> theirs(static_cast<size_t>(world_));
    std::vector<const float*> terms{values};
    for (int r = 1; r < world_; ++r) {
      theirs[size_t(r)].resize(size_t(n));
      c.receive(r, theirs[size_t(r)].data(), n * 4);
      terms.push_back(theirs[size_t(r)].data());
    }
    ordered_sum(terms, n, values);
    if (op == ReduceOp::average) scale(values, n, 1.0f / float(world_));
    for (int r = 1; r < world_; ++r) c.send(r, values, n * 4);
    return done();
  }

  Handle reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override {
    check_f32(input, "reduce_scatter");
    check_f32(output, "reduce_scatter");
    const int64_t n = output.numel();
    if (input.numel() != n * world_)
      throw CommunicatorError(fmt::format("tcp reduce_scatter: input holds {} elements, expected {} ranks x {}",
                                          input.numel(), world_, n));
    Collective c(*this, Op::reduce_scatter);
    float* out = output.data_ptr<float>();
    if (rank_ != 0) {
      c.send(0, input.data(), n * world_ * 4);
      c.receive(0, out, n * 4);
      return done();
    }
    std::vector<std::vector<float>> all(static_cast<size_t>(world_));
    all[0].assign(input.data_ptr<float>(), input.data_ptr<float>() + n * world_);
    for (int r = 1; r < world_; ++r) {
      all[size_t(r)].resize(size_t(n * world_));
      c.receive(r, all[size_t(r)].data(), n * world_ * 4);
    }
    std::vector<float> block(static_cast<size_t>(n));
    for (int dest = world_ - 1; dest >= 0; --dest) {  // rank 0's own block last: `out` may alias input
      std::vector<const float*> terms;
      for (int r = 0; r < world_; ++r) terms.push_back(all[size_t(r)].data() + dest * n);
      ordered_sum(terms, n, block.data());
      if (op == ReduceOp::average) scale(block.data(), n, 1.0f / float(world_));
      if (dest == 0) std::memcpy(out, block.data(), size_t(n) * 4);
      else c.send(dest, block.data(), n * 4);
    }
    return done();
  }

  Handle all_gather(const Tensor& input, Tensor& output) override {
    check_f32(input, "all_gather");
    check_f32(output, "all_gather");
    const int64_t n = input.numel();
    if (output.numel() != n * world_)
      throw CommunicatorError(fmt::format("tcp all_gather: output holds {} elements, expected {} ranks x {}",
                                          output.numel(), world_, n));
    Collective c(*this, Op::all_gather);
    float* out = output.data_ptr<float>();
    if (rank_ != 0) {
      c.send(0, input.data(), n * 4);
      c.receive(0, out, n * world_ * 4);
      return done();
    }
    std::memmove(out, input.data(), size_t(n) * 4);
    for (int r = 1; r < world_; ++r) c.receive(r, out + r * n, n * 4);
    for (int r = 1; r < world_; ++r) c.send(r, out, n * world_ * 4);
    return done();
  }

  Handle broadcast(Tensor& t, int root) override {
    check_f32(t, "broadcast");
    if (root < 0 || root >= world_) throw CommunicatorError(fmt::format("tcp broadcast: root {} of {} ranks", root, world_));
    const int64_t bytes = t.numel() * 4;
    Collective c(*this, Op::broadcast);
    if (rank_ == 0) {
      if (root != 0) c.receive(root, t.data(), bytes);
      for (int r = 1; r < world_; ++r)
        if (r != root) c.send(r, t.data(), bytes);
    } else if (rank_ == root) {
      c.send(0, t.data(), bytes);
    } else {
      c.receive(0, t.data(), bytes);
    }
    return done();
  }

  void barrier() override { gather_bytes(Op::barrier, ""); }

  std::vector<std::string> all_gather_bytes(const std::string& mine) override {
    return gather_bytes(Op::all_gather_bytes, mine);
  }

 private:
  // One collective's messages, all under one deadline; any failure ends this rank.
  class Collective {
   public:
    Collective(TcpCommunicator& comm, Op op) : comm_(comm), op_(op), deadline_(deadline_after(comm.timeout_s_)) {}

    void send(int peer, const void* data, int64_t bytes) {
      Header h;
      h.op = uint32_t(op_);
      h.bytes = uint64_t(bytes);
      try {
        socket(peer).send_all(&h, sizeof(h), deadline_);
        socket(peer).send_all(data, size_t(bytes), deadline_);
      } catch (const SocketError& e) {
        comm_.fail(op_, peer, e);
      }
    }
    // Exactly `bytes` from peer, of this collective.
    void receive(int peer, void* data, int64_t bytes) {
      const uint64_t got = receive_header(peer);
      if (got != uint64_t(bytes))
        comm_.fail(op_, peer, fmt::format("rank {} sent {} bytes, this rank expected {} (the ranks hold different "
                                          "models or batches)", peer, got, bytes));
      receive_body(peer, data, got);
    }
    // Bytes of a length the peer says.
    std::string receive_any(int peer) {
      const uint64_t length = receive_header(peer);
      if (length > (uint64_t(1) << 32)) comm_.fail(op_, peer, fmt::format("rank {} announced {} bytes", peer, length));
      std::string out(size_t(length), '\0');
      receive_body(peer, out.data(), length);
      return out;
    }

   private:
    Socket& socket(int peer) { return comm_.rank_ == 0 ? comm_.links_.peers[size_t(peer)] : comm_.links_.master; }
    uint64_t receive_header(int peer) {
      Header h;
      try {
        socket(peer).recv_all(&h, sizeof(h), deadline_);
      } catch (const SocketError& e) {
        comm_.fail(op_, peer, e);
      }
      if (h.op != uint32_t(op_))
        comm_.fail(op_, peer, fmt::format("rank {} is in {} instead (the ranks run different steps)", peer, op_name(h.op)));
      return h.bytes;
    }
    void receive_body(int peer, void* data, uint64_t bytes) {
      try {
        socket(peer).recv_all(data, size_t(bytes), deadline_);
      } catch (const SocketError& e) {
        comm_.fail(op_, peer, e);
      }
    }
    TcpCommunicator& comm_;
    Op op_;
    Clock::time_point deadline_;
  };

  std::vector<std::string> gather_bytes(Op op, const std::string& mine) {
    Collective c(*this, op);
    std::vector<std::string> all;
    if (rank_ == 0) {
      all.push_back(mine);
      for (int r = 1; r < world_; ++r) all.push_back(c.receive_any(r));
      std::string packed;
      for (const std::string& s : all) {
        const uint64_t length = s.size();
        packed.append(reinterpret_cast<const char*>(&length), sizeof(length));
        packed += s;
      }
      for (int r = 1; r < world_; ++r) c.send(r, packed.data(), int64_t(packed.size()));
      return all;
    }
    c.send(0, mine.data(), int64_t(mine.size()));
    const std::string packed = c.receive_any(0);
    size_t at = 0;
    for (int r = 0; r < world_; ++r) {
      uint64_t length = 0;
      if (at + sizeof(length) > packed.size()) fail(op, 0, std::string("rank 0 sent a truncated answer"));
      std::memcpy(&length, packed.data() + at, sizeof(length));
      at += sizeof(length);
      if (at + length > packed.size()) fail(op, 0, std::string("rank 0 sent a truncated answer"));
      all.push_back(packed.substr(at, size_t(length)));
      at += size_t(length);
    }
    return all;
  }

  [[noreturn]] void fail(Op op, int peer, const SocketError& e) {
    fail(op, peer, e.kind() == SocketError::Kind::closed
                       ? fmt::format("rank {} closed its connection (it died or exited)", peer)
                   : e.kind() == SocketError::Kind::timeout
                       ? fmt::format("no answer from rank {} within distributed.timeout_s = {:g} s", peer, timeout_s_)
                       : fmt::format("with rank {}: {}", peer, e.what()));
  }
  [[noreturn]] void fail(Op op, int peer, const std::string& why) {
    (void)peer;
    std::fflush(stdout);
    fmt::print(stderr, "error: rank {} of {}: {} at step {} failed: {}; stopping this rank\n", rank_, world_,
               op_name(uint32_t(op)), step_, why);
    std::fflush(stderr);
    std::_Exit(1);
  }

  static Handle done() { return std::make_unique<Done>(); }
  static void scale(float* x, int64_t n, float factor) {
    for (int64_t i = 0; i < n; ++i) x[i] *= factor;
  }

  Rendezvous links_;
  int rank_ = 0, world_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_tcp_communicator(double timeout_s) {
  const LaunchEnv env = launch_env();
  const RendezvousOptions o = rendezvous_options(env, timeout_s, "tcp");
  Rendezvous links;
  try {
    links = rendezvous(o, "tcp");
  } catch (const RendezvousError& e) {
    throw CommunicatorError(fmt::format("distributed.backend: tcp: {}", e.what()));
  }
  if (links.payload != "tcp")
    throw CommunicatorError("distributed.backend: tcp: rank 0 runs another backend; give every rank the same "
                            "distributed.backend");
  return std::make_unique<TcpCommunicator>(std::move(links), env.rank, env.world_size, timeout_s);
}

}  // namespace ssmtrain::dist
