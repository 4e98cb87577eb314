// The cache's hit ratio, A/B: the engine benchmark's phase 2 (bench/engine.ts)
// on its own, so that eviction policies can be compared in turns on a shared
// machine. Each round starts one child per build, one after another (the
// order flips every round), each with its own pool on /dev/shm
// (PMEM_IS_PMEM_FORCE=1):
//
//   populate the table (every row pushed once, 8 in flight), checkpoint;
//   uniform keys: warm-up pulls (1.5 cache sizes), measured pulls, pushes of
//   other batches, checkpoint; then Zipf(0.99) keys the same way. Last, the
//   trainer's pattern on Zipf keys: each batch pulled, then the same keys
//   pushed (one step in flight).
//
// Reports per build the medians over rounds of the pull hit ratio and rows/s
// of each case. A script, not a test:
//
//   node dist/bench/cache-hits.js [--build label=DIR ...] [--rows N] [--cache-mb N] [--rounds N]
//
// A build is a directory holding this repository's dist/ and build/; default:
// this checkout only.

import * as fs from 'node:fs';
import { BATCH, cacheBytesPerRow, DIM, drive, Rng, Scatter, TABLE, uniformBatch, zipfBatch, ZipfSampler } from './lib';
import { type AbChildCfg, abRounds, medianRange, populatedEngine, sendResult } from './ab';

interface Case {
  hitRatio: number;
  pullRowsPerSec: number;
}

type Result = Record<'uniform' | 'zipf' | 'zipfTrain', Case>;

const MEASURE = 244;
const ZIPF_S = 0.99;

async function child(cfg: AbChildCfg): Promise<void> {
  const { e, gradFor, checkpoint } = await populatedEngine(cfg);
  const T = TABLE.name;
  const warmBatches = Math.ceil((1.5 * Math.floor((cfg.cacheMb * 1024 * 1024) / cacheBytesPerRow())) / BATCH);
  const hitsOf = async (run: () => Promise<{ calls: number; secs: number }>): Promise<Case> => {
    const s0 = e.stats();
    const r = await run();
    const s1 = e.stats();
    return { hitRatio: (s1.hits - s0.hits) / (s1.hits + s1.misses - s0.hits - s0.misses), pullRowsPerSec: (r.calls * BATCH) / r.secs };
  };
  const out: Partial<Result> = {};
  for (const dist of ['uniform', 'zipf'] as const) {
    // The same seeds and key streams as bench/engine-worker.ts's phase 2.
    const rng = new Rng(dist === 'uniform' ? 2001 : 2002);
    const zipf = new ZipfSampler(cfg.rows, ZIPF_S, rng);
    const scatter = new Scatter(cfg.rows, rng.int(cfg.rows));
    const make = (): Buffer => (dist === 'uniform' ? uniformBatch(rng, cfg.rows) : zipfBatch(zipf, scatter));
    const warm = Array.from({ length: warmBatches }, make);
    const pulls = Array.from({ length: MEASURE }, make);
    const pushes = Array.from({ length: MEASURE }, make);
    await drive(
      8,
      (i) => e.pull(T, warm[i]),
      (n) => n >= warm.length,
    );
    out[dist] = await hitsOf(() =>
      drive(
        8,
        (i) => e.pull(T, pulls[i]),
        (n) => n >= pulls.length,
      ),
    );
    await drive(
      8,
      (i) => e.push(T, pushes[i], gradFor(i, BATCH)),
      (n) => n >= pushes.length,
    );
    await checkpoint();
  }
  // A trainer's steps: pull a batch, push the same keys; hit ratio of the pulls.
  const rng = new Rng(2003);
  const zipf = new ZipfSampler(cfg.rows, ZIPF_S, rng);
  const scatter = new Scatter(cfg.rows, rng.int(cfg.rows));
  const steps = Array.from({ length: warmBatches + MEASURE }, () => zipfBatch(zipf, scatter));
  const step = async (i: number): Promise<void> => {
    await e.pull(T, steps[i]);
    await e.push(T, steps[i], gradFor(i, steps[i].length / 8));
  };
  await drive(1, step, (n) => n >= warmBatches);
  let pullHits = 0;
  let pullMisses = 0;
  let pullMs = 0;
  for (let i = warmBatches; i < steps.length; i++) {
    const a = e.stats();
    const p0 = performance.now();
    await e.pull(T, steps[i]);
    pullMs += performance.now() - p0;
    const b = e.stats();
    pullHits += b.hits - a.hits;
    pullMisses += b.misses - a.misses;
    await e.push(T, steps[i], gradFor(i, steps[i].length / 8));
  }
  out.zipfTrain = { hitRatio: pullHits / (pullHits + pullMisses), pullRowsPerSec: (MEASURE * BATCH) / (pullMs / 1000) };
  await e.close();
  fs.rmSync(cfg.dir, { recursive: true, force: true });
  sendResult(out);
}

async function main(): Promise<void> {
  const ab = await abRounds<Result>({ script: __filename, rows: 10000000, rounds: 3, child });
  if (!ab) return;
  const { builds, results, rows, cacheMb, rounds } = ab;
  console.log(
    `${rows} rows, dim ${DIM}, Adagrad, ${cacheMb} MiB cache, /dev/shm with PMEM_IS_PMEM_FORCE=1; pulls of ${BATCH} keys, 8 in flight ` +
      `(the trainer's steps: 1); hit ratio of the pulls over ${MEASURE} batches after the warm-up; medians (ranges) of ${rounds} rounds, builds in turns\n`,
  );
  console.log('| build | uniform: hits; pull rows/s | Zipf(0.99): hits; pull rows/s | Zipf(0.99), pull then push of each batch: hits; pull rows/s |');
  console.log('|---|---|---|---|');
  const cell = medianRange;
  const pct = (x: number): string => `${(100 * x).toFixed(2)}%`;
  const rate = (x: number): string => `${(x / 1e6).toFixed(2)}M`;
  for (const b of builds) {
    const rs = results.get(b.label)!;
    const cells = (['uniform', 'zipf', 'zipfTrain'] as const).map(
      (k) =>
        `${cell(
          rs.map((r) => r[k].hitRatio),
          pct,
        )}; ${cell(
          rs.map((r) => r[k].pullRowsPerSec),
          rate,
        )}`,
    );
    console.log(`| ${b.label} | ${cells.join(' | ')} |`);
  }
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
