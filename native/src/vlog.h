// The version log: the write side of the log-structured write-back for
// pools on non-DAX media (docs/design.md, "Writing back on a disk"). Row
// versions are appended as records to segments (whole pool chunks), so a
// checkpoint's write-back is one sequential write per segment instead of a
// random page per row. A record is named by its pool offset, which a
// row's slot holds; the records after the mark are the slots' journal
// (engine_mark.cc).
//
// Invariants:
//  * PVLog changes only inside transactions, with its checksum. Segments
//    are listed in append order; `tail` (segment index, byte offset) is the
//    published end of the log: every record a durable slot may name lies
//    before it.
//  * A record is {header, values}; its crc32c covers both (the crc field
//    as 0). Nothing in a record is ever overwritten while a slot may name
//    it (compaction frees a segment only after repointing its live
//    slots); bytes past the published tail are garbage that the next
//    appends overwrite, so a crash after an append needs no repair: a
//    restart resumes appending at the published tail.
//  * sync() makes every record appended so far durable; the caller syncs
//    before the transaction that publishes the tail (publish_tail), and a
//    checkpoint's publish names a tail past every record it needs.
//  * Appends, reservations, syncs and the tail's publish are safe from any
//    thread (mu_); read() runs concurrently with appends to other records.
//    An append takes its place under mu_ and copies outside it; sync()
//    waits for the copies placed before it, and the tail published is where
//    the last sync() to return stopped (not one still waiting or
//    msync'ing), so the published log holds whole, durable records.
//  * A freed segment leaves a hole (offset 0) in the list until the list
//    is packed, which happens when it is full; indices before the current
//    segment only ever shift down with the tail's, in one transaction.
//    Only segments before the published tail's are freed (free_segment), so
//    a restart, which resumes at the tail, never meets a hole.
//  * Room: the bytes left in the current and the spare segments, each
//    counted short by kSlack (what a segment's end can waste, since a record
//    never straddles two). reserved_ <= room() always: a holder of a
//    reservation appends up to its bytes without allocating, so a caller
//    that reserved first cannot fail halfway for lack of space.
//  * A segment's records run contiguously from its start; when an append
//    moves on to the next segment, a header of zeroes (n = 0) is written
//    where the next record would have gone, synced with the records, so a
//    walk of the log (the replay at open) stops there and never reads the
//    bytes of an earlier use of the chunk as records.
//  * An append's `then` runs after the record is copied and before a sync
//    can count the record as written: every record before a published
//    tail has had its `then` done (the engine writes the record's slot
//    there, so the slots' mark never passes a slot not yet written). On
//    PMEM the appender drains before the record counts, since a sync
//    drains only its own thread's stores.
//  * A new segment is neither flushed nor written in the transaction that
//    allocates it (nothing past the tail is read). On PMEM the thread that
//    grew the log flushes it once it let go of every lock, which faults its
//    pages in before the appends, and holds up no other thread.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "common.h"
#include "pool.h"

namespace pmemps {

constexpr uint64_t kVLogMagic = 0x31474f4c534d50ULL;  // "PMSLOG1"

struct PVLog {
  uint64_t magic;
  uint64_t seg_bytes;  // usable bytes of every segment
  uint64_t nsegs, cap;
  uint64_t segs_off;  // uint64_t[cap]: the segments' pool offsets, in append order
  uint64_t tail_seg, tail_off;
  uint64_t checksum;
};

struct VRecordHdr {
  uint64_t key;
  uint32_t table, epoch, step, n;  // n: float values after the header
  uint32_t crc;
  // The slot the record was written for: slot + 1, with kTagCopy on
  // compaction's copies; 0 in records written before layout version 7.
  uint32_t tag;
};
constexpr uint32_t kTagSlotMask = 0xff;
constexpr uint32_t kTagCopy = 0x100;

uint32_t crc32c(const void* p, size_t n, uint32_t crc = 0);

class VLog {
 public:
  // A position in the log: the pool offset of its segment (0: the log's
  // start) and a byte offset in it. Segments never move, so a position
  // outlives the packing of the segment list.
  struct Pos {
    uint64_t seg_off = 0, off = 0;
  };
  // Room one call holds for its appends (reserve / release).
  struct Reservation {
    uint64_t bytes = 0;
  };
  // What a segment's end can waste: the largest record (a row of dim 4096
  // with three state blocks) and its header.
  static constexpr uint64_t kSlack = 4 * 4096 * 4 + 64;

  // A new, empty log's descriptor, allocated in tx; returns its offset.
  // seg_bytes is raised to hold at least 8 times kSlack.
  static uint64_t create(Tx& tx, Pool& pool, uint64_t seg_bytes);

  // Opens the log described at desc_off, resuming appends at its published
  // tail. Reads the descriptor and its list of segments (about twice the
  // segments in use at most, each 1-16 MiB), nothing else: no record.
  // Fails with Corrupt on a bad one.
  // tx_mu: the engine's (pool.h); the log's transactions run under it.
  VLog(Pool& pool, uint64_t desc_off, TxMutex* tx_mu);

  static size_t record_bytes(uint32_t n) { return (sizeof(VRecordHdr) + sizeof(float) * n + 7) & ~size_t{7}; }

  // Makes room for `bytes` more bytes of appends held by r, allocating
  // segments (each a transaction of its own); OutOfSpace when the pool has
  // no room, r unchanged.
  void reserve(Reservation& r, uint64_t bytes);
  // Gives back what r holds and has not used.
  void release(Reservation& r);
  // Moves up to `bytes` of from's room to `to` (no room is given back or
  // taken, so it cannot fail); returns what moved.
  uint64_t transfer(Reservation& from, Reservation& to, uint64_t bytes);
  // Gives back what r holds above `keep`.
  void trim(Reservation& r, uint64_t keep);

  // Appends a record and returns its pool offset. With r holding enough,
  // the record takes r's room and never allocates; otherwise it allocates a
  // segment when the room not reserved is short, and fails with OutOfSpace
  // when the pool is full, the record not appended.
  // tag goes into the header; then(ctx, offset), when given, runs once the
  // record is copied, before any sync() can count it as written.
  uint64_t append(uint64_t key, uint32_t table, uint32_t epoch, uint32_t step, const float* values, uint32_t n, Reservation* r = nullptr,
                  uint32_t tag = 0, void (*then)(void*, uint64_t) = nullptr, void* ctx = nullptr);

  // A record to append: values are n floats.
  struct Rec {
    uint64_t key;
    uint32_t table, epoch, step, n, tag;
    const float* values;
  };
  // Appends count records as append() would, one after another in the log,
  // and calls then(ctx, i, offset) for each once all are copied, before any
  // sync() can count them. With r holding less than their bytes, the rest
  // is room not reserved, allocated when short (OutOfSpace: none appended).
  // through_file, on the msync path: each contiguous run is written with
  // one pwrite (Pool::write_file), so the group costs no fault per fresh
  // page; else the records are stored through the mapping, which leaves
  // their pages mapped for reads (BENCHMARKS.md, "The log written with
  // pwrite": reads of pwritten records measured 0.5-0.8x).
  void append_many(const Rec* recs, size_t count, Reservation* r, void (*then)(void*, size_t, uint64_t), void* ctx, bool through_file);

  // Makes every record appended before the call durable (on PMEM: the
  // caller's own; every appender there drains its own before it lets anyone
  // rely on a record, as the engine's writers do).
  void sync();

  // Records where the last sync() to return stopped as the log's published tail (in
  // the caller's transaction). The caller holds the returned lock
  // until that transaction has committed: a segment's allocation committed
  // in between would be undone with it if it aborted.
  // at: the tail published, as a position.
  [[nodiscard]] std::unique_lock<std::mutex> publish_tail(Tx& tx, Pos* at = nullptr);
  // The published tail, as a position.
  Pos published() const;
  // Bytes of the log from `from` to the published tail; Corrupt when from
  // is not in a listed segment. kMarkAtTail (layout.h) as from: 0.
  uint64_t bytes_since(Pos from) const;
  // Calls fn(offset, record) for every record from `from` to the published
  // tail, in log order (the replay at open: nothing may append meanwhile).
  // Corrupt when a record there fails its checksum: the log is synced
  // before a tail is published.
  void for_each_since(Pos from, const std::function<void(uint64_t, const VRecordHdr*)>& fn) const;

  // The record at off; fails with Corrupt when its crc does not match.
  const VRecordHdr* read(uint64_t off) const;

  // Segments holding records (holes not counted) and their usable bytes each.
  uint64_t segments() const;
  // Bytes of the segments appended to so far, up to the append point: the
  // log without the room allocated ahead (reservations, dirty rows' room).
  uint64_t written_bytes() const;
  uint64_t seg_bytes() const { return d_->seg_bytes; }

  // The pool offset of the oldest segment before the published tail's
  // (whole: nothing is appended to it any more, and a restart resumes past
  // it) and before `mark`'s (the replay at open reads the records from
  // the mark on), 0 when there is none.
  uint64_t oldest_full_segment(Pos mark) const;
  // Calls fn(offset, record) for the records of the segment at seg_off, from
  // its start while they parse and pass their checksum (what follows the
  // last one is garbage). The segment must be one oldest_full_segment gave.
  template <class F>
  void for_each_record(uint64_t seg_off, F fn) const {
    for (uint64_t o = 0; o + sizeof(VRecordHdr) <= d_->seg_bytes;) {
      const VRecordHdr* h = parse(seg_off + o);
      if (!h || o + record_bytes(h->n) > d_->seg_bytes) return;
      fn(seg_off + o, h);
      o += record_bytes(h->n);
    }
  }
  // Frees a whole segment no live slot names any more (in a transaction of
  // its own, which also lists it as a hole).
  void free_segment(uint64_t seg_off);

 private:
  const VRecordHdr* parse(uint64_t off) const;  // the record at off when it is one, else null
  uint64_t index_of(Pos p) const;               // mu_ held: p's segment's index (kMarkAtTail: the tail's)
  uint64_t room() const;                        // mu_ held
  // mu_ held (g): takes what r holds of `bytes`, then makes room() cover
  // the rest, growing the log (g is let go while tx_mu_ is taken).
  void take_room(std::unique_lock<std::mutex>& g, Reservation* r, uint64_t bytes);
  // mu_ held, room taken: the place of the next record of rb bytes,
  // moving to the next segment (behind an end marker) when it does not fit.
  char* place(size_t rb);
  void grow();  // tx_mu_ and mu_ held: one more spare segment
  // No lock held: flushes the segments grow() added (fresh_), faulting them in.
  void flush_fresh(const std::vector<std::pair<char*, size_t>>& fresh);
  char* seg_base(uint64_t i) const { return pool_.at<char>(pool_.at<uint64_t>(d_->segs_off)[i]); }
  static uint64_t sum(const PVLog* d);

  Pool& pool_;
  PVLog* d_;
  TxMutex* const tx_mu_;  // taken before mu_, never while holding it
  mutable std::mutex mu_;
  std::mutex sync_mu_;                              // a sync returns only after every earlier one's msyncs
  uint64_t seg_ = 0, off_ = 0;                      // where the next record goes (segment index, byte offset)
  uint64_t reserved_ = 0;                           // room held by reservations
  char* synced_from_ = nullptr;                     // start of the bytes appended since the last sync, in the current segment
  std::vector<std::pair<char*, size_t>> unsynced_;  // whole ranges of segments left since the last sync
  uint64_t holes_ = 0;
  // Segments grow() allocated that nobody flushed yet (mu_; PMEM only).
  std::vector<std::pair<char*, size_t>> fresh_;
  // Where the last sync() that returned stopped: the tail publish_tail
  // records, so the published log holds only whole, durable records. The
  // point of a sync under way is syncing_* until it returns (syncs run one
  // at a time; publishers do not wait for them).
  uint64_t syncing_seg_ = 0, syncing_off_ = 0;
  uint64_t synced_seg_ = 0, synced_off_ = 0;
  // Appends placed but still copying, by generation: sync() starts a new
  // generation and waits for the old one's to finish.
  uint64_t gen_ = 0, inflight_[2] = {0, 0};
  std::condition_variable copied_;  // freed entries in the list, counted at open (O(list)) and kept since
};

}  // namespace pmemps
