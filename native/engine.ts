// The typed, promise-based face of the native storage engine. It is the only
// module that loads the addon: everything else in pmemps reaches the table,
// the cache and the pool through this class.
//
// Batches cross the boundary as Buffers (keys: packed little-endian uint64,
// values: packed little-endian float32, keys x dim), never as per-row JS
// objects; pull/push/checkpoint work runs on libuv's thread pool.

import * as path from 'node:path';
import { EngineError, fromNative } from './errors';
import type {
  CheckpointContent,
  EngineStats,
  HyperUpdate,
  InitializerSpec,
  OpenInfo,
  OpenOptions,
  PoolLayout,
  OptimizerSpec,
  OptimizerType,
  PrepareInput,
  TableInfo,
  TableSpec,
} from './types';
import { DEFAULT_SCRATCH_MB, MAX_SCRATCH_MB } from './types';

export * from './types';
export { EngineError } from './errors';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const addon = require(path.join(__dirname, '..', '..', 'build', 'Release', 'pmemps_native.node'));

/** The engine's error codes (PMEMPS_ERROR_CODES in native/src/common.h), as the addon lists them. */
const ERROR_CODES: ReadonlySet<string> = new Set<string>(addon.errorCodes);

/** The codes an EngineError may carry: the engine's own list. */
export function engineErrorCodes(): string[] {
  return [...ERROR_CODES];
}

/**
 * The engine's failpoint names (PMEMPS_FAILPOINTS in native/src/failpoints.h):
 * PMEMPS_FAILPOINT="name[:n]" kills the process the n-th time one is reached.
 */
export function failpoints(): string[] {
  return [...(addon.failpoints as string[])];
}

/**
 * The buffers of pulled rows the addon maps (from 256 KiB) and keeps for
 * reuse after V8 collects them: `keptBytes` held now, `maps` made since the
 * process started. A steady stream of pulls maps none; kept buffers go back
 * to the system after about a second unused.
 */
export function rowBufferStats(): { keptBytes: number; maps: number } {
  return addon.rowBufferStats() as { keptBytes: number; maps: number };
}

/**
 * The working memory of pulls and pushes larger than the arrays each thread
 * keeps between calls (8 MiB), which comes out of one budget for the process
 * (Engine.open's scratchMb, default 256): bytes held now, the most held at once,
 * calls that waited for room, and the budget. A call larger than the whole
 * budget runs alone.
 */
export function scratchStats(): { usedBytes: number; peakBytes: number; waits: number; budgetBytes: number } {
  return addon.scratchStats() as { usedBytes: number; peakBytes: number; waits: number; budgetBytes: number };
}

/** Hyperparameter names of each optimizer, in the order the native code stores them, with defaults. */
export const OPTIMIZER_PARAMS: Record<OptimizerType, ReadonlyArray<[string, number | boolean | undefined]>> = {
  sgd: [
    ['lr', undefined],
    ['momentum', 0],
    ['dampening', 0],
    ['nesterov', false],
    ['weightDecay', 0],
  ],
  adagrad: [
    ['lr', undefined],
    ['initialAccumulator', 0],
    ['eps', 1e-10],
  ],
  adam: [
    ['lr', undefined],
    ['beta1', 0.9],
    ['beta2', 0.999],
    ['eps', 1e-8],
  ],
  rmsprop: [
    ['lr', undefined],
    ['alpha', 0.99],
    ['eps', 1e-8],
    ['momentum', 0],
    ['centered', false],
  ],
  ftrl: [
    ['lr', undefined],
    ['lrPower', -0.5],
    ['initialAccumulator', 0.1],
    ['l1', 0],
    ['l2', 0],
    ['l2Shrinkage', 0],
  ],
};
const OPT_CODES: OptimizerType[] = ['sgd', 'adagrad', 'adam', 'rmsprop', 'ftrl'];
/** By their code in the pool (layout.h: kLayoutInPlace, kLayoutLogged). */
const LAYOUTS: (PoolLayout | 'auto')[] = ['inplace', 'logged', 'auto'];
const INIT_CODES: InitializerSpec['type'][] = ['zeros', 'constant', 'uniform', 'normal'];

function invalid(msg: string): EngineError {
  return new EngineError('INVALID_ARGUMENT', msg);
}

function hyperArray(opt: OptimizerSpec): Float64Array {
  // Own properties only: "__proto__" or "constructor" is no optimizer.
  const names = Object.hasOwn(OPTIMIZER_PARAMS, opt?.type) ? OPTIMIZER_PARAMS[opt.type] : undefined;
  if (!names) throw invalid(`unknown optimizer "${(opt as { type: string }).type}"; use one of ${OPT_CODES.join(', ')}`);
  const known = new Set(names.map((n) => n[0]).concat('type'));
  for (const k of Object.keys(opt)) {
    if (!known.has(k)) throw invalid(`optimizer ${opt.type} has no hyperparameter "${k}"; it takes ${names.map((n) => n[0]).join(', ')}`);
  }
  const rec = opt as unknown as Record<string, number | boolean | undefined>;
  return Float64Array.from(
    names.map(([n, def]) => {
      const v = rec[n] ?? def;
      if (v === undefined) throw invalid(`optimizer ${opt.type} needs "${n}"`);
      if (typeof v === 'boolean') return v ? 1 : 0;
      if (typeof v !== 'number' || !Number.isFinite(v)) throw invalid(`optimizer ${opt.type}: "${n}" must be a finite number`);
      return v;
    }),
  );
}

function optimizerFrom(type: OptimizerType, h: Float64Array): OptimizerSpec {
  const out: Record<string, number | boolean | string> = { type };
  OPTIMIZER_PARAMS[type].forEach(([n, def], i) => {
    out[n] = typeof def === 'boolean' ? h[i] !== 0 : h[i];
  });
  return out as unknown as OptimizerSpec;
}

function initArray(init: InitializerSpec): [number, Float64Array] {
  const code = INIT_CODES.indexOf(init?.type);
  if (code < 0) throw invalid(`unknown initializer "${init?.type}"; use one of ${INIT_CODES.join(', ')}`);
  let p: number[];
  switch (init.type) {
    case 'zeros':
      p = [0, 0, 0];
      break;
    case 'constant':
      p = [init.value, 0, 0];
      break;
    case 'uniform':
      p = [init.min, init.max, 0];
      if (!(init.min <= init.max)) throw invalid('uniform initializer needs min <= max');
      break;
    case 'normal':
      p = [init.mean, init.std, init.truncated ? 1 : 0];
      if (!(init.std >= 0)) throw invalid('normal initializer needs std >= 0');
      break;
  }
  if (!p.every((x) => Number.isFinite(x))) throw invalid(`initializer ${init.type}: parameters must be finite numbers`);
  return [code, Float64Array.from(p)];
}

function initializerFrom(code: number, p: Float64Array): InitializerSpec {
  switch (INIT_CODES[code]) {
    case 'zeros':
      return { type: 'zeros' };
    case 'constant':
      return { type: 'constant', value: p[0] };
    case 'uniform':
      return { type: 'uniform', min: p[0], max: p[1] };
    default:
      return { type: 'normal', mean: p[0], std: p[1], truncated: p[2] !== 0 };
  }
}

function checkId(id: number): void {
  if (!Number.isSafeInteger(id) || id <= 0) throw invalid(`checkpoint id must be a positive integer, got ${id}`);
}

/** Serializes named dense tensors: u32 count, then per tensor u32 name length, name (utf8), u32 length, float32 values. */
export function encodeDense(dense: PrepareInput['dense']): Buffer {
  const entries = dense instanceof Map ? [...dense.entries()] : Object.entries(dense ?? {});
  const parts: Buffer[] = [];
  const head = Buffer.alloc(4);
  head.writeUInt32LE(entries.length);
  parts.push(head);
  for (const [name, arr] of entries) {
    if (!(arr instanceof Float32Array)) throw invalid(`dense tensor "${name}" must be a Float32Array`);
    const nb = Buffer.from(name, 'utf8');
    if (nb.length === 0 || nb.length > 1024) throw invalid('dense tensor names must be 1..1024 bytes');
    const h = Buffer.alloc(8 + nb.length);
    h.writeUInt32LE(nb.length, 0);
    nb.copy(h, 4);
    h.writeUInt32LE(arr.length, 4 + nb.length);
    parts.push(h, Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength));
  }
  return Buffer.concat(parts);
}

export function decodeDense(buf: Buffer): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  if (buf.length === 0) return out;
  let off = 0;
  const n = buf.readUInt32LE(off);
  off += 4;
  for (let i = 0; i < n; i++) {
    const nl = buf.readUInt32LE(off);
    off += 4;
    const name = buf.toString('utf8', off, off + nl);
    off += nl;
    const len = buf.readUInt32LE(off);
    off += 4;
    const arr = new Float32Array(len);
    Buffer.from(arr.buffer).set(buf.subarray(off, off + len * 4));
    off += len * 4;
    out.set(name, arr);
  }
  return out;
}

function callAsync<T>(fn: (cb: (err: Error | null, res?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    try {
      fn((err, res) => (err ? reject(fromNative(err, ERROR_CODES)) : resolve(res as T)));
    } catch (e) {
      reject(fromNative(e, ERROR_CODES));
    }
  });
}

function sync<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e, ERROR_CODES);
  }
}

interface NativeTable {
  name: string;
  dim: number;
  opt: number;
  hyper: Float64Array;
  init: number;
  initParams: Float64Array;
  seed: number;
  rows: number;
  rowFloats: number;
}

export class Engine {
  readonly openInfo: OpenInfo;
  private readonly native: any;
  private closed = false;

  private constructor(native: any) {
    this.native = native;
    this.openInfo = native.openInfo();
  }

  /**
   * Opens (creating when absent) the pool in opts.dir. Constant time: no scan,
   * no index rebuild. Throws LOCKED when another process holds the directory.
   */
  static open(opts: OpenOptions): Engine {
    const cacheMb = opts.cacheMb ?? 256;
    const poolMb = opts.poolMb ?? 1024;
    if (!(cacheMb >= 1)) throw invalid('cacheMb must be at least 1');
    const scratchMb = opts.scratchMb ?? DEFAULT_SCRATCH_MB;
    if (!Number.isInteger(scratchMb) || scratchMb < 1 || scratchMb > MAX_SCRATCH_MB)
      throw invalid(`scratchMb must be a whole number of MiB from 1 to ${MAX_SCRATCH_MB}, got ${String(scratchMb)}`);
    if (!opts.memoryOnly && !(poolMb >= 16)) throw invalid('poolMb must be at least 16');
    if (!opts.memoryOnly && !opts.dir) throw invalid('dir is required unless memoryOnly is set');
    const layout = opts.layout ?? 'inplace';
    if (!LAYOUTS.includes(layout)) throw invalid(`layout must be one of ${LAYOUTS.join(', ')}, got ${String(layout)}`);
    const native = sync(
      () =>
        new addon.NativeEngine({
          dir: opts.memoryOnly ? '' : path.resolve(opts.dir as string),
          poolBytes: Math.floor(poolMb * 1024 * 1024),
          cacheBytes: Math.floor(cacheMb * 1024 * 1024),
          scratchBytes: scratchMb * 1024 * 1024,
          memoryOnly: !!opts.memoryOnly,
          layout: LAYOUTS.indexOf(layout),
          inspect: !!opts.inspect,
        }),
    );
    return new Engine(native);
  }

  /** Creates a table; idempotent when the spec is identical, ALREADY_EXISTS when it differs. */
  createTable(spec: TableSpec): void {
    if (typeof spec?.name !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(spec.name)) throw invalid('table name must be 1..64 characters of A-Z a-z 0-9 _ . -');
    if (!Number.isInteger(spec.dim) || spec.dim < 1 || spec.dim > 4096) throw invalid(`dim must be an integer in 1..4096, got ${spec.dim}`);
    if (!Number.isSafeInteger(spec.seed) || spec.seed < 0) throw invalid('seed must be a non-negative integer below 2^53');
    const hyper = hyperArray(spec.optimizer);
    const [initCode, initParams] = initArray(spec.initializer);
    this.live();
    sync(() => this.native.createTable(spec.name, spec.dim, OPT_CODES.indexOf(spec.optimizer.type), hyper, initCode, initParams, spec.seed));
  }

  /** Changes hyperparameters of a live table (for schedules). Fields that change the row layout are refused. */
  updateTable(name: string, update: HyperUpdate): void {
    this.live();
    const t = this.listTables().find((x) => x.name === name);
    if (!t) throw new EngineError('NOT_FOUND', `no table "${name}"`);
    const merged = { ...t.optimizer, ...update, type: t.optimizer.type } as OptimizerSpec;
    sync(() => this.native.updateTable(name, hyperArray(merged)));
  }

  /**
   * Drops a table at once (pulls and pushes get NOT_FOUND, the name is free).
   * A rollback or crash to a point before the drop brings it back; its
   * storage is freed when a checkpoint taken after the drop commits.
   */
  async dropTable(name: string): Promise<void> {
    this.live();
    return callAsync<void>((cb) => this.native.dropTable(name, cb));
  }

  listTables(): TableInfo[] {
    this.live();
    return (sync(() => this.native.listTables()) as NativeTable[]).map((t) => ({
      name: t.name,
      dim: t.dim,
      optimizer: optimizerFrom(OPT_CODES[t.opt], t.hyper),
      initializer: initializerFrom(t.init, t.initParams),
      seed: t.seed,
      rows: t.rows,
      rowFloats: t.rowFloats,
    }));
  }

  /**
   * Rows for the keys, in their order: a Buffer of keys.length/8 x dim
   * float32. With `headroom` (a multiple of 8, at most 64) the rows start at
   * that byte of the Buffer and the bytes before it are the caller's, for a
   * message header framed around the rows without copying them. A reply
   * of rows above `maxBytes` (default and at most 2 GiB) is refused
   * (TOO_LARGE), sized with the table's dim at the call.
   */
  async pull(table: string, keys: Buffer, headroom = 0, maxBytes = 0): Promise<Buffer> {
    this.live();
    return callAsync<Buffer>((cb) => this.native.pull(table, keys, cb, headroom, maxBytes));
  }

  /** Applies the table's optimizer to the gradients (duplicate keys summed). All or nothing. */
  async push(table: string, keys: Buffer, grads: Buffer): Promise<void> {
    this.live();
    return callAsync<void>((cb) => this.native.push(table, keys, grads, cb));
  }

  /**
   * Makes the state at the boundary durable as checkpoint `id`, without
   * dropping the committed one. The boundary is taken before this returns
   * its promise: every push that resolved before the call is inside, every
   * push called after it is outside, and a push still in flight is wholly
   * on one side.
   */
  async prepare(id: number, input: PrepareInput = {}): Promise<void> {
    checkId(id);
    this.live();
    const dense = encodeDense(input.dense);
    const meta = input.meta ?? Buffer.alloc(0);
    if (!Buffer.isBuffer(meta)) throw invalid('meta must be a Buffer');
    const ballot = input.ballot ?? 0;
    if (!Number.isSafeInteger(ballot) || ballot < 0) throw invalid('ballot must be a non-negative integer');
    return callAsync<void>((cb) => this.native.prepare(id, dense, meta, ballot, cb));
  }

  /** Makes prepared checkpoint `id` the one a restart comes back to. */
  async commit(id: number): Promise<void> {
    checkId(id);
    this.live();
    return callAsync<void>((cb) => this.native.commit(id, cb));
  }

  /** Drops prepared checkpoint `id`; the id can never commit afterwards. */
  async abort(id: number): Promise<void> {
    checkId(id);
    this.live();
    return callAsync<void>((cb) => this.native.abort(id, cb));
  }

  /** Brings the running engine back to the last committed checkpoint. Cost independent of the table size. */
  async rollback(): Promise<void> {
    this.live();
    return callAsync<void>((cb) => this.native.rollback(cb));
  }

  /** The committed checkpoint's dense tensors and metadata, or null when none was committed. */
  committedCheckpoint(): CheckpointContent | null {
    this.live();
    const r = sync(() => this.native.committedCheckpoint()) as { id: number; dense: Buffer; meta: Buffer } | null;
    if (!r) return null;
    return { id: r.id, dense: decodeDense(r.dense), meta: r.meta };
  }

  /**
   * Full offline check: walks every index slot and row (proportional to the
   * table, never run at open). Use checkPool() for the whole procedure.
   */
  fullCheck(): PoolCheck {
    this.live();
    return sync(() => this.native.check());
  }

  /**
   * Records ballot b durably when it is higher than the stored one and
   * returns the stored ballot (the cluster checkpoint protocol refuses
   * coordinators with a lower ballot).
   */
  raiseBallot(b: number): number {
    this.live();
    if (!Number.isSafeInteger(b) || b < 0) throw invalid('ballot must be a non-negative safe integer');
    return sync(() => this.native.raiseBallot(b));
  }

  /** The shard identity stored in the pool (clusterId null until set). */
  identity(): ShardIdentity {
    this.live();
    return sync(() => this.native.identity());
  }

  /**
   * Stores the shard identity at first start; the same one again is a no-op,
   * another one is refused (FAILED_PRECONDITION). `sealed: true` also seals
   * it (durably, for good); a call without it leaves the seal as it is.
   */
  setIdentity(id: { clusterId: string; shardIndex: number; shardCount: number; sealed?: boolean }): ShardIdentity {
    this.live();
    if (!Number.isSafeInteger(id.shardIndex) || !Number.isSafeInteger(id.shardCount) || id.shardIndex < 0 || id.shardCount < 1)
      throw invalid('shardIndex and shardCount must be integers, 0 <= shardIndex < shardCount');
    return sync(() => this.native.setIdentity(id.clusterId, id.shardIndex, id.shardCount, id.sealed === true));
  }

  stats(): EngineStats {
    this.live();
    return sync(() => this.native.stats());
  }

  /**
   * Writes back every dirty row and marks the pool cleanly closed. `record`
   * (the server's own state: exactly-once table, dense tensors) is stored in
   * the same transaction as the clean mark and comes back as
   * openInfo.closeRecord from the next open. It goes into the room
   * reserveCloseRecord() keeps; a larger record needs new pool space, and
   * on a full pool the close then fails (the next open recovers from the
   * last checkpoint).
   */
  /**
   * Makes the pool hold room for a close record of `bytes` bytes, so that a
   * later close() with a record that size writes it without allocating.
   * Throws OUT_OF_SPACE when the pool cannot. Returns the room now
   * reserved (at least `bytes`; reservations only grow).
   */
  reserveCloseRecord(bytes: number): number {
    this.live();
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw invalid('close record size must be a non-negative safe integer');
    return sync(() => this.native.reserveCloseRecord(bytes));
  }

  async close(record: Buffer = Buffer.alloc(0)): Promise<void> {
    if (this.closing) return this.closing;
    if (!Buffer.isBuffer(record)) throw invalid('close record must be a Buffer');
    this.closed = true; // no new call starts while it closes
    // A close that fails (the pool's filesystem refused a write) leaves the
    // engine open and usable, and a later close() tries again: a failed
    // close once left it refusing every call, and a second close() then
    // resolved without writing anything.
    this.closing = callAsync<void>((cb) => this.native.close(record, cb)).catch((e: unknown) => {
      this.closed = false;
      this.closing = null;
      throw e;
    });
    return this.closing;
  }
  private closing: Promise<void> | null = null;

  private live(): void {
    if (this.closed) throw new EngineError('FAILED_PRECONDITION', 'the engine is closed');
  }
}

export interface ShardIdentity {
  /** 32 lowercase hex digits, or null before the identity is set. */
  clusterId: string | null;
  shardIndex: number;
  shardCount: number;
  /**
   * A worker saw every shard of the cluster hold this identity (the cluster
   * is formed): an empty pool next to this shard is a replaced one, not a
   * shard still being identified. docs/protocol.md, Identity.
   */
  sealed: boolean;
}

export interface PoolCheck {
  tables: number;
  indexSlots: number;
  rowsLive: number;
  rowsWithoutVersion: number;
  staleSlots: number;
  badEpochs: number;
  /** Logged pools: live versions whose log record is damaged or names another row. */
  badRecords: number;
  problems: string[];
}

/** libpmemobj's own consistency check of the pool file (the pool must not be open). */
export function checkPoolFile(file: string): { consistent: boolean; message: string } {
  return sync(() => addon.checkPoolFile(file));
}

/**
 * The table optimizers applied to one dense row held outside the engine
 * (the server's dense tensors): `row` is n weights followed by the
 * optimizer's state blocks, laid out as a table row of dim n.
 */
export const denseOptimizer = {
  rowFloats(opt: OptimizerSpec, n: number): number {
    return sync(() => addon.rowFloats(OPT_CODES.indexOf(opt.type), hyperArray(opt), n));
  },
  /** Sets the state blocks to the optimizer's initial values (weights to 0). */
  initRow(opt: OptimizerSpec, row: Float32Array): void {
    sync(() => addon.initRow(OPT_CODES.indexOf(opt.type), hyperArray(opt), row));
  },
  /** Applies one update in place; returns the new step count. */
  apply(opt: OptimizerSpec, row: Float32Array, step: number, grads: Float32Array): number {
    return sync(() => addon.applyUpdate(OPT_CODES.indexOf(opt.type), hyperArray(opt), row, step, grads));
  },
  /** Validates an optimizer spec (INVALID_ARGUMENT naming the bad field). */
  validate(opt: OptimizerSpec): void {
    sync(() => addon.rowFloats(OPT_CODES.indexOf(opt.type), hyperArray(opt), 1));
  },
};

/** Packs keys (bigint or safe-integer numbers) into the little-endian uint64 wire form. */
export function packKeys(keys: ArrayLike<bigint | number>): Buffer {
  const b = Buffer.alloc(keys.length * 8);
  for (let i = 0; i < keys.length; i++) b.writeBigUInt64LE(BigInt(keys[i]), i * 8);
  return b;
}

/** Views a float32 Buffer as a Float32Array (copying only when unaligned). */
export function asFloats(buf: Buffer): Float32Array {
  if (buf.byteOffset % 4 === 0) return new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  // Unaligned (a field inside a received message): one memcpy into an aligned array.
  const out = new Float32Array(buf.length / 4);
  new Uint8Array(out.buffer).set(buf);
  return out;
}

export function floatsToBuffer(arr: Float32Array): Buffer {
  return Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength);
}
