// Pushes on a logged pool, A/B: what holding log room for the rows a push
// leaves dirty costs (docs/design.md, "Log room for dirty rows"). Each
// round starts one child per build, one after another (the order flips
// every round), each with its own logged pool on /dev/shm
// (PMEM_IS_PMEM_FORCE=1): the table populated and checkpointed, then
// uniform pushes of other rows than the cache holds (every push evicts and
// writes back), 8 in flight and then 1 in flight, and a checkpoint. A
// script, not a test:
//
//   node dist/bench/logged-push.js [--build label=DIR ...] [--rows N] [--cache-mb N] [--rounds N]

import * as fs from 'node:fs';
import { BATCH, DIM, drive, Rng, TABLE, uniformBatch } from './lib';
import { type AbChildCfg, abRounds, medianRange, populatedEngine, sendResult } from './ab';

interface Result {
  pushRowsPerSec8: number;
  pushRowsPerSec1: number;
  prepareMs: number;
}

const MEASURE = 122;

async function child(cfg: AbChildCfg): Promise<void> {
  const { e, gradFor, checkpoint } = await populatedEngine(cfg);
  const rng = new Rng(3001);
  const batches = Array.from({ length: 2 * MEASURE }, () => uniformBatch(rng, cfg.rows));
  const rate = async (inflight: number, from: number): Promise<number> => {
    const r = await drive(
      inflight,
      (i) => e.push(TABLE.name, batches[from + i], gradFor(i, BATCH)),
      (n) => n >= MEASURE,
    );
    return (r.calls * BATCH) / r.secs;
  };
  const pushRowsPerSec8 = await rate(8, 0);
  const pushRowsPerSec1 = await rate(1, MEASURE);
  const prepareMs = await checkpoint();
  await e.close();
  fs.rmSync(cfg.dir, { recursive: true, force: true });
  sendResult({ pushRowsPerSec8, pushRowsPerSec1, prepareMs } satisfies Result);
}

async function main(): Promise<void> {
  const ab = await abRounds<Result>({ script: __filename, rows: 2_000_000, rounds: 5, child, layout: 'logged' });
  if (!ab) return;
  const { builds, results, rows, cacheMb, rounds } = ab;
  console.log(
    `${rows} rows, dim ${DIM}, Adagrad, ${cacheMb} MiB cache, logged pools on /dev/shm with PMEM_IS_PMEM_FORCE=1; uniform pushes of ${BATCH} keys, ` +
      `${MEASURE} batches each; medians (ranges) of ${rounds} rounds, builds in turns\n`,
  );
  console.log('| build | push rows/s, 8 in flight | push rows/s, 1 in flight | the next prepare |');
  console.log('|---|---|---|---|');
  const rate = (x: number): string => `${(x / 1e6).toFixed(2)}M`;
  for (const b of builds) {
    const rs = results.get(b.label)!;
    console.log(
      `| ${b.label} | ${medianRange(
        rs.map((r) => r.pushRowsPerSec8),
        rate,
      )} | ${medianRange(
        rs.map((r) => r.pushRowsPerSec1),
        rate,
      )} | ${medianRange(
        rs.map((r) => r.prepareMs),
        (x) => `${x.toFixed(0)} ms`,
      )} |`,
    );
  }
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
