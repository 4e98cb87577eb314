// build: vlog.cc pool.cc common.cc -lpmemobj -lpmem -pthread
// Unit test of vlog.h on a real libpmemobj pool: records read back as
// written across segments, a damaged record refused, appends after the
// published tail discarded by a reopen, the log reopened with its pool,
// appenders on several threads, and reserved room usable on a full pool.
#include "vlog.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <thread>

#include "check.h"

using namespace pmemps;

struct Rec {
  uint64_t key, off;
  uint32_t epoch;
  std::vector<float> v;
};

static bool same(const VRecordHdr* h, const Rec& r) {
  return h->key == r.key && h->epoch == r.epoch && h->n == r.v.size() && std::memcmp(h + 1, r.v.data(), sizeof(float) * r.v.size()) == 0;
}

// A new log's descriptor in a new transaction of its own.
static uint64_t new_log(Pool& pool, uint64_t seg_bytes) {
  Tx tx(pool);
  const uint64_t desc = VLog::create(tx, pool, seg_bytes);
  tx.commit();
  return desc;
}

// A publish while another thread's sync still waits for a copy names only
// what an earlier sync made durable. Two threads sync and publish (the
// prepare and compaction): a tail taken from a sync under way covered a
// record still being copied, which a crash left torn before the tail, and
// compaction's parse, stopping at it, freed the whole records after it.
// Runs first: the test hook fires once, on the process's first append.
static void publish_during_sync(const std::string& dir, TxMutex& tx_mu) {
  setenv("PMEMPS_TEST_HOOKS", "log.append_placed:800", 1);
  std::filesystem::create_directories(dir);
  auto pool = std::make_unique<Pool>(dir, 64ull << 20);
  const uint64_t desc = new_log(*pool, 256 << 10);
  VLog log(*pool, desc, &tx_mu);
  std::vector<float> v(128, 2.5f);
  uint64_t held = 0;
  std::thread appender([&] { held = log.append(42, 0, 1, 1, v.data(), 128); });  // held 800 ms after its place is taken
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::thread syncer([&] { log.sync(); });  // waits for the held copy
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  {
    Tx tx(*pool);
    auto g = log.publish_tail(tx);
    tx.commit();
  }
  const PVLog* d = pool->at<PVLog>(desc);
  CHECK(d->tail_seg == 0 && d->tail_off == 0);  // nothing was durable yet
  appender.join();
  syncer.join();
  log.sync();
  {
    Tx tx(*pool);
    auto g = log.publish_tail(tx);
    tx.commit();
  }
  CHECK(d->tail_off == VLog::record_bytes(128));
  CHECK(log.read(held)->key == 42);
  pool.reset();
  std::filesystem::remove_all(dir);
}

int main() {
  const std::string dir = std::filesystem::temp_directory_path() / ("pmemps-vlog-" + std::to_string(getpid()));
  TxMutex tx_mu;  // the engine's, which the log's transactions take
  publish_during_sync(dir, tx_mu);
  std::filesystem::create_directories(dir);
  std::mt19937 rng(7);
  std::vector<Rec> recs;
  uint64_t desc = 0;
  {
    auto pool = std::make_unique<Pool>(dir, 64ull << 20);
    desc = new_log(*pool, 256 << 10);
    VLog log(*pool, desc, &tx_mu);
    for (int i = 0; i < 3000; i++) {
      Rec r{static_cast<uint64_t>(rng()), 0, 1 + static_cast<uint32_t>(i / 1000), std::vector<float>(128)};
      for (auto& x : r.v) x = static_cast<float>(rng()) / 1e6f;
      r.off = log.append(r.key, 0, r.epoch, 7, r.v.data(), 128);
      recs.push_back(std::move(r));
    }
    CHECK(log.segments() >= 3);  // ~960 records of 544 B a segment
    log.sync();
    {
      Tx tx(*pool);
      auto held = log.publish_tail(tx);
      tx.commit();
    }
    for (auto& r : recs) CHECK(same(log.read(r.off), r));
    // A damaged record is refused, by its checksum.
    float* p = reinterpret_cast<float*>(pool->at<char>(recs[1234].off) + sizeof(VRecordHdr)) + 5;
    const float keep = *p;
    *p += 1;
    bool threw = false;
    try {
      log.read(recs[1234].off);
    } catch (const Error& e) {
      threw = e.code() == Code::Corrupt;
    }
    CHECK(threw);
    *p = keep;
    // Appends after the published tail are not part of the log: a reopen
    // resumes at the tail, where the first of them went.
    std::vector<float> v(128, 1.0f);
    const uint64_t first_unpublished = log.append(1, 0, 9, 0, v.data(), 128);
    for (int i = 0; i < 500; i++) log.append(2, 0, 9, 0, v.data(), 128);
    VLog again(*pool, desc, &tx_mu);
    CHECK(again.append(3, 0, 9, 0, v.data(), 128) == first_unpublished);
  }
  {
    // The pool reopened: the published records read back.
    auto pool = std::make_unique<Pool>(dir, 64ull << 20);
    VLog log(*pool, desc, &tx_mu);
    for (auto& r : recs) CHECK(same(log.read(r.off), r));
    // A damaged descriptor is refused.
    pool->at<PVLog>(desc)->tail_off ^= 8;
    bool threw = false;
    try {
      VLog bad(*pool, desc, &tx_mu);
    } catch (const Error& e) {
      threw = e.code() == Code::Corrupt;
    }
    CHECK(threw);
  }
  std::filesystem::remove_all(dir);
  {
    // Appenders on four threads at once: every record reads back as written.
    std::filesystem::create_directories(dir);
    auto pool = std::make_unique<Pool>(dir, 64ull << 20);
    VLog log(*pool, new_log(*pool, 1 << 20), &tx_mu);
    std::vector<std::vector<Rec>> per(4);
    std::vector<std::thread> th;
    for (int w = 0; w < 4; w++)
      th.emplace_back([&, w] {
        std::mt19937 r(100 + w);
        for (int i = 0; i < 2000; i++) {
          Rec x{static_cast<uint64_t>(w) << 32 | static_cast<uint64_t>(i), 0, 3, std::vector<float>(1 + r() % 200)};
          for (auto& f : x.v) f = static_cast<float>(r());
          x.off = log.append(x.key, 0, 3, 0, x.v.data(), static_cast<uint32_t>(x.v.size()));
          per[w].push_back(std::move(x));
        }
      });
    for (auto& t : th) t.join();
    for (auto& v : per)
      for (auto& x : v) CHECK(same(log.read(x.off), x));

    // Room held by a reservation stays usable when the pool has no more:
    // appends without one fail first, and nothing they refused was written.
    VLog::Reservation res;
    const uint64_t held = 3 << 20;
    log.reserve(res, held);
    CHECK(res.bytes == held);
    std::vector<float> v(128, 2.0f);
    bool full = false;
    uint64_t unreserved = 0;
    for (int i = 0; i < 200000 && !full; i++) {
      try {
        log.append(9, 0, 4, 0, v.data(), 128);
        unreserved++;
      } catch (const Error& e) {
        full = e.code() == Code::OutOfSpace;
      }
    }
    CHECK(full && unreserved > 1000);
    uint64_t used = 0;
    while (res.bytes >= VLog::record_bytes(128)) {
      const uint64_t off = log.append(10, 0, 4, 0, v.data(), 128, &res);
      CHECK(log.read(off)->key == 10);
      used += VLog::record_bytes(128);
    }
    CHECK(used + res.bytes == held);
    log.release(res);
    // Reserving more than the pool has fails and holds nothing.
    VLog::Reservation big;
    bool refused = false;
    try {
      log.reserve(big, 1ull << 30);
    } catch (const Error& e) {
      refused = e.code() == Code::OutOfSpace;
    }
    CHECK(refused && big.bytes == 0);
  }
  std::filesystem::remove_all(dir);
  // CRC-32C of "123456789" (the standard check value).
  CHECK(crc32c("123456789", 9) == 0xe3069283u);
  return pmemps_test::check_result("vlog");
}
