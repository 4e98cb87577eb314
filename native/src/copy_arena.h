// Room in the pool's free space for the copies that pushes make of rows a
// running prepare has yet to write (cache.h: shadows), once the cache's
// budget has none left. Without it such a push writes the row back to its
// pool slot on its own time, which on a large pool is a page walk per row
// (the slot headers' lines): ~0.5 µs a row summed over a push's threads,
// 2-4 ms for a push of 4,096 pending rows, where a copy into a chunk filled
// in order costs ~0.1 µs (BENCHMARKS.md). The DRAM cap stays a cap.
//
// Invariants:
//  * A chunk is a libpmemobj reservation that is never published: nothing
//    persistent refers to it, a crash or a close gives its space back, and
//    its bytes are never flushed (a copy only lives until the flusher has
//    written it to its row's slot).
//  * Chunks are handed out whole (a stripe fills its own under its lock)
//    and taken back only all at once, when no copy lives in any: by
//    recycle_all() after a prepare's flush emptied every pending list (they
//    stay reserved and mapped for the next prepare, whose first pushes
//    would otherwise reserve and map them on their own time), by
//    release_all() when the cache is dropped or the pool closes.
//  * Chunks are reserved ahead by a thread of the arena's own (prefill: the
//    engine asks after each prepare for as many as that prepare had pending
//    rows), else by the push that finds none ready. A chunk is handed out
//    to one stripe at a time: it is on ready_ at most once, and never after
//    release_all() gave it back.
//  * At most `cap` bytes (counted as whole 1 MiB chunks) are reserved at
//    once (the engine passes the cache budget, at most 1/16 of the pool);
//    take() returns nullptr beyond it or when the pool has no free chunk
//    (the push then writes the row back, as without the arena).
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
#include <thread>
#include <vector>

#include "pool.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it
#endif

namespace pmemps {

class CopyArena {
 public:
  // A chunk's usable bytes: with libpmemobj's 16-byte header it takes four
  // whole 256 KiB units of the heap (Pool::alloc_size).
  static constexpr size_t kChunk = (size_t(1) << 20) - Pool::kHugeHeader;
  static constexpr size_t kHeld = size_t(1) << 20;  // pool bytes a chunk holds

  CopyArena(PMEMobjpool* pop, size_t cap) : pop_(pop), cap_(cap) {}
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

  void recycle_all() {
    std::lock_guard<std::mutex> g(mu_);
    ready_ = chunks_;
  }

  void release_all() {
    std::lock_guard<std::mutex> g(mu_);
    ready_.clear();
    chunks_.clear();
    want_ = 0;
    if (acts_.empty()) return;
    pmemobj_cancel(pop_, acts_.data(), acts_.size());
    acts_.clear();
  }

 private:
  void fill() {
    // SCHED_BATCH, not SCHED_IDLE: under pushes that never pause an idle
    // thread had not mapped the chunks by the next prepare (maxPushWaitUs
    // 2.6 ms in 1 of 3 rounds); a batch thread gets its share of a core but
    // never preempts a push's thread when it wakes.
    sched_param p{};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &p);
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return quit_ || chunks_.size() * kHeld < std::min(want_, cap_); });
      if (quit_) return;
      lk.unlock();
      const bool got = reserve(true) != nullptr;
      lk.lock();
      if (!got) want_ = 0;  // the pool has no room: pushes take what they can
    }
  }

  // A new chunk, on ready_ too when `ready` (the filler's), in the same
  // hold of the lock as on chunks_: a chunk is on ready_ at most once
  // (recycle_all() copies chunks_), and one that release_all() gave back is
  // on neither.
  char* reserve(bool ready) {
    char* p;
    {
      std::lock_guard<std::mutex> g(mu_);
      if ((acts_.size() + 1) * kHeld > cap_) return nullptr;
      pobj_action act;
      const PMEMoid oid = pmemobj_reserve(pop_, &act, kChunk, 0);
      if (OID_IS_NULL(oid)) return nullptr;
      acts_.push_back(act);
      p = static_cast<char*>(pmemobj_direct(oid));
      chunks_.push_back(p);
      if (ready) ready_.push_back(p);
    }
    // Outside the lock: a push's take() waits for the filler's reservation
    // but not for its pages (a push that takes the chunk first faults them
    // itself; on a chunk given back meanwhile this only maps free pages).
    populate(p);
    return p;
  }

  // Maps the chunk's pages in one call rather than a fault per page on
  // first write. Only a hint: a kernel without it leaves them to fault.
  static void populate(char* p) {
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + kChunk) & ~(page - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_POPULATE_WRITE);
  }

  PMEMobjpool* pop_;
  const size_t cap_;
  std::mutex mu_;
  std::vector<pobj_action> acts_;  // every chunk reserved, handed out or ready
  std::vector<char*> chunks_;      // their addresses, in the same order
  std::vector<char*> ready_;       // reserved, not handed out
  std::condition_variable cv_;
  size_t want_ = 0;  // bytes of chunks the filler keeps reserved
  bool quit_ = false;
  std::thread filler_;
};

}  // namespace pmemps
