// main() of every test executable. ctest runs one test per process; a test that called
// GTEST_SKIP (a GPU test without a GPU) exits with 77, which ctest reports as skipped
// (SKIP_RETURN_CODE), never as passed.
#include <gtest/gtest.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const int status = RUN_ALL_TESTS();
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  if (status == 0 && unit.skipped_test_count() > 0 && unit.successful_test_count() == 0) return 77;
  return status;
}
