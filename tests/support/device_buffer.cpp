// See device_buffer.h.
#include "tests/support/device_buffer.h"

#if SSMTRAIN_WITH_CUDA

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace ssmtrain::testing {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  check(cudaMalloc(&ptr_, bytes > 0 ? bytes : 1), "cudaMalloc");
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer upload_bytes(const void* host, size_t bytes) {
  DeviceBuffer buffer(bytes);
  if (bytes > 0) check(cudaMemcpy(buffer.get(), host, bytes, cudaMemcpyHostToDevice), "upload");
  return buffer;
}

std::vector<uint8_t> download_bytes(const void* device_ptr, size_t bytes) {
  device_sync();
  std::vector<uint8_t> out(bytes);
  if (bytes > 0)
    check(cudaMemcpy(out.data(), device_ptr, bytes, cudaMemcpyDeviceToHost), "download");
  return out;
}

DeviceBuffer upload(const std::vector<float>& values, DType dtype) {
  switch (dtype) {
    case DType::f32: return upload_raw(values);
    case DType::bf16: {
      std::vector<uint16_t> bits(values.size());
      for (size_t i = 0; i < values.size(); ++i) bits[i] = kernels::float_to_bf16_bits(values[i]);
      return upload_raw(bits);
    }
    case DType::f16: {
      std::vector<uint16_t> bits(values.size());
      for (size_t i = 0; i < values.size(); ++i) bits[i] = kernels::float_to_f16_bits(values[i]);
      return upload_raw(bits);
    }
    default: throw std::runtime_error(std::string("upload: unsupported dtype ") + dtype_name(dtype));
  }
}

std::vector<float> download(const void* device_ptr, DType dtype, int64_t n) {
  switch (dtype) {
    case DType::f32: return download_raw<float>(device_ptr, n);
    case DType::bf16:
    case DType::f16: {
      const std::vector<uint16_t> bits = download_raw<uint16_t>(device_ptr, n);
      std::vector<float> out(bits.size());
      for (size_t i = 0; i < bits.size(); ++i)
        out[i] = dtype == DType::bf16 ? kernels::bf16_bits_to_float(bits[i])
                                      : kernels::f16_bits_to_float(bits[i]);
      return out;
    }
    default:
      throw std::runtime_error(std::string("download: unsupported dtype ") + dtype_name(dtype));
  }
}

void device_sync() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace ssmtrain::testing

#endif  // SSMTRAIN_WITH_CUDA
