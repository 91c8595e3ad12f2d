// interop/safetensors.h: what is written reads back bit for bit (F32) or as the bf16 rounding
// a hand computation gives; a file written by hand byte by byte (the format's own example
// layout) reads; F16 decodes exactly; sharded directories join through the index; and each
// kind of damaged file gives one error naming the file and the problem.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "interop/safetensors.h"

namespace ssmtrain::interop {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain_safetensors_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A file from a header text and raw data bytes, exactly as given.
void write_raw(const fs::path& path, const std::string& header, const std::string& data, int64_t claimed_len = -1) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t len = claimed_len >= 0 ? uint64_t(claimed_len) : header.size();
  for (int i = 0; i < 8; ++i) out.put(char(uint8_t(len >> (8 * i))));
  out << header << data;
}

std::string bytes_of(const std::vector<float>& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4); }

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const SafetensorsError& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, F32RoundTripsExactly) {
  const fs::path dir = temp_dir("roundtrip");
  HostArray a{{2, 3}, {1, -2, 3.5f, 1e-30f, -0.0f, 7}}, b{{4}, {0.1f, 0.2f, 0.3f, 1e20f}}, s{{}, {42}};
  write_safetensors(dir / "m.safetensors", {{"a.weight", a}, {"b", b}, {"scalar", s}}, {{"format", "pt"}});
  const TensorFile f = read_safetensors(dir / "m.safetensors");
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.tensors[0].first, "a.weight");  // in data order, which is write order
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.find("a.weight")->shape, (Shape{2, 3}));
  EXPECT_EQ(std::memcmp(f.find("a.weight")->values.data(), a.values.data(), 24), 0);
  EXPECT_EQ(f.find("b")->values, b.values);
  EXPECT_EQ(f.find("scalar")->shape, Shape{});
  EXPECT_EQ(f.find("scalar")->values, std::vector<float>{42});
  // the data starts 8-byte aligned
  std::ifstream in(dir / "m.safetensors", std::ios::binary);
  uint64_t len = 0;
  in.read(reinterpret_cast<char*>(&len), 8);
  EXPECT_EQ(len % 8, 0u);
  fs::remove_all(dir);
}

TEST(Safetensors, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 lies halfway between bf16 1 and 1 + 2^-7: ties go to the even mantissa (1).
  // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6.
  EXPECT_EQ(float_to_bf16(1.0f + 1.0f / 256), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(bf16_to_float(0x3f82), 1.0f + 2.0f / 128);
  const fs::path dir = temp_dir("bf16");
  HostArray a{{3}, {1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 3.14159f}};
  write_safetensors(dir / "m.safetensors", {{"a", a}}, {}, StoredDType::bf16);
  const TensorFile f = read_safetensors(dir / "m.safetensors");
  EXPECT_EQ(f.find("a")->values, (std::vector<float>{1.0f, 1.0f + 1.0f / 64, 3.140625f}));
  fs::remove_all(dir);
}

TEST(Safetensors, ReadsAHandWrittenFileWithF16AndBf16) {
  const fs::path dir = temp_dir("hand");
  // F16: 1.0 = 0x3c00, -2.5 = 0xc100, the smallest subnormal 2^-24 = 0x0001, 65504 = 0x7bff.
  // BF16: 0.5 = 0x3f00. Keys out of data order, as other writers may leave them.
  const std::string header =
      R"({"b":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]},)"
      R"("h":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}})";
  const unsigned char data[] = {0x00, 0x3c, 0x00, 0xc1, 0x01, 0x00, 0xff, 0x7b, 0x00, 0x3f};
  write_raw(dir / "m.safetensors", header, std::string(reinterpret_cast<const char*>(data), sizeof data));
  const TensorFile f = read_safetensors(dir / "m.safetensors");
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].first, "h");
  EXPECT_EQ(f.find("h")->values, (std::vector<float>{1.0f, -2.5f, std::ldexp(1.0f, -24), 65504.0f}));
  EXPECT_EQ(f.find("b")->values, std::vector<float>{0.5f});
  fs::remove_all(dir);
}

TEST(Safetensors, ShardedDirectoryJoinsThroughTheIndex) {
  const fs::path dir = temp_dir("sharded");
  write_safetensors(dir / "model-00001-of-00002.safetensors", {{"x", HostArray{{2}, {1, 2}}}});
  write_safetensors(dir / "model-00002-of-00002.safetensors", {{"y", HostArray{{1}, {3}}}, {"z", HostArray{{1}, {4}}}});
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata":{"total_size":16},"weight_map":{"x":"model-00001-of-00002.safetensors",)"
         R"("y":"model-00002-of-00002.safetensors","z":"model-00002-of-00002.safetensors"}})";
  const TensorFile f = read_safetensors_dir(dir);
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_EQ(f.find("x")->values, (std::vector<float>{1, 2}));
  EXPECT_EQ(f.find("z")->values, std::vector<float>{4});

  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map":{"x":"model-00001-of-00002.safetensors","w":"model-00001-of-00002.safetensors"}})";
  EXPECT_NE(error_of([&] { read_safetensors_dir(dir); }).find("lacks tensor 'w'"), std::string::npos);
  std::ofstream(dir / "model.safetensors.index.json") << R"({"metadata":{}})";
  EXPECT_NE(error_of([&] { read_safetensors_dir(dir); }).find("has no weight_map"), std::string::npos);
  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map":{"x":"../elsewhere.safetensors"}})";
  EXPECT_NE(error_of([&] { read_safetensors_dir(dir); }).find("not a file in the directory"), std::string::npos);
  fs::remove_all(dir);
  fs::create_directories(dir);
  EXPECT_NE(error_of([&] { read_safetensors_dir(dir); }).find("holds neither model.safetensors"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Safetensors, MalformedFilesNameTheProblem) {
  const fs::path dir = temp_dir("bad");
  const fs::path p = dir / "m.safetensors";
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string two = bytes_of({1, 2});
  auto expect = [&](const std::string& needle) {
    const std::string message = error_of([&] { read_safetensors(p); });
    EXPECT_NE(message.find(p.string()), std::string::npos) << message;
    EXPECT_NE(message.find(needle), std::string::npos) << "expected '" << needle << "' in: " << message;
  };
  std::ofstream(p) << "abc";
  expect("too short");
  write_raw(p, ok, two, 1 << 20);
  expect("runs past the end");
  write_raw(p, ok, two.substr(0, 5));  // data truncated
  expect("lie outside");
  write_raw(p, "{not json", "");
  expect("not valid JSON");
  write_raw(p, "[1,2]", "");
  expect("not a JSON object");
  write_raw(p, R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", two);
  expect("tensor 'a' has dtype I64");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", two);
  expect("8 bytes for shape (3)");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2]}})", two);
  expect("needs dtype, shape and data_offsets");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", two);
  expect("not a size");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", two);
  expect("overlapping");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", two);
  expect("leaving a gap");
  write_raw(p, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", two);
  expect("4 bytes after the last tensor");
  write_raw(p, R"({"__metadata__":{"k":1}})", "");
  expect("__metadata__.k is not a string");
  EXPECT_NE(error_of([&] { read_safetensors(dir / "missing.safetensors"); }).find("cannot open"), std::string::npos);
  fs::remove_all(dir);
}

TEST(Safetensors, WriterRefusesDuplicatesAndWrongSizes) {
  const fs::path dir = temp_dir("writer");
  EXPECT_THROW(write_safetensors(dir / "m.safetensors", {{"a", HostArray{{1}, {1}}}, {"a", HostArray{{1}, {2}}}}),
               std::invalid_argument);
  EXPECT_THROW(write_safetensors(dir / "m.safetensors", {{"a", HostArray{{3}, {1}}}}), std::invalid_argument);
  EXPECT_FALSE(fs::exists(dir / "m.safetensors"));
  EXPECT_NE(error_of([&] { write_safetensors(dir / "no" / "such" / "m.safetensors", {{"a", HostArray{{1}, {1}}}}); })
                .find("cannot create"),
            std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ssmtrain::interop
