// The loader's GPU delivery (pinned ring, copies on its own stream, ready events) against
// the same loader on the CPU: identical batches, with and without prefetch, across restore.
#include <gtest/gtest.h>

#include <vector>

#include "autograd/stream.h"
#include "data/loader.h"
#include "tests/data/data_fixture.h"
#include "tests/support/compare.h"

namespace ssmtrain::data {
namespace {

using testing::TempDir;

std::vector<std::vector<int64_t>> host_rows(const Batch& batch) {
  if (batch.ready) {
    batch.ready->wait(current_stream(0));
    synchronize(0);
  }
  return {batch.inputs.values<int64_t>(), batch.targets.values<int64_t>(), batch.doc_index.values<int64_t>()};
}

TEST(LoaderGpu, DeliversTheSameBatchesAsTheCpuLoader) {
  SSM_REQUIRE_GPU();
  TempDir dir("loader-gpu");
  const testing::Corpus corpus = testing::make_corpus(dir.str(), 40);
  train_tokenizer(testing::small_tokenizer_options(corpus.directory, dir / "tok.model"));
  PrepareOptions prepare;
  prepare.tokenizer_path = dir / "tok.model";
  prepare.inputs = {corpus.directory};
  prepare.output_dir = dir / "data";
  prepare.threads = 2;
  prepare.progress = false;
  prepare_corpus(prepare);

  for (int prefetch : {0, 4}) {
    SCOPED_TRACE("prefetch " + std::to_string(prefetch));
    LoaderOptions cpu_options;
    cpu_options.data_dir = dir / "data";
    cpu_options.seq_len = 64;
    cpu_options.global_batch = 8;
    cpu_options.seed = 7;
    cpu_options.prefetch = prefetch;
    LoaderOptions gpu_options = cpu_options;
    gpu_options.device = Device::cuda(0);
    TokenLoader cpu(cpu_options), gpu(gpu_options);
    for (int step = 0; step < 12; ++step) {
      const Batch expected = cpu.next();
      const Batch got = gpu.next();
      ASSERT_TRUE(got.inputs.is_cuda());
      ASSERT_TRUE(got.ready != nullptr);
      EXPECT_EQ(host_rows(got), host_rows(expected)) << "step " << step;
      EXPECT_EQ(got.state_after, expected.state_after);
    }
    // Restore both to an earlier state: the GPU ring restarts cleanly.
    const LoaderState back{0, 16};
    cpu.restore(back);
    gpu.restore(back);
    for (int step = 0; step < 5; ++step) EXPECT_EQ(host_rows(gpu.next()), host_rows(cpu.next()));
  }
}

}  // namespace
}  // namespace ssmtrain::data
