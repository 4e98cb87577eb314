// The libpmemobj pool: opening it under a directory lock, transactions with
// C++ error handling, and the batched flusher.
//
// Flushing: on real PMEM (or PMEM_IS_PMEM_FORCE) a persist is a few cache
// line write-backs, so a range is flushed as it is added (no list to keep,
// sort or bound) and a drain makes the thread's flushes durable. A drain
// orders only the flushes of the thread that issues it, so each writer
// drains its own before it releases the lock that lets anyone rely on them
// (the engine does, per stripe hold and per push). Anywhere else libpmemobj
// falls back to msync, which costs a syscall and a page write per call
// (~0.6 ms on ext4), so the flusher never persists a row at a time: it
// collects ranges and syncs their envelope once; the kernel writes only the
// dirty pages inside it, whichever thread dirtied them.
#pragma once
#include <libpmemobj.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "layout.h"
#include "page_warmer.h"

namespace pmemps {

class Pool {
 public:
  // Opens DIR/pmemps.pool, creating it (pool_bytes large) when absent.
  // inspect: upgrade nothing (an older layout version is refused, unchanged).
  Pool(const std::string& dir, uint64_t pool_bytes, bool inspect = false);
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  PMEMobjpool* pop() const { return pop_; }
  char* base() const { return reinterpret_cast<char*>(pop_); }
  PRoot* root() const { return root_; }
  bool created() const { return created_; }
  bool is_pmem() const { return is_pmem_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

  template <typename T>
  T* at(uint64_t off) const {
    return reinterpret_cast<T*>(base() + off);
  }
  uint64_t off_of(const void* p) const { return static_cast<uint64_t>(static_cast<const char*>(p) - base()); }
  PMEMoid oid(uint64_t off) const { return PMEMoid{uuid_lo_, off}; }

  void persist(const void* p, size_t n) { pmemobj_persist(pop_, p, n); }

  // Ranges written outside transactions. PMEM: flushed now, durable after
  // the writing thread's drain(); msync path: joins the envelope.
  void add_range(const void* p, size_t n);
  // Copies n bytes into the pool as a range of add_range. PMEM:
  // non-temporal stores, so the destination's lines are neither read first
  // nor left to flush (the writer's drain() orders them).
  void write(void* dst, const void* src, size_t n) {
    if (is_pmem_) {
      pmemobj_memcpy(pop_, dst, src, n, PMEMOBJ_F_MEM_NONTEMPORAL | PMEMOBJ_F_MEM_NODRAIN);
      return;
    }
    std::memcpy(dst, src, n);
    add_range(dst, n);
  }
  // A write whose durability can wait (the slots of logged pools, which
  // open can rebuild from the version log: engine_mark.cc). PMEM: as
  // write(); msync path: a slot's copy (copy_slot), joining a second
  // envelope, synced only by persist_lazy(), so that a checkpoint's sync
  // does not write back the random pages these writes dirty.
  void write_lazy(void* dst, const void* src, size_t n) {
    if (is_pmem_) return write(dst, src, n);
    copy_slot(dst, src, n);
    lazy_.add(dst, n);
  }
  // As write() (the next persist_ranges makes it durable), copied as a slot
  // is (copy_slot): compaction's repoints of slots.
  void write_slot(void* dst, const void* src, size_t n) {
    if (is_pmem_) return write(dst, src, n);
    copy_slot(dst, src, n);
    add_range(dst, n);
  }
  // msync path: copies n bytes to dst in the pool with pwrite on the pool's
  // file, whose pages then need no fault each (a store into a fresh mapped
  // page of a file faults into the filesystem: 256 MiB of log records took
  // 1.6 s through the mapping against 0.23 s in 1 MiB pwrites, msync
  // included; BENCHMARKS.md). The mapping sees the bytes at once (one page
  // cache); a sync of the range covers them. Falls back to a store when the
  // file cannot be written (PMEM, a pool not mapped from its file's start,
  // PMEMPS_LOG_PWRITE=0, an I/O error), so it never fails.
  void write_file(void* dst, const void* src, size_t n);
  bool writes_file() const { return file_fd_ >= 0; }
  bool writes_slots() const { return slot_pwrite_; }
  // msync path with file writes and PMEMPS_LOG_WARM=1: reads n bytes at p
  // into the page cache in the background, ahead of their writes
  // (page_warmer.h); else nothing. Off by default: docs/design.md.
  void warm(const void* p, size_t n) {
    if (warmer_) warmer_->add(off_of(p), n);
  }
  uint64_t warmed_bytes() const { return warmer_ ? warmer_->warmed() : 0; }
  // PMEM: waits for this thread's flushes; the msync path has nothing to wait for.
  void drain() {
    if (is_pmem_) pmemobj_drain(pop_);
  }
  // Makes durable every range added before the call by this thread, and by
  // any thread that drained since (PMEM), or by any thread (msync path).
  // Serialized: a caller never returns while another caller still syncs an
  // envelope it took.
  void persist_ranges();
  // msync path: makes durable every write_lazy() before the call, by any
  // thread. PMEM: nothing (those were flushed as written, as write()'s).
  void persist_lazy();

  uint64_t flush_calls() const { return flush_calls_; }
  // Called when an allocation finds the pool full, before it fails: frees
  // space the engine holds only to go faster (copy_arena.h) and returns
  // whether it freed any (the allocation is then tried again, for as long
  // as it keeps freeing some).
  void on_full(std::function<bool()> f) { on_full_ = std::move(f); }
  bool make_room() { return on_full_ && on_full_(); }
  // Bytes in use by allocated objects (walks the allocation list: for stats only).
  uint64_t used_bytes();

  // libpmemobj keeps a run of many chunks per allocation class, so a few
  // large objects of different sizes can exhaust a small pool. Objects of
  // 16 KiB and more are therefore whole chunks: kChunk * k - kHugeHeader.
  static constexpr size_t kChunk = 262144;
  static constexpr size_t kHugeHeader = 16;
  static size_t alloc_size(size_t n) {
    if (n < 16384) return n;
    return (n + kHugeHeader + kChunk - 1) / kChunk * kChunk - kHugeHeader;
  }

  // Root checksum over every field but the checksum itself.
  static uint64_t root_sum(const PRoot* r);
  static uint64_t table_sum(const PTable* t);

 private:
  void upgrade_root();
  void open_file_writes();
  // msync path: a slot's small write lands on a random page that a sync
  // cleaned and write-protected, where a store faults into the filesystem
  // (13 us a slot here) and a pwrite dirties the page without touching the
  // mapping (2.2 us; BENCHMARKS.md, "Slot writes with pwrite"). So it is a
  // write_file, or a store with PMEMPS_SLOT_PWRITE=0 or no file writes.
  void copy_slot(void* dst, const void* src, size_t n) {
    if (slot_pwrite_) return write_file(dst, src, n);
    std::memcpy(dst, src, n);
  }

  std::string dir_, path_;
  int lock_fd_ = -1;
  int file_fd_ = -1;                    // msync path: the pool's file, for write_file
  bool slot_pwrite_ = false;            // copy_slot uses write_file
  std::unique_ptr<PageWarmer> warmer_;  // msync path with file writes
  PMEMobjpool* pop_ = nullptr;
  PRoot* root_ = nullptr;
  uint64_t uuid_lo_ = 0;
  uint64_t size_ = 0;
  bool created_ = false;
  bool is_pmem_ = false;

  // msync path: the lowest and highest byte of the ranges added since it was
  // last taken. Its syncs run one at a time (sync_mu): a caller that finds
  // it empty must not return while another still syncs what it took.
  struct Envelope {
    std::mutex mu, sync_mu;
    const char* lo = nullptr;
    const char* hi = nullptr;
    void add(const void* p, size_t n);
    std::pair<const char*, const char*> take();
  };
  void persist_envelope(Envelope& env);
  Envelope env_;   // add_range, write
  Envelope lazy_;  // write_lazy
  std::atomic<uint64_t> flush_calls_{0};
  std::function<bool()> on_full_;
};

// The engine's one mutex that every transaction on a pool, and every
// atomic allocation or free, runs under. With libpmemobj 1.12, transactions
// and atomic operations running at once on different threads corrupted the
// heap here (a dropped table's frees aborted in their commit, beside the
// copy arena's allocations or the version log's freeing of a segment;
// docs/design.md). Recursive, because the version log grows (a transaction)
// on paths that may already hold it.
using TxMutex = std::recursive_mutex;

// Bounded: the transaction's snapshots fit in the lane's own undo log
// (measured with libpmemobj 1.12: the root and five table descriptors) and
// its frees and allocations in the lane's redo log (~40 entries), so
// libpmemobj never allocates log space from the heap for it: it cannot fail
// on a full pool (unless it allocates itself). Everything that must work on
// a full pool is made of bounded transactions. (libpmemobj's user log
// buffers, pmemobj_tx_log_append_buffer, are no way out: its recovery of an
// interrupted transaction frees such a buffer as if it owned it.)
enum class TxLog { Auto, Bounded };

// A libpmemobj transaction that reports failures as exceptions. Errors do not
// longjmp (NO_ABORT flags): the operation throws, and the destructor aborts
// the transaction, rolling back every snapshotted range and allocation.
class Tx {
 public:
  explicit Tx(Pool& pool, TxLog log = TxLog::Auto);
  ~Tx();
  void add(void* p, size_t n);
  // What the new object holds when the transaction commits, which decides
  // what the commit flushes: libpmemobj flushes a whole allocation at commit
  // unless told not to, and for a block nobody wrote yet (a log segment, a
  // row slab: tens of MiB) that flush only faults pages in (PMEM) or syncs
  // untouched ones (msync) while a push waits.
  enum class Fill {
    Zeroed,  // zeroed, flushed at commit
    InTx,    // written by the caller before the commit, which flushes it
    Later,   // written and persisted by its users after the commit: not flushed
  };
  uint64_t alloc(size_t n, Fill fill);
  void free(uint64_t off);
  void commit();

 private:
  Pool& pool_;
  bool active_ = false;
  bool bounded_ = false;
};

}  // namespace pmemps
