// The slots' mark of a logged pool (docs/design.md, "The log as the
// journal of the slots"): a write-back's slot is written with write_lazy,
// outside the sync that publishes a checkpoint, and the version log, which
// holds every write-back's record in order with the slot it was written
// for, is the journal that rebuilds the slots a crash left behind.
//
// Invariants:
//  * Every slot that a record before the mark (PRoot.mark_seg, mark_off)
//    names is durable: advance_mark makes the slots written so far durable
//    (persist_lazy) before the transaction that moves the mark, and it
//    moves it only to a published tail, before which every record has had
//    its slot written (the append's `then`, vlog.h).
//  * The records from the mark to the published tail are whole and
//    durable (a tail is published only after the log's sync), and for each
//    slot the last of them that names it is what the slot held at the
//    publish: writers of one row append and write its slot in the same
//    order (under its stripe's lock, or as the flusher of a `flushing`
//    entry). So replaying them in log order, at open, before anything
//    reads a slot, gives every slot its content as of that publish, which
//    is all any durable checkpoint can need; what followed the tail is of
//    epochs that died with the crash, in slots that no checkpoint needs
//    (the rule of write_back), whatever part of it reached the media.
//  * Replay writes a slot whole (a torn 16 bytes is repaired), whatever
//    the record's epoch; it is idempotent, so a crash during it only
//    repeats it; open leaves the mark where it was (the next advance
//    syncs the replayed slots and moves it).
//  * A compaction copy (kTagCopy) is replayed only into a slot that still
//    holds the copied version ({epoch, step}): a write-back that overtook
//    the copy keeps its own.
//  * No record of a table replays into another: a new table at an index
//    starts after a mark that every record of the index's earlier table
//    precedes (create_table advances it, with compaction's copies held
//    back by copy_gate_), and replay skips rows whose key or table differs.
//  * Compaction frees only segments before the mark's (oldest_full_segment),
//    so the replay never meets a freed segment.
#include <algorithm>
#include <bitset>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "engine_impl.h"

namespace pmemps {

namespace {

// Replay reads about this much log at most, plus what the log gains in the
// compactor's second between checks: 256 MiB of records at dim 64 Adagrad
// are ~490k rows, a fraction of a second warm. A lower lag syncs the slot
// pages more often, and a write-back's first store to a page the sync
// cleaned costs a fault into the filesystem (BENCHMARKS.md, "Step 4's
// lower bounds"). PMEMPS_LOG_MARK_MB overrides it (tests).
uint64_t mark_lag_bytes() {
  if (const char* v = std::getenv("PMEMPS_LOG_MARK_MB")) return std::strtoull(v, nullptr, 10) << 20;
  return uint64_t{256} << 20;
}

}  // namespace

VLog::Pos Engine::mark() const {
  std::lock_guard<std::mutex> g(mark_mu_);
  return mark_;
}

void Engine::advance_mark(bool epoch_held) {
  // Indices with no table now: every record of theirs was appended before
  // the sync below, so it will precede the mark (no compaction copy is
  // under way: the compactor calls this between chunks, create_table
  // holds copy_gate_, open runs before the compactor starts). Taken before
  // mark_mu_: create_table holds epoch_mu_ exclusive when it waits for
  // mark_mu_, so nothing may wait for epoch_mu_ while holding mark_mu_.
  std::bitset<kMaxTables> unused;
  std::vector<uint64_t> gens(kMaxTables);
  {
    std::shared_lock<RwLock> el(epoch_mu_, std::defer_lock);
    if (!epoch_held) el.lock();
    std::lock_guard<std::mutex> ig(idx_mu_);
    for (uint32_t i = 0; i < kMaxTables; i++) {
      unused[i] = !tables_[i];
      gens[i] = idx_gen_[i];
    }
  }
  auto forget_unused = [&] {
    std::lock_guard<std::mutex> ig(idx_mu_);
    for (uint32_t i = 0; i < kMaxTables; i++)
      if (unused[i] && idx_gen_[i] == gens[i]) idx_logged_.reset(i);
  };
  std::lock_guard<std::mutex> g(mark_mu_);
  publish_log();
  const VLog::Pos to = vlog_->published();
  if (to.seg_off == mark_.seg_off && to.off == mark_.off) return forget_unused();
  // Every record before `to` has had its slot written (vlog.h: a sync
  // counts a record once its `then` returned), so this takes them all.
  pool_->persist_lazy();
  failpoint("mark.before_advance");
  set_mark(to);
  forget_unused();
}

void Engine::set_mark(VLog::Pos to) {
  std::lock_guard<TxMutex> t(tx_mu_);
  Tx tx(*pool_, TxLog::Bounded);
  tx.add(root_, sizeof(PRoot));
  root_->mark_seg = to.seg_off;
  root_->mark_off = to.off;
  persist_root(tx);
  tx.commit();
  mark_ = to;
}

// Replay touches a random index page and a random row page per record. So
// each batch of records is looked up in the index's address order and
// applied in the rows' address order, where a read fault maps the pages
// around it too; stable sorts keep the log order of one row's records, and
// rows are independent of each other, so the result is the log-order
// replay's (batches go in log order). A slot that already holds its record
// is left alone: dirtying a random page of a file costs 20-100 us on ext4
// (BENCHMARKS.md, "A start after a crash"), and after a kill -9 the page
// cache kept nearly every slot write.
uint64_t Engine::replay_log() {
  struct Rec {
    uintptr_t at;  // the sort key: the index probe's address, then the row's
    uint64_t key, off, ref;
    uint32_t table, tag, epoch, step;
  };
  constexpr size_t kBatch = 1 << 20;  // 48 MiB of Recs at most
  std::vector<Rec> batch;
  std::atomic<uint64_t> rewritten{0};
  auto by_at = [](const Rec& a, const Rec& b) { return a.at < b.at; };
  // Both phases run in chunks on the caller and the helpers (parallel.h):
  // a chunk of the second holds every record of its rows (they are
  // adjacent after the sort), so each row's records stay in log order.
  constexpr size_t kChunk = 4096;
  std::vector<size_t> cut;
  auto apply = [&] {
    std::stable_sort(batch.begin(), batch.end(), by_at);
    helpers_->run((batch.size() + kChunk - 1) / kChunk, [&](size_t c) {
      for (size_t i = c * kChunk, e = std::min(batch.size(), i + kChunk); i < e; i++) {
        Rec& r = batch[i];
        Table& t = *tables_[r.table];
        std::shared_lock<RwLock> il(t.index->mu());
        r.ref = t.index->lookup(r.key);
        r.at = r.ref ? reinterpret_cast<uintptr_t>(row_ptr(t, r.ref)) : 0;
      }
    });
    std::stable_sort(batch.begin(), batch.end(), by_at);
    cut.assign(1, 0);
    for (size_t i = kChunk; i < batch.size(); i += kChunk) {
      while (i < batch.size() && batch[i].at == batch[i - 1].at) i++;
      if (i < batch.size()) cut.push_back(i);
    }
    cut.push_back(batch.size());
    helpers_->run(cut.size() - 1, [&](size_t c) {
      for (size_t i = cut[c]; i < cut[c + 1]; i++) {
        const Rec& r = batch[i];
        failpoint("replay.mid");
        Table& t = *tables_[r.table];
        // A row past rows_used was made after the last publish: its key may
        // name another row once appends resume.
        if (!r.ref || !valid_ref(t, r.ref, r.key)) continue;
        LoggedSlot* ls = reinterpret_cast<LoggedSlot*>(slot_hdr(t, row_ptr(t, r.ref), (r.tag & kTagSlotMask) - 1));
        if ((r.tag & kTagCopy) && (ls->h.epoch != r.epoch || ls->h.step != r.step)) continue;
        const LoggedSlot v{{r.epoch, r.step}, r.off};
        // After a kill -9 the page cache kept the slot writes, so most
        // slots already hold their record: a write would only dirty a
        // random page (~20-100 us a page on ext4, BENCHMARKS.md).
        if (std::memcmp(ls, &v, sizeof v) == 0) continue;
        pool_->write_lazy(ls, &v, sizeof v);
        rewritten.fetch_add(1, std::memory_order_relaxed);
      }
      pool_->drain();  // PMEM: a thread's drain orders only its own flushes
    });
    batch.clear();
  };
  uint64_t read = 0;
  vlog_->for_each_since(mark_, [&](uint64_t off, const VRecordHdr* h) {
    read++;
    if (h->table >= kMaxTables) return;
    idx_logged_.set(h->table);
    const uint32_t s = h->tag & kTagSlotMask;
    if (s == 0 || s > kSlots) return;
    Table* t = tables_[h->table].get();
    if (!t || !t->d || h->n != t->row_floats) return;
    batch.push_back({t->index->probe_at(h->key), h->key, off, 0, h->table, h->tag, h->epoch, h->step});
    if (batch.size() == kBatch) apply();
  });
  apply();
  info_.replay_writes = rewritten.load();
  return read;
}

void Engine::open_mark() {
  mark_lag_ = mark_lag_bytes();
  mark_ = {root_->mark_seg, root_->mark_off};
  // The mark stays where it is: the replayed slots are synced with the
  // next advance (a crash before it replays them again), so a start after
  // a crash pays no sync of the pages they are on.
  info_.replayed = replay_log();
  if (mark_.seg_off != kMarkAtTail) return;
  // An upgraded pool: its slots were synced before their publish. The
  // mark becomes that tail before anything is appended after it.
  set_mark(vlog_->published());
}

bool Engine::index_logged(uint32_t idx) {
  std::lock_guard<std::mutex> ig(idx_mu_);
  return idx_logged_[idx];
}

void Engine::index_in_use(uint32_t idx) {
  std::lock_guard<std::mutex> ig(idx_mu_);
  idx_logged_.set(idx);
  idx_gen_[idx]++;
}

}  // namespace pmemps
