// Hashes of the data pipeline: XXH64 (seed 0) for the checksums of tokenizer files and shard
// token data (written as "xxh64:<16 hex digits>", checkable with `xxhsum -H64`), and splitmix64
// for the deterministic per-document split and the loader's permutation keys.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ssmtrain::data {

// XXH64 of `size` bytes with seed 0 (the xxHash specification, one-shot).
uint64_t xxh64(const void* bytes, size_t size, uint64_t seed = 0);

// "xxh64:" followed by 16 lowercase hex digits.
std::string checksum_string(uint64_t hash);

// The XXH64 checksum string of a whole file; throws std::runtime_error naming the file.
std::string file_checksum(const std::string& path);

// splitmix64 finaliser: a bijective 64-bit mix with good avalanche.
constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace ssmtrain::data
