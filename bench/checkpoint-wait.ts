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
//   dirty rows running.
//
// Reports per build the medians over rounds of stats().maxPushWaitUs, the
// push p99 during the prepare and without one, their ratio, and the prepare's
// duration. A script, not a test:
//
//   node dist/bench/checkpoint-wait.js [--build label=DIR ...] [--rows N] [--cache-mb N] [--rounds N]
//
// A build is a directory holding this repository's dist/ and build/; default:
// this checkout only.

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import {
  BATCH,
  DIM,
  Rng,
  Scatter,
  TABLE,
  drive,
  gradBuffers,
  machineInfo,
  median,
  percentile,
  poolMbFor,
  rangeBatch,
  scatterBatch,
  uniformBatch,
  parseBuilds,
} from './lib';

interface ChildCfg {
  root: string;
  dir: string;
  rows: number;
  cacheMb: number;
}

interface Result {
  maxPushWaitUs: number;
  p99With: number;
  p99Without: number;
  pushesDuring: number;
  prepareMs: number;
}

async function child(cfg: ChildCfg): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Engine }: typeof import('../native/engine') = require(path.join(cfg.root, 'dist', 'native', 'engine'));
  const e = Engine.open({ dir: cfg.dir, poolMb: poolMbFor(cfg.rows, 1.3), cacheMb: cfg.cacheMb });
  await e.createTable(TABLE);
  const grads = gradBuffers(7);
  const gradFor = (i: number, n: number): Buffer => grads[i % grads.length].subarray(0, n * DIM * 4);
  const T = TABLE.name;
  let id = 1;
  const checkpoint = async (): Promise<number> => {
    const my = id++;
    const t0 = performance.now();
    await e.prepare(my);
    const ms = performance.now() - t0;
    await e.commit(my);
    return ms;
  };
  const batches = Math.ceil(cfg.rows / BATCH);
  await drive(
    8,
    (i) => {
      const n = Math.min(BATCH, cfg.rows - i * BATCH);
      return e.push(T, rangeBatch(i * BATCH, n), gradFor(i, n));
    },
    (n) => n >= batches,
  );
  await checkpoint();
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
  const window = async (withCheckpoint: boolean): Promise<{ lat: number[]; prepareMs: number }> => {
    const lat: Array<[number, number]> = [];
    let stop = Infinity;
    const pusher = drive(
      1,
      (i) => e.push(T, keys[i % keys.length], gradFor(i, BATCH)),
      (_n, el) => el >= stop,
      (s, t) => lat.push([s, t]),
    );
    let from = -Infinity;
    let to = Infinity;
    let prepareMs = NaN;
    if (withCheckpoint) {
      await new Promise((r) => setTimeout(r, 200));
      from = performance.now();
      const my = id++;
      await e.prepare(my);
      to = performance.now();
      prepareMs = to - from;
      await e.commit(my);
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
  const r: Result = {
    maxPushWaitUs: e.stats().maxPushWaitUs,
    p99With: percentile(during.lat, 99),
    p99Without: percentile(without.lat, 99),
    pushesDuring: during.lat.length,
    prepareMs: during.prepareMs,
  };
  if (waitBefore !== 0) throw new Error(`maxPushWaitUs was ${waitBefore} before the measured prepare`);
  await e.close();
  fs.rmSync(cfg.dir, { recursive: true, force: true });
  process.stdout.write(`@@RESULT ${JSON.stringify(r)}\n`);
}

function runChild(cfg: ChildCfg): Promise<Result> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [__filename, '--child', JSON.stringify(cfg)], {
      env: { ...process.env, PMEM_IS_PMEM_FORCE: '1' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.on('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('@@RESULT '));
      if (code === 0 && line) resolve(JSON.parse(line.slice('@@RESULT '.length)) as Result);
      else reject(new Error(`child of ${cfg.root} exited with ${code}`));
    });
  });
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      build: { type: 'string', multiple: true },
      rows: { type: 'string', default: '3000000' },
      'cache-mb': { type: 'string', default: '256' },
      rounds: { type: 'string', default: '5' },
      child: { type: 'string' },
    },
  });
  if (a.child) return child(JSON.parse(a.child) as ChildCfg);
  const builds = parseBuilds(a.build, path.resolve(__dirname, '..', '..'));
  const rows = Number(a.rows);
  const cacheMb = Number(a['cache-mb']);
  const rounds = Number(a.rounds);
  const base = fs.mkdtempSync('/dev/shm/pmemps-ckwait-');
  process.on('exit', () => fs.rmSync(base, { recursive: true, force: true }));
  const results = new Map<string, Result[]>(builds.map((b) => [b.label, []]));
  const loads: string[] = [];
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? builds : [...builds].reverse();
    for (const [i, b] of order.entries()) {
      const r = await runChild({ root: b.root, dir: path.join(base, `${round}-${i}`), rows, cacheMb });
      results.get(b.label)!.push(r);
      process.stderr.write(`round ${round + 1}/${rounds} ${b.label}: ${JSON.stringify(r)}\n`);
    }
    loads.push(fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  }
  const m = machineInfo();
  console.log(`${m.cpu}, ${m.cores} cores, node ${m.node}, ${m.date}, load after each round ${loads.join(' ')}`);
  console.log(
    `${rows} rows, dim ${DIM}, Adagrad, ${cacheMb} MiB cache, /dev/shm with PMEM_IS_PMEM_FORCE=1; one push of ${BATCH} keys in flight; medians (ranges) of ${rounds} rounds, builds in turns\n`,
  );
  console.log('| build | maxPushWaitUs | push p99 during the prepare | push p99 without | ratio | pushes during | prepare |');
  console.log('|---|---|---|---|---|---|---|');
  const cell = (xs: number[], f: (x: number) => string): string => `${f(median(xs))} (${f(Math.min(...xs))}..${f(Math.max(...xs))})`;
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
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
