// The DRAM row cache: striped, each stripe a chained hash of entries with an
// intrusive CLOCK list (second-chance LRU) and two dirty lists, under one
// mutex.
//
// Invariants:
//  * At most one entry per (table, key), always in the stripe chosen by
//    stripe_of(); every access to an entry holds that stripe's mutex, and
//    so does every write of its row in the pool, but the flusher's writes
//    of rows it marked `flushing` (below). Reading a row's key needs no
//    lock: it never changes while the table exists.
//  * Within one prepare a row has at most one pending item: its entry, or
//    the shadow that replaced it there. A prepare that failed may leave
//    shadows on `pending` for the next one, which drops those whose row's
//    entry is pending again (it holds a newer version); dropping a table
//    drops its own (drop_copies).
//  * bytes counts every byte the stripe holds: entries in use, entries kept
//    for reuse on the free lists, and the bucket array. A new entry first
//    reuses a free one of its size; the stripe grows only while bytes stays
//    within its share of the hard budget, and evicts otherwise. Recycling
//    entries (instead of malloc/free per eviction) keeps the process's real
//    memory at the budget: glibc's per-thread arenas would otherwise each
//    keep their own peak. Copy-on-write copies made for a running prepare
//    (shadows) count like any entry, but for those put in the pool's free
//    space when the budget has no room (copy_arena.h): those count nowhere
//    in DRAM, and live on `pending`, then with the flusher writing them,
//    until they are recycled; a stripe refills its chunks from the first
//    only when none of its copies lives.
//  * Eviction is CLOCK over the `lru` list: a hit only sets the entry's
//    `used` bit (no list links move, so a hit touches no other entry's
//    cache lines); the eviction scan from the tail gives a used entry a
//    second chance (clears the bit, moves it to the front) and takes unused
//    ones. Each move is paid for by a hit since the last one, so the scan is
//    amortized O(1) per access.
//  * A hit on a young entry (fewer than count()/16 entries inserted into
//    its stripe since it was) does not set `used`: a trainer pulls a batch
//    and pushes the same keys moments later, and a Zipf batch repeats its
//    hot keys, so one bit set by such a correlated access would mark every
//    new row as reused and keep the rows read once for a second round (the
//    Zipf(0.99) hit ratio fell 1.1 points below LRU's; bench/cache-policy.cc).
//  * An entry is on `dirty` when modified in the current epoch, on `pending`
//    when modified in an epoch a running prepare must flush, on neither when
//    clean. `epoch` is the epoch of its last modification.
//  * An entry is marked `flushing` while the flusher writes a checkpoint
//    version of its row outside the stripe's lock: either a copy of the
//    entry itself (taken off `pending`; its pool row may not hold that
//    version yet) or the row's shadow (the entry then holds a newer
//    version). Eviction passes over it (an erased entry would be reloaded
//    from a pool row still being written, and the flusher still refers to
//    it), and nothing else writes its row until the flusher clears the
//    mark: two write-backs of one row choosing a slot at once could choose
//    the same one. A push may update it meanwhile. A flush chunk (32 rows)
//    can mark every entry of a stripe at once (pick_victims).
#pragma once
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include "common.h"

namespace pmemps {

constexpr uint8_t kShadowInDram = 1;  // a copy counted in the stripe's budget
constexpr uint8_t kShadowInPool = 2;  // a copy in a chunk of the pool (copy_arena.h)

struct Entry {
  Entry* hnext;
  Entry* lprev;
  Entry* lnext;
  Entry* dprev;
  Entry* dnext;
  uint64_t key;
  uint64_t ref;  // 1-based row number in the pool, 0 = none yet
  uint32_t table;
  uint32_t epoch;
  uint32_t step;
  uint8_t dirty;     // on `dirty` or, when epoch <= the stripe's pending_epoch, on `pending`
  uint8_t shadow;    // a checkpoint copy (kShadowIn*): only on `pending`, never in the hash or the LRU
  uint8_t used;      // CLOCK reference bit: hit since the eviction scan last passed
  uint8_t flushing;  // the flusher is writing its checkpoint version (see the invariants)
  uint32_t bytes;
  uint32_t birth;  // the stripe's insert count when inserted (see the invariants)
  float data[1];
};

// Circular intrusive list with a sentinel; `Next`/`Prev` select the links.
template <Entry* Entry::*Prev, Entry* Entry::*Next>
struct EntryList {
  Entry head;
  size_t size = 0;
  EntryList() { reset(); }
  EntryList(const EntryList&) = delete;
  EntryList& operator=(const EntryList&) = delete;
  void reset() {
    head.*Prev = head.*Next = &head;
    size = 0;
  }
  bool empty() const { return size == 0; }
  void push_front(Entry* e) {
    e->*Next = head.*Next;
    e->*Prev = &head;
    (head.*Next)->*Prev = e;
    head.*Next = e;
    size++;
  }
  void push_back(Entry* e) {
    e->*Prev = head.*Prev;
    e->*Next = &head;
    (head.*Prev)->*Next = e;
    head.*Prev = e;
    size++;
  }
  void unlink(Entry* e) {
    (e->*Prev)->*Next = e->*Next;
    (e->*Next)->*Prev = e->*Prev;
    e->*Prev = e->*Next = nullptr;
    size--;
  }
  Entry* back() { return size ? head.*Prev : nullptr; }
  Entry* front() { return size ? head.*Next : nullptr; }
  // Moves every element of `o` to the front of this list in O(1).
  void splice(EntryList& o) {
    if (o.empty()) return;
    Entry* f = o.head.*Next;
    Entry* l = o.head.*Prev;
    l->*Next = head.*Next;
    (head.*Next)->*Prev = l;
    head.*Next = f;
    f->*Prev = &head;
    size += o.size;
    o.head.*Prev = o.head.*Next = &o.head;
    o.size = 0;
  }
};

using LruList = EntryList<&Entry::lprev, &Entry::lnext>;
using DirtyList = EntryList<&Entry::dprev, &Entry::dnext>;

class Stripe {
 public:
  std::mutex mu;
  LruList lru;  // CLOCK order: the eviction scan starts at the back
  DirtyList dirty;
  DirtyList pending;
  size_t bytes = 0;
  size_t budget = 0;
  // Bytes of the entries on `dirty` and `pending` (each at least its
  // record's in the version log): what writing them all back needs. Written
  // under mu; read without it by Engine::trim_dirty_room.
  std::atomic<uint64_t> dirty_bytes{0};
  // Entries dirty with epoch <= pending_epoch are on `pending`: a prepare
  // moved them there in O(1) and is writing them back.
  uint32_t pending_epoch = 0;
  // Bumped by every push that changed rows of this stripe: a result computed
  // under an earlier value is stale (Engine::push checks, then applies).
  uint64_t applies = 0;

  Stripe() { rehash(64); }
  ~Stripe() {
    clear();
    std::free(buckets_);
  }

  static uint64_t hash(uint32_t table, uint64_t key) { return mix64(key * 0x2545f4914f6cdd1dULL + table); }

  Entry* find(uint32_t table, uint64_t key, uint64_t h) {
    for (Entry* e = buckets_[h & mask_]; e; e = e->hnext)
      if (e->key == key && e->table == table) return e;
    return nullptr;
  }

  static size_t entry_bytes(uint32_t row_floats) { return offsetof(Entry, data) + sizeof(float) * row_floats; }

  // True when an entry of n bytes can be had without going over budget.
  bool has_room(size_t n) const {
    // Inserting may double the bucket array: that counts too.
    const size_t grow = count_ + 1 > mask_ + 1 ? (mask_ + 1) * sizeof(Entry*) : 0;
    auto it = free_.find(n);
    if (it != free_.end() && it->second) return bytes + grow <= budget;
    return bytes + n + grow <= budget;
  }

  // Frees recycled entries (of other sizes) until n more bytes fit.
  void trim_free(size_t n) {
    for (auto& [sz, head] : free_) {
      while (head && !has_room(n)) {
        Entry* e = head;
        head = e->hnext;
        bytes -= sz;
        free_bytes_ -= sz;
        std::free(e);
      }
    }
  }

  // An entry for row_floats values, recycled when possible; in no list yet.
  Entry* make(uint32_t table, uint64_t key, uint32_t row_floats) {
    const size_t n = entry_bytes(row_floats);
    Entry* e = nullptr;
    auto it = free_.find(n);
    if (it != free_.end() && it->second) {
      e = it->second;
      it->second = e->hnext;
      free_bytes_ -= n;
    } else {
      e = static_cast<Entry*>(std::malloc(n));
      if (!e) throw std::bad_alloc();
      bytes += n;
    }
    std::memset(e, 0, offsetof(Entry, data));
    e->key = key;
    e->table = table;
    e->bytes = static_cast<uint32_t>(n);
    return e;
  }

  // A copy of e's checkpoint version that takes e's place on `pending`, so a
  // push can update e at once (copy-on-write). In DRAM within the budget
  // (the caller checked has_room(e->bytes)), or at `place` in the pool's
  // free space (pool_place), outside it.
  Entry* shadow_of(Entry* e, uint32_t row_floats, void* place = nullptr) {
    Entry* c;
    if (place) {
      c = static_cast<Entry*>(place);
      std::memset(c, 0, offsetof(Entry, data));
      c->key = e->key;
      c->table = e->table;
      c->bytes = static_cast<uint32_t>(entry_bytes(row_floats));
      c->shadow = kShadowInPool;
      pool_room_.live++;
    } else {
      c = make(e->table, e->key, row_floats);
      c->shadow = kShadowInDram;
    }
    std::memcpy(c->data, e->data, sizeof(float) * row_floats);
    c->ref = e->ref;
    c->epoch = e->epoch;
    c->step = e->step;
    pending.unlink(e);
    e->dirty = 0;
    c->dirty = 1;
    dirty_bytes.store(dirty_bytes.load(std::memory_order_relaxed) - e->bytes + c->bytes, std::memory_order_relaxed);
    // At the back, where the flusher takes the next entry: a copy's bytes
    // are the first it gives back.
    pending.push_back(c);
    return c;
  }

  // After its write-back: a flushed entry becomes clean, a flushed shadow is recycled.
  void flushed(Entry* e) {
    mark_clean(e);
    if (e->shadow) recycle(e);
  }

  // A place for a copy of n bytes in the pool chunks this stripe took from
  // `take` (CopyArena::take), in order; nullptr when it has none to give.
  template <class Take>
  void* pool_place(size_t n, size_t chunk_bytes, Take take) {
    n = (n + 63) & ~size_t(63);  // copies 64 bytes apart
    if (n > chunk_bytes) return nullptr;
    PoolRoom& r = pool_room_;
    if (r.chunk < r.chunks.size() && r.off + n > chunk_bytes) r.chunk++, r.off = 0;
    if (r.chunk == r.chunks.size()) {
      char* c = take();
      if (!c) return nullptr;
      r.chunks.push_back(c);
      r.off = 0;
    }
    void* p = r.chunks[r.chunk] + r.off;
    r.off += n;
    return p;
  }

  // Gives up the chunks (the engine puts them back in the arena), unless a
  // copy still lives in one: then it keeps them all, and returns none.
  std::vector<char*> forget_pool_room() {
    if (pool_room_.live) return {};
    std::vector<char*> chunks = std::move(pool_room_.chunks);
    pool_room_ = PoolRoom{};
    return chunks;
  }

  // Returns an entry that was never inserted to the free list (a copy in
  // the pool: to its chunk).
  void recycle(Entry* e) {
    if (e->shadow == kShadowInPool) {
      if (--pool_room_.live == 0) pool_room_.chunk = pool_room_.off = 0;
      return;
    }
    Entry*& head = free_[e->bytes];
    e->hnext = head;
    head = e;
    free_bytes_ += e->bytes;
  }

  size_t used_bytes() const { return bytes - free_bytes_; }

  void insert(Entry* e, uint64_t h) {
    if (count_ + 1 > (mask_ + 1)) rehash((mask_ + 1) * 2);
    e->birth = inserts_++;
    Entry*& b = buckets_[h & mask_];
    e->hnext = b;
    b = e;
    count_++;
    lru.push_front(e);
  }

  // Bumped by every erase: an Entry* taken under an earlier generation may dangle.
  uint64_t generation() const { return gen_; }

  // Removes e from the hash, the LRU and its dirty list, and frees it.
  void erase(Entry* e, uint64_t h) {
    gen_++;
    Entry** pp = &buckets_[h & mask_];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    count_--;
    lru.unlink(e);
    mark_clean(e);
    recycle(e);
  }

  // Reads before it writes: a hit on an entry already marked leaves its
  // cache line clean. Unsigned arithmetic: the insert count wraps.
  void touch(Entry* e) {
    if (!e->used && inserts_ - e->birth >= count_ / 16) e->used = 1;
  }

  // Where h's chain starts, for a prefetch ahead of find().
  Entry* const* bucket_of(uint64_t h) const { return &buckets_[h & mask_]; }

  // The CLOCK scan: appends entries to `out`, from the back, until they hold
  // more than `excess` bytes; a used entry met on the way is cleared and
  // moved to the front instead, and so is one being flushed. The victims
  // stay linked (the caller erases them after their write-back). Returns the
  // bytes of the victims, which fall short when entries being flushed hold
  // the rest: the scan meets each entry at most twice (a moved entry comes
  // round again), so one over a stripe whose every entry is being flushed
  // ends. It went round forever, holding the stripe's lock that the
  // flusher needs to clear the marks: every call hung (cache_test.cc).
  size_t pick_victims(size_t excess, std::vector<Entry*>* out) {
    size_t freed = 0;
    Entry* e = lru.back();
    for (size_t seen = 0, most = 2 * lru.size + 1; e && e != &lru.head && freed < excess && seen < most; seen++) {
      Entry* prev = e->lprev;
      if (e->used || e->flushing) {
        e->used = 0;
        lru.unlink(e);
        lru.push_front(e);
      } else {
        out->push_back(e);
        freed += e->bytes;
      }
      e = prev;
    }
    return freed;
  }

  bool is_pending(const Entry* e) const { return e->dirty && e->epoch <= pending_epoch; }

  void mark_clean(Entry* e) {
    if (!e->dirty) return;
    if (is_pending(e))
      pending.unlink(e);
    else
      dirty.unlink(e);
    e->dirty = 0;
    dirty_bytes.store(dirty_bytes.load(std::memory_order_relaxed) - e->bytes, std::memory_order_relaxed);
  }

  // Marks e modified in `epoch` (> pending_epoch: the current epoch).
  void mark_dirty(Entry* e, uint32_t epoch) {
    if (e->dirty && !is_pending(e)) {
      e->epoch = epoch;
      return;
    }
    mark_clean(e);
    e->epoch = epoch;
    e->dirty = 1;
    dirty.push_front(e);
    dirty_bytes.store(dirty_bytes.load(std::memory_order_relaxed) + e->bytes, std::memory_order_relaxed);
  }

  // The prepare boundary: every dirty entry becomes pending.
  void start_pending(uint32_t epoch) {
    pending_epoch = epoch;
    pending.splice(dirty);
  }

  // Drops the copies of `table`'s rows that a failed prepare left on
  // `pending` (the table is being dropped: its rows changed since the last
  // checkpoint are discarded, and its storage may be freed at once).
  void drop_copies(uint32_t table) {
    for (Entry* e = pending.front(); e && e != &pending.head;) {
      Entry* n = e->dnext;
      if (e->shadow && e->table == table) {
        mark_clean(e);
        recycle(e);
      }
      e = n;
    }
  }

  size_t count() const { return count_; }

  void clear() {
    gen_++;
    // Shadows live only on `pending` (left there if a prepare failed).
    for (Entry* e = pending.front(); e && e != &pending.head;) {
      Entry* n = e->dnext;
      if (e->shadow == kShadowInDram) std::free(e);
      e = n;
    }
    pool_room_ = PoolRoom{};
    for (size_t i = 0; i <= mask_; i++) {
      Entry* e = buckets_[i];
      while (e) {
        Entry* n = e->hnext;
        std::free(e);
        e = n;
      }
      buckets_[i] = nullptr;
    }
    for (auto& [sz, head] : free_) {
      while (head) {
        Entry* n = head->hnext;
        std::free(head);
        head = n;
      }
    }
    free_.clear();
    free_bytes_ = 0;
    bytes = (mask_ + 1) * sizeof(Entry*);
    count_ = 0;
    lru.reset();
    dirty.reset();
    pending.reset();
    dirty_bytes.store(0, std::memory_order_relaxed);
  }

  template <typename F>
  void for_each(F f) {
    for (size_t i = 0; i <= mask_; i++)
      for (Entry* e = buckets_[i]; e; e = e->hnext) f(e);
  }

 private:
  void rehash(size_t n) {
    Entry** nb = static_cast<Entry**>(std::calloc(n, sizeof(Entry*)));
    if (!nb) throw std::bad_alloc();
    if (buckets_) {
      for (size_t i = 0; i <= mask_; i++) {
        Entry* e = buckets_[i];
        while (e) {
          Entry* nx = e->hnext;
          const uint64_t h = hash(e->table, e->key);
          e->hnext = nb[h & (n - 1)];
          nb[h & (n - 1)] = e;
          e = nx;
        }
      }
      bytes -= (mask_ + 1) * sizeof(Entry*);
      std::free(buckets_);
    }
    buckets_ = nb;
    mask_ = n - 1;
    bytes += n * sizeof(Entry*);
  }

  Entry** buckets_ = nullptr;
  size_t mask_ = 0;
  size_t count_ = 0;
  uint64_t gen_ = 1;
  uint32_t inserts_ = 0;
  std::map<size_t, Entry*> free_;  // entry size -> recycled entries (linked by hnext)
  size_t free_bytes_ = 0;
  // Chunks of the pool this stripe puts copies in (pool_place), filled in
  // order: the next copy goes at chunks[chunk] + off.
  struct PoolRoom {
    std::vector<char*> chunks;
    size_t chunk = 0, off = 0;
    size_t live = 0;
  } pool_room_;
};

}  // namespace pmemps
