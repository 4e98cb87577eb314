// Checkpoints: prepare (boundary, flush, publish), commit, abort,
// rollback, and the dead-epoch list they maintain.
//
// Invariants:
//  * A decision (publish, commit, abort, rollback) is one bounded
//    transaction on the root; the tables' side follows in bounded
//    transactions that open would redo (settle_tables), so every decision
//    works on a full pool and survives a crash halfway.
//  * Rows and index slots a checkpoint names are durable before the record
//    that names them: on PMEM every writer drains its own flushes before it
//    releases the stripe or index lock that exposes them (pool.h; the
//    flusher, which writes outside the stripe's lock, before it clears the
//    rows' `flushing` marks under it), and the flush returns only after
//    every stripe's pending list was found empty and every step that took
//    rows from one has drained (idle_thread.h); on the msync path
//    persist_ranges syncs every writer's pages before the publish, but for
//    the slots of a logged pool, whose journal is the version log synced
//    before it (engine_mark.cc).
//  * dead_ mirrors the pool's dead-range list: sorted, disjoint, and a
//    version whose epoch falls in it is never read.
//  * A prepare between prepare_begin and prepare_finish is marked by
//    preparing_; commit, abort, rollback, drop and close wait for it.
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <thread>

#include "engine_impl.h"

namespace pmemps {

namespace {

constexpr uint32_t kFlushChunk = 32;           // rows per stripe-lock hold in the flush: pushes interleave
constexpr size_t kFlushRun = size_t{1} << 20;  // record bytes per batch of the msync path's flush with a version log
// The share of a stripe's budget the flush keeps free for the copies pushes
// make of pending rows: 1/16 on PMEM; 1/4 on the msync path, where a push
// that finds no room writes the row back at ~17 µs (the write faults on a
// page the last sync cleaned) against 0.1 µs for a copy (disk, 10% prepare:
// maxPushWaitUs 40-56 ms against 70-74; BENCHMARKS.md).
constexpr size_t kCowRoomPmem = 16;
constexpr size_t kCowRoomMsync = 4;

}  // namespace

// ============================================================ epochs

std::vector<DeadRange> Engine::add_dead(Tx& tx, uint64_t lo, uint64_t hi) {
  if (lo > hi) return dead_;
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
    const uint64_t off = tx.alloc(sizeof(DeadRange) * cap, Tx::Fill::Zeroed);
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
  return merged;
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

// ======================================================== checkpoints

void Engine::flush_pending() {
  test_hook("flush.start");
  test_hook("flush.fail");
  // Log room for every pending version before any is taken: a flush that
  // failed halfway would leave rows marked clean whose version is nowhere.
  // The room is the pending rows' own, held since their pushes returned.
  DirtyRoomBack back{*this, flush_res_};
  if (vlog_) take_dirty_room(flush_res_, dirty_log_bytes(true));
  if (!pool_->is_pmem()) {
    // The msync path: the flush waits on the page cache and the disk, not
    // the CPU, and pushes that find their rows still pending write them back
    // themselves, faulting pool pages in under a stripe lock; a flusher that
    // stood aside left them more such rows (push p99 during a 10% prepare at
    // 10M rows on the project's disk: 395 ms, against 9.5 ms at full speed;
    // docs/design.md). So here it runs on the caller's thread at full speed.
    FlushCursor c;
    // With a version log, a megabyte of records in one write: written a
    // chunk (17 KB) at a time, each write zeroed the page it ended in first
    // (a tenth of the flush in a profile), and the log's msync ran at half
    // the speed (690 against 1,400 MB/s into a fallocate'd file;
    // bench/log-write-path.c).
    if (vlog_) c.batch_limit = kFlushRun;
    while (flush_step(false, c)) {
    }
    return;
  }
  idle_.run<FlushCursor>([this](bool polite, FlushCursor& c) { return flush_step(polite, c); });
}

// One chunk of one stripe, the stripes in turn: never two holds of one
// stripe in a row, since a mutex hands itself back to the thread that just
// released it before a woken waiter runs (a push waiting on the stripe
// being flushed waited for the whole stripe, ~12 ms at 30k pending rows).
// The chunk's versions are copied under the stripe's lock and written to
// the pool outside it (flush_batch), so a push waits at most for
// kFlushChunk copies. Returns false after a whole round of stripes found
// nothing to flush and the batch is written.
bool Engine::flush_step(bool polite, FlushCursor& c) {
  if (polite) {
    // The idle thread also stands aside while pushes run: the copies a push
    // makes of pending rows are cheaper than waiting for a core.
    while (pushes_running_.load(std::memory_order_acquire) > 0 && !idle_.stopping()) std::this_thread::sleep_for(std::chrono::microseconds(50));
    // A thread woken meanwhile (a push's, or the event loop that issues the
    // next one) may wait behind this one for the rest of a scheduler tick (4
    // ms at HZ=250), an idle-priority thread being preempted lazily: seen
    // with `perf sched` as 3-6 ms pushes with a core idle and push p99 during
    // a prepare 2.61x -> 1.35x that without one when yielding here
    // (BENCHMARKS.md).
    sched_yield();
  }
  const int i = c.stripe;
  c.stripe = (c.stripe + 1) % kStripes;
  // Once per prepare: on the flushing thread (the idle one on PMEM, the
  // caller's on the msync path), not on a caller stepping in.
  if ((polite || !pool_->is_pmem()) && c.rounds == 0 && i == kStripes / 2) failpoint("prepare.mid_flush");
  if (c.stripe == 0) c.rounds++;
  Stripe& s = stripes_[i];
  const size_t first = c.taken.size();
  size_t wrote_here = 0, dropped = 0;
  bool capped = false;
  // A failure while taking (a buffer that cannot grow, a write-back that
  // throws) stops the taking before the entry at hand is touched; what was
  // taken is still written and unmarked below, then the failure is thrown.
  std::exception_ptr err;
  {
    std::lock_guard<std::mutex> g(s.mu);
    test_hook("flush.stripe_locked");  // a test holds a stripe here: pushes wait, and say so
    // Marked entries cannot be evicted: a stripe already in the batch gives
    // it more only within an eighth of its budget, so pushes still find
    // victims (one chunk is always taken, as when every chunk was written
    // at once: a cache of a few large rows a stripe relies on it).
    const size_t cap = s.budget / 8;
    const bool in_batch = c.marked[i] > 0;
    for (uint32_t k = 0; k < kFlushChunk && !s.pending.empty(); k++) {
      Entry* e = s.pending.back();
      if (in_batch && c.marked[i] + e->bytes > cap) {
        capped = true;
        break;
      }
      size_t off = SIZE_MAX;  // a shadow is written as it is: nothing else refers to it
      Entry* owner = nullptr;
      // Nothing else may write a row while its version is written outside
      // this lock: two writers choosing a slot at once could choose the
      // same one (the newer version lost, or the checkpoint's). Every other
      // writer holds this lock, and eviction and compaction pass over an
      // entry marked `flushing`; so the row's cached entry is marked, and a
      // shadow whose row has none (evicted since the copy was made) is
      // written here instead, where compaction cannot repoint the row's
      // slots meanwhile.
      try {
        if (e->shadow) {
          owner = s.find(e->table, e->key, Stripe::hash(e->table, e->key));
          // An owner pending (or being flushed) too means a shadow left by a
          // prepare that failed (cache.h): the owner holds the newer version
          // this checkpoint needs, and within one prepare a row has one
          // pending item, so this is the only way it happens.
          const bool stale = owner && (s.is_pending(owner) || owner->flushing);
          if (stale || !owner) {
            if (!stale) {
              write_back(*tables_[e->table], e, &flush_res_);
              wrote_here++;
            } else {
              dropped++;
            }
            s.mark_clean(e);
            s.recycle(e);
            continue;
          }
          owner->flushing = 1;
        } else {
          if (c.buf.size() < c.used + e->bytes) c.buf.resize(std::max(c.buf.size() * 2, c.used + e->bytes));
          off = c.used;
          std::memcpy(c.buf.data() + off, e, e->bytes);
          c.used += e->bytes;
          e->flushing = 1;
        }
      } catch (...) {
        err = std::current_exception();
        break;
      }
      s.mark_clean(e);
      c.marked[i] += e->bytes;
      c.rec_bytes += VLog::record_bytes(tables_[e->table]->row_floats);
      c.taken.push_back({e, off, owner, i});
    }
    if (wrote_here) {
      pool_->drain();  // as every writer: before the lock that exposes them is released
      writebacks_.fetch_add(wrote_here, std::memory_order_relaxed);
    }
  }
  if (err) {
    flush_batch(c);
    std::rethrow_exception(err);
  }
  if (c.taken.size() == first) {
    if (capped) {
      // The stripe holds its share of marks: the batch is written, and the
      // stripe comes next again.
      flush_batch(c);
      c.stripe = i;
      c.empty = 0;
      return true;
    }
    // A chunk that only dropped stale shadows is progress too: counted as
    // an empty stripe, kStripes of them ended the flush with rows still
    // pending, and the checkpoint was published without them (a review).
    if (!wrote_here && !dropped) {
      if (++c.empty < kStripes) return true;
      flush_batch(c);
      return false;
    }
    c.empty = 0;
    return true;
  }
  c.empty = 0;
  if (c.rec_bytes >= c.batch_limit) flush_batch(c);
  return true;
}

void Engine::flush_batch(FlushCursor& c) {
  if (c.taken.empty()) return;
  auto copy_of = [&](const FlushCursor::Taken& tk) { return tk.off == SIZE_MAX ? tk.e : reinterpret_cast<Entry*>(c.buf.data() + tk.off); };
  for (auto& tk : c.taken) prefetch_slots(*tables_[tk.e->table], copy_of(tk)->ref);
  c.copies.clear();
  for (auto& tk : c.taken) c.copies.push_back(copy_of(tk));
  write_back_many(c.copies.data(), c.copies.size(), &flush_res_, true);
  pool_->drain();
  writebacks_.fetch_add(c.taken.size(), std::memory_order_relaxed);
  const size_t room = pool_->is_pmem() ? kCowRoomPmem : kCowRoomMsync;
  // A stripe's entries keep the order they were taken in (the copy room
  // below drops the least recently dirtied first).
  std::stable_sort(c.taken.begin(), c.taken.end(), [](const FlushCursor::Taken& a, const FlushCursor::Taken& b) { return a.stripe < b.stripe; });
  for (size_t a = 0, b; a < c.taken.size(); a = b) {
    Stripe& s = stripes_[c.taken[a].stripe];
    for (b = a; b < c.taken.size() && c.taken[b].stripe == c.taken[a].stripe;) b++;
    std::lock_guard<std::mutex> g(s.mu);
    for (size_t k = a; k < b; k++) {
      auto& [e, off, owner, stripe] = c.taken[k];
      if (e->shadow) {
        if (owner) owner->flushing = 0;
        s.recycle(e);
        continue;
      }
      e->flushing = 0;
      // Room for the copies that pushes make of rows still pending (a copy
      // costs less than writing the row back on the push's time): a stripe
      // within its copy room of its share drops the rows it has just made
      // clean, the least recently dirtied first.
      if (!e->dirty && s.used_bytes() + s.budget / room > s.budget) s.erase(e, Stripe::hash(e->table, e->key));
    }
  }
  c.taken.clear();
  c.used = c.rec_bytes = 0;
  std::fill(std::begin(c.marked), std::end(c.marked), size_t{0});
}

// About the bytes of the cache's pending entries: what pushes may copy.
size_t Engine::pending_cache_bytes() {
  size_t n = 0;
  for (auto& s : stripes_) {
    std::lock_guard<std::mutex> g(s.mu);
    if (s.count()) n += s.pending.size * (s.used_bytes() / s.count());
  }
  return n;
}

// After a prepare's flush (which emptied every pending list: no push can
// make a copy until the next boundary) or a failed prepare: the chunks of
// every stripe with no copy alive go back to the arena, ready for the next
// prepare or to be given back should the pool fill (copy_arena.h). A stripe
// with a copy still alive (left pending by a failed prepare) keeps all of
// its chunks: a chunk given to two stripes would mix their copies.
void Engine::release_copy_room() {
  if (!copies_) return;
  for (auto& s : stripes_) {
    std::vector<char*> chunks;
    {
      std::lock_guard<std::mutex> g(s.mu);
      chunks = s.forget_pool_room();
    }
    copies_->put_back(chunks);
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
  store_->prepare_begin(id, dense, meta, ballot);
}

void Engine::prepare_begin_pool(uint64_t id, const std::string& dense, const std::string& meta, uint64_t ballot) {
  // The boundary: pushes that started before it are in the checkpoint,
  // pushes that start after it are not. It runs on the caller's thread so
  // that "after prepare() was called" means "outside". O(stripes + tables);
  // pushes wait only for this block.
  std::unique_lock<RwLock> el(epoch_mu_);
  if (cur_epoch_ + 1 >= epoch_limit_) {
    std::lock_guard<TxMutex> g(tx_mu_);
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
    // Chunks for the copies pushes make of pending rows are mapped for the
    // next prepare in the background (copy_arena.h); this one's pushes take
    // what is ready, or reserve their own.
    const size_t pending_bytes = copies_ ? pending_cache_bytes() : 0;
    using Clock = std::chrono::steady_clock;
    auto us_since = [](Clock::time_point t) {
      return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t).count());
    };
    const uint64_t wrote_before = writebacks_.load(std::memory_order_relaxed);
    flush_slot_ns_.store(0, std::memory_order_relaxed);
    auto t = Clock::now();
    flush_pending();
    const uint64_t flush_us = us_since(t);
    const uint64_t flush_rows = writebacks_.load(std::memory_order_relaxed) - wrote_before;
    // Nothing may stay pending: a row left so would be published at an
    // older version than the one its push acknowledged before the boundary.
    // (Once a stripe's list is empty no push can refill it: a copy only
    // takes the place of a pending entry.)
    for (auto& st : stripes_) {
      std::lock_guard<std::mutex> g(st.mu);
      if (!st.pending.empty())
        fail(Code::Internal,
             "the checkpoint's flush left " + std::to_string(st.pending.size) + " rows of a stripe unwritten; the prepare is refused");
    }
    release_copy_room();
    if (copies_) copies_->prefill(pending_bytes);
    // Rows (their log records first), their index slots and new rows'
    // headers reach the media before the record that makes them part of a
    // checkpoint.
    t = Clock::now();
    if (vlog_) vlog_->sync();
    const uint64_t log_sync_us = us_since(t);
    t = Clock::now();
    pool_->persist_ranges();
    const uint64_t persist_us = us_since(t);
    t = Clock::now();
    // Every row the checkpoint may name is below rows_used before it is
    // published. A raised rows_used is safe on its own (rows below it may
    // hold dead versions only), so each table is raised in its own bounded
    // transaction and the publish snapshots the root alone.
    for (auto& sn : prep_snap_) raise_rows_used(tables_[sn.idx]->d, sn.rows);
    failpoint("prepare.before_publish");
    std::lock_guard<TxMutex> g(tx_mu_);
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
      off = tx.alloc(sizeof(PCkpt) + body, Tx::Fill::InTx);
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
      const uint64_t nd = tx.alloc(sizeof(DeadRange) * cap, Tx::Fill::Zeroed);
      std::memcpy(pool_->at<DeadRange>(nd), pool_->at<DeadRange>(root_->dead_off), sizeof(DeadRange) * root_->dead_count);
      pool_->persist(pool_->at<DeadRange>(nd), sizeof(DeadRange) * root_->dead_count);
      tx.free(root_->dead_off);
      root_->dead_off = nd;
      root_->dead_cap = cap;
    }
    std::unique_lock<std::mutex> tail;
    if (vlog_) tail = vlog_->publish_tail(tx);
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
    // For operators (Stats::prep_*): where a slow checkpoint's time went.
    // The rows count every write-back meanwhile, evictions' too.
    const uint64_t phases[5] = {flush_us, flush_slot_ns_.load(std::memory_order_relaxed) / 1000, log_sync_us, persist_us, us_since(t)};
    for (int k = 0; k < 5; k++) prep_us_[k].store(phases[k], std::memory_order_relaxed);
    prep_rows_.store(flush_rows, std::memory_order_relaxed);
    failpoint("prepare.after_publish");
  } catch (...) {
    {
      std::unique_lock<RwLock> el(epoch_mu_);
      p_active_ = false;
      p_id_ = 0;
      p_epoch_ = 0;
    }
    try {
      release_copy_room();
    } catch (...) {  // out of memory: the stripes keep their chunks
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
  store_->commit(el);
}

void Engine::commit_pool(std::unique_lock<RwLock>& el) {
  failpoint("commit.before_publish");
  {
    // The decision: the root alone, at most two frees (the old record or
    // the spare). Bounded, so a commit works on a full pool.
    std::lock_guard<TxMutex> g(tx_mu_);
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
  wake_compactor();  // versions the new committed checkpoint superseded are dead now
  if (!freed.empty()) {
    el.unlock();
    reclaim();
  }
}

void Engine::raise_rows_used(PTable* d, uint64_t rows) {
  std::lock_guard<TxMutex> g(tx_mu_);
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
    store_->abort_unprepared(id);
    last_id_ = id;
    return;
  }
  store_->abort(el);
}

void Engine::abort_unprepared_pool(uint64_t id) {
  std::lock_guard<TxMutex> g(tx_mu_);
  Tx tx(*pool_, TxLog::Bounded);
  tx.add(root_, sizeof(PRoot));
  root_->last_id = id;
  persist_root(tx);
  tx.commit();
}

void Engine::abort_pool(std::unique_lock<RwLock>& el) {
  failpoint("abort.before_publish");
  std::vector<uint32_t> removed, undropped;
  {
    std::lock_guard<TxMutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    const uint64_t rec = root_->p_rec;
    root_->p_id = root_->p_epoch = root_->p_rec = 0;
    // After a crash the prepared epochs hold the only versions above the
    // committed checkpoint: dropping the checkpoint makes them dead.
    std::vector<DeadRange> dead = recovering_ ? add_dead(tx, c_epoch_ + 1, p_epoch_) : dead_;
    retire_record(tx, rec);
    persist_root(tx);
    tx.commit();
    dead_ = std::move(dead);
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
  store_->rollback(el);
}

void Engine::rollback_pool(std::unique_lock<RwLock>& el) {
  failpoint("rollback.before_publish");
  {
    // Everything written since the committed checkpoint becomes dead: a cost
    // of one small transaction plus dropping the (bounded) cache.
    std::lock_guard<TxMutex> g(tx_mu_);
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    std::vector<DeadRange> dead = add_dead(tx, c_epoch_ + 1, root_->next_epoch - 1);
    const uint64_t epoch = root_->next_epoch;
    root_->next_epoch = epoch + 2;
    persist_root(tx);
    tx.commit();
    dead_ = std::move(dead);
    cur_epoch_ = epoch;
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
  if (vlog_) {
    std::lock_guard<std::mutex> g(dirty_mu_);
    trim_dirty_room();  // nothing is dirty any more
  }
  if (!removed.empty()) {
    el.unlock();
    reclaim();
  }
}

bool Engine::committed_checkpoint(uint64_t* id, std::string* dense, std::string* meta) {
  std::shared_lock<RwLock> el(epoch_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  return store_->committed(id, dense, meta);
}

bool Engine::committed_pool(uint64_t* id, std::string* dense, std::string* meta) {
  if (!root_->c_rec) return false;
  PCkpt* c = ckpt_at(root_->c_rec);
  const char* payload = reinterpret_cast<const char*>(reinterpret_cast<PCkptTable*>(c + 1) + c->ntables);
  *id = c->id;
  dense->assign(payload, c->dense_len);
  meta->assign(payload + c->dense_len, c->meta_len);
  return true;
}

}  // namespace pmemps
