// The checkpoint file and the checkpoints/ folder (train/checkpoint.h): what is written reads
// back exactly; a truncated file, a flipped byte inside a dataset, a wrong format version, a
// missing or dangling `latest` and a checkpoint of another model each give one line naming
// the file and the problem; `auto` skips a bad checkpoint with a warning; the background
// writer keeps the newest `keep`, and a failed write names the path and keeps the previous one.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "data/hdf5.h"
#include "layers/from_config.h"
#include "tests/data/data_fixture.h"
#include "train/checkpoint.h"

namespace ssmtrain {
namespace {

namespace fs = std::filesystem;

// Contents with a few arrays of distinct values, as a 3-step run would save.
CheckpointContents sample(int64_t step, float offset = 0) {
  CheckpointContents c;
  c.config_yaml = "run:\n  name: \"x\"\n";
  c.layout = "MM/--";
  c.ssmtrain_version = "0.1.0";
  c.commit = "0123456789ab";
  c.data.tokenizer_checksum = "xxh64:00000000000000aa";
  c.data.shard_checksums = {"xxh64:0000000000000001", "xxh64:0000000000000002"};
  HostArray w{{2, 3}, {1, 2, 3, 4, 5, 6}}, b{{3}, {-1, 0.5f, 1e-20f}};
  for (float& v : w.values) v += offset;
  c.model = {{"blocks.0.mixer.in_proj.weight", w}, {"norm_f.weight", b}};
  c.optim["blocks.0.mixer.in_proj.weight"] = {w, w};
  c.optim["norm_f.weight"] = {b, b};
  c.adamw_step = step;
  c.progress.step = step;
  c.progress.tokens_seen = step * 256;
  c.progress.loader = {1, 17};
  c.progress.rng_seed = 1234;
  c.progress.elapsed_s = 1.5;
  for (int64_t s = 0; s < step; ++s) {
    c.progress.loss_steps.push_back(double(s));
    c.progress.losses.push_back(6.0 - 0.1 * double(s));
  }
  c.progress.val_steps = {double(step - 1)};
  c.progress.val_losses = {5.5};
  return c;
}

// The file offset of a contiguous dataset's first byte.
haddr_t data_offset(const fs::path& file, const std::string& dataset) {
  data::QuietHdf5 quiet;
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
  const haddr_t offset = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return offset;
}

void flip_byte(const fs::path& file, haddr_t offset) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(std::streamoff(offset));
  char byte = 0;
  io.read(&byte, 1);
  byte ^= 0x10;
  io.seekp(std::streamoff(offset));
  io.write(&byte, 1);
}

// The message of the CheckpointError `read` throws, or "" when it throws none.
template <typename F>
std::string error_of(F&& read) {
  try {
    read();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = std::make_unique<data::testing::TempDir>("checkpoint"); }
  fs::path dir() const { return dir_->str(); }
  std::unique_ptr<data::testing::TempDir> dir_;
};

TEST_F(CheckpointTest, WhatIsWrittenReadsBackExactly) {
  const CheckpointContents c = sample(3);
  write_checkpoint(dir() / "a.h5", c);
  const CheckpointContents r = read_checkpoint(dir() / "a.h5");
  EXPECT_EQ(r.config_yaml, c.config_yaml);
  EXPECT_EQ(r.layout, c.layout);
  EXPECT_EQ(r.commit, c.commit);
  EXPECT_EQ(r.data, c.data);
  ASSERT_EQ(r.model.size(), 2u);
  EXPECT_EQ(r.model[0].first, "blocks.0.mixer.in_proj.weight");
  EXPECT_EQ(r.model[0].second.shape, (Shape{2, 3}));
  EXPECT_EQ(r.model[0].second.values, c.model[0].second.values);
  EXPECT_EQ(r.model[1].second.values, c.model[1].second.values);
  EXPECT_EQ(r.optim.at("norm_f.weight").exp_avg_sq.values, c.model[1].second.values);
  EXPECT_EQ(r.adamw_step, 3);
  EXPECT_EQ(r.progress.loader, c.progress.loader);
  EXPECT_EQ(r.progress.losses, c.progress.losses);
  EXPECT_EQ(r.progress.val_losses, c.progress.val_losses);
  EXPECT_EQ(r.progress.elapsed_s, 1.5);
  EXPECT_FALSE(fs::exists(dir() / ("a.h5.tmp-" + std::to_string(::getpid()))));
}

TEST_F(CheckpointTest, AFlippedByteInsideADatasetIsNamed) {
  write_checkpoint(dir() / "a.h5", sample(3));
  flip_byte(dir() / "a.h5", data_offset(dir() / "a.h5", "/model/norm_f.weight") + 5);
  const std::string e = error_of([&] { read_checkpoint(dir() / "a.h5"); });
  EXPECT_NE(e.find((dir() / "a.h5").string()), std::string::npos) << e;
  EXPECT_NE(e.find("checksum mismatch in dataset /model/norm_f.weight"), std::string::npos) << e;
}

TEST_F(CheckpointTest, ATruncatedFileIsNamed) {
  write_checkpoint(dir() / "a.h5", sample(3));
  fs::resize_file(dir() / "a.h5", fs::file_size(dir() / "a.h5") / 2);
  const std::string e = error_of([&] { read_checkpoint(dir() / "a.h5"); });
  EXPECT_NE(e.find((dir() / "a.h5").string() + ": "), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  std::ofstream(dir() / "b.h5") << "not hdf5 at all";
  EXPECT_NE(error_of([&] { read_checkpoint(dir() / "b.h5"); }).find("not a readable HDF5 file"), std::string::npos);
}

TEST_F(CheckpointTest, AnotherFormatVersionIsRefused) {
  write_checkpoint(dir() / "a.h5", sample(3));
  {
    data::QuietHdf5 quiet;
    const hid_t f = H5Fopen((dir() / "a.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    H5Adelete(f, "format_version");
    data::write_u64_attribute(f, "format_version", 99, "a.h5");
    H5Fclose(f);
  }
  const std::string e = error_of([&] { read_checkpoint(dir() / "a.h5"); });
  EXPECT_NE(e.find("format version 99 is not supported (this ssmtrain reads version 1)"), std::string::npos) << e;
}

TEST_F(CheckpointTest, LatestMissingOrDanglingIsNamedAndAutoFindsTheNewestThatVerifies) {
  const fs::path run = dir() / "run", folder = checkpoint_folder(run);
  fs::create_directories(folder);
  write_checkpoint(folder / checkpoint_file_name(2), sample(2));
  write_checkpoint(folder / checkpoint_file_name(4), sample(4));
  std::vector<std::string> warnings;
  const auto warn = [&](const std::string& w) { warnings.push_back(w); };

  // No `latest`: the newest file that verifies, with a warning naming `latest`.
  EXPECT_EQ(find_resume_checkpoint(run, warn), folder / checkpoint_file_name(4));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find((folder / "latest").string() + ": missing"), std::string::npos) << warnings[0];
  EXPECT_NE(error_of([&] { resolve_checkpoint_path(run); }).find("latest: missing"), std::string::npos);

  // `latest` naming a file that is gone.
  std::ofstream(folder / "latest") << "step_00000006.h5\n";
  warnings.clear();
  EXPECT_EQ(find_resume_checkpoint(run, warn), folder / checkpoint_file_name(4));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("names step_00000006.h5, which does not exist"), std::string::npos) << warnings[0];
  EXPECT_NE(error_of([&] { resolve_checkpoint_path(run); }).find("names step_00000006.h5, which does not exist"),
            std::string::npos);

  // The newest corrupt: skipped with one line naming it and why.
  std::ofstream(folder / "latest") << checkpoint_file_name(4) << "\n";
  flip_byte(folder / checkpoint_file_name(4),
            data_offset(folder / checkpoint_file_name(4), "/model/blocks.0.mixer.in_proj.weight"));
  warnings.clear();
  EXPECT_EQ(find_resume_checkpoint(run, warn), folder / checkpoint_file_name(2));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("skipping " + (folder / checkpoint_file_name(4)).string() + ": checksum mismatch"),
            std::string::npos)
      << warnings[0];
  const CheckpointReport report = inspect_checkpoint(folder / checkpoint_file_name(4));
  EXPECT_FALSE(report.ok);
  EXPECT_TRUE(inspect_checkpoint(folder / checkpoint_file_name(2)).ok);
  EXPECT_EQ(inspect_checkpoint(folder / checkpoint_file_name(2)).step, 2);
}

TEST_F(CheckpointTest, ACheckpointOfAnotherModelNamesTheParameter) {
  ModelOptions options;
  options.config.family = configs::Family::mamba1;
  options.config.vocab_size = 64;
  options.config.d_model = 16;
  options.config.n_layers = 1;
  LanguageModel model(options, 1);
  auto arrays = model_arrays(model);
  EXPECT_NO_THROW(load_model_arrays(model, arrays, "same.h5"));
  arrays[0].second.shape[0] += 1;
  arrays[0].second.values.resize(size_t(shape_numel(arrays[0].second.shape)));
  const std::string e = error_of([&] { load_model_arrays(model, arrays, "other.h5"); });
  EXPECT_NE(e.find("other.h5: parameter " + arrays[0].first + " has shape"), std::string::npos) << e;
  arrays.pop_back();
  arrays[0] = model_arrays(model)[0];
  EXPECT_NE(error_of([&] { load_model_arrays(model, arrays, "other.h5"); }).find("has no parameter"),
            std::string::npos);
}

TEST_F(CheckpointTest, TheWriterKeepsTheNewestAndReplacesLatest) {
  const fs::path run = dir() / "run", folder = checkpoint_folder(run);
  CheckpointWriter writer(run, 2);
  for (int64_t step : {1, 2, 3, 4}) writer.save(sample(step, float(step)));
  writer.wait();
  EXPECT_FALSE(fs::exists(folder / checkpoint_file_name(1)));
  EXPECT_FALSE(fs::exists(folder / checkpoint_file_name(2)));
  EXPECT_TRUE(fs::exists(folder / checkpoint_file_name(3)));
  EXPECT_EQ(resolve_checkpoint_path(run), folder / checkpoint_file_name(4));
  EXPECT_EQ(writer.last_written(), folder / checkpoint_file_name(4));
  EXPECT_EQ(read_checkpoint(folder / checkpoint_file_name(4)).model[0].second.values[0], 5.0f);
}

// A write that fails (here a directory where the finished file goes) is an error naming the
// path, on the next save or wait, and the previous checkpoint stays the `latest`.
TEST_F(CheckpointTest, AFailedWriteNamesThePathAndKeepsThePrevious) {
  const fs::path run = dir() / "run", folder = checkpoint_folder(run);
  CheckpointWriter writer(run, 1);
  writer.save(sample(2));
  writer.wait();
  fs::create_directories(folder / checkpoint_file_name(4) / "in-the-way");
  writer.save(sample(4));
  const std::string e = error_of([&] { writer.wait(); });
  EXPECT_NE(e.find((folder / checkpoint_file_name(4)).string()), std::string::npos) << e;
  EXPECT_EQ(resolve_checkpoint_path(run), folder / checkpoint_file_name(2));
  EXPECT_TRUE(inspect_checkpoint(folder / checkpoint_file_name(2)).ok);
  for (const auto& entry : fs::directory_iterator(folder))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();

  // A folder that cannot be created: a file in the way of checkpoints/.
  const fs::path other = dir() / "other";
  fs::create_directories(other);
  std::ofstream(checkpoint_folder(other)) << "a file";
  CheckpointWriter blocked(other, 1);
  blocked.save(sample(1));
  EXPECT_NE(error_of([&] { blocked.wait(); }).find(checkpoint_folder(other).string()), std::string::npos);
}

}  // namespace
}  // namespace ssmtrain
