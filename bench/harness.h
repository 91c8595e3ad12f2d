// Benchmark harness: a CUDA-event timer, the GPU's own ceilings measured in the same run
// (device-to-device copy bandwidth and bf16 GEMM rate), and a report that states every
// result as a fraction of them, printed as a table and written as JSON.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/common.h"
#include "kernels/gemm.h"

namespace ssmtrain::bench {

[[noreturn]] void cuda_fail(const char* expr, cudaError_t err, const char* file, int line);

#define BENCH_CUDA_CHECK(expr)                                                  \
  do {                                                                          \
    const cudaError_t bench_err_ = (expr);                                      \
    if (bench_err_ != cudaSuccess)                                              \
      ::ssmtrain::bench::cuda_fail(#expr, bench_err_, __FILE__, __LINE__);      \
  } while (0)

// Device memory owned for the lifetime of the object.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// n elements of dtype (f32 or bf16) drawn from N(0, 1) by the Philox fill kernel: random and,
// unlike zeros, as costly for the tensor cores as real data.
void fill_random(DType dtype, void* out, int64_t n, uint64_t seed, cudaStream_t stream);

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
  double mean_ms = 0;
  int reps = 0;
};

// Times launches on one stream with CUDA events: `warmups` untimed runs, then `reps` timed
// runs, each preceded (outside its events) by a write over twice the L2 cache, so no timed run
// finds its inputs already cached by the one before.
class Timer {
 public:
  Timer(cudaStream_t stream, int warmups, int reps);
  Timing time(const std::function<void()>& launch);

  cudaStream_t stream() const { return stream_; }
  int warmups() const { return warmups_; }
  int reps() const { return reps_; }

 private:
  cudaStream_t stream_;
  int warmups_;
  int reps_;
  DeviceBuffer l2_flush_;
};

struct DeviceInfo {
  int index = 0;
  std::string name;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  size_t memory_bytes = 0;
  int l2_bytes = 0;
  int clock_khz = 0;         // 0 when the driver does not report it
  int memory_clock_khz = 0;  // 0 when the driver does not report it
  int memory_bus_bits = 0;
  int driver_version = 0, runtime_version = 0;
};
DeviceInfo query_device(int device);

// Row-major GEMM shape of gemm.h with packed leading dimensions, for C (m, n) = op(A) op(B).
kernels::GemmShape packed_gemm(int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b);
// Times kernels::cuda::gemm in bf16 (f32 accumulation, bf16 C) on random inputs.
Timing time_gemm_bf16(Timer& timer, const kernels::GemmShape& g);

struct Ceilings {
  int64_t copy_buffer_bytes = 0;  // each of source and destination
  Timing copy;
  double copy_gbps = 0;  // bytes read + written per second / 1e9
  int64_t gemm_size = 0;  // m = n = k
  Timing gemm;
  double gemm_tflops = 0;
};
// Copy of a 1 GiB buffer (cudaMemcpyAsync device to device) and a bf16 GEMM of 8192^3.
Ceilings measure_ceilings(Timer& timer);

// Which ceiling a result is measured against.
enum class Bound { memory, compute };

struct Result {
  std::string name;
  std::string shape;
  Bound bound = Bound::memory;
  Timing timing;
  double bytes = 0;  // the least traffic the op needs: inputs read once, outputs written once
  double flops = 0;  // 0 when not counted (memory-bound ops)
  std::string details;  // optional free text (e.g. which library engine ran); in the JSON when set
};

struct Failure {
  std::string name;
  std::string shape;
  std::string error;
};

// Results of one benchmark executable against the ceilings of its run.
class Report {
 public:
  Report(std::string benchmark, DeviceInfo device, Ceilings ceilings, const Timer& timer);

  // Runs `body` (which allocates, fills and returns timer.time(...)) and records the result; an
  // exception is recorded as a failure and the next measurement goes on.
  void measure(const std::string& name, const std::string& shape, Bound bound, double bytes,
               double flops, const std::function<Timing()>& body);

  // Attaches free text to the recorded result of (name, shape), written as its "details" field;
  // nothing when that measurement failed.
  void set_details(const std::string& name, const std::string& shape, const std::string& details);

  void print_table(std::FILE* out) const;
  nlohmann::json to_json() const;
  void write(const std::string& path) const;
  bool has_failures() const { return !failures_.empty(); }

 private:
  std::string benchmark_;
  DeviceInfo device_;
  Ceilings ceilings_;
  int warmups_, reps_;
  std::vector<Result> results_;
  std::vector<Failure> failures_;
};

// The main() of every benchmark executable: parses --out, --reps and --warmups, measures
// the ceilings, runs `body`, prints the table and writes the JSON report. Exit status 0, or
// 1 when a measurement failed, 2 for a usage error.
int bench_main(int argc, char** argv, const std::string& benchmark, const std::string& description,
               const std::function<void(Report&, Timer&)>& body);

}  // namespace ssmtrain::bench
