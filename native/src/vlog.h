// The version log: the write side of the log-structured write-back for
// pools on non-DAX media (docs/design.md, "Writing back on a disk"). Row
// versions are appended as records to segments (whole pool chunks), so a
// checkpoint's write-back is one sequential write per segment instead of a
// random page per row. A record is named by its pool offset; sorted runs
// (runs.h) map rows to those offsets.
//
// Invariants:
//  * PVLog changes only inside transactions, with its checksum. Segments
//    are listed in append order; `tail` (segment index, byte offset) is the
//    published end of the log: every record a published run may name lies
//    before it.
//  * A record is {header, values}; its crc32c covers both (the crc field
//    as 0). Nothing in a record is ever overwritten while a published run
//    names it; bytes past the published tail are garbage that the next
//    appends overwrite, so a crash after an append needs no repair: a
//    restart resumes appending at the published tail.
//  * sync() makes every record appended so far durable; the caller syncs
//    before the transaction that publishes runs naming them and the tail
//    (publish_tail, in that same transaction).
//  * One appender at a time (the caller serializes append/sync/publish);
//    read() may run concurrently with appends to other records.
#pragma once
#include <cstdint>
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
  uint32_t crc, pad;
};

uint32_t crc32c(const void* p, size_t n, uint32_t crc = 0);

class VLog {
 public:
  // A new, empty log's descriptor, allocated in tx; returns its offset.
  static uint64_t create(Tx& tx, Pool& pool, uint64_t seg_bytes);

  // Opens the log described at desc_off, resuming appends at its published
  // tail. O(1): reads the descriptor only. Fails with Corrupt on a bad one.
  VLog(Pool& pool, uint64_t desc_off);

  static size_t record_bytes(uint32_t n) { return (sizeof(VRecordHdr) + sizeof(float) * n + 7) & ~size_t{7}; }

  // Appends a record and returns its pool offset. Takes the next segment,
  // allocating one (a transaction of its own) when none is left: fails with
  // OutOfSpace when the pool is full, the record not appended.
  uint64_t append(uint64_t key, uint32_t table, uint32_t epoch, uint32_t step, const float* values, uint32_t n);

  // Makes every record appended so far durable.
  void sync();

  // Records the current end of the log as its published tail (in the
  // caller's transaction, after sync()).
  void publish_tail(Tx& tx);

  // The record at off; fails with Corrupt when its crc does not match.
  const VRecordHdr* read(uint64_t off) const;

  uint64_t segments() const { return d_->nsegs; }
  uint64_t appended_bytes() const { return appended_; }

 private:
  void next_segment();
  static uint64_t sum(const PVLog* d);

  Pool& pool_;
  PVLog* d_;
  uint64_t seg_ = 0, off_ = 0;                      // where the next record goes (segment index, byte offset)
  char* synced_from_ = nullptr;                     // start of the bytes appended since the last sync, in the current segment
  std::vector<std::pair<char*, size_t>> unsynced_;  // whole ranges of segments left since the last sync
  uint64_t appended_ = 0;
};

}  // namespace pmemps
