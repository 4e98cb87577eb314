// Opening, recovering and closing a pool, and the offline check.
//
// Invariants:
//  * open is O(tables + dead ranges), never O(rows): after a crash, the
//    epochs above the last durable checkpoint are recorded dead (readers skip
//    their versions) instead of rolling rows back.
//  * Every step of recovery is a function of the durable root and the
//    checkpoint records (settle_tables, reclaim), so a crash during open or
//    during a decision is finished by the next open, which settles again.
//  * Storage is freed only in bounded transactions that record their own
//    progress (reclaim_step): a crash never frees twice, a full pool never
//    blocks recovery.
//  * close writes back every dirty row, then raises rows_used, then sets the
//    clean mark, each durable before the next: a crash in between leaves the
//    pool as after any crash.
//  * The engine picks its durable side once, here: PoolStore, a forwarder
//    to the *_pool methods of each concern's file, or the memory-only
//    reference's MemStore (engine_mem.cc).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "engine_impl.h"

namespace pmemps {

struct Engine::PoolStore final : Store {
  Engine& e;
  explicit PoolStore(Engine& en) : e(en) {}
  void open() override { e.open_pool(); }
  bool slot_reusable(uint32_t idx) const override { return e.pool_->at<PTable>(e.root_->tables_off)[idx].state == kTableFree; }
  void table_created(Table& t) override { e.table_created_pool(t); }
  void hyper_changed(Table& t, const OptimizerSpec& opt) override { e.hyper_changed_pool(t, opt); }
  void drop_table(const std::string& name) override { e.drop_table_pool(name); }
  void prepare_begin(uint64_t id, const std::string& dense, const std::string& meta, uint64_t ballot) override {
    e.prepare_begin_pool(id, dense, meta, ballot);
  }
  void commit(std::unique_lock<RwLock>& el) override { e.commit_pool(el); }
  void abort(std::unique_lock<RwLock>& el) override { e.abort_pool(el); }
  void abort_unprepared(uint64_t id) override { e.abort_unprepared_pool(id); }
  void rollback(std::unique_lock<RwLock>& el) override { e.rollback_pool(el); }
  bool committed(uint64_t* id, std::string* dense, std::string* meta) override { return e.committed_pool(id, dense, meta); }
  void close(const std::string& record) override { e.close_pool(record); }
  uint64_t reserve_close_record(uint64_t bytes) override { return e.grow_close_slot(bytes); }
  void check(CheckReport& r) override { e.check_pool(r); }
  void stats(Stats& st) override { e.stats_pool(st); }
  uint64_t raise_ballot(uint64_t b) override { return e.raise_ballot_pool(b); }
  uint64_t ballot() const override { return e.root_->ballot; }
  Identity identity() const override { return e.identity_pool(); }
  void set_identity(const Identity& id) override { e.set_identity_pool(id); }
};

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
  store_ = mem_ ? make_mem_store(*this) : std::make_unique<PoolStore>(*this);
  store_->open();
}

// Without close() the pool is left as after a crash: the next open comes
// back at the last committed checkpoint, which is the safe default.
Engine::~Engine() {
  stop_compactor();
  copies_.reset();  // before tx_mu_ and the stripes it uses go
}

void Engine::init_root() {
  std::lock_guard<TxMutex> g(tx_mu_);
  Tx tx(*pool_);
  tx.add(root_, sizeof(PRoot));
  std::memset(root_, 0, sizeof(PRoot));
  root_->magic = kMagic;
  root_->version = kLayoutVersion;
  root_->next_epoch = 1;
  root_->tables_off = tx.alloc(sizeof(PTable) * kMaxTables, Tx::Fill::Zeroed);
  root_->dead_cap = 64;
  root_->dead_off = tx.alloc(sizeof(DeadRange) * root_->dead_cap, Tx::Fill::Zeroed);
  root_->copy_blocks_off = tx.alloc(sizeof(PMEMoid) * kCopyBlocks, Tx::Fill::Zeroed);
  root_->layout = opts_.layout == kLayoutAuto ? (pool_->is_pmem() ? kLayoutInPlace : kLayoutLogged) : opts_.layout;
  // Segments of a 64th of the pool, 1 to 16 MiB: a few hundred msyncs
  // write a checkpoint of any size, and a small pool keeps its room.
  if (root_->layout == kLayoutLogged) root_->vlog_off = VLog::create(tx, *pool_, std::clamp<uint64_t>(pool_->size() / 64, 1 << 20, 16 << 20));
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
  if (root_->copy_blocks_off && !in_pool(root_->copy_blocks_off, sizeof(PMEMoid) * kCopyBlocks))
    fail(Code::Corrupt, "pool " + p + ": the copy arena's block list is damaged");
  if ((root_->close_slot && !in_pool(root_->close_slot, root_->close_cap)) || root_->close_len > root_->close_cap ||
      (root_->spare_rec && !in_pool(root_->spare_rec, root_->spare_cap)))
    fail(Code::Corrupt, "pool " + p + ": reserved-space metadata is damaged");
  if (root_->next_epoch >= kMaxEpoch) fail(Code::Incompatible, "pool " + p + " has used up its epoch numbers");
  if ((root_->layout != kLayoutInPlace && root_->layout != kLayoutLogged) || (root_->layout == kLayoutLogged) != (root_->vlog_off != 0))
    fail(Code::Corrupt, "pool " + p + ": its row layout field is damaged");
  for (uint32_t i = 0; i < kMaxTables; i++) {
    if (ts[i].state != 0 && ts[i].row_bytes != row_bytes_for(root_->layout, ts[i].row_floats))
      fail(Code::Corrupt, "pool " + p + ": table slot " + std::to_string(i) + " has rows of another size than its layout's (damaged pool)");
  }
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

// The copy arena's block list of a pool upgraded from layout version 5,
// which allocated nothing; a pool with no room for it has no arena.
void Engine::alloc_copy_list() {
  std::lock_guard<TxMutex> g(tx_mu_);
  try {
    Tx tx(*pool_, TxLog::Bounded);
    const uint64_t off = tx.alloc(sizeof(PMEMoid) * kCopyBlocks, Tx::Fill::Zeroed);
    tx.add(root_, sizeof(PRoot));
    root_->copy_blocks_off = off;
    persist_root(tx);
    tx.commit();
  } catch (const Error& e) {
    if (e.code() != Code::OutOfSpace) throw;
  }
}

void Engine::open_pool() {
  pool_ = std::make_unique<Pool>(opts_.dir, opts_.pool_bytes, opts_.inspect);
  root_ = pool_->root();
  info_.created = pool_->created();
  info_.is_pmem = pool_->is_pmem();
  if (pool_->created())
    init_root();
  else
    validate_root();
  // An inspection leaves the blocks a crash left as they are.
  if (!opts_.inspect && !root_->copy_blocks_off) alloc_copy_list();
  PMEMoid* blocks = root_->copy_blocks_off ? pool_->at<PMEMoid>(root_->copy_blocks_off) : nullptr;
  if (blocks && !opts_.inspect && !CopyArena::sweep(pool_->pop(), blocks, pool_->oid(0).pool_uuid_lo, pool_->size()))
    fail(Code::Corrupt, "pool " + pool_->path() + ": the copy arena's block list is damaged");
  // The copy arena: PMEM and in-place rows only. On the msync path a copy
  // in the pool would dirty pages that the next sync writes to the disk;
  // there, and on logged pools (the msync path's layout; on PMEM a
  // deliberate choice the arena was not measured with), a push with no
  // room in the cache for its copy writes the row back instead.
  // PMEMPS_COPY_ARENA=0 turns it off (to measure without it).
  const char* arena = std::getenv("PMEMPS_COPY_ARENA");
  if (blocks && pool_->is_pmem() && root_->layout == kLayoutInPlace && !opts_.inspect && !(arena && std::strcmp(arena, "0") == 0)) {
    copies_ = std::make_unique<CopyArena>(pool_->pop(), blocks, &tx_mu_, std::min<uint64_t>(opts_.cache_bytes, pool_->size() / 16));
    pool_->on_full([this] { return copies_ && copies_->shed(); });
  }
  layout_ = root_->layout;
  info_.layout = layout_;
  if (layout_ == kLayoutLogged) vlog_ = std::make_unique<VLog>(*pool_, root_->vlog_off, &tx_mu_);
  info_.log_pwrite = vlog_ && pool_->writes_file();
  info_.slot_pwrite = vlog_ && pool_->writes_slots();

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
    std::lock_guard<TxMutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    // Every epoch after the last durable checkpoint died with the process.
    // Recording them dead is all the recovery the rows need: readers skip
    // their versions, so nothing proportional to the table runs here.
    std::vector<DeadRange> dead = (crashed && root_->next_epoch > bound + 1) ? add_dead(tx, bound + 1, root_->next_epoch - 1) : dead_;
    recovering_ = crashed && p_active_;
    cur_epoch_ = root_->next_epoch;
    root_->next_epoch = cur_epoch_ + 2;
    root_->clean = 0;
    root_->opens++;
    info_.opens = root_->opens;
    persist_root(tx);
    tx.commit();
    dead_ = std::move(dead);
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
  // Slots a crash left behind, rebuilt from the version log before
  // anything reads one: proportional to the log since the mark, not rows.
  if (vlog_) open_mark();
  // Storage of tables that died with a crash, or whose freeing a crash
  // interrupted: proportional to their slabs and index segments, not rows.
  reclaim();
  start_compactor();
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
    t->slot_bytes = slot_bytes_for(layout_, d->row_floats);
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
    std::lock_guard<TxMutex> g(tx_mu_);
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
  std::lock_guard<TxMutex> g(tx_mu_);
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

void Engine::close(const std::string& record) {
  // First, and without a lock: the compactor takes epoch_mu_ shared.
  stop_compactor();
  std::unique_lock<std::mutex> cg(ckpt_mu_);
  wait_prepared(cg);
  std::unique_lock<RwLock> el(epoch_mu_);
  if (closed_) return;
  try {
    store_->close(record);
  } catch (...) {
    // The engine stays open (the caller may free space and close again):
    // the compactor goes on with it.
    if (!closed_) {
      {
        std::lock_guard<std::mutex> g(compact_mu_);
        compact_stop_ = false;
      }
      start_compactor();
    }
    throw;
  }
}

void Engine::close_pool(const std::string& given) {
  test_hook("close.fail");  // a test fails a close here, before it writes anything: the engine stays open
  const std::string& record = opts_.inspect ? info_.close_record : given;
  if (record.size() > root_->close_cap) {
    // Normally reserved ahead (the server does, before acknowledging what
    // makes its record grow); failing here leaves the pool as after a crash.
    std::lock_guard<TxMutex> g(tx_mu_);
    grow_close_slot(record.size());
  }
  {
    // Log room for every dirty version first, the room their pushes left
    // held (dirty_res_): a close that fails for lack of it (it cannot, but
    // for a bug) fails before it writes anything (the pool as after a crash).
    VLog::Reservation res;
    DirtyRoomBack back{*this, res};
    if (vlog_) take_dirty_room(res, dirty_log_bytes(false));
    for (int i = 0; i < kStripes; i++) {
      Stripe& s = stripes_[i];
      std::lock_guard<std::mutex> g(s.mu);
      for (DirtyList* l : {&s.pending, &s.dirty}) {
        while (!l->empty()) {
          Entry* e = l->back();
          write_back(*tables_[e->table], e, &res);
          s.flushed(e);
          writebacks_.fetch_add(1, std::memory_order_relaxed);
        }
      }
      if (i == kStripes / 2) failpoint("close.mid_writeback");
    }
  }
  if (vlog_) vlog_->sync();
  pool_->persist_ranges();
  // The slots too, so that the mark can move to the tail in the clean
  // mark's transaction: a clean open replays nothing.
  pool_->persist_lazy();
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
    std::lock_guard<TxMutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    // Closed while recovering (a checkpoint prepared before a crash is still
    // unresolved): the next open must recover again, so the stop does not
    // count as clean. Nothing was written meanwhile (pushes were refused).
    // An inspection leaves a crash a crash.
    root_->clean = (recovering_ || (opts_.inspect && !info_.clean_close)) ? 0 : 1;
    // The versions written back above are part of the pool from here.
    std::unique_lock<std::mutex> tail;
    VLog::Pos at;
    if (vlog_) {
      // The slots were synced above: the mark moves with the tail (the
      // compactor, which moves it too, is stopped).
      tail = vlog_->publish_tail(tx, &at);
      root_->mark_seg = at.seg_off;
      root_->mark_off = at.off;
    }
    // The record is only read when clean == 1, which this same transaction
    // sets: a crash anywhere before the commit leaves the old clean == 0.
    root_->close_len = record.size();
    persist_root(tx);
    tx.commit();
    if (vlog_) {
      std::lock_guard<std::mutex> mg(mark_mu_);
      mark_ = at;
    }
  }
  drop_cache();
  for (auto& t : tables_) t.reset();
  names_.clear();
  vlog_.reset();
  pool_->on_full(nullptr);
  copies_.reset();
  pool_.reset();
  root_ = nullptr;
  closed_ = true;
}

uint64_t Engine::reserve_close_record(uint64_t bytes) {
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<TxMutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  return store_->reserve_close_record(bytes);
}

uint64_t Engine::grow_close_slot(uint64_t bytes) {
  if (bytes <= root_->close_cap) return root_->close_cap;
  // Geometric growth keeps reallocations rare; the exact size is the
  // fallback when the pool has no room for more.
  const uint64_t more = std::max(bytes, root_->close_cap + root_->close_cap / 2);
  for (uint64_t want : {more, bytes}) {
    try {
      Tx tx(*pool_);
      const uint64_t off = tx.alloc(want, Tx::Fill::InTx);
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

Engine::CheckReport Engine::check() {
  std::unique_lock<RwLock> el(epoch_mu_);
  CheckReport r;
  if (!closed_) store_->check(r);
  return r;
}

void Engine::check_pool(CheckReport& r) {
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
      const int live_slot = pick(*t, row, read_bound_);
      if (live_slot >= 0 && vlog_) {
        try {
          record_of(*t, slot_hdr(*t, row, static_cast<uint32_t>(live_slot)), key);
        } catch (const Error& e) {
          r.bad_records++;
          if (r.problems.size() < 20) r.problems.push_back("table " + t->name + " key " + std::to_string(key) + ", its live version: " + e.what());
        }
      }
      if (live_slot >= 0)
        r.rows_live++;
      else
        r.rows_without_version++;
    });
  }
}

}  // namespace pmemps
