// Brings ranges of a pool's file into the page cache before they are
// written, on a thread of its own (the msync path; docs/design.md, "The
// log's new segments read ahead of their writes").
//
// A write into a page the page cache does not hold yet pays for the page
// first, inside the writer's call: on this project's virtual machine ~11 µs
// a page (pwrite into new pages at 300-380 MB/s, into cached ones at
// 6-11 GB/s; bench/log-write-path.c), which was half of a checkpoint's
// flush. The version log knows its next segments long before it writes
// them (its room is held when a push dirties a row), so reading them ahead
// moves that cost off the checkpoint.
//
// Invariants:
//  * It only reads the file (pread into a buffer of its own): it changes no
//    byte and takes no lock of the pool or the engine, so a range it holds
//    may be written, synced or freed meanwhile. A read that fails is
//    dropped: a range not warmed is only slower to write.
//  * At most kMaxQueued bytes wait; further ranges are dropped.
//  * The thread starts with the first range and is joined by the
//    destructor, which the owner runs before it closes the file.
#pragma once
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace pmemps {

class PageWarmer {
 public:
  explicit PageWarmer(int fd) : fd_(fd) {}
  PageWarmer(const PageWarmer&) = delete;
  PageWarmer& operator=(const PageWarmer&) = delete;
  ~PageWarmer() {
    {
      std::lock_guard<std::mutex> g(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
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
