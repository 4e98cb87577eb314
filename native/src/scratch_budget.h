// The working memory of pulls and pushes too large for the arrays a thread
// keeps between calls: one budget for the process.
//
// A call's arrays grow with its keys (a push ~61 bytes a key plus its
// gradients' size again, twice when they are unaligned; a pull 20), outside
// the cache's budget. The arrays a
// thread keeps between calls are bounded (kKeepScratchBytes in
// engine_data.cc); a larger call allocates its own and frees them when it
// ends. Four pushes of a 64 MiB message of dim-1 rows, one per thread of
// the pool, would hold ~1.4 GB of such arrays at once beside the cache
// (estimated from the arrays' sizes).
//
// Invariants:
//  * A call that needs more than the kept arrays holds `need` bytes of the
//    budget from before it allocates until after it frees; smaller calls
//    take nothing (the common path takes no lock).
//  * used() <= max(budget, the largest single need): a call waits until
//    its need fits beside the others, or until it is alone, so one call
//    larger than the whole budget still runs (it cannot be split without
//    losing the push's all-or-nothing). An open that lowers the budget
//    below what calls hold lets them finish; the next call waits for them.
//  * Calls take the budget in the order they arrive, so one larger than the
//    whole budget waits only for the calls before it.
//  * A call waits for the budget before it takes any engine lock, so it
//    holds no lock another call or a checkpoint needs; it does occupy its
//    thread of libuv's pool while it waits.
#pragma once
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace pmemps {

struct ScratchStats {
  uint64_t used, peak, waits, budget;
};

class ScratchBudget {
 public:
  static ScratchBudget& get() {
    static ScratchBudget b;
    return b;
  }

  // In order of arrival: a call that would fit must not pass one that waits,
  // or a call larger than the budget could wait for an idle moment forever.
  void acquire(size_t need) {
    std::unique_lock<std::mutex> g(mu_);
    const uint64_t ticket = next_ticket_++;
    auto fits = [&] { return ticket == serving_ && (used_ == 0 || used_ + need <= budget_); };
    if (!fits()) {
      waits_++;
      cv_.wait(g, fits);
    }
    serving_++;
    used_ += need;
    peak_ = std::max(peak_, used_);
    g.unlock();
    cv_.notify_all();  // the next in line may fit too
  }

  // Each engine's open sets it (Engine.open's scratchMb); calls waiting may
  // fit now.
  void set_budget(uint64_t bytes) {
    {
      std::lock_guard<std::mutex> g(mu_);
      budget_ = bytes;
    }
    cv_.notify_all();
  }

  void release(size_t need) {
    {
      std::lock_guard<std::mutex> g(mu_);
      used_ -= need;
    }
    cv_.notify_all();
  }

  ScratchStats stats() {
    std::lock_guard<std::mutex> g(mu_);
    return {used_, peak_, waits_, budget_};
  }

 private:
  ScratchBudget() = default;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t used_ = 0, peak_ = 0, waits_ = 0;
  uint64_t budget_ = uint64_t{256} << 20;   // Engine.open's default scratchMb
  uint64_t next_ticket_ = 0, serving_ = 0;  // arrival order
};

// Holds `need` bytes of the budget for its scope when need > keep.
class ScratchHold {
 public:
  ScratchHold(size_t need, size_t keep) : need_(need > keep ? need : 0) {
    if (need_) ScratchBudget::get().acquire(need_);
  }
  ~ScratchHold() {
    if (need_) ScratchBudget::get().release(need_);
  }
  ScratchHold(const ScratchHold&) = delete;
  ScratchHold& operator=(const ScratchHold&) = delete;

 private:
  size_t need_;
};

}  // namespace pmemps
