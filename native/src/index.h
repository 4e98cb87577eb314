// Persistent key -> row index of one table: extendible hashing over
// fixed-size open-addressing segments, all inside the pool, so a restart
// finds every row without a scan or a rebuild.
//
// Invariants:
//  * A slot is {key, ref}; ref is the 1-based row number and ref == 0 means
//    empty. An insert stores key first and ref last (same cache line): a
//    crash leaves a slot empty or whole, never pointing with a wrong key.
//  * Slots are never deleted, so a linear probe may stop at the first empty
//    slot. A slot may name a row that holds no live version or that was
//    reused for another key after a crash; readers check the row's own key
//    and its epochs, so such a slot reads as absent.
//  * A segment split and a directory doubling happen inside one libpmemobj
//    transaction: a crash leaves the old segment and directory intact.
//  * Only splits allocate; they happen while a push reserves its new rows,
//    so a full pool fails that push and nothing else.
#pragma once
#include <cstdint>
#include <mutex>
#include <shared_mutex>

#include "common.h"
#include "pool.h"

namespace pmemps {

struct PTable;

class Index {
 public:
  static constexpr uint32_t kSegSlots = 16382;  // a segment is one pool chunk
  static constexpr uint32_t kMaxProbe = 96;     // past this an insert splits the segment

  // tx_mu serializes the pool's transactions (one engine-wide mutex).
  Index(Pool& pool, PTable* desc, TxMutex* tx_mu) : pool_(pool), desc_(desc), tx_mu_(tx_mu) {}
  // Creates an empty index inside the caller's transaction; returns the directory offset.
  static uint64_t create(Pool& pool, Tx& tx);
  // The directory at dir_off, read without an Index (freeing a dropped
  // table's storage): its entry count and its segment offsets.
  static uint64_t dir_entries(const Pool& pool, uint64_t dir_off) { return 1ULL << pool.at<Dir>(dir_off)->global_depth; }
  static const uint64_t* dir_segments(const Pool& pool, uint64_t dir_off) { return pool.at<Dir>(dir_off)->segs; }

  // Caller holds mu() shared. Returns the ref stored for key, or 0.
  uint64_t lookup(uint64_t key) const;
  // Where lookup(key) starts probing: many lookups made in this order walk
  // the index's pages in address order (the replay at open).
  uintptr_t probe_at(uint64_t key) const;
  // Caller holds mu() exclusive. Stores ref for key (overwriting a stale
  // one); adds the slot to the pool's flush ranges. May split (OutOfSpace).
  void upsert(uint64_t key, uint64_t ref);

  RwLock& mu() { return mu_; }

  // Calls f(key, ref) for every occupied slot (offline check only).
  template <typename F>
  void for_each(F f) const {
    const Dir* d = dir();
    const uint64_t n = 1ULL << d->global_depth;
    uint64_t prev = 0;
    for (uint64_t i = 0; i < n; i++) {
      if (d->segs[i] == prev) continue;
      prev = d->segs[i];
      const Segment* s = pool_.at<Segment>(prev);
      for (uint32_t j = 0; j < kSegSlots; j++)
        if (s->slots[j].ref) f(s->slots[j].key, s->slots[j].ref);
    }
  }

 private:
  struct Slot {
    uint64_t key;
    uint64_t ref;
  };
  struct Segment {
    uint32_t local_depth;
    uint32_t pad;
    uint64_t pad2;
    Slot slots[kSegSlots];
  };
  struct Dir {
    uint32_t global_depth;
    uint32_t pad;
    uint64_t segs[1];
  };

  uint64_t hash(uint64_t key) const;
  Dir* dir() const;
  Segment* segment_for(uint64_t h) const;
  void split(uint64_t h);

  Pool& pool_;
  PTable* desc_;
  TxMutex* tx_mu_;
  mutable RwLock mu_;  // writer-preferring: lookups must not starve inserts
};

}  // namespace pmemps
