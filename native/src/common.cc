#include "common.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <string>
#include <thread>

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

void test_hook(const char* where) {
  struct Hook {
    std::string where;
    long ms = -1;  // -1: fail
    std::atomic<bool> fired{false};
  };
  // A list: its elements (each holding an atomic) never move.
  static std::list<Hook>* const hooks = [] {
    auto* l = new std::list<Hook>();
    const char* env = getenv("PMEMPS_TEST_HOOKS");
    const std::string s = env ? env : "";
    for (size_t at = 0; at < s.size();) {
      size_t end = s.find(',', at);
      if (end == std::string::npos) end = s.size();
      const std::string item = s.substr(at, end - at);
      const size_t colon = item.find(':');
      if (colon != std::string::npos) {
        Hook& h = l->emplace_back();
        h.where = item.substr(0, colon);
        const std::string what = item.substr(colon + 1);
        h.ms = what == "fail" ? -1 : strtol(what.c_str(), nullptr, 10);
      }
      at = end + 1;
    }
    return l;
  }();
  for (Hook& h : *hooks) {
    if (h.where != where || h.fired.exchange(true)) continue;
    if (h.ms < 0) throw Error(Code::Io, std::string("test failure injected at ") + where + " (PMEMPS_TEST_HOOKS)");
    std::this_thread::sleep_for(std::chrono::milliseconds(h.ms));
  }
}

}  // namespace pmemps
