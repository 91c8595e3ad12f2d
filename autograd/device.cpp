// Device parsing and GPU discovery.
#include "autograd/device.h"

#include <fstream>
#include <stdexcept>
#include <string>

#if SSMTRAIN_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace ssmtrain {

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0) {
    const std::string index = text.substr(5);
    if (!index.empty() && index.find_first_not_of("0123456789") == std::string::npos)
      return cuda(std::stoi(index));
  }
  throw std::invalid_argument("unknown device '" + text + "' (expected cpu, cuda or cuda:N)");
}

int cuda_device_count() {
#if SSMTRAIN_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

std::string cuda_device_name(int index) {
#if SSMTRAIN_WITH_CUDA
  cudaDeviceProp prop{};
  if (index >= 0 && index < cuda_device_count() && cudaGetDeviceProperties(&prop, index) == cudaSuccess) return prop.name;
  (void)cudaGetLastError();
#else
  (void)index;
#endif
  return "";
}

MemoryInfo cuda_memory_info(int index) {
  MemoryInfo info;
#if SSMTRAIN_WITH_CUDA
  int current = 0;
  if (index < 0 || index >= cuda_device_count() || cudaGetDevice(&current) != cudaSuccess) return info;
  size_t free = 0, total = 0;
  if (cudaSetDevice(index) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess) info = {free, total};
  (void)cudaGetLastError();
  cudaSetDevice(current);
#else
  (void)index;
#endif
  return info;
}

MemoryInfo host_memory_info() {
  MemoryInfo info;
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") info.free = kib * 1024;
    if (key == "MemTotal:") info.total = kib * 1024;
  }
  return info;
}

}  // namespace ssmtrain
