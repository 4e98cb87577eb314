// Shared machinery of the crash-consistency tests (test/crash.test.ts,
// test/restart.test.ts, test/crash.soak.ts) and of their child process
// (test/crash.child.ts):
//
//  - a seeded PRNG and a deterministic operation generator: every push batch,
//    gradient, learning rate, dense tensor and meta blob is a pure function of
//    a seed, so a parent and its child produce identical operations from a
//    compact JSON description;
//  - the reference: a memoryOnly engine (same optimizer code, no pool) fed the
//    same operations up to the checkpoint the reopened pool reports;
//  - bit-for-bit comparison of rows, optimizer state (through one further
//    identical push), hyperparameters, dense tensors and meta;
//  - the scenario runner: spawn a child on a pool, kill it (named failpoint,
//    seeded operation count, or a parent timer), reopen, check, repeat.
//
// Nothing here uses Math.random: a scenario is reproduced from its JSON.

import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Engine, EngineError, failpoints } from '../native/engine';
import type { CheckpointContent, OpenInfo, PoolLayout, PrepareInput, TableInfo, TableSpec } from '../native/engine';

// ---------------------------------------------------------------------------
// PRNG

/** mulberry32: small, fast, good enough for test data; state is one uint32. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }
  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.float() < p;
  }
  pick<T>(arr: readonly T[]): T {
    return arr[Math.floor(this.float() * arr.length)];
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
}

/** Hashes small non-negative integers into a uint32 seed. */
export function mix(...xs: number[]): number {
  let h = 0x9e3779b9;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0) ^ Math.floor(x / 4294967296), 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
  }
  return h >>> 0;
}

// ---------------------------------------------------------------------------
// Keys, tables, payloads

export const U64_MAX = (1n << 64n) - 1n;

function packU64(keys: readonly bigint[]): Buffer {
  const b = Buffer.alloc(keys.length * 8);
  for (let i = 0; i < keys.length; i++) b.writeBigUInt64LE(keys[i], i * 8);
  return b;
}

/** 2000 distinct keys, including 0 and 2^64-1 (indices 0 and 1: the most frequently pushed). */
export const UNIVERSE: readonly bigint[] = (() => {
  const r = new Rng(0xc0ffee);
  const fixed = [0n, U64_MAX, 1n, 2n, 1n << 63n, (1n << 63n) - 1n, 1n << 32n, (1n << 32n) - 1n, U64_MAX - 1n, 12345n];
  const set = new Set<bigint>(fixed);
  while (set.size < 2000) set.add(r.chance(0.3) ? BigInt(r.int(0, 100000)) : r.u64());
  return [...set];
})();
export const UNIVERSE_KEYS: Buffer = packU64(UNIVERSE);

/**
 * 60000 keys (the 2000 above first) for table k2: enough distinct keys in one
 * table to split its index segments (16382 slots each at the time of writing).
 */
export const BIG_UNIVERSE: readonly bigint[] = (() => {
  const r = new Rng(0xb16);
  const set = new Set<bigint>(UNIVERSE);
  while (set.size < 60000) set.add(r.u64());
  return [...set];
})();
const BIG_UNIVERSE_KEYS: Buffer = packU64(BIG_UNIVERSE);

/** The keys a table's pushes draw from, and the keys a comparison pulls. */
export function keysOf(t: string): readonly bigint[] {
  return t === 'k2' ? BIG_UNIVERSE : UNIVERSE;
}
export function keysBufOf(t: string): Buffer {
  return t === 'k2' ? BIG_UNIVERSE_KEYS : UNIVERSE_KEYS;
}

/**
 * The tables the generator creates. Different dims and optimizers; f64 and
 * r16 make the working set (~2.3 MB) much larger than the 1-2 MiB caches the
 * children run with, so eviction happens all the time; k2 (stateless SGD,
 * constant initializer) takes its keys from a 60000-key universe so that its
 * index splits.
 */
export const TABLES: Readonly<Record<string, TableSpec>> = {
  a8: {
    name: 'a8',
    dim: 8,
    optimizer: { type: 'adagrad', lr: 0.05, initialAccumulator: 0.1 },
    initializer: { type: 'normal', mean: 0, std: 0.05 },
    seed: 101,
  },
  m4: {
    name: 'm4',
    dim: 4,
    optimizer: { type: 'adam', lr: 0.01 },
    initializer: { type: 'uniform', min: -0.1, max: 0.1 },
    seed: 102,
  },
  s3: {
    name: 's3',
    dim: 3,
    optimizer: { type: 'sgd', lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 1e-4 },
    initializer: { type: 'normal', mean: 0, std: 0.1, truncated: true },
    seed: 103,
  },
  f64: {
    name: 'f64',
    dim: 64,
    optimizer: { type: 'ftrl', lr: 0.05, l1: 0.001, l2: 0.001 },
    initializer: { type: 'zeros' },
    seed: 104,
  },
  r16: {
    name: 'r16',
    dim: 16,
    optimizer: { type: 'rmsprop', lr: 0.01, alpha: 0.9, momentum: 0.5, centered: true },
    initializer: { type: 'uniform', min: -0.05, max: 0.05 },
    seed: 105,
  },
  k2: {
    name: 'k2',
    dim: 2,
    optimizer: { type: 'sgd', lr: 0.5 },
    initializer: { type: 'constant', value: 0.25 },
    seed: 106,
  },
};
export const TABLE_NAMES = Object.keys(TABLES);

/** Draws n keys (with duplicates, skewed towards the first keys of the universe). */
function drawKeys(r: Rng, n: number, universe: readonly bigint[]): bigint[] {
  const out: bigint[] = [];
  for (let i = 0; i < n; i++) {
    const u = r.float();
    const idx = r.chance(0.5) ? Math.floor(u * u * universe.length) : Math.floor(u * universe.length);
    out.push(universe[idx]);
  }
  return out;
}

function grads(r: Rng, count: number): Buffer {
  const f = new Float32Array(count);
  for (let i = 0; i < count; i++) f[i] = r.chance(0.03) ? 0 : Math.fround(r.float() * 2 - 1);
  return Buffer.from(f.buffer);
}

/**
 * Keys and gradients of a push. A `full` push covers every key of the universe
 * (shuffled) plus n duplicates: used after a reopen to expose optimizer state.
 */
export function pushPayload(t: string, n: number, s: number, full = false): { keys: Buffer; grads: Buffer } {
  const spec = TABLES[t];
  if (!spec) throw new Error(`unknown test table ${t}`);
  const r = new Rng(s);
  const universe = keysOf(t);
  let keys: bigint[];
  if (full) {
    keys = universe.slice();
    for (let i = keys.length - 1; i > 0; i--) {
      const j = r.int(0, i);
      [keys[i], keys[j]] = [keys[j], keys[i]];
    }
    keys.push(...drawKeys(r, n, universe));
  } else {
    keys = drawKeys(r, n, universe);
  }
  return { keys: packU64(keys), grads: grads(r, keys.length * spec.dim) };
}

/** Dense tensors and meta of checkpoint `id` prepared with payload seed s. */
export function prepareInput(id: number, s: number): { dense: Map<string, Float32Array>; meta: Buffer } {
  const r = new Rng(s);
  const dense = new Map<string, Float32Array>();
  const mk = (len: number) => {
    const f = new Float32Array(len);
    for (let i = 0; i < len; i++) f[i] = Math.fround((r.float() * 2 - 1) * 4);
    return f;
  };
  dense.set('dense/w', mk(r.int(1, 512)));
  dense.set('dense/b', mk(r.int(1, 16)));
  if (r.chance(0.2)) dense.set('dense/empty', mk(0));
  const meta = r.chance(0.1) ? Buffer.alloc(0) : Buffer.from(JSON.stringify({ step: s % 1000003, id }));
  return { dense, meta };
}

// ---------------------------------------------------------------------------
// Operations

export type PushDesc = { t: string; n: number; s: number };

export type Op =
  | { k: 'create'; t: string }
  | { k: 'push'; t: string; n: number; s: number; full?: boolean }
  | { k: 'ppush'; p: PushDesc[] }
  | { k: 'lr'; t: string; lr: number }
  /**
   * `during`: createTable/updateTable calls, then pushes (one per table), all
   * issued right after prepare() returned and while its flush runs. The
   * boundary is taken inside the prepare() call, so they are outside the
   * checkpoint; the reference applies them after awaiting prepare.
   */
  | { k: 'prepare'; id: number; s: number; retry?: boolean; during?: Op[] }
  | { k: 'commit'; id: number; retry?: boolean }
  | { k: 'abort'; id: number }
  | { k: 'rollback' }
  | { k: 'close' };

export function describeOp(op: Op): string {
  switch (op.k) {
    case 'create':
      return `createTable ${op.t}`;
    case 'push':
      return `push ${op.t} (${op.full ? 'all keys + ' : ''}${op.n} keys, seed ${op.s})`;
    case 'ppush':
      return `concurrent pushes ${op.p.map((p) => p.t).join('+')}`;
    case 'lr':
      return `updateTable ${op.t} lr=${op.lr}`;
    case 'prepare':
      return `prepare ${op.id}${op.retry ? ' (retry)' : ''}${op.during ? ` with ${op.during.map(describeOp).join(', ')} issued during its flush` : ''}`;
    case 'commit':
      return `commit ${op.id}${op.retry ? ' (retry)' : ''}`;
    case 'abort':
      return `abort ${op.id}`;
    case 'rollback':
      return 'rollback';
    case 'close':
      return 'close';
  }
}

/**
 * Applies one operation. `log` (the child's progress file) gets a line before
 * each checkpoint/close call is issued and one after it resolved, so the
 * parent knows which checkpoint ids may have become durable. Returns once the
 * operation resolved; the native call itself is issued synchronously (before
 * the first await), which the child's op-count kill relies on.
 */
export async function applyOp(e: Engine, op: Op, log?: (line: string) => void, reference = false): Promise<void> {
  switch (op.k) {
    case 'create':
      e.createTable(TABLES[op.t]);
      return;
    case 'push': {
      const p = pushPayload(op.t, op.n, op.s, op.full);
      await e.push(op.t, p.keys, p.grads);
      return;
    }
    case 'ppush':
      await Promise.all(
        op.p.map((d) => {
          const p = pushPayload(d.t, d.n, d.s);
          return e.push(d.t, p.keys, p.grads);
        }),
      );
      return;
    case 'lr':
      e.updateTable(op.t, { lr: op.lr });
      return;
    case 'prepare': {
      log?.(`attempt-prepare ${op.id}`);
      if (reference || !op.during) {
        await e.prepare(op.id, prepareInput(op.id, op.s));
        log?.(`prepared ${op.id}`);
        for (const d of op.during ?? []) await applyOp(e, d, log, reference);
        return;
      }
      const all = [e.prepare(op.id, prepareInput(op.id, op.s)).then(() => log?.(`prepared ${op.id}`))];
      for (const d of op.during) all.push(applyOp(e, d, log));
      await Promise.all(all);
      return;
    }
    case 'commit':
      log?.(`attempt-commit ${op.id}`);
      await e.commit(op.id);
      log?.(`committed ${op.id}`);
      return;
    case 'abort':
      log?.(`attempt-abort ${op.id}`);
      await e.abort(op.id);
      log?.(`aborted ${op.id}`);
      return;
    case 'rollback':
      log?.('attempt-rollback');
      await e.rollback();
      log?.('rolledback');
      return;
    case 'close':
      if (reference) return; // the reference lives on: the pool's state after a clean close is the latest one
      log?.('attempt-close');
      await e.close();
      log?.('closed');
      return;
  }
}

/** Steers the generator towards what a failpoint needs. */
export type Bias = 'abort' | 'rollback' | 'create' | 'evict' | 'index' | undefined;

export interface GenInit {
  /** Tables that exist when the generation starts. */
  tables: string[];
  /** Tables of the committed checkpoint (what a rollback returns to); null when nothing is committed. */
  committedTables: string[] | null;
  committed: number | null;
  /** Smallest checkpoint id the generation may use. */
  nextId: number;
  bias?: Bias;
}

export interface GenResult {
  ops: Op[];
  /** State of the model after all ops ran (and the pool was closed cleanly). */
  endTables: string[];
  endCommittedTables: string[] | null;
  endCommitted: number | null;
  nextId: number;
}

/**
 * The seeded operation sequence of one child run. Keeps a model of which
 * tables exist and which are in the committed checkpoint (so pushes go to
 * existing tables after a rollback), never has two prepared checkpoints at
 * once, puts pushes/updates/creates between prepare and commit (they must not
 * be in the checkpoint), resolves the last prepared id and ends with close.
 */
export function genOps(seed: number, init: GenInit): GenResult {
  const r = new Rng(seed);
  const ops: Op[] = [];
  let tables = new Set(init.tables);
  let committedTables = init.committedTables ? new Set(init.committedTables) : null;
  let committed = init.committed;
  let nextId = init.nextId;
  let pending: { id: number; s: number; tables: Set<string> } | null = null;
  const nOps = r.int(50, 110);
  const pAbort = init.bias === 'abort' ? 0.25 : 0.08;
  const pRollback = init.bias === 'rollback' ? 0.12 : 0.04;
  // Evictions persist their write-backs only once thousands of ranges are
  // pending, which prepares keep draining: checkpoint less under 'evict'.
  const pPrepare = init.bias === 'evict' ? 0.03 : 0.14;

  const pBig = init.bias === 'evict' ? 0.6 : 0.25;
  if (tables.size === 0) {
    const first = ['a8', 'm4', 's3'];
    if (r.chance(0.5) || init.bias === 'create' || init.bias === 'evict') first.push('f64');
    if (r.chance(0.3) || init.bias === 'create' || init.bias === 'index') first.push('k2');
    for (let i = first.length - 1; i > 0; i--) {
      const j = r.int(0, i);
      [first[i], first[j]] = [first[j], first[i]];
    }
    for (const t of first) {
      ops.push({ k: 'create', t });
      tables.add(t);
    }
  }
  const push = (): Op => {
    const t = init.bias === 'index' && tables.has('k2') && r.chance(0.5) ? 'k2' : r.pick([...tables]);
    const n = t === 'k2' ? (init.bias === 'index' ? r.int(4000, 12000) : r.int(300, 3000)) : r.chance(pBig) ? r.int(200, 1000) : r.int(1, 128);
    return { k: 'push', t, n, s: r.u32() };
  };
  const missing = () => TABLE_NAMES.filter((t) => !tables.has(t));
  const create = (): Op | null => {
    const m = missing();
    if (m.length === 0) return null;
    const t = r.pick(m);
    tables.add(t);
    return { k: 'create', t };
  };

  while (ops.length < nOps) {
    if (tables.size === 0) {
      ops.push(create() as Op);
      continue;
    }
    const x = r.float();
    if (pending) {
      if (x < 0.3) {
        ops.push({ k: 'commit', id: pending.id });
        committed = pending.id;
        committedTables = pending.tables;
        if (r.chance(0.15)) ops.push({ k: 'commit', id: pending.id, retry: true });
        pending = null;
      } else if (x < 0.3 + pAbort) {
        ops.push({ k: 'abort', id: pending.id });
        pending = null;
      } else if (x < 0.35 + pAbort) {
        ops.push({ k: 'prepare', id: pending.id, s: pending.s, retry: true });
      } else if (x < 0.4 + pAbort) {
        ops.push({ k: 'lr', t: r.pick([...tables]), lr: Math.fround(0.001 + r.float() * 0.1) });
      } else if (x < 0.43 + pAbort) {
        ops.push(create() ?? push());
      } else {
        ops.push(push());
      }
      continue;
    }
    if (x < 0.55) {
      ops.push(push());
    } else if (x < 0.64) {
      const ts = [...tables].filter(() => r.chance(0.7));
      if (ts.length < 2) ops.push(push());
      else ops.push({ k: 'ppush', p: ts.map((t) => ({ t, n: t === 'k2' ? r.int(100, 1000) : r.int(1, 200), s: r.u32() })) });
    } else if (x < 0.69) {
      ops.push({ k: 'lr', t: r.pick([...tables]), lr: 0.001 + r.float() * 0.1 });
    } else if (x < 0.69 + pPrepare) {
      const id = nextId;
      nextId += r.chance(0.2) ? r.int(2, 5) : 1;
      pending = { id, s: r.u32(), tables: new Set(tables) };
      const op: Op = { k: 'prepare', id, s: pending.s };
      if (r.chance(0.35)) {
        // Sync calls first, then at most one push per table: concurrent
        // pushes to one table, or an lr change racing a push, would make
        // the outcome depend on thread scheduling.
        const during: Op[] = [];
        if (r.chance(0.2)) {
          const c = create();
          if (c) during.push(c);
        }
        if (r.chance(0.3)) during.push({ k: 'lr', t: r.pick([...tables]), lr: 0.001 + r.float() * 0.1 });
        for (const t of tables) {
          if (r.chance(0.5)) during.push({ k: 'push', t, n: t === 'k2' ? r.int(100, 2000) : r.int(1, 300), s: r.u32() });
        }
        if (during.length) op.during = during;
      }
      ops.push(op);
    } else if (x < 0.69 + pPrepare + pRollback) {
      if (committedTables) {
        ops.push({ k: 'rollback' });
        tables = new Set(committedTables);
      } else ops.push(push());
    } else if (x < 0.78 + pPrepare + pRollback) {
      ops.push(create() ?? push());
    } else {
      ops.push(push());
    }
  }
  if (pending) {
    ops.push({ k: 'commit', id: pending.id });
    committed = pending.id;
    committedTables = pending.tables;
  }
  ops.push({ k: 'close' });
  return {
    ops,
    endTables: [...tables].sort(),
    endCommittedTables: committedTables ? [...committedTables].sort() : null,
    endCommitted: committed,
    nextId,
  };
}

// ---------------------------------------------------------------------------
// Reference and comparison

export const REFERENCE_CACHE_MB = 64;

/** A memoryOnly engine fed ops[0, end). */
export async function buildReference(ops: readonly Op[], end: number): Promise<Engine> {
  const ref = Engine.open({ memoryOnly: true, cacheMb: REFERENCE_CACHE_MB });
  end = Math.min(end, ops.length);
  try {
    for (let i = 0; i < end; i++) await applyOp(ref, ops[i], undefined, true);
  } catch (e) {
    await ref.close().catch(() => undefined);
    throw new Error(`reference replay failed at op ${JSON.stringify(ops.length ? ops[Math.min(end, ops.length) - 1] : null)}: ${(e as Error).message}`);
  }
  return ref;
}

/**
 * The ops that make up checkpoint `id`: everything up to its (first) prepare,
 * without what that prepare issued during its flush (outside the checkpoint).
 */
export function upToCheckpoint(ops: readonly Op[], prepIdx: ReadonlyMap<number, number>, id: number): Op[] {
  const i = prepIdx.get(id);
  if (i === undefined) throw new Error(`no prepare of checkpoint ${id} in the history`);
  const out = ops.slice(0, i + 1);
  const last = out[i];
  if (last.k !== 'prepare' || last.id !== id) throw new Error(`history op ${i} is not prepare(${id})`);
  out[i] = { k: 'prepare', id: last.id, s: last.s };
  return out;
}

export interface Snapshot {
  tables: TableInfo[];
  rows: Map<string, Buffer>;
}

export async function snapshot(e: Engine): Promise<Snapshot> {
  const tables = e.listTables().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const rows = new Map<string, Buffer>();
  for (const t of tables) rows.set(t.name, await e.pull(t.name, keysBufOf(t.name)));
  return { tables, rows };
}

function fbits(buf: Buffer, i: number): string {
  const v = buf.readFloatLE(i * 4);
  return `${v} (0x${buf
    .readUInt32LE(i * 4)
    .toString(16)
    .padStart(8, '0')})`;
}

/** Differences (at most `max`) between the expected and the actual state, one readable line each. */
export function diffSnapshots(exp: Snapshot, got: Snapshot, max = 8): string[] {
  const out: string[] = [];
  const en = exp.tables.map((t) => t.name);
  const gn = got.tables.map((t) => t.name);
  if (en.join(',') !== gn.join(',')) out.push(`tables: expected [${en.join(', ')}], got [${gn.join(', ')}]`);
  for (const et of exp.tables) {
    const gt = got.tables.find((t) => t.name === et.name);
    if (!gt) continue;
    for (const f of ['dim', 'seed', 'rowFloats'] as const) {
      if (et[f] !== gt[f]) out.push(`table ${et.name}: ${f} expected ${et[f]}, got ${gt[f]}`);
    }
    // `rows` counts rows reserved in the pool: rows first pushed after the
    // checkpoint stay reserved (dead versions) after a crash or rollback, so
    // only a lower bound holds against the reference.
    if (gt.rows < et.rows) out.push(`table ${et.name}: rows ${gt.rows}, fewer than the ${et.rows} rows of the expected state`);
    for (const f of ['optimizer', 'initializer'] as const) {
      const a = JSON.stringify(et[f]);
      const b = JSON.stringify(gt[f]);
      if (a !== b) out.push(`table ${et.name}: ${f} expected ${a}, got ${b}`);
    }
    const eb = exp.rows.get(et.name) as Buffer;
    const gb = got.rows.get(et.name) as Buffer;
    if (eb.length !== gb.length) {
      out.push(`table ${et.name}: pull returned ${gb.length} bytes, expected ${eb.length}`);
      continue;
    }
    if (eb.equals(gb)) continue;
    let n = 0;
    let total = 0;
    for (let i = 0; i < eb.length / 4; i++) {
      if (eb.readUInt32LE(i * 4) === gb.readUInt32LE(i * 4)) continue;
      total++;
      if (n < 4) {
        const k = Math.floor(i / et.dim);
        out.push(`table ${et.name} key ${keysOf(et.name)[k]} (key #${k} of its universe) element ${i % et.dim}: expected ${fbits(eb, i)}, got ${fbits(gb, i)}`);
        n++;
      }
    }
    out.push(`table ${et.name}: ${total} of ${eb.length / 4} floats differ`);
    if (out.length >= max) break;
  }
  return out.slice(0, Math.max(max, 1) + 4);
}

export interface ExpectedCheckpoint {
  id: number;
  s: number;
}

export function diffCheckpoint(exp: ExpectedCheckpoint | null, got: CheckpointContent | null): string[] {
  if (!exp) return got ? [`committedCheckpoint(): expected null, got id ${got.id}`] : [];
  if (!got) return [`committedCheckpoint(): expected id ${exp.id}, got null`];
  const out: string[] = [];
  if (got.id !== exp.id) out.push(`committedCheckpoint().id: expected ${exp.id}, got ${got.id}`);
  const want = prepareInput(exp.id, exp.s);
  if (!want.meta.equals(got.meta)) out.push(`checkpoint ${exp.id} meta: expected "${want.meta.toString()}", got "${got.meta.toString()}"`);
  const wn = [...want.dense.keys()].sort().join(',');
  const gn = [...got.dense.keys()].sort().join(',');
  if (wn !== gn) out.push(`checkpoint ${exp.id} dense tensors: expected [${wn}], got [${gn}]`);
  for (const [name, w] of want.dense) {
    const g = got.dense.get(name);
    if (!g) continue;
    if (g.length !== w.length) {
      out.push(`checkpoint ${exp.id} dense "${name}": length expected ${w.length}, got ${g.length}`);
      continue;
    }
    const wb = Buffer.from(w.buffer, w.byteOffset, w.byteLength);
    const gb = Buffer.from(g.buffer, g.byteOffset, g.byteLength);
    for (let i = 0; i < w.length; i++) {
      if (wb.readUInt32LE(i * 4) !== gb.readUInt32LE(i * 4)) {
        out.push(`checkpoint ${exp.id} dense "${name}" element ${i}: expected ${fbits(wb, i)}, got ${fbits(gb, i)}`);
        break;
      }
    }
  }
  return out;
}

/** Thrown on any divergence; the message says what, where, and how to reproduce. */
export class CrashMismatch extends Error {
  override name = 'CrashMismatch';
}

/**
 * Compares engine `e` against reference `ref` (rows, hyperparameters) and the
 * expected committed checkpoint (dense, meta); throws CrashMismatch with
 * `context` prepended.
 */
export async function expectSame(e: Engine, ref: Engine, ckpt: ExpectedCheckpoint | null, context: string): Promise<void> {
  const [a, b] = [await snapshot(ref), await snapshot(e)];
  const diffs = diffSnapshots(a, b).concat(diffCheckpoint(ckpt, e.committedCheckpoint()));
  if (diffs.length) throw new CrashMismatch(`${context}\n  ${diffs.join('\n  ')}`);
}

/**
 * One more push of every key of every table (to be applied identically to the
 * pool and the reference): optimizer state shows only in the next update.
 * k2 is stateless SGD, its rows were compared in full already: a plain batch.
 */
export function verificationPushes(tables: string[], seed: number): Op[] {
  return tables.map(
    (t, i) => (t === 'k2' ? { k: 'push', t, n: 3000, s: mix(seed, i, 0x5eed) } : { k: 'push', t, n: 64, s: mix(seed, i, 0x5eed), full: true }) as Op,
  );
}

// ---------------------------------------------------------------------------
// Progress file of a child

export interface Progress {
  lines: string[];
  open: OpenInfo | null;
  lastOp: number;
  done: boolean;
  closeAttempted: boolean;
  closed: boolean;
  /** Last checkpoint the child saw committed (or the generation's start). */
  confirmedCommitted: number | null;
  /** (committed, prepared) pairs the reopened pool may report. */
  allowed: Array<[number | null, number | null]>;
}

export function analyzeProgress(text: string, startCommitted: number | null): Progress {
  const lines = text.split('\n').filter((l) => l.length > 0);
  const p: Progress = { lines, open: null, lastOp: -1, done: false, closeAttempted: false, closed: false, confirmedCommitted: startCommitted, allowed: [] };
  let last: { id: number; prev: number | null; prepDone: boolean; cA: boolean; cD: boolean; aA: boolean; aD: boolean } | null = null;
  for (const line of lines) {
    const sp = line.indexOf(' ');
    const w = sp < 0 ? line : line.slice(0, sp);
    const a = sp < 0 ? '' : line.slice(sp + 1);
    const id = Number(a);
    switch (w) {
      case 'open':
        p.open = JSON.parse(a) as OpenInfo;
        break;
      case 'op':
        p.lastOp = Number(a.split(' ')[0]);
        break;
      case 'attempt-prepare':
        if (!last || last.id !== id) last = { id, prev: p.confirmedCommitted, prepDone: false, cA: false, cD: false, aA: false, aD: false };
        break;
      case 'prepared':
        if (last && last.id === id) last.prepDone = true;
        break;
      case 'attempt-commit':
        if (last && last.id === id) last.cA = true;
        break;
      case 'committed':
        if (last && last.id === id) last.cD = true;
        p.confirmedCommitted = id;
        break;
      case 'attempt-abort':
        if (last && last.id === id) last.aA = true;
        break;
      case 'aborted':
        if (last && last.id === id) last.aD = true;
        break;
      case 'attempt-close':
        p.closeAttempted = true;
        break;
      case 'closed':
        p.closed = true;
        break;
      case 'done':
        p.done = true;
        break;
    }
  }
  if (!last) p.allowed.push([p.confirmedCommitted, null]);
  else if (last.cD) p.allowed.push([last.id, null]);
  else if (last.aD) p.allowed.push([last.prev, null]);
  else {
    p.allowed.push([last.prev, last.id]);
    if (!last.prepDone || last.aA) p.allowed.push([last.prev, null]);
    if (last.cA) p.allowed.push([last.id, null]);
  }
  return p;
}

// ---------------------------------------------------------------------------
// Child processes

export const CHILD = path.join(__dirname, 'crash.child.js');
export const POOL_MB = 64;

export interface ChildPlan {
  dir: string;
  progress: string;
  poolMb: number;
  cacheMb: number;
  /** The layout a pool created by this child gets (an existing one keeps its own). */
  layout: PoolLayout;
  ops: Op[];
  /** Kill the process right after issuing ops[op]: in the same tick, on setImmediate, or after `delay` ms. */
  kill?: { op: number; delay: 'sync' | 'immediate' | number };
}

export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** With killAfterReadyMs: the child printed "ready" (it opened the pool). */
  ready: boolean;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

const liveChildren = new Set<import('node:child_process').ChildProcess>();

/**
 * SIGKILLs every child this module started that is still running and waits
 * (at most 5 s) until they are gone, so that their directories can be removed
 * without a dying child writing into them (test teardown).
 */
export async function killLiveChildren(): Promise<void> {
  const waits: Promise<void>[] = [];
  for (const c of liveChildren) {
    if (c.exitCode === null && c.signalCode === null) waits.push(new Promise((res) => c.once('close', () => res())));
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.all(waits), new Promise<void>((res) => (timer = setTimeout(res, 5000)))]);
  clearTimeout(timer);
}

export function childEnv(opts: { failpoint?: string; force: boolean; powerCutDir?: string }): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.PMEMPS_FAILPOINT;
  delete env.PMEM_IS_PMEM_FORCE;
  delete env.PMEMPS_POWERCUT_DIR;
  if (opts.failpoint) env.PMEMPS_FAILPOINT = opts.failpoint;
  if (opts.force) env.PMEM_IS_PMEM_FORCE = '1';
  if (opts.powerCutDir) {
    env.LD_PRELOAD = powerCutShim();
    env.PMEMPS_POWERCUT_DIR = opts.powerCutDir;
  }
  // Logged pools compact their log at every wake, so that the small pools
  // of the scenarios reach compaction (and its failpoints).
  env.PMEMPS_LOG_COMPACT = 'eager';
  return env;
}

/**
 * Runs the child on a plan file. With killAfterReadyMs the parent SIGKILLs the
 * child that many ms after it reported the pool open.
 */
export function runChild(
  args: string[],
  env: NodeJS.ProcessEnv,
  opts: { timeoutMs?: number; killAfterReadyMs?: number; killAfterSpawnMs?: number } = {},
): Promise<ChildExit> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [CHILD, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    liveChildren.add(c);
    let stderr = '';
    let out = '';
    let timedOut = false;
    const timers: NodeJS.Timeout[] = [];
    c.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 65536) stderr += d.toString();
    });
    c.stdout.on('data', (d: Buffer) => {
      if (opts.killAfterReadyMs === undefined || out.includes('ready')) return;
      out += d.toString();
      if (out.includes('ready')) timers.push(setTimeout(() => c.kill('SIGKILL'), opts.killAfterReadyMs));
    });
    if (opts.killAfterSpawnMs !== undefined) timers.push(setTimeout(() => c.kill('SIGKILL'), opts.killAfterSpawnMs));
    timers.push(
      setTimeout(() => {
        timedOut = true;
        c.kill('SIGKILL');
      }, opts.timeoutMs ?? 120_000),
    );
    c.on('error', (e) => {
      liveChildren.delete(c);
      timers.forEach(clearTimeout);
      reject(e);
    });
    c.on('close', (code, signal) => {
      liveChildren.delete(c);
      timers.forEach(clearTimeout);
      resolve({ code, signal, stderr, ms: Date.now() - t0, timedOut, ready: out.includes('ready') });
    });
  });
}

// ---------------------------------------------------------------------------
// Power cuts (the msync path only: on emulated PMEM every store is durable)

const SHIM_SRC = path.join(__dirname, '..', '..', 'native', 'test', 'powercut_shim.c');
let shim: string | undefined;

/** native/test/powercut_shim.c built once per process: the LD_PRELOAD that keeps what each msync made durable. */
export function powerCutShim(): string {
  if (shim) return shim;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-shim-'));
  const so = path.join(dir, 'powercut_shim.so');
  const cc = spawnSync('gcc', ['-shared', '-fPIC', '-O1', '-Wall', '-Wextra', '-Werror', SHIM_SRC, '-o', so, '-ldl', '-pthread'], { encoding: 'utf8' });
  if (cc.status !== 0) throw new Error(`cannot build the power-cut shim: ${cc.stderr}`);
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return (shim = so);
}

/**
 * Turns the files of dir into what a power cut leaves of them: a page that
 * no msync wrote since the shim shadowed it comes back as it was when last
 * synced, except that each survives with probability `keep` (the kernel
 * may have written it back on its own). Returns the pages lost and kept.
 */
export function applyPowerCut(dir: string, keep: number, rng: Rng): { lost: number; kept: number } {
  const PAGE = 4096;
  let lost = 0;
  let kept = 0;
  for (const f of fs.readdirSync(dir).filter((n) => n.endsWith('.durable'))) {
    const shadowPath = path.join(dir, f);
    const filePath = shadowPath.slice(0, -'.durable'.length);
    const durable = fs.readFileSync(shadowPath);
    const now = fs.readFileSync(filePath);
    if (durable.length !== now.length) throw new Error(`${f}: ${durable.length} bytes, the file ${now.length}`);
    const fd = fs.openSync(filePath, 'r+');
    try {
      for (let at = 0; at < now.length; at += PAGE) {
        const end = Math.min(at + PAGE, now.length);
        if (now.compare(durable, at, end, at, end) === 0) continue;
        if (rng.chance(keep)) kept++;
        else {
          fs.writeSync(fd, durable, at, end - at, at);
          lost++;
        }
      }
    } finally {
      fs.closeSync(fd);
    }
    fs.rmSync(shadowPath);
  }
  return { lost, kept };
}

/** A fresh, uniquely named directory under os.tmpdir(). */
export function freshDir(prefix = 'pmemps-crash-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------
// Scenarios

/**
 * The largest hit count worth drawing for each failpoint the scenarios kill
 * at. Every failpoint of the engine (its list, from the addon) is either
 * here or in FAILPOINTS_ELSEWHERE: crash.test.ts checks it.
 */
export const FAILPOINTS: Readonly<Record<string, number>> = {
  'create_table.mid_tx': 3,
  'push.after_apply': 40,
  'evict.after_write': 20,
  'index.mid_split': 2,
  'slab.after_alloc': 5,
  'prepare.after_boundary': 4,
  'prepare.mid_flush': 4,
  'prepare.before_publish': 4,
  'prepare.after_publish': 4,
  'commit.before_publish': 4,
  'commit.after_publish': 4,
  'abort.before_publish': 2,
  'rollback.before_publish': 2,
  'rollback.after_publish': 2,
  // Multi-transaction paths: the tables' side of a rollback (or commit, abort,
  // recovery) after the root transaction, and the deferred frees of a removed
  // table's storage, one bounded transaction each.
  'settle.step': 3,
  'reclaim.step': 2,
  'close.mid_writeback': 1,
  'close.before_clean_mark': 1,
};
/**
 * Failpoints only logged pools reach (the version log's write-back and its
 * segments), with the same meaning as FAILPOINTS' numbers. Logged
 * scenarios draw these and FAILPOINTS.
 */
export const FAILPOINTS_LOGGED: Readonly<Record<string, number>> = {
  'writeback.after_append': 200,
  'log.after_grow': 3,
  // The children run with PMEMPS_LOG_COMPACT=eager (see childEnv).
  'compact.after_copy': 3,
  'compact.before_free': 3,
  // The compactor moves the slots' mark at every wake under eager
  // compaction. replay.mid is reached only by the open of a crashed pool
  // whose log holds records after the mark: Scenario.replayKill.
  'mark.before_advance': 3,
  'replay.mid': 30,
};
/**
 * Failpoints the scenarios cannot reach, each with the compiled test file
 * that kills at it instead (crash.test.ts checks that file names it).
 */
export const FAILPOINTS_ELSEWHERE: Readonly<Record<string, string>> = {
  // The reference, a memoryOnly engine, refuses drops, so scenarios never
  // drop; drop.test kills inside the drop's transaction and checks the
  // reopened pool against the state before the drop.
  'drop_table.mid_tx': 'drop.test.js',
};
/** The engine's failpoints the scenarios kill at, in the engine's order. */
export const FAILPOINT_NAMES = failpoints().filter((fp) => !(fp in FAILPOINTS_ELSEWHERE));

export type KillSpec =
  | { mode: 'none' }
  | { mode: 'failpoint'; fp: string; n: number }
  /** Kill right after issuing op (pick mod number of ops). */
  | { mode: 'op'; pick: number; delay: 'sync' | 'immediate' | number }
  /**
   * The parent kills ms after the child opened the pool, or with fromSpawn ms
   * after starting it (the kill may land inside open and its recovery; only
   * used on an existing pool, never on the generation that creates it).
   */
  | { mode: 'timer'; ms: number; fromSpawn?: boolean };

export interface Scenario {
  seed: number;
  /** One child run per entry, on the same pool, each verified before the next. */
  gens: KillSpec[];
  /** PMEM_IS_PMEM_FORCE=1 in the child (false: the msync path). */
  force: boolean;
  cacheMb: number;
  /** The pool's row layout (default 'inplace'). */
  layout?: PoolLayout;
  /**
   * msync path only: every generation ends in a power cut, not only a
   * kill. Stores no msync covered are lost, each page of them kept with
   * this probability (powercut_shim.c, applyPowerCut).
   */
  powerCut?: number;
  /**
   * Logged pools: after each generation's child is killed (and its power
   * cut), another child opens the pool with replay.mid:replayKill armed, so
   * that it dies inside the replay of the first one's log (and is cut
   * again), before the parent reopens and verifies. The children neither
   * compact nor move the mark on their own meanwhile.
   */
  replayKill?: number;
}

export function describeKill(k: KillSpec, nOps?: number): string {
  switch (k.mode) {
    case 'none':
      return 'no kill';
    case 'failpoint':
      return `failpoint ${k.fp}:${k.n}`;
    case 'op':
      return nOps ? `self-kill after issuing op ${k.pick % nOps}, delay ${k.delay}` : `self-kill after issuing op #${k.pick} mod ops, delay ${k.delay}`;
    case 'timer':
      return `parent SIGKILL ${k.ms} ms after ${k.fromSpawn ? 'spawn' : 'open'}`;
  }
}

export interface GenOutcome {
  kill: KillSpec;
  /** The child died by SIGKILL (the kill point was reached). */
  killed: boolean;
  /** Checkpoint the reopened pool came back to (after resolving a prepared one). */
  restoredTo: number | null;
  prepared: number | null;
  resolution: 'commit' | 'abort' | null;
  cleanClose: boolean;
  lastOp: number;
  ms: number;
  /** With a power cut: the unsynced pages it lost and kept. */
  cut: { lost: number; kept: number } | null;
  /** With Scenario.replayKill: the second child died inside its replay. */
  replayKilled: boolean;
}

export interface ScenarioResult {
  scenario: Scenario;
  gens: GenOutcome[];
}

function biasFor(k: KillSpec): Bias {
  if (k.mode !== 'failpoint') return undefined;
  if (k.fp.startsWith('abort.')) return 'abort';
  if (k.fp.startsWith('rollback.') || k.fp.startsWith('settle.') || k.fp.startsWith('reclaim.')) return 'rollback';
  if (k.fp.startsWith('create_table.')) return 'create';
  if (k.fp.startsWith('evict.')) return 'evict';
  if (k.fp.startsWith('index.')) return 'index';
  return undefined;
}

export function reproHint(sc: Scenario): string {
  return `reproduce: node dist/test/crash.soak.js --scenario '${JSON.stringify(sc)}'`;
}

async function expectRejects(p: () => Promise<unknown>, codes: string[], what: string, ctx: string): Promise<void> {
  let err: unknown = null;
  try {
    await p();
  } catch (e) {
    err = e;
  }
  if (!err) throw new CrashMismatch(`${ctx}\n  ${what}: expected EngineError ${codes.join(' or ')}, but it succeeded`);
  if (!(err instanceof EngineError) || !codes.includes(err.code))
    throw new CrashMismatch(
      `${ctx}\n  ${what}: expected EngineError ${codes.join(' or ')}, got ${(err as Error).name} ${(err as { code?: string }).code ?? ''}: ${(err as Error).message}`,
    );
}

/**
 * Runs a scenario: for each generation, a child runs seeded ops on the pool
 * and is killed as the KillSpec says; the parent reopens the pool, checks the
 * state against the reference bit for bit, resolves a prepared checkpoint,
 * pushes every key once more on both sides, compares again and closes
 * cleanly; the next generation continues on the same pool.
 */
export async function runScenario(sc: Scenario, opts: { timeoutMs?: number; onDir?: (d: string) => void } = {}): Promise<ScenarioResult> {
  const root = freshDir();
  opts.onDir?.(root);
  const poolDir = path.join(root, 'pool');
  fs.mkdirSync(poolDir);
  const result: ScenarioResult = { scenario: sc, gens: [] };
  // The history: every op that shaped the pool's current state, in order.
  let history: Op[] = [];
  const prepIdx = new Map<number, number>();
  const prepSeed = new Map<number, number>();
  let tables: string[] = [];
  let committedTables: string[] | null = null;
  let committed: number | null = null;
  let nextId = 1;
  try {
    for (let g = 0; g < sc.gens.length; g++) {
      const kill = sc.gens[g];
      const gen = genOps(mix(sc.seed, g, 0x6e6), { tables, committedTables, committed, nextId, bias: biasFor(kill) });
      const ops = gen.ops;
      const base = history.length;
      const full = history.concat(ops);
      ops.forEach((op, i) => {
        if (op.k === 'prepare' && !prepIdx.has(op.id)) {
          prepIdx.set(op.id, base + i);
          prepSeed.set(op.id, op.s);
        }
      });
      nextId = gen.nextId;
      const progressFile = path.join(root, `progress-${g}.log`);
      const plan: ChildPlan = { dir: poolDir, progress: progressFile, poolMb: POOL_MB, cacheMb: sc.cacheMb, layout: sc.layout ?? 'inplace', ops };
      if (kill.mode === 'op') plan.kill = { op: kill.pick % ops.length, delay: kill.delay };
      const planFile = path.join(root, `plan-${g}.json`);
      fs.writeFileSync(planFile, JSON.stringify(plan));
      if (sc.powerCut !== undefined && sc.force) throw new Error('a power cut is simulated on the msync path only (force: false)');
      const env = childEnv({
        force: sc.force,
        failpoint: kill.mode === 'failpoint' ? `${kill.fp}:${kill.n}` : undefined,
        powerCutDir: sc.powerCut === undefined ? undefined : poolDir,
      });
      if (sc.replayKill !== undefined) {
        // The mark stays where open, close and createTable put it, so the
        // log the replay reads holds every write-back since.
        delete env.PMEMPS_LOG_COMPACT;
        env.PMEMPS_LOG_MARK_MB = '100000';
      }
      const ex = await runChild([planFile], env, {
        timeoutMs: opts.timeoutMs,
        killAfterReadyMs: kill.mode === 'timer' && !kill.fromSpawn ? kill.ms : undefined,
        killAfterSpawnMs: kill.mode === 'timer' && kill.fromSpawn ? kill.ms : undefined,
      });
      const cut = sc.powerCut === undefined ? null : applyPowerCut(poolDir, sc.powerCut, new Rng(mix(sc.seed, g, 0x9c7)));
      let replayKilled = false;
      if (sc.replayKill !== undefined && ex.signal === 'SIGKILL') {
        // A crash inside the replay of the crash before: killed there, or
        // killed once it opened when the log held fewer records.
        const rx = await runChild(
          ['--hold', poolDir],
          childEnv({ force: sc.force, failpoint: `replay.mid:${sc.replayKill}`, powerCutDir: sc.powerCut === undefined ? undefined : poolDir }),
          { timeoutMs: opts.timeoutMs, killAfterReadyMs: 0 },
        );
        if (rx.signal !== 'SIGKILL') throw new Error(`the replaying child exited ${rx.code}: ${rx.stderr.slice(-4000)}`);
        replayKilled = !rx.ready;
        if (cut && sc.powerCut !== undefined) {
          const again = applyPowerCut(poolDir, sc.powerCut, new Rng(mix(sc.seed, g, 0x9c8)));
          cut.lost += again.lost;
          cut.kept += again.kept;
        }
      }
      const prog = analyzeProgress(fs.existsSync(progressFile) ? fs.readFileSync(progressFile, 'utf8') : '', committed);
      const lastOpDesc = prog.lastOp >= 0 ? `op ${prog.lastOp} (${describeOp(ops[prog.lastOp])}) of ${ops.length}` : 'before the first op';
      const ctx = (phase: string) =>
        `crash test mismatch: seed ${sc.seed}, generation ${g}, kill point: ${describeKill(kill, ops.length)}${
          cut ? `, then a power cut (${cut.lost} unsynced pages lost, ${cut.kept} kept)` : ''
        }; child ${ex.signal ? `died by ${ex.signal}` : `exited ${ex.code}`} at ${lastOpDesc}; ${phase}\n  ${reproHint(sc)}`;
      if (ex.timedOut) throw new CrashMismatch(ctx('the child did not finish in time (hung?)') + `\n  child stderr: ${ex.stderr.slice(-4000)}`);
      const killed = ex.signal === 'SIGKILL';
      if (!killed && !(ex.code === 0 && prog.done)) throw new CrashMismatch(ctx('the child failed') + `\n  child stderr: ${ex.stderr.slice(-4000)}`);
      if (killed && kill.mode === 'none') throw new CrashMismatch(ctx('the child died by SIGKILL though no kill was planned'));
      if (killed && kill.mode === 'op' && prog.lastOp !== kill.pick % ops.length)
        throw new CrashMismatch(ctx(`the child died before its planned kill at op ${kill.pick % ops.length}`) + `\n  child stderr: ${ex.stderr.slice(-4000)}`);

      // What the child saw when it opened the pool.
      const o = prog.open;
      const diedInOpen = !o && killed && kill.mode === 'timer' && kill.fromSpawn === true && g > 0;
      if (!o && !diedInOpen) throw new CrashMismatch(ctx('the child never logged its open') + `\n  child stderr: ${ex.stderr.slice(-4000)}`);
      if (o) {
        const wantOpen =
          g === 0 ? { created: true, committed: null, prepared: null } : { created: false, cleanClose: true, committed, prepared: null, pushesBlocked: false };
        for (const [k, v] of Object.entries(wantOpen)) {
          const gotV = (o as unknown as Record<string, unknown>)[k];
          if (gotV !== v)
            throw new CrashMismatch(ctx(`child's openInfo.${k} = ${JSON.stringify(gotV)}, expected ${JSON.stringify(v)}; openInfo ${JSON.stringify(o)}`));
        }
        if (sc.force && o.isPmem !== true) throw new CrashMismatch(ctx(`openInfo.isPmem is ${o.isPmem} under PMEM_IS_PMEM_FORCE=1`));
        if (o.layout !== (sc.layout ?? 'inplace'))
          throw new CrashMismatch(ctx(`openInfo.layout is ${o.layout}, the scenario's pools are ${sc.layout ?? 'inplace'}`));
      }

      let eng: Engine;
      try {
        eng = Engine.open({ dir: poolDir, poolMb: POOL_MB, cacheMb: 1 });
      } catch (e) {
        const err = e as Error & { code?: string };
        throw new CrashMismatch(ctx(`reopening the pool failed: ${err.name}${err.code ? ' ' + err.code : ''}: ${err.message}`));
      }
      const refs: Engine[] = [];
      const outcome: GenOutcome = {
        kill,
        killed,
        restoredTo: null,
        prepared: null,
        resolution: null,
        cleanClose: false,
        lastOp: prog.lastOp,
        ms: ex.ms,
        cut,
        replayKilled,
      };
      try {
        const info = eng.openInfo;
        outcome.cleanClose = info.cleanClose;
        outcome.prepared = info.prepared;
        const infoStr = JSON.stringify(info);
        if (info.created) throw new CrashMismatch(ctx(`reopen created a new pool: ${infoStr}`));
        if (info.cleanClose && info.replayedRecords !== 0)
          throw new CrashMismatch(ctx(`a clean close left log records after the slots' mark, replayed at the reopen: ${infoStr}`));
        if (prog.closed && !info.cleanClose) throw new CrashMismatch(ctx(`the child's close() resolved but openInfo.cleanClose is false: ${infoStr}`));
        if (info.cleanClose && !prog.closeAttempted && !diedInOpen)
          throw new CrashMismatch(ctx(`openInfo.cleanClose is true but the child never called close(): ${infoStr}`));
        if (info.cleanClose && kill.mode === 'failpoint' && killed && kill.fp.startsWith('close.'))
          throw new CrashMismatch(ctx(`openInfo.cleanClose is true after a kill inside close(): ${infoStr}`));
        let ref: Engine;
        let X: number | null;
        if (info.cleanClose && diedInOpen) {
          // Killed inside open before it marked the pool in use: still the
          // cleanly closed state the previous generation's verification left.
          if (info.committed !== committed || info.prepared !== null)
            throw new CrashMismatch(
              ctx(
                `after a kill inside open of a cleanly closed pool, openInfo says committed ${info.committed}, prepared ${info.prepared}; expected committed ${committed}, prepared null`,
              ),
            );
          ref = await buildReference(history, history.length);
          refs.push(ref);
          await expectSame(
            eng,
            ref,
            committed === null ? null : { id: committed, s: prepSeed.get(committed) as number },
            ctx('state after a kill inside open of a cleanly closed pool (expected: that latest state)'),
          );
          X = committed;
        } else if (info.cleanClose) {
          // Latest state: everything the child did.
          if (info.committed !== gen.endCommitted || info.prepared !== null)
            throw new CrashMismatch(
              ctx(
                `after a clean close openInfo says committed ${info.committed}, prepared ${info.prepared}; expected committed ${gen.endCommitted}, prepared null`,
              ),
            );
          ref = await buildReference(full, full.length);
          refs.push(ref);
          await expectSame(
            eng,
            ref,
            info.committed === null ? null : { id: info.committed, s: prepSeed.get(info.committed) as number },
            ctx('state after reopening a cleanly closed pool (expected: the latest state)'),
          );
          history = full;
          tables = gen.endTables;
          committedTables = gen.endCommittedTables;
          committed = gen.endCommitted;
          X = committed;
        } else {
          const pair = `(committed ${info.committed}, prepared ${info.prepared})`;
          if (!prog.allowed.some(([c, p]) => c === info.committed && p === info.prepared))
            throw new CrashMismatch(
              ctx(
                `reopened pool reports ${pair}; the child's progress allows only ${prog.allowed.map(([c, p]) => `(committed ${c}, prepared ${p})`).join(' or ')}`,
              ) + `\n  progress tail: ${prog.lines.slice(-6).join(' | ')}`,
            );
          if (info.pushesBlocked !== (info.prepared !== null))
            throw new CrashMismatch(ctx(`openInfo.pushesBlocked is ${info.pushesBlocked} with prepared ${info.prepared}`));
          const C = info.committed;
          const refC = await buildReference(C === null ? [] : upToCheckpoint(full, prepIdx, C), Infinity);
          refs.push(refC);
          const ckptC = C === null ? null : { id: C, s: prepSeed.get(C) as number };
          await expectSame(eng, refC, ckptC, ctx(`state after reopen ${pair} (expected: checkpoint ${C ?? 'none (empty)'})`));
          ref = refC;
          X = C;
          if (info.prepared !== null) {
            const P = info.prepared;
            const r = new Rng(mix(sc.seed, g, 0xdec));
            const anyTable = eng.listTables()[0]?.name;
            if (anyTable) {
              const p = pushPayload(anyTable, 5, 1);
              await expectRejects(
                () => eng.push(anyTable, p.keys, p.grads),
                ['FAILED_PRECONDITION'],
                `push to ${anyTable} with checkpoint ${P} prepared before the restart`,
                ctx(pair),
              );
            }
            if (r.chance(0.3)) await eng.prepare(P, prepareInput(P, prepSeed.get(P) as number)); // a retried prepare: no-op
            if (r.chance(0.6)) {
              outcome.resolution = 'commit';
              await eng.commit(P);
              X = P;
              ref = await buildReference(upToCheckpoint(full, prepIdx, P), Infinity);
              refs.push(ref);
              await expectSame(eng, ref, { id: P, s: prepSeed.get(P) as number }, ctx(`state after commit(${P}) of the checkpoint prepared before the crash`));
            } else {
              outcome.resolution = 'abort';
              await eng.abort(P);
              if (r.chance(0.5)) await expectRejects(() => eng.commit(P), ['FAILED_PRECONDITION', 'NOT_FOUND'], `commit(${P}) after abort(${P})`, ctx(pair));
              await expectSame(
                eng,
                ref,
                ckptC,
                ctx(`state after abort(${P}) of the checkpoint prepared before the crash (expected checkpoint ${C ?? 'none'})`),
              );
            }
          }
          // The pool now holds exactly checkpoint X; make the reference's history say so.
          if (X === null) {
            history = [];
          } else {
            history = upToCheckpoint(full, prepIdx, X);
            history.push({ k: 'commit', id: X });
            await ref.commit(X);
          }
          tables = ref
            .listTables()
            .map((t) => t.name)
            .sort();
          committedTables = X === null ? null : tables.slice();
          committed = X;
        }
        outcome.restoredTo = X;
        const st = eng.stats();
        if (st.committed !== X || st.prepared !== null)
          throw new CrashMismatch(ctx(`stats() says committed ${st.committed}, prepared ${st.prepared}; expected committed ${X}, prepared null`));
        // Optimizer state shows in the next push: one more identical push of every key on both sides.
        const extra = verificationPushes(tables, mix(sc.seed, g, 0xe7a));
        for (const op of extra) {
          await applyOp(eng, op);
          await applyOp(ref, op, undefined, true);
        }
        history = history.concat(extra);
        await expectSame(
          eng,
          ref,
          X === null ? null : { id: X, s: prepSeed.get(X) as number },
          ctx(`state after one more identical push of all keys (optimizer state), restored to checkpoint ${X}`),
        );
      } catch (e) {
        if (e instanceof CrashMismatch) throw e;
        const err = e as Error & { code?: string };
        throw new CrashMismatch(
          ctx(`unexpected ${err.name}${err.code ? ' ' + err.code : ''} while verifying: ${err.message}`) +
            `\n  ${(err.stack ?? '').split('\n').slice(1, 6).join('\n  ')}`,
        );
      } finally {
        await eng.close();
        for (const r of refs) await r.close().catch(() => undefined);
      }
      result.gens.push(outcome);
    }
  } finally {
    removeDir(root);
  }
  return result;
}

/** A seeded random scenario for the soak: 1-3 generations, every kill mode, some msync runs (half of them with power cuts), some logged pools. */
export function randomScenario(seed: number): Scenario {
  const r = new Rng(mix(seed, 0x50a));
  const layout: PoolLayout = r.chance(0.3) ? 'logged' : 'inplace';
  const gens: KillSpec[] = [];
  const n = r.int(1, 3);
  for (let g = 0; g < n; g++) {
    const x = r.float();
    if (x < 0.55) {
      const fp = r.pick(FAILPOINT_NAMES.filter((f) => f in FAILPOINTS || (layout === 'logged' && f in FAILPOINTS_LOGGED)));
      gens.push({ mode: 'failpoint', fp, n: r.int(1, FAILPOINTS[fp] ?? FAILPOINTS_LOGGED[fp]) });
    } else if (x < 0.82) {
      gens.push({ mode: 'op', pick: r.int(0, 1 << 20), delay: r.pick(['sync', 'immediate', 0, 1, 2, 5] as const) });
    } else if (x < 0.94) {
      if (g > 0 && r.chance(0.35)) gens.push({ mode: 'timer', ms: r.int(20, 250), fromSpawn: true });
      else gens.push({ mode: 'timer', ms: r.int(0, 250) });
    } else {
      gens.push({ mode: 'none' });
    }
  }
  const sc: Scenario = { seed, gens, force: !r.chance(0.1), cacheMb: r.chance(0.7) ? 1 : 2, layout };
  // Half the msync runs end each generation in a power cut.
  if (!sc.force && r.chance(0.5)) sc.powerCut = r.pick([0, 0.25, 0.5, 0.9]);
  return sc;
}

/** Runs async jobs with at most `limit` at once, in order of the input. */
export async function pool<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export type { PrepareInput };
