// Hit ratio of the cache's eviction policy on bench/engine.ts phase 2's
// Zipf(0.99) case (10M keys, a 256 MiB cache, dim 64 Adagrad rows, batches of
// 4,096), with the engine's own Stripe (native/src/cache.h) and its eviction
// step (Engine::make_room: when full, evict down to 7/8 of the stripe's
// share): CLOCK, as the engine runs it, against the LRU it replaced (a hit
// moves the entry to the front; the scan never meets a used entry). As in
// phase 2, the Zipf keys come after the uniform case's pulls and pushes (a
// push touches the rows it inserts): without that history the simulation
// missed the 1.1 points CLOCK lost to LRU before hits on young entries
// stopped counting (cache.h). Only the cache is simulated (no pool), so 10M
// keys need no 16 GB pool; bench/cache-hits.ts measures the engine itself.
// A script, not a test:
//
//   g++ -std=c++17 -O2 -Inative/src bench/cache-policy.cc native/src/common.cc -o cache-policy && ./cache-policy [keys] [cache MiB]
//
// Prints the hit ratio of each policy over the measured batches (after a
// warm-up of 1.5 cache sizes of accesses, as phase 2 does).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "cache.h"

using namespace pmemps;

namespace {

// Zipf(s) over ranks 1..n by rejection-inversion (Hörmann & Derflinger), as bench/lib.ts.
class Zipf {
 public:
  Zipf(uint64_t n, double s) : n_(n), s_(s) {
    hx1_ = hint(1.5) - 1;
    hn_ = hint(n + 0.5);
    sv_ = 2 - hinv(hint(2.5) - h(2));
  }
  template <typename R>
  uint64_t operator()(R& rng) {
    std::uniform_real_distribution<double> u01(0, 1);
    for (;;) {
      const double u = hn_ + u01(rng) * (hx1_ - hn_);
      const double x = hinv(u);
      double k = std::floor(x + 0.5);
      if (k < 1) k = 1;
      if (k > n_) k = n_;
      if (k - x <= sv_ || u >= hint(k + 0.5) - h(k)) return static_cast<uint64_t>(k);
    }
  }

 private:
  double h(double x) const { return std::exp(-s_ * std::log(x)); }
  static double h1(double x) { return std::fabs(x) > 1e-8 ? std::log1p(x) / x : 1 - x * (0.5 - x * (1.0 / 3 - 0.25 * x)); }
  static double h2(double x) { return std::fabs(x) > 1e-8 ? std::expm1(x) / x : 1 + x * 0.5 * (1 + (x / 3) * (1 + 0.25 * x)); }
  double hint(double x) const { return h2((1 - s_) * std::log(x)) * std::log(x); }
  double hinv(double x) const {
    double t = x * (1 - s_);
    if (t < -1) t = -1;
    return std::exp(h1(t) * x);
  }
  double n_, s_, hx1_, hn_, sv_;
};

constexpr int kStripeBits = 4;
constexpr uint32_t kRowFloats = 128;  // dim 64 + Adagrad's accumulator

struct Sim {
  bool lru;
  Stripe stripes[1 << kStripeBits];
  uint64_t hits = 0, misses = 0;
  Sim(bool l, size_t cache_bytes) : lru(l) {
    for (auto& s : stripes) s.budget = cache_bytes >> kStripeBits;
  }
  // push: the engine's push touches the entry it has just inserted.
  void access(uint64_t key, bool push = false) {
    const uint64_t h = Stripe::hash(0, key);
    Stripe& s = stripes[h >> (64 - kStripeBits)];
    if (Entry* e = s.find(0, key, h)) {
      hits++;
      if (lru) {
        s.lru.unlink(e);
        s.lru.push_front(e);
      } else {
        s.touch(e);
      }
      return;
    }
    misses++;
    const size_t n = Stripe::entry_bytes(kRowFloats);
    if (!s.has_room(n)) {
      // As Engine::make_room.
      const size_t target = s.budget - s.budget / 8;
      std::vector<Entry*> victims;
      if (s.used_bytes() > target) s.pick_victims(s.used_bytes() - target, &victims);
      for (Entry* v : victims) s.erase(v, Stripe::hash(v->table, v->key));
      if (!s.has_room(n)) s.trim_free(n);
    }
    Entry* e = s.make(0, key, kRowFloats);
    s.insert(e, h);
    if (push && !lru) s.touch(e);
  }
};

}  // namespace

int main(int argc, char** argv) {
  const uint64_t keys = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000'000;
  const size_t cache = (argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 256) << 20;
  const size_t batch = 4096;
  // As bench/engine.ts: cache rows estimated at dim*4*2 + 96 bytes each.
  const size_t est_rows = cache / (64 * 4 * 2 + 96);
  const size_t warm = (15 * est_rows / 10 + batch - 1) / batch, measure = 244;
  Zipf z(keys, 0.99);
  std::mt19937_64 rng(2002);
  // Ranks scattered over the key space by a bijection (a prime multiplier
  // that divides no key count below it), as bench/lib.ts's Scatter.
  const unsigned __int128 mult = 2654435761u;
  std::vector<uint64_t> seq((warm + measure) * batch);
  for (auto& k : seq) k = static_cast<uint64_t>(((z(rng) - 1) * mult + 12345) % keys);
  // Phase 2's uniform case first: warm-up and measured pulls, then pushes of other keys.
  std::mt19937_64 urng(2001);
  std::vector<uint64_t> pulled((warm + measure) * batch), pushed(measure * batch);
  for (auto& k : pulled) k = urng() % keys;
  for (auto& k : pushed) k = urng() % keys;
  for (bool lru : {true, false}) {
    auto sim = std::make_unique<Sim>(lru, cache);
    for (uint64_t k : pulled) sim->access(k);
    for (uint64_t k : pushed) sim->access(k, true);
    for (size_t i = 0; i < warm * batch; i++) sim->access(seq[i]);
    sim->hits = sim->misses = 0;
    for (size_t i = warm * batch; i < seq.size(); i++) sim->access(seq[i]);
    std::printf("%s: hit ratio %.4f over %zu accesses (%llu keys, %zu MiB, warm-up %zu batches)\n", lru ? "LRU  " : "CLOCK",
                static_cast<double>(sim->hits) / static_cast<double>(sim->hits + sim->misses), measure * batch,
                static_cast<unsigned long long>(keys), cache >> 20, warm);
  }
}
