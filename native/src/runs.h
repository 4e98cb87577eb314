// Sorted location runs: the read side of the log-structured write-back for
// pools on non-DAX media (docs/design.md, "Writing back on a disk"). A run
// names where versions of rows lie in the version log: entries (row, epoch,
// log offset) sorted by row, then by epoch newest first. A checkpoint's
// flush writes one run (one epoch); merging runs keeps several versions of
// a row (the newest at or below C, at or below P, and the newest), as the
// three slots of an in-place row do.
//
// Invariants:
//  * A run is one contiguous byte range: RunHeader, `count` RunEntry sorted
//    by (row ascending, epoch descending) with no two equal, then
//    `fence_count` = ceil(count / kRunPerPage) fences, fence i being the row
//    of entry i * kRunPerPage. A lookup is a binary search over the fences
//    and a scan within one page of entries; opening a run reads its header
//    only, so a restart costs nothing proportional to the runs.
//  * The checksum covers the entries and the fences, and is checked by
//    verify() (O(count), for checks and tests), not by open: a run becomes
//    reachable only through a transaction that publishes it after it is
//    durable, so a published run was written whole.
//  * A view never writes: run_write() builds a run in memory the caller
//    made durable before publishing it.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace pmemps {

constexpr uint64_t kRunMagic = 0x314e5552534d50ULL;  // "PMSRUN1"

struct RunHeader {
  uint64_t magic;
  uint64_t count;
  uint64_t fence_count;
  uint64_t checksum;  // fnv1a over the entries, then the fences
};

struct RunEntry {
  uint64_t row;
  uint64_t off;  // the version's record in the log
  uint32_t epoch;
  uint32_t pad;
};

// Entries per 4 KiB page: a lookup touches one page of entries.
constexpr uint64_t kRunPerPage = 4096 / sizeof(RunEntry);

inline bool run_order(const RunEntry& a, const RunEntry& b) { return a.row != b.row ? a.row < b.row : a.epoch > b.epoch; }

inline uint64_t run_fences(uint64_t count) { return (count + kRunPerPage - 1) / kRunPerPage; }

inline size_t run_bytes(uint64_t count) { return sizeof(RunHeader) + count * sizeof(RunEntry) + run_fences(count) * sizeof(uint64_t); }

// Writes a run of the given entries (already in run_order, no two equal)
// into dst, which holds run_bytes(count) bytes.
inline void run_write(void* dst, const RunEntry* e, uint64_t count) {
  RunHeader* h = static_cast<RunHeader*>(dst);
  RunEntry* out = reinterpret_cast<RunEntry*>(h + 1);
  uint64_t* fences = reinterpret_cast<uint64_t*>(out + count);
  std::memcpy(out, e, count * sizeof(RunEntry));
  const uint64_t nf = run_fences(count);
  for (uint64_t i = 0; i < nf; i++) fences[i] = e[i * kRunPerPage].row;
  h->magic = kRunMagic;
  h->count = count;
  h->fence_count = nf;
  h->checksum = fnv1a(fences, nf * sizeof(uint64_t), fnv1a(out, count * sizeof(RunEntry)));
}

class Run {
 public:
  Run() = default;

  // A view of the run at p, of `bytes` bytes; fails with Corrupt when the
  // header does not describe a run of that size.
  static Run open(const void* p, size_t bytes) {
    const RunHeader* h = static_cast<const RunHeader*>(p);
    if (bytes < sizeof(RunHeader) || h->magic != kRunMagic || h->count > bytes / sizeof(RunEntry) || h->fence_count != run_fences(h->count) ||
        run_bytes(h->count) != bytes)
      throw Error(Code::Corrupt, "a location run's header does not match its size");
    Run r;
    r.h_ = h;
    r.e_ = reinterpret_cast<const RunEntry*>(h + 1);
    r.f_ = reinterpret_cast<const uint64_t*>(r.e_ + h->count);
    return r;
  }

  uint64_t count() const { return h_ ? h_->count : 0; }
  const RunEntry* entries() const { return e_; }

  bool verify() const {
    if (!h_) return true;
    for (uint64_t i = 1; i < h_->count; i++)
      if (!run_order(e_[i - 1], e_[i])) return false;
    for (uint64_t i = 0; i < h_->fence_count; i++)
      if (f_[i] != e_[i * kRunPerPage].row) return false;
    return h_->checksum == fnv1a(f_, h_->fence_count * sizeof(uint64_t), fnv1a(e_, h_->count * sizeof(RunEntry)));
  }

  // The first entry of `row` (its newest version in this run) that `take`
  // accepts, versions newest first; nullptr when none does.
  template <class Take>
  const RunEntry* find(uint64_t row, Take take) const {
    if (!h_ || h_->count == 0) return nullptr;
    // The last page whose first row is below `row` may end with its first
    // entries; the pages before it cannot hold it.
    const uint64_t* f = std::lower_bound(f_, f_ + h_->fence_count, row);
    uint64_t page = static_cast<uint64_t>(f - f_);
    if (page > 0) page--;
    const RunEntry* lo = e_ + page * kRunPerPage;
    const RunEntry* hi = e_ + h_->count;
    const RunEntry* it = std::lower_bound(lo, hi, row, [](const RunEntry& a, uint64_t r) { return a.row < r; });
    for (; it != hi && it->row == row; it++)
      if (take(*it)) return it;
    return nullptr;
  }

 private:
  const RunHeader* h_ = nullptr;
  const RunEntry* e_ = nullptr;
  const uint64_t* f_ = nullptr;
};

// Merges runs (each in run_order) into one sorted list, keeping for each
// row the versions `keep` selects from its versions newest first (a row's
// versions across runs, duplicates of one (row, epoch) dropped but the
// first, which comes from the earliest run given: list runs newest first).
template <class Keep>
std::vector<RunEntry> merge_runs(const std::vector<Run>& runs, Keep keep) {
  std::vector<RunEntry> all;
  size_t total = 0;
  for (const Run& r : runs) total += r.count();
  all.reserve(total);
  for (const Run& r : runs) all.insert(all.end(), r.entries(), r.entries() + r.count());
  std::stable_sort(all.begin(), all.end(), run_order);
  std::vector<RunEntry> out;
  std::vector<RunEntry> row;
  for (size_t i = 0; i < all.size();) {
    size_t j = i;
    row.clear();
    for (; j < all.size() && all[j].row == all[i].row; j++)
      if (row.empty() || row.back().epoch != all[j].epoch) row.push_back(all[j]);
    keep(row);
    out.insert(out.end(), row.begin(), row.end());
    i = j;
  }
  return out;
}

}  // namespace pmemps
