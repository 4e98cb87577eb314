// Helpers shared by the engine benchmark's processes: seeded random numbers,
// a Zipf sampler, key/gradient batches, pool sizing, free-space checks,
// /proc/self/smaps accounting and the line protocol between the orchestrator
// (bench/engine.ts) and its children. Nothing here loads the native addon.

import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { keepGcHeadroom } from '../proto/gc-headroom';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

// ---------------------------------------------------------------- the workload

export const DIM = 64;
export const BATCH = 4096;
/** Adagrad keeps one accumulator float per weight. */
export const STATE_FLOATS_PER_WEIGHT = 1;
export const TABLE = {
  name: 'emb',
  dim: DIM,
  optimizer: { type: 'adagrad' as const, lr: 0.05 },
  initializer: { type: 'normal' as const, mean: 0, std: 0.01 },
  seed: 42,
};

/** Bytes one row takes in the pool: 8 B header + three versions of (8 B header + weights + state). */
export function poolBytesPerRow(dim = DIM, stateFloats = STATE_FLOATS_PER_WEIGHT): number {
  return 8 + 3 * (8 + dim * 4 * (1 + stateFloats));
}
/** Upper end of the pool index cost per row. */
export const INDEX_BYTES_PER_ROW = 32;
/** Rough DRAM cost of one cached row (weights + state + bookkeeping); only used to plan memory. */
export function cacheBytesPerRow(dim = DIM, stateFloats = STATE_FLOATS_PER_WEIGHT): number {
  return dim * 4 * (1 + stateFloats) + 96;
}
/** Pool size for `rows` rows: estimate x headroom + 256 MiB, in MiB. */
export function poolMbFor(rows: number, headroom: number): number {
  const est = rows * (poolBytesPerRow() + INDEX_BYTES_PER_ROW);
  return Math.ceil((est * headroom) / MiB + 256);
}
/** Bytes of a full dump: weights + optimizer state as float32. */
export function dumpBytesFor(rows: number): number {
  return rows * DIM * (1 + STATE_FLOATS_PER_WEIGHT) * 4;
}

// ---------------------------------------------------------------- random numbers

/** sfc32: small, fast, seeded; good enough for load generation. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.u32();
  }
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  /** Uniform in [0, 1) with 53 random bits. */
  float(): number {
    return ((this.u32() >>> 5) * 67108864 + (this.u32() >>> 6)) / 9007199254740992;
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
}

/**
 * Zipf(s) over ranks 1..n by rejection-inversion (Hörmann & Derflinger 1996),
 * O(1) memory and a few transcendental calls per sample.
 */
export class ZipfSampler {
  private readonly hX1: number;
  private readonly hN: number;
  private readonly sVal: number;
  constructor(
    private readonly n: number,
    private readonly s: number,
    private readonly rng: Rng,
  ) {
    if (!(n >= 1) || !(s > 0)) throw new Error('ZipfSampler needs n >= 1 and s > 0');
    this.hX1 = this.hIntegral(1.5) - 1;
    this.hN = this.hIntegral(n + 0.5);
    this.sVal = 2 - this.hIntegralInverse(this.hIntegral(2.5) - this.h(2));
  }
  /** A rank in 1..n; rank 1 is the most frequent. */
  sample(): number {
    for (;;) {
      const u = this.hN + this.rng.float() * (this.hX1 - this.hN);
      const x = this.hIntegralInverse(u);
      let k = Math.floor(x + 0.5);
      if (k < 1) k = 1;
      else if (k > this.n) k = this.n;
      if (k - x <= this.sVal || u >= this.hIntegral(k + 0.5) - this.h(k)) return k;
    }
  }
  private h(x: number): number {
    return Math.exp(-this.s * Math.log(x));
  }
  private hIntegral(x: number): number {
    const logX = Math.log(x);
    return helper2((1 - this.s) * logX) * logX;
  }
  private hIntegralInverse(x: number): number {
    let t = x * (1 - this.s);
    if (t < -1) t = -1;
    return Math.exp(helper1(t) * x);
  }
}
function helper1(x: number): number {
  return Math.abs(x) > 1e-8 ? Math.log1p(x) / x : 1 - x * (0.5 - x * (1 / 3 - 0.25 * x));
}
function helper2(x: number): number {
  return Math.abs(x) > 1e-8 ? Math.expm1(x) / x : 1 + x * 0.5 * (1 + (x / 3) * (1 + 0.25 * x));
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}

/**
 * A bijection of 0..n-1 (i -> (i*p + off) mod n with p coprime to n): spreads
 * Zipf ranks over the key space and gives distinct "random-looking" key sets.
 */
export class Scatter {
  readonly p: number;
  constructor(
    readonly n: number,
    readonly off = 0,
  ) {
    let p = 1000003; // prime; i*p stays below 2^53 for n up to ~9e9
    while (gcd(p, n) !== 1) p += 2;
    this.p = p;
  }
  at(i: number): number {
    return ((((i % this.n) * this.p) % this.n) + this.off) % this.n;
  }
}

// ---------------------------------------------------------------- batches

/** A packed little-endian uint64 key buffer for keys below 2^32. */
export function keyBuffer(keys: ArrayLike<number>): Buffer {
  const b = Buffer.alloc(keys.length * 8);
  const u = new Uint32Array(b.buffer, b.byteOffset, keys.length * 2);
  for (let i = 0; i < keys.length; i++) u[2 * i] = keys[i];
  return b;
}

export function uniformBatch(rng: Rng, rows: number, n = BATCH): Buffer {
  const k = new Array<number>(n);
  for (let i = 0; i < n; i++) k[i] = rng.int(rows);
  return keyBuffer(k);
}

export function zipfBatch(z: ZipfSampler, scatter: Scatter, n = BATCH): Buffer {
  const k = new Array<number>(n);
  for (let i = 0; i < n; i++) k[i] = scatter.at(z.sample() - 1);
  return keyBuffer(k);
}

/** Keys scatter.at(from) .. scatter.at(from+n-1): distinct as long as from+n <= rows. */
export function scatterBatch(scatter: Scatter, from: number, n = BATCH): Buffer {
  const k = new Array<number>(n);
  for (let i = 0; i < n; i++) k[i] = scatter.at(from + i);
  return keyBuffer(k);
}

export function rangeBatch(from: number, n: number): Buffer {
  const k = new Array<number>(n);
  for (let i = 0; i < n; i++) k[i] = from + i;
  return keyBuffer(k);
}

/** A few gradient buffers of BATCH x DIM small random floats, reused round-robin. */
export function gradBuffers(seed: number, count = 4, n = BATCH): Buffer[] {
  const rng = new Rng(seed);
  const out: Buffer[] = [];
  for (let c = 0; c < count; c++) {
    const f = new Float32Array(n * DIM);
    for (let i = 0; i < f.length; i++) f[i] = (rng.float() - 0.5) * 0.02;
    out.push(Buffer.from(f.buffer));
  }
  return out;
}

// ---------------------------------------------------------------- statistics

export function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/**
 * Runs `op(i)` for i = 0, 1, 2, ... with `inflight` calls outstanding until
 * `stop()` says so (checked before each new call), then waits for the rest.
 * Returns the number of completed calls and the wall time in seconds.
 */
export async function drive(
  inflight: number,
  op: (i: number) => Promise<unknown>,
  stop: (started: number, elapsedMs: number) => boolean,
  onLatency?: (startMs: number, endMs: number) => void,
): Promise<{ calls: number; secs: number }> {
  const t0 = performance.now();
  let next = 0;
  let done = 0;
  let failure: unknown = null;
  const lane = async (): Promise<void> => {
    while (failure === null && !stop(next, performance.now() - t0)) {
      const i = next++;
      const s = performance.now();
      try {
        await op(i);
      } catch (e) {
        failure ??= e;
        return;
      }
      if (onLatency) onLatency(s, performance.now());
      done++;
    }
  };
  await Promise.all(Array.from({ length: inflight }, lane));
  if (failure !== null) throw failure;
  return { calls: done, secs: (performance.now() - t0) / 1000 };
}

// ---------------------------------------------------------------- the machine

export function memInfoBytes(field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

export function memAvailable(): number {
  return memInfoBytes('MemAvailable');
}

export function fsAvailable(dir: string): number {
  const s = fs.statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** The memory limit of this process's cgroup-v1 memory group (page cache included), when below the machine's RAM; else null. */
export function memcgLimit(): number | null {
  try {
    const group = fs
      .readFileSync('/proc/self/cgroup', 'utf8')
      .split('\n')
      .find((l) => /^\d+:memory:/.test(l))
      ?.split(':')[2];
    if (group === undefined) return null;
    const limit = Number(fs.readFileSync(`/sys/fs/cgroup/memory${group}/memory.limit_in_bytes`, 'utf8'));
    return limit < memInfoBytes('MemTotal') ? limit : null;
  } catch {
    return null;
  }
}

export interface Stalls {
  seconds: number;
  over500us: number;
  over1ms: number;
  longestMs: number;
}

/**
 * Stalls of the machine itself: a loop that only reads the clock counts
 * the gaps between two reads, on one core of an otherwise idle machine. On
 * a virtual machine a vCPU the host takes away (or a host page fault)
 * shows up as such a gap, and lands alike inside whatever a process was
 * doing: a push's 0.5 ms copy that took 5.6 ms with its thread's CPU clock
 * advancing 5.6 ms and no page fault was one (BENCHMARKS.md). It allocates
 * nothing, so V8's GC does not run in it.
 */
export function stallProbe(seconds: number): Stalls {
  const r: Stalls = { seconds, over500us: 0, over1ms: 0, longestMs: 0 };
  const end = performance.now() + seconds * 1000;
  let last = performance.now();
  for (;;) {
    const t = performance.now();
    const gap = t - last;
    if (gap > 0.5) {
      r.over500us++;
      if (gap > 1) r.over1ms++;
      if (gap > r.longestMs) r.longestMs = gap;
    }
    last = t;
    if (t > end) return r;
  }
}

export function fmtStalls(s: Stalls): string {
  return `${s.over500us} gaps over 0.5 ms, ${s.over1ms} over 1 ms, the longest ${s.longestMs.toFixed(2)} ms in ${s.seconds} s of a loop reading the clock on an idle core`;
}

export function machineInfo(): Record<string, string> {
  const cpu = /^model name\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? os.cpus()[0]?.model ?? '?';
  const limit = memcgLimit();
  return {
    cpu,
    cores: String(os.availableParallelism?.() ?? os.cpus().length),
    ram:
      `${(memInfoBytes('MemTotal') / GiB).toFixed(1)} GiB` +
      (limit !== null ? ` (this run in a memory cgroup of ${(limit / GiB).toFixed(1)} GiB, page cache included: scripts/memcg-run.sh)` : ''),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    date: new Date().toISOString(),
  };
}

export interface RssSplit {
  /** Rss of every mapping except those of files under the excluded directory. */
  other: number;
  /** Rss of the mappings of files under the excluded directory (the pool). */
  excluded: number;
  excludedMappings: number;
  /** Parts of `other`: the brk heap, anonymous mappings (malloc arenas, V8, thread stacks), file mappings (node, libraries), the rest. */
  heap: number;
  anon: number;
  files: number;
  misc: number;
}

/** Sums Rss over /proc/<pid>/smaps, split into the mappings of files under `excludeDir` and the rest. */
export function smapsRss(excludeDir: string | null, pid: number | 'self' = 'self'): RssSplit {
  const text = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8');
  const r: RssSplit = { other: 0, excluded: 0, excludedMappings: 0, heap: 0, anon: 0, files: 0, misc: 0 };
  let kind: 'excluded' | 'heap' | 'anon' | 'files' | 'misc' = 'misc';
  const prefix = excludeDir ? excludeDir.replace(/\/+$/, '') + '/' : null;
  for (const line of text.split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+\s+\S+\s+\S+\s+\S+\s+\S+\s*(.*)$/.exec(line);
    if (head) {
      const file = head[1];
      if (prefix !== null && file.startsWith(prefix)) {
        kind = 'excluded';
        r.excludedMappings++;
      } else if (file === '[heap]') kind = 'heap';
      else if (file === '' || file.startsWith('[anon')) kind = 'anon';
      else if (file.startsWith('/')) kind = 'files';
      else kind = 'misc';
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) {
      const b = Number(rss[1]) * 1024;
      r[kind] += b;
      if (kind !== 'excluded') r.other += b;
    }
  }
  return r;
}

// ---------------------------------------------------------------- formatting

export function fmtRate(rowsPerSec: number): string {
  if (!Number.isFinite(rowsPerSec)) return 'n/a';
  if (rowsPerSec >= 1e6) return `${(rowsPerSec / 1e6).toFixed(2)} M rows/s`;
  return `${(rowsPerSec / 1e3).toFixed(0)} k rows/s`;
}
export function fmtRows(n: number): string {
  if (n >= 1e6 && n % 1e5 === 0) return `${n / 1e6}M`;
  if (n >= 1e3 && n % 100 === 0) return `${n / 1e3}k`;
  return String(n);
}
export function fmtBytes(b: number): string {
  if (!Number.isFinite(b)) return 'n/a';
  if (b >= GiB) return `${(b / GiB).toFixed(2)} GiB`;
  return `${(b / MiB).toFixed(1)} MiB`;
}
export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return 'n/a';
  if (ms >= 10000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(0)} ms`;
  return `${ms.toFixed(2)} ms`;
}

// ---------------------------------------------------------------- child protocol

/** Children print one `@@<TAG> <json>` line per result on stdout; logs go to stderr. */
export function emit(tag: string, obj: unknown): void {
  process.stdout.write(`@@${tag} ${JSON.stringify(obj)}\n`);
}

export function log(msg: string): void {
  process.stderr.write(`[${process.argv[1]?.split('/').pop()?.replace(/\.js$/, '') ?? 'bench'} ${process.pid}] ${msg}\n`);
}

/** A child exits when its parent goes away (its stdin pipe closes), so a killed orchestrator leaves nothing running. */
export function dieWithParent(): void {
  process.stdin.on('end', () => process.exit(70));
  process.stdin.on('close', () => process.exit(70));
  process.stdin.on('error', () => process.exit(70));
  process.stdin.resume();
}

/** Whether something accepts TCP connections on 127.0.0.1:port (a child server is up). */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/**
 * The command line of a benchmark's child server (`SCRIPT --serve [--dim N]
 * [--max-keys N]`): its dim and key limit; exits 2 with the usage otherwise.
 * The process exits when its stdin closes (the parent went away).
 */
export function childServerArgs(script: string): { dim: number; maxKeys: number } {
  const args = process.argv.slice(2);
  if (!args.includes('--serve')) {
    process.stderr.write(`usage: node dist/bench/${script} --serve [--dim 64] [--max-keys 65536]\n`);
    process.exit(2);
  }
  const opt = (name: string, def: number): number => {
    const i = args.indexOf(name);
    return i >= 0 ? Number(args[i + 1]) : def;
  };
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
  return { dim: opt('--dim', 64), maxKeys: opt('--max-keys', 65536) };
}

/**
 * `--build LABEL=DIR` values (DIR: a directory holding this repository's
 * dist/ and build/), resolved; `self` is the build used when none is given.
 */
export function parseBuilds(values: string[] | undefined, self: string): Array<{ label: string; root: string }> {
  return (values?.length ? values : [`this=${self}`]).map((b) => {
    const i = b.indexOf('=');
    if (i <= 0) throw new Error(`--build takes LABEL=DIR, got "${b}"`);
    return { label: b.slice(0, i), root: path.resolve(b.slice(i + 1)) };
  });
}

/** In a peer's process of the service benchmark: the SDK's GC headroom when the run asked for it (--gc-headroom-peers). */
export function peerGcHeadroom(): void {
  if (process.env.PMEMPS_BENCH_PEER_GC_HEADROOM === '1') keepGcHeadroom();
}
