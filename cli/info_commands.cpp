// `ssmtrain info`: the version, whether CUDA was compiled in, and the GPUs it sees.
#include <fmt/core.h>

#include <vector>

#include "cli/subcommand.h"
#include "train/version.h"

#if defined(SSMTRAIN_WITH_CUDA)
#include <cuda_runtime.h>
#endif


namespace ssmtrain::cli {
namespace {

struct InfoArgs {};

void info_options(CLI::App&, InfoArgs&) {}

int run_info(const InfoArgs&) {
  fmt::print("ssmtrain {} (commit {})\n", ssmtrain_version(), ssmtrain_commit());
#if defined(SSMTRAIN_WITH_CUDA)
  int runtime_version = 0, driver_version = 0;
  cudaRuntimeGetVersion(&runtime_version);
  cudaDriverGetVersion(&driver_version);
  const std::string driver = driver_version == 0 ? std::string("no driver")
                                                 : fmt::format("driver {}.{}", driver_version / 1000,
                                                               driver_version % 1000 / 10);
  fmt::print("CUDA: compiled in (runtime {}.{}, {})\n", runtime_version / 1000, runtime_version % 1000 / 10, driver);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    fmt::print("no CUDA GPU visible{}\n", err != cudaSuccess ? fmt::format(" ({})", cudaGetErrorString(err)) : "");
    return 0;
  }
  for (int device = 0; device < count; ++device) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
      fmt::print("GPU {}: properties unavailable\n", device);
      continue;
    }
    fmt::print("GPU {}: {}, {:.1f} GiB, {} SMs, compute capability {}.{}\n", device, prop.name,
               static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0), prop.multiProcessorCount,
               prop.major, prop.minor);
  }
#else
  fmt::print("CUDA: not compiled in (configure with SSMTRAIN_CUDA=AUTO or ON and nvcc on PATH)\n");
#endif
  return 0;
}

}  // namespace

std::vector<Subcommand> info_commands() {
  return {command<InfoArgs>("info", "Version, CUDA support and visible GPUs", info_options, run_info)};
}

}  // namespace ssmtrain::cli
