// How long a push waits on a checkpoint, A/B: the engine benchmark's phase 3
// latency windows (bench/engine.ts) on a smaller table, so that builds can be
// compared in turns on a shared machine. Each round starts one child per
// build, one after another (the order flips every round), each with its own
// pool on /dev/shm (PMEM_IS_PMEM_FORCE=1):
//
//   populate the table (every row pushed once), checkpoint; dirty 10% of the
//   rows, checkpoint; dirty 10% again, then one push in flight cycling over
//   64 batches of 4,096 uniform keys (one pass first, so they are cached and
//   dirty): a window without a checkpoint, then one with a prepare of those
//   dirty rows running; then dirty 10% again, and the same two windows with
//   one pull of those batches in flight instead.
//
// Reports per build the medians over rounds of stats().maxPushWaitUs, the
// push p99 during the prepare and without one, their ratio, and the prepare's
// duration; then the pulls' p99 and longest. A script, not a test:
//
//   node dist/bench/checkpoint-wait.js [--build label=DIR ...] [--rows N] [--cache-mb N] [--rounds N]
//
// A build is a directory holding this repository's dist/ and build/; default:
// this checkout only.

import * as fs from 'node:fs';
import { BATCH, DIM, drive, median, percentile, Rng, Scatter, scatterBatch, TABLE, uniformBatch } from './lib';
import { type AbChildCfg, abRounds, medianRange, populatedEngine, sendResult } from './ab';

interface Result {
  maxPushWaitUs: number;
  p99With: number;
  p99Without: number;
  pushesDuring: number;
  prepareMs: number;
  /** The same windows for pulls of the pusher's batches (cached rows), over another prepare of 10% dirty rows. */
  pullP99With: number;
  pullP99Without: number;
  pullMaxWith: number;
  pullMaxWithout: number;
}

async function child(cfg: AbChildCfg): Promise<void> {
  const { e, gradFor, checkpoint } = await populatedEngine(cfg);
  const T = TABLE.name;
  const dirty = async (seed: number): Promise<void> => {
    const m = Math.round(cfg.rows * 0.1);
    const sc = new Scatter(cfg.rows, new Rng(seed).int(cfg.rows));
    await drive(
      8,
      (i) => {
        const n = Math.min(BATCH, m - i * BATCH);
        return e.push(T, scatterBatch(sc, i * BATCH, n), gradFor(i, n));
      },
      (n) => n * BATCH >= m,
    );
  };
  await dirty(3002);
  await checkpoint();
  const rng = new Rng(4001);
  const keys = Array.from({ length: 64 }, () => uniformBatch(rng, cfg.rows));
  await dirty(3003);
  await drive(
    1,
    (i) => e.push(T, keys[i], gradFor(i, BATCH)),
    (n) => n >= keys.length,
  );
  const window = async (withCheckpoint: boolean, op: 'push' | 'pull' = 'push'): Promise<{ lat: number[]; prepareMs: number }> => {
    const lat: Array<[number, number]> = [];
    let stop = Infinity;
    const pusher = drive(
      1,
      (i) => (op === 'push' ? e.push(T, keys[i % keys.length], gradFor(i, BATCH)) : e.pull(T, keys[i % keys.length])),
      (_n, el) => el >= stop,
      (s, t) => lat.push([s, t]),
    );
    let from = -Infinity;
    let to = Infinity;
    let prepareMs = NaN;
    if (withCheckpoint) {
      await new Promise((r) => setTimeout(r, 200));
      from = performance.now();
      prepareMs = await checkpoint();
      to = from + prepareMs;
      await new Promise((r) => setTimeout(r, 200));
    } else {
      await new Promise((r) => setTimeout(r, 1500));
    }
    stop = 0;
    await pusher;
    return { lat: lat.filter(([s, t]) => t >= from && s <= to).map(([s, t]) => t - s), prepareMs };
  };
  const without = await window(false);
  const waitBefore = e.stats().maxPushWaitUs;
  const during = await window(true);
  const maxPushWaitUs = e.stats().maxPushWaitUs;
  // Pulls of the same (cached) batches, over a prepare of another 10%: a
  // pull takes each stripe's lock as a push does, behind the flusher.
  await dirty(3004);
  const pullsWithout = await window(false, 'pull');
  const pullsDuring = await window(true, 'pull');
  const r: Result = {
    maxPushWaitUs,
    p99With: percentile(during.lat, 99),
    p99Without: percentile(without.lat, 99),
    pushesDuring: during.lat.length,
    prepareMs: during.prepareMs,
    pullP99With: percentile(pullsDuring.lat, 99),
    pullP99Without: percentile(pullsWithout.lat, 99),
    pullMaxWith: Math.max(...pullsDuring.lat),
    pullMaxWithout: Math.max(...pullsWithout.lat),
  };
  if (waitBefore !== 0) throw new Error(`maxPushWaitUs was ${waitBefore} before the measured prepare`);
  await e.close();
  fs.rmSync(cfg.dir, { recursive: true, force: true });
  sendResult(r);
}

async function main(): Promise<void> {
  const ab = await abRounds<Result>({ script: __filename, rows: 3000000, rounds: 5, child });
  if (!ab) return;
  const { builds, results, rows, cacheMb, rounds } = ab;
  console.log(
    `${rows} rows, dim ${DIM}, Adagrad, ${cacheMb} MiB cache, /dev/shm with PMEM_IS_PMEM_FORCE=1; one push of ${BATCH} keys in flight; medians (ranges) of ${rounds} rounds, builds in turns\n`,
  );
  console.log('| build | maxPushWaitUs | push p99 during the prepare | push p99 without | ratio | pushes during | prepare |');
  console.log('|---|---|---|---|---|---|---|');
  const cell = medianRange;
  for (const b of builds) {
    const rs = results.get(b.label)!;
    const ms = (x: number): string => `${x.toFixed(2)} ms`;
    console.log(
      `| ${b.label} | ${cell(
        rs.map((r) => r.maxPushWaitUs),
        (x) => `${x.toFixed(0)} µs`,
      )} | ${cell(
        rs.map((r) => r.p99With),
        ms,
      )} | ${cell(
        rs.map((r) => r.p99Without),
        ms,
      )} | ${cell(
        rs.map((r) => r.p99With / r.p99Without),
        (x) => `${x.toFixed(2)}x`,
      )} | ${median(rs.map((r) => r.pushesDuring))} | ${cell(
        rs.map((r) => r.prepareMs),
        (x) => `${x.toFixed(0)} ms`,
      )} |`,
    );
  }
  console.log('\nPulls of the same batches (1 in flight), over another prepare of 10% dirty rows:\n');
  console.log('| build | pull p99 during the prepare | without | ratio | pull max during the prepare | without |');
  console.log('|---|---|---|---|---|---|');
  for (const b of builds) {
    const rs = results.get(b.label)!;
    const ms = (x: number): string => `${x.toFixed(2)} ms`;
    const c = (f: (r: Result) => number, fmt: (x: number) => string = ms): string => cell(rs.map(f), fmt);
    console.log(
      `| ${b.label} | ${c((r) => r.pullP99With)} | ${c((r) => r.pullP99Without)} | ${c(
        (r) => r.pullP99With / r.pullP99Without,
        (x) => `${x.toFixed(2)}x`,
      )} | ${c((r) => r.pullMaxWith)} | ${c((r) => r.pullMaxWithout)} |`,
    );
  }
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
