// Room in the pool's free space for the copies that pushes make of rows a
// running prepare has yet to write (cache.h: shadows), once the cache's
// budget has none left. Without it such a push writes the row back to its
// pool slot on its own time, which on a large pool is a page walk per row
// (the slot headers' lines): ~0.5 µs a row summed over a push's threads,
// 2-4 ms for a push of 4,096 pending rows, where a copy into a chunk filled
// in order costs ~0.1 µs (BENCHMARKS.md). The DRAM cap stays a cap.
//
// Invariants:
//  * Chunks are carved from blocks, each a libpmemobj allocation whose
//    PMEMoid sits in the pool's block list (PRoot.copy_blocks_off, at most
//    kCopyBlocks of them) and nowhere else: libpmemobj's atomic alloc sets
//    the entry and its free clears it, so the list names every block the
//    pool holds for copies, and open frees what a crash left (sweep()):
//    a copy only lives until the flusher has written it to its row's slot,
//    so no block is needed after a close or a crash, and their bytes are
//    never flushed. (Until layout version 6 the blocks were reservations,
//    pmemobj_reserve, never published; with reservations outstanding the
//    frees of a dropped table's storage corrupted libpmemobj's heap.) A
//    block is as large as a table's slab (8 MiB), or the cap when that is
//    smaller, so that a block given back leaves a hole a slab fits in,
//    where scattered 1 MiB holes would fit none (a 64 MiB pool whose 4 MiB
//    of chunks were given back still held a slab fewer).
//  * Chunks are handed out whole (a stripe fills its own under its lock)
//    and given back by a stripe with all its chunks at once, when no copy
//    lives in any of them (put_back(): after a prepare's flush, which
//    empties every pending list, or one that failed; they stay reserved and
//    mapped for the next prepare, whose first pushes would otherwise
//    reserve and map them on their own time), or all together by
//    release_all() when the cache is dropped or the pool closes.
//  * Blocks are reserved ahead by a thread of the arena's own (prefill: the
//    engine asks after each prepare for as many as that prepare had pending
//    rows), else by the push that finds no chunk ready. A chunk is handed
//    out to one stripe at a time: it is on ready_ at most once, and never
//    after release_all() or shed() gave its block back.
//  * At most `cap` bytes (counted as whole blocks), and kCopyBlocks blocks,
//    are held at once (the engine passes the cache budget, at most 1/16 of
//    the pool); take() returns nullptr beyond it or when the pool has no
//    free block (the push then writes the row back, as without the arena).
//  * The pool's data comes first: an allocation that finds the pool full
//    has shed() give back every block none of whose chunks is handed out
//    (between prepares, all of them) and tries again. shed() runs inside
//    that allocation's transaction, where libpmemobj's atomic free must not
//    run on the same thread (both use the thread's lane): a thread of its
//    own frees the blocks while the caller waits. After a shed() no
//    block is reserved (by the filler or a push) until the next prefill,
//    else the space just freed could be taken again before the retry.
#pragma once
#include <libpmemobj.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "layout.h"
#include "pool.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it
#endif

namespace pmemps {

class CopyArena {
 public:
  // A chunk's usable bytes; chunks lie kChunkStride apart in their block.
  // The block's last one ends where its libpmemobj header would make the
  // block exceed whole 256 KiB units of the heap (Pool::alloc_size).
  static constexpr size_t kChunkStride = size_t(1) << 20;
  static constexpr size_t kChunk = kChunkStride - Pool::kHugeHeader;
  // A slab at its largest (engine_data.cc: slab_bytes).
  static constexpr size_t kMaxBlockChunks = (Pool::kChunk << (kGrowSlabs - 1)) / kChunkStride;
  static_assert(kMaxBlockChunks == 8, "blocks of 8 MiB");

  // The type number of the blocks' allocations (the tables' are 1).
  static constexpr uint64_t kBlockType = 2;

  // list: the pool's block list (kCopyBlocks entries), after sweep().
  // tx_mu: the mutex every transaction on the pool runs under.
  CopyArena(PMEMobjpool* pop, PMEMoid* list, TxMutex* tx_mu, size_t cap)
      : pop_(pop),
        list_(list),
        tx_mu_(tx_mu),
        cap_(std::min<size_t>(cap, kCopyBlocks * kMaxBlockChunks * kChunkStride)),
        block_chunks_(std::min(kMaxBlockChunks, cap_ / kChunkStride)) {}

  // Frees the blocks the list names (a crash left them; they hold nothing
  // needed). At most kCopyBlocks frees: a restart's cost does not grow
  // with the table. False if an entry is not a block of this pool (a
  // damaged list), having freed nothing.
  static bool sweep(PMEMobjpool* pop, PMEMoid* list, uint64_t pool_uuid_lo, uint64_t pool_size) {
    for (uint32_t i = 0; i < kCopyBlocks; i++)
      if (!OID_IS_NULL(list[i]) && (list[i].pool_uuid_lo != pool_uuid_lo || list[i].off < 4096 || list[i].off >= pool_size)) return false;
    for (uint32_t i = 0; i < kCopyBlocks; i++)
      if (!OID_IS_NULL(list[i])) pmemobj_free(&list[i]);
    return true;
  }
  ~CopyArena() {
    {
      std::lock_guard<std::mutex> g(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    if (filler_.joinable()) filler_.join();
    release_all();
  }
  CopyArena(const CopyArena&) = delete;
  CopyArena& operator=(const CopyArena&) = delete;

  // Has chunks for about `bytes` of copies reserved and mapped ahead, on a
  // thread of the arena's own (SCHED_BATCH): a chunk reserved and mapped
  // by the push that needs it cost that push ~1 ms (256 page faults), and
  // mapping them in the prepare that needs them cost it up to 0.6 s (256
  // MiB on /dev/shm, first time). Returns at once.
  void prefill(size_t bytes) {
    {
      std::lock_guard<std::mutex> g(mu_);
      shed_ = false;
      if (bytes <= want_) return;
      want_ = bytes;
      if (!filler_.joinable()) {
        try {
          filler_ = std::thread([this] { fill(); });
        } catch (...) {
          want_ = 0;  // no thread: pushes reserve their own chunks
          return;
        }
      }
    }
    cv_.notify_all();
  }

  // A chunk for copies, or nullptr (see the invariants).
  char* take() {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!ready_.empty()) {
        char* c = ready_.back();
        ready_.pop_back();
        return c;
      }
    }
    return reserve(false);
  }

  // Chunks a stripe held, none of them holding a live copy. Never after a
  // release_all() that ran since the stripe took them (every caller of
  // drop_cache waits for the prepare that puts chunks back).
  void put_back(const std::vector<char*>& chunks) {
    if (chunks.empty()) return;
    std::lock_guard<std::mutex> g(mu_);
    ready_.insert(ready_.end(), chunks.begin(), chunks.end());
  }

  // Pool bytes reserved for copies now.
  size_t held_bytes() {
    std::lock_guard<std::mutex> g(mu_);
    return blocks_.size() * block_bytes();
  }

  // Gives back the blocks none of whose chunks is handed out; whether it
  // gave any.
  bool shed() {
    std::lock_guard<std::mutex> g(mu_);
    want_ = 0;
    shed_ = true;
    std::vector<char*> ready = ready_;
    std::sort(ready.begin(), ready.end());
    auto is_ready = [&](char* c) { return std::binary_search(ready.begin(), ready.end(), c); };
    std::vector<uint32_t> keep, drop;
    std::vector<char*> chunks;
    ready_.clear();
    for (size_t b = 0; b < blocks_.size(); b++) {
      char* const* first = &chunks_[b * block_chunks_];
      if (std::all_of(first, first + block_chunks_, is_ready)) {
        drop.push_back(blocks_[b]);
        continue;
      }
      keep.push_back(blocks_[b]);
      for (size_t i = 0; i < block_chunks_; i++) {
        chunks.push_back(first[i]);
        if (is_ready(first[i])) ready_.push_back(first[i]);
      }
    }
    blocks_.swap(keep);
    chunks_.swap(chunks);
    if (drop.empty()) return false;
    try {
      std::thread([&] { free_blocks(drop); }).join();
    } catch (const std::system_error&) {
      free_later_.insert(free_later_.end(), drop.begin(), drop.end());  // no thread: freed at release_all (or open)
      return false;
    }
    return true;
  }

  // Frees every block: never inside a transaction (shed() is the one
  // caller that may be).
  void release_all() {
    std::lock_guard<TxMutex> tg(*tx_mu_);  // before mu_, as in reserve()
    std::lock_guard<std::mutex> g(mu_);
    ready_.clear();
    chunks_.clear();
    want_ = 0;
    free_blocks(blocks_);
    free_blocks(free_later_);
    blocks_.clear();
    free_later_.clear();
  }

 private:
  size_t block_bytes() const { return block_chunks_ * kChunkStride; }

  void fill() {
    // SCHED_BATCH, not SCHED_IDLE: under pushes that never pause an idle
    // thread had not mapped the chunks by the next prepare (maxPushWaitUs
    // 2.6 ms in 1 of 3 rounds); a batch thread gets its share of a core but
    // never preempts a push's thread when it wakes.
    sched_param p{};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &p);
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return quit_ || blocks_.size() * block_bytes() < std::min(want_, cap_); });
      if (quit_) return;
      lk.unlock();
      const bool got = reserve(true) != nullptr;
      lk.lock();
      if (!got) want_ = 0;  // the pool has no room: pushes take what they can
    }
  }

  // A new block: its chunks on chunks_, and on ready_ in the same hold of
  // the lock, all of them when `ready` (the filler's), else all but the
  // first, which is returned to the push that asked: a chunk is on ready_
  // or with one stripe, never both, and one whose block was given back is
  // on neither.
  char* reserve(bool ready) {
    char* p;
    {
      // tx_mu_ before mu_: shed() takes mu_ with tx_mu_ held.
      std::lock_guard<TxMutex> tg(*tx_mu_);
      std::lock_guard<std::mutex> g(mu_);
      if (shed_ || block_chunks_ == 0 || (blocks_.size() + 1) * block_bytes() > cap_) return nullptr;
      uint32_t slot = 0;
      while (slot < kCopyBlocks && !OID_IS_NULL(list_[slot])) slot++;
      if (slot == kCopyBlocks) return nullptr;
      if (pmemobj_alloc(pop_, &list_[slot], block_bytes() - Pool::kHugeHeader, kBlockType, nullptr, nullptr) != 0) return nullptr;
      blocks_.push_back(slot);
      p = static_cast<char*>(pmemobj_direct(list_[slot]));
      for (size_t i = 0; i < block_chunks_; i++) {
        chunks_.push_back(p + i * kChunkStride);
        if (ready || i > 0) ready_.push_back(p + i * kChunkStride);
      }
    }
    // Outside the lock: a push's take() waits for the filler's reservation
    // but not for its pages (a push that takes a chunk first faults them
    // itself; on a block given back meanwhile this only maps free pages).
    // A push maps only the chunk it takes.
    populate(p, ready ? block_bytes() - Pool::kHugeHeader : kChunk);
    return p;
  }

  // Maps pages in one call rather than a fault per page on first write.
  // Only a hint: a kernel without it leaves them to fault.
  static void populate(char* p, size_t n) {
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_POPULATE_WRITE);
  }

  // Under tx_mu_, held by the caller (or, in shed(), by the thread it waits for).
  void free_blocks(const std::vector<uint32_t>& blocks) {
    for (uint32_t i : blocks) pmemobj_free(&list_[i]);
  }

  PMEMobjpool* pop_;
  PMEMoid* const list_;   // the pool's block list
  TxMutex* const tx_mu_;  // the engine's: held around every alloc and free here
  const size_t cap_;
  const size_t block_chunks_;  // chunks in a block (0: the cap holds none)
  std::mutex mu_;
  std::vector<uint32_t> blocks_;      // every block held: its entry in list_
  std::vector<uint32_t> free_later_;  // given back by a shed() that found no thread to free them
  std::vector<char*> chunks_;         // their chunks, block by block in the same order
  std::vector<char*> ready_;          // chunks reserved, not handed out
  std::condition_variable cv_;
  size_t want_ = 0;    // bytes of blocks the filler keeps reserved
  bool shed_ = false;  // shed() ran since the last prefill: reserve nothing
  bool quit_ = false;
  std::thread filler_;
};

}  // namespace pmemps
