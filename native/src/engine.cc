#include "engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <thread>

#include "common.h"

namespace pmemps {

namespace {

inline uint64_t load_key(const uint8_t* p) {
  uint64_t k;
  std::memcpy(&k, p, 8);  // little-endian host (x86-64, aarch64)
  return k;
}

inline uint64_t now_us() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

void atomic_max(std::atomic<uint64_t>& a, uint64_t v) {
  uint64_t cur = a.load(std::memory_order_relaxed);
  while (v > cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed)) {
  }
}

[[noreturn]] void fail(Code c, const std::string& m) { throw Error(c, m); }

constexpr uint64_t kMaxEpoch = 0xfffffff0ULL;  // slot headers hold 32-bit epochs
constexpr uint32_t kFlushChunk = 32;           // rows per stripe-lock hold in the flush: pushes interleave

const char* opt_name(OptType t) {
  static const char* n[] = {"sgd", "adagrad", "adam", "rmsprop", "ftrl"};
  return n[static_cast<uint32_t>(t)];
}

std::string id_str(uint64_t id) { return std::to_string(id); }

}  // namespace

// ================================================================= open

Engine::Engine(const EngineOptions& o) : opts_(o), mem_(o.memory_only) {
  // One helper per further core, up to 3: one batch in flight uses them
  // (parallel.h); with many in flight the callers keep every core busy.
  // PMEMPS_ENGINE_HELPERS=n overrides the count (0: each call on its own
  // thread, as bench/push-instructions.ts counts instructions).
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  unsigned helpers = std::min(hw, 4u) - 1;
  if (const char* v = std::getenv("PMEMPS_ENGINE_HELPERS")) helpers = static_cast<unsigned>(std::min(std::strtoul(v, nullptr, 10), 64ul));
  helpers_ = std::make_unique<Helpers>(helpers);
  tables_.resize(kMaxTables);
  const size_t per = mem_ ? SIZE_MAX : static_cast<size_t>(o.cache_bytes / kStripes);
  for (auto& s : stripes_) s.budget = per;
  if (mem_) {
    info_.created = true;
    return;
  }
  open_pool();
}

// Without close() the pool is left as after a crash: the next open comes
// back at the last committed checkpoint, which is the safe default.
Engine::~Engine() = default;

void Engine::init_root() {
  std::lock_guard<std::mutex> g(tx_mu_);
  Tx tx(*pool_);
  tx.add(root_, sizeof(PRoot));
  std::memset(root_, 0, sizeof(PRoot));
  root_->magic = kMagic;
  root_->version = kLayoutVersion;
  root_->next_epoch = 1;
  root_->tables_off = tx.alloc(sizeof(PTable) * kMaxTables, true);
  root_->dead_cap = 64;
  root_->dead_off = tx.alloc(sizeof(DeadRange) * root_->dead_cap, true);
  persist_root(tx);
  tx.commit();
}

uint64_t Engine::usable(uint64_t off) const { return pmemobj_alloc_usable_size(pool_->oid(off)); }

void Engine::validate_root() {
  const std::string& p = pool_->path();
  if (root_->magic != kMagic) fail(Code::Corrupt, "pool " + p + " is not a pmemps pool or its root is damaged");
  if (root_->version != kLayoutVersion)
    fail(Code::Incompatible,
         "pool " + p + " has layout version " + std::to_string(root_->version) + "; this build reads version " + std::to_string(kLayoutVersion));
  if (root_->checksum != Pool::root_sum(root_)) fail(Code::Corrupt, "pool " + p + ": root metadata checksum mismatch (damaged pool)");
  PTable* ts = pool_->at<PTable>(root_->tables_off);
  for (uint32_t i = 0; i < kMaxTables; i++) {
    if (ts[i].state != 0 && ts[i].checksum != Pool::table_sum(&ts[i]))
      fail(Code::Corrupt, "pool " + p + ": metadata checksum mismatch in table slot " + std::to_string(i) + " (damaged pool)");
  }
  for (uint64_t off : {root_->c_rec, root_->p_rec}) {
    if (!off) continue;
    ckpt_at(off);  // verifies bounds and checksum
  }
  const uint64_t size = pool_->size();
  auto in_pool = [&](uint64_t off, uint64_t len) { return off >= sizeof(PRoot) && off < size && len <= size - off; };
  if ((root_->close_slot && !in_pool(root_->close_slot, root_->close_cap)) || root_->close_len > root_->close_cap ||
      (root_->spare_rec && !in_pool(root_->spare_rec, root_->spare_cap)))
    fail(Code::Corrupt, "pool " + p + ": reserved-space metadata is damaged");
  if (root_->next_epoch >= kMaxEpoch) fail(Code::Incompatible, "pool " + p + " has used up its epoch numbers");
}

PCkpt* Engine::ckpt_at(uint64_t off) const {
  const uint64_t size = pool_->size();
  if (off < sizeof(PRoot) || off > size - sizeof(PCkpt)) fail(Code::Corrupt, "pool " + pool_->path() + ": checkpoint record is damaged");
  PCkpt* c = pool_->at<PCkpt>(off);
  const uint64_t room = size - off - sizeof(PCkpt);
  if (c->ntables > kMaxTables || c->dense_len > room || c->meta_len > room - c->dense_len ||
      sizeof(PCkptTable) * c->ntables > room - c->dense_len - c->meta_len)
    fail(Code::Corrupt, "pool " + pool_->path() + ": checkpoint record is damaged");
  const size_t body = sizeof(PCkptTable) * c->ntables + c->dense_len + c->meta_len;
  PCkpt h = *c;
  h.checksum = 0;
  uint64_t sum = fnv1a(&h, sizeof h);
  sum = fnv1a(c + 1, body, sum);
  if (sum != c->checksum) fail(Code::Corrupt, "pool " + pool_->path() + ": checkpoint " + id_str(c->id) + " record checksum mismatch");
  return c;
}

void Engine::open_pool() {
  pool_ = std::make_unique<Pool>(opts_.dir, opts_.pool_bytes);
  root_ = pool_->root();
  info_.created = pool_->created();
  info_.is_pmem = pool_->is_pmem();
  if (pool_->created())
    init_root();
  else
    validate_root();

  DeadRange* dr = pool_->at<DeadRange>(root_->dead_off);
  dead_.assign(dr, dr + root_->dead_count);
  c_id_ = root_->c_id;
  c_epoch_ = root_->c_epoch;
  p_id_ = root_->p_id;
  p_epoch_ = root_->p_epoch;
  p_active_ = p_id_ != 0;
  last_id_ = root_->last_id;
  info_.clean_close = !pool_->created() && root_->clean == 1;
  if (info_.clean_close && root_->close_len) info_.close_record.assign(pool_->at<char>(root_->close_slot), root_->close_len);
  const bool crashed = !pool_->created() && root_->clean != 1;
  load_tables();

  const uint64_t bound = std::max(c_epoch_, p_active_ ? p_epoch_ : 0);
  {
    // Bounded (the root and a dead-list tail): recovery works on a full pool.
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    // Every epoch after the last durable checkpoint died with the process.
    // Recording them dead is all the recovery the rows need: readers skip
    // their versions, so nothing proportional to the table runs here.
    if (crashed && root_->next_epoch > bound + 1) add_dead(tx, bound + 1, root_->next_epoch - 1);
    recovering_ = crashed && p_active_;
    cur_epoch_ = root_->next_epoch;
    root_->next_epoch = cur_epoch_ + 2;
    root_->clean = 0;
    root_->opens++;
    info_.opens = root_->opens;
    persist_root(tx);
    tx.commit();
  }
  // Tables created or dropped after the last durable checkpoint go back to
  // how it had them, hyperparameters included (those created after C, from
  // P while it is unresolved). A clean open only finishes the permanent
  // drops of a commit a crash interrupted (none, normally).
  std::vector<uint32_t> removed, undropped;
  if (crashed) {
    std::vector<std::pair<uint64_t, uint64_t>> hyper;
    if (root_->c_rec) hyper.emplace_back(root_->c_rec, 0);
    if (p_active_) hyper.emplace_back(root_->p_rec, c_epoch_ + 1);
    settle_tables(true, bound, hyper, &removed, &undropped);
  } else {
    settle_tables(false, bound, {}, &removed, &undropped);
  }
  epoch_limit_ = root_->next_epoch;
  for (uint32_t i : removed) drop_table_object(i);
  for (uint32_t i : undropped)
    if (tables_[i]) tables_[i]->dropped_epoch = 0;
  reload_hyper();
  for (auto& t : tables_)
    if (t) t->r_next = t->d->rows_used;
  read_bound_ = recovering_ ? c_epoch_ : UINT64_MAX;
  rebuild_names();
  // After a crash the rows are read at the committed checkpoint until the
  // prepared one is resolved, so nothing may be written meanwhile. After a
  // clean close the state is the latest and a prepared checkpoint simply
  // awaits its commit or abort, as in a running engine.
  pushes_blocked_ = recovering_;
  info_.committed = c_id_;
  info_.prepared = p_active_ ? p_id_ : 0;
  info_.pushes_blocked = pushes_blocked_;
  // Storage of tables that died with a crash, or whose freeing a crash
  // interrupted: proportional to their slabs and index segments, not rows.
  reclaim();
}

void Engine::load_tables() {
  PTable* ts = pool_->at<PTable>(root_->tables_off);
  for (uint32_t i = 0; i < kMaxTables; i++) {
    PTable* d = &ts[i];
    if (d->state != 1) continue;
    auto t = std::make_unique<Table>();
    t->idx = i;
    t->d = d;
    t->name = std::string(d->name, strnlen(d->name, sizeof d->name));
    t->dim = d->dim;
    t->row_floats = d->row_floats;
    t->row_bytes = d->row_bytes;
    t->slot_bytes = slot_bytes_for(d->row_floats);
    t->opt.type = static_cast<OptType>(d->opt);
    std::memcpy(t->opt.h, d->hyper, sizeof t->opt.h);
    t->init.type = static_cast<InitType>(d->init);
    std::memcpy(t->init.p, d->init_params, sizeof t->init.p);
    t->init.seed = d->seed;
    t->created_epoch = d->created_epoch;
    t->dropped_epoch = d->dropped_epoch;
    init_geometry(*t);
    t->index = std::make_unique<Index>(*pool_, d, &tx_mu_);
    tables_[i] = std::move(t);
  }
}

void Engine::reload_hyper() {
  for (auto& t : tables_)
    if (t && t->d) std::memcpy(t->opt.h, t->d->hyper, sizeof t->opt.h);
}

void Engine::drop_table_object(uint32_t idx) {
  tables_[idx].reset();
  rebuild_names();
}

void Engine::rebuild_names() {
  names_.clear();
  for (auto& t : tables_)
    if (t && visible(*t)) names_[t->name] = t->idx;
}

void Engine::settle_tables(bool rewind, uint64_t bound, const std::vector<std::pair<uint64_t, uint64_t>>& hyper_from, std::vector<uint32_t>* removed,
                           std::vector<uint32_t>* undropped) {
  // Hyperparameters each table gets back: the first record that names it
  // (and whose min_created it meets) wins.
  std::vector<const double*> hyper(kMaxTables, nullptr);
  for (auto& [off, min_created] : hyper_from) {
    const PCkpt* c = ckpt_at(off);
    const PCkptTable* ct = reinterpret_cast<const PCkptTable*>(c + 1);
    for (uint32_t i = 0; i < c->ntables; i++) {
      const uint32_t idx = ct[i].idx;
      if (idx < kMaxTables && !hyper[idx] && tables_[idx] && tables_[idx]->created_epoch >= min_created) hyper[idx] = ct[i].hyper;
    }
  }
  for (auto& t : tables_) {
    if (!t || !t->d) continue;
    PTable* d = t->d;
    // A drop at or before C is permanent: no durable checkpoint predates it.
    const bool gone = (rewind && d->created_epoch > bound) || (d->dropped_epoch != 0 && d->dropped_epoch <= root_->c_epoch);
    const bool back = !gone && rewind && d->dropped_epoch > bound;
    const double* h = gone ? nullptr : hyper[t->idx];
    if (!gone && !back && (!h || std::memcmp(h, d->hyper, sizeof d->hyper) == 0)) continue;
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(d, sizeof(PTable));
    if (gone) {
      d->state = kTableGarbage;
      d->reclaim_pos = 0;
    } else {
      if (back) d->dropped_epoch = 0;
      if (h) std::memcpy(d->hyper, h, sizeof d->hyper);
    }
    d->checksum = Pool::table_sum(d);
    tx.commit();
    if (gone) removed->push_back(t->idx);
    if (back) undropped->push_back(t->idx);
    failpoint("settle.step");
  }
}

void Engine::reclaim() {
  // Errors leave the rest for the next call (or open): the operation that
  // made the garbage has committed and must not be reported as failed.
  try {
    PTable* ts = pool_->at<PTable>(root_->tables_off);
    for (uint32_t i = 0; i < kMaxTables; i++) {
      while (__atomic_load_n(&ts[i].state, __ATOMIC_ACQUIRE) == kTableGarbage) {
        reclaim_step(&ts[i]);
        failpoint("reclaim.step");
      }
    }
  } catch (const Error&) {
  }
}

// One bounded transaction: slabs (last first), then the slab arrays, then
// the index segments (directory order, from reclaim_pos), then the
// directory, the slab table and the descriptor itself. Every free and the
// progress that records it commit together, so a crash never frees twice.
void Engine::reclaim_step(PTable* d) {
  std::lock_guard<std::mutex> g(tx_mu_);
  Tx tx(*pool_, TxLog::Bounded);
  tx.add(d, sizeof(PTable));
  uint32_t n = 0;
  const uint64_t* top = pool_->at<uint64_t>(d->slab_top);
  while (n + 2 <= kReclaimBatch && d->slab_count > 0) {
    const uint64_t s = d->slab_count - 1;
    tx.free(pool_->at<uint64_t>(top[s / kSlabChunk])[s % kSlabChunk]);
    n++;
    // A slab array is allocated with the first slab it holds (alloc_slab):
    // it goes with that slab.
    if (s % kSlabChunk == 0) {
      tx.free(top[s / kSlabChunk]);
      n++;
    }
    d->slab_count = s;
  }
  bool segs_done = d->slab_count == 0 && n < kReclaimBatch;
  if (segs_done) {
    const uint64_t* segs = Index::dir_segments(*pool_, d->index_dir);
    const uint64_t entries = Index::dir_entries(*pool_, d->index_dir);
    uint64_t i = d->reclaim_pos;
    for (; i < entries && n < kReclaimBatch; i++) {
      // Entries naming one segment are contiguous: free it at its first.
      if (i > 0 && segs[i] == segs[i - 1]) continue;
      tx.free(segs[i]);
      n++;
    }
    d->reclaim_pos = i;
    segs_done = i == entries;
  }
  if (segs_done && n + 2 <= kReclaimBatch) {
    tx.free(d->index_dir);
    tx.free(d->slab_top);
    std::memset(d, 0, sizeof(PTable));
  } else {
    d->checksum = Pool::table_sum(d);
  }
  tx.commit();
}

void Engine::purge_cache(uint32_t table) {
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    std::vector<Entry*> gone;
    s.for_each([&](Entry* e) {
      if (e->table == table) gone.push_back(e);
    });
    for (Entry* e : gone) s.erase(e, Stripe::hash(table, e->key));
  }
}

// ============================================================ epochs

bool Engine::is_dead(uint64_t e) const {
  // dead_ is sorted and disjoint: binary search the last range with lo <= e.
  auto it = std::upper_bound(dead_.begin(), dead_.end(), e, [](uint64_t v, const DeadRange& r) { return v < r.lo; });
  if (it == dead_.begin()) return false;
  --it;
  return e <= it->hi;
}

void Engine::add_dead(Tx& tx, uint64_t lo, uint64_t hi) {
  if (lo > hi) return;
  std::vector<DeadRange> v = dead_;
  v.push_back({lo, hi});
  std::sort(v.begin(), v.end(), [](const DeadRange& a, const DeadRange& b) { return a.lo < b.lo; });
  std::vector<DeadRange> merged;
  for (auto& r : v) {
    if (!merged.empty() && r.lo <= merged.back().hi + 1)
      merged.back().hi = std::max(merged.back().hi, r.hi);
    else
      merged.push_back(r);
  }
  if (merged.size() > root_->dead_cap) {
    // Not reached while prepare keeps room for two more ranges (see
    // prepare_finish); kept so that an older pool still records its dead epochs.
    const uint64_t cap = std::max<uint64_t>(root_->dead_cap * 2, merged.size());
    const uint64_t off = tx.alloc(sizeof(DeadRange) * cap, true);
    tx.free(root_->dead_off);
    root_->dead_off = off;
    root_->dead_cap = cap;
  } else {
    // Only the tail changes (new ranges are above all old ones): snapshot
    // from the first entry that differs, which keeps the snapshot bounded.
    size_t first = 0;
    while (first < merged.size() && first < dead_.size() && merged[first].lo == dead_[first].lo && merged[first].hi == dead_[first].hi) first++;
    if (first < merged.size()) tx.add(pool_->at<DeadRange>(root_->dead_off) + first, sizeof(DeadRange) * (merged.size() - first));
  }
  std::memcpy(pool_->at<DeadRange>(root_->dead_off), merged.data(), sizeof(DeadRange) * merged.size());
  root_->dead_count = merged.size();
  dead_ = std::move(merged);
}

void Engine::ensure_epochs(Tx& tx) {
  // The next epoch must be below the persisted next_epoch before any version
  // is written in it, so that a crash records it dead.
  if (cur_epoch_ + 1 < root_->next_epoch) return;
  if (cur_epoch_ + 2 >= kMaxEpoch) fail(Code::FailedPrecondition, "the pool has used up its epoch numbers");
  tx.add(root_, sizeof(PRoot));
  root_->next_epoch = cur_epoch_ + 2;
  persist_root(tx);
}

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
  std::memcpy(out, h + 1, sizeof(float) * t.row_floats);
  *step = h->step;
  return true;
}

// Writes the entry's version into a slot that neither the committed nor the
// prepared checkpoint needs. Crash safety: the slot chosen holds nothing a
// restart can read (its version is older than the pinned ones, or from an
// epoch that dies with a crash), so a torn or unpersisted write here is
// harmless; the epoch tag is stored last. The range joins the pool's flush
// set, which prepare and close make durable before they publish anything
// that refers to this version.
void Engine::write_back(Table& t, Entry* e) {
  char* row = row_ptr(t, e->ref);
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
  SlotHdr* h = slot_hdr(t, row, static_cast<uint32_t>(s));
  __atomic_store_n(&h->epoch, 0u, __ATOMIC_RELAXED);
  std::memcpy(h + 1, e->data, sizeof(float) * t.row_floats);
  h->step = e->step;
  __atomic_store_n(&h->epoch, e->epoch, __ATOMIC_RELEASE);
  pool_->add_range(h, t.slot_bytes);
  writebacks_.fetch_add(1, std::memory_order_relaxed);
}

// Makes room for one entry of n bytes: recycles, else evicts (CLOCK, see
// cache.h) down to 7/8 of the stripe's share (so write-backs come in groups), else
// frees recycled entries of other sizes.
void Engine::make_room(Stripe& s, size_t n) {
  if (s.has_room(n)) return;
  const size_t target = s.budget - s.budget / 8;
  std::vector<Entry*> victims;
  if (s.used_bytes() > target) s.pick_victims(s.used_bytes() - target, &victims);
  bool wrote = false;
  for (Entry* e : victims) {
    if (e->dirty) {
      write_back(*tables_[e->table], e);
      wrote = true;
    }
  }
  if (wrote) {
    // Durable before the stripe is released: a prepare that finds this
    // stripe without the entry relies on its version being in the pool.
    pool_->drain();
    failpoint("evict.after_write");
  }
  for (Entry* e : victims) s.erase(e, Stripe::hash(e->table, e->key));
  evictions_.fetch_add(victims.size(), std::memory_order_relaxed);
  if (!s.has_room(n)) s.trim_free(n);
}

void Engine::alloc_slab(Table& t) {
  std::lock_guard<std::mutex> g(tx_mu_);
  PTable* d = t.d;
  const uint64_t n = d->slab_count;
  if (n / kSlabChunk >= kSlabTop) fail(Code::OutOfSpace, "table " + t.name + " reached its maximum number of slabs");
  Tx tx(*pool_);
  uint64_t* top = pool_->at<uint64_t>(d->slab_top);
  if (top[n / kSlabChunk] == 0) {
    const uint64_t c = tx.alloc(sizeof(uint64_t) * kSlabChunk, true);
    tx.add(&top[n / kSlabChunk], sizeof(uint64_t));
    top[n / kSlabChunk] = c;
  }
  // Slab memory is not zeroed: reserve_row initializes each row's key and
  // slot headers before anything can refer to it.
  const uint64_t slab = tx.alloc(slab_bytes(t, n), false);
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
  for (uint32_t s = 0; s < kSlots; s++) {
    SlotHdr* h = slot_hdr(t, row, s);
    h->epoch = 0;
    h->step = 0;
  }
  pool_->add_range(row, t.row_bytes);
  t.r_next.store(r + 1, std::memory_order_release);
  return ref;
}

// ============================================================ tables

Engine::Table* Engine::find_table(const std::string& name) {
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  auto it = names_.find(name);
  if (it == names_.end() || !visible(*tables_[it->second])) fail(Code::NotFound, "no table \"" + name + "\"");
  return tables_[it->second].get();
}

void Engine::create_table(const std::string& name, uint32_t dim, const OptimizerSpec& opt, const InitSpec& init) {
  if (name.empty() || name.size() > 64) fail(Code::InvalidArgument, "table name must be 1..64 bytes");
  if (dim < 1 || dim > 4096) fail(Code::InvalidArgument, "dim must be in 1..4096, got " + std::to_string(dim));
  validate_optimizer(opt);
  validate_init(init);
  std::unique_lock<RwLock> el(epoch_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  if (pushes_blocked_)
    fail(Code::FailedPrecondition, "checkpoint " + id_str(p_id_) + " was prepared before the restart and is unresolved; commit or abort it first");
  auto it = names_.find(name);
  if (it != names_.end()) {
    Table& t = *tables_[it->second];
    const bool same = t.dim == dim && t.opt.type == opt.type && std::memcmp(t.opt.h, opt.h, sizeof opt.h) == 0 && t.init.type == init.type &&
                      std::memcmp(t.init.p, init.p, sizeof init.p) == 0 && t.init.seed == init.seed;
    if (same) return;
    fail(Code::AlreadyExists, "table \"" + name + "\" already exists with dim " + std::to_string(t.dim) + " and optimizer " + opt_name(t.opt.type) +
                                  " (other settings differ); use another name");
  }
  const uint32_t rf = dim * static_cast<uint32_t>(1 + state_blocks(opt));
  const size_t entry = offsetof(Entry, data) + sizeof(float) * rf;
  if (!mem_ && stripes_[0].budget < 8 * entry) {
    const uint64_t need_mb = (static_cast<uint64_t>(8) * entry * kStripes + (1 << 20) - 1) >> 20;
    fail(Code::InvalidArgument, "the cache budget is too small for rows of dim " + std::to_string(dim) + " with " + opt_name(opt.type) +
                                    ": raise the cache size to at least " + std::to_string(need_mb + 1) + " MiB");
  }
  uint32_t idx = kMaxTables;
  {
    // A garbage slot (storage still being freed) is not free yet.
    std::lock_guard<std::mutex> g(tx_mu_);
    const PTable* ts = mem_ ? nullptr : pool_->at<PTable>(root_->tables_off);
    for (uint32_t i = 0; i < kMaxTables; i++)
      if (!tables_[i] && (!ts || ts[i].state == kTableFree)) {
        idx = i;
        break;
      }
  }
  if (idx == kMaxTables) fail(Code::OutOfSpace, "at most " + std::to_string(kMaxTables) + " tables");

  auto t = std::make_unique<Table>();
  t->idx = idx;
  t->name = name;
  t->dim = dim;
  t->row_floats = rf;
  t->slot_bytes = slot_bytes_for(rf);
  t->row_bytes = row_bytes_for(rf);
  t->opt = opt;
  t->init = init;
  t->created_epoch = cur_epoch_;
  init_geometry(*t);
  if (!mem_) {
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_);
    PTable* d = pool_->at<PTable>(root_->tables_off) + idx;
    tx.add(d, sizeof(PTable));
    std::memset(d, 0, sizeof(PTable));
    d->state = 1;
    d->dim = dim;
    d->opt = static_cast<uint32_t>(opt.type);
    d->init = static_cast<uint32_t>(init.type);
    d->row_floats = rf;
    d->row_bytes = t->row_bytes;
    d->created_epoch = cur_epoch_;
    d->seed = init.seed;
    std::memcpy(d->hyper, opt.h, sizeof d->hyper);
    std::memcpy(d->init_params, init.p, sizeof d->init_params);
    std::memcpy(d->name, name.data(), name.size());
    d->rows_per_slab = t->rows_per_slab;
    d->slab_top = tx.alloc(sizeof(uint64_t) * kSlabTop, true);
    d->index_dir = Index::create(*pool_, tx);
    d->salt = mix64(init.seed ^ (static_cast<uint64_t>(idx) << 32) ^ cur_epoch_);
    d->checksum = Pool::table_sum(d);
    failpoint("create_table.mid_tx");
    tx.commit();
    t->d = d;
    t->index = std::make_unique<Index>(*pool_, d, &tx_mu_);
  }
  names_[name] = idx;
  tables_[idx] = std::move(t);
}

void Engine::update_table(const std::string& name, const OptimizerSpec& opt) {
  validate_optimizer(opt);
  std::unique_lock<RwLock> el(epoch_mu_);
  Table* t = find_table(name);
  if (pushes_blocked_)
    fail(Code::FailedPrecondition, "checkpoint " + id_str(p_id_) + " was prepared before the restart and is unresolved; commit or abort it first");
  if (!same_layout(t->opt, opt))
    fail(Code::InvalidArgument, "table \"" + name +
                                    "\": this change alters the optimizer state layout (optimizer type, SGD momentum on/off, RMSprop "
                                    "momentum on/off or centered); create a new table instead");
  if (!mem_) {
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(t->d, sizeof(PTable));
    std::memcpy(t->d->hyper, opt.h, sizeof t->d->hyper);
    t->d->checksum = Pool::table_sum(t->d);
    tx.commit();
  }
  t->opt = opt;
}

void Engine::drop_table(const std::string& name) {
  if (mem_) fail(Code::FailedPrecondition, "tables cannot be dropped in a memory-only engine");
  std::unique_lock<std::mutex> cg(ckpt_mu_);
  wait_prepared(cg);  // a running prepare still flushes this table's rows
  std::unique_lock<RwLock> el(epoch_mu_);
  Table* t = find_table(name);
  if (pushes_blocked_)
    fail(Code::FailedPrecondition, "checkpoint " + id_str(p_id_) + " was prepared before the restart and is unresolved; commit or abort it first");
  // Rows changed since the last checkpoint are discarded: should the drop be
  // undone, it is by going back to a checkpoint, which predates them.
  const uint64_t durable = std::max(c_epoch_, p_active_ ? p_epoch_ : 0);
  const bool in_checkpoint = t->created_epoch <= durable;
  {
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(t->d, sizeof(PTable));
    // A table no durable checkpoint holds is garbage at once.
    if (in_checkpoint)
      t->d->dropped_epoch = cur_epoch_;
    else
      t->d->state = kTableGarbage;
    t->d->checksum = Pool::table_sum(t->d);
    failpoint("drop_table.mid_tx");
    tx.commit();
  }
  purge_cache(t->idx);  // after the commit: a failed drop loses nothing
  if (in_checkpoint)
    t->dropped_epoch = cur_epoch_;
  else
    tables_[t->idx].reset();
  rebuild_names();
  if (!in_checkpoint) {
    el.unlock();  // nothing reaches a garbage table: pushes need not wait for the frees
    reclaim();
  }
}

std::vector<TableInfo> Engine::list_tables() {
  std::shared_lock<RwLock> el(epoch_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  std::vector<TableInfo> out;
  for (auto& t : tables_) {
    if (!t || !visible(*t)) continue;
    out.push_back({t->name, t->dim, t->row_floats, t->opt, t->init, t->r_next.load()});
  }
  return out;
}

uint32_t Engine::dim_of(const std::string& name) {
  std::shared_lock<RwLock> el(epoch_mu_);
  return find_table(name)->dim;
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
constexpr size_t kPrefetchRow = 3;

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

void Engine::pull(const std::string& name, const uint8_t* keys, size_t n, float* out, uint32_t expect_dim) {
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
  // The bytes of an entry a pull reads: its header (key) and dim floats.
  const size_t rbytes = offsetof(Entry, data) + sizeof(float) * dim;
  helpers_->run(nbusy, [&](size_t b) {
    const int si = busy[b];
    Stripe& s = stripes_[si];
    uint64_t hit = 0, miss = 0;
    std::lock_guard<std::mutex> g(s.mu);
    std::shared_lock<RwLock> il;
    const size_t begin = counts[si], end = counts[si + 1];
    // Two passes, each with loads issued a few keys ahead: first the
    // entries (bucket, then the entry's first line), then the rows' bytes.
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
      if (j + kPrefetchRow < end && ents[j + kPrefetchRow]) prefetch_lines(ents[j + kPrefetchRow], rbytes);
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
      bool found = false;
      if (!mem_) {
        if (!il.owns_lock()) il = std::shared_lock<RwLock>(t->index->mu());
        const uint64_t ref = t->index->lookup(key);
        if (ref) {
          make_room(s, Stripe::entry_bytes(t->row_floats));
          Entry* ne = s.make(t->idx, key, t->row_floats);
          if (load_row(*t, ref, key, ne->data, &ne->step)) {
            ne->ref = ref;
            s.insert(ne, hs[i]);
            std::memcpy(out + static_cast<size_t>(i) * dim, ne->data, sizeof(float) * dim);
            found = true;
          } else {
            s.recycle(ne);
          }
        }
      }
      if (!found) {
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

void Engine::push(const std::string& name, const uint8_t* keys, size_t n, const uint8_t* grads_bytes, uint32_t expect_dim) {
  const uint64_t t0 = now_us();
  std::shared_lock<RwLock> el(epoch_mu_);
  std::atomic<uint64_t> waited{now_us() - t0};
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
  helpers_->run(nbusy, [&](size_t b) {
    const int si = busy[b];
    Stripe& s = stripes_[si];
    std::lock_guard<std::mutex> sg(s.mu);
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
        bool loaded = false;
        if (!mem_) {
          if (!il.owns_lock()) il = std::shared_lock<RwLock>(t->index->mu());
          const uint64_t r = t->index->lookup(uk[i]);
          if (valid_ref(*t, r, uk[i])) {
            refs[i] = r;
            loaded = load_row(*t, r, uk[i], out, &step);
          } else {
            missing[i] = 1;
          }
        }
        if (!loaded) init_row(t->init, t->opt, uk[i], dim, out), step = 0;
      }
      apply_update(t->opt, dim, out, &step, gp[i]);
      if (!row_finite(out, rf))
        fail(Code::InvalidArgument, "the update of key " + std::to_string(uk[i]) +
                                        " would make its row or optimizer state non-finite (gradient or learning rate too large for float32); "
                                        "the whole batch was refused and nothing changed");
      if (i < scratch_rows) scratch_step[i] = step;
    }
  });

  if (!mem_) {
    // Phase 2: a row and an index slot for every new key before any update
    // is stored, so a full pool refuses the whole push and changes nothing.
    std::unique_lock<RwLock> il;
    for (size_t i = 0; i < u; i++) {
      if (!missing[i]) continue;
      if (!il.owns_lock()) il = std::unique_lock<RwLock>(t->index->mu());
      const uint64_t r = t->index->lookup(uk[i]);
      if (valid_ref(*t, r, uk[i])) {
        refs[i] = r;
        continue;
      }
      const uint64_t nr = reserve_row(*t, uk[i]);
      t->index->upsert(uk[i], nr);
      refs[i] = nr;
    }
    // The new rows' headers and index slots, before anything refers to them.
    if (il.owns_lock()) pool_->drain();
  }

  // Phase 3: store the updates in the cache, stripe by stripe (in
  // parallel). A stripe that no other push changed since phase 1 takes the
  // results computed there; otherwise each row is computed again from its
  // current value.
  const uint32_t epoch = static_cast<uint32_t>(cur_epoch_);
  std::atomic<uint64_t> created{0}, skipped{0};
  helpers_->run(nbusy, [&](size_t b) {
    const int si = busy[b];
    Stripe& s = stripes_[si];
    const uint64_t l0 = now_us();
    std::lock_guard<std::mutex> sg(s.mu);
    uint64_t wait = now_us() - l0;
    const bool same = s.applies == seen[si];
    uint64_t made = 0, skip = 0;
    bool cow_wrote = false;
    const size_t end = counts[si + 1];
    for (size_t j = counts[si]; j < end; j++) {
      const uint32_t i = order[j];
      if (j + kPrefetchEntry < end && found[order[j + kPrefetchEntry]] && s.generation() == gen[si])
        prefetch_lines(found[order[j + kPrefetchEntry]], ebytes);
      // Checked per row: making room for a new entry below may evict others.
      Entry* e = (found[i] && s.generation() == gen[si]) ? found[i] : s.find(t->idx, uk[i], hs[i]);
      const bool computed = same && i < scratch_rows;
      if (!e) {
        if (!mem_) make_room(s, Stripe::entry_bytes(rf));
        e = s.make(t->idx, uk[i], rf);
        if (!computed) {
          // Its current value, for the update below (phase 1's result, when
          // it holds, replaces the whole row anyway).
          bool loaded = false;
          if (!mem_) {
            std::shared_lock<RwLock> il(t->index->mu());
            loaded = load_row(*t, refs[i], uk[i], e->data, &e->step);
          }
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
        // Only another push's update in between can make this differ from
        // phase 1's checked result: that row keeps its value, never a NaN.
        if (!row_finite(tmp, rf)) {
          skip++;
          continue;
        }
        result = tmp;
      }
      if (s.is_pending(e)) {
        // Copy-on-write for a running prepare: this row's checkpoint version
        // is still only in DRAM. It is copied aside for the flusher (a DRAM
        // copy, counted in the budget); only when the budget has no room for
        // the copy is it written to its pool slot first.
        const uint64_t w0 = now_us();
        if (s.has_room(e->bytes)) {
          s.shadow_of(e, rf);
        } else {
          write_back(*t, e);
          s.mark_clean(e);
          cow_wrote = true;
        }
        wait += now_us() - w0;
        during_ckpt.store(true, std::memory_order_relaxed);
      }
      std::memcpy(e->data, result, sizeof(float) * rf);
      e->step = step;
      s.mark_dirty(e, epoch);
      s.touch(e);
    }
    if (cow_wrote) pool_->drain();  // before the flusher can find the stripe without them
    s.applies++;
    waited.fetch_add(wait, std::memory_order_relaxed);
    created.fetch_add(made, std::memory_order_relaxed);
    skipped.fetch_add(skip, std::memory_order_relaxed);
  });
  if (skipped.load()) raced_nonfinite_.fetch_add(skipped.load(), std::memory_order_relaxed);
  if (mem_) t->r_next.fetch_add(created.load(), std::memory_order_relaxed);
  if (during_ckpt.load() || ckpt_active_.load(std::memory_order_relaxed)) atomic_max(max_wait_us_, waited.load());
  failpoint("push.after_apply");
}

void Engine::drop_cache() {
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    s.clear();
  }
}

// ======================================================== checkpoints

void Engine::flush_pending() {
  // One chunk per stripe in turn, never two holds of one stripe in a row: a
  // mutex hands itself back to the thread that just released it before a
  // woken waiter runs, so a push waiting on the stripe being flushed waited
  // for the whole stripe (~12 ms at 30k pending rows).
  bool left = true;
  for (int round = 0; left; round++) {
    left = false;
    for (int i = 0; i < kStripes; i++) {
      if (round == 0 && i == kStripes / 2) failpoint("prepare.mid_flush");
      Stripe& s = stripes_[i];
      std::lock_guard<std::mutex> g(s.mu);
      if (s.pending.empty()) continue;
      for (uint32_t k = 0; k < kFlushChunk && !s.pending.empty(); k++) {
        Entry* e = s.pending.back();
        write_back(*tables_[e->table], e);
        s.flushed(e);
      }
      pool_->drain();
      left |= !s.pending.empty();
    }
  }
}

void Engine::wait_prepared(std::unique_lock<std::mutex>& ck) {
  ckpt_cv_.wait(ck, [&] { return !preparing_; });
}

void Engine::prepare_begin(uint64_t id, const std::string& dense, const std::string& meta, uint64_t ballot) {
  std::unique_lock<std::mutex> ck(ckpt_mu_);
  {
    std::shared_lock<RwLock> el(epoch_mu_);
    if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
    if (p_active_) {
      if (p_id_ == id) return;  // retried prepare (finish joins the running one)
      fail(Code::FailedPrecondition,
           "checkpoint " + id_str(p_id_) + " is prepared and unresolved; commit or abort it before preparing " + id_str(id));
    }
    if (id == c_id_) return;  // retried prepare of a checkpoint since committed
    if (id <= last_id_)
      fail(Code::FailedPrecondition,
           "checkpoint id " + id_str(id) + " must be greater than " + id_str(last_id_) + " (ids strictly increase; an aborted id never comes back)");
  }
  if (mem_) {
    mem_prepare(id, dense, meta);
    mem_ballot_ = std::max(mem_ballot_, ballot);
    return;
  }
  // The boundary: pushes that started before it are in the checkpoint,
  // pushes that start after it are not. It runs on the caller's thread so
  // that "after prepare() was called" means "outside". O(stripes + tables);
  // pushes wait only for this block.
  std::unique_lock<RwLock> el(epoch_mu_);
  if (cur_epoch_ + 1 >= epoch_limit_) {
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    ensure_epochs(tx);
    tx.commit();
    epoch_limit_ = root_->next_epoch;
  }
  ckpt_active_ = true;
  preparing_ = true;
  prep_dense_ = dense;
  prep_meta_ = meta;
  prep_ballot_ = ballot;
  prep_snap_.clear();
  p_epoch_ = cur_epoch_;
  cur_epoch_++;
  p_active_ = true;
  p_id_ = id;
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    s.start_pending(static_cast<uint32_t>(p_epoch_));
  }
  for (auto& t : tables_) {
    if (!t) continue;
    PrepSnap sn{t->idx, t->r_next.load(), {}};
    std::memcpy(sn.hyper, t->opt.h, sizeof sn.hyper);
    prep_snap_.push_back(sn);
  }
  failpoint("prepare.after_boundary");
}

void Engine::prepare_finish(uint64_t id) {
  {
    std::unique_lock<std::mutex> ck(ckpt_mu_);
    if (!preparing_ || finishing_ || p_id_ != id) {
      // Another call finishes (or finished) this prepare: wait for it and
      // report how it ended.
      wait_prepared(ck);
      std::shared_lock<RwLock> el(epoch_mu_);
      if ((p_active_ && p_id_ == id) || c_id_ == id) return;
      fail(Code::FailedPrecondition, "prepare of checkpoint " + id_str(id) + " did not complete");
    }
    finishing_ = true;
  }
  auto done = [&] {
    std::lock_guard<std::mutex> ck(ckpt_mu_);
    preparing_ = false;
    finishing_ = false;
    ckpt_active_ = false;
    prep_dense_.clear();
    prep_meta_.clear();
    ckpt_cv_.notify_all();
  };
  try {
    // No epoch lock here: what write_back reads (C, P, dead epochs) changes
    // only in commit/abort/rollback, which wait for this prepare; so pushes
    // and a hyperparameter change never queue behind the flush.
    flush_pending();
    // Rows, their index slots and new rows' headers reach the media before
    // the record that makes them part of a checkpoint.
    pool_->persist_ranges();
    // Every row the checkpoint may name is below rows_used before it is
    // published. A raised rows_used is safe on its own (rows below it may
    // hold dead versions only), so each table is raised in its own bounded
    // transaction and the publish snapshots the root alone.
    for (auto& sn : prep_snap_) raise_rows_used(tables_[sn.idx]->d, sn.rows);
    failpoint("prepare.before_publish");
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    const std::string& dense = prep_dense_;
    const std::string& meta = prep_meta_;
    const size_t body = sizeof(PCkptTable) * prep_snap_.size() + dense.size() + meta.size();
    uint64_t off;
    if (root_->spare_rec && root_->spare_cap >= sizeof(PCkpt) + body) {
      // The spare is referenced by nothing but spare_rec: writing it before
      // the publish commits is harmless if the publish never does.
      off = root_->spare_rec;
      root_->spare_rec = root_->spare_cap = 0;
    } else {
      off = tx.alloc(sizeof(PCkpt) + body, false);
    }
    PCkpt* c = pool_->at<PCkpt>(off);
    std::memset(c, 0, sizeof(PCkpt));
    c->id = id;
    c->epoch = p_epoch_;
    c->ntables = static_cast<uint32_t>(prep_snap_.size());
    c->dense_len = dense.size();
    c->meta_len = meta.size();
    PCkptTable* ct = reinterpret_cast<PCkptTable*>(c + 1);
    for (size_t i = 0; i < prep_snap_.size(); i++) {
      std::memset(&ct[i], 0, sizeof(PCkptTable));
      ct[i].idx = prep_snap_[i].idx;
      std::memcpy(ct[i].hyper, prep_snap_[i].hyper, sizeof ct[i].hyper);
    }
    char* payload = reinterpret_cast<char*>(ct + prep_snap_.size());
    std::memcpy(payload, dense.data(), dense.size());
    std::memcpy(payload + dense.size(), meta.data(), meta.size());
    uint64_t sum = fnv1a(c, sizeof(PCkpt));
    c->checksum = fnv1a(c + 1, body, sum);
    pool_->persist(c, sizeof(PCkpt) + body);
    if (root_->dead_count + 2 > root_->dead_cap) {
      // Until the next publish, dead ranges can start only above C or above
      // P (every other one merges with them): with room for two more, no
      // abort, rollback or recovery needs to grow the list on a full pool.
      const uint64_t cap = std::max<uint64_t>(root_->dead_cap * 2, root_->dead_count + 2);
      const uint64_t nd = tx.alloc(sizeof(DeadRange) * cap, true);
      std::memcpy(pool_->at<DeadRange>(nd), pool_->at<DeadRange>(root_->dead_off), sizeof(DeadRange) * root_->dead_count);
      pool_->persist(pool_->at<DeadRange>(nd), sizeof(DeadRange) * root_->dead_count);
      tx.free(root_->dead_off);
      root_->dead_off = nd;
      root_->dead_cap = cap;
    }
    root_->p_id = id;
    root_->p_epoch = p_epoch_;
    root_->p_rec = off;
    root_->last_id = id;
    if (prep_ballot_ > root_->ballot) root_->ballot = prep_ballot_;
    if (root_->next_epoch < cur_epoch_ + 2) root_->next_epoch = cur_epoch_ + 2;
    persist_root(tx);
    tx.commit();  // the publish: one transaction sets p_id
    epoch_limit_ = root_->next_epoch;
    last_id_ = id;
    failpoint("prepare.after_publish");
  } catch (...) {
    {
      std::unique_lock<RwLock> el(epoch_mu_);
      p_active_ = false;
      p_id_ = 0;
      p_epoch_ = 0;
    }
    done();
    throw;
  }
  done();
}

void Engine::commit(uint64_t id) {
  std::unique_lock<std::mutex> cg(ckpt_mu_);
  wait_prepared(cg);
  std::unique_lock<RwLock> el(epoch_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  if (!p_active_ || p_id_ != id) {
    if (!p_active_ && id == c_id_) return;  // retried commit
    if (id <= last_id_ && !(p_active_ && p_id_ == id))
      fail(Code::FailedPrecondition, "checkpoint " + id_str(id) + " was aborted or superseded; it can never commit");
    fail(Code::FailedPrecondition, "checkpoint " + id_str(id) + " is not prepared");
  }
  if (mem_) {
    mem_c_ = std::move(mem_p_);
    c_id_ = p_id_;
    c_epoch_ = p_epoch_;
    p_active_ = false;
    p_id_ = p_epoch_ = 0;
    return;
  }
  failpoint("commit.before_publish");
  {
    // The decision: the root alone, at most two frees (the old record or
    // the spare). Bounded, so a commit works on a full pool.
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    const uint64_t old = root_->c_rec;
    root_->c_id = root_->p_id;
    root_->c_epoch = root_->p_epoch;
    root_->c_rec = root_->p_rec;
    root_->p_id = root_->p_epoch = root_->p_rec = 0;
    if (old) retire_record(tx, old);
    persist_root(tx);
    tx.commit();
  }
  failpoint("commit.after_publish");
  // No durable checkpoint is older than this one any more: tables dropped
  // before its boundary can never come back and become garbage. After a
  // crash the committed checkpoint's hyperparameters are the live ones.
  // (A crash before this is done: open settles the same way.)
  std::vector<uint32_t> freed, none;
  std::vector<std::pair<uint64_t, uint64_t>> hyper;
  if (recovering_) hyper.emplace_back(root_->c_rec, 0);
  settle_tables(false, root_->c_epoch, hyper, &freed, &none);
  c_id_ = p_id_;
  c_epoch_ = p_epoch_;
  p_active_ = false;
  p_id_ = p_epoch_ = 0;
  if (recovering_) {
    // Rows cached while reads were held at the old checkpoint are stale now.
    reload_hyper();
    drop_cache();
    read_bound_ = UINT64_MAX;
    recovering_ = false;
  }
  for (uint32_t i : freed) tables_[i].reset();
  rebuild_names();
  pushes_blocked_ = false;
  if (!freed.empty()) {
    el.unlock();
    reclaim();
  }
}

void Engine::raise_rows_used(PTable* d, uint64_t rows) {
  std::lock_guard<std::mutex> g(tx_mu_);
  if (d->rows_used >= rows) return;
  Tx tx(*pool_, TxLog::Bounded);
  tx.add(d, sizeof(PTable));
  d->rows_used = rows;
  d->checksum = Pool::table_sum(d);
  tx.commit();
}

void Engine::retire_record(Tx& tx, uint64_t off) {
  const uint64_t cap = usable(off);
  if (cap <= root_->spare_cap) {
    tx.free(off);
    return;
  }
  if (root_->spare_rec) tx.free(root_->spare_rec);
  root_->spare_rec = off;
  root_->spare_cap = cap;
}

void Engine::abort(uint64_t id) {
  std::unique_lock<std::mutex> cg(ckpt_mu_);
  wait_prepared(cg);
  std::unique_lock<RwLock> el(epoch_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  if (!p_active_ || p_id_ != id) {
    if (id == c_id_) fail(Code::FailedPrecondition, "checkpoint " + id_str(id) + " is committed; it cannot be aborted");
    if (id <= last_id_) return;  // already aborted or superseded
    // Never prepared here: remember the id so a late prepare of it is refused.
    if (!mem_) {
      std::lock_guard<std::mutex> g(tx_mu_);
      Tx tx(*pool_, TxLog::Bounded);
      tx.add(root_, sizeof(PRoot));
      root_->last_id = id;
      persist_root(tx);
      tx.commit();
    }
    last_id_ = id;
    return;
  }
  if (mem_) {
    mem_p_.reset();
    p_active_ = false;
    p_id_ = p_epoch_ = 0;
    return;
  }
  failpoint("abort.before_publish");
  std::vector<uint32_t> removed, undropped;
  {
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    const uint64_t rec = root_->p_rec;
    root_->p_id = root_->p_epoch = root_->p_rec = 0;
    // After a crash the prepared epochs hold the only versions above the
    // committed checkpoint: dropping the checkpoint makes them dead.
    if (recovering_) add_dead(tx, c_epoch_ + 1, p_epoch_);
    retire_record(tx, rec);
    persist_root(tx);
    tx.commit();
  }
  // The tables go back to C as well (a crash first: open does the same).
  if (recovering_) settle_tables(true, c_epoch_, {}, &removed, &undropped);
  for (uint32_t i : removed) tables_[i].reset();
  for (uint32_t i : undropped)
    if (tables_[i]) tables_[i]->dropped_epoch = 0;
  p_active_ = false;
  p_id_ = p_epoch_ = 0;
  if (recovering_) {
    read_bound_ = UINT64_MAX;
    recovering_ = false;
  }
  rebuild_names();
  pushes_blocked_ = false;
  if (!removed.empty()) {
    el.unlock();
    reclaim();
  }
}

void Engine::rollback() {
  std::unique_lock<std::mutex> cg(ckpt_mu_);
  wait_prepared(cg);
  std::unique_lock<RwLock> el(epoch_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  if (p_active_) fail(Code::FailedPrecondition, "checkpoint " + id_str(p_id_) + " is prepared; commit or abort it before rolling back");
  if (mem_) {
    mem_rollback();
    return;
  }
  failpoint("rollback.before_publish");
  {
    // Everything written since the committed checkpoint becomes dead: a cost
    // of one small transaction plus dropping the (bounded) cache.
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    add_dead(tx, c_epoch_ + 1, root_->next_epoch - 1);
    cur_epoch_ = root_->next_epoch;
    root_->next_epoch = cur_epoch_ + 2;
    persist_root(tx);
    tx.commit();
  }
  epoch_limit_ = root_->next_epoch;
  failpoint("rollback.after_publish");
  // Tables back to how C had them, one bounded transaction each; a crash
  // before this is done ends at C too (open settles the same way).
  std::vector<uint32_t> removed, undropped;
  std::vector<std::pair<uint64_t, uint64_t>> hyper;
  if (root_->c_rec) hyper.emplace_back(root_->c_rec, 0);
  settle_tables(true, c_epoch_, hyper, &removed, &undropped);
  for (uint32_t i : removed) tables_[i].reset();
  for (uint32_t i : undropped)
    if (tables_[i]) tables_[i]->dropped_epoch = 0;
  rebuild_names();
  reload_hyper();
  drop_cache();
  if (!removed.empty()) {
    el.unlock();
    reclaim();
  }
}

bool Engine::committed_checkpoint(uint64_t* id, std::string* dense, std::string* meta) {
  std::shared_lock<RwLock> el(epoch_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  if (mem_) {
    if (!mem_c_) return false;
    *id = mem_c_->id;
    *dense = mem_c_->dense;
    *meta = mem_c_->meta;
    return true;
  }
  if (!root_->c_rec) return false;
  PCkpt* c = ckpt_at(root_->c_rec);
  const char* payload = reinterpret_cast<const char*>(reinterpret_cast<PCkptTable*>(c + 1) + c->ntables);
  *id = c->id;
  dense->assign(payload, c->dense_len);
  meta->assign(payload + c->dense_len, c->meta_len);
  return true;
}

void Engine::close(const std::string& record) {
  std::unique_lock<std::mutex> cg(ckpt_mu_);
  wait_prepared(cg);
  std::unique_lock<RwLock> el(epoch_mu_);
  if (closed_) return;
  if (mem_) {
    drop_cache();
    closed_ = true;
    return;
  }
  if (record.size() > root_->close_cap) {
    // Normally reserved ahead (the server does, before acknowledging what
    // makes its record grow); failing here leaves the pool as after a crash.
    std::lock_guard<std::mutex> g(tx_mu_);
    grow_close_slot(record.size());
  }
  for (int i = 0; i < kStripes; i++) {
    Stripe& s = stripes_[i];
    std::lock_guard<std::mutex> g(s.mu);
    for (DirtyList* l : {&s.pending, &s.dirty}) {
      while (!l->empty()) {
        Entry* e = l->back();
        write_back(*tables_[e->table], e);
        s.flushed(e);
      }
    }
    if (i == kStripes / 2) failpoint("close.mid_writeback");
  }
  pool_->persist_ranges();
  if (!record.empty()) {
    // The slot is read only when clean == 1, which is 0 while the pool is open.
    char* dst = pool_->at<char>(root_->close_slot);
    std::memcpy(dst, record.data(), record.size());
    pool_->persist(dst, record.size());
  }
  // rows_used first, one bounded transaction per table (raising it is safe
  // on its own), then the clean mark: the root alone.
  for (auto& t : tables_)
    if (t) raise_rows_used(t->d, t->r_next.load());
  failpoint("close.before_clean_mark");
  {
    std::lock_guard<std::mutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    // Closed while recovering (a checkpoint prepared before a crash is still
    // unresolved): the next open must recover again, so the stop does not
    // count as clean. Nothing was written meanwhile (pushes were refused).
    root_->clean = recovering_ ? 0 : 1;
    // The record is only read when clean == 1, which this same transaction
    // sets: a crash anywhere before the commit leaves the old clean == 0.
    root_->close_len = record.size();
    persist_root(tx);
    tx.commit();
  }
  drop_cache();
  for (auto& t : tables_) t.reset();
  names_.clear();
  pool_.reset();
  root_ = nullptr;
  closed_ = true;
}

uint64_t Engine::reserve_close_record(uint64_t bytes) {
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<std::mutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  if (mem_) return 1ULL << 53;  // nothing is written at close
  return grow_close_slot(bytes);
}

uint64_t Engine::grow_close_slot(uint64_t bytes) {
  if (bytes <= root_->close_cap) return root_->close_cap;
  // Geometric growth keeps reallocations rare; the exact size is the
  // fallback when the pool has no room for more.
  const uint64_t more = std::max(bytes, root_->close_cap + root_->close_cap / 2);
  for (uint64_t want : {more, bytes}) {
    try {
      Tx tx(*pool_);
      const uint64_t off = tx.alloc(want, false);
      tx.add(root_, sizeof(PRoot));
      // The old slot's content matters only after a clean close, not while open.
      if (root_->close_slot) tx.free(root_->close_slot);
      root_->close_slot = off;
      root_->close_cap = usable(off);
      root_->close_len = 0;
      persist_root(tx);
      tx.commit();
      return root_->close_cap;
    } catch (const Error& e) {
      if (e.code() != Code::OutOfSpace) throw;
      if (want == bytes)
        fail(Code::OutOfSpace, "the pool (" + std::to_string(pool_->size() >> 20) + " MiB) has no room to reserve " + std::to_string(bytes) +
                                   " bytes for the clean-stop record (" + std::to_string(root_->close_cap) +
                                   " reserved); free space or use a larger pool");
    }
  }
  return root_->close_cap;
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
  st.cache_budget = mem_ ? 0 : opts_.cache_bytes;
  st.hits = hits_;
  st.misses = misses_;
  st.evictions = evictions_;
  st.writebacks = writebacks_;
  st.flushes = mem_ ? 0 : pool_->flush_calls();
  st.pool_bytes = mem_ ? 0 : pool_->size();
  st.pool_used = mem_ ? 0 : pool_->used_bytes();
  st.committed = c_id_;
  st.prepared = p_active_ ? p_id_ : 0;
  st.last_id = last_id_;
  st.epoch = cur_epoch_;
  st.max_push_wait_us = max_wait_us_;
  if (!mem_) {
    std::lock_guard<std::mutex> g(tx_mu_);
    const PTable* ts = pool_->at<PTable>(root_->tables_off);
    for (uint32_t i = 0; i < kMaxTables; i++) st.garbage_tables += ts[i].state == kTableGarbage;
  }
  return st;
}

Engine::CheckReport Engine::check() {
  std::unique_lock<RwLock> el(epoch_mu_);
  CheckReport r;
  if (mem_ || closed_) return r;
  for (auto& t : tables_) {
    if (!t) continue;
    r.tables++;
    const uint64_t used = t->r_next.load();
    t->index->for_each([&](uint64_t key, uint64_t ref) {
      r.index_slots++;
      if (ref - 1 >= used || !valid_ref(*t, ref, key)) {
        r.stale_slots++;  // left by a crash before the row was published: harmless
        return;
      }
      char* row = row_ptr(*t, ref);
      for (uint32_t s = 0; s < kSlots; s++) {
        const uint32_t e = slot_hdr(*t, row, s)->epoch;
        if (e >= epoch_limit_) {
          r.bad_epochs++;
          if (r.problems.size() < 20)
            r.problems.push_back("table " + t->name + " key " + std::to_string(key) + ": slot epoch " + std::to_string(e) +
                                 " is beyond the pool's epoch counter");
        }
      }
      if (pick(*t, row, read_bound_) >= 0)
        r.rows_live++;
      else
        r.rows_without_version++;
    });
  }
  return r;
}

// ============================================================ cluster

// Root fields change only inside transactions under tx_mu_, so these need
// no exclusive epoch lock and never wait for running batches.
uint64_t Engine::raise_ballot(uint64_t b) {
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<std::mutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  if (mem_) {
    mem_ballot_ = std::max(mem_ballot_, b);
    return mem_ballot_;
  }
  if (b > root_->ballot) {
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    root_->ballot = b;
    persist_root(tx);
    tx.commit();
  }
  return root_->ballot;
}

uint64_t Engine::ballot() {
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<std::mutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  return mem_ ? mem_ballot_ : root_->ballot;
}

Engine::Identity Engine::stored_identity() const {
  if (mem_) return mem_identity_;
  return Identity{root_->cluster_id[0], root_->cluster_id[1], root_->shard_index, root_->shard_count, root_->identity_sealed != 0};
}

Engine::Identity Engine::identity() {
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<std::mutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  return stored_identity();
}

Engine::Identity Engine::set_identity(const Identity& id) {
  if (id.count == 0 || id.index >= id.count)
    fail(Code::InvalidArgument,
         "shard index must be below the shard count (got " + std::to_string(id.index) + " of " + std::to_string(id.count) + ")");
  if (id.count > UINT32_MAX) fail(Code::InvalidArgument, "shard count must be below 2^32 (got " + std::to_string(id.count) + ")");
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<std::mutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  const Identity cur = stored_identity();
  if (cur.count != 0) {
    if (cur.cluster_hi != id.cluster_hi || cur.cluster_lo != id.cluster_lo || cur.index != id.index || cur.count != id.count)
      fail(Code::FailedPrecondition, "this pool belongs to shard " + std::to_string(cur.index) + " of " + std::to_string(cur.count) +
                                         " of another or the same cluster with other settings; check the server list and --pmem");
    // The seal only ever goes from 0 to 1: a worker still forming the
    // cluster must not unseal what another one sealed.
    if (cur.sealed || !id.sealed) return cur;
  } else if (id.sealed) {
    // A seal confirms an identity every shard was seen to hold; a shard
    // without one lost its pool since, and must not be adopted silently.
    fail(Code::FailedPrecondition, "this shard has no identity to seal: its pool is new (replaced since the cluster was identified?)");
  }
  if (mem_) {
    mem_identity_ = id;
    return id;
  }
  Tx tx(*pool_, TxLog::Bounded);
  tx.add(root_, sizeof(PRoot));
  root_->cluster_id[0] = id.cluster_hi;
  root_->cluster_id[1] = id.cluster_lo;
  root_->shard_index = id.index;
  root_->shard_count = static_cast<uint32_t>(id.count);
  root_->identity_sealed = id.sealed ? 1 : 0;
  persist_root(tx);
  tx.commit();
  return id;
}

// ======================================================= memory mode

void Engine::mem_prepare(uint64_t id, const std::string& dense, const std::string& meta) {
  std::unique_lock<RwLock> el(epoch_mu_);
  auto snap = std::make_unique<MemSnap>();
  snap->id = id;
  snap->epoch = cur_epoch_;
  snap->dense = dense;
  snap->meta = meta;
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    s.for_each([&](Entry* e) {
      MemRow r;
      r.data.assign(e->data, e->data + tables_[e->table]->row_floats);
      r.step = e->step;
      snap->rows.emplace(std::make_pair(e->table, e->key), std::move(r));
    });
  }
  for (auto& t : tables_)
    if (t) snap->tables[t->idx] = MemTable{t->name, t->dim, t->opt, t->init, t->created_epoch};
  mem_p_ = std::move(snap);
  p_epoch_ = cur_epoch_;
  cur_epoch_++;
  p_active_ = true;
  p_id_ = id;
  last_id_ = id;
}

void Engine::mem_rollback() {
  drop_cache();
  for (auto& t : tables_) {
    if (!t) continue;
    if (!mem_c_ || !mem_c_->tables.count(t->idx)) drop_table_object(t->idx);
  }
  if (mem_c_) {
    for (auto& [idx, mt] : mem_c_->tables) {
      if (tables_[idx]) tables_[idx]->opt = mt.opt;
      if (tables_[idx]) tables_[idx]->r_next = 0;
    }
    for (auto& [k, r] : mem_c_->rows) {
      Table& t = *tables_[k.first];
      const uint64_t h = Stripe::hash(k.first, k.second);
      Stripe& st = stripe_for(h);
      Entry* e = st.make(k.first, k.second, t.row_floats);
      std::memcpy(e->data, r.data.data(), sizeof(float) * t.row_floats);
      e->step = r.step;
      st.insert(e, h);
      t.r_next++;
    }
  }
  cur_epoch_++;
}

}  // namespace pmemps
