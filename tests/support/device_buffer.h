// Small device-memory helpers for the *_gpu_test files: an owning buffer, upload of float test
// data as f32 / bf16 / f16, download back to float, raw uploads and downloads for ids and bits.
// Only in CUDA builds; every call checks its CUDA status and throws std::runtime_error.
#pragma once

#if SSMTRAIN_WITH_CUDA

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/common.h"

namespace ssmtrain::testing {

// Owning cudaMalloc allocation (freed on destruction); movable, not copyable.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// values converted to dtype (f32, bf16 or f16; round to nearest even) on the device.
DeviceBuffer upload(const std::vector<float>& values, DType dtype);
// n elements of dtype (f32, bf16 or f16) at device_ptr, widened to float. Synchronizes the
// device first, so an error of an earlier launch surfaces here.
std::vector<float> download(const void* device_ptr, DType dtype, int64_t n);
// Raw bytes both ways (ids, targets, bit-exact comparisons).
DeviceBuffer upload_bytes(const void* host, size_t bytes);
std::vector<uint8_t> download_bytes(const void* device_ptr, size_t bytes);

template <typename T> DeviceBuffer upload_raw(const std::vector<T>& values) {
  return upload_bytes(values.data(), values.size() * sizeof(T));
}
template <typename T> std::vector<T> download_raw(const void* device_ptr, int64_t n) {
  const std::vector<uint8_t> bytes = download_bytes(device_ptr, size_t(n) * sizeof(T));
  std::vector<T> out(static_cast<size_t>(n));
  if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

// cudaDeviceSynchronize, throwing on an error.
void device_sync();

}  // namespace ssmtrain::testing

#endif  // SSMTRAIN_WITH_CUDA
