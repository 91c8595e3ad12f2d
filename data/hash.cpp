// XXH64 written from the xxHash specification (github.com/Cyan4973/xxHash, doc/xxhash_spec.md),
// one-shot over a buffer, and helpers that format and compute file checksums.
#include "data/hash.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace ssmtrain::data {
namespace {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ull;
constexpr uint64_t kPrime4 = 0x85EBCA77C2B2AE63ull;
constexpr uint64_t kPrime5 = 0x27D4EB2F165667C5ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // little-endian hosts only (x86-64, aarch64)
  return v;
}
inline uint32_t read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t round_step(uint64_t acc, uint64_t lane) {
  acc += lane * kPrime2;
  acc = rotl(acc, 31);
  return acc * kPrime1;
}
inline uint64_t merge_accumulator(uint64_t hash, uint64_t acc) {
  hash ^= round_step(0, acc);
  return hash * kPrime1 + kPrime4;
}

}  // namespace

uint64_t xxh64(const void* bytes, size_t size, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(bytes);
  const unsigned char* const end = p + size;
  uint64_t hash;
  if (size >= 32) {
    uint64_t acc1 = seed + kPrime1 + kPrime2, acc2 = seed + kPrime2, acc3 = seed,
             acc4 = seed - kPrime1;
    const unsigned char* const last_stripe = end - 32;
    do {
      acc1 = round_step(acc1, read64(p));
      acc2 = round_step(acc2, read64(p + 8));
      acc3 = round_step(acc3, read64(p + 16));
      acc4 = round_step(acc4, read64(p + 24));
      p += 32;
    } while (p <= last_stripe);
    hash = rotl(acc1, 1) + rotl(acc2, 7) + rotl(acc3, 12) + rotl(acc4, 18);
    hash = merge_accumulator(hash, acc1);
    hash = merge_accumulator(hash, acc2);
    hash = merge_accumulator(hash, acc3);
    hash = merge_accumulator(hash, acc4);
  } else {
    hash = seed + kPrime5;
  }
  hash += static_cast<uint64_t>(size);
  for (; p + 8 <= end; p += 8) {
    hash ^= round_step(0, read64(p));
    hash = rotl(hash, 27) * kPrime1 + kPrime4;
  }
  if (p + 4 <= end) {
    hash ^= static_cast<uint64_t>(read32(p)) * kPrime1;
    hash = rotl(hash, 23) * kPrime2 + kPrime3;
    p += 4;
  }
  for (; p < end; ++p) {
    hash ^= static_cast<uint64_t>(*p) * kPrime5;
    hash = rotl(hash, 11) * kPrime1;
  }
  hash ^= hash >> 33;
  hash *= kPrime2;
  hash ^= hash >> 29;
  hash *= kPrime3;
  hash ^= hash >> 32;
  return hash;
}

std::string checksum_string(uint64_t hash) {
  char text[32];
  std::snprintf(text, sizeof(text), "xxh64:%016llx", static_cast<unsigned long long>(hash));
  return text;
}

std::string file_checksum(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open to compute its checksum");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return checksum_string(xxh64(bytes.data(), bytes.size()));
}

}  // namespace ssmtrain::data
