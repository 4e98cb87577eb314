#include "common.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace pmemps {

const char* Error::code_name() const {
  switch (code_) {
    case Code::InvalidArgument:
      return "INVALID_ARGUMENT";
    case Code::NotFound:
      return "NOT_FOUND";
    case Code::AlreadyExists:
      return "ALREADY_EXISTS";
    case Code::OutOfSpace:
      return "OUT_OF_SPACE";
    case Code::FailedPrecondition:
      return "FAILED_PRECONDITION";
    case Code::Locked:
      return "LOCKED";
    case Code::Corrupt:
      return "CORRUPT";
    case Code::Incompatible:
      return "INCOMPATIBLE";
    case Code::Io:
      return "IO";
    default:
      return "INTERNAL";
  }
}

namespace {
std::once_flag fp_once;
std::string fp_name;
std::atomic<long> fp_left{0};
}  // namespace

void failpoint(const char* name) {
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
    fp_name = s;
    fp_left = n < 1 ? 1 : n;
  });
  if (fp_name.empty() || fp_name != name) return;
  if (fp_left.fetch_sub(1) == 1) {
    static const char msg[] = "pmemps: failpoint reached, killing process\n";
    (void)!write(2, msg, sizeof msg - 1);
    kill(getpid(), SIGKILL);
    pause();
  }
}

}  // namespace pmemps
