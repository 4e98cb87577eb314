// The exactly-once record alone (server/exactly-once.ts): its one promise is
// never to judge an applied (worker, seq) new, whatever it had to forget to
// stay bounded. A seeded model run checks that against the full history.
import { describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { ExactlyOnce, MAX_WORKERS, WINDOW } from '../server/exactly-once';
import { prng } from './helpers';

describe('exactly-once record', () => {
  test('never judges an applied push new, with records forgotten to stay bounded (seeded model run)', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const r = prng(seed);
      let eo = new ExactlyOnce(8); // a tiny bound, so forgetting happens all the time
      const applied = new Set<string>();
      const next = new Map<string, number>(); // per worker: its next fresh seq
      let judgedNew = 0;
      let refused = 0;
      for (let i = 0; i < 20_000; i++) {
        const w = `w${Math.floor(r() * 24)}`;
        const base = next.get(w) ?? 1_000 + Math.floor(r() * 50);
        // A fresh seq, an out-of-order one, or a retry of an old one (sometimes far back).
        const pick = r();
        const seq = pick < 0.6 ? base : Math.max(1, base - 1 - Math.floor(r() * (pick < 0.9 ? 64 : 3 * WINDOW)));
        if (pick < 0.6) next.set(w, base + 1 + Math.floor(r() * 3));
        const st = eo.state(w, seq);
        const key = `${w}/${seq}`;
        if (st === 'new') {
          assert.ok(!applied.has(key), `seed ${seed}: ${key} was applied and is judged new`);
          judgedNew++;
          eo.record(w, seq);
          applied.add(key);
        } else if (st === 'applied') {
          assert.ok(applied.has(key), `seed ${seed}: ${key} judged applied but never was`);
        } else {
          refused++;
          assert.ok(eo.nextSeq(w) > seq, 'the next seq it names is above the refused one');
        }
        assert.ok(eo.size <= 8);
        if (i % 5000 === 4999) {
          // Through its encoding too (a checkpoint, a clean close).
          const back = ExactlyOnce.decode(eo.encode(), 8);
          for (const k of applied) {
            const [ww, s] = k.split('/');
            assert.notEqual(back.state(ww, Number(s)), 'new', `seed ${seed}: decoded record judges ${k} new`);
          }
          eo = back;
        }
      }
      assert.ok(judgedNew > 1000 && refused > 100, `seed ${seed}: the run exercised both (${judgedNew} new, ${refused} refused)`);
    }
  });

  test('a worker seen again after being forgotten starts above the watermark; its old seqs are refused', () => {
    const eo = new ExactlyOnce(2);
    eo.record('a', 100);
    eo.record('b', 200);
    eo.record('c', 300); // forgets a: watermark 100
    assert.equal(eo.state('a', 100), 'too-old');
    assert.equal(eo.nextSeq('a'), 101);
    eo.record('a', 150); // a new record for a, born under watermark 100... forgets b: watermark 200
    assert.equal(eo.state('a', 120), 'new', 'between its birth watermark and its high: its bits are complete');
    assert.equal(eo.state('a', 100), 'too-old', 'at or below its birth watermark: unknown');
    assert.equal(eo.state('b', 201), 'new');
    assert.equal(eo.state('b', 200), 'too-old');
    assert.equal(eo.lowWatermark, 200);
  });

  test('decodes the first format (no watermark) and bounds its encoding', () => {
    const old = Buffer.alloc(4 + 2 + 1 + 8 + WINDOW / 8);
    let off = old.writeUInt32LE(1, 0);
    off = old.writeUInt16LE(1, off);
    off += old.write('a', off);
    old.writeDoubleLE(42, off);
    old[off + 8] = 1; // seq 42 applied
    const eo = ExactlyOnce.decode(old);
    assert.equal(eo.state('a', 42), 'applied');
    assert.equal(eo.state('a', 41), 'new');
    const full = new ExactlyOnce();
    for (let i = 0; i < MAX_WORKERS + 10; i++) full.record('x'.repeat(128 - String(i).length) + i, 1 + i);
    assert.equal(full.size, MAX_WORKERS);
    assert.equal(full.encode().length, full.encodedBound(), 'the bound the close record reserves is exact');
  });
});

describe('a shard keeps the record of a worker with a push in flight (found by a review, 2026-12-02)', () => {
  test('workers arriving while a known worker pushes forget others, so its entry never comes back larger than the room held for it', async () => {
    const { Shard } = await import('../server/shard');
    const { poolDirs } = await import('./helpers');
    const { after } = await import('node:test');
    const dir = poolDirs(after)('eo-pin');
    const shard = new Shard({ dir, cacheMb: 4, poolMb: 64 });
    const s = shard as unknown as { dedup: ExactlyOnce; closeRoom: number; admittedBytes: number };
    s.dedup = new ExactlyOnce(4);
    try {
      shard.createTable({ name: 't', dim: 4, optimizer: { type: 'sgd', lr: 1 }, initializer: { type: 'zeros' }, seed: 1 });
      shard.setDense('d', Float32Array.of(0), { type: 'sgd', lr: 1 });
      const inc = 0;
      const keys = Buffer.alloc(8);
      const grads = Buffer.from(Float32Array.of(1, 1, 1, 1).buffer);
      const dgrad = Buffer.from(Float32Array.of(1).buffer);
      let seq = Date.now() * 1000;
      const long = 'L'.repeat(128);
      await shard.push('t', keys, grads, long, ++seq, inc); // known, and the least recently seen
      for (const w of ['a', 'b', 'c']) await shard.pushDense('d', dgrad, w, ++seq, inc);
      // The long worker's push runs in the engine (a pool thread) while four
      // new workers' dense pushes settle on the event loop.
      const slow = shard.push('t', keys, grads, long, ++seq, inc);
      for (const w of ['e', 'f', 'g', 'h']) await shard.pushDense('d', dgrad, w, ++seq, inc);
      assert.ok(s.dedup.knows(long), 'the worker with a push in flight was not forgotten');
      await slow;
      assert.equal(s.dedup.size, 4, 'the others were forgotten instead');
      assert.ok(s.dedup.encodedBound() + s.admittedBytes <= s.closeRoom, 'the record fits in the room the pool holds for it');
    } finally {
      await shard.close();
    }
  });
});
