// eval/mqar.h: the generator on hand-checked invariants (keys distinct, queries name earlier
// pairs, targets are the paired values and only at the query positions, padding after the
// queries), the same sequence for the same (seed, split, index); scoring on a hand-made logits
// table; the recipe checks naming their keys; and a tiny CPU run of recipes/mqar/tiny.yaml whose
// loss falls and whose held-out accuracy ends well above chance, the same bits twice.
#include "eval/mqar.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "configs/load.h"
#include "tests/data/data_fixture.h"

namespace ssmtrain::eval {
namespace {

configs::Config tiny(const std::vector<std::string>& extra = {}) {
  return configs::load_config(std::string(SSMTRAIN_SOURCE_DIR) + "/recipes/mqar/tiny.yaml", extra);
}

configs::MqarConfig task(int64_t vocab, int64_t pairs, int64_t queries) {
  configs::MqarConfig t;
  t.vocab_size = vocab;
  t.num_pairs = pairs;
  t.num_queries = queries;
  return t;
}

TEST(MqarInstance, PairsThenQueriesOfEarlierKeysWithTargetsOnlyAtTheQueries) {
  // vocab 9: pad 0, keys 1..4, values 5..8; 3 pairs, 2 queries, 14 tokens (4 of padding).
  const configs::MqarConfig t = task(9, 3, 2);
  for (int64_t index = 0; index < 200; ++index) {
    SCOPED_TRACE(index);
    const MqarInstance m = mqar_instance(t, 14, 7, MqarSplit::train, index);
    ASSERT_EQ(m.inputs.size(), 14u);
    ASSERT_EQ(m.targets.size(), 14u);
    std::map<int64_t, int64_t> value_of;
    for (int i = 0; i < 3; ++i) {
      const int64_t key = m.inputs[size_t(2 * i)], value = m.inputs[size_t(2 * i + 1)];
      EXPECT_GE(key, 1);
      EXPECT_LE(key, 4);
      EXPECT_GE(value, 5);
      EXPECT_LE(value, 8);
      EXPECT_TRUE(value_of.emplace(key, value).second) << "key " << key << " repeats";
    }
    std::set<int64_t> queried;
    for (int q = 0; q < 2; ++q) {
      const size_t pos = size_t(6 + 2 * q);
      const int64_t key = m.inputs[pos];
      ASSERT_TRUE(value_of.count(key)) << "query " << key << " is no earlier key";
      EXPECT_TRUE(queried.insert(key).second) << "key " << key << " queried twice";
      EXPECT_EQ(m.targets[pos], value_of[key]);       // predicted at the key's position
      EXPECT_EQ(m.inputs[pos + 1], value_of[key]);    // then given, teacher-forced
    }
    for (size_t i = 0; i < 14; ++i) {
      const bool query = i == 6 || i == 8;
      if (!query) EXPECT_EQ(m.targets[i], kMqarIgnore) << "position " << i;
      if (i >= 10) EXPECT_EQ(m.inputs[i], 0) << "padding at " << i;
    }
  }
}

TEST(MqarInstance, AFunctionOfSeedSplitAndIndex) {
  const configs::MqarConfig t = task(65, 8, 0);
  EXPECT_EQ(mqar_queries(t), 8);
  const MqarInstance a = mqar_instance(t, 32, 3, MqarSplit::train, 5);
  EXPECT_EQ(a.inputs, mqar_instance(t, 32, 3, MqarSplit::train, 5).inputs);
  EXPECT_NE(a.inputs, mqar_instance(t, 32, 3, MqarSplit::train, 6).inputs);
  EXPECT_NE(a.inputs, mqar_instance(t, 32, 3, MqarSplit::test, 5).inputs);
  EXPECT_NE(a.inputs, mqar_instance(t, 32, 4, MqarSplit::train, 5).inputs);
  // Every key 1..32 appears as a first key over enough sequences: the draw is not stuck.
  std::set<int64_t> first_keys;
  for (int64_t i = 0; i < 400; ++i) first_keys.insert(mqar_instance(t, 32, 3, MqarSplit::train, i).inputs[0]);
  EXPECT_EQ(first_keys.size(), 32u);
}

TEST(MqarCount, ArgmaxOfAnswerRowsOnlyTiesToTheLowestId) {
  // 4 positions x vocab 3. Row 0 is ignored (its argmax would be "right" for any target).
  const float logits[] = {9, 0, 0,     // ignored
                          0, 1, 5,     // target 2: right
                          0, 0, 0,     // ignored
                          3, 3, 1};    // target 1: a tie of 0 and 1 goes to 0, wrong
  int64_t correct = 10, total = 20;    // counts add
  mqar_count(logits, 3, {kMqarIgnore, 2, kMqarIgnore, 1}, &correct, &total);
  EXPECT_EQ(correct, 11);
  EXPECT_EQ(total, 22);
  correct = total = 0;
  mqar_count(logits, 3, {kMqarIgnore, 1, kMqarIgnore, 0}, &correct, &total);  // row 3 tie -> 0: right
  EXPECT_EQ(correct, 1);
  EXPECT_EQ(total, 2);
}

void expect_refused(const configs::Config& c, const std::string& key) {
  try {
    check_mqar(c);
    ADD_FAILURE() << "accepted; expected an error naming " << key;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
  }
}

TEST(CheckMqar, NamesTheKeyThatDoesNotFit) {
  EXPECT_NO_THROW(check_mqar(tiny()));
  expect_refused(tiny({"mqar.num_pairs=17", "training.seq_len=68", "training.global_batch_tokens=2176"}),
                 "mqar.num_pairs");  // 16 keys only
  expect_refused(tiny({"mqar.vocab_size=64"}), "mqar.vocab_size");                       // model has 33
  expect_refused(tiny({"mqar.num_queries=5"}), "mqar.num_queries");                      // 4 pairs
  expect_refused(tiny({"training.seq_len=15", "training.global_batch_tokens=480"}), "training.seq_len");  // 16 needed
}

TEST(RunMqar, TinyAttentionLearnsBeyondChanceAndRepeatsBitForBit) {
  // 60 steps of 32 sequences: the loss on answers falls and the accuracy passes twice chance.
  const configs::Config c = tiny({"training.max_steps=60", "training.eval_every=30", "mqar.test_examples=64",
                                  "logging.every=10", "optim.lr=1e-2"});
  int64_t calls = 0;
  const MqarResult r = run_mqar(c, [&](int64_t, double, double, double) { ++calls; });
  EXPECT_EQ(r.layout.substr(0, 2), "AA");
  EXPECT_EQ(r.steps, 60);
  EXPECT_EQ(r.sequences_per_step, 32);
  EXPECT_EQ(r.eval_steps, (std::vector<double>{30, 60}));
  ASSERT_EQ(r.eval_accuracy.size(), 2u);
  EXPECT_EQ(r.eval_accuracy.back(), r.accuracy);
  EXPECT_EQ(r.answers, 64 * 4);
  EXPECT_DOUBLE_EQ(r.chance, 1.0 / 16);
  EXPECT_EQ(calls, int64_t(r.losses.size() + r.eval_steps.size()));
  ASSERT_GE(r.losses.size(), 2u);
  EXPECT_LT(r.losses.back(), r.losses.front() - 0.5) << "first " << r.losses.front() << " last " << r.losses.back();
  EXPECT_GT(r.accuracy, 2 * r.chance);
  // The same seed gives the same bits (a short run, twice).
  const configs::Config short_run = tiny({"training.max_steps=6", "training.eval_every=3", "mqar.test_examples=32",
                                          "logging.every=1", "schedule.warmup_steps=2"});
  const MqarResult a = run_mqar(short_run), b = run_mqar(short_run);
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_EQ(a.eval_accuracy, b.eval_accuracy);
  EXPECT_EQ(a.losses.size(), 6u);

  data::testing::TempDir dir("mqar");
  write_mqar_files(r, c, "tiny.yaml", dir / "out");
  std::ifstream in(dir / "out/mqar.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["task"], "mqar");
  EXPECT_EQ(j["num_pairs"], 4);
  EXPECT_EQ(j["accuracy"].get<double>(), r.accuracy);
  ASSERT_EQ(j["evaluations"].size(), 2u);
  EXPECT_EQ(j["evaluations"][1]["step"], 60);
  EXPECT_EQ(j["evaluations"][0]["accuracy"].get<double>(), r.eval_accuracy[0]);
  for (const char* svg : {"out/mqar_loss.svg", "out/mqar_accuracy.svg"}) {
    std::ifstream s(dir / svg);
    const std::string text((std::istreambuf_iterator<char>(s)), {});
    EXPECT_NE(text.find("<svg"), std::string::npos) << svg;
    EXPECT_NE(text.find("</svg>"), std::string::npos) << svg;
  }
}

}  // namespace
}  // namespace ssmtrain::eval
