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
#pragma once
#include <cstddef>
#include <cstdint>

namespace pmemps {

constexpr const char* kLayoutName = "pmemps-v1";
constexpr uint64_t kMagic = 0x31304d4550534d50ULL;  // "PMSPEM01"
// Version 4 added PRoot.identity_sealed in the upper half of what version 3
// stored as a 64-bit shard count (a wire uint32, so that half was 0); open
// upgrades a version-3 pool in place (Engine::open_pool).
constexpr uint32_t kLayoutVersion = 4;
constexpr uint32_t kLayoutVersionSealless = 3;
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

struct PTable {
  uint32_t state;  // 0 free, 1 live
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
  uint64_t ballot;  // highest checkpoint-coordinator ballot recorded (cluster protocol)
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
  // tensors, lineage): written by close() in the transaction that sets
  // clean = 1, so it is valid exactly when clean is. 0 = none.
  uint64_t close_rec, close_len;
  uint64_t checksum;
};

// Version 3 had these words at the same offsets (little-endian), which is
// what makes the in-place upgrade a matter of setting the seal word.
static_assert(offsetof(PRoot, cluster_id) == 120 && offsetof(PRoot, shard_count) == 144 && offsetof(PRoot, identity_sealed) == 148 &&
                  offsetof(PRoot, opens) == 152 && offsetof(PRoot, checksum) == 176,
              "PRoot layout changed: bump kLayoutVersion (test/identity.test.ts writes version-3 roots at these offsets)");

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

// Row record in a slab: the key, then kSlots slots.
struct SlotHdr {
  uint32_t epoch;  // 0 = empty
  uint32_t step;   // optimizer step count of this version
};

inline uint32_t slot_bytes_for(uint32_t row_floats) { return (8 + 4 * row_floats + 7) & ~7u; }
inline uint32_t row_bytes_for(uint32_t row_floats) { return 8 + kSlots * slot_bytes_for(row_floats); }

}  // namespace pmemps
