#include "index.h"

#include <cstring>

#include "common.h"
#include "layout.h"

namespace pmemps {

uint64_t Index::hash(uint64_t key) const { return mix64(key ^ desc_->salt); }

Index::Dir* Index::dir() const { return pool_.at<Dir>(desc_->index_dir); }

Index::Segment* Index::segment_for(uint64_t h) const {
  Dir* d = dir();
  const uint32_t gd = d->global_depth;
  const uint64_t i = gd == 0 ? 0 : h >> (64 - gd);
  return pool_.at<Segment>(d->segs[i]);
}

uint64_t Index::create(Pool& pool, Tx& tx) {
  const uint64_t seg = tx.alloc(sizeof(Segment), Tx::Fill::Zeroed);
  const uint64_t d = tx.alloc(sizeof(Dir), Tx::Fill::Zeroed);
  Dir* dp = pool.at<Dir>(d);
  dp->global_depth = 0;
  dp->segs[0] = seg;
  pool.persist(dp, sizeof(Dir));
  return d;
}

uintptr_t Index::probe_at(uint64_t key) const {
  const uint64_t h = hash(key);
  return reinterpret_cast<uintptr_t>(&segment_for(h)->slots[h % kSegSlots]);
}

uint64_t Index::lookup(uint64_t key) const {
  const uint64_t h = hash(key);
  const Segment* s = segment_for(h);
  uint32_t pos = static_cast<uint32_t>(h % kSegSlots);
  for (uint32_t i = 0; i < kSegSlots; i++) {
    const Slot& sl = s->slots[pos];
    pos = pos + 1 == kSegSlots ? 0 : pos + 1;
    const uint64_t ref = __atomic_load_n(&sl.ref, __ATOMIC_ACQUIRE);
    if (ref == 0) return 0;
    if (sl.key == key) return ref;
  }
  return 0;
}

void Index::upsert(uint64_t key, uint64_t ref) {
  const uint64_t h = hash(key);
  for (;;) {
    Segment* s = segment_for(h);
    uint32_t pos = static_cast<uint32_t>(h % kSegSlots);
    for (uint32_t i = 0; i < kMaxProbe; i++) {
      Slot& sl = s->slots[pos];
      pos = pos + 1 == kSegSlots ? 0 : pos + 1;
      if (sl.ref != 0 && sl.key != key) continue;
      if (sl.ref == 0) sl.key = key;
      __atomic_store_n(&sl.ref, ref, __ATOMIC_RELEASE);
      pool_.add_range(&sl, sizeof sl);
      return;
    }
    split(h);
  }
}

void Index::split(uint64_t h) {
  Dir* d = dir();
  Segment* old = segment_for(h);
  const uint32_t gd = d->global_depth;
  const uint32_t ld = old->local_depth;
  if (ld >= 40) throw Error(Code::Internal, "index segment depth limit reached");
  const uint64_t old_off = pool_.off_of(old);

  std::lock_guard<TxMutex> txg(*tx_mu_);
  Tx tx(pool_);
  uint64_t dir_off = desc_->index_dir;
  if (ld == gd) {
    // Double the directory: entry j of the new one covers old entry j >> 1.
    const uint64_t n = 1ULL << gd;
    const uint64_t nd = tx.alloc(sizeof(Dir) + sizeof(uint64_t) * (2 * n - 1), Tx::Fill::InTx);
    Dir* ndp = pool_.at<Dir>(nd);
    ndp->global_depth = gd + 1;
    ndp->pad = 0;
    for (uint64_t j = 0; j < 2 * n; j++) ndp->segs[j] = d->segs[j >> 1];
    pool_.persist(ndp, sizeof(Dir) + sizeof(uint64_t) * (2 * n - 1));
    tx.add(&desc_->index_dir, sizeof(uint64_t));
    tx.add(&desc_->checksum, sizeof(uint64_t));
    desc_->index_dir = nd;
    desc_->checksum = Pool::table_sum(desc_);
    tx.free(dir_off);
    dir_off = nd;
    d = ndp;
  }
  const uint32_t g = d->global_depth;
  const uint64_t s0 = tx.alloc(sizeof(Segment), Tx::Fill::Zeroed);
  const uint64_t s1 = tx.alloc(sizeof(Segment), Tx::Fill::Zeroed);
  Segment* a = pool_.at<Segment>(s0);
  Segment* b = pool_.at<Segment>(s1);
  a->local_depth = b->local_depth = ld + 1;
  for (uint32_t i = 0; i < kSegSlots; i++) {
    const Slot& sl = old->slots[i];
    if (sl.ref == 0) continue;
    const uint64_t hh = hash(sl.key);
    Segment* t = ((hh >> (63 - ld)) & 1) ? b : a;
    uint32_t p = static_cast<uint32_t>(hh % kSegSlots);
    while (t->slots[p].ref != 0) p = p + 1 == kSegSlots ? 0 : p + 1;
    t->slots[p] = sl;
  }
  pool_.persist(a, sizeof(Segment));
  pool_.persist(b, sizeof(Segment));
  failpoint("index.mid_split");
  // The directory entries of the old segment form one aligned block of 2^(g-ld).
  const uint64_t span = 1ULL << (g - ld);
  const uint64_t first = (h >> (64 - g)) & ~(span - 1);
  tx.add(&d->segs[first], span * sizeof(uint64_t));
  for (uint64_t j = first; j < first + span; j++) d->segs[j] = ((j >> (g - ld - 1)) & 1) ? s1 : s0;
  tx.free(old_off);
  tx.commit();
}

}  // namespace pmemps
