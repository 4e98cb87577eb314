// A child of flush-race.test.ts (PMEMPS_TEST_HOOKS is read once per
// process). argv: layout, scenario[, pool directory].
//
//   evict: a prepare whose flush starts late, so that a push copies rows
//     still pending aside (shadows), and whose first shadow write-back is
//     held with its slot chosen while pushes of other keys evict the whole
//     cache around it.
//   stale: a prepare that fails after a push made shadows (flush.fail), so
//     they stay pending; the rows are pushed again and the next prepare's
//     idle flusher, were it to write such a shadow, is held with its slot
//     chosen long enough for the prepare's caller to step in and write the
//     row's newer pending version at the same time.
//   wait: the flusher holds a stripe's lock (flush.stripe_locked) while a
//     push that needs it comes: stats().maxPushWaitUs says how long it
//     waited.
//   dropped: a prepare that fails after a push made shadows, then the
//     table is dropped (no checkpoint holds it: its storage is freed at
//     once) and another created in its place; the next prepare must not
//     write the dropped table's copies anywhere.
//   overflow: no checkpoint; three pushes, each of one shared row and one
//     row of its own, that fit one by one but not all three; the first is
//     held between its check and its store (push.computed) while the others
//     are stored: each is applied whole, the first saturating the shared row.
//
// Prints @@RESULT with the rows that differ from a DRAM-only reference, live
// and at the checkpoint, after a clean close and reopen.
process.env.PMEM_IS_PMEM_FORCE ??= '1';

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Engine, packKeys, type TableSpec } from '../native/engine';
import { prng, randomGrads } from './helpers';

async function main(): Promise<void> {
  const layout = process.argv[2] as 'inplace' | 'logged';
  const scenario = process.argv[3] as 'evict' | 'stale' | 'dropped' | 'wait' | 'overflow' | 'manystale';
  // The parent's directory (removed by the parent, should this process die),
  // or one of its own when run by hand.
  const dir = process.argv[4] ?? fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-flush-race-'));
  try {
    if (scenario === 'manystale') {
      // A table near the cache's size, every row pending; while the flush is
      // held, pushes of row ranges copy pending rows aside; the prepare
      // fails and leaves those copies at the back of the pending lists; more
      // pushes, then the next prepare: each copy is stale behind its row,
      // pending again. Whole flush chunks of stale copies once read as empty
      // stripes, and the flush stopped with rows still pending.
      const e = Engine.open({ dir, poolMb: 256, cacheMb: 8, layout });
      const ref = Engine.open({ memoryOnly: true });
      const spec: TableSpec = { name: 'm', dim: 16, optimizer: { type: 'sgd', lr: 1 }, initializer: { type: 'zeros' }, seed: 1 };
      e.createTable(spec);
      ref.createTable(spec);
      const N = 60000;
      const rand = prng(7);
      const both = async (from: number, n: number): Promise<void> => {
        const k = packKeys(Array.from({ length: n }, (_, i) => BigInt(from + i)));
        const g = randomGrads(rand, n * 16);
        await e.push('m', k, g);
        await ref.push('m', k, g);
      };
      const churn = async (batches: number): Promise<void> => {
        for (let b = 0; b < batches; b++) await both(Math.floor(rand() * (N - 200)), 200);
      };
      for (let r = 0; r < N; r += 2000) await both(r, 2000);
      const first = e.prepare(1).then(
        () => 'prepared',
        (err: Error) => err.message,
      );
      await churn(120); // during the held flush: copies of the rows pushed
      const failed = await first;
      await e.abort(1).catch(() => undefined);
      await churn(50);
      const all = packKeys(Array.from({ length: N }, (_, i) => BigInt(i)));
      const atPrepare = await ref.pull('m', all);
      await e.prepare(2);
      await e.commit(2);
      await churn(10);
      // Back to checkpoint 2 from the pool (a clean close would write the
      // rows the flush left pending, hiding them; a kill -9 or a rollback
      // shows them).
      await e.rollback();
      const got = await e.pull('m', all);
      let atCheckpoint = 0;
      for (let r = 0; r < N; r++) atCheckpoint += got.compare(atPrepare, r * 64, (r + 1) * 64, r * 64, (r + 1) * 64) === 0 ? 0 : 1;
      await e.close();
      await ref.close();
      process.stdout.write(`@@RESULT ${JSON.stringify({ live: 0, liveAfterReopen: 0, atCheckpoint, evictions: 0, refusals: [failed] })}\n`);
      return;
    }
    if (scenario === 'overflow') {
      const e = Engine.open({ dir, poolMb: 64, cacheMb: 1, layout });
      e.createTable({ name: 'o', dim: 1, optimizer: { type: 'sgd', lr: 1 }, initializer: { type: 'zeros' }, seed: 1 });
      const calls = await Promise.allSettled(
        [0, 1, 2].map((j) => e.push('o', packKeys([7n, BigInt(100 + j)]), Buffer.from(Float32Array.from([-1.5e38, -1]).buffer))),
      );
      const pulled = await e.pull('o', packKeys([7n, 100n, 101n, 102n]));
      const values = [...new Float32Array(pulled.buffer, pulled.byteOffset, 4)];
      const refusals = calls.flatMap((c) => (c.status === 'rejected' ? [String((c.reason as Error).message)] : []));
      const rowsSaturated = e.stats().rowsSaturated;
      await e.close();
      process.stdout.write(`@@RESULT ${JSON.stringify({ live: 0, liveAfterReopen: 0, atCheckpoint: 0, evictions: 0, values, refusals, rowsSaturated })}\n`);
      return;
    }
    const e = Engine.open({ dir, poolMb: 64, cacheMb: 1, layout });
    const ref = Engine.open({ memoryOnly: true });
    const spec: TableSpec = {
      name: 'emb',
      dim: 8,
      optimizer: { type: 'adagrad', lr: 0.1, initialAccumulator: 0.1 },
      initializer: { type: 'uniform', min: -0.5, max: 0.5 },
      seed: 5,
    };
    e.createTable(spec);
    ref.createTable(spec);
    const rand = prng(3);
    const A = 1000;
    const hot = packKeys(Array.from({ length: A }, (_, i) => BigInt(i)));
    const both = async (k: Buffer, g: Buffer): Promise<void> => {
      await e.push('emb', k, g);
      await ref.push('emb', k, g);
    };
    const differing = (a: Buffer, b: Buffer): number => {
      let n = 0;
      for (let r = 0; r < A; r++) n += a.compare(b, r * 32, (r + 1) * 32, r * 32, (r + 1) * 32) === 0 ? 0 : 1;
      return n;
    };
    if (scenario === 'dropped') {
      // The cache's budget filled first, so that the copies the push below
      // makes go to the pool's free space (copy_arena.h), not to DRAM.
      for (let b = 0; b < 4; b++) {
        const k = packKeys(Array.from({ length: 2048 }, (_, i) => BigInt(100_000 + b * 2048 + i)));
        await both(k, randomGrads(rand, 2048 * 8));
      }
    }
    for (let i = 0; i < 2; i++) await both(hot, randomGrads(rand, A * 8));
    let atPrepare = await ref.pull('emb', hot);
    // The flush starts 300 ms late (flush.start): this push finds every hot
    // row pending and, with room in the cache, copies each aside.
    const prep = e.prepare(1);
    await both(hot, randomGrads(rand, A * 8));
    let id = 1;
    if (scenario === 'wait') {
      // The flush starts 300 ms late and then holds a stripe's lock for
      // 1.5 s; this push comes in between and needs every stripe.
      await new Promise((r) => setTimeout(r, 500));
      const t0 = performance.now();
      await both(hot, randomGrads(rand, A * 8));
      const pushMs = performance.now() - t0;
      await prep;
      const maxPushWaitUs = e.stats().maxPushWaitUs;
      await e.commit(1);
      await e.close();
      await ref.close();
      process.stdout.write(`@@RESULT ${JSON.stringify({ live: 0, liveAfterReopen: 0, atCheckpoint: 0, evictions: 0, maxPushWaitUs, pushMs })}\n`);
      return;
    }
    if (scenario === 'evict') {
      // Meanwhile the flusher reaches the first shadow and is held 1.5 s
      // with its slot chosen (writeback.shadow_slot_chosen); these pushes of
      // 40k other keys cycle a 1 MiB cache (~7k rows) several times over.
      await new Promise((r) => setTimeout(r, 500));
      for (let b = 0; b < 20; b++) {
        const k = packKeys(Array.from({ length: 2048 }, (_, i) => BigInt(A + b * 2048 + i)));
        await both(k, randomGrads(rand, 2048 * 8));
      }
      await prep;
    } else if (scenario === 'dropped') {
      await assert(
        prep.then(() => false).catch((err: Error) => /test failure injected/.test(err.message)),
        'the first prepare failed',
      );
      const copiesInPool = e.stats().copiesInPool;
      await e.dropTable('emb');
      // Its storage is freed and its slot empty: nothing may write there.
      await e.prepare(2);
      await e.commit(2);
      // A table in its place, with rows at other keys: the copies' keys have
      // no entry there.
      const other: TableSpec = { ...spec, name: 'other', seed: 9 };
      e.createTable(other);
      const ref2 = Engine.open({ memoryOnly: true });
      ref2.createTable(other);
      const cold = packKeys(Array.from({ length: A }, (_, i) => BigInt(A + i)));
      for (let i = 0; i < 2; i++) {
        const g = randomGrads(rand, A * 8);
        await e.push('other', cold, g);
        await ref2.push('other', cold, g);
      }
      await e.prepare(3);
      await e.commit(3);
      // The dropped table's keys are new rows here, fresh from the initializer.
      const both2 = async (x: Engine): Promise<number> =>
        differing(await x.pull('other', cold), await ref2.pull('other', cold)) + differing(await x.pull('other', hot), await ref2.pull('other', hot));
      const live = await both2(e);
      await e.close();
      const again = Engine.open({ dir, poolMb: 64, cacheMb: 1 });
      const liveAfterReopen = await both2(again);
      const tables = again.listTables().map((t) => t.name);
      await again.close();
      await ref2.close();
      await ref.close();
      process.stdout.write(`@@RESULT ${JSON.stringify({ live, liveAfterReopen, atCheckpoint: 0, evictions: 0, tables, copiesInPool })}\n`);
      return;
    } else {
      await assert(
        prep.then(() => false).catch((err: Error) => /test failure injected/.test(err.message)),
        'the first prepare failed',
      );
      await both(hot, randomGrads(rand, A * 8));
      atPrepare = await ref.pull('emb', hot);
      id = 2;
      await e.prepare(id);
    }
    const evictions = e.stats().evictions;
    await e.commit(id);
    const live = differing(await e.pull('emb', hot), await ref.pull('emb', hot));
    await e.close();
    // Every row from the pool now.
    const again = Engine.open({ dir, poolMb: 64, cacheMb: 1 });
    const liveAfterReopen = differing(await again.pull('emb', hot), await ref.pull('emb', hot));
    await again.rollback();
    const atCheckpoint = differing(await again.pull('emb', hot), atPrepare);
    await again.close();
    await ref.close();
    process.stdout.write(`@@RESULT ${JSON.stringify({ live, liveAfterReopen, atCheckpoint, evictions })}\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function assert(p: Promise<boolean>, what: string): Promise<void> {
  if (!(await p)) throw new Error(`expected: ${what}`);
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
