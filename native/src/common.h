// Small shared pieces of the engine: its error type (turned into a JS
// EngineError by the addon) and its codes, key hashing, a writer-preferring
// lock, and (failpoints.h) failpoints for crash tests.
#pragma once
#include <pthread.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "failpoints.h"

namespace pmemps {

// The engine's error codes, the one list of them: the addon prefixes
// messages with the name ("CODE: msg") and exports the names (errorCodes()),
// from which native/errors.ts parses them; test/engine.test.ts checks that
// the TypeScript side and the gRPC mapping (server/status-codes.ts) know
// every one.
#define PMEMPS_ERROR_CODES(X)                  \
  X(InvalidArgument, "INVALID_ARGUMENT")       \
  X(NotFound, "NOT_FOUND")                     \
  X(AlreadyExists, "ALREADY_EXISTS")           \
  X(OutOfSpace, "OUT_OF_SPACE")                \
  X(FailedPrecondition, "FAILED_PRECONDITION") \
  X(Locked, "LOCKED")                          \
  X(Corrupt, "CORRUPT")                        \
  X(Incompatible, "INCOMPATIBLE")              \
  X(Io, "IO")                                  \
  X(TooLarge, "TOO_LARGE")                     \
  X(Internal, "INTERNAL")

#define PMEMPS_CODE_ENUM(id, name) id,
enum class Code { PMEMPS_ERROR_CODES(PMEMPS_CODE_ENUM) };
#undef PMEMPS_CODE_ENUM
#define PMEMPS_CODE_NAME(id, name) name,
inline constexpr const char* kCodeNames[] = {PMEMPS_ERROR_CODES(PMEMPS_CODE_NAME)};
#undef PMEMPS_CODE_NAME
inline constexpr size_t kCodeCount = sizeof kCodeNames / sizeof kCodeNames[0];

class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  Code code() const { return code_; }
  const char* code_name() const { return kCodeNames[static_cast<size_t>(code_)]; }

 private:
  Code code_;
};

inline uint64_t now_us() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

// splitmix64 finalizer: a bijective mix, so sequential and hashed ids spread alike.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// FNV-1a over bytes; used for the checksums of the engine's own metadata.
inline uint64_t fnv1a(const void* p, size_t n, uint64_t h = 0xcbf29ce484222325ULL) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

// A reader-writer lock that prefers writers. Pull and push hold the epoch
// lock shared for a whole batch; with glibc's default (reader-preferring)
// rwlock, overlapping batches could starve a checkpoint boundary forever.
// Satisfies SharedMutex, so std::shared_lock / std::unique_lock work.
class RwLock {
 public:
  RwLock() {
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&l_, &a);
    pthread_rwlockattr_destroy(&a);
  }
  ~RwLock() { pthread_rwlock_destroy(&l_); }
  RwLock(const RwLock&) = delete;
  RwLock& operator=(const RwLock&) = delete;
  void lock() { pthread_rwlock_wrlock(&l_); }
  bool try_lock() { return pthread_rwlock_trywrlock(&l_) == 0; }
  void unlock() { pthread_rwlock_unlock(&l_); }
  void lock_shared() { pthread_rwlock_rdlock(&l_); }
  bool try_lock_shared() { return pthread_rwlock_tryrdlock(&l_) == 0; }
  void unlock_shared() { pthread_rwlock_unlock(&l_); }

 private:
  pthread_rwlock_t l_;
};

}  // namespace pmemps
