// The frame of the A/B benchmark scripts (checkpoint-wait.ts, cache-hits.ts):
// builds compared in turns, each round one child process per build with a
// pool of its own, and what those children share (opening a build's engine,
// populating the table). Machines are noisy: only builds run in the same
// rounds are compared.

import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { Engine as EngineT } from '../native/engine';
import { BATCH, DIM, TABLE, drive, fmtStalls, gradBuffers, machineInfo, median, parseBuilds, poolMbFor, rangeBatch, stallProbe } from './lib';

/** In an A/B script's child: hands its result to the parent (runResultChild). */
export function sendResult(r: unknown): void {
  process.stdout.write(`@@RESULT ${JSON.stringify(r)}\n`);
}

/** Runs `node script --child JSON(cfg)` with PMEM emulated; resolves to what the child sent with sendResult. */
export function runResultChild<T>(script: string, cfg: unknown, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [script, '--child', JSON.stringify(cfg)], {
      env: { ...process.env, PMEM_IS_PMEM_FORCE: '1' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.on('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('@@RESULT '));
      if (code === 0 && line) resolve(JSON.parse(line.slice('@@RESULT '.length)) as T);
      else reject(new Error(`child of ${what} exited with ${code}`));
    });
  });
}

/**
 * Runs every build once per round, one after another, the order flipping
 * every round (a machine's drift then favours none); logs each result.
 * Returns each build's results and the 1-min load after each round.
 */
export async function buildsInTurns<R>(
  builds: Array<{ label: string; root: string }>,
  rounds: number,
  run: (b: { label: string; root: string }, tag: string) => Promise<R>,
): Promise<{ results: Map<string, R[]>; loads: string[] }> {
  const results = new Map<string, R[]>(builds.map((b) => [b.label, []]));
  const loads: string[] = [];
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? builds : [...builds].reverse();
    for (const [i, b] of order.entries()) {
      const r = await run(b, `${round}-${i}`);
      results.get(b.label)!.push(r);
      process.stderr.write(`round ${round + 1}/${rounds} ${b.label}: ${JSON.stringify(r)}\n`);
    }
    loads.push(fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  }
  return { results, loads };
}

/** "median (min..max)" of xs, each formatted by f. */
export function medianRange(xs: number[], f: (x: number) => string): string {
  return `${f(median(xs))} (${f(Math.min(...xs))}..${f(Math.max(...xs))})`;
}

/** What an A/B script's child is given: its build, its own pool directory, the table's size. */
export interface AbChildCfg {
  root: string;
  dir: string;
  rows: number;
  cacheMb: number;
  /** The pools' row layout (default: the engine's auto, in-place under emulated PMEM). */
  layout?: 'inplace' | 'logged';
}

/**
 * The frame of an A/B script (`[--build label=DIR ...] [--rows N]
 * [--cache-mb N] [--rounds N]`): in the child (`--child JSON`) runs `child`
 * and returns null; in the parent runs one child per build per round in
 * turns, each with a pool directory of its own under /dev/shm (removed at
 * exit), and prints the machine's line. A build is a directory holding
 * this repository's dist/ and build/; default: this checkout only.
 */
export async function abRounds<R>(o: {
  script: string;
  rows: number;
  rounds: number;
  child: (cfg: AbChildCfg) => Promise<void>;
  layout?: 'inplace' | 'logged';
}): Promise<{ builds: Array<{ label: string; root: string }>; results: Map<string, R[]>; rows: number; cacheMb: number; rounds: number } | null> {
  const { values: a } = parseArgs({
    options: {
      build: { type: 'string', multiple: true },
      rows: { type: 'string', default: String(o.rows) },
      'cache-mb': { type: 'string', default: '256' },
      rounds: { type: 'string', default: String(o.rounds) },
      child: { type: 'string' },
    },
  });
  if (a.child) {
    await o.child(JSON.parse(a.child) as AbChildCfg);
    return null;
  }
  const builds = parseBuilds(a.build, path.resolve(path.dirname(o.script), '..', '..'));
  const rows = Number(a.rows);
  const cacheMb = Number(a['cache-mb']);
  const rounds = Number(a.rounds);
  const base = fs.mkdtempSync('/dev/shm/pmemps-ab-');
  process.on('exit', () => fs.rmSync(base, { recursive: true, force: true }));
  const { results, loads } = await buildsInTurns(builds, rounds, (b, tag) =>
    runResultChild<R>(o.script, { root: b.root, dir: path.join(base, tag), rows, cacheMb, layout: o.layout } satisfies AbChildCfg, b.root),
  );
  const m = machineInfo();
  console.log(`${m.cpu}, ${m.cores} cores, node ${m.node}, ${m.date}, load after each round ${loads.join(' ')}`);
  console.log(`machine stalls after the rounds: ${fmtStalls(stallProbe(10))}`);
  return { builds, results, rows, cacheMb, rounds };
}

/**
 * In a child: the build's engine on a fresh pool holding every row of the
 * table, pushed once (8 in flight) and checkpointed. `checkpoint()` runs
 * the next prepare and commit and returns the prepare's milliseconds.
 */
export async function populatedEngine(cfg: AbChildCfg): Promise<{
  e: EngineT;
  gradFor: (i: number, n: number) => Buffer;
  checkpoint: () => Promise<number>;
}> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Engine }: typeof import('../native/engine') = require(path.join(cfg.root, 'dist', 'native', 'engine'));
  const e = Engine.open({ dir: cfg.dir, poolMb: poolMbFor(cfg.rows, 1.3), cacheMb: cfg.cacheMb, layout: cfg.layout });
  await e.createTable(TABLE);
  const grads = gradBuffers(7);
  const gradFor = (i: number, n: number): Buffer => grads[i % grads.length].subarray(0, n * DIM * 4);
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
      return e.push(TABLE.name, rangeBatch(i * BATCH, n), gradFor(i, n));
    },
    (n) => n >= batches,
  );
  await checkpoint();
  return { e, gradFor, checkpoint };
}
