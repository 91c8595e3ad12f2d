// Device parsing and GPU discovery.
#include "autograd/device.h"

#include <stdexcept>

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

}  // namespace ssmtrain
