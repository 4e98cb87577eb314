// What a checkpoint's write-back costs on a non-DAX file (the msync path)
// with three layouts of the rows it writes (issue 11: choose by
// measurement). A file is mapped as libpmemobj maps a pool on ext4/XFS, the
// dirty rows of a checkpoint are written, and the written ranges are made
// durable with msync, as pmem_msync does; the time includes the msync.
//
//   g++ -std=c++17 -O2 bench/writeback-layout.cc -o writeback-layout && ./writeback-layout DIR [rows] [dirty%...]
//
// Layouts, for `rows` rows of dim 64 with Adagrad (512 bytes of values):
//   in-place  today's: a row of 3 slots {epoch, step, values} (1,568 B with
//             its key) at row-number order; write-back stores one slot of
//             each dirty row where the row lives (random pages).
//   log+slots versions appended to a log (key, epoch, step, values: 528 B),
//             and each row's 3 slots hold {epoch, log offset} (56 B a row
//             with its key): the log is written sequentially, the slots
//             still at random.
//   log+runs  versions appended to a log, and the checkpoint's (row, log
//             offset) pairs written as one sorted run (16 B each), merged
//             into a base map later: everything written sequentially.
// Reference: a full dump, rows x 512 B written with write() and fsync'd
// (bench/engine.ts phase 3's). Dirty rows are distinct and uniform (seeded).
// The file is created with fallocate and its pages are not in the page
// cache before a run (posix_fadvise DONTNEED after an fsync), so a write to
// a page costs its read-back of nothing (unwritten extents read as zeros)
// and its write at msync. A script, not a test.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kValues = 512;                // dim 64 x (weight + accumulator) x 4 B
constexpr size_t kSlot = 8 + kValues;          // {epoch u32, step u32} + values
constexpr size_t kRowInPlace = 8 + 3 * kSlot;  // key + 3 slots = 1,568 B
constexpr size_t kLogRecord = 16 + kValues;    // key, epoch, step, values = 528 B
constexpr size_t kRowSlots = 8 + 3 * 16;       // key + 3 x {epoch, offset} = 56 B
constexpr size_t kRunEntry = 16;               // row, offset

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Map {
  int fd = -1;
  char* p = nullptr;
  size_t len = 0;
  Map(const std::string& path, size_t n) : len(n) {
    fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || posix_fallocate(fd, 0, static_cast<off_t>(n)) != 0) {
      perror(path.c_str());
      exit(1);
    }
    fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    p = static_cast<char*>(mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
    if (p == MAP_FAILED) {
      perror("mmap");
      exit(1);
    }
  }
  ~Map() {
    munmap(p, len);
    close(fd);
  }
  // One envelope msync over [lo, hi), page-aligned, as the engine does.
  void sync(size_t lo, size_t hi) const {
    lo &= ~(kPage - 1);
    if (msync(p + lo, hi - lo, MS_SYNC) != 0) perror("msync");
  }
};

std::vector<uint64_t> dirty_rows(uint64_t rows, uint64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<uint64_t> all(rows);
  for (uint64_t i = 0; i < rows; i++) all[i] = i;
  for (uint64_t i = 0; i < n; i++) std::swap(all[i], all[i + g() % (rows - i)]);  // partial Fisher-Yates
  all.resize(n);
  return all;
}

double in_place(const std::string& dir, uint64_t rows, const std::vector<uint64_t>& d, const char* vals) {
  Map m(dir + "/wb-inplace.bin", rows * kRowInPlace);
  const double t = now_s();
  size_t lo = SIZE_MAX, hi = 0;
  for (uint64_t r : d) {
    char* row = m.p + r * kRowInPlace;
    std::memcpy(row, &r, 8);
    char* slot = row + 8 + (r % 3) * kSlot;  // whichever slot is unpinned
    std::memcpy(slot + 8, vals, kValues);
    const uint32_t hdr[2] = {7, 1};
    std::memcpy(slot, hdr, 8);
    lo = std::min<size_t>(lo, row - m.p);
    hi = std::max<size_t>(hi, row - m.p + kRowInPlace);
  }
  m.sync(lo, hi);
  return now_s() - t;
}

double log_slots(const std::string& dir, uint64_t rows, const std::vector<uint64_t>& d, const char* vals) {
  const size_t slots_bytes = rows * kRowSlots;
  Map m(dir + "/wb-logslots.bin", slots_bytes + d.size() * kLogRecord + kPage);
  const double t = now_s();
  size_t tail = (slots_bytes + kPage - 1) & ~(kPage - 1);
  const size_t log0 = tail;
  size_t lo = SIZE_MAX, hi = 0;
  for (uint64_t r : d) {
    char* rec = m.p + tail;
    const uint64_t head[2] = {r, (1ULL << 32) | 7};
    std::memcpy(rec, head, 16);
    std::memcpy(rec + 16, vals, kValues);
    char* slots = m.p + r * kRowSlots;
    const uint64_t s[2] = {7, tail};
    std::memcpy(slots + 8 + (r % 3) * 16, s, 16);
    lo = std::min<size_t>(lo, r * kRowSlots);
    hi = std::max<size_t>(hi, r * kRowSlots + kRowSlots);
    tail += kLogRecord;
  }
  m.sync(log0, tail);  // records before the slots that name them
  m.sync(lo, hi);
  return now_s() - t;
}

double log_runs(const std::string& dir, const std::vector<uint64_t>& d, const char* vals) {
  Map m(dir + "/wb-logruns.bin", d.size() * (kLogRecord + kRunEntry) + 2 * kPage);
  const double t = now_s();
  std::vector<std::pair<uint64_t, uint64_t>> run;
  run.reserve(d.size());
  size_t tail = 0;
  for (uint64_t r : d) {
    char* rec = m.p + tail;
    const uint64_t head[2] = {r, (1ULL << 32) | 7};
    std::memcpy(rec, head, 16);
    std::memcpy(rec + 16, vals, kValues);
    run.emplace_back(r, tail);
    tail += kLogRecord;
  }
  m.sync(0, tail);
  std::sort(run.begin(), run.end());
  const size_t run0 = (tail + kPage - 1) & ~(kPage - 1);
  std::memcpy(m.p + run0, run.data(), run.size() * kRunEntry);
  m.sync(run0, run0 + run.size() * kRunEntry);
  return now_s() - t;
}

double full_dump(const std::string& dir, uint64_t rows, const char* vals) {
  const std::string path = dir + "/wb-dump.bin";
  std::vector<char> chunk(64 << 20);
  for (size_t i = 0; i < chunk.size(); i += kValues) std::memcpy(chunk.data() + i, vals, kValues);
  const double t = now_s();
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  for (uint64_t left = rows * kValues; left > 0;) {
    const size_t n = std::min<uint64_t>(left, chunk.size());
    if (write(fd, chunk.data(), n) != static_cast<ssize_t>(n)) {
      perror("write");
      exit(1);
    }
    left -= n;
  }
  fsync(fd);
  close(fd);
  const double s = now_s() - t;
  unlink(path.c_str());
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR [rows] [dirty%%...]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const uint64_t rows = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 10'000'000;
  std::vector<double> pcts;
  for (int i = 3; i < argc; i++) pcts.push_back(std::atof(argv[i]));
  if (pcts.empty()) pcts = {1, 10};
  std::vector<char> vals(kValues);
  for (size_t i = 0; i < kValues; i++) vals[i] = static_cast<char>(i * 31);

  const double dump = full_dump(dir, rows, vals.data());
  std::printf("rows %llu, dim 64 Adagrad (512 B of values a row); full dump %.2f s (%.0f MiB)\n", static_cast<unsigned long long>(rows), dump,
              rows * kValues / 1048576.0);
  std::printf("| dirty | in-place | log+slots | log+runs |\n|---|---|---|---|\n");
  for (double pct : pcts) {
    const auto d = dirty_rows(rows, static_cast<uint64_t>(rows * pct / 100), 11 + static_cast<uint64_t>(pct * 100));
    const double a = in_place(dir, rows, d, vals.data());
    unlink((dir + "/wb-inplace.bin").c_str());
    const double b = log_slots(dir, rows, d, vals.data());
    unlink((dir + "/wb-logslots.bin").c_str());
    const double c = log_runs(dir, d, vals.data());
    unlink((dir + "/wb-logruns.bin").c_str());
    std::printf("| %.0f%% | %.2f s (%.1f%% of the dump) | %.2f s (%.1f%%) | %.2f s (%.1f%%) |\n", pct, a, 100 * a / dump, b, 100 * b / dump, c,
                100 * c / dump);
    std::fflush(stdout);
  }
  return 0;
}
