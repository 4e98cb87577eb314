// A thread at the lowest CPU priority Linux offers (SCHED_IDLE: it runs
// only on a core nothing else wants), for the work a checkpoint's prepare
// must finish but no push should wait for: writing back the closed epoch's
// rows. On two cores a flusher at normal priority took a core from every
// push and every reply the main thread had to send (push p99 4x during a
// prepare; docs/design.md "A push during a checkpoint").
//
// Invariants:
//  * run() returns only after every step it started, on either thread, has
//    returned; the first exception a step throws is rethrown by run(), and
//    no step starts after it.
//  * The idle thread calls step(true, its state) until it returns false;
//    `true` asks the step to stand aside while pushes run as well. So that a
//    machine that never idles still finishes, the caller measures every
//    kWatchMs the CPU time the idle thread got; once kGraceMs have passed,
//    an interval in which it got less than kMinSharePct makes the caller
//    call step(false, its own state) itself, at its own priority (policy
//    SCHED_BATCH meanwhile), during the next interval: in slices of
//    kSliceUs, each followed by a sleep, so that it takes at most kDutyPct
//    of one core. A starved prepare costs at most kGraceMs + kWatchMs more
//    than a flush of 100/kDutyPct times its CPU time. The grace is there
//    because a burst of pushes keeps the idle thread below the share for a
//    while (on two cores, 3% in a prepare's first 100 ms) and it catches up
//    after the burst; the slices because a caller that stepped in without
//    pause took a core from a push for the whole interval (pushes of 3-6
//    ms, 3x the p99 without a prepare).
//  * Once the caller's own steps found nothing left (or one threw),
//    stopping() turns true: a step waiting to be polite returns at once.
//  * One run() at a time (the engine runs one prepare at a time). Between
//    runs the thread waits on a condition variable and holds nothing.
#pragma once
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace pmemps {

class IdleThread {
 public:
  static constexpr int kWatchMs = 100;
  // Half a core: an idle thread that yields after every chunk got just over
  // 5% under pushes that never pause, enough to keep a caller waiting for
  // less from stepping in, too little to finish (prepares of 15-21 s).
  static constexpr int kMinSharePct = 50;
  static constexpr int kGraceMs = 1000;
  static constexpr int kSliceUs = 250;
  static constexpr int kDutyPct = 25;

  IdleThread() = default;
  IdleThread(const IdleThread&) = delete;
  IdleThread& operator=(const IdleThread&) = delete;
  ~IdleThread() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> g(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  bool stopping() const { return stop_.load(std::memory_order_relaxed); }

  // step(polite, state) does a bounded piece of the work and returns whether
  // any may be left; each thread has a State of its own.
  template <class State, class Step>
  void run(Step step) {
    State idle_state, own_state;
    std::function<bool()> idle_step = [&] { return step(true, idle_state); };
    start();
    {
      std::lock_guard<std::mutex> g(mu_);
      job_ = &idle_step;
      error_ = nullptr;
      stop_.store(false);
      busy_ = true;
    }
    cv_.notify_all();
    uint64_t cpu = thread_cpu_us();
    const auto grace_end = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGraceMs);
    bool own_done = false;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        if (done_cv_.wait_for(lk, std::chrono::milliseconds(kWatchMs), [&] { return !busy_; })) break;
        if (error_) continue;  // the idle thread stops after its step
      }
      const uint64_t now = thread_cpu_us();
      const bool starved = now - cpu < static_cast<uint64_t>(kWatchMs) * 1000 * kMinSharePct / 100;
      cpu = now;
      if (!starved || own_done || std::chrono::steady_clock::now() < grace_end) continue;
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWatchMs);
      BatchPolicy batch;
      try {
        while (!own_done && std::chrono::steady_clock::now() < until) {
          const auto slice_end = std::chrono::steady_clock::now() + std::chrono::microseconds(kSliceUs);
          while (!own_done && std::chrono::steady_clock::now() < slice_end) own_done = !step(false, own_state);
          if (!own_done) std::this_thread::sleep_for(std::chrono::microseconds(kSliceUs * (100 - kDutyPct) / kDutyPct));
        }
      } catch (...) {
        std::lock_guard<std::mutex> g(mu_);
        if (!error_) error_ = std::current_exception();
        own_done = true;
      }
      if (own_done) stop_.store(true);
    }
    std::lock_guard<std::mutex> g(mu_);
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // While the caller steps in, its thread is SCHED_BATCH: waking from a
  // slice's pause, a batch thread does not preempt a running one (it waits
  // for a free core or the tick), so it does not stop a push's thread inside
  // a stripe's lock four times a millisecond (maxPushWaitUs over 1 ms in 3
  // of 9 runs at normal policy, none of 5 at batch; BENCHMARKS.md). The
  // caller is a thread of libuv's pool: its policy is restored after the
  // interval.
  struct BatchPolicy {
    int policy = SCHED_OTHER;
    sched_param old{};
    bool set = false;
    BatchPolicy() {
      if (pthread_getschedparam(pthread_self(), &policy, &old) != 0) return;
      sched_param p{};
      set = pthread_setschedparam(pthread_self(), SCHED_BATCH, &p) == 0;
    }
    ~BatchPolicy() {
      if (set) pthread_setschedparam(pthread_self(), policy, &old);
    }
  };

  void start() {
    if (thread_.joinable()) return;
    thread_ = std::thread([this] { loop(); });
  }

  uint64_t thread_cpu_us() {
    clockid_t id;
    timespec ts{};
    if (pthread_getcpuclockid(thread_.native_handle(), &id) != 0 || clock_gettime(id, &ts) != 0) return 0;
    return static_cast<uint64_t>(ts.tv_sec) * 1000000 + static_cast<uint64_t>(ts.tv_nsec) / 1000;
  }

  void loop() {
    // Failing to lower it (some other OS) leaves the thread at normal priority.
    sched_param p{};
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &p);
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return quit_ || (busy_ && job_); });
      if (quit_) return;
      std::function<bool()>* job = job_;
      lk.unlock();
      std::exception_ptr err;
      try {
        while (!stop_.load() && (*job)()) {
        }
      } catch (...) {
        err = std::current_exception();
      }
      lk.lock();
      if (err && !error_) error_ = err;
      busy_ = false;
      job_ = nullptr;
      done_cv_.notify_all();
    }
  }

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::function<bool()>* job_ = nullptr;
  std::exception_ptr error_;
  bool busy_ = false, quit_ = false;
  std::atomic<bool> stop_{false};
};

}  // namespace pmemps
