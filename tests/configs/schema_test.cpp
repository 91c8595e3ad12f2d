// Tests of configs/schema.h: the key table is complete and documented (docs/recipes.md lists
// every key), and an unknown key gets the nearest known one.
#include "configs/schema.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

namespace ssmtrain::configs {
namespace {

TEST(Schema, EveryKeyIsUniqueDocumentedAndAfterItsSection) {
  std::set<std::string> seen;
  for (const KeyInfo& key : schema_keys()) {
    EXPECT_TRUE(seen.insert(key.path).second) << key.path;
    EXPECT_FALSE(key.doc.empty()) << key.path;
    EXPECT_EQ(find_schema_key(key.path), &key);
    const size_t dot = key.path.rfind('.');
    if (dot != std::string::npos) {
      const std::string section = key.path.substr(0, dot);
      EXPECT_TRUE(seen.contains(section)) << key.path;
      ASSERT_NE(find_schema_key(section), nullptr) << key.path;
      EXPECT_TRUE(find_schema_key(section)->is_section) << key.path;
    }
    if (!key.is_section) EXPECT_FALSE(key.expected.empty()) << key.path;
  }
  EXPECT_EQ(find_schema_key("model.mamba2.head_dim")->default_value, "64");
  EXPECT_EQ(find_schema_key("model.mamba1.dt_rank")->default_value, "auto");
  EXPECT_EQ(find_schema_key("model.family")->expected, "one of mamba1, mamba2, hybrid");
  EXPECT_EQ(find_schema_key("model.nope"), nullptr);
}

TEST(Schema, DocsListEveryKey) {
  std::ifstream file(SSMTRAIN_SOURCE_DIR "/docs/recipes.md");
  ASSERT_TRUE(file) << "docs/recipes.md";
  std::stringstream docs;
  docs << file.rdbuf();
  for (const KeyInfo& key : schema_keys()) {
    EXPECT_NE(docs.str().find("`" + key.path + "`"), std::string::npos)
        << key.path << " is missing from docs/recipes.md";
  }
}

TEST(Schema, UnknownKeyMessages) {
  EXPECT_EQ(unknown_key_message("model.d_modle"), "unknown key; did you mean d_model?");
  EXPECT_EQ(unknown_key_message("trainng"), "unknown key; did you mean training?");
  EXPECT_EQ(unknown_key_message("model.n_head"),
            "unknown key; did you mean model.attention.n_heads?");
  EXPECT_EQ(unknown_key_message("training.grad_clip"),
            "unknown key; did you mean optim.grad_clip?");
  EXPECT_EQ(unknown_key_message("training.activation_checkpoint"),
            "unknown key; did you mean activation_checkpointing?");
  EXPECT_EQ(unknown_key_message("zzz"),
            "unknown key; the sections are run, model, data, optim, schedule, training, "
            "distributed, checkpoint, eval, mqar, logging, sweep");
  EXPECT_EQ(unknown_key_message("eval.niah.colour"),
            "unknown key; eval.niah takes lengths, depths");
}

}  // namespace
}  // namespace ssmtrain::configs
