// The storage engine: named tables of rows kept in a libpmemobj pool, a
// bounded DRAM cache in front, optimizers applied on push, and checkpoints
// (prepare / commit / abort / rollback) whose cost follows the rows changed.
//
// Concurrency: pull and push hold epoch_mu_ shared for their whole batch, so
// a checkpoint boundary (epoch_mu_ exclusive, O(stripes)) falls between
// pushes and each push is wholly inside or outside a checkpoint. A call may
// hand some of its stripes to helper threads (parallel.h); they work under
// the caller's shared epoch_mu_ and the call returns after they are done, so
// this holds for the whole call. Lock order:
// ckpt_mu_ -> epoch_mu_ -> stripe -> table index -> table alloc -> tx_mu_ ->
// pool ranges.
//
// Epochs: every row version carries the epoch it was written in. A prepare
// closes the current epoch; the checkpoint is "every live version with
// epoch <= P". After a crash, epochs above the last durable checkpoint are
// recorded dead and never read, so nothing is rolled back at open and open
// costs O(1) in the table size. docs/design.md has the full argument.
#pragma once
#include <atomic>
#include <bitset>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cache.h"
#include "copy_arena.h"
#include "idle_thread.h"
#include "index.h"
#include "layout.h"
#include "optimizer.h"
#include "parallel.h"
#include "pool.h"
#include "vlog.h"

namespace pmemps {

struct EngineOptions {
  std::string dir;
  uint64_t pool_bytes = 1ULL << 30;
  uint64_t cache_bytes = 256ULL << 20;
  bool memory_only = false;
  // Where a new pool keeps its rows' versions (layout.h): kLayoutInPlace,
  // kLayoutLogged or kLayoutAuto. Read only when the pool is created; an
  // existing pool keeps the layout it was made with.
  uint32_t layout = kLayoutInPlace;
  // Opened to be inspected (pmemps-check): close() leaves the pool as this
  // open found it, whatever record it is given: the last close's record
  // and clean mark, or none after a crash, so that the server's next open
  // sees what it would have seen (its exactly-once table and dense tensors
  // kept; a crash still a crash, writes refused until a restore).
  bool inspect = false;
};

struct OpenInfo {
  bool created = false, clean_close = false, is_pmem = false, pushes_blocked = false;
  uint64_t committed = 0, prepared = 0;
  uint64_t opens = 0;  // opens of this pool, this one included
  uint32_t layout = kLayoutInPlace;
  uint64_t replayed = 0;       // logged pools: log records read after the slots' mark (engine_mark.cc)
  bool log_pwrite = false;     // logged, msync path: the log is written with pwrite (Pool::write_file)
  bool slot_pwrite = false;    // logged, msync path: slots are written with pwrite (Pool::copy_slot)
  uint64_t replay_writes = 0;  // of them, slots that did not hold their record yet
  std::string close_record;    // given to the last close(); empty unless clean_close
};

struct TableInfo {
  std::string name;
  uint32_t dim, row_floats;
  OptimizerSpec opt;
  InitSpec init;
  uint64_t rows;
};

struct Stats {
  uint64_t cache_bytes, cache_budget, cache_rows, hits, misses, evictions, writebacks, flushes;
  uint64_t pool_bytes, pool_used, committed, prepared, last_id, epoch, max_push_wait_us, copies_in_pool;
  uint64_t garbage_tables;  // removed tables whose storage is still being freed
  uint64_t log_bytes;       // pool bytes held by the version log's segments (logged pools)
  uint64_t log_freed;       // log segments compaction freed since open
  uint64_t log_copied;      // bytes of live records compaction copied forward since open
  uint64_t log_warmed;      // bytes of new log segments read into the page cache ahead of their writes (page_warmer.h)
  uint64_t copy_room;       // pool bytes reserved for copies of pending rows (copy_arena.h)
  uint64_t rows_saturated;  // rows stored saturated: a concurrent push made the update overflow (push_with)
  // The last completed prepare's phases, wall-clock microseconds (all 0
  // before one): the flush (of which the slots' writes, logged pools on
  // the msync path), the log's sync, the pool's other ranges' sync, the
  // publish transaction; and the rows the flush wrote.
  uint64_t prep_flush_us, prep_slots_us, prep_log_sync_us, prep_persist_us, prep_publish_us, prep_rows;
};

class Engine {
 public:
  explicit Engine(const EngineOptions& o);
  ~Engine();

  OpenInfo open_info() const { return info_; }
  void create_table(const std::string& name, uint32_t dim, const OptimizerSpec& opt, const InitSpec& init);
  void update_table(const std::string& name, const OptimizerSpec& opt);
  // Drops a table: gone for pulls, pushes and listings at once, its name free
  // again; it comes back if the cluster restores a checkpoint from before the
  // drop (or crashes before one after it), so its storage is freed only when
  // a checkpoint taken after the drop commits (at once if no durable
  // checkpoint holds it).
  void drop_table(const std::string& name);
  std::vector<TableInfo> list_tables();
  uint32_t dim_of(const std::string& name);

  // keys: n packed little-endian uint64 (any alignment); out: n * dim floats.
  // expect_dim: the dim the caller sized `out` for (from dim_of).
  void pull(const std::string& name, const uint8_t* keys, size_t n, float* out, uint32_t expect_dim);
  // expect_dim: the dim the caller checked `grads` against (from dim_of).
  void push(const std::string& name, const uint8_t* keys, size_t n, const uint8_t* grads, uint32_t expect_dim);

  // A prepare is prepare_begin (the boundary, cheap, on the caller's
  // thread) then prepare_finish (flush and publish, on the thread pool).
  // `ballot` (0: none) is recorded with the checkpoint, in the transaction
  // that publishes it: a prepare that fails moves no ballot, and one that
  // succeeds can not be durable without its ballot.
  void prepare_begin(uint64_t id, const std::string& dense, const std::string& meta, uint64_t ballot = 0);
  void prepare_finish(uint64_t id);
  void commit(uint64_t id);
  void abort(uint64_t id);
  void rollback();
  bool committed_checkpoint(uint64_t* id, std::string* dense, std::string* meta);
  Stats stats();
  // Writes back every dirty row and marks the pool clean; `record` is kept
  // with the clean mark and handed back by the next open (OpenInfo). It is
  // written into the slot reserve_close_record() keeps, so a close never
  // allocates when the record fits in it.
  void close(const std::string& record = std::string());
  // Makes the pool hold room for a close record of `bytes` bytes (grows the
  // reserved slot in its own transaction); OUT_OF_SPACE when the pool cannot.
  // Returns the room reserved. Reservations only grow.
  uint64_t reserve_close_record(uint64_t bytes);

  // Cluster bookkeeping kept durably in the pool (used by the server).
  // raise_ballot records max(current, b) and returns it.
  uint64_t raise_ballot(uint64_t b);
  uint64_t ballot();
  struct Identity {
    uint64_t cluster_hi = 0, cluster_lo = 0, index = 0, count = 0;
    bool sealed = false;
  };
  // Stores the shard identity at first start; a different one later is
  // refused (FAILED_PRECONDITION): a wrong endpoint list would corrupt a model.
  // id.sealed seals the identity the pool holds (refused when it holds
  // none); a seal is kept for good, id.sealed false never removes it.
  Identity set_identity(const Identity& id);
  Identity identity();

  // Offline full check: walks every index segment and every indexed row.
  // Proportional to the table; never run at open.
  struct CheckReport {
    uint64_t tables = 0, index_slots = 0, rows_live = 0, rows_without_version = 0, stale_slots = 0, bad_epochs = 0;
    uint64_t bad_records = 0;  // logged pools: live versions whose log record is damaged or another row's
    std::vector<std::string> problems;
  };
  CheckReport check();

 private:
  struct Table {
    uint32_t idx = 0;
    PTable* d = nullptr;  // null in memory mode
    std::string name;
    uint32_t dim = 0, row_floats = 0, row_bytes = 0, slot_bytes = 0;
    OptimizerSpec opt{};
    InitSpec init{};
    uint64_t created_epoch = 0;
    uint64_t dropped_epoch = 0;
    uint64_t rows_per_slab = 0;            // rows of a full-size slab
    uint64_t grow_first[kGrowSlabs] = {};  // first row of each growing slab
    uint64_t grow_end = 0;
    std::unique_ptr<Index> index;
    std::mutex alloc_mu;
    // Tells this table from a later one in the same slot (the compactor
    // remembers rows across its lock holds). Unique in the process.
    const uint64_t gen = next_table_gen();
    static uint64_t next_table_gen() {
      static std::atomic<uint64_t> g{0};
      return ++g;
    }
    std::atomic<uint64_t> r_next{0};  // rows reserved (pool) or created (memory)
  };
  static constexpr int kStripeBits = 4;
  static constexpr int kStripes = 1 << kStripeBits;

  // The durable side, chosen once at construction: PoolStore (the pool's
  // checkpoint records, root fields and clean mark; engine_open.cc) or
  // MemStore (the memory-only reference's copies in DRAM; engine_mem.cc).
  // Called once per engine call, after that call's checks and with its
  // locks held, never per row, so a virtual call costs nothing measurable.
  // Declared in engine_impl.h.
  struct Store;
  struct PoolStore;
  struct MemStore;
  static std::unique_ptr<Store> make_mem_store(Engine& e);

  // The pool's side of the calls of the same name (PoolStore forwards).
  void open_pool();
  void table_created_pool(Table& t);
  void hyper_changed_pool(Table& t, const OptimizerSpec& opt);
  void drop_table_pool(const std::string& name);
  void prepare_begin_pool(uint64_t id, const std::string& dense, const std::string& meta, uint64_t ballot);
  void commit_pool(std::unique_lock<RwLock>& el);  // may release el early
  void abort_unprepared_pool(uint64_t id);
  void abort_pool(std::unique_lock<RwLock>& el);     // may release el early
  void rollback_pool(std::unique_lock<RwLock>& el);  // may release el early
  bool committed_pool(uint64_t* id, std::string* dense, std::string* meta);
  void close_pool(const std::string& record);
  void check_pool(CheckReport& r);
  void stats_pool(Stats& st);
  uint64_t raise_ballot_pool(uint64_t b);
  Identity identity_pool() const;  // caller holds tx_mu_
  void set_identity_pool(const Identity& id);
  void init_root();
  void alloc_copy_list();
  void validate_root();
  void recover_after_crash();
  void load_tables();
  Table* find_table(const std::string& name);  // caller holds epoch_mu_
  // A table is visible at the read bound when created at or before it and not
  // dropped at or before it (normally the bound is "now": not dropped).
  bool visible(const Table& t) const { return t.created_epoch <= read_bound_ && (t.dropped_epoch == 0 || t.dropped_epoch > read_bound_); }
  // names_ maps each visible table's name to its slot; rebuilt after every
  // change of the set of tables or of the read bound.
  void rebuild_names();
  // The tables' side of a checkpoint decision (commit, abort, rollback,
  // crash recovery), one bounded transaction per table, after the root
  // transaction that made the decision durable. Each step is a function of
  // the durable root and the checkpoint records, so a crash halfway is
  // finished by open, which settles again for the same bound.
  //  * a table dropped at or before C becomes garbage (the drop is final);
  //  * rewind (the state goes back to `bound`): a table created after it
  //    becomes garbage, one dropped after it is live again;
  //  * hyper_from {record, min_created}: a table the record names (and
  //    created at or after min_created) gets its hyperparameters back.
  // Returns the slots removed and undropped; the caller updates tables_.
  void settle_tables(bool rewind, uint64_t bound, const std::vector<std::pair<uint64_t, uint64_t>>& hyper_from, std::vector<uint32_t>* removed,
                     std::vector<uint32_t>* undropped);
  // Deferred frees. A transaction that must not fail for lack of space only
  // marks a table's storage as garbage; reclaim() then frees it
  // kReclaimBatch objects per bounded transaction, each recording its
  // progress in the PTable, so a crash resumes where it stopped (at open).
  // Freeing needs no space, so it cannot fail on a full pool either.
  void reclaim();
  void reclaim_step(PTable* d);
  static constexpr uint32_t kReclaimBatch = 16;    // frees per transaction: well inside the lane's redo log
  void raise_rows_used(PTable* d, uint64_t rows);  // in its own bounded transaction
  // Keeps a retired checkpoint record's storage as the spare for the next
  // prepare (the larger of it and the current spare), frees the other.
  void retire_record(Tx& tx, uint64_t off);
  uint64_t grow_close_slot(uint64_t bytes);  // caller holds tx_mu_
  uint64_t usable(uint64_t off) const;
  void purge_cache(uint32_t table);

  bool is_dead(uint64_t e) const;
  bool live(uint32_t e) const { return e != 0 && e < epoch_limit_ && !is_dead(e); }
  char* row_ptr(const Table& t, uint64_t ref) const;
  void slab_of(const Table& t, uint64_t r, uint64_t* slab, uint64_t* off) const;
  uint64_t slab_bytes(const Table& t, uint64_t slab) const;
  void init_geometry(Table& t);
  // Prefetches the headers of a row's slots, which a write-back reads.
  void prefetch_slots(const Table& t, uint64_t ref) const {
    char* row = row_ptr(t, ref);
    for (uint32_t i = 0; i < kSlots; i++) __builtin_prefetch(slot_hdr(t, row, i));
  }
  SlotHdr* slot_hdr(const Table& t, char* row, uint32_t s) const {
    return reinterpret_cast<SlotHdr*>(row + 8 + static_cast<size_t>(s) * t.slot_bytes);
  }
  int pick(const Table& t, char* row, uint64_t bound) const;
  bool valid_ref(const Table& t, uint64_t ref, uint64_t key) const;
  bool load_row(const Table& t, uint64_t ref, uint64_t key, float* out, uint32_t* step) const;
  // Logged pools: the record slot h of key's row names; Corrupt when it
  // fails its checksum or is another row's.
  const VRecordHdr* record_of(const Table& t, const SlotHdr* h, uint64_t key) const;
  // res: the calling push's, flush's or close's reservation of log room
  // (logged pools), so that its write-backs cannot fail halfway for lack
  // of space; null where a failure is harmless (a pull's eviction: the pull
  // then serves the row without caching it).
  void write_back(Table& t, Entry* e, VLog::Reservation* res);
  // As write_back for each entry, of distinct rows; a logged pool's records
  // go to the log in one append (one pwrite per run on the msync path).
  // through_file: VLog::append_many's (the flush's groups: checkpoints
  // write fast; evictions store through the mapping, which pulls read faster).
  void write_back_many(Entry* const* es, size_t n, VLog::Reservation* res, bool through_file);
  // The slot write_back writes e's version into.
  uint32_t choose_slot(const Table& t, char* row, const Entry* e) const;
  void make_room(Stripe& s, size_t n, VLog::Reservation* res);
  // Bytes an eviction frees beyond what it must: an eighth of the stripe's
  // share; at most 1 MiB in a logged pool, where every push reserves log
  // room for one group per stripe it holds.
  size_t evict_group(size_t budget) const { return vlog_ ? std::min<size_t>(budget / 8, 1 << 20) : budget / 8; }
  // The most log bytes a push's write-backs can take: rows it may make (a
  // copy-on-write record and entries that evict others) plus what one
  // eviction group takes in each stripe it holds.
  uint64_t log_bound(size_t rows, uint32_t row_floats, size_t stripes) const;
  // Log bytes the dirty versions need (pending ones only, or all), under each stripe's lock in turn.
  uint64_t dirty_log_bytes(bool pending_only);
  // Makes r hold `bytes`, taken from dirty_res_ first (a prepare's flush,
  // the close), so that writing back rows already acknowledged needs no new
  // room; OutOfSpace only if dirty_res_ fell short.
  void take_dirty_room(VLog::Reservation& r, uint64_t bytes);
  // What r holds back into dirty_res_, which then gives back what the
  // dirty entries no longer need (DirtyRoomBack: a push's kept room, what a
  // flush or the close did not use).
  void give_back_dirty_room(VLog::Reservation& r);
  // Gives back what dirty_res_ holds above the stripes' dirty bytes (dirty_mu_ held).
  void trim_dirty_room();
  friend struct DirtyRoomBack;
  uint64_t reserve_row(Table& t, uint64_t key);
  void alloc_slab(Table& t);
  void drop_cache();
  void drop_table_object(uint32_t idx);
  void reload_hyper();
  // Writes the pool's dead list with lo..hi added, in tx; returns the list
  // for dead_, which the caller takes only once tx has committed (a failed
  // commit leaves both as they were).
  [[nodiscard]] std::vector<DeadRange> add_dead(Tx& tx, uint64_t lo, uint64_t hi);
  void persist_root(Tx& tx) {
    root_->checksum = Pool::root_sum(root_);
    (void)tx;
  }
  void ensure_epochs(Tx& tx);
  void flush_pending();
  void release_copy_room();
  size_t pending_cache_bytes();
  // The flush's state between steps. Its batch is the chunks taken and
  // not yet written: one chunk on PMEM; on the msync path with a version
  // log, chunks of several stripes up to about a megabyte of records, so the
  // log gets one large write (flush_step).
  struct FlushCursor {
    int stripe = 0, empty = 0, rounds = 0;
    size_t batch_limit = 0;        // record bytes at which the batch is written; 0: every chunk
    std::vector<char> buf;         // copies of the batch's entries
    size_t used = 0;               // bytes of buf in use
    size_t rec_bytes = 0;          // the batch's log record bytes
    size_t marked[kStripes] = {};  // bytes of each stripe's entries the batch holds marked
    struct Taken {
      Entry* e;
      size_t off;    // of its copy in buf; SIZE_MAX: a shadow, written as it is
      Entry* owner;  // a shadow's row's cached entry, marked flushing meanwhile (or null)
      int stripe;
    };
    std::vector<Taken> taken;
    std::vector<Entry*> copies;  // what the batch writes back: copy_of(taken[i])
  };
  bool flush_step(bool polite, FlushCursor& c);
  // Writes the batch's versions back and clears their marks, a stripe's
  // lock at a time.
  void flush_batch(FlushCursor& c);

  // Compaction of a logged pool's version log (engine_compact.cc): a
  // thread of its own copies the live records of the oldest segments to the
  // log's end and frees the segments, while the log holds more than twice
  // what the tables' rows need. Started at open, stopped before close.
  void start_compactor();
  void stop_compactor();
  void wake_compactor();
  void compact_loop();
  bool compact_due();
  bool compact_stopping();
  void publish_log();
  bool compact_segment(uint64_t seg_off);

  // The slots' mark of a logged pool (engine_mark.cc): slots are written
  // with write_lazy, made durable in the background, and rebuilt from the
  // version log at open.
  VLog::Pos mark() const;
  // Publishes the log, makes every slot its records name durable, and
  // moves the mark to the tail published. Called by the compactor when
  // the log since the mark passes mark_lag_, at open after the replay, and
  // by create_table.
  // epoch_held: the caller holds epoch_mu_ exclusive.
  void advance_mark(bool epoch_held = false);
  // At open: writes into their slots the records from the mark to the
  // published tail, in log order; returns how many it read.
  uint64_t replay_log();
  // At open: replays, and puts an upgraded pool's mark at its tail (layout.h: PRoot.mark_seg).
  void open_mark();
  // The mark's transaction (mark_mu_ held, or open).
  void set_mark(VLog::Pos to);
  // advance_mark one at a time; guards mark_. Nothing waits for epoch_mu_
  // while holding it.
  mutable std::mutex mark_mu_;
  VLog::Pos mark_;
  // Table indices whose records may lie after the mark: a new table takes
  // one that holds none (create_table), else the mark moves first. Set by
  // a table's creation and by the replay; cleared by an advance for the
  // indices that had no table when it began and got none since (idx_gen_
  // counts creations).
  std::mutex idx_mu_;
  std::bitset<kMaxTables> idx_logged_;
  uint64_t idx_gen_[kMaxTables] = {};
  bool index_logged(uint32_t idx);
  void index_in_use(uint32_t idx);
  uint64_t mark_lag_ = 0;  // log bytes after the mark at which the compactor advances it
  std::thread compactor_;
  // Held by compaction while it reads a chunk's records and appends their
  // copies (no engine lock held), and by create_table before epoch_mu_, so
  // that no copy of a dropped table's record lands after the mark that a
  // new table at its index starts from (engine_mark.cc).
  std::mutex copy_gate_;
  std::mutex compact_mu_;
  std::condition_variable compact_cv_;
  bool compact_stop_ = false, compact_wake_ = false;
  std::atomic<uint64_t> log_freed_{0}, log_copied_{0};
  // Room for one segment's copies, held for the compactor so that pushes
  // cannot take the last of the pool from the one thing that frees it.
  VLog::Reservation compact_res_;
  PCkpt* ckpt_at(uint64_t off) const;

  // What lies behind the cache, a compile-time policy of the data path
  // (engine_data.cc): PoolRows, the pool's rows through the table's index;
  // MemRows, nothing (the memory-only reference holds every row in its
  // cache). pull and push choose one per call, so no row pays for a virtual
  // call or a test of the engine's mode.
  struct PoolRows;
  struct MemRows;
  template <class Rows>
  void pull_with(Rows rows, const std::string& name, const uint8_t* keys, size_t n, float* out, uint32_t expect_dim);
  template <class Rows>
  void push_with(Rows rows, const std::string& name, const uint8_t* keys, size_t n, const uint8_t* grads, uint32_t expect_dim);

  Stripe& stripe_for(uint64_t h) { return stripes_[h >> (64 - kStripeBits)]; }

  EngineOptions opts_;
  // Picks the data path's Rows policy in pull and push, once per call; the
  // rest of what differs in memory mode is behind store_.
  bool mem_;
  std::unique_ptr<Store> store_;
  // Runs parts of one pull or push (their stripes) on further cores; idle
  // whenever no call runs, as at destruction.
  std::unique_ptr<Helpers> helpers_;
  // Runs a prepare's flush at the lowest CPU priority on PMEM (idle_thread.h).
  IdleThread idle_;
  std::unique_ptr<Pool> pool_;
  // PMEM only: pool room for pushes' copies beyond the budget (copy_arena.h).
  // Declared after pool_: given back before the pool closes.
  std::unique_ptr<CopyArena> copies_;
  PRoot* root_ = nullptr;
  // PRoot.layout; vlog_ is the version log of a logged pool, else null.
  uint32_t layout_ = kLayoutInPlace;
  std::unique_ptr<VLog> vlog_;
  VLog::Reservation flush_res_;  // the running prepare's flush (ckpt: one at a time)
  // Logged pools: log room for writing back every dirty entry, held from the
  // push that dirtied it (docs/design.md, "Log room for dirty rows"), so the
  // prepare's flush and the clean close never need room the pool may no
  // longer have. At least the stripes' dirty_bytes once every push that
  // dirtied them has returned; dirty_mu_ orders its moves and trims.
  VLog::Reservation dirty_res_;
  std::mutex dirty_mu_;
  OpenInfo info_;
  bool closed_ = false;

  std::vector<std::unique_ptr<Table>> tables_;  // by slot index; null = free
  std::unordered_map<std::string, uint32_t> names_;
  Stripe stripes_[kStripes];

  // ckpt_mu_ is held briefly; a prepare between begin and finish is marked
  // by preparing_, and commit/abort/rollback/close wait on ckpt_cv_ for it.
  std::mutex ckpt_mu_;
  std::condition_variable ckpt_cv_;
  bool preparing_ = false, finishing_ = false;
  struct PrepSnap {
    uint32_t idx;
    uint64_t rows;
    double hyper[kMaxHyperP];
  };
  std::vector<PrepSnap> prep_snap_;
  std::string prep_dense_, prep_meta_;
  uint64_t prep_ballot_ = 0;
  void wait_prepared(std::unique_lock<std::mutex>& ck);
  RwLock epoch_mu_;  // writer-preferring: see common.h
  TxMutex tx_mu_;

  // Guarded by epoch_mu_ (read shared, written exclusive).
  uint64_t cur_epoch_ = 1;
  // PRoot.next_epoch: epochs at or above it are not in use. Raised while
  // readers hold epoch_mu_ shared (prepare's publish), hence atomic.
  std::atomic<uint64_t> epoch_limit_{3};
  uint64_t c_id_ = 0, c_epoch_ = 0;
  uint64_t p_id_ = 0, p_epoch_ = 0;
  bool p_active_ = false;
  uint64_t last_id_ = 0;
  uint64_t read_bound_ = UINT64_MAX;
  bool pushes_blocked_ = false;
  bool recovering_ = false;  // opened after a crash and a prepared checkpoint is unresolved
  std::vector<DeadRange> dead_;

  std::atomic<bool> ckpt_active_{false};
  std::atomic<int> pushes_running_{0};  // pushes between their start and their return
  std::atomic<uint64_t> hits_{0}, misses_{0}, evictions_{0}, writebacks_{0}, max_wait_us_{0}, copies_in_pool_{0};
  // Rows a push stored saturated because another push of the row, between
  // its check and its store, made its update overflow (push_with).
  std::atomic<uint64_t> rows_saturated_{0};
  // The last prepare's phases (Stats::prep_*), set when it completes;
  // flush_slot_ns_ sums the running flush's slot writes (write_back_many).
  std::atomic<uint64_t> prep_us_[5]{}, prep_rows_{0}, flush_slot_ns_{0};
  // Results of a push's check phase kept for its store phase, per push.
  static constexpr size_t kPushScratchBytes = 4u << 20;
};

}  // namespace pmemps
