// The on-disk format of prepared corpora: HDF5 token shards ("ssmtrain-token-shard" v1) and the
// manifest.json that lists them. Writing is done by `data prepare`; reading (with every check:
// format name, version, size, checksum, tokenizer) by the loader. docs/data.md has the layout.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace ssmtrain::data {

inline constexpr const char* kShardFormatName = "ssmtrain-token-shard";
inline constexpr int kShardFormatVersion = 1;
inline constexpr const char* kManifestFormatName = "ssmtrain-token-manifest";
inline constexpr int kManifestFormatVersion = 1;
inline constexpr const char* kManifestFileName = "manifest.json";

// Token ids are stored as uint16 when every id fits (vocab_size <= 65536), else uint32.
inline int token_bytes_for_vocab(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

struct ShardInfo {
  std::string file;   // relative to the manifest's directory
  std::string split;  // "train" or "val"
  uint64_t tokens = 0;
  uint64_t documents = 0;
  uint64_t file_bytes = 0;      // size of the .h5 file, to report truncation clearly
  std::string tokens_checksum;  // "xxh64:..." of the raw little-endian `tokens` data
};

struct Manifest {
  std::string directory;  // where manifest.json was read from (not stored)
  std::string tokenizer_file;  // copy of the model inside the directory, e.g. "tokenizer.model"
  std::string tokenizer_checksum;
  int64_t vocab_size = 0;
  int bos_id = -1, eos_id = -1;
  int token_bytes = 2;  // 2 (uint16) or 4 (uint32)
  double val_fraction = 0;
  uint64_t split_seed = 0;
  uint64_t input_bytes = 0;
  // Per split ("train", "val"): entropy of the token frequencies in nats; absent in
  // manifests written before it was recorded.
  std::map<std::string, double> unigram_entropy;
  std::vector<ShardInfo> shards;

  uint64_t tokens(const std::string& split) const;
  uint64_t documents(const std::string& split) const;
};

// Writes one shard file atomically (temp name, then rename). `tokens` holds ids < vocab_size;
// `doc_offsets` has documents + 1 entries, from 0 to tokens.size(). Returns its ShardInfo.
ShardInfo write_shard(const std::string& directory, const std::string& file_name,
                      const std::string& split, const std::vector<uint32_t>& tokens,
                      const std::vector<uint64_t>& doc_offsets, int64_t vocab_size,
                      const std::string& tokenizer_checksum);

void write_manifest(const std::string& directory, const Manifest& manifest);
// Reads and checks DIR/manifest.json (format name and version); throws DataError naming it.
Manifest read_manifest(const std::string& directory);

// A shard opened for reading: its attributes are checked against the manifest entry, its size
// against the recorded size, and its tokens against the checksum; the token and offset data are
// then memory-mapped (the datasets are contiguous and uncompressed). Throws DataError naming
// the file for a missing file, a truncated file, a wrong format name or version, a checksum
// mismatch or a tokenizer that differs from the manifest's.
class MappedShard {
 public:
  MappedShard(const Manifest& manifest, const ShardInfo& info);
  ~MappedShard();
  MappedShard(const MappedShard&) = delete;
  MappedShard& operator=(const MappedShard&) = delete;

  uint64_t tokens() const { return tokens_; }
  uint64_t documents() const { return documents_; }
  int token_bytes() const { return token_bytes_; }
  // Token i (HDF5 places data at any byte offset, so reads go through memcpy).
  uint32_t token(uint64_t i) const {
    if (token_bytes_ == 2) {
      uint16_t value;
      std::memcpy(&value, token_data_ + 2 * i, 2);
      return value;
    }
    uint32_t value;
    std::memcpy(&value, token_data_ + 4 * i, 4);
    return value;
  }
  // Document d covers tokens [doc_offset(d), doc_offset(d + 1)); d in [0, documents()].
  uint64_t doc_offset(uint64_t d) const {
    uint64_t value;
    std::memcpy(&value, doc_offset_data_ + 8 * d, 8);
    return value;
  }
  const std::string& path() const { return path_; }

 private:
  void verify_contents(const ShardInfo& info) const;  // checksum and offsets, after mapping
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  const unsigned char* token_data_ = nullptr;
  const unsigned char* doc_offset_data_ = nullptr;
  uint64_t tokens_ = 0, documents_ = 0;
  int token_bytes_ = 2;
};

}  // namespace ssmtrain::data
