// The data path: rows in the pool's slabs, the cache in front of them, and
// pull / push.
//
// Invariants:
//  * A row has kSlots versions tagged with their epoch; a reader takes the
//    newest live one at its bound (pick), and write_back never overwrites the
//    version the committed or the prepared checkpoint needs, storing the
//    epoch tag last, so a torn write-back is never read after a crash.
//  * Everything a push stores is computed and checked first (phase 1) and
//    every new row is reserved (phase 2) before anything is stored (phase 3):
//    a refused push (non-finite update, full pool) changes nothing.
//  * Per row, the data path makes no virtual call and tests no engine mode:
//    what lies behind the cache (the pool's rows, or nothing in the
//    memory-only reference) is a compile-time Rows policy (PoolRows,
//    MemRows), chosen once per call.
//  * A stripe's cache never holds more than its budget: make_room runs
//    before every entry made (the pool's policy), and a push's copy-on-write
//    copy is made only when it fits.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine_impl.h"
#include "scratch_budget.h"

namespace pmemps {

namespace {

inline uint64_t load_key(const uint8_t* p) {
  uint64_t k;
  std::memcpy(&k, p, 8);  // little-endian host (x86-64, aarch64)
  return k;
}

// Numbers every push of the process (of any engine), so that a thread of a
// push's pool can tell its waits in this push from those of an earlier one.
std::atomic<uint64_t> push_calls{0};

// A row whose update overflowed float32 only because another push of it
// ran at the same time: an element that overflowed is +-FLT_MAX, one with
// no value (NaN: inf - inf inside an optimizer) keeps its value from before.
void saturate_row(float* row, const float* before, uint32_t n) {
  for (uint32_t k = 0; k < n; k++) {
    if (std::isnan(row[k]))
      row[k] = before[k];
    else if (std::isinf(row[k]))
      row[k] = std::copysign(std::numeric_limits<float>::max(), row[k]);
  }
}

void atomic_max(std::atomic<uint64_t>& a, uint64_t v) {
  uint64_t cur = a.load(std::memory_order_relaxed);
  while (v > cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

}  // namespace

// ============================================================== rows

// Slabs are whole pool chunks and grow geometrically (1, 2, 4 .. 32
// chunks, then 32 each), so a small pool is not eaten by one large slab and
// a large table still allocates thousands of rows per libpmemobj call.
void Engine::init_geometry(Table& t) {
  uint64_t first = 0;
  for (uint32_t i = 0; i < kGrowSlabs; i++) {
    t.grow_first[i] = first;
    first += (Pool::kChunk * (1ULL << i) - Pool::kHugeHeader) / t.row_bytes;
  }
  t.grow_end = first;
  t.rows_per_slab = (Pool::kChunk * (1ULL << (kGrowSlabs - 1)) - Pool::kHugeHeader) / t.row_bytes;
}

void Engine::slab_of(const Table& t, uint64_t r, uint64_t* slab, uint64_t* off) const {
  if (r < t.grow_end) {
    uint32_t i = kGrowSlabs - 1;
    while (t.grow_first[i] > r) i--;
    *slab = i;
    *off = r - t.grow_first[i];
  } else {
    *slab = kGrowSlabs + (r - t.grow_end) / t.rows_per_slab;
    *off = (r - t.grow_end) % t.rows_per_slab;
  }
}

uint64_t Engine::slab_bytes(const Table& t, uint64_t slab) const {
  (void)t;
  return Pool::kChunk * (1ULL << std::min<uint64_t>(slab, kGrowSlabs - 1)) - Pool::kHugeHeader;
}

char* Engine::row_ptr(const Table& t, uint64_t ref) const {
  uint64_t slab, off;
  slab_of(t, ref - 1, &slab, &off);
  const uint64_t* top = pool_->at<uint64_t>(t.d->slab_top);
  const uint64_t* chunk = pool_->at<uint64_t>(top[slab / kSlabChunk]);
  return pool_->base() + chunk[slab % kSlabChunk] + off * t.row_bytes;
}

int Engine::pick(const Table& t, char* row, uint64_t bound) const {
  int best = -1;
  uint32_t be = 0;
  for (uint32_t s = 0; s < kSlots; s++) {
    const uint32_t e = __atomic_load_n(&slot_hdr(t, row, s)->epoch, __ATOMIC_ACQUIRE);
    if (e > bound || e <= be || !live(e)) continue;
    be = e;
    best = static_cast<int>(s);
  }
  return best;
}

bool Engine::valid_ref(const Table& t, uint64_t ref, uint64_t key) const {
  if (ref == 0 || ref - 1 >= t.r_next.load(std::memory_order_acquire)) return false;
  uint64_t k;
  std::memcpy(&k, row_ptr(t, ref), 8);
  return k == key;
}

bool Engine::load_row(const Table& t, uint64_t ref, uint64_t key, float* out, uint32_t* step) const {
  if (!valid_ref(t, ref, key)) return false;
  char* row = row_ptr(t, ref);
  const int s = pick(t, row, read_bound_);
  if (s < 0) return false;
  const SlotHdr* h = slot_hdr(t, row, static_cast<uint32_t>(s));
  if (vlog_) {
    std::memcpy(out, record_of(t, h, key) + 1, sizeof(float) * t.row_floats);
  } else {
    std::memcpy(out, h + 1, sizeof(float) * t.row_floats);
  }
  *step = h->step;
  return true;
}

// The slot names the version's record; the record names its row and
// epoch, so a slot that names the wrong record is caught, not read.
const VRecordHdr* Engine::record_of(const Table& t, const SlotHdr* h, uint64_t key) const {
  const LoggedSlot* ls = reinterpret_cast<const LoggedSlot*>(h);
  const VRecordHdr* r = vlog_->read(ls->off);
  if (r->key != key || r->table != t.idx || r->epoch != ls->h.epoch || r->n != t.row_floats)
    fail(Code::Corrupt, "table " + t.name + " key " + std::to_string(key) +
                            ": its version names a log record of another row (damaged pool); check it with `pmemps-check`");
  return r;
}

// Writes the entry's version into a slot that neither the committed nor the
// prepared checkpoint needs. Crash safety: the slot chosen holds nothing a
// restart can read (its version is older than the pinned ones, or from an
// epoch that dies with a crash), so a torn or unpersisted write here is
// harmless, whatever order its bytes reach the media in. In place, the range
// joins the pool's flush set, which prepare and close make durable before
// they publish anything that refers to this version; logged, the version's
// record is in the log they sync, and open replays it into the slot if the
// slot's write did not last (engine_mark.cc). Callers count their write-backs
// (one shared counter bumped per row cost as much as the write on two cores).
uint32_t Engine::choose_slot(const Table& t, char* row, const Entry* e) const {
  const int pc = c_id_ ? pick(t, row, c_epoch_) : -1;
  const int pp = (p_active_ && e->epoch > p_epoch_) ? pick(t, row, p_epoch_) : -1;
  int s = -1;
  for (int i = 0; i < static_cast<int>(kSlots) && s < 0; i++)
    if (i != pc && i != pp && slot_hdr(t, row, i)->epoch == e->epoch) s = i;
  for (int i = 0; i < static_cast<int>(kSlots) && s < 0; i++)
    if (i != pc && i != pp && !live(slot_hdr(t, row, i)->epoch)) s = i;
  uint32_t me = UINT32_MAX;
  if (s < 0) {
    for (int i = 0; i < static_cast<int>(kSlots); i++) {
      if (i == pc || i == pp) continue;
      const uint32_t ep = slot_hdr(t, row, i)->epoch;
      if (ep < me) {
        me = ep;
        s = i;
      }
    }
  }
  return static_cast<uint32_t>(s);
}

void Engine::write_back(Table& t, Entry* e, VLog::Reservation* res) {
  char* row = row_ptr(t, e->ref);
  const uint32_t s = choose_slot(t, row, e);
  // A test holds a checkpoint copy's write-back here, its slot chosen, to
  // show that no other write-back of the row can run meanwhile.
  if (e->shadow) test_hook("writeback.shadow_slot_chosen");
  if (vlog_) {
    // Logged: the values go to the log, the slot gets their record's
    // offset, written once the record is copied and before a sync can count
    // the record (the slots' mark relies on it: engine_mark.cc). The slot's
    // write is lazy: the log, synced before any publish, is its journal.
    struct Slot {
      Engine* en;
      LoggedSlot* at;
      LoggedSlot v;
    } w{this, reinterpret_cast<LoggedSlot*>(slot_hdr(t, row, s)), {{e->epoch, e->step}, 0}};
    vlog_->append(
        e->key, t.idx, e->epoch, e->step, e->data, t.row_floats, res, s + 1,
        [](void* c, uint64_t off) {
          Slot& w = *static_cast<Slot*>(c);
          failpoint("writeback.after_append");
          w.v.off = off;
          w.en->pool_->write_lazy(w.at, &w.v, sizeof w.v);
        },
        &w);
    return;
  }
  // The slot is composed aside and written in one go: on PMEM one run of
  // non-temporal stores, none of them reading the line it replaces.
  thread_local std::vector<char> slot;
  if (slot.size() < t.slot_bytes) slot.resize(t.slot_bytes);
  SlotHdr* c = reinterpret_cast<SlotHdr*>(slot.data());
  c->epoch = e->epoch;
  c->step = e->step;
  std::memcpy(c + 1, e->data, sizeof(float) * t.row_floats);
  pool_->write(slot_hdr(t, row, s), c, sizeof(SlotHdr) + sizeof(float) * t.row_floats);
}

void Engine::write_back_many(Entry* const* es, size_t n, VLog::Reservation* res, bool through_file) {
  if (!vlog_ || n < 2) {
    for (size_t i = 0; i < n; i++) write_back(*tables_[es[i]->table], es[i], res);
    return;
  }
  // Every slot is chosen before any is written, so two entries of one row
  // could choose the same slot (the older version lost): callers pass
  // distinct rows (a flush chunk takes a row once, an eviction group is a
  // stripe's distinct entries), and a repeat falls back to one at a time.
  struct Item {
    LoggedSlot* at;
    LoggedSlot v;
  };
  thread_local std::vector<VLog::Rec> recs;
  thread_local std::vector<Item> items;
  thread_local std::vector<const char*> rows;
  recs.clear();
  items.clear();
  rows.clear();
  for (size_t i = 0; i < n; i++) {
    const Entry* e = es[i];
    Table& t = *tables_[e->table];
    char* row = row_ptr(t, e->ref);
    const uint32_t s = choose_slot(t, row, e);
    if (e->shadow) test_hook("writeback.shadow_slot_chosen");
    recs.push_back({e->key, t.idx, e->epoch, e->step, t.row_floats, s + 1, e->data});
    items.push_back({reinterpret_cast<LoggedSlot*>(slot_hdr(t, row, s)), {{e->epoch, e->step}, 0}});
    rows.push_back(row);
  }
  std::sort(rows.begin(), rows.end());
  if (std::adjacent_find(rows.begin(), rows.end()) != rows.end()) {
    for (size_t i = 0; i < n; i++) write_back(*tables_[es[i]->table], es[i], res);
    return;
  }
  // As write_back's: each slot is written once its record is copied and
  // before a sync can count the record (engine_mark.cc).
  // The checkpoint's flush (through_file) times its slot writes for
  // Stats::prep_slots_us, from the first slot to the last (append_many
  // calls every `then` after all of its writes); a push's evictions read
  // no clock.
  using Clock = std::chrono::steady_clock;
  struct Ctx {
    Engine* en;
    bool timed;
    Clock::time_point first;
  } ctx{this, through_file, {}};
  vlog_->append_many(
      recs.data(), n, res,
      [](void* c, size_t i, uint64_t off) {
        Ctx& x = *static_cast<Ctx*>(c);
        failpoint("writeback.after_append");
        if (x.timed && i == 0) x.first = Clock::now();
        Item& it = items[i];
        it.v.off = off;
        x.en->pool_->write_lazy(it.at, &it.v, sizeof it.v);
      },
      &ctx, through_file);
  if (through_file)
    flush_slot_ns_.fetch_add(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - ctx.first).count()),
                             std::memory_order_relaxed);
}

// Makes room for one entry of n bytes: recycles, else evicts (CLOCK, see
// cache.h) a group (evict_group) below the stripe's share, so write-backs
// come in groups, else frees recycled entries of other sizes.
void Engine::make_room(Stripe& s, size_t n, VLog::Reservation* res) {
  if (s.has_room(n)) return;
  const size_t target = s.budget - evict_group(s.budget);
  std::vector<Entry*> victims;
  if (s.used_bytes() > target) s.pick_victims(s.used_bytes() - target, &victims);
  thread_local std::vector<Entry*> dirty;
  dirty.clear();
  for (Entry* e : victims)
    if (e->dirty) dirty.push_back(e);
  write_back_many(dirty.data(), dirty.size(), res, false);
  if (const uint64_t wrote = dirty.size()) {
    writebacks_.fetch_add(wrote, std::memory_order_relaxed);
    // Durable before the stripe is released: a prepare that finds this
    // stripe without the entry relies on its version being in the pool.
    pool_->drain();
    failpoint("evict.after_write");
  }
  for (Entry* e : victims) s.erase(e, Stripe::hash(e->table, e->key));
  evictions_.fetch_add(victims.size(), std::memory_order_relaxed);
  if (!s.has_room(n)) s.trim_free(n);
}

uint64_t Engine::dirty_log_bytes(bool pending_only) {
  uint64_t need = 0;
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    for (DirtyList* l : {&s.pending, &s.dirty}) {
      if (pending_only && l == &s.dirty) continue;
      for (Entry* e = l->head.dnext; e != &l->head; e = e->dnext) need += VLog::record_bytes(tables_[e->table]->row_floats);
    }
  }
  return need;
}

void Engine::trim_dirty_room() {
  // Every push that dirtied entries counted here has returned or still
  // holds its own room: the sum bounds what dirty_res_ must keep. (A push
  // whose hold ran before this one is seen: dirty_mu_ orders them.)
  uint64_t need = 0;
  for (auto& s : stripes_) need += s.dirty_bytes.load(std::memory_order_relaxed);
  vlog_->trim(dirty_res_, need);
}

void Engine::take_dirty_room(VLog::Reservation& r, uint64_t bytes) {
  if (!vlog_) return;
  {
    std::lock_guard<std::mutex> g(dirty_mu_);
    if (r.bytes < bytes) vlog_->transfer(dirty_res_, r, bytes - r.bytes);
  }
  if (r.bytes < bytes) vlog_->reserve(r, bytes - r.bytes);
}

void Engine::give_back_dirty_room(VLog::Reservation& r) {
  if (!vlog_) return;
  std::lock_guard<std::mutex> g(dirty_mu_);
  vlog_->transfer(r, dirty_res_, r.bytes);
  trim_dirty_room();  // what the rows written back held is free again at once
}

uint64_t Engine::log_bound(size_t rows, uint32_t row_floats, size_t stripes) const {
  // Per stripe hold, make_room evicts at most one group (evict_group) plus
  // one entry beyond what the hold makes (an entry and a
  // copy-on-write copy per row); and only dirty entries are written, which
  // a stripe holds at most its share of, plus the rows the push dirties.
  // A record is never larger than its entry. Each row may also be written
  // back once for lack of room for its copy.
  const uint64_t budget = stripes_[0].budget;
  const uint64_t entry = Stripe::entry_bytes(row_floats);
  const uint64_t evicted =
      std::min(rows * 2 * entry + stripes * (evict_group(budget) + VLog::kSlack), stripes * (budget + VLog::kSlack) + rows * entry);
  return evicted + rows * VLog::record_bytes(row_floats);
}

void Engine::alloc_slab(Table& t) {
  std::lock_guard<TxMutex> g(tx_mu_);
  PTable* d = t.d;
  const uint64_t n = d->slab_count;
  if (n / kSlabChunk >= kSlabTop) fail(Code::OutOfSpace, "table " + t.name + " reached its maximum number of slabs");
  Tx tx(*pool_);
  uint64_t* top = pool_->at<uint64_t>(d->slab_top);
  if (top[n / kSlabChunk] == 0) {
    const uint64_t c = tx.alloc(sizeof(uint64_t) * kSlabChunk, Tx::Fill::Zeroed);
    tx.add(&top[n / kSlabChunk], sizeof(uint64_t));
    top[n / kSlabChunk] = c;
  }
  // Slab memory is neither zeroed nor flushed at the commit: reserve_row
  // initializes each row's key and slot headers, and persists them, before
  // anything can refer to it.
  const uint64_t slab = tx.alloc(slab_bytes(t, n), Tx::Fill::Later);
  uint64_t* chunk = pool_->at<uint64_t>(top[n / kSlabChunk]);
  tx.add(&chunk[n % kSlabChunk], sizeof(uint64_t));
  chunk[n % kSlabChunk] = slab;
  tx.add(d, sizeof(PTable));
  d->slab_count = n + 1;
  d->checksum = Pool::table_sum(d);
  tx.commit();
  failpoint("slab.after_alloc");
}

uint64_t Engine::reserve_row(Table& t, uint64_t key) {
  std::lock_guard<std::mutex> g(t.alloc_mu);
  const uint64_t r = t.r_next.load(std::memory_order_relaxed);
  uint64_t slab, off;
  slab_of(t, r, &slab, &off);
  if (slab >= t.d->slab_count) alloc_slab(t);
  const uint64_t ref = r + 1;
  char* row = row_ptr(t, ref);
  std::memcpy(row, &key, 8);
  for (uint32_t s = 0; s < kSlots; s++) std::memset(slot_hdr(t, row, s), 0, vlog_ ? sizeof(LoggedSlot) : sizeof(SlotHdr));
  pool_->add_range(row, t.row_bytes);
  t.r_next.store(r + 1, std::memory_order_release);
  return ref;
}

// ========================================================= pull / push

namespace {

// A call's working arrays, kept per thread between calls: a batch's dozen
// arrays were allocated (and zeroed) anew by every call. Up to
// kKeepScratchBytes stay allocated per thread; a larger call's are released
// when it ends, so the process's memory outside the cache stays bounded.
struct CallScratch {
  std::vector<uint64_t> hs, uk, refs;
  std::vector<uint32_t> order, slots;
  std::vector<const float*> gp;
  std::vector<Entry*> found;
  std::vector<uint8_t> missing;
  std::vector<float> acc, grads, rows;
  std::vector<uint32_t> steps;
  size_t bytes() const {
    return 8 * (hs.capacity() + uk.capacity() + refs.capacity() + gp.capacity() + found.capacity()) +
           4 * (order.capacity() + slots.capacity() + acc.capacity() + grads.capacity() + rows.capacity() + steps.capacity()) + missing.capacity();
  }
};
constexpr size_t kKeepScratchBytes = 8u << 20;

// What a call's arrays come to beyond the per-thread ones (ScratchBudget):
// a pull's hashes, order and entries; a push's distinct keys, hashes,
// gradient pointers, order, records, entries, flags and slot table, its
// summed duplicates (and a copy of unaligned gradients), and phase 1's
// results, which are capped.
size_t pull_scratch_bytes(size_t n) { return n * (sizeof(uint64_t) + sizeof(uint32_t) + sizeof(Entry*)); }
size_t push_scratch_bytes(size_t n, uint32_t dim, bool unaligned, size_t results_cap) {
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  const size_t per_key = 3 * sizeof(uint64_t) + sizeof(uint32_t) + sizeof(uint64_t) + sizeof(Entry*) + 1;
  // Phase 1's results: at most results_cap of rows, and a step for each.
  const size_t results = results_cap + sizeof(uint32_t) * std::min(n, results_cap / sizeof(float));
  return sizeof(uint32_t) * cap + n * per_key + sizeof(float) * n * dim * (unaligned ? 2 : 1) + results;
}

CallScratch& call_scratch() {
  thread_local CallScratch s;
  return s;
}

struct ScratchRelease {
  ~ScratchRelease() {
    CallScratch& s = call_scratch();
    if (s.bytes() > kKeepScratchBytes) s = CallScratch();
  }
};

// n elements of v, grown (never shrunk) as needed; contents are whatever the
// last call left.
template <typename T>
T* grab(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// One row's buffer per thread for rows computed outside the call's arrays.
float* row_tmp(uint32_t floats) {
  thread_local std::vector<float> v;
  return grab(v, floats);
}

// Keys ahead of the one being read whose bucket, then entry, are prefetched:
// a cached row costs a few dependent cache misses (bucket, entry header,
// data), so issuing the next rows' loads early overlaps them.
constexpr size_t kPrefetchBucket = 16;
constexpr size_t kPrefetchEntry = 8;
constexpr size_t kPrefetchSlots = 4;

inline void prefetch_lines(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
}

// Groups a batch by stripe (counting sort on the hash's top bits): counts
// gets each stripe's range in order[], kStripes + 1 entries; busy the
// stripes with work, whose number it returns.
template <int Bits>
size_t by_stripe(const uint64_t* hs, size_t n, uint32_t* order, size_t* counts, int* busy) {
  constexpr int kS = 1 << Bits;
  std::fill(counts, counts + kS + 1, size_t{0});
  for (size_t i = 0; i < n; i++) counts[(hs[i] >> (64 - Bits)) + 1]++;
  for (int s = 0; s < kS; s++) counts[s + 1] += counts[s];
  size_t pos[kS];
  std::copy(counts, counts + kS, pos);
  for (size_t i = 0; i < n; i++) order[pos[hs[i] >> (64 - Bits)]++] = static_cast<uint32_t>(i);
  size_t nbusy = 0;
  for (int s = 0; s < kS; s++)
    if (counts[s] != counts[s + 1]) busy[nbusy++] = s;
  return nbusy;
}

}  // namespace

// The pool behind the cache: a row the cache lacks is read from its slot
// through the table's index, a new key gets a row reserved, and entries are
// made only after make_room.
struct Engine::PoolRows {
  Engine& en;

  // pull's miss: the row's stored version into out (dim floats), cached
  // when there is room; false when it has none (never pushed, or only in a
  // dead epoch). il: the index lock, taken on the first miss and held for
  // the rest of the stripe. Out of line: inlined, it cost the loop of cache
  // hits around it 4% more instructions.
  __attribute__((noinline)) bool stored(Stripe& s, const Table& t, uint64_t key, uint64_t h, std::shared_lock<RwLock>& il, float* out) {
    if (!il.owns_lock()) il = std::shared_lock<RwLock>(t.index->mu());
    const uint64_t ref = t.index->lookup(key);
    if (!ref) return false;
    try {
      en.make_room(s, Stripe::entry_bytes(t.row_floats), nullptr);
    } catch (const Error& e) {
      // A logged pool whose log has no room to write evicted rows back: the
      // row is served from the pool without caching it (a victim written
      // back before the failure stays dirty, so nothing is lost).
      if (e.code() != Code::OutOfSpace) throw;
      float* tmp = row_tmp(t.row_floats);
      uint32_t step;
      if (!en.load_row(t, ref, key, tmp, &step)) return false;
      std::memcpy(out, tmp, sizeof(float) * t.dim);
      return true;
    }
    Entry* ne = s.make(t.idx, key, t.row_floats);
    if (!en.load_row(t, ref, key, ne->data, &ne->step)) {
      s.recycle(ne);
      return false;
    }
    ne->ref = ref;
    s.insert(ne, h);
    std::memcpy(out, ne->data, sizeof(float) * t.dim);
    return true;
  }
  // push's phase 1 miss: the row's stored version into out, its record into
  // *ref; *missing when the key has no record yet (phase 2 reserves one).
  bool read(const Table& t, uint64_t key, std::shared_lock<RwLock>& il, float* out, uint32_t* step, uint64_t* ref, uint8_t* missing) {
    if (!il.owns_lock()) il = std::shared_lock<RwLock>(t.index->mu());
    const uint64_t r = t.index->lookup(key);
    if (!en.valid_ref(t, r, key)) {
      *missing = 1;
      return false;
    }
    *ref = r;
    return en.load_row(t, r, key, out, step);
  }
  void reserve(Table& t, size_t u, const uint64_t* uk, const uint8_t* missing, uint64_t* refs) {
    std::unique_lock<RwLock> il;
    for (size_t i = 0; i < u; i++) {
      if (!missing[i]) continue;
      if (!il.owns_lock()) il = std::unique_lock<RwLock>(t.index->mu());
      const uint64_t r = t.index->lookup(uk[i]);
      if (en.valid_ref(t, r, uk[i])) {
        refs[i] = r;
        continue;
      }
      const uint64_t nr = en.reserve_row(t, uk[i]);
      t.index->upsert(uk[i], nr);
      refs[i] = nr;
    }
    // The new rows' headers and index slots, before anything refers to them.
    if (il.owns_lock()) en.pool_->drain();
  }
  void make_room(Stripe& s, size_t bytes, VLog::Reservation* res) { en.make_room(s, bytes, res); }
  // Log room for the push's write-backs (logged pools); released by the
  // caller's LogHold.
  void reserve_log(VLog::Reservation& res, size_t rows, uint32_t row_floats, size_t stripes) {
    if (en.vlog_) en.vlog_->reserve(res, en.log_bound(rows, row_floats, stripes));
  }
  // push's phase 3, a row phase 1 did not compute: its stored version.
  bool reload(const Table& t, uint64_t ref, uint64_t key, float* out, uint32_t* step) {
    std::shared_lock<RwLock> il(t.index->mu());
    return en.load_row(t, ref, key, out, step);
  }
  // r_next already counts the rows reserve() made.
  void created(Table&, uint64_t) {}
};

// The memory-only reference: nothing behind the cache, whose budget is
// unbounded, so every row ever pushed is an entry and a miss is a row never
// pushed. r_next counts the entries made (the table's row count).
struct Engine::MemRows {
  bool stored(Stripe&, const Table&, uint64_t, uint64_t, std::shared_lock<RwLock>&, float*) { return false; }
  bool read(const Table&, uint64_t, std::shared_lock<RwLock>&, float*, uint32_t*, uint64_t*, uint8_t*) { return false; }
  void reserve(Table&, size_t, const uint64_t*, const uint8_t*, uint64_t*) {}
  void make_room(Stripe&, size_t, VLog::Reservation*) {}
  void reserve_log(VLog::Reservation&, size_t, uint32_t, size_t) {}
  bool reload(const Table&, uint64_t, uint64_t, float*, uint32_t*) { return false; }
  void created(Table& t, uint64_t n) { t.r_next.fetch_add(n, std::memory_order_relaxed); }
};

void Engine::pull(const std::string& name, const uint8_t* keys, size_t n, float* out, uint32_t expect_dim) {
  if (mem_)
    pull_with(MemRows{}, name, keys, n, out, expect_dim);
  else
    pull_with(PoolRows{*this}, name, keys, n, out, expect_dim);
}

void Engine::push(const std::string& name, const uint8_t* keys, size_t n, const uint8_t* grads_bytes, uint32_t expect_dim) {
  if (mem_)
    push_with(MemRows{}, name, keys, n, grads_bytes, expect_dim);
  else
    push_with(PoolRows{*this}, name, keys, n, grads_bytes, expect_dim);
}

template <class Rows>
void Engine::pull_with(Rows rows, const std::string& name, const uint8_t* keys, size_t n, float* out, uint32_t expect_dim) {
  ScratchHold scratch_hold(pull_scratch_bytes(n), kKeepScratchBytes);  // before any lock
  std::shared_lock<RwLock> el(epoch_mu_);
  Table* t = find_table(name);
  if (t->dim != expect_dim) fail(Code::NotFound, "table \"" + name + "\" changed while the pull was queued");
  const uint32_t dim = t->dim;
  ScratchRelease release;
  CallScratch& sc = call_scratch();
  uint64_t* hs = grab(sc.hs, n);
  uint32_t* order = grab(sc.order, n);
  for (size_t i = 0; i < n; i++) hs[i] = Stripe::hash(t->idx, load_key(keys + 8 * i));
  size_t counts[kStripes + 1];
  int busy[kStripes];
  const size_t nbusy = by_stripe<kStripeBits>(hs, n, order, counts, busy);
  std::atomic<uint64_t> hits{0}, misses{0};
  Entry** ents = grab(sc.found, n);
  helpers_->run(nbusy, [&](size_t b) {
    const int si = busy[b];
    Stripe& s = stripes_[si];
    uint64_t hit = 0, miss = 0;
    std::lock_guard<std::mutex> g(s.mu);
    std::shared_lock<RwLock> il;
    const size_t begin = counts[si], end = counts[si + 1];
    // Two passes: the first finds the entries, with loads issued a few keys
    // ahead (bucket, then the entry's first line); the second copies the
    // rows. Prefetching each row's lines a few keys ahead in the second pass
    // (36 instructions a row) made no difference in time in four A/B runs of
    // bench/one-batch.ts (without it: 0.96-1.01x the rows/s at one call in
    // flight, 0.93-1.02x at eight), so it is not done. A push's prefetch of
    // its entries does count: without it a push took 1.2-1.6x the CPU.
    for (size_t j = begin; j < end; j++) {
      if (j + kPrefetchBucket < end) __builtin_prefetch(s.bucket_of(hs[order[j + kPrefetchBucket]]));
      if (j + kPrefetchEntry < end) {
        const Entry* pe = *s.bucket_of(hs[order[j + kPrefetchEntry]]);
        if (pe) __builtin_prefetch(pe);
      }
      const uint32_t i = order[j];
      ents[j] = s.find(t->idx, load_key(keys + 8 * i), hs[i]);
    }
    // A miss below may evict (then entries of the first pass may dangle)
    // or insert (a key repeated in the batch is then cached): both are
    // looked up again.
    const uint64_t gen = s.generation();
    for (size_t j = begin; j < end; j++) {
      const uint32_t i = order[j];
      Entry* e = ents[j];
      if (!e || s.generation() != gen) e = s.find(t->idx, load_key(keys + 8 * i), hs[i]);
      if (e) {
        std::memcpy(out + static_cast<size_t>(i) * dim, e->data, sizeof(float) * dim);
        s.touch(e);
        hit++;
        continue;
      }
      const uint64_t key = load_key(keys + 8 * i);
      miss++;
      if (!rows.stored(s, *t, key, hs[i], il, out + static_cast<size_t>(i) * dim)) {
        // Never pushed (or only in a dead epoch): the initial row, stored nowhere.
        float* tmp = row_tmp(t->row_floats);
        init_row(t->init, t->opt, key, dim, tmp);
        std::memcpy(out + static_cast<size_t>(i) * dim, tmp, sizeof(float) * dim);
      }
    }
    hits.fetch_add(hit, std::memory_order_relaxed);
    misses.fetch_add(miss, std::memory_order_relaxed);
  });
  hits_.fetch_add(hits.load(), std::memory_order_relaxed);
  misses_.fetch_add(misses.load(), std::memory_order_relaxed);
}

template <class Rows>
void Engine::push_with(Rows rows, const std::string& name, const uint8_t* keys, size_t n, const uint8_t* grads_bytes, uint32_t expect_dim) {
  // Before any lock, and before the push counts as running for the flusher.
  ScratchHold scratch_hold(push_scratch_bytes(n, expect_dim, reinterpret_cast<uintptr_t>(grads_bytes) % alignof(float) != 0, kPushScratchBytes),
                           kKeepScratchBytes);
  const uint64_t t0 = now_us();
  // Seen by the checkpoint's flusher, which stands aside while pushes run.
  pushes_running_.fetch_add(1, std::memory_order_relaxed);
  struct Running {
    std::atomic<int>& n;
    ~Running() { n.fetch_sub(1, std::memory_order_release); }
  } running{pushes_running_};
  std::shared_lock<RwLock> el(epoch_mu_);
  const uint64_t entry_wait = now_us() - t0;  // a boundary holds epoch_mu_
  // What the push waited on the checkpoint in its stores, as the push sees
  // it: its threads work on their stripes at once, so the longest any one
  // of them spent waiting, not their sum (which counted a push whose two
  // threads each copied 2,000 rows in 0.4 ms as a wait of 0.8).
  std::atomic<uint64_t> thread_wait{0};
  const uint64_t call = push_calls.fetch_add(1, std::memory_order_relaxed) + 1;
  auto waited = [&](uint64_t us) {
    if (!us) return;
    // This thread's waits in this push so far (a thread of the pool may
    // serve several of its stripes, one after another, in both phases).
    thread_local uint64_t tl_call = 0, tl_wait = 0;
    if (tl_call != call) tl_call = call, tl_wait = 0;
    tl_wait += us;
    atomic_max(thread_wait, tl_wait);
  };
  // A stripe whose lock is taken waits until this thread has done its
  // other stripes (Helpers::run_deferrable): held by the idle-priority
  // flusher, preempted (a push's own thread woke on its core), it is
  // released only once a core is free, and a thread that blocked at once
  // kept the push 0.7-1.4 ms (10M rows, /dev/shm) while the push's other
  // thread still worked. False: put off; else *wait_us is the time blocked.
  auto lock_stripe = [](Stripe& s, bool must, std::unique_lock<std::mutex>& sg, uint64_t* wait_us) {
    sg = std::unique_lock<std::mutex>(s.mu, std::try_to_lock);
    *wait_us = 0;
    if (sg.owns_lock()) return true;
    if (!must) return false;
    const uint64_t l0 = now_us();
    sg.lock();
    *wait_us = now_us() - l0;
    return true;
  };
  std::atomic<bool> during_ckpt{ckpt_active_.load(std::memory_order_relaxed)};
  Table* t = find_table(name);
  if (pushes_blocked_)
    fail(Code::FailedPrecondition,
         "checkpoint " + id_str(p_id_) + " was prepared before the restart and is unresolved; commit or abort it (restore) before pushing");
  if (t->dim != expect_dim) fail(Code::NotFound, "table \"" + name + "\" changed while the push was queued");
  const uint32_t dim = t->dim;
  const uint32_t rf = t->row_floats;
  ScratchRelease release;
  CallScratch& sc = call_scratch();

  // The caller's gradients are read in place when aligned for floats.
  const float* grads = reinterpret_cast<const float*>(grads_bytes);
  if (reinterpret_cast<uintptr_t>(grads_bytes) % alignof(float)) {
    float* g = grab(sc.grads, n * dim);
    std::memcpy(g, grads_bytes, sizeof(float) * n * dim);
    grads = g;
  }

  // Distinct keys in the order they first appear, found through an
  // open-addressing table on the stripe hash (no sort); the gradients of a
  // key's duplicates are summed in the order they appear, into `acc`.
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  uint32_t* slots = grab(sc.slots, cap);
  std::fill(slots, slots + cap, 0u);
  uint64_t* uk = grab(sc.uk, n);
  uint64_t* hs = grab(sc.hs, n);
  const float** gp = grab(sc.gp, n);
  float* acc = grab(sc.acc, n * dim);
  size_t u = 0, nacc = 0;
  for (size_t i = 0; i < n; i++) {
    const uint64_t key = load_key(keys + 8 * i);
    const uint64_t h = Stripe::hash(t->idx, key);
    size_t pos = h & (cap - 1);
    while (slots[pos] && uk[slots[pos] - 1] != key) pos = (pos + 1) & (cap - 1);
    const float* gi = grads + i * dim;
    if (!slots[pos]) {
      slots[pos] = static_cast<uint32_t>(++u);
      uk[u - 1] = key;
      hs[u - 1] = h;
      gp[u - 1] = gi;
      continue;
    }
    const size_t j = slots[pos] - 1;
    float* a = const_cast<float*>(gp[j]);
    const uintptr_t at = reinterpret_cast<uintptr_t>(gp[j]);
    if (at < reinterpret_cast<uintptr_t>(acc) || at >= reinterpret_cast<uintptr_t>(acc + nacc * dim)) {
      a = acc + nacc++ * dim;
      std::memcpy(a, gp[j], sizeof(float) * dim);
      gp[j] = a;
    }
    for (uint32_t d = 0; d < dim; d++) a[d] += gi[d];
  }
  // Checked after the sum: finite duplicates may add up to infinity.
  for (size_t i = 0; i < u; i++) {
    const float* gi = gp[i];
    if (row_finite(gi, dim)) continue;
    uint32_t d = 0;
    while (std::isfinite(gi[d])) d++;
    fail(Code::InvalidArgument, "gradient of key " + std::to_string(uk[i]) + " element " + std::to_string(d) + " is " +
                                    (std::isnan(gi[d]) ? "NaN" : "infinite") +
                                    " (after summing the gradients of its duplicates in the batch); the whole batch was refused");
  }
  uint32_t* order = grab(sc.order, u);
  size_t counts[kStripes + 1];
  int busy[kStripes];
  const size_t nbusy = by_stripe<kStripeBits>(hs, u, order, counts, busy);

  uint64_t* refs = grab(sc.refs, u);
  // Entries found in phase 1 are reused in phase 3 when their stripe has
  // erased nothing in between (its generation is unchanged).
  Entry** found = grab(sc.found, u);
  uint8_t* missing = grab(sc.missing, u);
  uint64_t gen[kStripes] = {0};
  uint64_t seen[kStripes] = {0};

  // Phase 1: every update computed and checked before any is stored, so an
  // update that would make a row non-finite refuses the whole batch and
  // changes nothing. A row's current value comes from the cache, else from
  // its pool record (the index names it), else from the initializer; a key
  // with no record yet is marked missing. Results are kept (up to
  // kPushScratchBytes) for phase 3. Stripes run in parallel (Helpers).
  const size_t scratch_rows = std::min(u, std::max<size_t>(1, kPushScratchBytes / (sizeof(float) * rf)));
  float* scratch = grab(sc.rows, scratch_rows * rf);
  uint32_t* scratch_step = grab(sc.steps, scratch_rows);
  const size_t ebytes = Stripe::entry_bytes(rf);
  helpers_->run_deferrable(nbusy, [&](size_t b, bool must) {
    const int si = busy[b];
    Stripe& s = stripes_[si];
    std::unique_lock<std::mutex> sg;
    uint64_t lock_us;
    if (!lock_stripe(s, must, sg, &lock_us)) return false;
    waited(lock_us);  // behind the flusher, during a prepare
    gen[si] = s.generation();
    seen[si] = s.applies;
    std::shared_lock<RwLock> il;
    const size_t end = counts[si + 1];
    for (size_t j = counts[si]; j < end; j++) {
      if (j + kPrefetchBucket < end) __builtin_prefetch(s.bucket_of(hs[order[j + kPrefetchBucket]]));
      if (j + kPrefetchEntry < end) {
        const Entry* pe = *s.bucket_of(hs[order[j + kPrefetchEntry]]);
        if (pe) prefetch_lines(pe, ebytes);
      }
      const uint32_t i = order[j];
      Entry* e = s.find(t->idx, uk[i], hs[i]);
      found[i] = e;
      missing[i] = 0;
      refs[i] = 0;
      float* out = i < scratch_rows ? scratch + static_cast<size_t>(i) * rf : row_tmp(rf);
      uint32_t step = 0;
      if (e) {
        std::memcpy(out, e->data, sizeof(float) * rf);
        step = e->step;
        refs[i] = e->ref;
      } else {
        const bool loaded = rows.read(*t, uk[i], il, out, &step, &refs[i], &missing[i]);
        if (!loaded) init_row(t->init, t->opt, uk[i], dim, out), step = 0;
      }
      apply_update(t->opt, dim, out, &step, gp[i]);
      if (!row_finite(out, rf))
        fail(Code::InvalidArgument, "the update of key " + std::to_string(uk[i]) +
                                        " would make its row or optimizer state non-finite (gradient or learning rate too large for float32); "
                                        "the whole batch was refused and nothing changed");
      if (i < scratch_rows) scratch_step[i] = step;
    }
    return true;
  });

  test_hook("push.computed");  // a test holds pushes here, so that several compute from one value

  // Phase 2: log room for the write-backs phase 3 may make (logged pools),
  // then a row and an index slot for every new key, before any update is
  // stored, so a full pool refuses the whole push and changes nothing.
  VLog::Reservation res;
  LogHold hold{vlog_.get(), res};
  rows.reserve_log(res, u, rf, nbusy);
  // And log room for writing back the rows this push leaves dirty, kept
  // after it returns (an entry and its copy-on-write copy per row, at most,
  // and never more than the cache holds): a clean close or a prepare must
  // never need room for acknowledged rows that a full pool no longer has.
  // However the push ends, the room joins the dirty rows' (trimmed to what
  // they need).
  VLog::Reservation kept;
  // (Per stripe, an entry may be made with no victim found yet: slack.)
  if (vlog_) vlog_->reserve(kept, std::min<uint64_t>(2 * u * Stripe::entry_bytes(rf), opts_.cache_bytes + kStripes * 64 * Stripe::entry_bytes(rf)));
  DirtyRoomBack keep_back{*this, kept};
  rows.reserve(*t, u, uk, missing, refs);

  // Phase 3: store the updates in the cache, stripe by stripe (in
  // parallel). A stripe that no other push changed since phase 1 takes the
  // results computed there; otherwise each row is computed again from its
  // current value.
  const uint32_t epoch = static_cast<uint32_t>(cur_epoch_);
  std::atomic<uint64_t> created{0};
  helpers_->run_deferrable(nbusy, [&](size_t b, bool must) {
    const int si = busy[b];
    Stripe& s = stripes_[si];
    std::unique_lock<std::mutex> sg;
    uint64_t wait;
    if (!lock_stripe(s, must, sg, &wait)) return false;
    const bool same = s.applies == seen[si];
    uint64_t made = 0, saturated = 0;
    uint64_t cow_wrote = 0, in_pool = 0;
    // Copy-on-write for a running prepare: a pending row's checkpoint
    // version is still only in DRAM. It is copied aside for the flusher: in
    // DRAM, counted in the budget, which the flusher keeps room in (see
    // flush_step), else on PMEM in a chunk of the pool's free space
    // (copy_arena.h); only when neither has room is it written to its pool
    // slot first (a page walk a row on a large pool: ~4x a copy's time).
    auto preserve = [&](Entry* e) {
      void* place = nullptr;
      if (s.has_room(e->bytes)) {
        s.shadow_of(e, rf);
      } else if (copies_ && (place = s.pool_place(e->bytes, CopyArena::kChunk, [&] { return copies_->take(); }))) {
        s.shadow_of(e, rf, place);
        in_pool++;
      } else {
        write_back(*t, e, &res);
        s.mark_clean(e);
        cow_wrote++;
      }
    };
    const size_t end = counts[si + 1];
    if (!s.pending.empty() && s.generation() == gen[si]) {
      // The rows phase 1 found are preserved first, in one timed loop: a
      // clock read per row cost a tenth of a push whose 4,096 rows were all
      // pending. Each is marked dirty in the current epoch at once: left
      // clean until its update below, an eviction in between (making room
      // for a new row) would drop it, and the row reloaded from the pool
      // would be older than the version its copy holds (the engine tests'
      // pushes during a prepare lose ~80 rows so). Preserving a row that is
      // then left as it was (a non-finite update) only costs a write-back.
      const uint64_t w0 = now_us();
      bool any = false;
      for (size_t j = counts[si]; j < end; j++) {
        if (j + kPrefetchSlots < end) {
          // A pending row that finds no room for its copy is written back,
          // which reads its pool slots' headers: cold, one per slot (with
          // the arena, only once it is used up: not worth a prefetch).
          const Entry* pe = found[order[j + kPrefetchSlots]];
          if (!copies_ && pe && pe->ref && s.is_pending(pe) && !s.has_room(pe->bytes)) prefetch_slots(*t, pe->ref);
        }
        Entry* e = found[order[j]];
        if (e && s.is_pending(e)) {
          preserve(e);
          s.mark_dirty(e, epoch);
          any = true;
        }
      }
      if (any) {
        wait += now_us() - w0;
        during_ckpt.store(true, std::memory_order_relaxed);
      }
    }
    for (size_t j = counts[si]; j < end; j++) {
      const uint32_t i = order[j];
      if (j + kPrefetchEntry < end && found[order[j + kPrefetchEntry]] && s.generation() == gen[si])
        prefetch_lines(found[order[j + kPrefetchEntry]], ebytes);
      // Checked per row: making room for a new entry below may evict others.
      Entry* e = (found[i] && s.generation() == gen[si]) ? found[i] : s.find(t->idx, uk[i], hs[i]);
      const bool computed = same && i < scratch_rows;
      if (!e) {
        rows.make_room(s, Stripe::entry_bytes(rf), &res);
        e = s.make(t->idx, uk[i], rf);
        if (!computed) {
          // Its current value, for the update below (phase 1's result, when
          // it holds, replaces the whole row anyway).
          const bool loaded = rows.reload(*t, refs[i], uk[i], e->data, &e->step);
          if (!loaded) init_row(t->init, t->opt, uk[i], dim, e->data), e->step = 0;
        }
        e->ref = refs[i];
        s.insert(e, hs[i]);
        made++;
      }
      const float* result;
      uint32_t step;
      if (computed) {
        result = scratch + static_cast<size_t>(i) * rf;
        step = scratch_step[i];
      } else {
        float* tmp = row_tmp(rf);
        std::memcpy(tmp, e->data, sizeof(float) * rf);
        step = e->step;
        apply_update(t->opt, dim, tmp, &step, gp[i]);
        // Only another push's update of the row in between can make this
        // differ from phase 1's checked result: two pushes that fit alone,
        // overflowing float32 together. The push was checked and will be
        // acknowledged, so it is applied whole, saturated (saturate_row);
        // skipping the row applied the rest of the batch and not it.
        // Refusing would need the push's stripes held from this check to
        // its last store: pushes with 8 in flight at 0.49-0.63x.
        if (!row_finite(tmp, rf)) {
          saturate_row(tmp, e->data, rf);
          saturated++;
        }
        result = tmp;
      }
      if (s.is_pending(e)) {
        // A row the loop above did not see: phase 1 did not find it, or
        // the stripe lost an entry since (that loop then did not run).
        const uint64_t w0 = now_us();
        preserve(e);
        wait += now_us() - w0;
        during_ckpt.store(true, std::memory_order_relaxed);
      }
      std::memcpy(e->data, result, sizeof(float) * rf);
      e->step = step;
      s.mark_dirty(e, epoch);
      s.touch(e);
    }
    if (cow_wrote) {
      pool_->drain();  // before the flusher can find the stripe without them
      writebacks_.fetch_add(cow_wrote, std::memory_order_relaxed);
    }
    if (in_pool) copies_in_pool_.fetch_add(in_pool, std::memory_order_relaxed);
    s.applies++;
    waited(wait);
    created.fetch_add(made, std::memory_order_relaxed);
    if (saturated) rows_saturated_.fetch_add(saturated, std::memory_order_relaxed);
    return true;
  });
  rows.created(*t, created.load());
  if (during_ckpt.load() || ckpt_active_.load(std::memory_order_relaxed)) atomic_max(max_wait_us_, entry_wait + thread_wait.load());
  failpoint("push.after_apply");
}

void Engine::drop_cache() {
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    s.clear();
  }
  if (copies_) copies_->release_all();  // no copy lives in the pool now
}

void Engine::purge_cache(uint32_t table) {
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    std::vector<Entry*> gone;
    s.for_each([&](Entry* e) {
      if (e->table == table) gone.push_back(e);
    });
    for (Entry* e : gone) s.erase(e, Stripe::hash(table, e->key));
    s.drop_copies(table);
  }
}

Stats Engine::stats() {
  std::shared_lock<RwLock> el(epoch_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  Stats st{};
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    st.cache_bytes += s.bytes;
    st.cache_rows += s.count();
  }
  st.hits = hits_;
  st.misses = misses_;
  st.evictions = evictions_;
  st.writebacks = writebacks_;
  st.committed = c_id_;
  st.prepared = p_active_ ? p_id_ : 0;
  st.last_id = last_id_;
  st.epoch = cur_epoch_;
  st.max_push_wait_us = max_wait_us_;
  st.copies_in_pool = copies_in_pool_;
  st.rows_saturated = rows_saturated_;
  st.copy_room = copies_ ? copies_->held_bytes() : 0;
  st.prep_flush_us = prep_us_[0];
  st.prep_slots_us = prep_us_[1];
  st.prep_log_sync_us = prep_us_[2];
  st.prep_persist_us = prep_us_[3];
  st.prep_publish_us = prep_us_[4];
  st.prep_rows = prep_rows_;
  store_->stats(st);  // the cache's budget and the pool's figures: 0 in memory mode
  return st;
}

void Engine::stats_pool(Stats& st) {
  st.cache_budget = opts_.cache_bytes;
  st.flushes = pool_->flush_calls();
  st.pool_bytes = pool_->size();
  if (vlog_) st.log_bytes = vlog_->segments() * vlog_->seg_bytes();
  st.log_freed = log_freed_.load();
  st.log_copied = log_copied_.load();
  st.log_warmed = pool_->warmed_bytes();
  std::lock_guard<TxMutex> g(tx_mu_);
  st.pool_used = pool_->used_bytes();  // the heap walk, not beside the copy arena's allocations
  const PTable* ts = pool_->at<PTable>(root_->tables_off);
  for (uint32_t i = 0; i < kMaxTables; i++) st.garbage_tables += ts[i].state == kTableGarbage;
}

}  // namespace pmemps
