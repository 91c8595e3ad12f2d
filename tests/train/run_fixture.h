// Shared by the trainer, resume and checkpoint-CLI tests: a small prepared corpus (generated
// documents, a 512-piece tokenizer, a 10% validation split), made once per test process, and
// the shipped tiny recipes shrunk so that a step takes milliseconds on the CPU.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "configs/load.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain::testing {

// The directory of the prepared corpus (manifest.json, shards, tokenizer.model), built on
// first use from `documents` generated documents and removed at exit.
inline const std::string& prepared_corpus(int documents = 60) {
  static data::testing::TempDir* dir = nullptr;
  static std::string data_dir;
  if (dir == nullptr) {
    dir = new data::testing::TempDir("run-fixture");
    static struct Cleanup {
      ~Cleanup() { delete dir; }
    } cleanup;
    const data::testing::Corpus corpus = data::testing::make_corpus(dir->str(), documents);
    data::train_tokenizer(data::testing::small_tokenizer_options(corpus.directory, *dir / "tok.model"));
    data::PrepareOptions prepare;
    prepare.tokenizer_path = *dir / "tok.model";
    prepare.inputs = {corpus.directory};
    prepare.output_dir = *dir / "data";
    prepare.val_fraction = 0.1;
    prepare.threads = 2;
    prepare.progress = false;
    data::prepare_corpus(prepare);
    data_dir = *dir / "data";
  }
  return data_dir;
}

// recipes/tiny/<recipe>.yaml on the prepared corpus, shrunk (width 32, 2 layers where the
// recipe allows, vocab 512, sequences of 32, 4 per micro-batch, 2 micro-batches a step),
// then `extra` overrides.
inline std::vector<std::string> tiny_overrides(const std::string& recipe, const std::filesystem::path& runs,
                                               const std::string& name, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> o = {"data.train=" + prepared_corpus(), "run.output_dir=" + runs.string(),
                                "run.name=" + name, "model.d_model=32", "model.vocab_size=512",
                                "training.seq_len=32", "training.global_batch_tokens=256",
                                "training.micro_batch=4", "training.eval_every=5", "schedule.warmup_steps=3",
                                "eval.perplexity_tokens=512", "logging.every=5", "training.precision=fp32"};
  if (recipe == "mamba1" || recipe == "mamba2") o.push_back("model.n_layers=2");
  if (recipe == "mamba2") {
    o.push_back("model.mamba2.head_dim=16");
    o.push_back("model.mamba2.chunk_size=16");
    o.push_back("model.mamba2.d_state=16");
  }
  if (recipe == "jamba") {
    for (const char* key : {"model.attention.n_heads=4", "model.mlp.d_ff=64", "model.moe.n_experts=4",
                            "model.moe.d_ff_expert=32"})
      o.push_back(key);
  }
  o.insert(o.end(), extra.begin(), extra.end());
  return o;
}

inline configs::Config tiny_config(const std::string& recipe, const std::filesystem::path& runs,
                                   const std::string& name, const std::vector<std::string>& extra = {}) {
  return configs::load_config(std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/tiny/" + recipe + ".yaml",
                              tiny_overrides(recipe, runs, name, extra));
}

}  // namespace ssmtrain::testing
