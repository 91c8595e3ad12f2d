// Benchmark harness: CUDA-event timing, the ceilings of this GPU measured in the same run,
// and the report (table on stdout, JSON on disk). See harness.h.
#include "bench/harness.h"

#include <CLI/CLI.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <numeric>
#include <stdexcept>
#include <utility>

#include "kernels/philox.h"

// Build facts passed by bench/CMakeLists.txt (no git: the tree may not be a checkout).
#ifndef SSMTRAIN_VERSION
#define SSMTRAIN_VERSION "unknown"
#endif
#ifndef SSMTRAIN_BUILD_TYPE
#define SSMTRAIN_BUILD_TYPE "unknown"
#endif
#ifndef SSMTRAIN_CXX_COMPILER
#define SSMTRAIN_CXX_COMPILER "unknown"
#endif
#ifndef SSMTRAIN_CUDA_COMPILER
#define SSMTRAIN_CUDA_COMPILER "unknown"
#endif
#ifndef SSMTRAIN_CUDA_ARCHITECTURES
#define SSMTRAIN_CUDA_ARCHITECTURES "unknown"
#endif

namespace ssmtrain::bench {

void cuda_fail(const char* expr, cudaError_t err, const char* file, int line) {
  throw std::runtime_error(fmt::format("{} failed at {}:{}: {}", expr, file, line,
                                       cudaGetErrorString(err)));
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) BENCH_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

void fill_random(DType dtype, void* out, int64_t n, uint64_t seed, cudaStream_t stream) {
  kernels::cuda::fill_normal(dtype, out, n, seed, /*offset=*/0, /*mean=*/0.0f, /*std=*/1.0f,
                             stream);
}

namespace {

int current_l2_bytes() {
  int device = 0, l2 = 0;
  BENCH_CUDA_CHECK(cudaGetDevice(&device));
  BENCH_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
  return l2;
}

// An attribute the driver may not report (clocks on some devices): 0 when it does not.
int optional_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  if (cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return value;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

const char* bound_name(Bound b) { return b == Bound::memory ? "memory" : "compute"; }

// A JSON number, or null for a quantity that was not counted.
nlohmann::json number_or_null(double value, bool counted) {
  return counted ? nlohmann::json(value) : nlohmann::json(nullptr);
}

}  // namespace

Timer::Timer(cudaStream_t stream, int warmups, int reps)
    : stream_(stream), warmups_(warmups), reps_(reps),
      l2_flush_(2 * static_cast<size_t>(current_l2_bytes())) {
  if (reps < 1) throw std::invalid_argument("Timer: reps must be at least 1");
}

Timing Timer::time(const std::function<void()>& launch) {
  for (int i = 0; i < warmups_; ++i) launch();
  BENCH_CUDA_CHECK(cudaGetLastError());

  std::vector<cudaEvent_t> starts(reps_), stops(reps_);
  for (int i = 0; i < reps_; ++i) {
    BENCH_CUDA_CHECK(cudaEventCreate(&starts[i]));
    BENCH_CUDA_CHECK(cudaEventCreate(&stops[i]));
  }
  for (int i = 0; i < reps_; ++i) {
    if (l2_flush_.bytes() > 0)
      BENCH_CUDA_CHECK(cudaMemsetAsync(l2_flush_.get(), i & 0xff, l2_flush_.bytes(), stream_));
    BENCH_CUDA_CHECK(cudaEventRecord(starts[i], stream_));
    launch();
    BENCH_CUDA_CHECK(cudaEventRecord(stops[i], stream_));
  }
  BENCH_CUDA_CHECK(cudaStreamSynchronize(stream_));
  BENCH_CUDA_CHECK(cudaGetLastError());

  std::vector<double> ms(reps_);
  for (int i = 0; i < reps_; ++i) {
    float elapsed = 0;
    BENCH_CUDA_CHECK(cudaEventElapsedTime(&elapsed, starts[i], stops[i]));
    ms[i] = elapsed;
    cudaEventDestroy(starts[i]);
    cudaEventDestroy(stops[i]);
  }
  std::sort(ms.begin(), ms.end());
  Timing t;
  t.reps = reps_;
  t.min_ms = ms.front();
  t.median_ms = reps_ % 2 == 1 ? ms[reps_ / 2] : 0.5 * (ms[reps_ / 2 - 1] + ms[reps_ / 2]);
  t.mean_ms = std::accumulate(ms.begin(), ms.end(), 0.0) / reps_;
  return t;
}

DeviceInfo query_device(int device) {
  cudaDeviceProp prop{};
  BENCH_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  DeviceInfo info;
  info.index = device;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.memory_bytes = prop.totalGlobalMem;
  info.l2_bytes = prop.l2CacheSize;
  info.clock_khz = optional_attribute(cudaDevAttrClockRate, device);
  info.memory_clock_khz = optional_attribute(cudaDevAttrMemoryClockRate, device);
  info.memory_bus_bits = optional_attribute(cudaDevAttrGlobalMemoryBusWidth, device);
  cudaDriverGetVersion(&info.driver_version);
  cudaRuntimeGetVersion(&info.runtime_version);
  return info;
}

kernels::GemmShape packed_gemm(int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b) {
  kernels::GemmShape g;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.m = m;
  g.n = n;
  g.k = k;
  g.lda = trans_a ? m : k;  // A stored (k, m) or (m, k)
  g.ldb = trans_b ? k : n;  // B stored (n, k) or (k, n)
  g.ldc = n;
  return g;
}

Timing time_gemm_bf16(Timer& timer, const kernels::GemmShape& g) {
  const int64_t size = static_cast<int64_t>(dtype_size(DType::bf16));
  DeviceBuffer a(g.m * g.k * size), b(g.k * g.n * size), c(g.m * g.n * size);
  fill_random(DType::bf16, a.get(), g.m * g.k, /*seed=*/1, timer.stream());
  fill_random(DType::bf16, b.get(), g.k * g.n, /*seed=*/2, timer.stream());
  BENCH_CUDA_CHECK(cudaMemsetAsync(c.get(), 0, c.bytes(), timer.stream()));
  return timer.time([&] {
    kernels::cuda::gemm(g, DType::bf16, DType::bf16, 1.0, a.get(), b.get(), 0.0, c.get(),
                        timer.stream());
  });
}

Ceilings measure_ceilings(Timer& timer) {
  Ceilings c;
  {
    c.copy_buffer_bytes = int64_t{1} << 30;
    DeviceBuffer src(c.copy_buffer_bytes), dst(c.copy_buffer_bytes);
    fill_random(DType::f32, src.get(), c.copy_buffer_bytes / 4, /*seed=*/3, timer.stream());
    c.copy = timer.time([&] {
      BENCH_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), src.bytes(),
                                       cudaMemcpyDeviceToDevice, timer.stream()));
    });
    c.copy_gbps = 2.0 * static_cast<double>(c.copy_buffer_bytes) / (c.copy.median_ms * 1e6);
  }
  c.gemm_size = 8192;
  c.gemm = time_gemm_bf16(timer, packed_gemm(c.gemm_size, c.gemm_size, c.gemm_size, false, false));
  const double flops = 2.0 * static_cast<double>(c.gemm_size) * c.gemm_size * c.gemm_size;
  c.gemm_tflops = flops / (c.gemm.median_ms * 1e9);
  return c;
}

Report::Report(std::string benchmark, DeviceInfo device, Ceilings ceilings, const Timer& timer)
    : benchmark_(std::move(benchmark)), device_(std::move(device)), ceilings_(ceilings),
      warmups_(timer.warmups()), reps_(timer.reps()) {}

void Report::measure(const std::string& name, const std::string& shape, Bound bound, double bytes,
                     double flops, const std::function<Timing()>& body) {
  std::fflush(stdout);
  try {
    results_.push_back(Result{name, shape, bound, body(), bytes, flops, {}});
  } catch (const std::exception& e) {
    cudaGetLastError();  // clear a non-sticky error so the next measurement can run
    failures_.push_back(Failure{name, shape, e.what()});
    fmt::print(stderr, "bench: {} ({}) failed: {}\n", name, shape, e.what());
  }
}

void Report::set_details(const std::string& name, const std::string& shape, const std::string& details) {
  for (Result& r : results_)
    if (r.name == name && r.shape == shape) r.details = details;
}

void Report::print_table(std::FILE* out) const {
  fmt::print(out, "{} on {} ({} SMs, compute capability {}.{})\n", benchmark_, device_.name,
             device_.sm_count, device_.cc_major, device_.cc_minor);
  fmt::print(out,
             "ceilings: copy {:.0f} GB/s ({} MiB device to device, read + written), "
             "bf16 GEMM {:.1f} TFLOP/s ({}^3)\n",
             ceilings_.copy_gbps, ceilings_.copy_buffer_bytes >> 20, ceilings_.gemm_tflops,
             ceilings_.gemm_size);
  fmt::print(out, "{:<28} {:<30} {:>9} {:>8} {:>8} {:>10}\n", "kernel", "shape", "ms", "GB/s",
             "TFLOP/s", "of ceiling");
  for (const Result& r : results_) {
    const double ms = r.timing.median_ms;
    const double gbps = r.bytes / (ms * 1e6);
    const double tflops = r.flops / (ms * 1e9);
    const double fraction =
        r.bound == Bound::memory ? gbps / ceilings_.copy_gbps : tflops / ceilings_.gemm_tflops;
    fmt::print(out, "{:<28} {:<30} {:>9.4f} {:>8.0f} {:>8} {:>9.1f}% {}\n", r.name, r.shape, ms,
               gbps, r.flops > 0 ? fmt::format("{:.1f}", tflops) : std::string("-"),
               100.0 * fraction, r.bound == Bound::memory ? "copy" : "gemm");
  }
  for (const Failure& f : failures_) {
    fmt::print(out, "{:<28} {:<30} FAILED: {}\n", f.name, f.shape, f.error);
  }
}

nlohmann::json Report::to_json() const {
  nlohmann::json results = nlohmann::json::array();
  for (const Result& r : results_) {
    const double ms = r.timing.median_ms;
    const double gbps = r.bytes / (ms * 1e6);
    const double tflops = r.flops / (ms * 1e9);
    const bool has_flops = r.flops > 0;
    results.push_back({
        {"name", r.name},
        {"shape", r.shape},
        {"bound", bound_name(r.bound)},
        {"ms", ms},
        {"min_ms", r.timing.min_ms},
        {"mean_ms", r.timing.mean_ms},
        {"bytes", r.bytes},
        {"flops", number_or_null(r.flops, has_flops)},
        {"gbps", gbps},
        {"tflops", number_or_null(tflops, has_flops)},
        {"fraction_of_copy_bw", gbps / ceilings_.copy_gbps},
        {"fraction_of_gemm_peak", number_or_null(tflops / ceilings_.gemm_tflops, has_flops)},
    });
    if (!r.details.empty()) results.back()["details"] = r.details;
  }
  nlohmann::json failures = nlohmann::json::array();
  for (const Failure& f : failures_) {
    failures.push_back({{"name", f.name}, {"shape", f.shape}, {"error", f.error}});
  }
  const double theoretical_dram_gbps =
      2.0 * device_.memory_clock_khz * 1e3 * (device_.memory_bus_bits / 8.0) / 1e9;
  return {
      {"format", "ssmtrain-bench"},
      {"format_version", 1},
      {"benchmark", benchmark_},
      {"time_utc", utc_now()},
      {"build",
       {{"ssmtrain_version", SSMTRAIN_VERSION},
        {"build_type", SSMTRAIN_BUILD_TYPE},
        {"cxx_compiler", SSMTRAIN_CXX_COMPILER},
        {"cuda_compiler", SSMTRAIN_CUDA_COMPILER},
        {"cuda_architectures", SSMTRAIN_CUDA_ARCHITECTURES}}},
      {"device",
       {{"index", device_.index},
        {"name", device_.name},
        {"sm_count", device_.sm_count},
        {"compute_capability", fmt::format("{}.{}", device_.cc_major, device_.cc_minor)},
        {"memory_bytes", device_.memory_bytes},
        {"l2_bytes", device_.l2_bytes},
        {"clock_mhz", number_or_null(device_.clock_khz / 1e3, device_.clock_khz > 0)},
        {"memory_clock_mhz",
         number_or_null(device_.memory_clock_khz / 1e3, device_.memory_clock_khz > 0)},
        {"memory_bus_bits", device_.memory_bus_bits},
        {"theoretical_dram_gbps", number_or_null(theoretical_dram_gbps,
                                                 theoretical_dram_gbps > 0)},
        {"driver_version", device_.driver_version},
        {"runtime_version", device_.runtime_version}}},
      {"settings", {{"warmups", warmups_}, {"reps", reps_}, {"l2_flushed_between_reps", true}}},
      {"ceilings",
       {{"copy",
         {{"buffer_bytes", ceilings_.copy_buffer_bytes},
          {"bytes_moved", 2 * ceilings_.copy_buffer_bytes},
          {"ms", ceilings_.copy.median_ms},
          {"min_ms", ceilings_.copy.min_ms},
          {"gbps", ceilings_.copy_gbps}}},
        {"gemm_bf16",
         {{"m", ceilings_.gemm_size},
          {"n", ceilings_.gemm_size},
          {"k", ceilings_.gemm_size},
          {"ms", ceilings_.gemm.median_ms},
          {"min_ms", ceilings_.gemm.min_ms},
          {"tflops", ceilings_.gemm_tflops}}}}},
      {"results", results},
      {"failures", failures},
  };
}

void Report::write(const std::string& path) const {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot open " + path + " for writing");
  out << to_json().dump(2) << "\n";
  if (!out) throw std::runtime_error("error writing " + path);
}

int bench_main(int argc, char** argv, const std::string& benchmark, const std::string& description,
               const std::function<void(Report&, Timer&)>& body) {
  const std::string program = "ssmtrain_bench_" + benchmark;
  CLI::App app(description, program);
  std::string out_path = "bench_" + benchmark + ".json";
  int reps = 20;
  int warmups = 3;
  app.add_option("--out", out_path, "JSON report to write")->capture_default_str();
  app.add_option("--reps", reps, "Timed repetitions per kernel (the median is reported)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--warmups", warmups, "Untimed runs before the timed ones")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    BENCH_CUDA_CHECK(cudaSetDevice(0));
    cudaStream_t stream = nullptr;
    BENCH_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    Timer timer(stream, warmups, reps);
    const DeviceInfo device = query_device(0);
    fmt::print("measuring ceilings on {} ...\n", device.name);
    std::fflush(stdout);
    Report report(benchmark, device, measure_ceilings(timer), timer);
    body(report, timer);
    report.print_table(stdout);
    report.write(out_path);
    fmt::print("wrote {}\n", out_path);
    BENCH_CUDA_CHECK(cudaStreamDestroy(stream));
    return report.has_failures() ? 1 : 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", program, e.what());
    return 1;
  }
}

}  // namespace ssmtrain::bench
