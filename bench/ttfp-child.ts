// Child processes of the restart (time-to-first-pull) and memory phases of
// bench/engine.ts. Usage: node ttfp-child.js '<json config>'.
//
//   writer:   opens the pool (populating the table when it has fewer rows than
//             asked), dirties rows, reads a probe batch, prepares and commits a
//             checkpoint, prints `@@READY {hash of the probe rows}` and then
//             pushes (also to the probe keys) until the parent SIGKILLs it.
//   reader:   the restarted process: opens the pool and pulls the probe batch
//             as its first request (`@@FIRST_PULL`); with `mem` set it then
//             pulls a working set larger than the cache, pushes to part of it
//             and reports the Rss outside the pool mapping (`@@MEM`).
//   baseline: an empty Node process's Rss (`@@MEM`), without the addon.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { BATCH, DIM, Rng, Scatter, TABLE, dieWithParent, drive, emit, gradBuffers, log, rangeBatch, scatterBatch, smapsRss, uniformBatch } from './lib';

export interface WriterConfig {
  mode: 'writer';
  dir: string;
  poolMb: number;
  cacheMb: number;
  rows: number;
  probeSeed: number;
  dirtyBatches: number;
  inflight: number;
}

export interface ReaderConfig {
  mode: 'reader';
  dir: string;
  poolMb: number;
  cacheMb: number;
  rows: number;
  probeSeed: number;
  inflight: number;
  /** Working-set rows to pull (distinct, random) before measuring memory, and the share of them pushed. */
  mem: { workingSetRows: number; pushFraction: number } | null;
}

export interface BaselineConfig {
  mode: 'baseline';
}

type Config = WriterConfig | ReaderConfig | BaselineConfig;

function probeKeys(seed: number, rows: number): Buffer {
  return uniformBatch(new Rng(seed), rows);
}

function hashRows(buf: Buffer): { hash: string; finite: boolean; nonzero: number } {
  const f = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  let finite = true;
  let nonzero = 0;
  for (let i = 0; i < f.length; i++) {
    if (!Number.isFinite(f[i])) finite = false;
    if (f[i] !== 0) nonzero++;
  }
  return { hash: crypto.createHash('sha256').update(buf).digest('hex').slice(0, 16), finite, nonzero };
}

async function writer(cfg: WriterConfig): Promise<never> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded after the failpoint environment is set
  const { Engine }: typeof import('../native/engine') = require('../native/engine');
  const e = Engine.open({ dir: cfg.dir, poolMb: cfg.poolMb, cacheMb: cfg.cacheMb });
  if (e.openInfo.prepared !== null) await e.abort(e.openInfo.prepared);
  const t = e.listTables().find((x) => x.name === TABLE.name);
  if (!t) e.createTable(TABLE);
  const grads = gradBuffers(11);
  const have = t?.rows ?? 0;
  if (have < cfg.rows) {
    log(`writer: table has ${have} rows, populating ${cfg.rows}`);
    await drive(
      cfg.inflight,
      (i) => {
        const n = Math.min(BATCH, cfg.rows - i * BATCH);
        return e.push(TABLE.name, rangeBatch(i * BATCH, n), grads[i % grads.length].subarray(0, n * DIM * 4));
      },
      (n) => n * BATCH >= cfg.rows,
    );
  }
  const rng = new Rng(cfg.probeSeed + 1);
  await drive(
    cfg.inflight,
    (i) => e.push(TABLE.name, uniformBatch(rng, cfg.rows), grads[i % grads.length]),
    (n) => n >= cfg.dirtyBatches,
  );
  const probe = probeKeys(cfg.probeSeed, cfg.rows);
  const rowsAtCheckpoint = hashRows(await e.pull(TABLE.name, probe));
  const id = (e.stats().committed ?? 0) + 1;
  const t0 = performance.now();
  await e.prepare(id);
  await e.commit(id);
  emit('READY', { id, ...rowsAtCheckpoint, checkpointMs: performance.now() - t0, rows: e.listTables()[0]?.rows });
  // Keep changing rows (the probe rows too) until the parent kills us.
  let pushes = 0;
  await drive(
    cfg.inflight,
    (i) => {
      pushes++;
      return e.push(TABLE.name, i % 4 === 0 ? probe : uniformBatch(rng, cfg.rows), grads[i % grads.length]);
    },
    () => false,
  );
  throw new Error(`writer stopped pushing after ${pushes} pushes`);
}

async function reader(cfg: ReaderConfig): Promise<void> {
  const tStart = performance.now();
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded after the failpoint environment is set
  const { Engine, rowBufferStats }: typeof import('../native/engine') = require('../native/engine');
  const tLoaded = performance.now();
  const e = Engine.open({ dir: cfg.dir, poolMb: cfg.poolMb, cacheMb: cfg.cacheMb });
  const tOpened = performance.now();
  const first = await e.pull(TABLE.name, probeKeys(cfg.probeSeed, cfg.rows));
  const tPulled = performance.now();
  emit('FIRST_PULL', {
    ...hashRows(first),
    // ms since this process started (performance.timeOrigin)
    startMs: tStart,
    loadedMs: tLoaded,
    openedMs: tOpened,
    pulledMs: tPulled,
    openInfo: e.openInfo,
  });
  if (cfg.mem) {
    const pool = fs.realpathSync(cfg.dir);
    const w = Math.min(cfg.rows, cfg.mem.workingSetRows);
    const sc = new Scatter(cfg.rows, new Rng(cfg.probeSeed + 2).int(cfg.rows));
    const grads = gradBuffers(13);
    const t0 = performance.now();
    await drive(
      cfg.inflight,
      (i) => e.pull(TABLE.name, scatterBatch(sc, i * BATCH, Math.min(BATCH, w - i * BATCH))),
      (n) => n * BATCH >= w,
    );
    const pullSecs = (performance.now() - t0) / 1000;
    const pw = Math.floor(w * cfg.mem.pushFraction);
    const pushesBlocked = e.openInfo.pushesBlocked;
    if (!pushesBlocked && pw > 0) {
      await drive(
        cfg.inflight,
        (i) => {
          const n = Math.min(BATCH, pw - i * BATCH);
          return e.push(TABLE.name, scatterBatch(sc, i * BATCH, n), grads[i % grads.length].subarray(0, n * DIM * 4));
        },
        (n) => n * BATCH >= pw,
      );
    }
    const g = (globalThis as { gc?: () => void }).gc;
    if (g) g();
    await new Promise((r) => setTimeout(r, 100));
    // The pull buffers the addon keeps for reuse are given back after about
    // a second unused: the Rss below is the idle process's, and the row says
    // how much was kept a moment after the pulls.
    const keptBytes = rowBufferStats().keptBytes;
    const k0 = performance.now();
    while (rowBufferStats().keptBytes > 0 && performance.now() - k0 < 5000) await new Promise((r) => setTimeout(r, 50));
    const keptWaitMs = performance.now() - k0;
    const s = e.stats();
    const rss = smapsRss(pool);
    const mu = process.memoryUsage();
    emit('MEM', {
      nonPoolRss: rss.other,
      poolRss: rss.excluded,
      poolMappings: rss.excludedMappings,
      split: rss,
      workingSetRows: w,
      pushedRows: pushesBlocked ? 0 : pw,
      pullRowsPerSec: w / pullSecs,
      cacheBytes: s.cacheBytes,
      cacheBudget: s.cacheBudget,
      cacheRows: s.cacheRows,
      heapUsed: mu.heapUsed,
      external: mu.external,
      arrayBuffers: mu.arrayBuffers,
      gcRan: !!g,
      keptBytes,
      keptWaitMs,
    });
  }
  await e.close();
}

async function baseline(): Promise<void> {
  await new Promise((r) => setTimeout(r, 100));
  const rss = smapsRss(null);
  emit('MEM', { nonPoolRss: rss.other, split: rss, rss: process.memoryUsage().rss });
}

async function main(): Promise<void> {
  dieWithParent();
  const cfg = JSON.parse(process.argv[2] ?? '{}') as Config;
  if (cfg.mode === 'writer') await writer(cfg);
  else if (cfg.mode === 'reader') await reader(cfg);
  else if (cfg.mode === 'baseline') await baseline();
  else throw new Error(`unknown mode ${(cfg as { mode: string }).mode}`);
  process.exit(0);
}

main().catch((err) => {
  log(`FAILED: ${err?.stack ?? err}`);
  process.exit(1);
});
