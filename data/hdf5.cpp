// See hdf5.h.
#include "data/hdf5.h"

#include <algorithm>
#include <cstring>

#include "data/errors.h"

namespace ssmtrain::data {
namespace {

// A numeric scalar attribute of file type `file_type`, written from / read into `memory_type`.
template <typename T>
void write_number(hid_t object, const char* name, hid_t file_type, hid_t memory_type, T value,
                  const std::string& path) {
  Handle space(H5Screate(H5S_SCALAR));
  Handle attribute(H5Acreate2(object, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  check(attribute.ok() ? H5Awrite(attribute.get(), memory_type, &value) : -1,
        path + ": cannot write attribute " + name);
}

template <typename T>
T read_number(hid_t object, const char* name, hid_t memory_type, const std::string& path) {
  if (!has_attribute(object, name))
    throw DataError(path + ": the attribute '" + std::string(name) + "' is missing");
  Handle attribute(H5Aopen(object, name, H5P_DEFAULT));
  T value{};
  check(attribute.ok() ? H5Aread(attribute.get(), memory_type, &value) : -1, path + ": cannot read " + name);
  return value;
}

}  // namespace

QuietHdf5::QuietHdf5() {
  H5Eget_auto2(H5E_DEFAULT, &function_, &data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}
QuietHdf5::~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, function_, data_); }

void check(herr_t status, const std::string& what) {
  if (status < 0) throw DataError(what);
}

void write_string_attribute(hid_t object, const char* name, const std::string& value, const std::string& path) {
  Handle type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  Handle space(H5Screate(H5S_SCALAR));
  Handle attribute(H5Acreate2(object, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  check(attribute.ok() ? H5Awrite(attribute.get(), type.get(), value.data()) : -1,
        path + ": cannot write attribute " + name);
}

void write_u64_attribute(hid_t object, const char* name, uint64_t value, const std::string& path) {
  write_number(object, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, value, path);
}
void write_i64_attribute(hid_t object, const char* name, int64_t value, const std::string& path) {
  write_number(object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, value, path);
}
void write_f64_attribute(hid_t object, const char* name, double value, const std::string& path) {
  write_number(object, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, value, path);
}

bool has_attribute(hid_t object, const char* name) { return H5Aexists(object, name) > 0; }

std::string read_string_attribute(hid_t object, const char* name, const std::string& path) {
  if (!has_attribute(object, name))
    throw DataError(path + ": the attribute '" + std::string(name) + "' is missing");
  Handle attribute(H5Aopen(object, name, H5P_DEFAULT));
  Handle type(H5Aget_type(attribute.get()));
  if (H5Tget_class(type.get()) != H5T_STRING)
    throw DataError(path + ": the attribute '" + std::string(name) + "' is not a string");
  if (H5Tis_variable_str(type.get()) > 0) {
    char* text = nullptr;
    Handle memory_type(H5Tget_native_type(type.get(), H5T_DIR_ASCEND));
    check(H5Aread(attribute.get(), memory_type.get(), &text), path + ": cannot read " + name);
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  std::string value(H5Tget_size(type.get()), '\0');
  check(H5Aread(attribute.get(), type.get(), value.data()), path + ": cannot read " + name);
  value.resize(std::strlen(value.c_str()));
  return value;
}

uint64_t read_u64_attribute(hid_t object, const char* name, const std::string& path) {
  return read_number<uint64_t>(object, name, H5T_NATIVE_UINT64, path);
}
int64_t read_i64_attribute(hid_t object, const char* name, const std::string& path) {
  return read_number<int64_t>(object, name, H5T_NATIVE_INT64, path);
}
double read_f64_attribute(hid_t object, const char* name, const std::string& path) {
  return read_number<double>(object, name, H5T_NATIVE_DOUBLE, path);
}

}  // namespace ssmtrain::data
