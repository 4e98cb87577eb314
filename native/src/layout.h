// Persistent layout of a pmemps pool. Everything here lives in the
// libpmemobj pool; offsets are pool-relative (PMEMoid.off), so the pool can
// be mapped anywhere.
//
// Invariants (see docs/design.md for the argument):
//  * Every row record holds kSlots epoch-tagged versions. The version a
//    reader takes is the slot with the largest live epoch <= its bound; a
//    write-back never overwrites the slot holding the committed checkpoint's
//    version, nor the prepared one's while a checkpoint is prepared. With
//    three slots one is always free, so no overflow area is needed.
//  * Epoch numbers are never reused: PRoot.next_epoch is persisted before an
//    epoch is handed out. After a crash, every epoch above the last durable
//    checkpoint is recorded in the dead list and never chosen by a reader.
//  * PRoot, PTable and PCkpt change only inside libpmemobj transactions, and
//    each carries a checksum over its fields that the same transaction
//    updates; open verifies them in constant time.
//  * PTable.rows_used covers every row that may hold a live version; rows
//    beyond it hold only dead versions or nothing, and index slots that
//    point past it are ignored.
//  * Nothing that must succeed on a full pool allocates: commit, abort,
//    rollback, crash recovery, drop and clean close are made of bounded
//    transactions (pool.h: TxLog::Bounded) that fit in libpmemobj's lane
//    logs; they mark the storage of tables they remove as garbage
//    (PTable.state 2) instead of freeing it, and the close record goes into
//    a slot reserved ahead (PRoot.close_slot). Garbage is freed afterwards,
//    a bounded number of objects per transaction, resumed at open.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pmemps {

constexpr const char* kLayoutName = "pmemps-v1";
constexpr uint64_t kMagic = 0x31304d4550534d50ULL;  // "PMSPEM01"
// Version 4: the shard identity's seal (PRoot.identity_sealed), the close
// record's reserved slot, the spare checkpoint record and garbage table
// descriptors freed in bounded steps. Version 5: the row layout
// (PRoot.layout) and the version log (PRoot.vlog_off); a version-4 pool is
// upgraded at open to an in-place one (Pool::upgrade_root), older ones are
// refused, unchanged. Version 6: the copy arena's block list
// (PRoot.copy_blocks_off); a version-4 or 5 pool is upgraded at open.
// Version 7: the slots' mark (PRoot.mark_seg, mark_off; docs/design.md,
// "The log as the journal of the slots"); older pools are upgraded at open
// with the mark at their published tail.
constexpr uint32_t kLayoutVersion = 7;
// Blocks the copy arena (copy_arena.h) may hold at once.
constexpr uint32_t kCopyBlocks = 64;
constexpr uint32_t kMaxTables = 256;
constexpr uint32_t kSlots = 3;
constexpr uint32_t kMaxHyperP = 8;
// Slab offsets live in a two-level table of whole-chunk arrays.
constexpr uint32_t kSlabChunk = 32766;  // slab offsets per second-level array
constexpr uint32_t kSlabTop = 32766;    // second-level arrays per table
constexpr uint32_t kGrowSlabs = 6;      // slabs of 1, 2, 4 .. 32 pool chunks, then 32 each

struct DeadRange {
  uint64_t lo, hi;  // epochs lo..hi inclusive are dead
};

// PTable.state
constexpr uint32_t kTableFree = 0;
constexpr uint32_t kTableLive = 1;
// No longer part of any state (freed by a commit, removed by a rollback or
// a crash, dropped outside every checkpoint): its storage is being freed a
// bounded number of objects per transaction; the slot is not reused before.
constexpr uint32_t kTableGarbage = 2;

struct PTable {
  uint32_t state;  // kTableFree, kTableLive or kTableGarbage
  uint32_t dim;
  uint32_t opt;
  uint32_t init;
  uint32_t row_floats;  // weights + optimizer state
  uint32_t row_bytes;   // key + kSlots slots
  uint64_t created_epoch;
  uint64_t seed;
  double hyper[kMaxHyperP];
  double init_params[4];
  char name[72];
  uint64_t rows_per_slab;  // rows of a full-size slab
  uint64_t rows_used;
  uint64_t slab_count;
  uint64_t slab_top;   // offset of uint64_t[kSlabTop]: chunk offsets
  uint64_t index_dir;  // offset of PDir
  uint64_t salt;
  // Epoch of a DropTable, 0 = live. A dropped table keeps its storage while
  // a durable checkpoint from before the drop may still be restored; the
  // commit of a checkpoint taken after the drop frees it, and a crash or
  // rollback to a point before the drop clears the mark.
  uint64_t dropped_epoch;
  // Garbage only: index directory entries below it have had their segments freed.
  uint64_t reclaim_pos;
  uint64_t checksum;
};

struct PRoot {
  uint64_t magic;
  uint32_t version;
  uint32_t clean;  // 1 after a clean close, 0 while open
  uint64_t next_epoch;
  uint64_t c_id, c_epoch, c_rec;  // committed checkpoint; id 0 = none
  uint64_t p_id, p_epoch, p_rec;  // prepared checkpoint; id 0 = none
  uint64_t last_id;               // highest id prepared or aborted
  uint64_t ballot;                // highest checkpoint-coordinator ballot recorded (cluster protocol)
  uint64_t dead_off, dead_count, dead_cap;
  uint64_t tables_off;  // PTable[kMaxTables]
  // Shard identity (docs/protocol.md, Identity); all 0 until set, then never
  // changed. identity_sealed: 1 once a worker has seen every shard of the
  // cluster hold this identity; never cleared. Its 0 tells a cluster still
  // being formed (complete it) from a formed one (an empty pool is refused).
  uint64_t cluster_id[2];
  uint64_t shard_index;
  uint32_t shard_count;
  uint32_t identity_sealed;
  uint64_t opens;
  // The server's record of a clean close (its exactly-once push table, dense
  // tensors, lineage) lives in close_slot, an allocation of close_cap usable
  // bytes reserved ahead (reserve_close_record) so that close never
  // allocates. close() writes the record into the slot, then sets close_len
  // in the transaction that sets clean = 1: it is valid exactly when clean is.
  uint64_t close_slot, close_cap, close_len;
  // Storage of a superseded or aborted checkpoint record, kept for the next
  // prepare to write into (0 = none): checkpoints of a steady size never
  // allocate, so they keep working on a full pool.
  uint64_t spare_rec, spare_cap;
  // kLayoutInPlace or kLayoutLogged, chosen at creation and never changed.
  uint32_t layout;
  uint32_t pad5;
  uint64_t vlog_off;  // the version log's descriptor (logged pools), else 0
  // PMEMoid[kCopyBlocks]: the copy arena's blocks, each an allocation that
  // holds only copies a running prepare's pushes made, never needed after
  // a close or a crash; libpmemobj's atomic alloc and free write the
  // entries, and open frees what a crash left. Its own object, so the
  // root's snapshot in every bounded transaction stays small. 0: none yet
  // (a pool upgraded from version 5 gets it at an open with room).
  uint64_t copy_blocks_off;
  // Logged pools: the slots' mark, a position in the version log (the pool
  // offset of its segment, 0 for the log's start, and a byte offset in it).
  // Every slot that a record before it names is durable; the slots of the
  // records from it to the published tail may not be, and open replays
  // those records into them (engine_mark.cc). kMarkAtTail: at the
  // published tail, whatever it is (an upgraded pool, whose slots were all
  // synced before their publish).
  uint64_t mark_seg, mark_off;
  uint64_t checksum;
};
constexpr uint64_t kMarkAtTail = UINT64_MAX;

// A checkpoint record: fixed header, then ntables PCkptTable, then the dense
// blob and the metadata blob.
struct PCkpt {
  uint64_t id;
  uint64_t epoch;
  uint32_t ntables;
  uint32_t pad;
  uint64_t dense_len;
  uint64_t meta_len;
  uint64_t checksum;  // over header (checksum field zeroed) and payload
};
struct PCkptTable {
  uint32_t idx;
  uint32_t pad;
  double hyper[kMaxHyperP];
};

// PRoot.layout: where a row's versions live (docs/design.md, "Writing back
// on a disk").
//  * In place: a slot holds the version's values after its header.
//  * Logged: a slot holds the pool offset of the version's record in the
//    version log (vlog.h) after its header, so a row record is 56 bytes and
//    a write-back is an append to the log plus 16 bytes in place.
constexpr uint32_t kLayoutInPlace = 0;
constexpr uint32_t kLayoutLogged = 1;
// Not stored: asks a pool being created for in place on PMEM (a flush costs
// cache lines), logged anywhere else (a flush costs pages).
constexpr uint32_t kLayoutAuto = 2;

// Row record in a slab: the key, then kSlots slots.
struct SlotHdr {
  uint32_t epoch;  // 0 = empty
  uint32_t step;   // optimizer step count of this version
};
struct LoggedSlot {
  SlotHdr h;
  uint64_t off;  // the version's record in the log
};

inline uint32_t slot_bytes_for(uint32_t layout, uint32_t row_floats) {
  return layout == kLayoutLogged ? sizeof(LoggedSlot) : (8 + 4 * row_floats + 7) & ~7u;
}
inline uint32_t row_bytes_for(uint32_t layout, uint32_t row_floats) { return 8 + kSlots * slot_bytes_for(layout, row_floats); }

}  // namespace pmemps
