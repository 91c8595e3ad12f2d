// The `nccl` backend: collectives on GPU tensors (f32, bf16, f16, i32, i64) through NCCL, on
// this rank's own communication stream. A collective first waits (on the device) for the work
// queued so far on the caller's current stream, so it sees what that work produced; its handle's
// wait() makes the caller's stream wait for it in turn, without blocking the host. The unique id
// reaches the ranks through the TCP rendezvous on MASTER_ADDR:MASTER_PORT (or, under mpirun,
// through MPI); the GPU is LOCAL_RANK's (distributed/bootstrap.h local_device).
// A watchdog thread follows every collective, and the NCCL start-up, in flight: one that has not
// finished within distributed.timeout_s ends the rank with a message naming the rank, the
// operation and the step, after ncclCommAbort (so NCCL's own threads do not keep it alive).
// Host-side results (barrier, all_gather_bytes) go through small device buffers and block.
// Compiled only in builds with CUDA and NCCL (cmake/ssmtrain_nccl.cmake).
#if SSMTRAIN_WITH_NCCL

#include <cuda_runtime.h>
#include <fmt/core.h>
#include <nccl.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "autograd/stream.h"
#include "distributed/bootstrap.h"
#include "distributed/communicator.h"
#include "distributed/rendezvous.h"

namespace ssmtrain::dist {
namespace {

constexpr const char* kPayloadTag = "nccl:";

using SharedEvent = std::shared_ptr<CUevent_st>;  // destroyed when the handle and the watchdog let go

SharedEvent new_event() {
  cudaEvent_t event = nullptr;
  if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess)
    throw CommunicatorError("nccl: cudaEventCreate failed");
  return SharedEvent(event, [](cudaEvent_t e) { cudaEventDestroy(e); });
}

class NcclCommunicator;

// A started collective: wait() orders the caller's current stream after it.
class NcclPending final : public Pending {
 public:
  NcclPending(int device, SharedEvent done) : device_(device), done_(std::move(done)) {}
  ~NcclPending() override { wait(); }
  void wait() override {
    if (!done_) return;
    cudaStreamWaitEvent(current_stream(device_), done_.get(), 0);
    done_.reset();
  }

 private:
  int device_;
  SharedEvent done_;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(int rank, int world, int device, const ncclUniqueId& id, double timeout)
      : rank_(rank), world_(world), device_(device) {
    timeout_s_ = timeout;
    if (cudaSetDevice(device_) != cudaSuccess)
      throw CommunicatorError(fmt::format("nccl: rank {}: cannot use GPU {}", rank_, device_));
    stream_ = std::make_unique<Stream>(device_);
    watchdog_ = std::thread([this] { watch(); });
    const uint64_t init = begin_host("NCCL start-up (ncclCommInitRank)");
    const ncclResult_t result = ncclCommInitRank(&comm_, world_, id, rank_);
    end_host(init);
    if (result != ncclSuccess) {
      stop_watchdog();  // the destructor does not run for an object whose constructor threw
      comm_ = nullptr;
      throw CommunicatorError(fmt::format("nccl: rank {} of {} on GPU {}: ncclCommInitRank: {}", rank_, world_,
                                          device_, ncclGetErrorString(result)));
    }
  }

  ~NcclCommunicator() override {
    stop_watchdog();
    if (comm_ != nullptr) {
      cudaStreamSynchronize(stream_->get());
      ncclCommDestroy(comm_);
    }
    if (scratch_ != nullptr) cudaFree(scratch_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "nccl"; }

  Handle all_reduce(Tensor& t, ReduceOp op) override {
    const ncclDataType_t type = check(t, "all_reduce", op);
    return enqueue("all_reduce", [&](cudaStream_t s) {
      return ncclAllReduce(t.data(), t.data(), size_t(t.numel()), type, nccl_op(op), comm_, s);
    });
  }

  Handle reduce_scatter(const Tensor& input, Tensor& output, ReduceOp op) override {
    const ncclDataType_t type = check(input, "reduce_scatter", op);
    if (check(output, "reduce_scatter", op) != type || input.numel() != output.numel() * world_)
      throw CommunicatorError(fmt::format("nccl reduce_scatter: input {} is not {} blocks of output {}", input.str(),
                                          world_, output.str()));
    return enqueue("reduce_scatter", [&](cudaStream_t s) {
      return ncclReduceScatter(input.data(), output.data(), size_t(output.numel()), type, nccl_op(op), comm_, s);
    });
  }

  Handle all_gather(const Tensor& input, Tensor& output) override {
    const ncclDataType_t type = check(input, "all_gather");
    if (check(output, "all_gather") != type || output.numel() != input.numel() * world_)
      throw CommunicatorError(fmt::format("nccl all_gather: output {} is not {} blocks of input {}", output.str(),
                                          world_, input.str()));
    return enqueue("all_gather", [&](cudaStream_t s) {
      return ncclAllGather(input.data(), output.data(), size_t(input.numel()), type, comm_, s);
    });
  }

  Handle broadcast(Tensor& t, int root) override {
    const ncclDataType_t type = check(t, "broadcast");
    if (root < 0 || root >= world_) throw CommunicatorError(fmt::format("nccl broadcast: root {} of {} ranks", root, world_));
    return enqueue("broadcast", [&](cudaStream_t s) {
      return ncclBroadcast(t.data(), t.data(), size_t(t.numel()), type, root, comm_, s);
    });
  }

  void barrier() override { gather_bytes("barrier", ""); }

  std::vector<std::string> all_gather_bytes(const std::string& mine) override {
    return gather_bytes("all_gather_bytes", mine);
  }

 private:
  // Work the watchdog follows: a collective until its event completes, or a host-side phase
  // (event null) until end_host.
  struct InFlight {
    uint64_t id;
    const char* operation;
    int64_t step;
    Clock::time_point deadline;
    SharedEvent done;
  };

  ncclDataType_t check(const Tensor& t, const char* operation, std::optional<ReduceOp> op = std::nullopt) const {
    if (!t.is_cuda() || t.device().index != device_ || !t.is_contiguous())
      throw CommunicatorError(fmt::format("nccl {}: expected a contiguous tensor on cuda:{}, got {}", operation,
                                          device_, t.str()));
    const bool floating =
        t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f16 || t.dtype() == DType::f64;
    if (op == ReduceOp::average && !floating)
      throw CommunicatorError(fmt::format("nccl {}: an average of integers ({})", operation, t.str()));
    switch (t.dtype()) {
      case DType::f32: return ncclFloat32;
      case DType::bf16: return ncclBfloat16;
      case DType::f16: return ncclFloat16;
      case DType::i32: return ncclInt32;
      case DType::i64: return ncclInt64;
      case DType::u8: return ncclUint8;
      case DType::f64: return ncclFloat64;
    }
    throw CommunicatorError(fmt::format("nccl {}: unsupported dtype in {}", operation, t.str()));
  }
  static ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclAvg; }

  // Queues `call` on the communication stream after the caller's work, under the watchdog.
  template <typename Call>
  Handle enqueue(const char* operation, Call&& call) {
    DeviceGuard guard(device_);
    const SharedEvent ready = new_event();
    cudaEventRecord(ready.get(), current_stream(device_));
    cudaStreamWaitEvent(stream_->get(), ready.get(), 0);
    const ncclResult_t result = call(stream_->get());
    if (result != ncclSuccess) fail(operation, ncclGetErrorString(result));
    SharedEvent done = new_event();
    cudaEventRecord(done.get(), stream_->get());
    follow(operation, done);
    return std::make_unique<NcclPending>(device_, std::move(done));
  }

  // Blocks until the communication stream has passed everything queued (the watchdog bounds it).
  void finish(const char* operation) {
    SharedEvent done = new_event();
    cudaEventRecord(done.get(), stream_->get());
    follow(operation, done);
    if (cudaEventSynchronize(done.get()) != cudaSuccess) fail(operation, "the communication stream failed");
  }

  // Every rank's bytes: lengths first, then the bytes padded to the longest.
  std::vector<std::string> gather_bytes(const char* operation, const std::string& mine) {
    DeviceGuard guard(device_);
    const size_t world = size_t(world_);
    int64_t length = int64_t(mine.size());
    reserve(sizeof(int64_t) * (world + 1));
    cudaStream_t s = stream_->get();
    auto* lengths = static_cast<int64_t*>(scratch_);
    cudaMemcpyAsync(lengths, &length, sizeof(length), cudaMemcpyHostToDevice, s);
    if (const ncclResult_t r = ncclAllGather(lengths, lengths + 1, 1, ncclInt64, comm_, s); r != ncclSuccess)
      fail(operation, ncclGetErrorString(r));
    std::vector<int64_t> all_lengths(world);
    cudaMemcpyAsync(all_lengths.data(), lengths + 1, sizeof(int64_t) * world, cudaMemcpyDeviceToHost, s);
    finish(operation);
    const size_t longest = size_t(*std::max_element(all_lengths.begin(), all_lengths.end()));
    std::vector<std::string> out(world);
    if (longest == 0) return out;
    reserve(longest * (world + 1));
    auto* bytes = static_cast<uint8_t*>(scratch_);
    std::string padded = mine;
    padded.resize(longest, '\0');
    cudaMemcpyAsync(bytes, padded.data(), longest, cudaMemcpyHostToDevice, s);
    if (const ncclResult_t r = ncclAllGather(bytes, bytes + longest, longest, ncclUint8, comm_, s); r != ncclSuccess)
      fail(operation, ncclGetErrorString(r));
    std::string all(longest * world, '\0');
    cudaMemcpyAsync(all.data(), bytes + longest, longest * world, cudaMemcpyDeviceToHost, s);
    finish(operation);
    for (size_t r = 0; r < world; ++r) out[r] = all.substr(r * longest, size_t(all_lengths[r]));
    return out;
  }

  void reserve(size_t bytes) {
    if (bytes <= scratch_bytes_) return;
    cudaStreamSynchronize(stream_->get());  // the old buffer may still be in use
    if (scratch_ != nullptr) cudaFree(scratch_);
    scratch_bytes_ = std::max(bytes, size_t(4096));
    if (cudaMalloc(&scratch_, scratch_bytes_) != cudaSuccess)
      throw CommunicatorError(fmt::format("nccl: cannot allocate {} bytes on GPU {}", scratch_bytes_, device_));
  }

  void follow(const char* operation, SharedEvent done) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_flight_.push_back({next_id_++, operation, step_, deadline_after(timeout_s_), std::move(done)});
  }
  uint64_t begin_host(const char* operation) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_flight_.push_back({next_id_, operation, step_, deadline_after(timeout_s_), nullptr});
    return next_id_++;
  }
  void end_host(uint64_t id) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_flight_.remove_if([id](const InFlight& w) { return w.id == id; });
  }

  void stop_watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
  }

  // The watchdog: forgets finished work, and ends the rank when something overran its deadline.
  void watch() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      wake_.wait_for(lock, std::chrono::milliseconds(50));
      const Clock::time_point now = Clock::now();
      for (auto it = in_flight_.begin(); it != in_flight_.end();) {
        if (it->done) {
          const cudaError_t state = cudaEventQuery(it->done.get());
          if (state == cudaSuccess) {
            it = in_flight_.erase(it);
            continue;
          }
          if (state != cudaErrorNotReady)
            abort_rank(*it, fmt::format("the GPU reported {}", cudaGetErrorString(state)));
        }
        if (now >= it->deadline)
          abort_rank(*it, fmt::format("did not finish within distributed.timeout_s = {:g} s (a rank died or stopped "
                                      "answering)",
                                      timeout_s_));
        ++it;
      }
    }
  }

  [[noreturn]] void abort_rank(const InFlight& work, const std::string& why) {
    std::fflush(stdout);
    fmt::print(stderr, "error: rank {} of {}: {} at step {} {}; aborting NCCL and stopping this rank\n", rank_, world_,
               work.operation, work.step, why);
    std::fflush(stderr);
    if (comm_ != nullptr) ncclCommAbort(comm_);
    std::_Exit(1);
  }

  [[noreturn]] void fail(const char* operation, const std::string& why) {
    std::fflush(stdout);
    fmt::print(stderr, "error: rank {} of {}: {} at step {} failed: nccl: {} ({}); stopping this rank\n", rank_,
               world_, operation, step_, why, comm_ ? ncclGetLastError(comm_) : "");
    std::fflush(stderr);
    if (comm_ != nullptr) ncclCommAbort(comm_);
    std::_Exit(1);
  }

  int rank_ = 0, world_ = 1, device_ = 0;
  ncclComm_t comm_ = nullptr;
  std::unique_ptr<Stream> stream_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::list<InFlight> in_flight_;
  uint64_t next_id_ = 0;
  bool stopping_ = false;
  std::thread watchdog_;
};

// Rank 0's unique id on every rank: over the TCP rendezvous, or MPI under mpirun.
ncclUniqueId shared_unique_id(const LaunchEnv& env, double timeout_s) {
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (env.rank == 0) {
    if (const ncclResult_t r = ncclGetUniqueId(&id); r != ncclSuccess)
      throw CommunicatorError(fmt::format("distributed.backend: nccl: ncclGetUniqueId: {}", ncclGetErrorString(r)));
  }
  if (env.world_size == 1) return id;
  const std::string mine(reinterpret_cast<const char*>(&id), sizeof(id));
  std::string shared;
  if (under_mpirun() && mpi_available()) {
    shared = make_mpi_communicator(timeout_s)->all_gather_bytes(env.rank == 0 ? mine : "")[0];
  } else {
    const RendezvousOptions o = rendezvous_options(env, timeout_s, "nccl");
    try {
      const Rendezvous links = rendezvous(o, kPayloadTag + mine);
      if (links.payload.rfind(kPayloadTag, 0) != 0)
        throw CommunicatorError("distributed.backend: nccl: rank 0 runs another backend; give every rank the same "
                                "distributed.backend");
      shared = links.payload.substr(std::strlen(kPayloadTag));
    } catch (const RendezvousError& e) {
      throw CommunicatorError(fmt::format("distributed.backend: nccl: {}", e.what()));
    }
  }
  if (shared.size() != sizeof(id))
    throw CommunicatorError(fmt::format("distributed.backend: nccl: rank 0 sent a unique id of {} bytes, expected {}",
                                        shared.size(), sizeof(id)));
  std::memcpy(&id, shared.data(), sizeof(id));
  return id;
}

}  // namespace

bool nccl_available() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(double timeout_s) {
  const LaunchEnv env = launch_env();
  int device = 0;
  try {
    device = local_device(env.local_rank, cuda_device_count());
  } catch (const BootstrapError& e) {
    throw CommunicatorError(fmt::format("distributed.backend: nccl: {}", e.what()));
  }
  const ncclUniqueId id = shared_unique_id(env, timeout_s);
  return std::make_unique<NcclCommunicator>(env.rank, env.world_size, device, id, timeout_s);
}

}  // namespace ssmtrain::dist

#endif  // SSMTRAIN_WITH_NCCL
