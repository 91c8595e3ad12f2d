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

}  // namespace ssmtrain
