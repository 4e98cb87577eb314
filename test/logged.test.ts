// The logged row layout (layout.h, vlog.h) where users of an SSD run it, the
// msync path: a pool keeps the layout it was made with, a damaged log record
// is refused rather than read, compaction keeps the log's space bounded
// without changing a version, and a pool whose log cannot grow refuses
// pushes whole, keeping every acknowledged one. (Eviction, checkpoints under
// pushes and crashes on this layout: engine.test.ts and crash.test.ts.)
process.env.PMEM_IS_PMEM_FORCE ??= '0';

import { after, describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Engine, EngineError, packKeys, type TableSpec } from '../native/engine';
import { f32, poolDirs, prng, randomGrads } from './helpers';

const pool = poolDirs(after);

const SGD: TableSpec = { name: 'emb', dim: 16, optimizer: { type: 'sgd', lr: 1 }, initializer: { type: 'zeros' }, seed: 3 };
const keysOf = (from: number, n: number) => packKeys(Array.from({ length: n }, (_, i) => BigInt(from + i)));

describe('the logged layout', () => {
  it('is kept by the pool that was made with it; an unknown layout is refused', async () => {
    const dir = pool('keep');
    let e = Engine.open({ dir, poolMb: 32, cacheMb: 2, layout: 'logged' });
    assert.equal(e.openInfo.layout, 'logged');
    e.createTable(SGD);
    await e.push('emb', keysOf(0, 100), f32(new Array(1600).fill(0.25)));
    await e.close();
    e = Engine.open({ dir, poolMb: 32, cacheMb: 2, layout: 'inplace' });
    assert.equal(e.openInfo.layout, 'logged', 'an existing pool keeps its layout');
    assert.equal((await e.pull('emb', keysOf(0, 100))).readFloatLE(0), -0.25);
    assert.ok(e.stats().logBytes > 0);
    await e.close();
    assert.throws(
      () => Engine.open({ dir: pool('bad'), poolMb: 32, cacheMb: 2, layout: 'columnar' as never }),
      (err: EngineError) => err.code === 'INVALID_ARGUMENT' && /layout must be one of inplace, logged/.test(err.message),
    );
  });

  // Opens one pool three times, the variable on, off and on again: each
  // open reads what the one before wrote, pushes rounds that a 1 MiB cache
  // mostly evicts (written back through the log and the slots), and
  // checkpoints, matching a DRAM-only engine given the same pushes.
  async function writesEitherWay(name: string, variable: string, flag: 'logPwrite' | 'slotPwrite', seed: number): Promise<void> {
    const dir = pool(name);
    const ref = Engine.open({ memoryOnly: true });
    ref.createTable(SGD);
    const rng = prng(seed);
    const N = 20000;
    const keys = keysOf(0, N);
    try {
      for (const mode of ['1', '0', '1']) {
        process.env[variable] = mode;
        const e = Engine.open({ dir, poolMb: 64, cacheMb: 1, layout: 'logged' });
        try {
          assert.equal(e.openInfo[flag], mode === '1');
          e.createTable(SGD);
          assert.ok((await e.pull('emb', keys)).equals(await ref.pull('emb', keys)), `the rows as written before this open (${variable}=${mode})`);
          for (let r = 0; r < 3; r++) {
            const g = randomGrads(rng, N * 16);
            await e.push('emb', keys, g);
            await ref.push('emb', keys, g);
          }
          const id = (e.stats().committed ?? 0) + 1;
          await e.prepare(id);
          await e.commit(id);
          // More write-backs than rows: evictions during the pushes, then the checkpoint's.
          assert.ok(e.stats().writebacks > N, `${e.stats().writebacks} write-backs`);
          assert.ok((await e.pull('emb', keys)).equals(await ref.pull('emb', keys)));
        } finally {
          await e.close();
        }
      }
    } finally {
      delete process.env[variable];
      await ref.close();
    }
    const again = Engine.open({ dir, poolMb: 64, cacheMb: 1 });
    assert.deepEqual(again.fullCheck().problems, [], 'every slot names a record of its row and version');
    await again.close();
    const inplace = Engine.open({ dir: pool(`${name}-inplace`), poolMb: 32, cacheMb: 2 });
    assert.equal(inplace.openInfo[flag], false, 'an in-place pool has no log');
    await inplace.close();
  }

  it('writes its log with pwrite off PMEM, or through the mapping with PMEMPS_LOG_PWRITE=0: either reads what the other wrote', () =>
    writesEitherWay('pwrite', 'PMEMPS_LOG_PWRITE', 'logPwrite', 17));

  it('writes its slots with pwrite off PMEM, or with stores with PMEMPS_SLOT_PWRITE=0: either reads what the other wrote', () =>
    writesEitherWay('slot-pwrite', 'PMEMPS_SLOT_PWRITE', 'slotPwrite', 23));

  it("reports where the last prepare's time went (stats().lastPrepare)", async () => {
    const e = Engine.open({ dir: pool('phases'), poolMb: 64, cacheMb: 8, layout: 'logged' });
    try {
      e.createTable(SGD);
      assert.deepEqual(e.stats().lastPrepare, { flushUs: 0, slotsUs: 0, logSyncUs: 0, persistUs: 0, publishUs: 0, rows: 0 }, 'nothing before a prepare');
      const rng = prng(23);
      // 5000 rows of dim 16 fit the 8 MiB cache: the flush writes every one, and nothing else does.
      await e.push('emb', keysOf(0, 5000), randomGrads(rng, 5000 * 16));
      const t0 = performance.now();
      await e.prepare(1);
      const prepareUs = (performance.now() - t0) * 1000;
      const p = e.stats().lastPrepare;
      assert.equal(p.rows, 5000);
      assert.ok(p.flushUs > 0 && p.slotsUs > 0 && p.slotsUs <= p.flushUs, JSON.stringify(p));
      assert.ok(p.logSyncUs > 0, 'the log was synced');
      assert.ok(p.flushUs + p.logSyncUs + p.persistUs + p.publishUs <= prepareUs, `${JSON.stringify(p)} within the prepare's ${prepareUs} µs`);
      await e.commit(1);
      // A prepare with nothing dirty writes nothing.
      await e.prepare(2);
      assert.equal(e.stats().lastPrepare.rows, 0);
      assert.equal(e.stats().lastPrepare.slotsUs, 0);
      await e.commit(2);
    } finally {
      await e.close();
    }
  });

  it(
    "writes a checkpoint's rows in batches across stripes, each stripe within its share of marks; a rollback returns them all",
    { timeout: 60_000 },
    async () => {
      // A 1 MiB cache: 64 KiB a stripe, of which an eighth (about 68 rows of
      // dim 16) may be marked at once. 6,000 dirty rows, about 375 a stripe,
      // all cached: a batch takes a stripe's second chunk, and stops at its
      // third, well before the batch's megabyte.
      const e = Engine.open({ dir: pool('batches'), poolMb: 64, cacheMb: 1, layout: 'logged' });
      const ref = Engine.open({ memoryOnly: true });
      try {
        e.createTable(SGD);
        ref.createTable(SGD);
        const rng = prng(29);
        const keys = keysOf(0, 6000);
        const g = randomGrads(rng, 6000 * 16);
        await e.push('emb', keys, g);
        await ref.push('emb', keys, g);
        assert.equal(e.stats().evictions, 0, 'every row stays cached until the flush');
        await e.prepare(1);
        assert.equal(e.stats().lastPrepare.rows, 6000, 'the flush wrote every dirty row');
        await e.commit(1);
        const want = await ref.pull('emb', keys);
        // Pushes after the checkpoint, undone by the rollback: the rows come
        // back from the records the flush wrote.
        await e.push('emb', keys, randomGrads(rng, 6000 * 16));
        await e.rollback();
        assert.ok((await e.pull('emb', keys)).equals(want), 'the checkpoint holds every row as pushed before it');
        assert.deepEqual(e.fullCheck().problems, []);
      } finally {
        await e.close();
        await ref.close();
      }
    },
  );

  it('reads its new segments into the page cache ahead of their writes off PMEM with PMEMPS_LOG_WARM=1, and not by default', async () => {
    for (const warm of ['1', '']) {
      // Read when the pool is opened: set for that open only, so that a
      // failure here leaves the other tests' pools as they would be.
      if (warm) process.env.PMEMPS_LOG_WARM = warm;
      let e: Engine;
      try {
        e = Engine.open({ dir: pool(`warm${warm || 'default'}`), poolMb: 64, cacheMb: 1, layout: 'logged' });
      } finally {
        delete process.env.PMEMPS_LOG_WARM;
      }
      try {
        e.createTable(SGD);
        const before = e.stats().logBytes;
        // 20,000 rows through a 1 MiB cache: most are evicted, and the log
        // grows by segments.
        await e.push('emb', keysOf(0, 20_000), randomGrads(prng(31), 20_000 * 16));
        const grown = e.stats().logBytes - before;
        assert.ok(grown > 0, 'the log grew');
        if (!warm) {
          assert.equal(e.stats().logBytesWarmed, 0);
          continue;
        }
        // The warmer reads in the background: wait for it (a few ms a segment).
        const deadline = Date.now() + 20_000;
        while (e.stats().logBytesWarmed < grown && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        assert.ok(e.stats().logBytesWarmed >= grown, `${e.stats().logBytesWarmed} of the ${grown} bytes the log grew by were read ahead`);
      } finally {
        await e.close();
      }
    }
  });

  it('holds the largest row the engine takes (dim 4096, three optimizer state blocks) in one record', async () => {
    const dir = pool('largest');
    const spec: TableSpec = {
      name: 'wide',
      dim: 4096,
      optimizer: { type: 'rmsprop', lr: 0.01, momentum: 0.9, centered: true },
      initializer: { type: 'zeros' },
      seed: 5,
    };
    let e = Engine.open({ dir, poolMb: 64, cacheMb: 16, layout: 'logged' });
    const ref = Engine.open({ memoryOnly: true });
    e.createTable(spec);
    ref.createTable(spec);
    assert.equal(e.listTables()[0].rowFloats, 4 * 4096);
    const keys = keysOf(0, 8);
    const g = randomGrads(prng(3), 8 * 4096);
    await e.push('wide', keys, g);
    await ref.push('wide', keys, g);
    await e.close();
    e = Engine.open({ dir, poolMb: 64, cacheMb: 16 });
    assert.ok((await e.pull('wide', keys)).equals(await ref.pull('wide', keys)), 'the rows came back from their records');
    assert.deepEqual(e.fullCheck().problems, []);
    await e.close();
    await ref.close();
  });

  it('refuses a version whose log record is damaged, and the full check counts it', async () => {
    const dir = pool('damaged');
    let e = Engine.open({ dir, poolMb: 32, cacheMb: 2, layout: 'logged' });
    e.createTable(SGD);
    // One row with values no other row has: SGD at lr 1 from zeros stores -grad.
    await e.push('emb', keysOf(0, 50), f32(new Array(800).fill(0.5)));
    await e.push('emb', keysOf(100, 1), f32(Array.from({ length: 16 }, (_, i) => -1000.25 - i)));
    await e.close();
    const file = path.join(dir, 'pmemps.pool');
    const bytes = fs.readFileSync(file);
    const needle = f32(Array.from({ length: 16 }, (_, i) => 1000.25 + i));
    const at = bytes.indexOf(needle);
    assert.ok(at > 0 && bytes.indexOf(needle, at + 1) < 0, 'the row is stored once, in the log');
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.from([bytes[at + 20] ^ 0x40]), 0, 1, at + 20);
    fs.closeSync(fd);
    e = Engine.open({ dir, poolMb: 32, cacheMb: 2 });
    await assert.rejects(e.pull('emb', keysOf(100, 1)), (err: EngineError) => err.code === 'CORRUPT' && /failed its checksum/.test(err.message));
    assert.equal((await e.pull('emb', keysOf(8, 1))).readFloatLE(0), -0.5, 'other rows still read');
    const check = e.fullCheck();
    assert.equal(check.badRecords, 1);
    assert.match(check.problems.join('\n'), /key 100, its live version: .*checksum/);
    await e.close();
  });

  it('compacts its log in the background: space stays bounded, every version and the checkpoint exact', { timeout: 120_000 }, async () => {
    const dir = pool('compact');
    let e = Engine.open({ dir, poolMb: 96, cacheMb: 1, layout: 'logged' });
    const ref = Engine.open({ memoryOnly: true });
    const spec: TableSpec = { ...SGD, optimizer: { type: 'adagrad', lr: 0.05, initialAccumulator: 0.1 } };
    e.createTable(spec);
    ref.createTable(spec);
    const rand = prng(9);
    const N = 20000;
    const all = keysOf(0, N);
    const need = N * (32 + 4 * 32); // rows x one record (header + weights and accumulators)
    // The compactor's threshold (twice the rows' records and 4 segments of
    // 1.5 MiB, a 64th of the pool), the spare segments pushes reserve, and
    // one segment being compacted.
    const bound = 2 * need + 8 * 1.5 * 2 ** 20;
    let atCommit: Buffer = Buffer.alloc(0);
    // Uniform pushes over 20x the rows the cache holds: nearly every row
    // pushed is written back at once, ~60 times over in all.
    for (let step = 0; step < 300; step++) {
      const keys = packKeys(Array.from({ length: 4096 }, () => BigInt(Math.floor(rand() * N))));
      const g = randomGrads(rand, 4096 * 16);
      await e.push('emb', keys, g);
      await ref.push('emb', keys, g);
      if (step % 30 === 29) {
        await e.prepare(step);
        await e.commit(step);
        atCommit = await ref.pull('emb', all);
      }
    }
    const deadline = Date.now() + 30_000;
    while (e.stats().logBytes > bound && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const st = e.stats();
    // ~950k write-backs of 160 bytes went through a 96 MiB pool.
    assert.ok(st.writebacks * 160 > 96 * 2 ** 20 && st.logSegmentsFreed > 50, `${st.writebacks} write-backs, ${st.logSegmentsFreed} segments freed`);
    assert.ok(st.logBytes <= bound, `the log holds ${st.logBytes} bytes for ${need} bytes of rows`);
    assert.ok((await e.pull('emb', all)).equals(await ref.pull('emb', all)), 'the live state survived compaction');
    await e.close();
    e = Engine.open({ dir, poolMb: 96, cacheMb: 1 });
    assert.ok((await e.pull('emb', all)).equals(await ref.pull('emb', all)), 'and a clean close and reopen');
    assert.deepEqual(e.fullCheck().problems, []);
    await e.rollback();
    assert.ok((await e.pull('emb', all)).equals(atCommit), 'the committed checkpoint survived compaction');
    await e.close();
    await ref.close();
  });

  it('on a pool whose log cannot grow, refuses pushes whole and keeps every acknowledged one', { timeout: 120_000 }, async () => {
    const dir = pool('full');
    const spec: TableSpec = { ...SGD, dim: 64, optimizer: { type: 'adagrad', lr: 0.05, initialAccumulator: 0.1 } };
    const e = Engine.open({ dir, poolMb: 16, cacheMb: 1, layout: 'logged' });
    const ref = Engine.open({ memoryOnly: true });
    e.createTable(spec);
    ref.createTable(spec);
    const rand = prng(5);
    const N = 6000;
    let refused = 0;
    let acked = 0;
    let checkpoints = 0;
    // Uniform pushes over more rows than the cache holds: every one evicts
    // dirty rows, so the log grows until the pool has no room left for it.
    for (let step = 0; step < 400 && refused < 20; step++) {
      const keys = packKeys(Array.from({ length: 256 }, () => BigInt(Math.floor(rand() * N))));
      const g = randomGrads(rand, 256 * 64);
      try {
        await e.push('emb', keys, g);
        await ref.push('emb', keys, g);
        acked++;
      } catch (err) {
        assert.equal((err as EngineError).code, 'OUT_OF_SPACE', String(err));
        refused++;
      }
      if (step % 50 === 49) {
        try {
          await e.prepare(++checkpoints);
          await e.commit(checkpoints);
        } catch (err) {
          assert.equal((err as EngineError).code, 'OUT_OF_SPACE', String(err));
        }
      }
    }
    assert.ok(refused > 0 && acked > 50, `the pool filled up (${acked} pushes acknowledged, ${refused} refused)`);
    const all = keysOf(0, N);
    assert.ok((await e.pull('emb', all)).equals(await ref.pull('emb', all)), 'the live state is exactly the acknowledged pushes');
    // The dirty rows' log room was held since their pushes: the full pool
    // still closes cleanly (its close once failed OUT_OF_SPACE here, and
    // every push since the last checkpoint was lost).
    await e.close();
    const again = Engine.open({ dir, poolMb: 16, cacheMb: 1, layout: 'logged' });
    assert.equal(again.openInfo.cleanClose, true);
    assert.ok((await again.pull('emb', all)).equals(await ref.pull('emb', all)), 'every acknowledged push, after the clean close');
    await again.close();
    await ref.close();
  });

  it('filled with new rows until a push is refused, closes cleanly with every acknowledged row', { timeout: 120_000 }, async () => {
    // A review's attack (2026-12-02): a push reserved log room only for its
    // own write-backs, so the rows it left dirty (the whole cache budget)
    // held none; on a pool filled with new rows the clean close failed
    // OUT_OF_SPACE reserving room to write them back.
    const dir = pool('new-rows');
    const e = Engine.open({ dir, poolMb: 64, cacheMb: 16, layout: 'logged' });
    e.createTable(SGD);
    await e.prepare(1);
    await e.commit(1);
    let rows = 0;
    for (const b of [8192, 512, 32, 1])
      for (;;) {
        try {
          await e.push('emb', keysOf(rows, b), f32(new Array(b * 16).fill(1)));
          rows += b;
        } catch (err) {
          assert.equal((err as EngineError).code, 'OUT_OF_SPACE', String(err));
          break;
        }
      }
    assert.ok(rows > 50_000, `${rows} rows acknowledged`);
    assert.ok(e.stats().cacheBytes > 8 * 2 ** 20, 'the cache holds many dirty rows');
    await e.close();
    const again = Engine.open({ dir, poolMb: 64, cacheMb: 16, layout: 'logged' });
    assert.equal(again.openInfo.cleanClose, true);
    const got = await again.pull('emb', keysOf(0, rows));
    for (let i = 0; i < rows * 16; i++) if (got.readFloatLE(i * 4) !== -1) assert.fail(`row ${Math.floor(i / 16)} lost its acknowledged push`);
    await again.close();
  });

  // The log's list of segments is packed (compaction's holes taken out) in
  // the transaction that adds a segment; on a full pool that allocation
  // failed and the list was rolled back, but the log's own numbering stayed
  // packed: appends went into a hole, that is over the pool's first bytes
  // (the pool unopenable after), or into a live segment. Found by review
  // (2026-12-01): new keys until the pool is full, updates, checkpoints,
  // compaction at every wake.
  it('fills up with compaction running, and its appends stay inside its own segments', { timeout: 180_000 }, async () => {
    const dir = pool('packed');
    const eager = process.env.PMEMPS_LOG_COMPACT;
    process.env.PMEMPS_LOG_COMPACT = 'eager';
    const spec: TableSpec = { ...SGD, name: 'b', optimizer: { type: 'adam', lr: 0.01 } };
    const e = Engine.open({ dir, poolMb: 32, cacheMb: 1, layout: 'logged' });
    const ref = Engine.open({ memoryOnly: true });
    if (eager === undefined) delete process.env.PMEMPS_LOG_COMPACT;
    else process.env.PMEMPS_LOG_COMPACT = eager;
    e.createTable(spec);
    ref.createTable(spec);
    const rand = prng(11);
    const file = path.join(dir, 'pmemps.pool');
    const head = Buffer.alloc(7);
    let next = 0;
    let full = 0;
    let id = 0;
    for (let it = 0; it < 400; it++) {
      // Even steps: new keys while the pool takes them; odd: rows it has.
      const fresh = it % 2 === 0 && full === 0;
      const keys = fresh ? keysOf(next, 2000) : packKeys(Array.from({ length: 2000 }, () => BigInt(Math.floor(rand() * Math.max(next, 1)))));
      const g = randomGrads(rand, 2000 * 16);
      try {
        await e.push('b', keys, g);
        await ref.push('b', keys, g);
        if (fresh) next += 2000;
      } catch (err) {
        assert.equal((err as EngineError).code, 'OUT_OF_SPACE', String(err));
        if (fresh) full++;
      }
      if (it % 5 === 4) {
        try {
          await e.prepare(++id);
          await e.commit(id);
        } catch (err) {
          assert.ok(['OUT_OF_SPACE', 'FAILED_PRECONDITION'].includes((err as EngineError).code), String(err));
        }
      }
      const fd = fs.openSync(file, 'r');
      fs.readSync(fd, head, 0, 7, 0);
      fs.closeSync(fd);
      assert.equal(head.toString('latin1'), 'PMEMOBJ', `the pool's header after step ${it}`);
    }
    assert.ok(full > 0, 'the pool filled up');
    const all = keysOf(0, next);
    assert.ok((await e.pull('b', all)).equals(await ref.pull('b', all)), 'the live state is exactly the acknowledged pushes');
    assert.deepEqual(e.fullCheck().problems, []);
    // The dirty rows' log room was held since their pushes: the full pool
    // still closes cleanly (its close once failed OUT_OF_SPACE here, and
    // every push since the last checkpoint was lost).
    await e.close();
    const again = Engine.open({ dir, poolMb: 32, cacheMb: 1, layout: 'logged' });
    assert.equal(again.openInfo.cleanClose, true);
    assert.ok((await again.pull('b', all)).equals(await ref.pull('b', all)), 'every acknowledged push, after the clean close');
    await again.close();
    await ref.close();
  });
});
