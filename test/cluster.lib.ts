// Shared machinery of the multi-process service tests: a deterministic
// training plan (every batch, gradient and dense update is a pure function
// of the seed, the step and the worker, and of the rows pulled), the
// reference that replays it on a DRAM-only engine, digests of a cluster's
// rows, and the runner of worker child processes (test/cluster-worker.child.ts).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import { Engine, denseOptimizer, type OptimizerSpec, type TableSpec } from '../native/engine';
import type { PsClient } from '../worker';
import { prng } from './helpers';

export const TABLE: TableSpec = {
  name: 'emb',
  dim: 8,
  optimizer: { type: 'adagrad', lr: 0.1, initialAccumulator: 0.01 },
  initializer: { type: 'uniform', min: -0.1, max: 0.1 },
  seed: 7,
};
export const DENSE_NAME = 'mlp';
export const DENSE_OPT: OptimizerSpec = { type: 'adam', lr: 0.01 };
export const DENSE_INIT = Float32Array.from([0.1, -0.2, 0.3, 0.05, 0.5]);

export interface Plan {
  seed: number;
  steps: number;
  persistEvery: number;
  workers: number;
  keysPerStep: number;
  keySpace: number;
}

export const PLAN: Plan = { seed: 11, steps: 40, persistEvery: 8, workers: 1, keysPerStep: 48, keySpace: 400 };

function seedOf(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) h = Math.imul(h ^ (x >>> 0), 0x01000193) ^ Math.imul(x / 4294967296, 0x01000193);
  return h >>> 0;
}

/** Keys of a step (with duplicates; some above 2^53 to cover the full uint64 range). */
export function batchKeys(p: Plan, step: number, worker: number): BigUint64Array {
  const r = prng(seedOf(p.seed, step, worker, 1));
  const out = new BigUint64Array(p.keysPerStep);
  for (let i = 0; i < out.length; i++) {
    const k = Math.floor(r() * p.keySpace);
    out[i] = k % 7 === 0 ? (1n << 63n) + BigInt(k) : BigInt(k);
  }
  return out;
}

/** Every key the plan can touch, in a fixed order. */
export function allKeys(p: Plan): BigUint64Array {
  const out = new BigUint64Array(p.keySpace);
  for (let k = 0; k < p.keySpace; k++) out[k] = k % 7 === 0 ? (1n << 63n) + BigInt(k) : BigInt(k);
  return out;
}

/** Gradients of a step: seeded noise plus a term that depends on the rows pulled (so a wrong state shows). */
export function gradsFor(p: Plan, step: number, worker: number, rows: Float32Array): Float32Array {
  const r = prng(seedOf(p.seed, step, worker, 2));
  const g = new Float32Array(rows.length);
  for (let i = 0; i < g.length; i++) g[i] = r() * 2 - 1 + 0.5 * rows[i];
  return g;
}

export function denseGrad(p: Plan, step: number): Float32Array {
  const r = prng(seedOf(p.seed, step, 3));
  return Float32Array.from(DENSE_INIT, () => r() * 2 - 1);
}

/** The trainer-held dense tensor persisted at a step. */
export function biasAt(step: number): Float32Array {
  return Float32Array.of(step * 0.25, -step);
}

export interface Reference {
  rows: Buffer;
  dense: Float32Array;
}

/** The plan replayed for `steps` steps on a DRAM-only engine, workers in index order within a step. */
export async function reference(p: Plan, steps: number): Promise<Reference> {
  const e = Engine.open({ memoryOnly: true, cacheMb: 64 });
  try {
    e.createTable(TABLE);
    const dense = new Float32Array(denseOptimizer.rowFloats(DENSE_OPT, DENSE_INIT.length));
    denseOptimizer.initRow(DENSE_OPT, dense);
    dense.set(DENSE_INIT);
    let dstep = 0;
    for (let t = 0; t < steps; t++) {
      for (let w = 0; w < p.workers; w++) {
        const keys = Buffer.from(batchKeys(p, t, w).buffer);
        const rows = await e.pull(TABLE.name, keys);
        const g = gradsFor(p, t, w, new Float32Array(rows.buffer, rows.byteOffset, rows.length / 4));
        await e.push(TABLE.name, keys, Buffer.from(g.buffer));
      }
      dstep = denseOptimizer.apply(DENSE_OPT, dense, dstep, denseGrad(p, t));
    }
    const rows = await e.pull(TABLE.name, Buffer.from(allKeys(p).buffer));
    return { rows: Buffer.from(rows), dense: dense.slice(0, DENSE_INIT.length) };
  } finally {
    await e.close();
  }
}

export function digest(rows: Buffer | Float32Array, dense?: Float32Array): string {
  const h = createHash('sha256');
  h.update(Buffer.isBuffer(rows) ? rows : Buffer.from(rows.buffer, rows.byteOffset, rows.byteLength));
  if (dense) h.update(Buffer.from(dense.buffer, dense.byteOffset, dense.byteLength));
  return h.digest('hex').slice(0, 16);
}

export async function referenceDigest(p: Plan, steps: number): Promise<string> {
  const r = await reference(p, steps);
  return digest(r.rows, r.dense);
}

/** Digest of what the cluster holds now (rows of every plan key, and the dense tensor). */
export async function clusterDigest(ps: PsClient, p: Plan): Promise<string> {
  const rows = await ps.pull(TABLE.name, allKeys(p));
  const dense = (await ps.pullDense([DENSE_NAME])).get(DENSE_NAME)!;
  return digest(rows, dense);
}

// ------------------------------------------------------------ worker children

export interface WorkerArgs {
  endpoints: string[];
  plan: Plan;
  worker: number;
  /** Restore before training (a replacement coordinator). */
  restoreFirst?: boolean;
  /** Restore once, voluntarily, when reaching this step (exact-resume test). */
  restoreAtStep?: number;
  retryForMs?: number;
  workerId?: string;
  /** Sleep per step, ms: gives seeded timer kills room to land mid-run. */
  stepDelayMs?: number;
}

export interface WorkerEvent {
  event: 'started' | 'persisted' | 'restored' | 'done' | 'error' | 'step';
  step?: number;
  id?: number;
  digest?: string;
  message?: string;
  /** With 'error': the error's class (ServerRestartedError, CheckpointError, PsError). */
  name?: string;
}

export interface WorkerRun {
  events: WorkerEvent[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

const CHILD = path.join(__dirname, 'cluster-worker.child.js');

export function runWorker(
  args: WorkerArgs,
  env: Record<string, string> = {},
  onEvent?: (e: WorkerEvent) => void,
): { done: Promise<WorkerRun>; kill: () => void } {
  const child = spawn(process.execPath, [CHILD, JSON.stringify(args)], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const events: WorkerEvent[] = [];
  let stderr = '';
  let buf = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line.startsWith('{')) continue;
      const e = JSON.parse(line) as WorkerEvent;
      events.push(e);
      onEvent?.(e);
    }
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<WorkerRun>((resolve) => child.once('exit', (code, signal) => resolve({ events, code, signal, stderr })));
  return { done, kill: () => child.kill('SIGKILL') };
}
