#include "common.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace pmemps {

namespace {
std::once_flag fp_once;
size_t fp_armed = kFailpointCount;  // none
std::atomic<long> fp_left{0};
}  // namespace

void failpoint_hit(size_t index) {
  std::call_once(fp_once, [] {
    const char* v = getenv("PMEMPS_FAILPOINT");
    if (!v || !*v) return;
    std::string s(v);
    long n = 1;
    auto colon = s.find(':');
    if (colon != std::string::npos) {
      n = strtol(s.c_str() + colon + 1, nullptr, 10);
      s.resize(colon);
    }
    for (size_t i = 0; i < kFailpointCount; i++)
      if (s == kFailpoints[i]) fp_armed = i;
    fp_left = n < 1 ? 1 : n;
  });
  if (index != fp_armed) return;
  if (fp_left.fetch_sub(1) == 1) {
    static const char msg[] = "pmemps: failpoint reached, killing process\n";
    (void)!write(2, msg, sizeof msg - 1);
    kill(getpid(), SIGKILL);
    pause();
  }
}

}  // namespace pmemps
