// safetensors files (the format of HuggingFace model weights): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
// {string: string}}, then the raw little-endian tensor bytes. We read F32, BF16 and F16 into
// fp32 and write F32 or BF16; a directory may hold one model.safetensors or shards listed in
// model.safetensors.index.json ({"weight_map": {name: file}}).
#pragma once

#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "train/checkpoint.h"

namespace ssmtrain::interop {

// A file that cannot be read or written: what() is one line, "PATH: problem".
class SafetensorsError : public std::runtime_error {
 public:
  SafetensorsError(const std::string& path, const std::string& problem)
      : std::runtime_error(path + ": " + problem) {}
};

enum class StoredDType { f32, bf16, f16 };

struct TensorFile {
  std::map<std::string, std::string> metadata;            // "__metadata__"
  std::vector<std::pair<std::string, HostArray>> tensors;  // in file order (by data offset)
  const HostArray* find(const std::string& name) const;
};

// Writes `tensors` (fp32 host arrays, stored as `dtype`) with `metadata` to `path` through a
// temporary file in the same folder and a rename. Throws SafetensorsError, or
// std::invalid_argument for a duplicate name or an array whose size is not its shape's.
void write_safetensors(const std::filesystem::path& path, const std::vector<std::pair<std::string, HostArray>>& tensors,
                       const std::map<std::string, std::string>& metadata = {}, StoredDType dtype = StoredDType::f32);

// Reads one file. Throws SafetensorsError naming the file and what is wrong: too short, a
// header length past the end, a header that is not JSON or not an object, a tensor without
// dtype/shape/data_offsets, a dtype other than F32/BF16/F16 (naming the tensor), offsets out
// of the data or not matching the shape, tensors that overlap or leave gaps.
TensorFile read_safetensors(const std::filesystem::path& path);

// Reads a model directory: model.safetensors.index.json and its shards when the index is there,
// else model.safetensors. Throws SafetensorsError for a missing file, an index without a
// weight_map, a shard that lacks a tensor the index puts in it, or a name found twice.
TensorFile read_safetensors_dir(const std::filesystem::path& dir);

// fp32 <-> bf16 (round to nearest even) and f16 -> fp32, bit for bit.
uint16_t float_to_bf16(float value);
float bf16_to_float(uint16_t bits);
float f16_to_float(uint16_t bits);

}  // namespace ssmtrain::interop
