// Tests of configs/values.h: YAML scalar rules for recipe values (numbers, booleans, quoted
// strings, auto, ranges), and written values reading back to the same value.
#include "configs/values.h"

#include <gtest/gtest.h>

namespace ssmtrain::configs {
namespace {

template <class T>
bool reads(const std::string& yaml, T& value, const Rule& rule = {}) {
  return ValueCodec<T>::read(YAML::Load(yaml), rule, value);
}

TEST(Values, Integers) {
  int64_t value = 0;
  EXPECT_TRUE(reads("42", value));
  EXPECT_EQ(value, 42);
  EXPECT_TRUE(reads("+7", value));
  EXPECT_EQ(value, 7);
  EXPECT_TRUE(reads("2.5e9", value));  // a whole number written as a float
  EXPECT_EQ(value, 2500000000);
  EXPECT_FALSE(reads("3e-4", value));
  EXPECT_FALSE(reads("1.5", value));
  EXPECT_FALSE(reads("0x10", value));
  EXPECT_FALSE(reads("\"42\"", value));  // quoted: a string
  EXPECT_FALSE(reads("auto", value));
  EXPECT_TRUE(reads("auto", value, Rule{.min = 1, .zero_is_auto = true}));
  EXPECT_EQ(value, 0);
  EXPECT_FALSE(reads("0", value, Rule{.min = 1, .zero_is_auto = true}));
  EXPECT_EQ(ValueCodec<int64_t>::write(0, Rule{.zero_is_auto = true}), "auto");
  EXPECT_EQ(ValueCodec<int64_t>::expected(Rule{.min = 1, .zero_is_auto = true}),
            "an integer >= 1 or auto");
}

TEST(Values, Floats) {
  double value = 0;
  EXPECT_TRUE(reads("3e-4", value));
  EXPECT_EQ(value, 3e-4);
  EXPECT_TRUE(reads("1", value));
  EXPECT_EQ(value, 1.0);
  EXPECT_FALSE(reads("inf", value));
  EXPECT_FALSE(reads(".nan", value));
  EXPECT_FALSE(reads("0", value, Rule{.min = 0, .min_open = true}));
  EXPECT_EQ(ValueCodec<double>::expected(Rule{.min = 0, .max = 1, .max_open = true}),
            "a number in [0, 1)");
  for (const double written : {0.1, 3e-4, 1e-8, 2.5e9, 1.0 / 3.0, 0.95}) {
    double back = 0;
    ASSERT_TRUE(reads(ValueCodec<double>::write(written, {}), back));
    EXPECT_EQ(back, written);
  }
}

TEST(Values, BooleansAndStrings) {
  bool flag = false;
  for (const char* yes : {"true", "True", "yes", "on", "ON"}) {
    EXPECT_TRUE(reads(yes, flag) && flag) << yes;
  }
  for (const char* no : {"false", "no", "off"}) EXPECT_TRUE(reads(no, flag) && !flag) << no;
  EXPECT_FALSE(reads("1", flag));
  EXPECT_FALSE(reads("\"true\"", flag));

  std::string text;
  EXPECT_TRUE(reads("123", text));
  EXPECT_EQ(text, "123");
  EXPECT_TRUE(reads("", text));  // nothing: the empty string
  EXPECT_EQ(text, "");
  EXPECT_FALSE(reads("[a]", text));
  const std::string awkward = "a \"b\" \\ c: # d\n\te";
  EXPECT_TRUE(reads(quote_yaml(awkward), text));
  EXPECT_EQ(text, awkward);
}

TEST(Values, EnumsAndLists) {
  Family family = Family::mamba1;
  EXPECT_TRUE(reads("hybrid", family));
  EXPECT_EQ(family, Family::hybrid);
  EXPECT_FALSE(reads("Hybrid", family));
  EXPECT_EQ(ValueCodec<Backend>::expected({}), "one of auto, nccl, mpi, tcp, single");

  std::vector<int64_t> lengths;
  EXPECT_TRUE(reads("[1, 2, 3]", lengths, Rule{.min = 1}));
  EXPECT_EQ(lengths, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_FALSE(reads("[1, 0]", lengths, Rule{.min = 1}));
  EXPECT_FALSE(reads("1", lengths));
  std::array<double, 2> betas{};
  EXPECT_TRUE(reads("[0.9, 0.95]", betas));
  EXPECT_FALSE(reads("[0.9, 0.95, 0.99]", betas));
  EXPECT_EQ((ValueCodec<std::array<double, 2>>::write(betas, {})), "[0.9, 0.95]");
}

TEST(Values, FlowYamlReadsBackTheSameValue) {
  EXPECT_EQ(to_flow_yaml(YAML::Load("{a.b: 1:7, c: [x, \"y z\"], d: 3e-4}")),
            "{a.b: \"1:7\", c: [x, \"y z\"], d: 3e-4}");
  EXPECT_EQ(to_flow_yaml(YAML::Load("\"1\"")), "\"1\"");  // stays a string
}

}  // namespace
}  // namespace ssmtrain::configs
