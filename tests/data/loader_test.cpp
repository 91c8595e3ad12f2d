// Tests of data/loader.h: resume from a saved state, identical global batches on 1, 2 and 4
// ranks (also across a world-size change), per-epoch orders that cover every window once,
// document indices, and clear errors for damaged, truncated, mismatched or missing shards.
#include "data/loader.h"

#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>
#include <set>

#include "data/errors.h"
#include "data/prepare.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain::data {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

std::vector<int64_t> values_of(const Tensor& t) { return t.values<int64_t>(); }

// A batch as plain vectors, to compare and concatenate.
struct Rows {
  std::vector<int64_t> inputs, targets, doc_index;
};
Rows rows_of(const Batch& batch) {
  return {values_of(batch.inputs), values_of(batch.targets), values_of(batch.doc_index)};
}
void append(Rows* all, const Rows& part) {
  all->inputs.insert(all->inputs.end(), part.inputs.begin(), part.inputs.end());
  all->targets.insert(all->targets.end(), part.targets.begin(), part.targets.end());
  all->doc_index.insert(all->doc_index.end(), part.doc_index.begin(), part.doc_index.end());
}
bool operator==(const Rows& a, const Rows& b) {
  return a.inputs == b.inputs && a.targets == b.targets && a.doc_index == b.doc_index;
}

class LoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir("loader");
    const testing::Corpus corpus = testing::make_corpus(dir_->str(), 80);
    train_tokenizer(testing::small_tokenizer_options(corpus.directory, *dir_ / "tok.model"));
    PrepareOptions prepare;
    prepare.tokenizer_path = *dir_ / "tok.model";
    prepare.inputs = {corpus.directory};
    prepare.output_dir = data_dir();
    prepare.val_fraction = 0.1;
    prepare.threads = 2;
    prepare.shard_tokens = 4000;  // windows cross shard boundaries
    prepare.progress = false;
    prepare_corpus(prepare);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string data_dir() { return *dir_ / "data"; }
  static LoaderOptions options(int rank = 0, int world_size = 1) {
    LoaderOptions options;
    options.data_dir = data_dir();
    options.seq_len = 64;
    options.global_batch = 8;
    options.rank = rank;
    options.world_size = world_size;
    options.seed = 1234;
    return options;
  }
  // A copy of the prepared data that a test may damage.
  static std::string copy_of_data(const std::string& name) {
    const std::string copy = *dir_ / name;
    fs::copy(data_dir(), copy, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    return copy;
  }
  static TempDir* dir_;
};
TempDir* LoaderTest::dir_ = nullptr;

TEST_F(LoaderTest, BatchShapesTargetsAndDocumentIndex) {
  TokenLoader loader(options());
  const Manifest& manifest = loader.manifest();
  EXPECT_GT(manifest.shards.size(), 3u);
  EXPECT_EQ(loader.windows_per_epoch(), (manifest.tokens("train") - 1) / 64);
  bool saw_boundary = false;
  for (int step = 0; step < 20; ++step) {
    const Batch batch = loader.next();
    ASSERT_EQ(batch.inputs.shape(), (Shape{8, 64}));
    EXPECT_EQ(batch.inputs.dtype(), DType::i64);
    EXPECT_EQ(batch.doc_index.dtype(), DType::i32);
    EXPECT_EQ(batch.ready, nullptr);
    const Rows rows = rows_of(batch);
    for (int64_t r = 0; r < 8; ++r) {
      const int64_t* in = rows.inputs.data() + r * 64;
      const int64_t* target = rows.targets.data() + r * 64;
      const int64_t* doc = rows.doc_index.data() + r * 64;
      EXPECT_EQ(doc[0], 0);
      for (int64_t t = 1; t < 64; ++t) {
        EXPECT_EQ(target[t - 1], in[t]);  // targets are the inputs shifted by one
        // A new document starts exactly after an EOS.
        EXPECT_EQ(doc[t] - doc[t - 1], in[t - 1] == manifest.eos_id ? 1 : 0);
        saw_boundary |= doc[t] != doc[t - 1];
      }
    }
  }
  EXPECT_TRUE(saw_boundary);
}

TEST_F(LoaderTest, RowsAreTheWindowsOfTheEpochOrder) {
  LoaderOptions in_order = options();
  in_order.shuffle = false;
  in_order.global_batch = 1;
  TokenLoader ordered(in_order);
  const Rows first = rows_of(ordered.next()), second = rows_of(ordered.next());
  EXPECT_EQ(first.targets.back(), second.inputs.front());  // window 1 continues window 0

  TokenLoader shuffled(options());
  const Rows batch = rows_of(shuffled.next());
  for (uint64_t row = 0; row < 8; ++row) {
    ordered.restore(LoaderState{0, shuffled.window_at(0, row)});  // unshuffled: position = window
    const Rows window = rows_of(ordered.next());
    EXPECT_TRUE(std::equal(window.inputs.begin(), window.inputs.end(), batch.inputs.begin() + row * 64));
  }
}

TEST_F(LoaderTest, RestoredLoaderGivesTheSameBatchesAsOneThatNeverStopped) {
  TokenLoader uninterrupted(options());
  std::vector<Rows> expected;
  for (int step = 0; step < 30; ++step) expected.push_back(rows_of(uninterrupted.next()));

  LoaderState saved;
  {
    TokenLoader first(options());
    for (int step = 0; step < 11; ++step) first.next();
    saved = first.state();
  }
  LoaderOptions no_prefetch = options();
  no_prefetch.prefetch = 0;
  TokenLoader resumed(no_prefetch);
  resumed.restore(saved);
  for (int step = 11; step < 30; ++step) EXPECT_TRUE(rows_of(resumed.next()) == expected[step]) << step;

  // restore() on a loader with batches prefetched drops them and rewinds.
  TokenLoader rewound(options());
  for (int step = 0; step < 5; ++step) rewound.next();
  rewound.restore(LoaderState{});
  for (int step = 0; step < 3; ++step) EXPECT_TRUE(rows_of(rewound.next()) == expected[step]);
}

TEST_F(LoaderTest, GlobalBatchesAreIdenticalOnOneTwoAndFourRanks) {
  TokenLoader single(options(0, 1));
  std::vector<Rows> expected;
  for (int step = 0; step < 12; ++step) expected.push_back(rows_of(single.next()));
  for (int world : {2, 4}) {
    std::vector<std::unique_ptr<TokenLoader>> ranks;
    for (int r = 0; r < world; ++r) ranks.push_back(std::make_unique<TokenLoader>(options(r, world)));
    for (int step = 0; step < 12; ++step) {
      Rows global;
      for (auto& rank : ranks) {
        const Batch batch = rank->next();
        EXPECT_EQ(batch.inputs.size(0), 8 / world);
        append(&global, rows_of(batch));
      }
      EXPECT_TRUE(global == expected[step]) << "world " << world << " step " << step;
    }
  }
}

TEST_F(LoaderTest, ResumingOnAnotherWorldSizeKeepsTheGlobalBatches) {
  TokenLoader single(options(0, 1));
  std::vector<Rows> expected;
  for (int step = 0; step < 10; ++step) expected.push_back(rows_of(single.next()));
  TokenLoader before(options(0, 1));
  for (int step = 0; step < 6; ++step) before.next();
  TokenLoader rank0(options(0, 2)), rank1(options(1, 2));
  rank0.restore(before.state());
  rank1.restore(before.state());
  for (int step = 6; step < 10; ++step) {
    Rows global = rows_of(rank0.next());
    append(&global, rows_of(rank1.next()));
    EXPECT_TRUE(global == expected[step]) << step;
  }
}

TEST_F(LoaderTest, EpochsDifferInOrderButCoverEveryWindowOnce) {
  TokenLoader loader(options());
  const uint64_t windows = loader.windows_per_epoch();
  ASSERT_GT(windows, 50u);
  std::vector<uint64_t> orders[3];
  for (uint64_t epoch = 0; epoch < 3; ++epoch) {
    for (uint64_t i = 0; i < windows; ++i) orders[epoch].push_back(loader.window_at(epoch, i));
    std::set<uint64_t> seen(orders[epoch].begin(), orders[epoch].end());
    EXPECT_EQ(seen.size(), windows);
    EXPECT_EQ(*seen.rbegin(), windows - 1);
  }
  EXPECT_NE(orders[0], orders[1]);
  EXPECT_NE(orders[1], orders[2]);
  // Another seed, another order; the same seed, the same order.
  LoaderOptions other = options();
  other.seed = 99;
  TokenLoader reseeded(other), same(options());
  EXPECT_NE(reseeded.window_at(0, 0) + reseeded.window_at(0, 1) * windows,
            loader.window_at(0, 0) + loader.window_at(0, 1) * windows);
  for (uint64_t i = 0; i < windows; ++i) EXPECT_EQ(same.window_at(0, i), orders[0][i]);

  // Through batches: one epoch and a bit, batches run straight across the epoch boundary.
  std::multiset<std::vector<int64_t>> rows_in_epoch;
  uint64_t taken = 0;
  while (taken < windows) {
    const Batch batch = loader.next();
    const std::vector<int64_t> inputs = values_of(batch.inputs);
    for (int64_t r = 0; r < 8 && taken < windows; ++r, ++taken)
      rows_in_epoch.insert(std::vector<int64_t>(inputs.begin() + r * 64, inputs.begin() + (r + 1) * 64));
  }
  EXPECT_EQ(loader.state().epoch, 1u);
  EXPECT_EQ(loader.state().cursor, (8 - windows % 8) % 8);
  TokenLoader ordered([&] {
    LoaderOptions o = options();
    o.shuffle = false;
    o.global_batch = 1;
    return o;
  }());
  std::multiset<std::vector<int64_t>> all_windows;
  for (uint64_t i = 0; i < windows; ++i) all_windows.insert(values_of(ordered.next().inputs));
  EXPECT_TRUE(rows_in_epoch == all_windows);
}

TEST_F(LoaderTest, Int32TokensAndValSplit) {
  LoaderOptions opts = options();
  opts.token_dtype = DType::i32;
  opts.split = "val";
  opts.seq_len = 16;
  TokenLoader loader(opts);
  const Batch batch = loader.next();
  EXPECT_EQ(batch.inputs.dtype(), DType::i32);
  EXPECT_EQ(loader.split_tokens(), loader.manifest().tokens("val"));
}

// Runs `make_loader` and expects a DataError whose message holds each of `needles`.
void expect_data_error(const std::function<void()>& make_loader, const std::vector<std::string>& needles) {
  try {
    make_loader();
    FAIL() << "expected a DataError";
  } catch (const DataError& error) {
    for (const std::string& needle : needles)
      EXPECT_NE(std::string(error.what()).find(needle), std::string::npos)
          << "message: " << error.what() << "\nmissing: " << needle;
  }
}

TEST_F(LoaderTest, WrongFormatNameStopsWithTheFileName) {
  const std::string data = copy_of_data("wrong-format");
  const std::string shard = data + "/" + read_manifest(data).shards[1].file;
  const hid_t file = H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  const hid_t attribute = H5Aopen(file, "format", H5P_DEFAULT);
  const hid_t type = H5Aget_type(attribute);
  const std::string other = "some-other-format-xx";  // same length: rewritten in place
  ASSERT_EQ(H5Tget_size(type), other.size());
  H5Awrite(attribute, type, other.data());
  H5Tclose(type);
  H5Aclose(attribute);
  H5Fclose(file);
  LoaderOptions opts = options();
  opts.data_dir = data;
  expect_data_error([&] { TokenLoader loader(opts); }, {shard, "wrong format name", other});
}

TEST_F(LoaderTest, TruncatedShardStopsWithTheFileName) {
  const std::string data = copy_of_data("truncated");
  const std::string shard = data + "/" + read_manifest(data).shards[0].file;
  fs::resize_file(shard, fs::file_size(shard) / 2);
  LoaderOptions opts = options();
  opts.data_dir = data;
  expect_data_error([&] { TokenLoader loader(opts); }, {shard, "truncated"});
}

TEST_F(LoaderTest, ChecksumMismatchStopsWithTheFileName) {
  const std::string data = copy_of_data("checksum");
  const std::string shard = data + "/" + read_manifest(data).shards[2].file;
  // Change one token in place through HDF5: the file stays well-formed, only the data differs.
  const hid_t file = H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  const hid_t tokens = H5Dopen2(file, "tokens", H5P_DEFAULT);
  const hid_t space = H5Dget_space(tokens);
  const hsize_t at = 10, one = 1;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &at, nullptr, &one, nullptr);
  const hid_t memory = H5Screate_simple(1, &one, nullptr);
  uint32_t value = 0;
  H5Dread(tokens, H5T_NATIVE_UINT32, memory, space, H5P_DEFAULT, &value);
  value = value == 7 ? 8 : 7;
  H5Dwrite(tokens, H5T_NATIVE_UINT32, memory, space, H5P_DEFAULT, &value);
  H5Sclose(memory);
  H5Sclose(space);
  H5Dclose(tokens);
  H5Fclose(file);
  LoaderOptions opts = options();
  opts.data_dir = data;
  expect_data_error([&] { TokenLoader loader(opts); }, {shard, "checksum mismatch"});
}

TEST_F(LoaderTest, MissingShardAndMissingManifestStopWithTheFileName) {
  const std::string data = copy_of_data("missing");
  const std::string shard = data + "/" + read_manifest(data).shards.back().file;
  fs::remove(shard);
  LoaderOptions opts = options();
  opts.data_dir = data;
  opts.split = read_manifest(data).shards.back().split;
  expect_data_error([&] { TokenLoader loader(opts); }, {shard, "missing shard"});
  opts.data_dir = *dir_ / "nowhere";
  expect_data_error([&] { TokenLoader loader(opts); }, {"nowhere/manifest.json", "no manifest"});
}

TEST_F(LoaderTest, InconsistentOptionsAreRejected) {
  LoaderOptions opts = options(0, 3);  // 8 sequences do not divide among 3 ranks
  EXPECT_THROW(TokenLoader loader(opts), std::invalid_argument);
  opts = options();
  opts.seq_len = 1 << 20;  // longer than the split
  expect_data_error([&] { TokenLoader loader(opts); }, {"fewer than seq_len + 1"});
  TokenLoader loader(options());
  EXPECT_THROW(loader.restore(LoaderState{0, loader.windows_per_epoch()}), std::invalid_argument);
}

}  // namespace
}  // namespace ssmtrain::data
