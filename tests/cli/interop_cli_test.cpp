// `ssmtrain import hf` and `ssmtrain export hf` through the binary: a transformers fixture
// imports into a checkpoint that `checkpoint info` verifies and a recipe that `config show`
// accepts, exports back to the same tensors; a directory ssmtrain cannot use exits 2 naming
// the tensor; a missing checkpoint is named.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "interop/safetensors.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = fs::path(SSMTRAIN_SOURCE_DIR) / "tests" / "fixtures" / "hf";

struct Result {
  int code;
  std::string err;
};

// Runs `ssmtrain ARGS` (at most 120 s) with stderr captured.
Result ssmtrain(const fs::path& dir, const std::string& args) {
  const fs::path err = dir / "stderr.txt";
  const std::string command = "timeout 120 " + std::string(SSMTRAIN_BINARY) + " " + args + " > " + (dir / "stdout.txt").string() +
                              " 2> " + err.string();
  const int status = std::system(command.c_str());
  std::ifstream in(err);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, std::string(std::istreambuf_iterator<char>(in), {})};
}

fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("ssmtrain_hf_cli_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(InteropCli, ImportThenExportGivesTheSameTensors) {
  const fs::path dir = temp_dir("roundtrip");
  const fs::path fixture = kFixtures / "jamba";
  Result r = ssmtrain(dir, "import hf --in " + fixture.string() + " --out " + (dir / "jamba.h5").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "jamba.yaml"));
  r = ssmtrain(dir, "checkpoint info " + (dir / "jamba.h5").string());
  EXPECT_EQ(r.code, 0) << r.err;
  r = ssmtrain(dir, "config show " + (dir / "jamba.yaml").string());
  EXPECT_EQ(r.code, 0) << r.err;
  r = ssmtrain(dir, "export hf --checkpoint " + (dir / "jamba.h5").string() + " --out " + (dir / "hf").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const interop::TensorFile a = interop::read_safetensors(fixture / "model.safetensors");
  const interop::TensorFile b = interop::read_safetensors(dir / "hf" / "model.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, array] : a.tensors) {
    const HostArray* other = b.find(name);
    ASSERT_NE(other, nullptr) << name << " missing from the export";
    EXPECT_EQ(other->shape, array.shape) << name;
    EXPECT_EQ(other->values, array.values) << name;
  }
  fs::remove_all(dir);
}

TEST(InteropCli, UnusableInputExitsTwoNamingIt) {
  const fs::path dir = temp_dir("bad");
  fs::create_directories(dir / "in");
  fs::copy_file(kFixtures / "mamba" / "config.json", dir / "in" / "config.json");
  interop::TensorFile f = interop::read_safetensors(kFixtures / "mamba" / "model.safetensors");
  f.tensors.emplace_back("backbone.layers.0.mixer.extra_bias", HostArray{{3}, {1, 2, 3}});
  interop::write_safetensors(dir / "in" / "model.safetensors", f.tensors);
  Result r = ssmtrain(dir, "import hf --in " + (dir / "in").string() + " --out " + (dir / "x.h5").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("backbone.layers.0.mixer.extra_bias"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "x.h5"));

  // A checkpoint that is not there: exit non-zero naming it.
  r = ssmtrain(dir, "export hf --checkpoint " + (dir / "missing.h5").string() + " --out " + (dir / "o").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("missing.h5"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ssmtrain
