// Compaction of the version log of a logged pool (docs/design.md, "Writing
// back on a disk"): the live records of the oldest segment are copied to
// the log's end, the slots that named them are pointed at the copies, and
// the segment is freed.
//
// Invariants:
//  * A record is live when a slot of its row with a live epoch names it
//    (same offset, same epoch). Dead epochs never come back, and no new
//    slot ever names a record of an old segment, so what is dead in a
//    segment stays dead.
//  * A slot is repointed only after its copy is durable and lies before
//    the published tail (the chunk's sync, then a transaction that
//    publishes the tail): a restart resumes appending after the copy, so
//    a slot never names bytes a later append overwrites.
//  * A segment is freed only after every slot repointed from it is durable
//    (persist_ranges), and only when every live record of it was
//    repointed; a row the flusher is writing (its entry `flushing`) makes
//    the segment wait for another pass. Only segments before the published
//    tail's and the slots' mark's are candidates (vlog.h), so a restart
//    never meets a hole, and the replay at open never reads a freed
//    segment (engine_mark.cc).
//  * Slots are read and repointed under the row's stripe lock (as every
//    write-back writes them, the flusher excepted, whose rows are
//    `flushing`; repointed under the index lock too), and under epoch_mu_
//    shared, held for one record (one row) at a time. No lock is held while
//    a record is appended, and a row's page is read before its stripe's
//    lock is taken: on the msync path either may wait on the disk (a page
//    fault, dirty-page throttling), and a chunk of 2,048 appends under
//    epoch_mu_ made a checkpoint's boundary, and every push queued behind
//    it, wait for all of them. A table is looked up again in each hold and
//    recognized by its gen: a dropped table's storage is freed only after
//    its Table is.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "engine_impl.h"

namespace pmemps {

namespace {

constexpr size_t kCompactChunk = 2048;  // records per published tail

}  // namespace

void Engine::start_compactor() {
  if (!vlog_) return;
  compactor_ = std::thread([this] { compact_loop(); });
}

void Engine::stop_compactor() {
  {
    std::lock_guard<std::mutex> g(compact_mu_);
    compact_stop_ = true;
  }
  compact_cv_.notify_all();
  if (compactor_.joinable()) compactor_.join();
  if (vlog_) vlog_->release(compact_res_);  // the clean close may need it
}

void Engine::wake_compactor() {
  if (!vlog_) return;
  {
    std::lock_guard<std::mutex> g(compact_mu_);
    compact_wake_ = true;
  }
  compact_cv_.notify_all();
}

bool Engine::compact_stopping() {
  std::lock_guard<std::mutex> g(compact_mu_);
  return compact_stop_;
}

// Syncs the log and publishes the tail in a transaction of its own: safe at
// any time, since only slots published with a later sync can name what
// follows (vlog.h).
void Engine::publish_log() {
  vlog_->sync();
  std::lock_guard<TxMutex> g(tx_mu_);
  Tx tx(*pool_, TxLog::Bounded);
  auto tail = vlog_->publish_tail(tx);
  tx.commit();
}

// Twice the rows' versions, plus four segments of slack: a row keeps up to
// three versions (committed, prepared, newest), mostly one, so the log then
// has at least about half dead bytes to reclaim on average. Counted up to
// the append point: the room allocated ahead for the dirty rows (up to the
// cache budget) holds nothing to reclaim, and counting it compacted more
// often for nothing (pushes with 8 in flight at 0.73x on two cores).
bool Engine::compact_due() {
  std::shared_lock<RwLock> el(epoch_mu_);
  if (closed_) return false;
  uint64_t need = 0;
  for (auto& t : tables_)
    if (t) need += t->r_next.load(std::memory_order_relaxed) * VLog::record_bytes(t->row_floats);
  const uint64_t have = vlog_->written_bytes();
  return have > 2 * need + 4 * vlog_->seg_bytes();
}

void Engine::compact_loop() {
  // PMEMPS_LOG_COMPACT=eager (tests): every whole segment before the
  // published tail is compacted at every wake, however live, so that the
  // crash tests' small pools reach compaction.
  const char* mode = std::getenv("PMEMPS_LOG_COMPACT");
  const bool eager = mode && std::strcmp(mode, "eager") == 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> g(compact_mu_);
      compact_cv_.wait_for(g, std::chrono::seconds(1), [&] { return compact_stop_ || compact_wake_; });
      if (compact_stop_) return;
      compact_wake_ = false;
    }
    try {
      // The mark bounds what open replays; compaction takes only segments
      // before it.
      if (eager || vlog_->bytes_since(mark()) > mark_lag_) advance_mark();
      if (eager) {
        // The copies land after the tail, so this ends with the segments
        // that were before it.
        while (const uint64_t seg = vlog_->oldest_full_segment(mark())) {
          if (compact_stopping()) return;
          if (!compact_segment(seg)) break;
        }
        continue;
      }
      while (compact_due()) {
        if (compact_stopping()) return;
        // Checkpoints publish while this loop runs: the mark's lag holds here too.
        if (vlog_->bytes_since(mark()) > mark_lag_) advance_mark();
        uint64_t seg = vlog_->oldest_full_segment(mark());
        if (!seg) {
          // Every whole segment is after the published tail (no checkpoint
          // for a while) or the mark: move both, so that they become
          // candidates.
          advance_mark();
          seg = vlog_->oldest_full_segment(mark());
          if (!seg) break;
        }
        const uint64_t before = log_copied_.load();
        if (!compact_segment(seg)) break;
        // A segment nearly all live gains little: wait for more to die.
        if (log_copied_.load() - before > vlog_->seg_bytes() - vlog_->seg_bytes() / 8) break;
      }
    } catch (const std::exception&) {
      // A full pool (no room for the copies), a damaged record: the next
      // wake tries again; nothing was freed that a slot still names.
    }
  }
}

bool Engine::compact_segment(uint64_t seg_off) {
  // Top the compactor's room up to a whole segment's records (a freed
  // segment makes room for it again); on a full pool go on with what is
  // held: copies beyond it allocate, or fail and free nothing.
  const uint64_t room = vlog_->seg_bytes() - VLog::kSlack;
  if (compact_res_.bytes < room) {
    try {
      vlog_->reserve(compact_res_, room - compact_res_.bytes);
    } catch (const Error& e) {
      if (e.code() != Code::OutOfSpace) throw;
    }
  }
  std::vector<uint64_t> recs;
  vlog_->for_each_record(seg_off, [&](uint64_t off, const VRecordHdr*) { recs.push_back(off); });
  struct Move {
    Table* t;  // compared, not followed, until tables_[idx] is found to still be it
    uint64_t gen, key, ref, from, to;
    uint32_t idx, slot, epoch;
  };
  std::vector<Move> moves;
  std::vector<VLog::Rec> copies;  // copies[i] is moves[i]'s
  bool blocked = false;
  for (size_t c0 = 0; c0 < recs.size(); c0 += kCompactChunk) {
    const size_t c1 = std::min(recs.size(), c0 + kCompactChunk);
    moves.clear();
    copies.clear();
    uint64_t copied = 0;
    // Copy the chunk's live records to the log's end. No new table takes
    // an index meanwhile (engine_mark.cc): a copy of a dropped table's
    // record lands before the mark a new one starts from.
    std::unique_lock<std::mutex> gate(copy_gate_);
    for (size_t i = c0; i < c1; i++) {
      const VRecordHdr* h = pool_->at<VRecordHdr>(recs[i]);
      uint32_t named[kSlots];
      uint32_t nnamed = 0;
      Table* t = nullptr;
      uint64_t gen = 0, ref = 0;
      {
        std::shared_lock<RwLock> el(epoch_mu_);
        if (closed_) return false;
        t = h->table < kMaxTables ? tables_[h->table].get() : nullptr;
        if (!t || !t->d || h->n != t->row_floats) continue;
        gen = t->gen;
        {
          std::shared_lock<RwLock> il(t->index->mu());
          ref = t->index->lookup(h->key);
        }
        // The row's page read with no stripe lock held (a fault waits here,
        // not a push); rows are not freed while epoch_mu_ is held.
        if (!valid_ref(*t, ref, h->key)) continue;
        const uint64_t hash = Stripe::hash(t->idx, h->key);
        Stripe& s = stripe_for(hash);
        std::lock_guard<std::mutex> sg(s.mu);
        const Entry* e = s.find(t->idx, h->key, hash);
        if (e && e->flushing) {
          blocked = true;
          continue;
        }
        // ref still holds: a key's row never moves while its table exists.
        char* row = row_ptr(*t, ref);
        for (uint32_t k = 0; k < kSlots; k++) {
          const LoggedSlot* ls = reinterpret_cast<const LoggedSlot*>(slot_hdr(*t, row, k));
          if (ls->off == recs[i] && ls->h.epoch == h->epoch && live(ls->h.epoch)) named[nnamed++] = k;
        }
      }
      for (uint32_t j = 0; j < nnamed; j++) {
        copies.push_back({h->key, h->table, h->epoch, h->step, h->n, kTagCopy | (named[j] + 1), reinterpret_cast<const float*>(h + 1)});
        moves.push_back({t, gen, h->key, ref, recs[i], 0, h->table, named[j], h->epoch});
        copied += VLog::record_bytes(h->n);
      }
    }
    // The copies are made with no lock held, the chunk's in one append; the
    // repoint below checks again that the slot still names the original (a
    // copy it finds superseded is a dead record that a later pass reclaims).
    vlog_->append_many(
        copies.data(), copies.size(), &compact_res_, [](void* c, size_t i, uint64_t off) { (*static_cast<std::vector<Move>*>(c))[i].to = off; },
        &moves, true);
    log_copied_.fetch_add(copied, std::memory_order_relaxed);
    gate.unlock();
    if (moves.empty()) continue;
    // The copies durable and before the published tail, then the slots.
    publish_log();
    failpoint("compact.after_copy");
    for (const Move& m : moves) {
      std::shared_lock<RwLock> el(epoch_mu_);
      if (closed_) return false;
      if (tables_[m.idx].get() != m.t || m.t->gen != m.gen) continue;  // dropped since: its records are dead
      const uint64_t hash = Stripe::hash(m.t->idx, m.key);
      Stripe& s = stripe_for(hash);
      std::lock_guard<std::mutex> sg(s.mu);
      const Entry* e = s.find(m.t->idx, m.key, hash);
      if (e && e->flushing) {
        blocked = true;
        continue;
      }
      std::shared_lock<RwLock> il(m.t->index->mu());
      LoggedSlot* ls = reinterpret_cast<LoggedSlot*>(slot_hdr(*m.t, row_ptr(*m.t, m.ref), m.slot));
      // A write-back since may have reused the slot for a newer version.
      if (ls->off != m.from || ls->h.epoch != m.epoch) continue;
      pool_->write_slot(&ls->off, &m.to, sizeof m.to);
      pool_->drain();
    }
  }
  if (blocked) return false;  // the flusher is writing one of its rows: another pass
  // Every slot that named the segment names its copy, durably, before the
  // segment goes.
  pool_->persist_ranges();
  failpoint("compact.before_free");
  vlog_->free_segment(seg_off);
  log_freed_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace pmemps
