// build: common.cc
// Unit test of cache.h's CLOCK: a hit marks an entry for a second chance
// only once the entry is no longer young (count()/16 inserts since its own),
// so rows touched twice in a row (a trainer's pull and push of one batch)
// are evicted before rows reused later; a scan over entries all being
// flushed ends. Built and run by
// test/native-units.test.ts; exits non-zero with the failed check on stderr.
#include "cache.h"

#include <cstdio>
#include <vector>

#include "check.h"

using namespace pmemps;

namespace {

constexpr uint32_t kFloats = 16;

Entry* add(Stripe& s, uint64_t key) {
  const uint64_t h = Stripe::hash(0, key);
  Entry* e = s.make(0, key, kFloats);
  s.insert(e, h);
  return e;
}

Entry* find(Stripe& s, uint64_t key) { return s.find(0, key, Stripe::hash(0, key)); }

void young_hits_do_not_mark() {
  // 1,601 entries throughout (each insert below erases the oldest other
  // one), so an entry stays young for 100 inserts after its own.
  Stripe s;
  s.budget = SIZE_MAX;
  for (uint64_t k = 0; k < 1600; k++) add(s, k);
  Entry* e = add(s, 5000);
  uint64_t oldest = 0;
  auto insert_one = [&](uint64_t key) {
    add(s, key);
    s.erase(find(s, oldest), Stripe::hash(0, oldest));
    oldest++;
  };
  s.touch(e);
  CHECK(!e->used);  // hit right after its insert: a correlated access
  for (uint64_t k = 0; k < 98; k++) insert_one(10000 + k);
  CHECK(s.count() == 1601);
  s.touch(e);
  CHECK(!e->used);  // 99 inserts since its own: still young
  insert_one(20000);
  s.touch(e);
  CHECK(e->used);  // 100: a reuse
  Entry* old = find(s, 1599);
  s.touch(old);
  CHECK(old->used);
}

void correlated_rows_go_first() {
  // Oldest first: 1,600 rows all reused later, 256 rows touched right after
  // their insert (a pull then a push), 256 rows of which every other one is
  // hit again later, then 200 rows never hit. Evicting 384 rows' bytes
  // passes over the first 1,600 (a second chance) and takes the 256
  // touched-once rows and the 128 never hit again, keeping the 128 reused.
  Stripe s;
  s.budget = SIZE_MAX;
  for (uint64_t k = 100000; k < 101600; k++) add(s, k);
  for (uint64_t k = 0; k < 256; k++) s.touch(add(s, k));
  for (uint64_t k = 1000; k < 1256; k++) add(s, k);
  for (uint64_t k = 2000; k < 2200; k++) add(s, k);
  for (uint64_t k = 100000; k < 101600; k++) s.touch(find(s, k));
  for (uint64_t k = 1000; k < 1256; k += 2) s.touch(find(s, k));
  std::vector<Entry*> victims;
  s.pick_victims(384 * Stripe::entry_bytes(kFloats), &victims);
  CHECK(victims.size() == 384);
  for (Entry* v : victims) CHECK(v->key < 256 || (v->key >= 1000 && v->key < 1256 && v->key % 2 == 1));
  for (uint64_t k = 1000; k < 1256; k += 2) CHECK(!find(s, k)->used);  // second chance spent
}

void scan_ends_when_every_entry_is_flushing() {
  // A flush chunk (32 rows) can mark every entry of a stripe `flushing`;
  // the scan then finds no victim and must return (it went round the
  // marked entries forever, holding the stripe's lock the flusher needed
  // to clear them). With one entry unmarked, that one is the victim.
  Stripe s;
  s.budget = SIZE_MAX;
  std::vector<Entry*> all;
  for (uint64_t k = 0; k < 20; k++) all.push_back(add(s, k));
  for (Entry* e : all) e->flushing = 1;
  s.touch(all[3]);
  std::vector<Entry*> victims;
  CHECK(s.pick_victims(Stripe::entry_bytes(kFloats), &victims) == 0);
  CHECK(victims.empty());
  CHECK(s.count() == 20);
  all[7]->flushing = 0;
  CHECK(s.pick_victims(Stripe::entry_bytes(kFloats), &victims) == Stripe::entry_bytes(kFloats));
  CHECK(victims.size() == 1 && victims[0] == all[7]);
}

}  // namespace

int main() {
  young_hits_do_not_mark();
  correlated_rows_go_first();
  scan_ends_when_every_entry_is_flushing();
  return pmemps_test::check_result("cache_test");
}
