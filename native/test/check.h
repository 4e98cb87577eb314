// The unit tests' one assertion: CHECK(c) counts a failure and prints the
// first 20 (a broken lookup fails thousands of checks); main returns
// check_result(name), non-zero after any failure.
#pragma once
#include <cstdio>

namespace pmemps_test {
inline int failures = 0;
inline int check_result(const char* name) {
  if (failures) return 1;
  std::printf("%s: ok\n", name);
  return 0;
}
}  // namespace pmemps_test

#define CHECK(c)                                                                                                         \
  do {                                                                                                                   \
    if (!(c) && pmemps_test::failures++ < 20) std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
  } while (0)
