// What the engine_*.cc files share and nothing outside the engine needs:
// the error shorthand, id formatting, the epoch ceiling, the dead-epoch
// test that the data path inlines, and the durable side's interface.
//
// Invariants:
//  * Only engine_*.cc include this header; addon.cc and the tests see
//    engine.h alone.
//  * is_dead is read on the data path (pick, write_back) under epoch_mu_
//    shared or with the stripe lock while no decision runs; dead_ changes
//    only under epoch_mu_ exclusive (or while a prepare is not running, for
//    the flush), so a reader never sees it half-updated.
//  * Engine::Store is called after the Engine call's own checks (closed,
//    ids, names), so the pool and the memory-only reference accept and
//    refuse the same calls; drop_table alone is refused by the reference.
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

// Each method is called from the Engine call of the same name, once, after
// that call's checks; the comment names the locks held. PoolStore forwards
// to the Engine's *_pool methods; MemStore keeps the reference's checkpoint
// copies, ballot and identity in DRAM.
struct Engine::Store {
  virtual ~Store() = default;
  // From the constructor, after the stripes' budgets are set.
  virtual void open() = 0;
  // tx_mu_: whether a slot no table holds may take a new table (the pool's
  // may still be freeing a dropped one's storage).
  virtual bool slot_reusable(uint32_t idx) const = 0;
  // epoch_mu_ exclusive; before the table is reachable by name.
  virtual void table_created(Table& t) = 0;
  // epoch_mu_ exclusive; before t.opt changes, so a failure changes nothing.
  virtual void hyper_changed(Table& t, const OptimizerSpec& opt) = 0;
  // No lock and no check yet: the memory side refuses every drop first.
  virtual void drop_table(const std::string& name) = 0;
  // ckpt_mu_; the id is new and nothing is prepared.
  virtual void prepare_begin(uint64_t id, const std::string& dense, const std::string& meta, uint64_t ballot) = 0;
  // ckpt_mu_ and el (epoch_mu_ exclusive), which the side may release early
  // for work that needs no epoch lock (reclaim). commit and abort: p_id_ is
  // the checkpoint named; rollback: nothing is prepared.
  virtual void commit(std::unique_lock<RwLock>& el) = 0;
  virtual void abort(std::unique_lock<RwLock>& el) = 0;
  virtual void rollback(std::unique_lock<RwLock>& el) = 0;
  // ckpt_mu_, epoch_mu_ exclusive; an id above last_id_ never prepared here.
  virtual void abort_unprepared(uint64_t id) = 0;
  // epoch_mu_ shared.
  virtual bool committed(uint64_t* id, std::string* dense, std::string* meta) = 0;
  // ckpt_mu_ and epoch_mu_ exclusive, not closed; sets closed_.
  virtual void close(const std::string& record) = 0;
  // epoch_mu_ shared and tx_mu_, not closed.
  virtual uint64_t reserve_close_record(uint64_t bytes) = 0;
  // epoch_mu_ exclusive, not closed.
  virtual void check(CheckReport& r) = 0;
  // epoch_mu_ shared: the budget and pool fields, left 0 without a pool.
  virtual void stats(Stats& st) = 0;
  // epoch_mu_ shared and tx_mu_, not closed.
  virtual uint64_t raise_ballot(uint64_t b) = 0;
  virtual uint64_t ballot() const = 0;
  virtual Identity identity() const = 0;
  // As raise_ballot; id is valid and agrees with identity().
  virtual void set_identity(const Identity& id) = 0;
};

// Gives a call's unused log room back when the call ends, however it ends
// (log null: not a logged pool). The log must outlive it.
struct LogHold {
  VLog* log;
  VLog::Reservation& res;
  ~LogHold() {
    if (log && res.bytes) log->release(res);
  }
};

// Hands a reservation to the dirty rows' room when a push, a flush or a
// close ends, however it ends: the rows still dirty keep their room, the
// rest is given back (not a logged pool: nothing).
struct DirtyRoomBack {
  Engine& en;
  VLog::Reservation& res;
  ~DirtyRoomBack() { en.give_back_dirty_room(res); }
};

constexpr uint64_t kMaxEpoch = 0xfffffff0ULL;  // slot headers hold 32-bit epochs

inline bool Engine::is_dead(uint64_t e) const {
  // dead_ is sorted and disjoint: binary search the last range with lo <= e.
  auto it = std::upper_bound(dead_.begin(), dead_.end(), e, [](uint64_t v, const DeadRange& r) { return v < r.lo; });
  if (it == dead_.begin()) return false;
  --it;
  return e <= it->hi;
}

}  // namespace pmemps
