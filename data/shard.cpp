// HDF5 token shards and the manifest: writing (contiguous, uncompressed datasets so readers
// can memory-map them) and reading with every check the loader relies on.
#include "data/shard.h"

#include <algorithm>
#include <fcntl.h>
#include <hdf5.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/errors.h"
#include "data/hash.h"
#include "data/hdf5.h"

namespace ssmtrain::data {
namespace fs = std::filesystem;

namespace {

// A 1-D contiguous dataset: its element count, element size and file offset.
struct DatasetPlacement {
  uint64_t length = 0;
  size_t element_bytes = 0;
  haddr_t offset = HADDR_UNDEF;
};

DatasetPlacement placement_of(hid_t file, const char* name, const std::string& path) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0)
    throw DataError(path + ": the dataset '" + std::string(name) + "' is missing");
  Handle dataset(H5Dopen2(file, name, H5P_DEFAULT));
  if (!dataset.ok()) throw DataError(path + ": cannot open the dataset '" + name + "'");
  Handle type(H5Dget_type(dataset.get()));
  Handle space(H5Dget_space(dataset.get()));
  DatasetPlacement placement;
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_sign(type.get()) != H5T_SGN_NONE ||
      H5Tget_order(type.get()) != H5T_ORDER_LE || H5Sget_simple_extent_ndims(space.get()) != 1)
    throw DataError(path + ": the dataset '" + std::string(name) +
                    "' is not a 1-D little-endian unsigned integer array");
  hsize_t length = 0;
  H5Sget_simple_extent_dims(space.get(), &length, nullptr);
  placement.length = length;
  placement.element_bytes = H5Tget_size(type.get());
  placement.offset = H5Dget_offset(dataset.get());
  if (length > 0 && placement.offset == HADDR_UNDEF)
    throw DataError(path + ": the dataset '" + std::string(name) +
                    "' is not stored contiguously (was the file rewritten by another tool?)");
  return placement;
}

}  // namespace

uint64_t Manifest::tokens(const std::string& split) const {
  uint64_t total = 0;
  for (const ShardInfo& shard : shards)
    if (shard.split == split) total += shard.tokens;
  return total;
}

uint64_t Manifest::documents(const std::string& split) const {
  uint64_t total = 0;
  for (const ShardInfo& shard : shards)
    if (shard.split == split) total += shard.documents;
  return total;
}

ShardInfo write_shard(const std::string& directory, const std::string& file_name,
                      const std::string& split, const std::vector<uint32_t>& tokens,
                      const std::vector<uint64_t>& doc_offsets, int64_t vocab_size,
                      const std::string& tokenizer_checksum) {
  const std::string path = (fs::path(directory) / file_name).string();
  const std::string temp = path + ".tmp";
  const int token_bytes = token_bytes_for_vocab(vocab_size);
  // The stored bytes: little-endian uint16 or uint32, hashed exactly as written.
  std::vector<uint16_t> narrow;
  const void* data = tokens.data();
  if (token_bytes == 2) {
    narrow.assign(tokens.begin(), tokens.end());
    data = narrow.data();
  }
  const size_t data_bytes = tokens.size() * static_cast<size_t>(token_bytes);
  const std::string tokens_checksum = checksum_string(xxh64(data, data_bytes));

  {
    QuietHdf5 quiet;
    Handle file(H5Fcreate(temp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    if (!file.ok()) throw DataError(temp + ": cannot create the shard file");
    const hsize_t token_count = tokens.size(), offset_count = doc_offsets.size();
    {
      Handle space(H5Screate_simple(1, &token_count, nullptr));
      Handle dataset(H5Dcreate2(file.get(), "tokens", token_bytes == 2 ? H5T_STD_U16LE : H5T_STD_U32LE,
                                space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      check(dataset.ok() && (token_count == 0 ||
                             H5Dwrite(dataset.get(), token_bytes == 2 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32,
                                      H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0) ? 0 : -1,
            temp + ": cannot write the tokens");
    }
    {
      Handle space(H5Screate_simple(1, &offset_count, nullptr));
      Handle dataset(H5Dcreate2(file.get(), "doc_offsets", H5T_STD_U64LE, space.get(), H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT));
      check(dataset.ok() && H5Dwrite(dataset.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL,
                                     H5P_DEFAULT, doc_offsets.data()) >= 0 ? 0 : -1,
            temp + ": cannot write doc_offsets");
    }
    const hid_t root = file.get();
    write_string_attribute(root, "format", kShardFormatName, temp);
    write_u64_attribute(root, "format_version", kShardFormatVersion, temp);
    write_string_attribute(root, "split", split, temp);
    write_string_attribute(root, "tokenizer_checksum", tokenizer_checksum, temp);
    write_u64_attribute(root, "vocab_size", static_cast<uint64_t>(vocab_size), temp);
    write_u64_attribute(root, "token_count", tokens.size(), temp);
    write_u64_attribute(root, "document_count", doc_offsets.size() - 1, temp);
    write_string_attribute(root, "tokens_checksum", tokens_checksum, temp);
    check(H5Fflush(root, H5F_SCOPE_GLOBAL), temp + ": flush failed (disk full?)");
  }
  std::error_code error;
  fs::rename(temp, path, error);
  if (error) throw DataError(path + ": cannot rename " + temp + " into place: " + error.message());

  ShardInfo info;
  info.file = file_name;
  info.split = split;
  info.tokens = tokens.size();
  info.documents = doc_offsets.size() - 1;
  info.file_bytes = fs::file_size(path);
  info.tokens_checksum = tokens_checksum;
  return info;
}

void write_manifest(const std::string& directory, const Manifest& manifest) {
  nlohmann::json shards = nlohmann::json::array();
  for (const ShardInfo& shard : manifest.shards) {
    shards.push_back({{"file", shard.file},
                      {"split", shard.split},
                      {"tokens", shard.tokens},
                      {"documents", shard.documents},
                      {"bytes", shard.file_bytes},
                      {"checksum", shard.tokens_checksum}});
  }
  nlohmann::json splits = nlohmann::json::object();
  for (const char* split : {"train", "val"})
  {
    splits[split] = {{"tokens", manifest.tokens(split)}, {"documents", manifest.documents(split)}};
    if (manifest.unigram_entropy.count(split))
      splits[split]["unigram_entropy_nats"] = manifest.unigram_entropy.at(split);
  }
  const nlohmann::json root = {
      {"format", kManifestFormatName},
      {"format_version", kManifestFormatVersion},
      {"tokenizer",
       {{"file", manifest.tokenizer_file},
        {"checksum", manifest.tokenizer_checksum},
        {"vocab_size", manifest.vocab_size},
        {"bos_id", manifest.bos_id},
        {"eos_id", manifest.eos_id}}},
      {"token_dtype", manifest.token_bytes == 2 ? "uint16" : "uint32"},
      {"document_boundary", "eos appended after every document"},
      {"checksum_algorithm", "xxh64 of the raw little-endian tokens data"},
      {"val_fraction", manifest.val_fraction},
      {"split_seed", manifest.split_seed},
      {"input_bytes", manifest.input_bytes},
      {"splits", splits},
      {"shards", shards},
  };
  const std::string path = (fs::path(directory) / kManifestFileName).string();
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    if (!out) throw DataError(temp + ": cannot write the manifest");
    out << root.dump(2) << '\n';
    out.flush();
    if (!out) throw DataError(temp + ": write failed (disk full?)");
  }
  std::error_code error;
  fs::rename(temp, path, error);
  if (error) throw DataError(path + ": cannot rename " + temp + " into place: " + error.message());
}

Manifest read_manifest(const std::string& directory) {
  const std::string path = (fs::path(directory) / kManifestFileName).string();
  std::ifstream in(path);
  if (!in)
    throw DataError(path + ": no manifest; is " + directory +
                    " a directory written by `ssmtrain data prepare`?");
  const nlohmann::json root = nlohmann::json::parse(in, nullptr, false);
  if (root.is_discarded() || !root.is_object())
    throw DataError(path + ": not valid JSON (the manifest is damaged; run `data prepare` again)");
  if (root.value("format", std::string()) != kManifestFormatName)
    throw DataError(path + ": wrong format name '" + root.value("format", std::string()) +
                    "', expected '" + kManifestFormatName + "'");
  if (root.value("format_version", 0) != kManifestFormatVersion)
    throw DataError(path + ": format version " + std::to_string(root.value("format_version", 0)) +
                    " is not supported (this build reads version " +
                    std::to_string(kManifestFormatVersion) + ")");
  Manifest manifest;
  manifest.directory = directory;
  try {
    const nlohmann::json& tokenizer = root.at("tokenizer");
    manifest.tokenizer_file = tokenizer.at("file").get<std::string>();
    manifest.tokenizer_checksum = tokenizer.at("checksum").get<std::string>();
    manifest.vocab_size = tokenizer.at("vocab_size").get<int64_t>();
    manifest.bos_id = tokenizer.at("bos_id").get<int>();
    manifest.eos_id = tokenizer.at("eos_id").get<int>();
    const std::string dtype = root.at("token_dtype").get<std::string>();
    manifest.token_bytes = dtype == "uint16" ? 2 : dtype == "uint32" ? 4 : 0;
    if (manifest.token_bytes == 0) throw DataError(path + ": unknown token_dtype '" + dtype + "'");
    manifest.val_fraction = root.at("val_fraction").get<double>();
    manifest.split_seed = root.at("split_seed").get<uint64_t>();
    manifest.input_bytes = root.at("input_bytes").get<uint64_t>();
    if (root.contains("splits") && root.at("splits").is_object())
      for (const auto& [split, counts] : root.at("splits").items())
        if (counts.contains("unigram_entropy_nats"))
          manifest.unigram_entropy[split] = counts.at("unigram_entropy_nats").get<double>();
    for (const nlohmann::json& entry : root.at("shards")) {
      ShardInfo shard;
      shard.file = entry.at("file").get<std::string>();
      shard.split = entry.at("split").get<std::string>();
      shard.tokens = entry.at("tokens").get<uint64_t>();
      shard.documents = entry.at("documents").get<uint64_t>();
      shard.file_bytes = entry.at("bytes").get<uint64_t>();
      shard.tokens_checksum = entry.at("checksum").get<std::string>();
      manifest.shards.push_back(std::move(shard));
    }
  } catch (const nlohmann::json::exception& error) {
    throw DataError(path + ": a field is missing or has the wrong type (" + error.what() + ")");
  }
  return manifest;
}

MappedShard::MappedShard(const Manifest& manifest, const ShardInfo& info)
    : path_((fs::path(manifest.directory) / info.file).string()) {
  std::error_code error;
  if (!fs::exists(path_, error))
    throw DataError(path_ + ": missing shard (listed in " + manifest.directory + "/" +
                    kManifestFileName + "); restore it or run `ssmtrain data prepare` again");
  const uint64_t size = fs::file_size(path_, error);
  if (size < info.file_bytes)
    throw DataError(path_ + ": truncated shard (" + std::to_string(size) + " of " +
                    std::to_string(info.file_bytes) + " bytes); run `ssmtrain data prepare` again");

  DatasetPlacement tokens_at, offsets_at;
  {
    QuietHdf5 quiet;
    Handle file(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    if (!file.ok())
      throw DataError(path_ + ": not a readable HDF5 file (damaged or truncated shard)");
    const hid_t root = file.get();
    const std::string format =
        has_attribute(root, "format") ? read_string_attribute(root, "format", path_) : "";
    if (format != kShardFormatName)
      throw DataError(path_ + ": wrong format name '" + format + "', expected '" +
                      kShardFormatName + "' (not a token shard)");
    const uint64_t version = read_u64_attribute(root, "format_version", path_);
    if (version != kShardFormatVersion)
      throw DataError(path_ + ": format version " + std::to_string(version) +
                      " is not supported (this build reads version " +
                      std::to_string(kShardFormatVersion) + ")");
    const std::string tokenizer = read_string_attribute(root, "tokenizer_checksum", path_);
    if (tokenizer != manifest.tokenizer_checksum)
      throw DataError(path_ + ": encoded with tokenizer " + tokenizer + " but the manifest says " +
                      manifest.tokenizer_checksum + "; the shards come from different runs");
    if (read_u64_attribute(root, "vocab_size", path_) != static_cast<uint64_t>(manifest.vocab_size))
      throw DataError(path_ + ": vocab_size differs from the manifest's");
    tokens_ = read_u64_attribute(root, "token_count", path_);
    documents_ = read_u64_attribute(root, "document_count", path_);
    if (tokens_ != info.tokens || documents_ != info.documents)
      throw DataError(path_ + ": holds " + std::to_string(tokens_) + " tokens in " +
                      std::to_string(documents_) + " documents but the manifest lists " +
                      std::to_string(info.tokens) + " in " + std::to_string(info.documents));
    tokens_at = placement_of(root, "tokens", path_);
    offsets_at = placement_of(root, "doc_offsets", path_);
  }
  token_bytes_ = static_cast<int>(tokens_at.element_bytes);
  if (tokens_at.length != tokens_ || offsets_at.length != documents_ + 1 ||
      token_bytes_ != manifest.token_bytes || offsets_at.element_bytes != 8)
    throw DataError(path_ + ": dataset sizes or types disagree with its attributes");
  if (tokens_ == 0) throw DataError(path_ + ": the shard holds no tokens");
  const uint64_t tokens_end = tokens_at.offset + tokens_ * token_bytes_;
  const uint64_t offsets_end = offsets_at.offset + (documents_ + 1) * 8;
  if (std::max(tokens_end, offsets_end) > size)
    throw DataError(path_ + ": truncated shard (data runs past the end of the file)");

  const int fd = ::open(path_.c_str(), O_RDONLY);
  if (fd < 0) throw DataError(path_ + ": cannot open for reading");
  mapping_bytes_ = size;
  mapping_ = ::mmap(nullptr, mapping_bytes_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    throw DataError(path_ + ": cannot memory-map the shard");
  }
  const auto* base = static_cast<const unsigned char*>(mapping_);
  token_data_ = base + tokens_at.offset;
  doc_offset_data_ = base + offsets_at.offset;
  try {
    verify_contents(info);
  } catch (...) {
    ::munmap(mapping_, mapping_bytes_);
    throw;
  }
}

void MappedShard::verify_contents(const ShardInfo& info) const {
  const std::string checksum = checksum_string(xxh64(token_data_, tokens_ * token_bytes_));
  if (checksum != info.tokens_checksum)
    throw DataError(path_ + ": checksum mismatch of the tokens (" + checksum + ", manifest says " +
                    info.tokens_checksum + "); the shard is corrupt, run `data prepare` again");
  for (uint64_t d = 0; d < documents_; ++d)
    if (doc_offset(d) >= doc_offset(d + 1))
      throw DataError(path_ + ": doc_offsets are not increasing at document " + std::to_string(d) +
                      " (corrupt shard)");
  if (doc_offset(0) != 0 || doc_offset(documents_) != tokens_)
    throw DataError(path_ + ": doc_offsets do not span the tokens (corrupt shard)");
}

MappedShard::~MappedShard() {
  if (mapping_) ::munmap(mapping_, mapping_bytes_);
}

}  // namespace ssmtrain::data
