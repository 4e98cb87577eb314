// Brings ranges of a pool's file into the page cache before they are
// written, on a thread of its own (the msync path, PMEMPS_LOG_WARM=1;
// docs/design.md, "The flush's batches, and what a write into new pages
// costs here": measured, off by default).
//
// A write into pages the page cache does not hold yet pays for them inside
// the writer's call; the version log knows its next segments long before
// it writes them (its room is held when a push dirties a row), so reading
// them ahead moves that cost off the checkpoint's flush.
//
// Invariants:
//  * It only reads the file (pread into a buffer of its own, through a
//    descriptor of its own): it changes no byte and takes no lock of the
//    pool or the engine, so a range it holds may be written, synced or
//    freed meanwhile. A read that fails is dropped: a range not warmed is
//    only slower to write.
//  * Its descriptor is marked for random access (POSIX_FADV_RANDOM), so a
//    read brings in the pages it asks for as single pages, as a fault of
//    the pool's mapping (POSIX_MADV_RANDOM) does, and not the large folios
//    of sequential readahead.
//  * At most kMaxQueued bytes wait; further ranges are dropped.
//  * The thread starts with the first range and is joined by the
//    destructor, before the descriptor is closed.
#pragma once
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace pmemps {

class PageWarmer {
 public:
  // Reads the file at path; ok() is false when it cannot be opened.
  explicit PageWarmer(const std::string& path) : fd_(open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ >= 0) posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);
  }
  bool ok() const { return fd_ >= 0; }
  PageWarmer(const PageWarmer&) = delete;
  PageWarmer& operator=(const PageWarmer&) = delete;
  ~PageWarmer() {
    {
      std::lock_guard<std::mutex> g(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) close(fd_);
  }

  // Queues n bytes of the file from off to be read.
  void add(uint64_t off, uint64_t n) {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (quit_ || queued_ + n > kMaxQueued) return;
      queue_.push_back({off, n});
      queued_ += n;
      if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
    }
    cv_.notify_one();
  }

  // Bytes read so far (stats, tests).
  uint64_t warmed() const { return warmed_.load(std::memory_order_relaxed); }

 private:
  static constexpr uint64_t kMaxQueued = uint64_t{1} << 30;
  static constexpr size_t kPiece = size_t{1} << 20;

  void loop() {
    // SCHED_BATCH: a fair share of a core, never preempting a push's
    // thread when it wakes (as the copy arena's filler: an idle-priority
    // thread under steady pushes never ran).
    sched_param p{};
    pthread_setschedparam(pthread_self(), SCHED_BATCH, &p);
    std::vector<char> buf(kPiece);
    std::unique_lock<std::mutex> g(mu_);
    for (;;) {
      cv_.wait(g, [&] { return quit_ || !queue_.empty(); });
      if (quit_) return;
      auto [off, n] = queue_.front();
      const uint64_t piece = std::min<uint64_t>(n, kPiece);
      if (n > piece) {
        queue_.front() = {off + piece, n - piece};
      } else {
        queue_.pop_front();
      }
      queued_ -= piece;
      // A piece at a time, the lock let go: the destructor waits at most
      // for one read.
      g.unlock();
      const ssize_t r = pread(fd_, buf.data(), piece, static_cast<off_t>(off));
      if (r > 0) warmed_.fetch_add(static_cast<uint64_t>(r), std::memory_order_relaxed);
      g.lock();
    }
  }

  struct Range {
    uint64_t off, n;
  };
  const int fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Range> queue_;
  uint64_t queued_ = 0;
  bool quit_ = false;
  std::atomic<uint64_t> warmed_{0};
  std::thread thread_;
};

}  // namespace pmemps
