// The storage engine benchmark (a script, not a test):
//
//   npx tsc -p tsconfig.json && node dist/bench/engine.js [--quick] [--rows-large N]
//
// Runs five phases on two media, one after another, and prints one markdown
// table of every figure measured in this run (also written to
// bench/results/engine-latest.md):
//   1. pull/push rows/s, pool engine vs memoryOnly (DRAM) engine, table in cache
//   2. uniform vs Zipf(0.99) keys on a large table with a 256 MiB cache
//   3. checkpoint (prepare+commit) after dirtying 1% / 10% vs a full dump;
//      push latency while a checkpoint is prepared
//   4. time to first pull after kill -9, small vs large table
//   5. Rss outside the pool mapping, small vs large table
// Media: "shm" = /dev/shm with PMEM_IS_PMEM_FORCE=1 (emulated PMEM) and
// "disk" = ./.bench-data on the project's own filesystem without FORCE (msync).
// libpmem reads PMEM_IS_PMEM_FORCE once per process, so each medium's engine
// work runs in child processes (engine-worker.js, ttfp-child.js); this process
// never loads the addon. Row counts are scaled down when RAM, /dev/shm or the
// disk is short, and every child and pool directory is cleaned up on exit.

import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { LargeConfig, Phase1Config } from './engine-worker';
import type { PoolLayout, PrepareTimes } from '../native/engine';
import {
  BATCH,
  DIM,
  GiB,
  INDEX_BYTES_PER_ROW,
  MiB,
  Rng,
  TABLE,
  cacheBytesPerRow,
  dumpBytesFor,
  fmtBytes,
  fmtMs,
  fmtRate,
  fmtRows,
  fsAvailable,
  machineInfo,
  fmtStalls,
  stallProbe,
  memAvailable,
  poolBytesPerRow,
  median,
  poolMbFor,
} from './lib';
import type { ReaderConfig, WriterConfig } from './ttfp-child';

const REPO = path.resolve(__dirname, '..', '..');
const SHM = '/dev/shm';
const RESERVE_RAM = 1 * GiB;
const RESERVE_FS = 1 * GiB;
const SMALL_CACHE_MB = 256;

// ---------------------------------------------------------------- options

const USAGE = `usage: node dist/bench/engine.js [--quick] [--rows-large N] [--rows-small N] [--media shm,disk]
                                [--reps N] [--out FILE] [--populate-budget SECONDS]
  --quick             smoke run: 100k / 1M rows, short measurements
  --rows-large N      rows of the large table (phases 2-5; default 10M, quick 1M)
  --rows-small N      rows of the small table (phases 1, 4, 5; default 1M, quick 100k)
  --media LIST        media to run, comma separated: shm, disk, shm-logged, disk-logged (default shm,disk,disk-logged)
  --reps N            phase 1 repetitions per engine (default 5, quick 3)
  --populate-budget S stop populating the large table after S seconds per medium and go on
                      with the rows populated so far (default 900, quick 180)
  --out FILE          results file (default bench/results/engine-latest.md)`;

const CLI_OPTIONS = {
  quick: { type: 'boolean', default: false },
  'rows-large': { type: 'string' },
  'rows-small': { type: 'string' },
  media: { type: 'string', default: 'shm,disk,disk-logged' },
  reps: { type: 'string' },
  out: { type: 'string' },
  'populate-budget': { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

function parseCli(): ReturnType<typeof parseArgs<{ options: typeof CLI_OPTIONS; strict: true }>> {
  try {
    return parseArgs({ options: CLI_OPTIONS, strict: true });
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    process.exit(2);
  }
}
const { values: argv } = parseCli();
if (argv.help) {
  console.log(USAGE);
  process.exit(0);
}
function intArg(v: string | undefined, def: number, name: string): number {
  if (v === undefined) return def;
  const n = Number(
    v.replace(/_/g, '').replace(/^(\d+(?:\.\d+)?)([kKmM])$/, (_m, a: string, u: string) => String(Number(a) * (u.toLowerCase() === 'k' ? 1e3 : 1e6))),
  );
  if (!Number.isSafeInteger(n) || n <= 0) {
    console.error(`--${name} needs a positive integer, got "${v}"\n${USAGE}`);
    process.exit(2);
  }
  return n;
}
const quick = argv.quick === true;
const opts = {
  quick,
  rowsSmall: intArg(argv['rows-small'], quick ? 100_000 : 1_000_000, 'rows-small'),
  rowsLarge: intArg(argv['rows-large'], quick ? 1_000_000 : 10_000_000, 'rows-large'),
  reps: intArg(argv.reps, quick ? 3 : 5, 'reps'),
  durMs: quick ? 300 : 1000,
  inflight: 8,
  headroom: 1.3,
  phase1CacheMb: 2048,
  populateBudgetMs: intArg(argv['populate-budget'], quick ? 180 : 900, 'populate-budget') * 1000,
  measureBatches: quick ? 64 : 244,
  zipfS: 0.99,
  killDelayMs: 1000,
  restarts: 3,
  out: path.resolve(argv.out ?? path.join(REPO, 'bench', 'results', 'engine-latest.md')),
};
const mediaKeys = (argv.media ?? '').split(',').filter(Boolean);
const cacheRowsEst = Math.floor((SMALL_CACHE_MB * MiB) / cacheBytesPerRow());
const warmBatches = Math.ceil((1.5 * cacheRowsEst) / BATCH);
const workingSetRows = 2 * cacheRowsEst;

// ---------------------------------------------------------------- media

interface Medium {
  key: MediumKey;
  label: string;
  /** The row layout of the pools the benchmark creates there. */
  layout: PoolLayout;
  base: string;
  /** The pool lives in RAM (tmpfs). */
  inRam: boolean;
  env: NodeJS.ProcessEnv;
}

function envWith(force: boolean): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.PMEM_IS_PMEM_FORCE;
  if (force) env.PMEM_IS_PMEM_FORCE = '1';
  return env;
}

type MediumKey = 'shm' | 'disk' | 'shm-logged' | 'disk-logged';
/** Pool bytes per row after phase 3's ten checkpoint cycles, by medium (the logged media compare with the in-place ones run before them). */
const spacePerRow: Record<string, number> = {};
const MEDIA: Record<MediumKey, Medium> = {
  shm: { key: 'shm', label: 'shm', layout: 'inplace', base: path.join(SHM, `pmemps-bench-${process.pid}`), inRam: true, env: envWith(true) },
  disk: { key: 'disk', label: 'disk', layout: 'inplace', base: path.join(REPO, '.bench-data', `run-${process.pid}`), inRam: false, env: envWith(false) },
  'shm-logged': {
    key: 'shm-logged',
    label: 'shm, logged',
    layout: 'logged',
    base: path.join(SHM, `pmemps-bench-logged-${process.pid}`),
    inRam: true,
    env: envWith(true),
  },
  'disk-logged': {
    key: 'disk-logged',
    label: 'disk, logged',
    layout: 'logged',
    base: path.join(REPO, '.bench-data', `run-logged-${process.pid}`),
    inRam: false,
    env: envWith(false),
  },
};

for (const m of mediaKeys) {
  if (!(m in MEDIA)) {
    console.error(`unknown medium "${m}"\n${USAGE}`);
    process.exit(2);
  }
}

function fsTypeOf(dir: string): string {
  try {
    let best = { mnt: '', type: '?' };
    for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n')) {
      const [, mnt, type] = line.split(' ');
      if (mnt && (dir === mnt || dir.startsWith(mnt.endsWith('/') ? mnt : mnt + '/')) && mnt.length >= best.mnt.length) best = { mnt, type };
    }
    return best.type;
  } catch {
    return '?';
  }
}

/** A path as printed: relative to the repository when inside it, so no machine paths reach the results. */
function shown(p: string): string {
  const rel = path.relative(REPO, p);
  return rel.startsWith('..') || path.isAbsolute(rel) ? p : `./${rel}`;
}

// ---------------------------------------------------------------- cleanup

const liveChildren = new Set<ChildProcess>();
const ownedDirs = new Set<string>();

function rmDir(dir: string): void {
  try {
    fs.rmSync(dir, { recursive: true, force: true });
  } catch (e) {
    process.stderr.write(`could not remove ${dir}: ${e}\n`);
  }
}

function cleanupSync(): void {
  for (const c of liveChildren) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
  liveChildren.clear();
  for (const d of ownedDirs) rmDir(d);
  ownedDirs.clear();
  const dataRoot = path.join(REPO, '.bench-data');
  try {
    if (fs.readdirSync(dataRoot).length === 0) fs.rmdirSync(dataRoot);
  } catch {
    /* absent */
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes pool directories left by earlier runs that were killed before they could clean up. */
function removeStale(): void {
  const spots: Array<[string, RegExp]> = [
    [SHM, /^pmemps-bench-(\d+)$/],
    [path.join(REPO, '.bench-data'), /^run-(\d+)$/],
  ];
  for (const [dir, re] of spots) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir);
    } catch {
      continue;
    }
    for (const n of names) {
      const m = re.exec(n);
      if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) {
        progress(`removing stale ${shown(path.join(dir, n))}`);
        rmDir(path.join(dir, n));
      }
    }
  }
}

process.on('exit', cleanupSync);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    process.stderr.write(`\n${sig}: stopping children, removing pool directories\n`);
    cleanupSync();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}

// ---------------------------------------------------------------- children

const T0 = performance.now();
function progress(msg: string): void {
  process.stderr.write(`[bench +${((performance.now() - T0) / 1000).toFixed(0)}s] ${msg}\n`);
}

interface Tagged {
  payload: any;
  atMs: number;
}

/** A child node process speaking the `@@TAG {json}` line protocol on stdout. */
class Child {
  readonly proc: ChildProcess;
  readonly spawnedAt: number;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly seen = new Map<string, Tagged[]>();
  private readonly waiters = new Map<string, Array<(t: Tagged) => void>>();
  private failed: Error | null = null;
  private readonly failWaiters: Array<(e: Error) => void> = [];
  private exited = false;
  private timer: NodeJS.Timeout;

  constructor(
    readonly name: string,
    script: string,
    cfg: unknown,
    env: NodeJS.ProcessEnv,
    timeoutMs: number,
  ) {
    this.spawnedAt = performance.now();
    this.proc = spawn(process.execPath, ['--expose-gc', path.join(__dirname, script), JSON.stringify(cfg)], {
      env,
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    liveChildren.add(this.proc);
    let buf = '';
    this.proc.stdout!.on('data', (d: Buffer) => {
      const at = performance.now();
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = /^@@([A-Z_]+) (.*)$/.exec(line);
        if (!m) {
          process.stderr.write(`[${name}] ${line}\n`);
          continue;
        }
        const t = { payload: JSON.parse(m[2]), atMs: at };
        const list = this.seen.get(m[1]) ?? [];
        list.push(t);
        this.seen.set(m[1], list);
        const ws = this.waiters.get(m[1]) ?? [];
        this.waiters.delete(m[1]);
        for (const w of ws) w(t);
      }
    });
    this.proc.stdin!.on('error', () => undefined);
    this.exit = new Promise((resolve) => {
      this.proc.on('exit', (code, signal) => {
        this.exited = true;
        clearTimeout(this.timer);
        liveChildren.delete(this.proc);
        resolve({ code, signal });
        if (code !== 0 && signal !== 'SIGKILL') this.fail(new Error(`${name} exited with ${code !== null ? `code ${code}` : `signal ${signal}`}`));
        else this.fail(new Error(`${name} exited before reporting what was expected`));
      });
      this.proc.on('error', (e) => this.fail(e));
    });
    this.timer = setTimeout(() => {
      this.fail(new Error(`${name} timed out after ${fmtMs(timeoutMs)}`));
      this.kill();
    }, timeoutMs);
  }

  private fail(e: Error): void {
    if (this.failed) return;
    this.failed = e;
    for (const f of this.failWaiters) f(e);
  }

  waitFor(tag: string): Promise<Tagged> {
    const have = this.seen.get(tag);
    if (have?.length) return Promise.resolve(have[0]);
    return new Promise((resolve, reject) => {
      if (this.failed) return reject(this.failed);
      const ws = this.waiters.get(tag) ?? [];
      ws.push(resolve);
      this.waiters.set(tag, ws);
      this.failWaiters.push(reject);
    });
  }

  /** Waits for a clean exit (code 0). */
  async done(): Promise<void> {
    const r = await this.exit;
    if (r.code !== 0) throw new Error(`${this.name} exited with ${r.code !== null ? `code ${r.code}` : `signal ${r.signal}`}`);
  }

  kill(): void {
    if (!this.exited) this.proc.kill('SIGKILL');
  }
}

async function runWorker<T>(name: string, cfg: Phase1Config | LargeConfig, medium: Medium, timeoutMs: number): Promise<T> {
  const c = new Child(name, 'engine-worker.js', cfg, medium.env, timeoutMs);
  const r = await c.waitFor('RESULT');
  await c.done();
  return r.payload as T;
}

// ---------------------------------------------------------------- space checks

interface Need {
  ram: number;
  shm: number;
  disk: number;
}

function available(): Need {
  return {
    ram: memAvailable() - RESERVE_RAM,
    shm: fsAvailable(SHM) - RESERVE_FS,
    disk: fsAvailable(REPO) - RESERVE_FS,
  };
}

/** Only what is needed is compared: a nearly full disk does not stop an shm-only phase. */
function fits(n: Need, a: Need): boolean {
  return (n.ram <= 0 || n.ram <= a.ram) && (n.shm <= 0 || n.shm <= a.shm) && (n.disk <= 0 || n.disk <= a.disk);
}

/** Pool file placed on the medium: counts against RAM and /dev/shm on tmpfs, against the disk otherwise. */
function onMedium(m: Medium, bytes: number, ram: number): Need {
  return m.inRam ? { ram: ram + bytes, shm: bytes, disk: 0 } : { ram, shm: 0, disk: bytes };
}

/** The largest row count up to `requested` (rounded to `step`) whose needs fit what is free now. */
function scaleRows(label: string, requested: number, step: number, need: (rows: number) => Need): number {
  const a = available();
  if (fits(need(requested), a)) return requested;
  let lo = 0;
  let hi = Math.floor(requested / step);
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(need(mid * step), a)) lo = mid;
    else hi = mid - 1;
  }
  const rows = lo * step;
  const n = need(requested);
  const msg =
    `${label}: scaled ${fmtRows(requested)} rows down to ${fmtRows(rows)} rows: needs RAM ${fmtBytes(n.ram)}, /dev/shm ${fmtBytes(n.shm)}, disk ${fmtBytes(n.disk)}; ` +
    `free (after a ${fmtBytes(RESERVE_RAM)} reserve) RAM ${fmtBytes(a.ram)}, /dev/shm ${fmtBytes(a.shm)}, disk ${fmtBytes(a.disk)}`;
  progress(msg);
  notes.push(msg);
  return rows;
}

// ---------------------------------------------------------------- results

interface Row {
  phase: string;
  what: string;
  medium: string;
  rows: string;
  value: string;
  target: string;
  met: string;
}
const table: Row[] = [];
const notes: string[] = [];
let correctnessFailures = 0;
/** Rss of an empty node process, measured first. */
let baselineRss: number | null = null;

function add(phase: string, what: string, medium: string, rows: number | string, value: string, target = '', met: boolean | null = null): void {
  table.push({ phase, what, medium, rows: typeof rows === 'number' ? fmtRows(rows) : rows, value, target, met: met === null ? '' : met ? 'yes' : '**no**' });
}

/** The slowest of phase 3's checkpoint cycles, with its phases and what compaction did meanwhile. */
function slowestCycle(sp: { checkpointMs: number[]; cyclePhases?: (PrepareTimes & { copiedBytes: number; segmentsFreed: number })[] }): string {
  if (!sp.cyclePhases?.length) return '';
  const i = sp.checkpointMs.indexOf(Math.max(...sp.checkpointMs));
  const c = sp.cyclePhases[i];
  return `; the slowest (${i + 1}) ${prepPhases(c).slice(2)}; compaction meanwhile copied ${fmtBytes(c.copiedBytes)}, freed ${c.segmentsFreed} segments`;
}

/** The prepare's phases from stats().lastPrepare, for a checkpoint row. */
function prepPhases(p: PrepareTimes | undefined): string {
  if (!p) return '';
  const ms = (us: number): string => fmtMs(us / 1000);
  return `; prepare's phases: flush ${ms(p.flushUs)} (${p.rows} rows; slot writes ${ms(p.slotsUs)}), log sync ${ms(p.logSyncUs)}, other ranges' sync ${ms(p.persistUs)}, publish ${ms(p.publishUs)}`;
}

function ratioStr(x: number): string {
  return `${x.toFixed(2)}x`;
}
function pct(x: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  return x < 0.1 ? `${(x * 100).toFixed(2)}%` : `${(x * 100).toFixed(1)}%`;
}

// ---------------------------------------------------------------- phases

async function nodeBaseline(): Promise<any> {
  const c = new Child('baseline', 'ttfp-child.js', { mode: 'baseline' }, process.env, 60_000);
  const r = await c.waitFor('MEM');
  await c.done();
  return r.payload;
}

async function phase1(m: Medium): Promise<{ dir: string; rows: number; poolMb: number } | null> {
  const rows = scaleRows(`phase 1 (${m.label})`, opts.rowsSmall, 10_000, (r) =>
    onMedium(m, poolMbFor(r, opts.headroom) * MiB, 2 * r * cacheBytesPerRow() + 512 * MiB),
  );
  if (rows < 10 * BATCH) {
    add('1', 'pull/push rows/s, pool vs DRAM', m.label, 0, 'skipped: not enough free space');
    return null;
  }
  const dir = path.join(m.base, 'small');
  const poolMb = poolMbFor(rows, opts.headroom);
  const cacheMb = Math.max(opts.phase1CacheMb, Math.ceil((rows * cacheBytesPerRow() * 1.5) / MiB));
  progress(`phase 1 on ${m.label}: ${fmtRows(rows)} rows, pool ${poolMb} MiB, cache ${cacheMb} MiB, ${opts.reps} repetitions`);
  const cfg: Phase1Config = {
    mode: 'phase1',
    dir,
    rows,
    poolMb,
    cacheMb,
    layout: m.layout,
    reps: opts.reps,
    durMs: opts.durMs,
    inflight: opts.inflight,
    keepPool: true,
  };
  const r = await runWorker<any>(`phase1-${m.key}`, cfg, m, 60 * 60_000);
  const label: Record<string, string> = {
    'pull@1': 'pull rows/s, 1 in flight: pool / DRAM',
    [`pull@${opts.inflight}`]: `pull rows/s, ${opts.inflight} in flight: pool / DRAM`,
    'push@1': 'push rows/s, 1 in flight: pool / DRAM',
    [`push@${opts.inflight}`]: `push rows/s, ${opts.inflight} in flight: pool / DRAM`,
  };
  for (const [k, v] of Object.entries(r.medians as Record<string, { pool: number; dram: number }>)) {
    const ratio = v.pool / v.dram;
    const spread = (xs: number[]): string => `${fmtRate(Math.min(...xs)).replace(' rows/s', '')}..${fmtRate(Math.max(...xs)).replace(' rows/s', '')}`;
    const s = r.samples[k];
    add(
      '1',
      `${label[k]} (median of ${opts.reps})`,
      m.label,
      rows,
      `${fmtRate(v.pool)} / ${fmtRate(v.dram)} = **${ratioStr(ratio)}** (ranges ${spread(s.pool)} / ${spread(s.dram)})`,
      '≥ 0.95x',
      ratio >= 0.95,
    );
  }
  const w = r.warm;
  add(
    '1',
    'warm-up: first push of every row (row creation), pool / DRAM',
    m.label,
    rows,
    `${fmtRate(w.pool.populateRowsPerSec)} / ${fmtRate(w.dram.populateRowsPerSec)}`,
  );
  const pd = r.measureDelta.pool;
  notes.push(
    `phase 1 (${m.label}): after the warm-up the pool files were fsynced (${fmtMs(r.settleMs)}) so that no write-back of it overlaps the measurements`,
  );
  if (pd.misses > 0 || pd.evictions > 0)
    notes.push(
      `phase 1 (${m.label}): the table was meant to stay cached, yet the pool engine saw ${pd.misses} misses and ${pd.evictions} evictions while measuring`,
    );
  notes.push(
    `phase 1 (${m.label}): pool openInfo.isPmem=${r.isPmem}; pool used ${fmtBytes(r.poolStats.poolUsedBytes)} for ${fmtRows(rows)} rows = ${r.poolUsedPerRow.toFixed(0)} B/row ` +
      `(estimate ${poolBytesPerRow() + INDEX_BYTES_PER_ROW} B/row); cache ${fmtBytes(r.poolStats.cacheBytes)} for ${r.poolStats.cacheRows} rows; DRAM engine cache ${fmtBytes(r.dramStats.cacheBytes)}; pool close ${fmtMs(r.poolCloseMs)}`,
  );
  return { dir, rows, poolMb };
}

interface RestartResult {
  /** Median over the repetitions. */
  ttfpMs: number;
  all: number[];
  /** The FIRST_PULL report of the median run. */
  first: any;
  mem: any;
  hashOk: boolean;
}

/**
 * Phases 4 and 5 on an existing, populated pool, `opts.restarts` times: a
 * writer opens it, pushes, commits a checkpoint, keeps pushing and is killed
 * with SIGKILL; a new process's first pull is timed from its spawn and must
 * return the checkpoint's rows. The last new process also measures memory.
 */
async function restart(m: Medium, dir: string, rows: number, poolMb: number, tag: string): Promise<RestartResult> {
  const a = available();
  if (a.ram < (SMALL_CACHE_MB + 512) * MiB)
    throw new Error(`not enough RAM left for the phase 4/5 children (${m.label}, ${tag}): ${fmtBytes(a.ram)} free after the reserve`);
  const runs: Array<{ ttfpMs: number; first: any }> = [];
  let mem: any = null;
  let hashOk = true;
  for (let rep = 0; rep < opts.restarts; rep++) {
    const last = rep === opts.restarts - 1;
    const probeSeed = 5000 + rows + 7 * rep;
    const base = { dir, poolMb, cacheMb: SMALL_CACHE_MB, rows, probeSeed, inflight: opts.inflight };
    const wcfg: WriterConfig = { mode: 'writer', ...base, dirtyBatches: 16 };
    const writer = new Child(`writer-${m.key}-${tag}`, 'ttfp-child.js', wcfg, m.env, 60 * 60_000);
    const ready = (await writer.waitFor('READY')).payload;
    await new Promise((r) => setTimeout(r, opts.killDelayMs));
    writer.kill();
    const we = await writer.exit;
    if (we.signal !== 'SIGKILL') throw new Error(`writer ended by itself (${JSON.stringify(we)}) instead of being killed`);
    const rcfg: ReaderConfig = { mode: 'reader', ...base, mem: last ? { workingSetRows, pushFraction: 0.25 } : null };
    const t0 = performance.now();
    const reader = new Child(`reader-${m.key}-${tag}`, 'ttfp-child.js', rcfg, m.env, 60 * 60_000);
    const first = await reader.waitFor('FIRST_PULL');
    const ttfpMs = first.atMs - t0;
    progress(`phase 4 on ${m.label}, ${fmtRows(rows)} rows, restart ${rep + 1}/${opts.restarts}: first pull ${fmtMs(ttfpMs)} after spawn`);
    if (last) mem = (await reader.waitFor('MEM')).payload;
    await reader.done();
    runs.push({ ttfpMs, first: first.payload });
    if (first.payload.hash !== ready.hash || !first.payload.finite) {
      hashOk = false;
      correctnessFailures++;
      notes.push(
        `phase 4 (${m.label}, ${fmtRows(rows)} rows, restart ${rep + 1}): **the rows read after kill -9 differ from the committed checkpoint** ` +
          `(probe hash ${first.payload.hash} vs ${ready.hash} at checkpoint ${ready.id}; finite=${first.payload.finite})`,
      );
    }
  }
  const sorted = [...runs].sort((x, y) => x.ttfpMs - y.ttfpMs);
  const mid = sorted[(sorted.length - 1) >> 1];
  return { ttfpMs: mid.ttfpMs, all: runs.map((r) => r.ttfpMs), first: mid.first, mem, hashOk };
}

async function dump(m: Medium, rows: number): Promise<{ ms: number; runs: number; bytes: number; measuredBytes: number; extrapolated: boolean }> {
  const bytes = dumpBytesFor(rows);
  const fitRows = scaleRows(`phase 3 dump (${m.label})`, rows, 1000, (r) => onMedium(m, dumpBytesFor(r), 256 * MiB));
  const measuredBytes = dumpBytesFor(fitRows);
  if (measuredBytes < Math.min(bytes, 64 * MiB)) throw new Error(`not enough space for a dump on ${m.label}: ${fmtBytes(measuredBytes)} would fit`);
  fs.mkdirSync(m.base, { recursive: true });
  const file = path.join(m.base, 'dump.bin');
  const chunk = Buffer.alloc(64 * MiB);
  const rng = new Rng(6001);
  const f = new Float32Array(chunk.buffer, chunk.byteOffset, chunk.length / 4);
  for (let i = 0; i < f.length; i++) f[i] = rng.u32() / 4294967296 - 0.5;
  const times: number[] = [];
  while (times.length < 3 && (times.length === 0 || times.reduce((x, y) => x + y, 0) < 30_000)) {
    progress(`phase 3 on ${m.label}: full dump of ${fmtBytes(measuredBytes)} (write + fsync), run ${times.length + 1}`);
    const t = performance.now();
    const fd = fs.openSync(file, 'w');
    try {
      let left = measuredBytes;
      while (left > 0) {
        const n = Math.min(chunk.length, left);
        let off = 0;
        while (off < n) off += fs.writeSync(fd, chunk, off, n - off);
        left -= n;
      }
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    times.push(performance.now() - t);
    fs.rmSync(file, { force: true });
  }
  const ms = median(times);
  return { ms: (ms * bytes) / measuredBytes, runs: times.length, bytes, measuredBytes, extrapolated: measuredBytes < bytes };
}

/** Rows of phases 4 and 5 for one medium; either restart result may be missing (phase skipped). */
function renderRestarts(m: Medium, smallRows: number, smallRestart: RestartResult | null, lr: number, largeRestart: RestartResult | null): void {
  const baseRss = baselineRss ?? NaN;
  const ml = m.label;
  const restarts: Array<[string, number, RestartResult | null]> = [
    ['small', smallRows, smallRestart],
    ['large', lr, largeRestart],
  ];
  for (const [, n, r] of restarts) {
    if (!r) continue;
    const f = r.first;
    add(
      '4',
      `time to first pull after kill -9: spawn → first ${BATCH}-key pull answered`,
      ml,
      n,
      `**${fmtMs(r.ttfpMs)}** median of ${r.all.length} (all: ${r.all.map((x) => x.toFixed(0)).join(', ')} ms; median run: node start + addon load ${fmtMs(f.loadedMs)}, ` +
        `open ${fmtMs(f.openedMs - f.loadedMs)}, pull ${fmtMs(f.pulledMs - f.openedMs)}` +
        (m.layout === 'logged' ? `; replayed ${f.openInfo.replayedRecords} records, wrote ${f.openInfo.replayWrites} slots` : '') +
        `); restored rows = checkpoint: ${r.hashOk ? 'yes' : '**NO**'}`,
      '≤ 1 s',
      r.ttfpMs <= 1000,
    );
  }
  if (smallRestart && largeRestart) {
    const q = largeRestart.ttfpMs / smallRestart.ttfpMs;
    add(
      '4',
      `time to first pull, ${fmtRows(lr)} / ${fmtRows(smallRows)} rows`,
      ml,
      `${fmtRows(lr)} / ${fmtRows(smallRows)}`,
      `**${ratioStr(q)}**`,
      '≤ 1.5x',
      q <= 1.5,
    );
  }
  const limit = SMALL_CACHE_MB * MiB + 64 * MiB;
  for (const [, n, r] of restarts) {
    if (!r) continue;
    const mm = r.mem;
    add(
      '5',
      `Rss outside the pool mapping, ${SMALL_CACHE_MB} MiB cache, after pulling ${fmtRows(mm.workingSetRows)} random rows and pushing ${fmtRows(mm.pushedRows)}`,
      ml,
      n,
      `**${fmtBytes(mm.nonPoolRss)}** = [heap] ${fmtBytes(mm.split.heap)} + anonymous ${fmtBytes(mm.split.anon)} + files ${fmtBytes(mm.split.files)} + other ${fmtBytes(mm.split.misc)}; ` +
        `cache ${fmtBytes(mm.cacheBytes)} / ${mm.cacheRows} rows; less an empty node's Rss: ${fmtBytes(mm.nonPoolRss - baseRss)} = cache + ${fmtBytes(mm.nonPoolRss - baseRss - mm.cacheBytes)}; ` +
        `(pool mapping Rss ${fmtBytes(mm.poolRss)})`,
      `≤ ${fmtBytes(limit)}`,
      mm.nonPoolRss <= limit,
    );
    notes.push(
      `phase 5 (${ml}, ${fmtRows(n)} rows): JS heap used ${fmtBytes(mm.heapUsed)}, external ${fmtBytes(mm.external)} (array buffers ${fmtBytes(mm.arrayBuffers)})${mm.gcRan ? ' after a forced GC' : ''}; ` +
        `pull buffers kept for reuse 100 ms after it ${fmtBytes(mm.keptBytes ?? 0)}, given back ${fmtMs(mm.keptWaitMs ?? 0)} later, before the Rss was read; ` +
        `working-set pulls ran at ${fmtRate(mm.pullRowsPerSec)} from a cold cache`,
    );
    if (mm.poolMappings === 0) notes.push(`phase 5 (${ml}, ${fmtRows(n)} rows): no mapping of a file in the pool directory was found in /proc/self/smaps`);
  }
  if (smallRestart && largeRestart) {
    const diff = largeRestart.mem.nonPoolRss - smallRestart.mem.nonPoolRss;
    add(
      '5',
      `Rss outside the pool, ${fmtRows(lr)} minus ${fmtRows(smallRows)} rows`,
      ml,
      `${fmtRows(lr)} / ${fmtRows(smallRows)}`,
      `${diff >= 0 ? '+' : ''}${fmtBytes(diff)}`,
      'about equal (±32 MiB)',
      Math.abs(diff) <= 32 * MiB,
    );
  }
  if (smallRestart && smallRestart.mem.workingSetRows <= cacheRowsEst) {
    notes.push(`phase 5 (${ml}): the ${fmtRows(smallRows)}-row table is smaller than the cache, so its working set could not exceed the cache`);
  }
}

async function runMedium(m: Medium): Promise<void> {
  ownedDirs.add(m.base);
  fs.mkdirSync(m.base, { recursive: true });
  const ml = m.label;

  // ---- phase 1, then phases 4/5 on the same (small) pool
  const small = await phase1(m);
  let smallRestart: RestartResult | null = null;
  if (small) {
    smallRestart = await restart(m, small.dir, small.rows, small.poolMb, 'small');
    rmDir(small.dir);
  }

  // ---- large table: populate, phase 2, phase 3, then phases 4/5 on it
  const reqRows = opts.rowsLarge;
  const rows = scaleRows(`phases 2-5, large table (${ml})`, reqRows, 10_000, (r) =>
    onMedium(m, poolMbFor(r, opts.headroom) * MiB, (SMALL_CACHE_MB + 768) * MiB + warmBatches * BATCH * 8 * 3),
  );
  if (rows < 10 * BATCH) {
    add('2', 'large table (phases 2-5)', ml, 0, 'skipped: not enough free space');
    renderRestarts(m, small?.rows ?? 0, smallRestart, 0, null);
    rmDir(m.base);
    ownedDirs.delete(m.base);
    return;
  }
  const dir = path.join(m.base, 'large');
  const poolMb = poolMbFor(rows, opts.headroom);
  progress(`phases 2-3 on ${ml}: ${fmtRows(rows)} rows, pool ${poolMb} MiB, cache ${SMALL_CACHE_MB} MiB`);
  const lcfg: LargeConfig = {
    mode: 'large',
    dir,
    rows,
    poolMb,
    cacheMb: SMALL_CACHE_MB,
    layout: m.layout,
    inflight: opts.inflight,
    populateBudgetMs: opts.populateBudgetMs,
    warmBatches,
    measureBatches: opts.measureBatches,
    zipfS: opts.zipfS,
    latencyWindowMs: 2000,
    latencyPairs: 3,
    keepPool: true,
  };
  const L = await runWorker<any>(`large-${m.key}`, lcfg, m, 120 * 60_000);
  const lr: number = L.rows;
  if (L.populate.cut) {
    const msg = `${ml}: populating ${fmtRows(rows)} rows would take longer than the ${opts.populateBudgetMs / 1000} s budget (${fmtRate(L.populate.rowsPerSec)}); phases 2-5 used the ${fmtRows(lr)} rows populated by then`;
    notes.push(msg);
    progress(msg);
  }
  add('2', `populate: first push of every row, ${opts.inflight} in flight, ${SMALL_CACHE_MB} MiB cache`, ml, lr, fmtRate(L.populate.rowsPerSec));
  for (const dist of ['uniform', 'zipf'] as const) {
    const d = L.phase2[dist];
    const name = dist === 'uniform' ? 'uniform keys' : `Zipf(${opts.zipfS}) keys`;
    add('2', `${name}: pull rows/s, ${opts.inflight} in flight; cache hit ratio`, ml, lr, `${fmtRate(d.pullRowsPerSec)}; hits ${pct(d.pullHitRatio)}`);
    const pushHits = d.pushDelta.hits + d.pushDelta.misses > 0 ? `hits ${pct(d.pushHitRatio)}` : `hits not counted by stats() for pushes`;
    add(
      '2',
      `${name}: push rows/s, ${opts.inflight} in flight; cache hit ratio`,
      ml,
      lr,
      `${fmtRate(d.pushRowsPerSec)}; ${pushHits}; ${d.pushDelta.evictions} evictions, ${d.pushDelta.writebacks} write-backs`,
    );
  }
  notes.push(
    `phase 2 (${ml}): ${warmBatches} warm-up pulls, then ${opts.measureBatches} pulls and ${opts.measureBatches} pushes of ${BATCH} keys per distribution, keys made before timing; ` +
      `hit ratio = hits / (hits + misses) from stats() deltas; Zipf batches repeat hot keys within a batch, rows/s counts keys as sent. ` +
      `Cache after Zipf: ${L.phase2.zipf.cacheRows} rows, ${fmtBytes(L.phase2.zipf.cacheBytes)}. A checkpoint after each distribution flushes what it dirtied ` +
      `(uniform ${fmtMs(L.phase2.uniform.checkpointAfterMs)}, Zipf ${fmtMs(L.phase2.zipf.checkpointAfterMs)}), so Zipf does not pay uniform's write-backs. isPmem=${L.isPmem}; pool used ${L.poolUsedPerRow.toFixed(0)} B/row`,
  );

  // ---- phases 4/5 on the large pool (closed cleanly by the worker)
  const largeRestart = await restart(m, dir, lr, poolMb, 'large');
  rmDir(dir);

  // ---- phase 3's reference: a full dump on the same medium (after the pool is gone, so both need not fit at once)
  const D = await dump(m, lr);
  const p3 = L.phase3;
  add(
    '3',
    `full dump: ${fmtRows(lr)} x ${DIM * 2} float32 (weights + Adagrad state), write + fsync`,
    ml,
    lr,
    `${fmtMs(D.ms)} (median of ${D.runs}; ${fmtBytes(D.bytes)}, ${(D.bytes / MiB / (D.ms / 1000)).toFixed(0)} MiB/s${D.extrapolated ? `; measured on ${fmtBytes(D.measuredBytes)} and scaled` : ''})`,
  );
  const fc = L.firstCheckpoint;
  add(
    '3',
    'first checkpoint after populating (every row dirty): prepare + commit',
    ml,
    lr,
    `${fmtMs(fc.totalMs)} (prepare ${fmtMs(fc.prepareMs)}, commit ${fmtMs(fc.commitMs)}) = ${pct(fc.totalMs / D.ms)} of the dump` + prepPhases(fc.phases),
  );
  for (const [k, frac] of [
    ['dirty1', '1%'],
    ['dirty10', '10%'],
  ] as const) {
    const c = p3[k];
    const ratio = c.totalMs / D.ms;
    const target = k === 'dirty1' && m.key === 'shm' ? '≤ 5% of dump' : '';
    add(
      '3',
      `checkpoint after dirtying ${frac} (${fmtRows(c.dirtyRows)} rows): prepare + commit, vs dump`,
      ml,
      lr,
      `${fmtMs(c.totalMs)} (prepare ${fmtMs(c.prepareMs)}, commit ${fmtMs(c.commitMs)}) = **${pct(ratio)}** of the dump` + prepPhases(c.phases),
      target,
      target ? ratio <= 0.05 : null,
    );
  }
  const lat = p3.latency;
  const ratios: number[] = (lat.pairs ?? [lat]).map((p: any) => p.duringPrepare.p99Ms / p.noCheckpoint.p99Ms);
  const medianRatio = lat.duringPrepare.p99Ms / lat.noCheckpoint.p99Ms;
  add(
    '3',
    `push latency (1 in flight) while a checkpoint of 10% dirty rows is prepared, vs none` +
      (ratios.length > 1 ? ` (the median of ${ratios.length} pairs of windows)` : ''),
    ml,
    lr,
    `max ${fmtMs(lat.duringPrepare.maxMs)}, p99 ${fmtMs(lat.duringPrepare.p99Ms)} (${lat.duringPrepare.overlapping} pushes over a ${fmtMs(lat.duringPrepare.prepareMs)} prepare) vs ` +
      `max ${fmtMs(lat.noCheckpoint.maxMs)}, p99 ${fmtMs(lat.noCheckpoint.p99Ms)} without: p99 **${medianRatio.toFixed(2)}x**` +
      (ratios.length > 1 ? ` (pairs: ${ratios.map((r) => r.toFixed(2) + 'x').join(', ')})` : '') +
      `; stats().maxPushWaitUs ${lat.maxPushWaitUsAfter} µs (the longest over all ${ratios.length} prepares)`,
    m.key === 'shm' ? 'p99 ≤ 1.2x, wait ≤ 1,000 µs' : '',
    m.key === 'shm' ? medianRatio <= 1.2 && lat.maxPushWaitUsAfter <= 1000 : null,
  );
  const sp = p3.space;
  spacePerRow[m.key] = sp.poolUsedBytes / lr;
  const inPlace = m.layout === 'logged' ? spacePerRow[m.key.replace('-logged', '')] : undefined;
  add(
    '3',
    m.layout === 'logged'
      ? `pool space after 10 checkpoint cycles of 10% dirty rows (bytes in use per row)`
      : `pool space after the checkpoints above (bytes in use per row; rows have three versions' room from the start)`,
    ml,
    lr,
    `${fmtBytes(sp.poolUsedBytes)} = ${(sp.poolUsedBytes / lr).toFixed(0)} B/row` +
      (m.layout === 'logged' ? `; log ${fmtBytes(sp.logBytes)}, compaction freed ${sp.logSegmentsFreed} segments, copied ${fmtBytes(sp.logBytesCopied)}` : '') +
      (sp.logBytesWarmed ? `; ${fmtBytes(sp.logBytesWarmed)} of new segments read ahead since open` : '') +
      (inPlace ? `; **${(sp.poolUsedBytes / lr / inPlace).toFixed(2)}x** the in-place pool's of this run` : '') +
      (sp.cycles ? `; the 10 checkpoints took ${sp.checkpointMs.map((x: number) => fmtMs(x)).join(', ')}${slowestCycle(sp)}` : ''),
    m.layout === 'logged' && inPlace ? '≤ 1.5x in place' : '',
    m.layout === 'logged' && inPlace ? sp.poolUsedBytes / lr / inPlace <= 1.5 : null,
  );
  notes.push(
    `phase 3 (${ml}): the latency pusher has 1 push in flight and cycles over 64 batches of uniform keys (~262k rows, cache-resident after one warm pass), ` +
      `so the two windows differ only by the checkpoint; the window without one lasts ${fmtMs(lat.noCheckpoint.wallMs)}. ` +
      `maxPushWaitUs was ${p3.latency.maxPushWaitUsBefore} µs before the concurrent checkpoint and ${p3.latency.maxPushWaitUsAfter} µs after it; ` +
      `close after phase 3: ${fmtMs(L.closeMs)}`,
  );

  renderRestarts(m, small?.rows ?? 0, smallRestart, lr, largeRestart);
  rmDir(m.base);
  ownedDirs.delete(m.base);
}

// ---------------------------------------------------------------- report

/** Busy CPU ticks of the whole machine and of this process plus its reaped children (USER_HZ ticks). */
function cpuTicks(): { busy: number; ours: number; load1: string } {
  const cpu = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = cpu[3] + cpu[4];
  // fields after the ")" of /proc/self/stat: utime stime cutime cstime are the 12th..15th
  const st = fs.readFileSync('/proc/self/stat', 'utf8');
  const f = st
    .slice(st.lastIndexOf(')') + 2)
    .split(' ')
    .map(Number);
  const ours = f[11] + f[12] + f[13] + f[14];
  return { busy: total - idle, ours, load1: fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0] };
}
const CPU0 = cpuTicks();

function loadLine(wallMs: number): string {
  const now = cpuTicks();
  const hz = 100;
  const other = Math.max(0, (now.busy - CPU0.busy - (now.ours - CPU0.ours)) / hz);
  const cores = Number(machineInfo().cores) || 1;
  return (
    `- machine load: 1-min load average ${CPU0.load1} at the start, ${now.load1} at the end; everything outside this benchmark's processes ` +
    `(other programs, kernel threads such as page write-back) used ${other.toFixed(1)} CPU-seconds during the run, ${((100 * other) / ((wallMs / 1000) * cores)).toFixed(0)}% of all cores`
  );
}

function gitDescribe(): string {
  try {
    const h = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain'], { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() !== '';
    return `${h}${dirty ? ' + uncommitted changes' : ''}`;
  } catch {
    return 'unknown';
  }
}

function render(machine: Record<string, string>, wallMs: number, status: string): string {
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  const lines: string[] = [];
  lines.push('# pmemps engine benchmark', '');
  lines.push(`- machine: ${machine.cpu}, ${machine.cores} cores, ${machine.ram} RAM, ${machine.kernel}, node ${machine.node}`);
  lines.push(`- date: ${machine.date}; commit ${gitDescribe()}; ${opts.quick ? '**quick run** (`--quick`)' : 'full run'}; took ${fmtMs(wallMs)}; ${status}`);
  lines.push(loadLine(wallMs));
  lines.push(`- machine stalls before the run: ${machine.stalls}`);
  lines.push(
    `- workload: dim ${DIM}, Adagrad (lr ${TABLE.optimizer.lr}), normal(0, ${TABLE.initializer.std}) init, batches of ${BATCH} keys; ` +
      `"${opts.inflight} in flight" = ${opts.inflight} requests outstanding from one JS thread, run on libuv's pool (UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? '4, the default'})`,
  );
  lines.push(
    `- media: **shm** = pool under /dev/shm with PMEM_IS_PMEM_FORCE=1 (emulated PMEM: cache-line flushes, no msync); ` +
      `**disk** = pool under ./.bench-data on the project's own filesystem (${fsTypeOf(REPO)}), PMEM_IS_PMEM_FORCE unset (msync path); ` +
      `**, logged** = the same medium with pools of the logged row layout (versions in the log, 56-byte row records), else in place`,
  );
  lines.push(
    `- sizes: small table ${fmtRows(opts.rowsSmall)} rows (phase 1 cache ${opts.phase1CacheMb} MiB, both engines), large table ${fmtRows(opts.rowsLarge)} rows, ` +
      `phases 2-5 cache ${SMALL_CACHE_MB} MiB; pool = rows x ${poolBytesPerRow() + INDEX_BYTES_PER_ROW} B x ${opts.headroom} + 256 MiB; ` +
      `phase 1: ${opts.reps} alternating repetitions of ${opts.durMs} ms per engine and mode, medians; rows shown are the rows actually used`,
  );
  lines.push(
    `- phases 4/5 reuse the pools of phases 1 and 2-3: a writer process opens the populated pool, pushes, commits a checkpoint, keeps pushing and is SIGKILLed ${opts.killDelayMs} ms later; ` +
      `a new process then opens the pool and pulls ${BATCH} keys (timed from spawn; ${opts.restarts} kill/restart cycles, median); the last one then pulls ${fmtRows(workingSetRows)} distinct random rows, pushes a quarter of them and reads /proc/self/smaps. ` +
      `The kernel's page cache is not dropped, so on disk the restarted process finds the pool's pages cached`,
  );
  lines.push('');
  lines.push('| # | measurement | medium | rows | value | target | met |');
  lines.push('|---|---|---|---|---|---|---|');
  // grouped by phase; within a phase, in the order measured (shm before disk)
  const byPhase = table
    .map((r, i) => ({ r, i }))
    .sort((a, b) => parseInt(a.r.phase, 10) - parseInt(b.r.phase, 10) || a.i - b.i)
    .map((x) => x.r);
  for (const r of byPhase) lines.push(`| ${r.phase} | ${esc(r.what)} | ${r.medium} | ${r.rows} | ${esc(r.value)} | ${esc(r.target)} | ${r.met} |`);
  if (notes.length) {
    lines.push('', 'Notes:', '');
    for (const n of notes) lines.push(`- ${n}`);
  }
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  const machine = machineInfo();
  // Before anything runs: the machine's own stalls bound what a maximum
  // over thousands of pushes (maxPushWaitUs) can show.
  machine.stalls = fmtStalls(stallProbe(opts.quick ? 2 : 10));
  removeStale();
  for (const m of mediaKeys) {
    const dir = MEDIA[m as MediumKey].base;
    fs.mkdirSync(path.dirname(dir), { recursive: true });
  }
  for (const f of ['engine-worker.js', 'ttfp-child.js']) {
    if (!fs.existsSync(path.join(__dirname, f))) throw new Error(`${f} is missing next to this script; run npx tsc -p tsconfig.json`);
  }
  if (!fs.existsSync(path.join(REPO, 'build', 'Release', 'pmemps_native.node')))
    throw new Error('build/Release/pmemps_native.node is missing; build the addon first');

  let status = 'completed';
  let err: unknown = null;
  try {
    const baseline = await nodeBaseline();
    baselineRss = baseline.nonPoolRss;
    add(
      '5',
      'Rss of an empty node process (for context)',
      '—',
      '—',
      `${fmtBytes(baseline.nonPoolRss)} = [heap] ${fmtBytes(baseline.split.heap)} + anonymous ${fmtBytes(baseline.split.anon)} + files ${fmtBytes(baseline.split.files)} + other ${fmtBytes(baseline.split.misc)}`,
    );
    for (const m of mediaKeys) await runMedium(MEDIA[m as MediumKey]);
  } catch (e) {
    err = e;
    status = `**FAILED**: ${String((e as Error)?.message ?? e).split('\n')[0]}`;
  }
  if (correctnessFailures > 0 && !err) status = `**engine correctness check failed** (${correctnessFailures})`;
  const out = render(machine, performance.now() - T0, status);
  process.stdout.write('\n' + out);
  if (err) {
    progress(`not writing ${shown(opts.out)}: the run failed`);
    throw err;
  }
  fs.mkdirSync(path.dirname(opts.out), { recursive: true });
  fs.writeFileSync(opts.out, out);
  progress(`results written to ${shown(opts.out)}`);
  if (correctnessFailures > 0) process.exitCode = 3;
}

main().catch((e) => {
  process.stderr.write(`benchmark failed: ${(e as Error)?.stack ?? e}\n`);
  cleanupSync();
  process.exit(1);
});
