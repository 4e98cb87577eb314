// What the engine_*.cc files share and nothing outside the engine needs:
// the error shorthand, id formatting, the epoch ceiling, and the dead-epoch
// test that the data path inlines.
//
// Invariants:
//  * Only engine_*.cc include this header; addon.cc and the tests see
//    engine.h alone.
//  * is_dead is read on the data path (pick, write_back) under epoch_mu_
//    shared or with the stripe lock while no decision runs; dead_ changes
//    only under epoch_mu_ exclusive (or while a prepare is not running, for
//    the flush), so a reader never sees it half-updated.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "common.h"
#include "engine.h"

namespace pmemps {

[[noreturn]] inline void fail(Code c, const std::string& m) { throw Error(c, m); }

inline std::string id_str(uint64_t id) { return std::to_string(id); }

constexpr uint64_t kMaxEpoch = 0xfffffff0ULL;  // slot headers hold 32-bit epochs

inline bool Engine::is_dead(uint64_t e) const {
  // dead_ is sorted and disjoint: binary search the last range with lo <= e.
  auto it = std::upper_bound(dead_.begin(), dead_.end(), e, [](uint64_t v, const DeadRange& r) { return v < r.lo; });
  if (it == dead_.begin()) return false;
  --it;
  return e <= it->hi;
}

}  // namespace pmemps
