// Splits one call's per-stripe work across the caller and an idle helper
// thread, so that one batch in flight uses two cores.
//
// Invariants:
//  * The caller always takes part and takes work items until none are left:
//    a job completes even when no helper is free (many calls in flight keep
//    every helper busy; then each caller does its own work, at the cost of
//    one atomic increment per item).
//  * A helper joins at most one job at a time and only a job still queued;
//    run() returns only after every helper that joined has left it, so the
//    job (on the caller's stack) and everything it refers to outlive it.
//  * A helper holds no lock of the engine between items: the caller holds
//    epoch_mu_ shared for the whole call, the helper takes only what the
//    item itself takes (a stripe, the index shared), in the engine's order.
//  * The first exception an item throws is rethrown by run() on the caller
//    after all participants stopped; items not started by then are skipped.
//  * run_deferrable: an item may decline (return false) when called with
//    must == false (its stripe's lock is held by someone else); it is
//    called again with must == true after every item was offered once, by
//    whichever participant finds it first. Each participant drains the
//    declined items before it leaves, so none is left behind.
#pragma once
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pmemps {

class Helpers {
 public:
  // n helper threads (0: run() does everything on the caller).
  explicit Helpers(unsigned n) {
    for (unsigned i = 0; i < n; i++) threads_.emplace_back([this] { loop(); });
  }
  ~Helpers() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  Helpers(const Helpers&) = delete;
  Helpers& operator=(const Helpers&) = delete;

  // Calls f(i) once for every i in [0, n), on the caller and any helper free
  // to join. `min_items`: below it the job is not offered (waking a thread
  // costs more than a few items).
  void run(size_t n, const std::function<void(size_t)>& f, size_t min_items = 2) {
    run_deferrable(
        n,
        [&f](size_t i, bool) {
          f(i);
          return true;
        },
        min_items);
  }

  // As run(), but f(i, must) may put item i off while must is false (see
  // the invariants): a push's thread that finds a stripe locked does its
  // other stripes first instead of waiting.
  void run_deferrable(size_t n, const std::function<bool(size_t, bool)>& f, size_t min_items = 2) {
    Job job(f, n);
    job.put_off.reserve(n);  // putting an item off never allocates (nor fails) midway
    const bool offer = !threads_.empty() && n >= min_items;
    if (offer) {
      {
        std::lock_guard<std::mutex> g(mu_);
        queue_.push_back(&job);
      }
      cv_.notify_one();
    }
    work(job);
    if (offer) {
      std::unique_lock<std::mutex> g(mu_);
      for (auto it = queue_.begin(); it != queue_.end(); ++it)
        if (*it == &job) {
          queue_.erase(it);
          break;
        }
      done_cv_.wait(g, [&] { return job.joined == 0; });
    }
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  struct Job {
    Job(const std::function<bool(size_t, bool)>& fn, size_t count) : f(fn), n(count) {}
    const std::function<bool(size_t, bool)>& f;
    size_t n;
    std::atomic<size_t> next{0};
    std::mutex put_off_mu;
    std::vector<size_t> put_off;  // declined items, under put_off_mu
    std::atomic<bool> failed{false};
    std::exception_ptr error;  // set once, under err_mu
    std::mutex err_mu;
    int joined = 0;  // helpers inside, under Helpers::mu_
  };

  static void work(Job& j) {
    auto call = [&](size_t i, bool must) {
      try {
        if (j.f(i, must)) return;
        std::lock_guard<std::mutex> g(j.put_off_mu);
        j.put_off.push_back(i);
      } catch (...) {
        std::lock_guard<std::mutex> g(j.err_mu);
        if (!j.error) j.error = std::current_exception();
        j.failed.store(true, std::memory_order_relaxed);
      }
    };
    for (;;) {
      const size_t i = j.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= j.n) break;
      if (j.failed.load(std::memory_order_relaxed)) return;
      call(i, false);
    }
    for (;;) {
      size_t i;
      {
        std::lock_guard<std::mutex> g(j.put_off_mu);
        if (j.put_off.empty()) return;
        i = j.put_off.back();
        j.put_off.pop_back();
      }
      if (j.failed.load(std::memory_order_relaxed)) return;
      call(i, true);
    }
  }

  void loop() {
    std::unique_lock<std::mutex> g(mu_);
    for (;;) {
      cv_.wait(g, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      Job* j = queue_.front();
      queue_.pop_front();
      j->joined++;
      g.unlock();
      work(*j);
      g.lock();
      if (--j->joined == 0) done_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Job*> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace pmemps
