// CUDA streams, events and the current-device guard. Every op runs on the current stream of
// its tensors' device; by default that is one non-blocking stream per device, per process.
// Without CUDA these throw (autograd/stream.cpp): no tensor can live on a GPU there.
#pragma once

#include <functional>
#include <memory>

#include "autograd/device.h"
#include "kernels/common.h"

struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;

namespace ssmtrain {

// The stream ops on `device` are enqueued on by this thread.
cudaStream_t current_stream(int device);
// Waits until all work queued on the current stream of `device` has finished.
void synchronize(int device);

// Sets the current CUDA device for its lifetime and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// An owned CUDA stream (non-blocking), e.g. for communication that overlaps compute.
class Stream {
 public:
  explicit Stream(int device);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
};

// Makes `stream` the current stream of its device for this thread, for the guard's lifetime.
class StreamGuard {
 public:
  StreamGuard(int device, cudaStream_t stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  cudaStream_t previous_;
};

// A CUDA event with timing enabled.
class Event {
 public:
  explicit Event(int device);
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(cudaStream_t stream);
  // Makes `stream` wait (on the device) for the work recorded before this event.
  void wait(cudaStream_t stream) const;
  void synchronize() const;
  // Milliseconds between `start` and this event; both must have completed.
  float elapsed_ms_since(const Event& start) const;

 private:
  int device_;
  CUevent_st* event_ = nullptr;
};

// The work `body` enqueues on `stream`, recorded by CUDA stream capture and replayed as one
// launch, so a step of many small kernels costs one launch instead of one each. The kernels'
// arguments and memory addresses are frozen at capture: inputs change by copying into the
// tensors the capture read, and outputs appear in the tensors it wrote.
class Graph {
 public:
  // Captures body() (which must enqueue its work on `stream`, e.g. under a StreamGuard) without
  // running it. Returns nullptr when the work cannot be captured, for instance because it waits
  // for the host (a copy to or from host memory); then nothing of it ran and no error remains.
  static std::unique_ptr<Graph> capture(int device, cudaStream_t stream, const std::function<void()>& body);
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  // Enqueues the recorded work on `stream`.
  void replay(cudaStream_t stream) const;

 private:
  Graph(int device, CUgraph_st* graph, CUgraphExec_st* exec) : device_(device), graph_(graph), exec_(exec) {}
  int device_;
  CUgraph_st* graph_ = nullptr;
  CUgraphExec_st* exec_ = nullptr;
};

}  // namespace ssmtrain
