// Small helpers over the HDF5 C API shared by every HDF5 file ssmtrain writes (token shards,
// checkpoints): handles closed at scope exit, HDF5's own error printing silenced, and scalar
// string / integer / float attributes. Failures throw DataError naming the file.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>

namespace ssmtrain::data {

// Silences HDF5's own error-stack printing while alive; we report errors ourselves.
class QuietHdf5 {
 public:
  QuietHdf5();
  ~QuietHdf5();
  QuietHdf5(const QuietHdf5&) = delete;
  QuietHdf5& operator=(const QuietHdf5&) = delete;

 private:
  H5E_auto2_t function_ = nullptr;
  void* data_ = nullptr;
};

// Closes an HDF5 handle of any kind at scope exit.
class Handle {
 public:
  explicit Handle(hid_t id = H5I_INVALID_HID) : id_(id) {}
  ~Handle() {
    if (id_ >= 0) H5Idec_ref(id_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
};

// Throws DataError(what) when status < 0.
void check(herr_t status, const std::string& what);

// Scalar attributes of `object` in the file at `path` (named in errors).
void write_string_attribute(hid_t object, const char* name, const std::string& value, const std::string& path);
void write_u64_attribute(hid_t object, const char* name, uint64_t value, const std::string& path);
void write_i64_attribute(hid_t object, const char* name, int64_t value, const std::string& path);
void write_f64_attribute(hid_t object, const char* name, double value, const std::string& path);
bool has_attribute(hid_t object, const char* name);
std::string read_string_attribute(hid_t object, const char* name, const std::string& path);
uint64_t read_u64_attribute(hid_t object, const char* name, const std::string& path);
int64_t read_i64_attribute(hid_t object, const char* name, const std::string& path);
double read_f64_attribute(hid_t object, const char* name, const std::string& path);

}  // namespace ssmtrain::data
