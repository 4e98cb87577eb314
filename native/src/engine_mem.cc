// The memory-only reference engine's own state: a checkpoint is a full
// copy of the cache (MemSnap), and ballot and identity live in DRAM.
//
// Invariants:
//  * Every row of a memory-only engine is in its cache (unbounded budget):
//    there is no row store behind it, so its data path (MemRows) never
//    loads, reserves or evicts.
//  * It is the baseline of the benchmarks and the bit-for-bit reference of
//    the crash tests: it shares the cache, the optimizer code and the order
//    of every float operation with the pool engine, and none of the pool's
//    persistence.
#include <cstring>

#include "engine_impl.h"

namespace pmemps {

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
