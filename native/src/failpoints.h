// The crash tests' failpoints: the one list of their names.
//
// Invariants:
//  * Every failpoint("name") call site names an entry of PMEMPS_FAILPOINTS:
//    any other name does not compile (failpoint_index runs as a template
//    argument, where reaching its throw is not a constant expression).
//  * The addon exports the list (failpoints() in native/engine.ts), and
//    test/crash.test.ts fails when one of them is neither drawn by its
//    scenarios nor listed as covered by another test that uses it.
//  * A name may have several call sites; "name:n" counts their hits together.
//  * An unarmed failpoint costs a call and one compare of integers.
#pragma once
#include <cstddef>
#include <type_traits>

namespace pmemps {

#define PMEMPS_FAILPOINTS(X)   \
  X("create_table.mid_tx")     \
  X("drop_table.mid_tx")       \
  X("push.after_apply")        \
  X("evict.after_write")       \
  X("index.mid_split")         \
  X("slab.after_alloc")        \
  X("prepare.after_boundary")  \
  X("prepare.mid_flush")       \
  X("prepare.before_publish")  \
  X("prepare.after_publish")   \
  X("commit.before_publish")   \
  X("commit.after_publish")    \
  X("abort.before_publish")    \
  X("rollback.before_publish") \
  X("rollback.after_publish")  \
  X("settle.step")             \
  X("reclaim.step")            \
  X("close.mid_writeback")     \
  X("close.before_clean_mark") \
  X("writeback.after_append")  \
  X("log.after_grow")          \
  X("compact.after_copy")      \
  X("compact.before_free")     \
  X("mark.before_advance")     \
  X("replay.mid")

#define PMEMPS_FAILPOINT_NAME(name) name,
inline constexpr const char* kFailpoints[] = {PMEMPS_FAILPOINTS(PMEMPS_FAILPOINT_NAME)};
#undef PMEMPS_FAILPOINT_NAME
inline constexpr size_t kFailpointCount = sizeof kFailpoints / sizeof kFailpoints[0];

constexpr bool same_name(const char* a, const char* b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}

constexpr size_t failpoint_index(const char* name) {
  for (size_t i = 0; i < kFailpointCount; i++)
    if (same_name(kFailpoints[i], name)) return i;
  throw "unknown failpoint: add its name to PMEMPS_FAILPOINTS";
}

// PMEMPS_FAILPOINT="name[:n]" makes the process SIGKILL itself on the n-th
// time execution reaches failpoint(name). Crash tests use it to stop the
// engine at the exact instants where crash safety is argued.
void failpoint_hit(size_t index);

// PMEMPS_TEST_HOOKS="where:ms|fail[,...]": the first thread that reaches
// test_hook("where") sleeps ms milliseconds there, or throws an I/O error
// (once per process each). Tests hold one thread at an instant where a race
// was argued away and show that no other thread can do what would break it
// meanwhile, or fail an operation at a point no real input reaches on
// demand. Unset: a scan of an empty list.
void test_hook(const char* where);

}  // namespace pmemps

// A macro, spelled like the function it replaced, so that a name is checked
// where it is written and call sites read as before.
#define failpoint(name) ::pmemps::failpoint_hit(std::integral_constant<size_t, ::pmemps::failpoint_index(name)>::value)
