// Tables: create, update (hyperparameters), drop, list.
//
// Invariants:
//  * The set of tables changes only under epoch_mu_ exclusive, so a pull or
//    push sees one table for its whole batch; names_ holds exactly the
//    tables visible at the read bound (rebuild_names after every change).
//  * A table's descriptor (PTable) is written in one transaction with its
//    checksum; nothing refers to a slot before that transaction commits.
//  * A drop is undoable until a checkpoint after it commits: a table some
//    durable checkpoint holds is only marked dropped; one no checkpoint holds
//    is garbage at once and freed by reclaim (docs/design.md, "Tables").
#include <cstring>

#include "engine_impl.h"

namespace pmemps {

namespace {

const char* opt_name(OptType t) {
  static const char* n[] = {"sgd", "adagrad", "adam", "rmsprop", "ftrl"};
  return n[static_cast<uint32_t>(t)];
}

}  // namespace

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
  // Logged pools: no record of an index's earlier tables may follow the
  // mark its new table starts from (engine_mark.cc). A new table takes a
  // free index that holds no record after the mark, which almost always
  // exists; when none does, the mark moves first, here outside epoch_mu_
  // (its sync of the slots can take seconds on a disk), under it only when
  // a concurrent create took the index this one made clean. Compaction
  // appends no copy meanwhile (copy_gate_).
  std::unique_lock<std::mutex> gate;
  if (vlog_) {
    gate = std::unique_lock<std::mutex>(copy_gate_);
    bool need = false;
    {
      std::shared_lock<RwLock> el(epoch_mu_);
      if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
      if (!names_.count(name)) {
        std::lock_guard<TxMutex> g(tx_mu_);
        need = true;
        for (uint32_t i = 0; i < kMaxTables && need; i++)
          if (!tables_[i] && store_->slot_reusable(i) && !index_logged(i)) need = false;
      }
    }
    if (need) advance_mark();
  }
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
  if (stripes_[0].budget < 8 * entry) {  // never in memory mode: its budget is unbounded
    const uint64_t need_mb = (static_cast<uint64_t>(8) * entry * kStripes + (1 << 20) - 1) >> 20;
    fail(Code::InvalidArgument, "the cache budget is too small for rows of dim " + std::to_string(dim) + " with " + opt_name(opt.type) +
                                    ": raise the cache size to at least " + std::to_string(need_mb + 1) + " MiB");
  }
  uint32_t idx = kMaxTables;
  {
    // A garbage slot (storage still being freed) is not free yet.
    std::lock_guard<TxMutex> g(tx_mu_);
    for (uint32_t pass = 0; pass < 2 && idx == kMaxTables; pass++)
      for (uint32_t i = 0; i < kMaxTables; i++)
        if (!tables_[i] && store_->slot_reusable(i) && (pass == 1 || !vlog_ || !index_logged(i))) {
          idx = i;
          break;
        }
  }
  if (idx == kMaxTables)
    fail(Code::OutOfSpace,
         "at most " + std::to_string(kMaxTables) +
             " tables, counting those dropped since the last checkpoint (a restore may bring them back): commit a checkpoint to free "
             "their slots");

  if (vlog_ && index_logged(idx)) advance_mark(true);
  auto t = std::make_unique<Table>();
  t->idx = idx;
  t->name = name;
  t->dim = dim;
  t->row_floats = rf;
  t->slot_bytes = slot_bytes_for(layout_, rf);
  t->row_bytes = row_bytes_for(layout_, rf);
  t->opt = opt;
  t->init = init;
  t->created_epoch = cur_epoch_;
  init_geometry(*t);
  store_->table_created(*t);
  if (vlog_) index_in_use(idx);
  names_[name] = idx;
  tables_[idx] = std::move(t);
}

// The descriptor, in one transaction with its checksum; the table becomes
// reachable (names_, tables_) only after it commits.
void Engine::table_created_pool(Table& t) {
  std::lock_guard<TxMutex> g(tx_mu_);
  Tx tx(*pool_);
  PTable* d = pool_->at<PTable>(root_->tables_off) + t.idx;
  tx.add(d, sizeof(PTable));
  std::memset(d, 0, sizeof(PTable));
  d->state = 1;
  d->dim = t.dim;
  d->opt = static_cast<uint32_t>(t.opt.type);
  d->init = static_cast<uint32_t>(t.init.type);
  d->row_floats = t.row_floats;
  d->row_bytes = t.row_bytes;
  d->created_epoch = cur_epoch_;
  d->seed = t.init.seed;
  std::memcpy(d->hyper, t.opt.h, sizeof d->hyper);
  std::memcpy(d->init_params, t.init.p, sizeof d->init_params);
  std::memcpy(d->name, t.name.data(), t.name.size());
  d->rows_per_slab = t.rows_per_slab;
  d->slab_top = tx.alloc(sizeof(uint64_t) * kSlabTop, Tx::Fill::Zeroed);
  d->index_dir = Index::create(*pool_, tx);
  d->salt = mix64(t.init.seed ^ (static_cast<uint64_t>(t.idx) << 32) ^ cur_epoch_);
  d->checksum = Pool::table_sum(d);
  failpoint("create_table.mid_tx");
  tx.commit();
  t.d = d;
  t.index = std::make_unique<Index>(*pool_, d, &tx_mu_);
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
  store_->hyper_changed(*t, opt);
  t->opt = opt;
}

void Engine::hyper_changed_pool(Table& t, const OptimizerSpec& opt) {
  std::lock_guard<TxMutex> g(tx_mu_);
  Tx tx(*pool_, TxLog::Bounded);
  tx.add(t.d, sizeof(PTable));
  std::memcpy(t.d->hyper, opt.h, sizeof t.d->hyper);
  t.d->checksum = Pool::table_sum(t.d);
  tx.commit();
}

// The memory side refuses every drop before any lock or name lookup.
void Engine::drop_table(const std::string& name) { store_->drop_table(name); }

void Engine::drop_table_pool(const std::string& name) {
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
    std::lock_guard<TxMutex> g(tx_mu_);
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

}  // namespace pmemps
