#include "vlog.h"

#include <algorithm>
#include <cstring>

#include "common.h"

namespace pmemps {

namespace {

uint32_t crc32c_table(const unsigned char* b, size_t n, uint32_t crc) {
  static const auto table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
      t[i] = c;
    }
    return t;
  }();
  for (size_t i = 0; i < n; i++) crc = table[(crc ^ b[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_hw(const unsigned char* b, size_t n, uint32_t crc) {
  uint64_t c = crc;
  for (; n >= 8; n -= 8, b += 8) {
    uint64_t w;
    std::memcpy(&w, b, 8);
    c = __builtin_ia32_crc32di(c, w);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; n > 0; n--, b++) c32 = __builtin_ia32_crc32qi(c32, *b);
  return c32;
}
#endif

}  // namespace

// CRC-32C (Castagnoli), as iSCSI and ext4 use it: the SSE4.2 instruction
// where the CPU has it (8 bytes a cycle), a table otherwise.
uint32_t crc32c(const void* p, size_t n, uint32_t crc) {
  const unsigned char* b = static_cast<const unsigned char*>(p);
  crc = ~crc;
#if defined(__x86_64__)
  static const bool hw = __builtin_cpu_supports("sse4.2");
  crc = hw ? crc32c_hw(b, n, crc) : crc32c_table(b, n, crc);
#else
  crc = crc32c_table(b, n, crc);
#endif
  return ~crc;
}

uint64_t VLog::sum(const PVLog* d) { return fnv1a(d, offsetof(PVLog, checksum)); }

uint64_t VLog::create(Tx& tx, Pool& pool, uint64_t seg_bytes) {
  const uint64_t off = tx.alloc(sizeof(PVLog), Tx::Fill::Zeroed);
  PVLog* d = pool.at<PVLog>(off);
  d->magic = kVLogMagic;
  // Whole chunks, the allocation header included (alloc_size would round
  // a request of whole chunks up by one).
  d->seg_bytes = Pool::alloc_size(std::max<uint64_t>(seg_bytes, 8 * kSlack) - Pool::kHugeHeader);
  d->cap = 16;
  d->segs_off = tx.alloc(sizeof(uint64_t) * d->cap, Tx::Fill::Zeroed);
  d->checksum = sum(d);
  pool.persist(pool.at<uint64_t>(d->segs_off), sizeof(uint64_t) * d->cap);
  pool.persist(d, sizeof(PVLog));
  return off;
}

VLog::VLog(Pool& pool, uint64_t desc_off, TxMutex* tx_mu) : pool_(pool), d_(pool.at<PVLog>(desc_off)), tx_mu_(tx_mu) {
  if (desc_off < sizeof(PRoot) || desc_off > pool.size() - sizeof(PVLog) || d_->magic != kVLogMagic || d_->checksum != sum(d_) ||
      d_->nsegs > d_->cap || d_->tail_seg > d_->nsegs || d_->tail_off > d_->seg_bytes || d_->seg_bytes < 8 * kSlack ||
      d_->segs_off > pool.size() - sizeof(uint64_t) * d_->cap)
    throw Error(Code::Corrupt, "the version log's descriptor is damaged; check the pool with `pmemps-check`");
  seg_ = syncing_seg_ = synced_seg_ = d_->tail_seg;
  off_ = syncing_off_ = synced_off_ = d_->tail_off;
  if (seg_ < d_->nsegs) synced_from_ = seg_base(seg_) + off_;
  const uint64_t* segs = pool_.at<uint64_t>(d_->segs_off);
  for (uint64_t i = 0; i < d_->nsegs; i++) holes_ += segs[i] == 0;
  if (seg_ < d_->nsegs && segs[seg_] == 0) throw Error(Code::Corrupt, "the version log's tail is in a freed segment (damaged pool)");
}

uint64_t VLog::room() const {
  if (seg_ >= d_->nsegs) return 0;
  const uint64_t u = d_->seg_bytes - kSlack;
  return (off_ < u ? u - off_ : 0) + (d_->nsegs - seg_ - 1) * u;
}

void VLog::grow() {
  Tx tx(pool_);
  tx.add(d_, sizeof(PVLog));
  // The memory-only fields change with the list only once the transaction
  // committed: the new segment's allocation fails on a full pool, the
  // transaction rolls the packed list back, and fields left packed sent
  // appends into a hole (the pool's first bytes) or a live segment.
  uint64_t seg = seg_, syncing = syncing_seg_, synced = synced_seg_, holes = holes_;
  if (d_->nsegs == d_->cap) {
    // A new list without the holes (twice as long when they are few): the
    // current segment's index and the published tail's shift with the
    // holes before them, in this same transaction.
    const uint64_t* old = pool_.at<uint64_t>(d_->segs_off);
    const uint64_t cap = holes_ >= d_->nsegs / 2 ? d_->cap : d_->cap * 2;
    const uint64_t a = tx.alloc(sizeof(uint64_t) * cap, Tx::Fill::Zeroed);
    uint64_t* nl = pool_.at<uint64_t>(a);
    uint64_t n = 0, tail = d_->tail_seg;
    for (uint64_t i = 0; i < d_->nsegs; i++) {
      if (old[i]) {
        nl[n++] = old[i];
        continue;
      }
      if (i < seg_) seg--;
      if (i < d_->tail_seg) tail--;
      if (i < syncing_seg_) syncing--;
      if (i < synced_seg_) synced--;
    }
    pool_.persist(nl, sizeof(uint64_t) * n);
    tx.free(d_->segs_off);
    d_->segs_off = a;
    d_->cap = cap;
    d_->nsegs = n;
    d_->tail_seg = tail;
    holes = 0;
  }
  // Records are persisted by sync(); nothing past the published tail is read.
  const uint64_t s = tx.alloc(d_->seg_bytes, Tx::Fill::Later);
  uint64_t* segs = pool_.at<uint64_t>(d_->segs_off);
  tx.add(&segs[d_->nsegs], sizeof(uint64_t));
  segs[d_->nsegs] = s;
  d_->nsegs++;
  d_->checksum = sum(d_);
  tx.commit();
  seg_ = seg;
  syncing_seg_ = syncing;
  synced_seg_ = synced;
  holes_ = holes;
  if (pool_.is_pmem()) {
    fresh_.push_back({pool_.at<char>(s), d_->seg_bytes});
  } else {
    // Off PMEM, with PMEMPS_LOG_WARM=1, the segment's pages are read into
    // the page cache in the background, ahead of the checkpoint's flush
    // (page_warmer.h).
    pool_.warm(pool_.at<char>(s), d_->seg_bytes);
  }
  failpoint("log.after_grow");
  if (!synced_from_ && seg_ < d_->nsegs) synced_from_ = seg_base(seg_) + off_;
}

void VLog::reserve(Reservation& r, uint64_t bytes) {
  std::unique_lock<std::mutex> g(mu_);
  std::unique_lock<TxMutex> t;
  if (room() < reserved_ + bytes) {
    // grow() runs a transaction: tx_mu_ first, then mu_ again. A push
    // whose room is there waits for no transaction.
    g.unlock();
    t = std::unique_lock<TxMutex>(*tx_mu_);
    g.lock();
  }
  while (room() < reserved_ + bytes) grow();
  reserved_ += bytes;
  r.bytes += bytes;
  if (fresh_.empty()) return;  // a push's reserve: no second lock
  std::vector<std::pair<char*, size_t>> fresh;
  fresh.swap(fresh_);
  g.unlock();
  if (t.owns_lock()) t.unlock();
  flush_fresh(fresh);
}

void VLog::flush_fresh(const std::vector<std::pair<char*, size_t>>& fresh) {
  // The flush libpmemobj's commit made of a new allocation, made here with
  // no lock held: it changes no byte, and it is what faults the segment's
  // pages in. Measured on emulated PMEM (bench/logged-push.ts): left to the
  // appends, the same CPU moved into the next prepare (2.2x slower); in the
  // commit, under tx_mu_, it held up every push; MADV_POPULATE_WRITE did
  // not save the appends' cost. (A segment freed meanwhile is still mapped
  // pool memory: the flush is harmless.)
  for (auto [p, n] : fresh) pool_.persist(p, n);
}

void VLog::release(Reservation& r) {
  std::lock_guard<std::mutex> g(mu_);
  reserved_ -= r.bytes;
  r.bytes = 0;
}

uint64_t VLog::transfer(Reservation& from, Reservation& to, uint64_t bytes) {
  std::lock_guard<std::mutex> g(mu_);
  const uint64_t n = std::min(bytes, from.bytes);
  from.bytes -= n;
  to.bytes += n;
  return n;
}

void VLog::trim(Reservation& r, uint64_t keep) {
  std::lock_guard<std::mutex> g(mu_);
  if (r.bytes <= keep) return;
  reserved_ -= r.bytes - keep;
  r.bytes = keep;
}

void VLog::take_room(std::unique_lock<std::mutex>& g, Reservation* r, uint64_t bytes) {
  // What r holds is counted in reserved_ <= room(): with it taken, room()
  // must still cover reserved_ + bytes. Taken only once that holds, so a
  // failure to grow leaves r as it was.
  auto covered = [&] { return r ? std::min(r->bytes, bytes) : 0; };
  if (room() + covered() < reserved_ + bytes) {
    // grow() runs a transaction: tx_mu_ first, then mu_ again.
    g.unlock();
    std::lock_guard<TxMutex> t(*tx_mu_);
    g.lock();
    while (room() + covered() < reserved_ + bytes) grow();
  }
  const uint64_t c = covered();
  if (r) r->bytes -= c;
  reserved_ -= c;
}

char* VLog::place(size_t rb) {
  if (off_ + rb > d_->seg_bytes) {
    // room() counted this segment's end as wasted, so the next one exists.
    char* end = seg_base(seg_) + off_;
    if (off_ + sizeof(VRecordHdr) <= d_->seg_bytes) {
      // The segment's end marker: synced with its records, before any
      // tail past it is published.
      if (pool_.is_pmem()) {
        pmemobj_memset_persist(pool_.pop(), end, 0, sizeof(VRecordHdr));
      } else {
        static const VRecordHdr kZero{};
        pool_.write_file(end, &kZero, sizeof kZero);
        end += sizeof(VRecordHdr);
      }
    }
    if (end > synced_from_) unsynced_.push_back({synced_from_, static_cast<size_t>(end - synced_from_)});
    seg_++;
    off_ = 0;
    synced_from_ = seg_base(seg_);
  }
  char* dst = seg_base(seg_) + off_;
  off_ += rb;
  return dst;
}

uint64_t VLog::append(uint64_t key, uint32_t table, uint32_t epoch, uint32_t step, const float* values, uint32_t n, Reservation* r, uint32_t tag,
                      void (*then)(void*, uint64_t), void* ctx) {
  const Rec rec{key, table, epoch, step, n, tag, values};
  struct One {
    void (*then)(void*, uint64_t);
    void* ctx;
    uint64_t off;
  } one{then, ctx, 0};
  append_many(
      &rec, 1, r,
      [](void* c, size_t, uint64_t off) {
        One& o = *static_cast<One*>(c);
        o.off = off;
        if (o.then) o.then(o.ctx, off);
      },
      &one, false);
  return one.off;
}

void VLog::append_many(const Rec* recs, size_t count, Reservation* r, void (*then)(void*, size_t, uint64_t), void* ctx, bool through_file) {
  if (count == 0) return;
  uint64_t total = 0;
  for (size_t i = 0; i < count; i++) {
    const size_t rb = record_bytes(recs[i].n);
    if (rb > kSlack) throw Error(Code::InvalidArgument, "a row of " + std::to_string(recs[i].n) + " floats does not fit in a log record");
    total += rb;
  }
  // Where each record goes; consecutive ones in a segment are contiguous.
  thread_local std::vector<char*> dst;
  dst.resize(count);
  int gen;
  {
    // Only the places are taken under mu_: the copy may fault a page in
    // (on ext4, wait for the journal), and must not hold up other appenders.
    std::unique_lock<std::mutex> g(mu_);
    take_room(g, r, total);
    for (size_t i = 0; i < count; i++) dst[i] = place(record_bytes(recs[i].n));
    gen = static_cast<int>(gen_ & 1);
    inflight_[gen]++;
  }
  // A test holds a record here, placed and not yet copied (a delay only:
  // its place is taken, so a failure injected here is ignored).
  try {
    test_hook("log.append_placed");
  } catch (const Error&) {
  }
  // Counted out of the generation however this ends: a sync waits for it.
  struct Done {
    VLog& l;
    int gen;
    ~Done() {
      std::lock_guard<std::mutex> g(l.mu_);
      if (--l.inflight_[gen] == 0) l.copied_.notify_all();
    }
  } done{*this, gen};
  auto header = [](const Rec& x) {
    VRecordHdr h{x.key, x.table, x.epoch, x.step, x.n, 0, x.tag};
    h.crc = crc32c(x.values, sizeof(float) * x.n, crc32c(&h, sizeof h));
    return h;
  };
  if (!pool_.is_pmem() && (!through_file || !pool_.writes_file())) {
    for (size_t i = 0; i < count; i++) {
      const VRecordHdr h = header(recs[i]);
      std::memcpy(dst[i], &h, sizeof h);
      std::memcpy(dst[i] + sizeof h, recs[i].values, sizeof(float) * recs[i].n);
    }
  } else if (pool_.is_pmem()) {
    // Non-temporal: the log is written once and read rarely; the writer's
    // drain orders it.
    for (size_t i = 0; i < count; i++) {
      const VRecordHdr h = header(recs[i]);
      pmemobj_memcpy(pool_.pop(), dst[i], &h, sizeof h, PMEMOBJ_F_MEM_NONTEMPORAL | PMEMOBJ_F_MEM_NODRAIN);
      pmemobj_memcpy(pool_.pop(), dst[i] + sizeof h, recs[i].values, sizeof(float) * recs[i].n, PMEMOBJ_F_MEM_NONTEMPORAL | PMEMOBJ_F_MEM_NODRAIN);
    }
  } else {
    // The records of each contiguous run are composed in DRAM and written
    // with one write_file of 2 MiB at most (the buffer's bound, per
    // thread; the flush's batches are about 1 MiB): no fault per fresh page
    // of the log.
    constexpr size_t kPiece = size_t{2} << 20;
    thread_local std::vector<char> buf;
    for (size_t i = 0; i < count;) {
      size_t j = i, bytes = 0;
      while (j < count && dst[j] == dst[i] + bytes && (j == i || bytes + record_bytes(recs[j].n) <= kPiece)) bytes += record_bytes(recs[j++].n);
      if (buf.size() < bytes) buf.resize(bytes);
      for (size_t k = i, o = 0; k < j; o += record_bytes(recs[k++].n)) {
        const VRecordHdr h = header(recs[k]);
        std::memcpy(buf.data() + o, &h, sizeof h);
        std::memcpy(buf.data() + o + sizeof h, recs[k].values, sizeof(float) * recs[k].n);
        const size_t pad = record_bytes(recs[k].n) - sizeof h - sizeof(float) * recs[k].n;
        if (pad) std::memset(buf.data() + o + sizeof h + sizeof(float) * recs[k].n, 0, pad);
      }
      pool_.write_file(dst[i], buf.data(), bytes);
      i = j;
    }
  }
  for (size_t i = 0; i < count; i++)
    if (then) then(ctx, i, pool_.off_of(dst[i]));
  // PMEM: a sync drains only its own thread's stores, and counts these
  // records (and the slots `then` wrote) once Done runs: drained first, a
  // record before a published tail is durable whichever thread wrote it.
  if (pool_.is_pmem()) pmemobj_drain(pool_.pop());
}

void VLog::sync() {
  std::lock_guard<std::mutex> sg(sync_mu_);
  std::vector<std::pair<char*, size_t>> ranges;
  {
    std::unique_lock<std::mutex> g(mu_);
    ranges.swap(unsynced_);
    if (seg_ < d_->nsegs && synced_from_) {
      char* end = seg_base(seg_) + off_;
      if (end > synced_from_) ranges.push_back({synced_from_, static_cast<size_t>(end - synced_from_)});
      synced_from_ = end;
    }
    syncing_seg_ = seg_;
    syncing_off_ = off_;
    // Appends placed before this point may still be copying: wait for
    // them (later ones count in the other generation).
    const int gen = static_cast<int>(gen_++ & 1);
    copied_.wait(g, [&] { return inflight_[gen] == 0; });
  }
  if (pool_.is_pmem()) {
    pmemobj_drain(pool_.pop());
  } else {
    // One msync per segment written since the last sync, outside mu_ so
    // that appends go on meanwhile: the kernel writes the dirty pages
    // inside each range, which are contiguous.
    for (auto& [p, n] : ranges) pool_.persist(p, n);
  }
  // Only now may a publish name this point: a publisher that took the
  // point while this sync still waited for a copy, or still msync'd,
  // published records that a crash could leave torn before the tail
  // (compaction's parse stops at the first, and freed the whole records
  // after it that live slots named).
  std::lock_guard<std::mutex> g(mu_);
  synced_seg_ = syncing_seg_;
  synced_off_ = syncing_off_;
}

std::unique_lock<std::mutex> VLog::publish_tail(Tx& tx, Pos* at) {
  // Appends after the last sync() that returned lie after the tail
  // published here: a restart overwrites them, and only slots of epochs
  // that die with that crash can name them (every publish syncs first).
  std::unique_lock<std::mutex> g(mu_);
  tx.add(d_, sizeof(PVLog));
  d_->tail_seg = synced_seg_;
  d_->tail_off = synced_off_;
  d_->checksum = sum(d_);
  if (at) *at = {d_->tail_seg < d_->nsegs ? pool_.at<uint64_t>(d_->segs_off)[d_->tail_seg] : 0, d_->tail_off};
  return g;
}

VLog::Pos VLog::published() const {
  std::lock_guard<std::mutex> g(mu_);
  return {d_->tail_seg < d_->nsegs ? pool_.at<uint64_t>(d_->segs_off)[d_->tail_seg] : 0, d_->tail_off};
}

uint64_t VLog::index_of(Pos p) const {
  if (p.seg_off == kMarkAtTail) return d_->tail_seg;
  if (p.seg_off == 0) return 0;
  const uint64_t* segs = pool_.at<uint64_t>(d_->segs_off);
  for (uint64_t i = 0; i < d_->nsegs; i++)
    if (segs[i] == p.seg_off) return i;
  throw Error(Code::Corrupt, "the slots' mark names no segment of the version log (damaged pool); check it with `pmemps-check`");
}

uint64_t VLog::bytes_since(Pos from) const {
  std::lock_guard<std::mutex> g(mu_);
  if (from.seg_off == kMarkAtTail) return 0;
  const uint64_t i = index_of(from);
  if (i > d_->tail_seg || (i == d_->tail_seg && from.off > d_->tail_off)) return 0;
  return (d_->tail_seg - i) * d_->seg_bytes + d_->tail_off - from.off;
}

void VLog::for_each_since(Pos from, const std::function<void(uint64_t, const VRecordHdr*)>& fn) const {
  uint64_t first, last, last_off;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (from.seg_off == kMarkAtTail) return;
    first = index_of(from);
    last = d_->tail_seg;
    last_off = d_->tail_off;
  }
  const uint64_t* segs = pool_.at<uint64_t>(d_->segs_off);
  auto damaged = [](uint64_t off) {
    return Error(Code::Corrupt, "a version log record before the published tail is damaged (pool offset " + std::to_string(off) +
                                    "); check the pool with `pmemps-check`");
  };
  for (uint64_t i = first; i <= last && i < d_->nsegs; i++) {
    if (!segs[i]) throw Error(Code::Corrupt, "a segment of the version log after the slots' mark was freed (damaged pool)");
    const uint64_t end = i == last ? last_off : d_->seg_bytes;
    for (uint64_t o = i == first ? from.off : 0; o + sizeof(VRecordHdr) <= end;) {
      const VRecordHdr* h = pool_.at<VRecordHdr>(segs[i] + o);
      if (h->n == 0 && i < last) break;  // the segment's end marker
      if (record_bytes(h->n) > kSlack || o + record_bytes(h->n) > end) throw damaged(segs[i] + o);
      if (!parse(segs[i] + o)) throw damaged(segs[i] + o);
      fn(segs[i] + o, h);
      o += record_bytes(h->n);
    }
  }
}

uint64_t VLog::written_bytes() const {
  std::lock_guard<std::mutex> g(mu_);
  // Holes (segments compaction freed) all lie before the append segment.
  return (seg_ - holes_) * d_->seg_bytes + off_;
}

uint64_t VLog::segments() const {
  std::lock_guard<std::mutex> g(mu_);
  return d_->nsegs - holes_;
}

uint64_t VLog::oldest_full_segment(Pos mark) const {
  std::lock_guard<std::mutex> g(mu_);
  const uint64_t* segs = pool_.at<uint64_t>(d_->segs_off);
  const uint64_t before = std::min(d_->tail_seg, index_of(mark));
  for (uint64_t i = 0; i < before; i++)
    if (segs[i]) return segs[i];
  return 0;
}

void VLog::free_segment(uint64_t seg_off) {
  std::lock_guard<TxMutex> t(*tx_mu_);
  std::lock_guard<std::mutex> g(mu_);
  uint64_t* segs = pool_.at<uint64_t>(d_->segs_off);
  uint64_t i = 0;
  while (i < d_->tail_seg && segs[i] != seg_off) i++;
  if (i >= d_->tail_seg) throw Error(Code::Internal, "free_segment: not a whole segment of the log (a bug: please report it)");
  Tx tx(pool_, TxLog::Bounded);
  tx.add(&segs[i], sizeof(uint64_t));
  segs[i] = 0;
  tx.free(seg_off);
  tx.commit();
  holes_++;
}

namespace {

bool crc_matches(const VRecordHdr* h) {
  VRecordHdr c = *h;
  c.crc = 0;
  return crc32c(h + 1, sizeof(float) * h->n, crc32c(&c, sizeof c)) == h->crc;
}

}  // namespace

const VRecordHdr* VLog::parse(uint64_t off) const {
  const VRecordHdr* h = pool_.at<VRecordHdr>(off);
  if (h->n == 0 || record_bytes(h->n) > kSlack || off + record_bytes(h->n) > pool_.size()) return nullptr;
  return crc_matches(h) ? h : nullptr;
}

const VRecordHdr* VLog::read(uint64_t off) const {
  const VRecordHdr* h = pool_.at<VRecordHdr>(off);
  if (off < 64 || off + sizeof(VRecordHdr) > pool_.size() || record_bytes(h->n) > kSlack || off + record_bytes(h->n) > pool_.size())
    throw Error(Code::Corrupt, "no version log record at pool offset " + std::to_string(off) + "; check the pool with `pmemps-check`");
  if (!crc_matches(h))
    throw Error(Code::Corrupt,
                "a version log record failed its checksum at pool offset " + std::to_string(off) + "; check the pool with `pmemps-check`");
  return h;
}

}  // namespace pmemps
