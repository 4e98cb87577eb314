// Named dense tensors kept by a shard (SetDense / PullDense / PushDense).
// Each tensor is one row in the table-row layout (weights, then the
// optimizer's state blocks) and is updated by the engine's own optimizer
// code, so a dense tensor and an embedding row follow the same formulas.
//
// Dense tensors are small next to the tables (the dense layers of a CTR
// model), so they live in DRAM and are written whole into each checkpoint
// and into the clean-close record, at the same boundary as the rows.
import { denseOptimizer, type OptimizerSpec } from '../native/engine';
import { ServerError } from './errors';

interface DenseEntry {
  opt: OptimizerSpec;
  n: number;
  row: Float32Array; // n weights, then state (replaced whole by a push)
  step: number;
}

export const MAX_DENSE_NAME = 256;
/** Tensors per shard, and their floats (weights and optimizer state) per shard: 256 MiB. */
export const MAX_DENSE_TENSORS = 4096;
export const MAX_DENSE_FLOATS = 64 * 2 ** 20;
// The optimizer's step count is a uint32 (the native optimizers), so its JSON never outgrows this.
const MAX_STEP = 4294967295;

/** A tensor as SetDense would store it: what its encoding depends on. */
export interface DenseShape {
  name: string;
  n: number;
  opt: OptimizerSpec;
}

export class DenseStore {
  private readonly tensors = new Map<string, DenseEntry>();
  private bound: number | null = null; // encodedBound() without `extra`, until the set of tensors changes

  /** Creates or overwrites a tensor: values as given, optimizer state at its initial values. */
  set(name: string, values: Float32Array, opt: OptimizerSpec): void {
    this.prepareSet(name, values, opt)();
  }

  /**
   * Checks a set (name, values, this shard's limits) and returns what
   * applies it: the shard reserves the close record's room in between, so
   * a refused set takes no pool space (it took the tensor's size for good).
   */
  prepareSet(name: string, values: Float32Array, opt: OptimizerSpec): () => void {
    checkName(name);
    if (values.length === 0) throw new ServerError('INVALID_ARGUMENT', `dense tensor "${name}" has no values`);
    for (let i = 0; i < values.length; i++)
      if (!Number.isFinite(values[i])) throw new ServerError('INVALID_ARGUMENT', `dense tensor "${name}": element ${i} is not finite`);
    const floats = denseOptimizer.rowFloats(opt, values.length);
    const old = this.tensors.get(name);
    if (!old && this.tensors.size >= MAX_DENSE_TENSORS)
      throw new ServerError('OUT_OF_SPACE', `this shard already holds ${MAX_DENSE_TENSORS} dense tensors, its limit; overwrite an existing one instead`);
    if (this.floats - (old?.row.length ?? 0) + floats > MAX_DENSE_FLOATS)
      throw new ServerError(
        'OUT_OF_SPACE',
        `dense tensors on this shard would take more than ${(MAX_DENSE_FLOATS * 4) / 2 ** 20} MiB with their optimizer state`,
      );
    return () => {
      const row = new Float32Array(floats);
      denseOptimizer.initRow(opt, row);
      row.set(values, 0);
      this.tensors.set(name, { opt, n: values.length, row, step: 0 });
      this.bound = null;
    };
  }

  /**
   * An upper bound of encode().length now and after any number of pushes
   * (steps counted at their largest), with `extra` set as well when given.
   * The clean-close record reserves room for it.
   */
  encodedBound(extra?: DenseShape): number {
    if (!extra && this.bound !== null) return this.bound;
    const shapes = new Map<string, { opt: OptimizerSpec; n: number; len: number }>();
    for (const [name, e] of this.tensors) shapes.set(name, { opt: e.opt, n: e.n, len: e.row.length });
    if (extra) shapes.set(extra.name, { opt: extra.opt, n: extra.n, len: denseOptimizer.rowFloats(extra.opt, extra.n) });
    const head = [...shapes].map(([name, e]) => ({ name, opt: e.opt, n: e.n, step: MAX_STEP, len: e.len }));
    let rows = 0;
    for (const e of shapes.values()) rows += e.len * 4;
    const b = 4 + Buffer.byteLength(JSON.stringify(head), 'utf8') + rows;
    if (!extra) this.bound = b;
    return b;
  }

  /** The tensor's number of values (what get returns), without copying it. */
  length(name: string): number {
    return this.entry(name).n;
  }

  get(name: string): Float32Array {
    const e = this.entry(name);
    return e.row.slice(0, e.n);
  }

  push(name: string, grads: Float32Array): void {
    const e = this.entry(name);
    if (grads.length !== e.n) throw new ServerError('INVALID_ARGUMENT', `dense tensor "${name}" has ${e.n} values; the gradient has ${grads.length}`);
    // Applied to a copy and kept only when every value stays finite: a pull
    // must never return a non-finite value.
    const row = e.row.slice();
    const step = denseOptimizer.apply(e.opt, row, e.step, grads);
    for (let i = 0; i < row.length; i++)
      if (!Number.isFinite(row[i]))
        throw new ServerError(
          'INVALID_ARGUMENT',
          `this gradient would make dense tensor "${name}" non-finite (element ${i % e.n}); it was refused and nothing changed`,
        );
    e.row = row;
    e.step = step;
  }

  /** Floats held (weights and state), for the MAX_DENSE_FLOATS cap. */
  private get floats(): number {
    let n = 0;
    for (const e of this.tensors.values()) n += e.row.length;
    return n;
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  /** JSON header (name, optimizer, n, step, row length per tensor) + u32 header length, then the rows as float32. */
  encode(): Buffer {
    const head = [...this.tensors].map(([name, e]) => ({ name, opt: e.opt, n: e.n, step: e.step, len: e.row.length }));
    const hb = Buffer.from(JSON.stringify(head), 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(hb.length);
    return Buffer.concat([len, hb, ...[...this.tensors.values()].map((e) => Buffer.from(e.row.buffer, e.row.byteOffset, e.row.byteLength))]);
  }

  static decode(buf: Buffer): DenseStore {
    const out = new DenseStore();
    if (buf.length === 0) return out;
    const hl = buf.readUInt32LE(0);
    const head = JSON.parse(buf.toString('utf8', 4, 4 + hl)) as { name: string; opt: OptimizerSpec; n: number; step: number; len: number }[];
    let off = 4 + hl;
    for (const h of head) {
      const row = new Float32Array(h.len);
      Buffer.from(row.buffer).set(buf.subarray(off, off + h.len * 4));
      off += h.len * 4;
      out.tensors.set(h.name, { opt: h.opt, n: h.n, row, step: h.step });
    }
    return out;
  }

  private entry(name: string): DenseEntry {
    const e = this.tensors.get(name);
    if (!e) throw new ServerError('NOT_FOUND', `no dense tensor "${name}" on this shard; create it with SetDense`);
    return e;
  }
}

function checkName(name: string): void {
  if (typeof name !== 'string' || name.length === 0 || Buffer.byteLength(name) > MAX_DENSE_NAME)
    throw new ServerError('INVALID_ARGUMENT', `dense tensor names must be 1..${MAX_DENSE_NAME} bytes`);
}
