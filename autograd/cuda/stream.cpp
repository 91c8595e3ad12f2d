// Streams, events and device guards over the CUDA runtime.
#include "autograd/stream.h"

#include <cuda_runtime.h>

#include <mutex>
#include <vector>

#include "kernels/cuda/check.h"

namespace ssmtrain {
namespace {

// The default stream of each device: created once, never destroyed.
cudaStream_t default_stream(int device) {
  static std::mutex mutex;
  static std::vector<cudaStream_t> streams;
  std::lock_guard<std::mutex> lock(mutex);
  if (device < 0) throw std::invalid_argument("negative CUDA device index");
  if (static_cast<size_t>(device) >= streams.size()) streams.resize(device + 1, nullptr);
  if (!streams[device]) {
    DeviceGuard guard(device);
    SSM_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
  }
  return streams[device];
}

thread_local std::vector<cudaStream_t> thread_streams;  // per device; null: default

}  // namespace

cudaStream_t current_stream(int device) {
  if (static_cast<size_t>(device) < thread_streams.size() && thread_streams[device])
    return thread_streams[device];
  return default_stream(device);
}

void synchronize(int device) {
  DeviceGuard guard(device);
  SSM_CUDA_CHECK(cudaStreamSynchronize(current_stream(device)));
}

DeviceGuard::DeviceGuard(int device) {
  SSM_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) SSM_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
}

Stream::Stream(int device) : device_(device) {
  DeviceGuard guard(device);
  SSM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

Stream::~Stream() {
  if (stream_) (void)cudaStreamDestroy(stream_);
}

StreamGuard::StreamGuard(int device, cudaStream_t stream) : device_(device) {
  previous_ = current_stream(device);
  if (static_cast<size_t>(device) >= thread_streams.size()) thread_streams.resize(device + 1, nullptr);
  thread_streams[device] = stream;
}

StreamGuard::~StreamGuard() { thread_streams[device_] = previous_; }

Event::Event(int device) : device_(device) {
  DeviceGuard guard(device);
  cudaEvent_t e;
  SSM_CUDA_CHECK(cudaEventCreate(&e));
  event_ = e;
}

Event::~Event() {
  if (event_) (void)cudaEventDestroy(event_);
}

void Event::record(cudaStream_t stream) { SSM_CUDA_CHECK(cudaEventRecord(event_, stream)); }
void Event::wait(cudaStream_t stream) const { SSM_CUDA_CHECK(cudaStreamWaitEvent(stream, event_, 0)); }
void Event::synchronize() const { SSM_CUDA_CHECK(cudaEventSynchronize(event_)); }

float Event::elapsed_ms_since(const Event& start) const {
  float ms = 0;
  SSM_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
  return ms;
}

std::unique_ptr<Graph> Graph::capture(int device, cudaStream_t stream, const std::function<void()>& body) {
  DeviceGuard guard(device);
  // Thread-local mode: other threads' CUDA calls (a checkpoint writer, the data loader) are
  // not part of the capture and do not break it.
  SSM_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  bool body_failed = false;
  try {
    body();
  } catch (const std::exception&) {
    body_failed = true;  // e.g. a synchronizing copy: not capturable
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);
  if (body_failed || end != cudaSuccess || !graph) {
    if (graph) (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // capture errors are not sticky: clear the last one
    return nullptr;
  }
  cudaGraphExec_t exec = nullptr;
  if (cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) {
    (void)cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return nullptr;
  }
  return std::unique_ptr<Graph>(new Graph(device, graph, exec));
}

Graph::~Graph() {
  if (exec_) (void)cudaGraphExecDestroy(exec_);
  if (graph_) (void)cudaGraphDestroy(graph_);
}

void Graph::replay(cudaStream_t stream) const {
  DeviceGuard guard(device_);
  SSM_CUDA_CHECK(cudaGraphLaunch(exec_, stream));
}

}  // namespace ssmtrain

