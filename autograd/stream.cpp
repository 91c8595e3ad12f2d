// Streams and events in a build without CUDA: every operation throws. No tensor can live on
// a GPU there, so only code that explicitly asked for a GPU reaches these.
#include "autograd/stream.h"

#include <stdexcept>

#if !SSMTRAIN_WITH_CUDA
namespace ssmtrain {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw std::runtime_error(std::string(what) + ": ssmtrain was built without CUDA");
}
}  // namespace

cudaStream_t current_stream(int) { no_cuda("current_stream"); }
void synchronize(int) { no_cuda("synchronize"); }
DeviceGuard::DeviceGuard(int) { no_cuda("DeviceGuard"); }
DeviceGuard::~DeviceGuard() = default;
Stream::Stream(int device) : device_(device) { no_cuda("Stream"); }
Stream::~Stream() = default;
StreamGuard::StreamGuard(int device, cudaStream_t) : device_(device), previous_(nullptr) { no_cuda("StreamGuard"); }
StreamGuard::~StreamGuard() = default;
Event::Event(int device) : device_(device) { no_cuda("Event"); }
Event::~Event() = default;
void Event::record(cudaStream_t) { no_cuda("Event::record"); }
void Event::wait(cudaStream_t) const { no_cuda("Event::wait"); }
void Event::synchronize() const { no_cuda("Event::synchronize"); }
float Event::elapsed_ms_since(const Event&) const { no_cuda("Event::elapsed_ms_since"); }
std::unique_ptr<Graph> Graph::capture(int, cudaStream_t, const std::function<void()>&) { no_cuda("Graph::capture"); }
Graph::~Graph() = default;
void Graph::replay(cudaStream_t) const { no_cuda("Graph::replay"); }

}  // namespace ssmtrain
#endif
