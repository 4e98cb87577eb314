// The memory-only reference engine's durable side (MemStore): a checkpoint
// is a full copy of the cache, and ballot and identity live in DRAM.
//
// Invariants:
//  * Every row of a memory-only engine is in its cache (unbounded budget):
//    there is no row store behind it, so its data path (MemRows) never
//    loads, reserves or evicts.
//  * It is the baseline of the benchmarks and the bit-for-bit reference of
//    the crash tests: it shares the cache, the optimizer code and the order
//    of every float operation with the pool engine, and none of the pool's
//    persistence.
//  * The engine calls it with the same checks done and locks held as the
//    pool's side (engine_impl.h, Engine::Store), so the two differ only in
//    where state is kept, never in which calls succeed, except drop_table,
//    which a memory-only engine refuses.
#include <cstring>
#include <map>

#include "engine_impl.h"

namespace pmemps {

struct Engine::MemStore final : Store {
  struct Row {
    std::vector<float> data;
    uint32_t step;
  };
  struct TableCopy {
    std::string name;
    uint32_t dim;
    OptimizerSpec opt;
    InitSpec init;
    uint64_t created_epoch;
  };
  // A full copy: the reference and the baseline, not the product's
  // persistence, so simplicity beats cost here.
  struct Snap {
    uint64_t id = 0, epoch = 0;
    std::map<std::pair<uint32_t, uint64_t>, Row> rows;
    std::map<uint32_t, TableCopy> tables;
    std::string dense, meta;
  };

  Engine& e;
  std::unique_ptr<Snap> committed_, prepared_;
  uint64_t ballot_ = 0;
  Identity identity_;

  explicit MemStore(Engine& en) : e(en) {}

  void open() override { e.info_.created = true; }
  bool slot_reusable(uint32_t) const override { return true; }  // no storage outlives a table
  void table_created(Table&) override {}
  void hyper_changed(Table&, const OptimizerSpec&) override {}
  void drop_table(const std::string&) override { fail(Code::FailedPrecondition, "tables cannot be dropped in a memory-only engine"); }

  void prepare_begin(uint64_t id, const std::string& dense, const std::string& meta, uint64_t ballot) override {
    std::unique_lock<RwLock> el(e.epoch_mu_);
    auto snap = std::make_unique<Snap>();
    snap->id = id;
    snap->epoch = e.cur_epoch_;
    snap->dense = dense;
    snap->meta = meta;
    for (auto& s : e.stripes_) {
      std::lock_guard<std::mutex> g(s.mu);
      s.for_each([&](Entry* en) {
        Row r;
        r.data.assign(en->data, en->data + e.tables_[en->table]->row_floats);
        r.step = en->step;
        snap->rows.emplace(std::make_pair(en->table, en->key), std::move(r));
      });
    }
    for (auto& t : e.tables_)
      if (t) snap->tables[t->idx] = TableCopy{t->name, t->dim, t->opt, t->init, t->created_epoch};
    prepared_ = std::move(snap);
    e.p_epoch_ = e.cur_epoch_;
    e.cur_epoch_++;
    e.p_active_ = true;
    e.p_id_ = id;
    e.last_id_ = id;
    el.unlock();
    ballot_ = std::max(ballot_, ballot);
  }

  void commit(std::unique_lock<RwLock>&) override {
    committed_ = std::move(prepared_);
    e.c_id_ = e.p_id_;
    e.c_epoch_ = e.p_epoch_;
    e.p_active_ = false;
    e.p_id_ = e.p_epoch_ = 0;
  }

  void abort(std::unique_lock<RwLock>&) override {
    prepared_.reset();
    e.p_active_ = false;
    e.p_id_ = e.p_epoch_ = 0;
  }

  void abort_unprepared(uint64_t) override {}  // last_id_ in DRAM is all there is

  void rollback(std::unique_lock<RwLock>&) override {
    e.drop_cache();
    for (auto& t : e.tables_) {
      if (!t) continue;
      if (!committed_ || !committed_->tables.count(t->idx)) e.drop_table_object(t->idx);
    }
    if (committed_) {
      for (auto& [idx, mt] : committed_->tables) {
        if (e.tables_[idx]) e.tables_[idx]->opt = mt.opt;
        if (e.tables_[idx]) e.tables_[idx]->r_next = 0;
      }
      for (auto& [k, r] : committed_->rows) {
        Table& t = *e.tables_[k.first];
        const uint64_t h = Stripe::hash(k.first, k.second);
        Stripe& st = e.stripe_for(h);
        Entry* en = st.make(k.first, k.second, t.row_floats);
        std::memcpy(en->data, r.data.data(), sizeof(float) * t.row_floats);
        en->step = r.step;
        st.insert(en, h);
        t.r_next++;
      }
    }
    e.cur_epoch_++;
  }

  bool committed(uint64_t* id, std::string* dense, std::string* meta) override {
    if (!committed_) return false;
    *id = committed_->id;
    *dense = committed_->dense;
    *meta = committed_->meta;
    return true;
  }

  void close(const std::string&) override {
    e.drop_cache();
    e.closed_ = true;
  }
  // Nothing is written at close, so any record fits.
  uint64_t reserve_close_record(uint64_t) override { return 1ULL << 53; }
  void check(CheckReport&) override {}
  void stats(Stats&) override {}
  uint64_t raise_ballot(uint64_t b) override { return ballot_ = std::max(ballot_, b); }
  uint64_t ballot() const override { return ballot_; }
  Identity identity() const override { return identity_; }
  void set_identity(const Identity& id) override { identity_ = id; }
};

std::unique_ptr<Engine::Store> Engine::make_mem_store(Engine& e) { return std::make_unique<MemStore>(e); }

}  // namespace pmemps
