// Unit test of runs.h: lookups against a plain map, fences at page
// boundaries, merges that keep what a row's slots keep, corrupt headers
// refused. Built and run by test/native-units.test.ts; exits non-zero with
// the failed check on stderr.
#include "runs.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>

#include "check.h"

using namespace pmemps;

static std::vector<char> build(std::vector<RunEntry> v) {
  std::sort(v.begin(), v.end(), run_order);
  std::vector<char> buf(run_bytes(v.size()));
  run_write(buf.data(), v.data(), v.size());
  return buf;
}

static void lookups_match_a_map() {
  std::mt19937_64 rng(42);
  for (uint64_t n : std::vector<uint64_t>{0, 1, kRunPerPage - 1, kRunPerPage, kRunPerPage + 1, 5 * kRunPerPage, 20000}) {
    // Up to three versions per row, rows sparse over 4n, so lookups of
    // absent rows fall in every gap, before the first and after the last.
    std::map<uint64_t, std::vector<RunEntry>> want;
    std::vector<RunEntry> v;
    while (v.size() < n) {
      const uint64_t row = rng() % (4 * n + 1);
      const uint32_t epoch = 1 + static_cast<uint32_t>(rng() % 9);
      bool dup = false;
      for (auto& e : want[row]) dup |= e.epoch == epoch;
      if (dup) continue;
      RunEntry e{row, rng(), epoch, 0};
      want[row].push_back(e);
      v.push_back(e);
    }
    for (auto& [row, es] : want) std::sort(es.begin(), es.end(), run_order);
    auto buf = build(v);
    Run r = Run::open(buf.data(), buf.size());
    CHECK(r.count() == n);
    CHECK(r.verify());
    for (uint64_t row = 0; row <= 4 * n + 2; row++) {
      for (uint32_t bound : {0u, 3u, 9u}) {
        const RunEntry* got = r.find(row, [&](const RunEntry& e) { return e.epoch <= bound; });
        const RunEntry* exp = nullptr;
        auto it = want.find(row);
        if (it != want.end())
          for (auto& e : it->second)
            if (e.epoch <= bound) {
              exp = &e;
              break;
            }
        CHECK((got == nullptr) == (exp == nullptr));
        if (got && exp) CHECK(got->row == exp->row && got->epoch == exp->epoch && got->off == exp->off);
      }
    }
  }
}

static void rows_spanning_a_fence() {
  // Row 7's versions straddle the first page boundary: the lookup must start
  // on the page before the fence that equals it.
  std::vector<RunEntry> v;
  for (uint64_t i = 0; i < kRunPerPage - 2; i++) v.push_back({i / 8, i, static_cast<uint32_t>(100 - i % 8), 0});
  const uint64_t row = v.back().row + 1;
  for (uint32_t ep = 6; ep >= 1; ep--) v.push_back({row, 1000 + ep, ep, 0});
  auto buf = build(v);
  Run r = Run::open(buf.data(), buf.size());
  const RunEntry* newest = r.find(row, [](const RunEntry&) { return true; });
  CHECK(newest && newest->epoch == 6);
  const RunEntry* at2 = r.find(row, [](const RunEntry& e) { return e.epoch <= 2; });
  CHECK(at2 && at2->epoch == 2 && at2->off == 1002);
}

static void merges_keep_what_slots_keep() {
  // Newest first: run a (epoch 5), b (epoch 4), c (epoch 2). Keep per row
  // the newest, the newest at or below P = 4 and at or below C = 2.
  std::vector<std::vector<char>> bufs = {
      build({{1, 51, 5, 0}, {3, 53, 5, 0}}),
      build({{1, 41, 4, 0}, {2, 42, 4, 0}, {3, 43, 4, 0}}),
      build({{1, 21, 2, 0}, {2, 22, 2, 0}, {4, 24, 2, 0}, {1, 11, 1, 0}}),
  };
  std::vector<Run> runs;
  for (auto& b : bufs) runs.push_back(Run::open(b.data(), b.size()));
  auto keep = [](std::vector<RunEntry>& row) {
    std::vector<RunEntry> k;
    bool c = false, p = false;
    for (size_t i = 0; i < row.size(); i++) {
      const bool take = i == 0 || (!p && row[i].epoch <= 4) || (!c && row[i].epoch <= 2);
      if (row[i].epoch <= 4) p = true;
      if (row[i].epoch <= 2) c = true;
      if (take) k.push_back(row[i]);
    }
    row = k;
  };
  auto m = merge_runs(runs, keep);
  std::vector<std::pair<uint64_t, uint32_t>> got;
  for (auto& e : m) got.push_back({e.row, e.epoch});
  std::vector<std::pair<uint64_t, uint32_t>> want = {{1, 5}, {1, 4}, {1, 2}, {2, 4}, {2, 2}, {3, 5}, {3, 4}, {4, 2}};
  CHECK(got == want);
  auto buf = build(m);
  CHECK(Run::open(buf.data(), buf.size()).verify());
}

static void bad_runs_refused() {
  auto buf = build({{1, 1, 1, 0}, {2, 2, 1, 0}});
  bool threw = false;
  try {
    Run::open(buf.data(), buf.size() - 8);
  } catch (const Error& e) {
    threw = e.code() == Code::Corrupt;
  }
  CHECK(threw);
  reinterpret_cast<RunEntry*>(buf.data() + sizeof(RunHeader))[1].off ^= 1;
  CHECK(!Run::open(buf.data(), buf.size()).verify());
}

int main() {
  lookups_match_a_map();
  rows_spanning_a_fence();
  merges_keep_what_slots_keep();
  bad_runs_refused();
  return pmemps_test::check_result("runs");
}
