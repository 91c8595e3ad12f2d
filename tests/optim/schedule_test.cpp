// Learning-rate schedules at their defining points.
#include <gtest/gtest.h>

#include <stdexcept>

#include "optim/schedule.h"

namespace ssmtrain {
namespace {

TEST(Schedule, WarmupThenCosineToTheFloor) {
  ScheduleOptions o{"cosine", 1.0, 10, 110, 0.1, 0.2};
  EXPECT_DOUBLE_EQ(learning_rate(o, 0), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(o, 9), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, 10), 1.0);
  EXPECT_NEAR(learning_rate(o, 60), 0.55, 1e-12);  // halfway: the mean of lr and the floor
  EXPECT_NEAR(learning_rate(o, 110), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate(o, 500), 0.1, 1e-12);
}

TEST(Schedule, WsdHoldsThenDecaysLinearly) {
  ScheduleOptions o{"wsd", 2.0, 0, 100, 0.0, 0.2};
  EXPECT_DOUBLE_EQ(learning_rate(o, 0), 2.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, 79), 2.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, 80), 2.0);
  EXPECT_NEAR(learning_rate(o, 90), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(o, 100), 0.0, 1e-12);
}

TEST(Schedule, ConstantAndUnknownKind) {
  ScheduleOptions o{"constant", 0.5, 4, 100, 0.1, 0.2};
  EXPECT_DOUBLE_EQ(learning_rate(o, 1), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(o, 50), 0.5);
  o.kind = "linear";
  EXPECT_THROW(learning_rate(o, 50), std::invalid_argument);
}

}  // namespace
}  // namespace ssmtrain
