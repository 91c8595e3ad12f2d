// See safetensors.h. The header is read whole (at most 100 MB, as the reference reader
// allows), checked entry by entry, then each tensor's bytes are converted to fp32.
#include "interop/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace ssmtrain::interop {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;

int64_t element_bytes(StoredDType dtype) { return dtype == StoredDType::f32 ? 4 : 2; }

const char* dtype_name(StoredDType dtype) {
  switch (dtype) {
    case StoredDType::f32: return "F32";
    case StoredDType::bf16: return "BF16";
    case StoredDType::f16: return "F16";
  }
  return "?";
}

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string shape_text(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

}  // namespace

uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if (std::isnan(value)) return uint16_t((bits >> 16) | 0x40);  // keep it a (quiet) NaN
  const uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return uint16_t((bits + rounding) >> 16);
}

float bf16_to_float(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f;
  uint32_t mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000 | (mantissa << 13);  // inf / nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;  // +-0
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400) == 0);
    bits = sign | (uint32_t(112 - e) << 23) | ((mantissa & 0x3ff) << 13);
  }
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

const HostArray* TensorFile::find(const std::string& name) const {
  for (const auto& [n, a] : tensors)
    if (n == name) return &a;
  return nullptr;
}

void write_safetensors(const fs::path& path, const std::vector<std::pair<std::string, HostArray>>& tensors,
                       const std::map<std::string, std::string>& metadata, StoredDType dtype) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  int64_t offset = 0;
  for (const auto& [name, array] : tensors) {
    if (name == "__metadata__" || !names.insert(name).second)
      throw std::invalid_argument("safetensors: tensor name '" + name + "' is used twice or reserved");
    if (numel_of(array.shape) != array.size())
      throw std::invalid_argument("safetensors: tensor '" + name + "' has " + std::to_string(array.size()) +
                                  " values for shape " + shape_text(array.shape));
    const int64_t bytes = array.size() * element_bytes(dtype);
    header[name] = {{"dtype", dtype_name(dtype)}, {"shape", array.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned

  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw SafetensorsError(path.string(), "cannot create " + tmp.string());
    uint64_t length = text.size();
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = uint8_t(length >> (8 * i));
    out.write(reinterpret_cast<const char*>(le), 8);
    out.write(text.data(), std::streamsize(text.size()));
    std::vector<char> buffer;
    for (const auto& [name, array] : tensors) {
      const float* values = array.data();
      buffer.resize(size_t(array.size() * element_bytes(dtype)));
      if (dtype == StoredDType::f32) {
        std::memcpy(buffer.data(), values, buffer.size());
      } else if (dtype == StoredDType::bf16) {
        for (int64_t i = 0; i < array.size(); ++i) {
          const uint16_t b = float_to_bf16(values[i]);
          std::memcpy(buffer.data() + 2 * i, &b, 2);
        }
      } else {
        std::error_code ignored;
        fs::remove(tmp, ignored);
        throw std::invalid_argument("safetensors: writing F16 is not supported (use F32 or BF16)");
      }
      out.write(buffer.data(), std::streamsize(buffer.size()));
    }
    out.flush();
    if (!out) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw SafetensorsError(path.string(), "write failed (disk full or read-only folder?)");
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw SafetensorsError(path.string(), "cannot rename the temporary file into place");
  }
}

TensorFile read_safetensors(const fs::path& path) {
  const std::string where = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SafetensorsError(where, "cannot open (missing or unreadable)");
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  if (ec) throw SafetensorsError(where, "cannot read its size");
  if (file_size < 8) throw SafetensorsError(where, "too short for a safetensors file (" + std::to_string(file_size) + " bytes)");
  unsigned char le[8];
  in.read(reinterpret_cast<char*>(le), 8);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t(le[i]) << (8 * i);
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8)
    throw SafetensorsError(where, "header length " + std::to_string(header_len) + " runs past the end of the " +
                                      std::to_string(file_size) + "-byte file (truncated or not safetensors)");
  std::string text(header_len, '\0');
  in.read(text.data(), std::streamsize(header_len));
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& e) {
    throw SafetensorsError(where, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw SafetensorsError(where, "header is not a JSON object");

  const uint64_t data_size = file_size - 8 - header_len;
  TensorFile file;
  struct Entry {
    std::string name;
    StoredDType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) throw SafetensorsError(where, "__metadata__ is not an object");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) throw SafetensorsError(where, "__metadata__." + k + " is not a string");
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor '" + name + "'";
    if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets"))
      throw SafetensorsError(where, what + " needs dtype, shape and data_offsets");
    Entry e{name, StoredDType::f32, {}, 0, 0};
    const json& dt = value["dtype"];
    const std::string dtype = dt.is_string() ? dt.get<std::string>() : dt.dump();
    if (dtype == "F32") e.dtype = StoredDType::f32;
    else if (dtype == "BF16") e.dtype = StoredDType::bf16;
    else if (dtype == "F16") e.dtype = StoredDType::f16;
    else throw SafetensorsError(where, what + " has dtype " + dtype + "; supported: F32, BF16, F16");
    const json& shape = value["shape"];
    if (!shape.is_array()) throw SafetensorsError(where, what + ": shape is not a list");
    for (const json& s : shape) {
      if (!s.is_number_unsigned()) throw SafetensorsError(where, what + ": shape holds " + s.dump() + ", not a size");
      e.shape.push_back(s.get<int64_t>());
    }
    const json& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      throw SafetensorsError(where, what + ": data_offsets is not [begin, end]");
    e.begin = offsets[0].get<uint64_t>();
    e.end = offsets[1].get<uint64_t>();
    if (e.begin > e.end || e.end > data_size)
      throw SafetensorsError(where, what + ": data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                                        "] lie outside the " + std::to_string(data_size) + " data bytes (truncated?)");
    const uint64_t want = uint64_t(numel_of(e.shape)) * uint64_t(element_bytes(e.dtype));
    if (e.end - e.begin != want)
      throw SafetensorsError(where, what + ": " + std::to_string(e.end - e.begin) + " bytes for shape " +
                                        shape_text(e.shape) + " of " + dtype + " (" + std::to_string(want) + " expected)");
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  uint64_t covered = 0;
  for (const Entry& e : entries) {
    if (e.begin != covered)
      throw SafetensorsError(where, "tensor '" + e.name + "' starts at byte " + std::to_string(e.begin) + " of the data, " +
                                        (e.begin < covered ? "overlapping the tensor before it" : "leaving a gap"));
    covered = e.end;
  }
  if (covered != data_size)
    throw SafetensorsError(where, std::to_string(data_size - covered) + " bytes after the last tensor");

  std::vector<char> bytes;
  for (const Entry& e : entries) {
    bytes.resize(e.end - e.begin);
    in.seekg(std::streamoff(8 + header_len + e.begin));
    in.read(bytes.data(), std::streamsize(bytes.size()));
    if (!in) throw SafetensorsError(where, "cannot read the data of tensor '" + e.name + "'");
    HostArray array;
    array.shape = e.shape;
    array.values.resize(size_t(numel_of(e.shape)));
    for (size_t i = 0; i < array.values.size(); ++i) {
      if (e.dtype == StoredDType::f32) {
        std::memcpy(&array.values[i], bytes.data() + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * i, 2);
        array.values[i] = e.dtype == StoredDType::bf16 ? bf16_to_float(h) : f16_to_float(h);
      }
    }
    file.tensors.emplace_back(e.name, std::move(array));
  }
  return file;
}

TensorFile read_safetensors_dir(const fs::path& dir) {
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (!fs::exists(index_path)) {
    if (!fs::exists(dir / "model.safetensors"))
      throw SafetensorsError(dir.string(), "holds neither model.safetensors nor model.safetensors.index.json");
    return read_safetensors(dir / "model.safetensors");
  }
  const std::string where = index_path.string();
  json index;
  try {
    std::ifstream in(index_path);
    index = json::parse(in);
  } catch (const json::exception& e) {
    throw SafetensorsError(where, std::string("not valid JSON: ") + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw SafetensorsError(where, "has no weight_map object");
  std::map<std::string, std::vector<std::string>> by_shard;  // shard -> tensor names
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) throw SafetensorsError(where, "weight_map." + name + " is not a file name");
    const std::string file = shard.get<std::string>();
    if (fs::path(file).has_parent_path() || file == ".." || file == ".")
      throw SafetensorsError(where, "weight_map." + name + " names '" + file + "', not a file in the directory");
    by_shard[file].push_back(name);
  }
  TensorFile all;
  std::set<std::string> seen;
  for (const auto& [shard, names] : by_shard) {
    TensorFile part = read_safetensors(dir / shard);
    std::set<std::string> listed(names.begin(), names.end());
    for (const std::string& name : names)
      if (!part.find(name)) throw SafetensorsError((dir / shard).string(), "lacks tensor '" + name + "' that " + where + " puts in it");
    for (auto& [name, array] : part.tensors) {
      if (!listed.count(name)) continue;  // the index decides where a tensor lives
      if (!seen.insert(name).second) throw SafetensorsError(where, "tensor '" + name + "' is found twice");
      all.tensors.emplace_back(name, std::move(array));
    }
    all.metadata.insert(part.metadata.begin(), part.metadata.end());
  }
  return all;
}

}  // namespace ssmtrain::interop
