// See bootstrap.h.
#include "distributed/bootstrap.h"

#include <fmt/core.h>

#include <cctype>
#include <cstdlib>
#include <optional>

namespace ssmtrain::dist {
namespace {

std::optional<std::string> get(const EnvLookup& lookup, const char* name) {
  const char* value = lookup(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

// A non-negative integer variable, or a BootstrapError naming it.
int integer(const EnvLookup& lookup, const char* name, int fallback, int minimum = 0) {
  const std::optional<std::string> text = get(lookup, name);
  if (!text) return fallback;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text->c_str(), &end, 10);
  if (text->empty() || *end != '\0' || errno != 0 || value < minimum || value > 1 << 24)
    throw BootstrapError(fmt::format("{}='{}': expected an integer >= {}", name, *text, minimum));
  return int(value);
}

void check(const LaunchEnv& env, const char* rank_name, const char* world_name) {
  if (env.rank >= env.world_size)
    throw BootstrapError(fmt::format("{}={} is not below {}={}", rank_name, env.rank, world_name, env.world_size));
  if (env.master_port < 1 || env.master_port > 65535)
    throw BootstrapError(fmt::format("MASTER_PORT={}: expected a TCP port (1-65535)", env.master_port));
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  const auto bad = [&](const char* why) {
    return BootstrapError(fmt::format("SLURM_JOB_NODELIST='{}': {}", nodelist, why));
  };
  if (nodelist.empty()) throw bad("empty");
  // The first entry ends at a comma outside brackets.
  size_t end = 0;
  int depth = 0;
  for (; end < nodelist.size(); ++end) {
    const char c = nodelist[end];
    if (c == '[') ++depth;
    else if (c == ']') {
      if (--depth < 0) throw bad("a ']' without '['");
    } else if (c == ',' && depth == 0) break;
  }
  if (depth != 0) throw bad("a '[' without ']'");
  const std::string entry = nodelist.substr(0, end);
  const size_t open = entry.find('[');
  if (open == std::string::npos) {
    if (entry.empty()) throw bad("the first host is empty");
    return entry;
  }
  const size_t close = entry.find(']', open);
  const std::string prefix = entry.substr(0, open), suffix = entry.substr(close + 1);
  const std::string range = entry.substr(open + 1, close - open - 1);
  // The first number of the range list keeps its zero padding: "01-04" -> "01".
  size_t digits = 0;
  while (digits < range.size() && std::isdigit(static_cast<unsigned char>(range[digits]))) ++digits;
  if (digits == 0) throw bad("expected a number after '['");
  if (digits < range.size() && range[digits] != '-' && range[digits] != ',') throw bad("expected '-' or ',' in the range");
  if (suffix.find('[') != std::string::npos) throw bad("more than one bracket range in a host name");
  return prefix + range.substr(0, digits) + suffix;
}

LaunchEnv launch_env(const EnvLookup& lookup) {
  LaunchEnv env;
  env.token = get(lookup, "SSMTRAIN_JOB_TOKEN").value_or(get(lookup, "SLURM_JOB_ID").value_or(""));
  if (get(lookup, "RANK") || get(lookup, "WORLD_SIZE")) {
    env.launcher = "torchrun";
    if (!get(lookup, "RANK") || !get(lookup, "WORLD_SIZE"))
      throw BootstrapError(fmt::format("{} is set but {} is not: a torchrun-style launch sets both",
                                       get(lookup, "RANK") ? "RANK" : "WORLD_SIZE",
                                       get(lookup, "RANK") ? "WORLD_SIZE" : "RANK"));
    env.rank = integer(lookup, "RANK", 0);
    env.world_size = integer(lookup, "WORLD_SIZE", 1, 1);
    env.local_rank = integer(lookup, "LOCAL_RANK", 0);
    env.master_addr = get(lookup, "MASTER_ADDR").value_or("127.0.0.1");
    env.master_port = integer(lookup, "MASTER_PORT", 29500);
    check(env, "RANK", "WORLD_SIZE");
    return env;
  }
  if (get(lookup, "OMPI_COMM_WORLD_SIZE")) {
    env.launcher = "openmpi";
    env.rank = integer(lookup, "OMPI_COMM_WORLD_RANK", 0);
    env.world_size = integer(lookup, "OMPI_COMM_WORLD_SIZE", 1, 1);
    env.local_rank = integer(lookup, "OMPI_COMM_WORLD_LOCAL_RANK", 0);
    if (auto addr = get(lookup, "MASTER_ADDR")) env.master_addr = *addr;
    else if (auto nodes = get(lookup, "SLURM_JOB_NODELIST")) env.master_addr = first_slurm_host(*nodes);
    env.master_port = integer(lookup, "MASTER_PORT", 29500);
    check(env, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE");
    return env;
  }
  if (get(lookup, "SLURM_PROCID")) {
    env.launcher = "slurm";
    env.rank = integer(lookup, "SLURM_PROCID", 0);
    if (!get(lookup, "SLURM_NTASKS"))
      throw BootstrapError("SLURM_PROCID is set but SLURM_NTASKS is not: start the ranks with srun --ntasks N");
    env.world_size = integer(lookup, "SLURM_NTASKS", 1, 1);
    env.local_rank = integer(lookup, "SLURM_LOCALID", 0);
    if (auto addr = get(lookup, "MASTER_ADDR")) env.master_addr = *addr;
    else if (auto nodes = get(lookup, "SLURM_JOB_NODELIST")) env.master_addr = first_slurm_host(*nodes);
    else if (env.world_size > 1)
      throw BootstrapError("Slurm job of several tasks without SLURM_JOB_NODELIST or MASTER_ADDR: cannot find rank 0's host");
    env.master_port = integer(lookup, "MASTER_PORT", 29500);
    check(env, "SLURM_PROCID", "SLURM_NTASKS");
    return env;
  }
  return env;
}

int local_device(int local_rank, int device_count) {
  if (device_count <= 0) throw BootstrapError("no CUDA device is visible to this rank");
  if (device_count == 1) return 0;
  if (local_rank >= device_count)
    throw BootstrapError(fmt::format("LOCAL_RANK={} but this rank sees only {} GPUs: start at most one rank per GPU "
                                     "(--nproc-per-node {}), or give each rank its own CUDA_VISIBLE_DEVICES",
                                     local_rank, device_count, device_count));
  return local_rank;
}

LaunchEnv launch_env() {
  return launch_env([](const char* name) { return static_cast<const char*>(std::getenv(name)); });
}

}  // namespace ssmtrain::dist
