// Where a tensor lives: the CPU or one CUDA GPU.
#pragma once

#include <cstdint>
#include <string>

namespace ssmtrain {

struct Device {
  enum class Kind : uint8_t { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;

  static Device cpu() { return {Kind::cpu, 0}; }
  static Device cuda(int index = 0) { return {Kind::cuda, index}; }
  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  // "cpu", "cuda", "cuda:1"; throws std::invalid_argument otherwise.
  static Device parse(const std::string& text);
};

// True when ssmtrain was built with CUDA and at least one GPU is visible.
bool cuda_available();
int cuda_device_count();
// The GPU's name ("NVIDIA H100 80GB HBM3"); empty without CUDA or without that device.
std::string cuda_device_name(int index);
// Bytes free and in all on that GPU ({0, 0} without CUDA or without that device).
struct MemoryInfo {
  uint64_t free = 0, total = 0;
};
MemoryInfo cuda_memory_info(int index);
// Bytes of host memory available to a new allocation (MemAvailable of /proc/meminfo; 0 when
// unknown) and in all.
MemoryInfo host_memory_info();

}  // namespace ssmtrain
