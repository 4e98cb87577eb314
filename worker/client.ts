// The worker SDK: a client over the N shards of a pmemps cluster.
//
//   const ps = await PsClient.connect({ endpoints: ['10.0.0.1:7000', '10.0.0.2:7000'] });
//   await ps.createTable({ name: 'emb', dim: 16, optimizer: { type: 'adagrad', lr: 0.05 },
//                          initializer: { type: 'normal', mean: 0, std: 0.01 }, seed: 7 });
//   const rows = await ps.pull('emb', keys);      // Float32Array, keys x dim, in key order
//   await ps.push('emb', keys, grads);            // applied once, even when retried
//   await ps.persist({ step, dense, meta });      // a checkpoint on every shard or on none
//   const { step } = await ps.restore();          // back to the newest checkpoint everywhere
//
// Keys go to shard splitmix64(key) mod N (worker/shard.ts); a batch is split
// and deduplicated per shard, shards are called in parallel, and rows come
// back in the caller's order.
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { OptimizerSpec, TableInfo, TableSpec } from '../native/types';
import { failpoint, persistCheckpoint, rejoinCheckpoint, restoreCheckpoint, type PersistInput, type RestoreResult } from './checkpoint';
import { ShardConnection, type TlsOptions } from './connection';
import { IdentityMismatchError, PsError, ServerRestartedError } from './errors';
import { optimizerToWire } from '../proto/load';
import { splitBatch } from './batch';
import { pushRoom, withRoomBefore } from '../proto/fast-codec';
import { GC_HEADROOM_BYTES, keepGcHeadroom } from '../proto/gc-headroom';
import { shardOfDense } from './shard';
import { StallMeter } from './stall';

export type KeysLike = Buffer | BigUint64Array | ArrayLike<number | bigint>;

/** One call of a push: its shard, request, and the seq and lineage it went under (set at its first send). */
interface PushPart {
  s: number;
  method: 'Push' | 'PushDense';
  req: Record<string, unknown>;
  sent: { seq?: number; lineage?: number; uncertain?: boolean };
}

export interface ConnectOptions {
  /** host:port of every shard, in shard order. The same list on every worker. */
  endpoints: string[];
  /**
   * Name of this worker: its identity at barriers, and the prefix of the id
   * its pushes are numbered under (default: random). At most 112 bytes of
   * UTF-8. Each client adds a random suffix for its pushes, so two live
   * clients given one name, or a restart under a clock that went back, can
   * not have a push taken for the other's and dropped as a duplicate.
   */
  workerId?: string;
  /** Deadline of one call, ms (default 30 s). */
  deadlineMs?: number;
  /** How long transient failures (server down or restarting) are retried, ms (default 60 s). */
  retryForMs?: number;
  /** Largest message, MiB; batches are split below it (default 64, as the server). */
  maxMessageMb?: number;
  /**
   * Accept shards without an identity in a cluster whose other shards have
   * one (a replaced, empty pool): their rows start from the initializer.
   */
  adoptNewShards?: boolean;
  /** TLS to every shard: the CA of the servers' certificates, and for mutual TLS this client's certificate and key (PEM). Plaintext without it. */
  tls?: TlsOptions;
  /** Bearer token sent on every call (servers started with --auth-tokens); its role must cover the calls made (README "Security"). */
  token?: string;
  /**
   * Room kept above this process's live JS heap before V8 runs a full
   * collection, MiB (default 64; 0 leaves V8's own policy). Without it each
   * call's megabyte of buffers starts one every few calls (README, "The
   * worker SDK"). Process-wide; a node started with
   * --heap-growing-percent keeps its own setting.
   */
  gcHeadroomMb?: number;
}

export interface ShardStatus {
  shard: number;
  endpoint: string;
  identity: { cluster_id: string; shard_index: number; shard_count: number; sealed: boolean } | null;
  incarnation: number;
  lineage: number;
  last_stop_clean: boolean;
  committed_id: number;
  prepared_id: number;
  last_checkpoint_id: number;
  ballot: number;
  pushes_blocked: boolean;
  needs_restore: boolean;
  restored_ballot: number;
  restoring_ballot: number;
  tables: { spec: { name: string; dim: number }; rows: number }[];
  cache_hit_ratio: number;
  cache_bytes: number;
  cache_budget_bytes: number;
  pool_bytes: number;
  pool_used_bytes: number;
  pmem: boolean;
  version: string;
}

const MAX_CHUNK_BYTES = 16 * 2 ** 20;
/** Below the shards' exactly-once window of 1,024 (server/exactly-once.ts). */
const MAX_PUSHES_IN_FLIGHT = 256;

class Semaphore {
  private waiting: (() => void)[] = [];
  constructor(private free: number) {}
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

/** The shards take worker ids of up to 128 bytes; the SDK's push suffix ('#' and 14 hex digits) takes 15 of them. */
const MAX_WORKER_NAME_BYTES = 112;

export class PsClient {
  readonly workerId: string;
  /** The worker_id its pushes go under: workerId and a suffix of this client's own (see ConnectOptions.workerId). */
  readonly pushWorkerId: string;
  readonly stall = new StallMeter();
  readonly shards: ShardConnection[];
  clusterId = '';
  /**
   * This worker's coordinator ballot: 0 until its first persist() or
   * restore() takes one above every shard's (see acquireBallot).
   */
  ballot = 0;
  private readonly pushSlots: Semaphore[];
  private readonly seqs: number[];
  private readonly dims = new Map<string, number>();
  private closed = false;

  private constructor(readonly opts: ConnectOptions) {
    if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) throw new PsError('endpoints must list at least one server (host:port)');
    if (new Set(opts.endpoints).size !== opts.endpoints.length) throw new PsError('endpoints lists a server twice');
    const gcMb = opts.gcHeadroomMb ?? GC_HEADROOM_BYTES / 2 ** 20;
    if (typeof gcMb !== 'number' || !Number.isFinite(gcMb) || gcMb < 0 || gcMb > 4096)
      throw new PsError(`gcHeadroomMb must be a number of MiB from 0 to 4096 (0: V8's own policy), not ${String(opts.gcHeadroomMb)}`);
    if (
      opts.workerId !== undefined &&
      (typeof opts.workerId !== 'string' ||
        opts.workerId === '' ||
        Buffer.byteLength(opts.workerId) > MAX_WORKER_NAME_BYTES ||
        Buffer.from(opts.workerId).toString() !== opts.workerId)
    )
      throw new PsError(
        `workerId must be a non-empty string of at most ${MAX_WORKER_NAME_BYTES} bytes of valid UTF-8, not ${JSON.stringify(String(opts.workerId)).slice(0, 80)}`,
      );
    this.workerId = opts.workerId ?? `w-${randomBytes(8).toString('hex')}`;
    this.pushWorkerId = `${this.workerId}#${randomBytes(7).toString('hex')}`;
    const defaults = { deadlineMs: opts.deadlineMs ?? 30_000, retryForMs: opts.retryForMs ?? 60_000, maxMessageMb: opts.maxMessageMb };
    this.shards = opts.endpoints.map((e, i) => new ShardConnection(i, e, defaults, this.stall, { tls: opts.tls, token: opts.token }));
    // Seqs start from the clock (microseconds), not 0, though the push id is
    // new per client: a worker with no record whose seqs fell below a shard's
    // watermark is refused (too_old) and must jump ahead, which a start near
    // the present makes rare.
    const base = Date.now() * 1000;
    this.seqs = opts.endpoints.map(() => base);
    this.pushSlots = opts.endpoints.map(() => new Semaphore(MAX_PUSHES_IN_FLIGHT));
    keepGcHeadroom(gcMb * 2 ** 20);
  }

  /**
   * Connects to every shard and checks its identity against the endpoint
   * list: a shard stored as index j of a cluster must be at position j. A
   * new cluster (no shard has an identity) is given one.
   */
  static async connect(opts: ConnectOptions): Promise<PsClient> {
    const c = new PsClient(opts);
    try {
      await c.checkIdentities();
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  get shardCount(): number {
    return this.shards.length;
  }

  // ------------------------------------------------------------ tables

  /** Creates the table on every shard; idempotent for an identical spec (ALREADY_EXISTS when it differs). */
  async createTable(spec: TableSpec): Promise<void> {
    const wire = {
      spec: {
        name: spec.name,
        dim: spec.dim,
        optimizer: optimizerToWire(spec.optimizer),
        initializer: spec.initializer,
        seed: spec.seed,
      },
    };
    await this.all((s) => s.call('CreateTable', wire));
    this.dims.set(spec.name, spec.dim);
  }

  /** Changes hyperparameters (e.g. lr for a schedule) on every shard. */
  async updateTable(name: string, params: Record<string, number | boolean>): Promise<void> {
    const p: Record<string, number> = {};
    for (const [k, v] of Object.entries(params)) p[k] = typeof v === 'boolean' ? Number(v) : v;
    await this.all((s) => s.call('UpdateTable', { name, params: p }));
  }

  /**
   * Drops the table on every shard (NOT_FOUND where it is already gone). A
   * restore() to a checkpoint from before the drop brings it back.
   */
  async dropTable(name: string): Promise<void> {
    await this.all((s) =>
      s.call('DropTable', { name }).catch((e: PsError) => {
        if (e.code !== grpc.status.NOT_FOUND) throw e;
      }),
    );
    this.dims.delete(name);
  }

  /** Tables with their rows summed over the shards. */
  async listTables(): Promise<{ name: string; dim: number; optimizer: OptimizerSpec; rows: number }[]> {
    const per = await this.all((s) => s.call('ListTables', {}));
    const out = new Map<string, { name: string; dim: number; optimizer: OptimizerSpec; rows: number }>();
    for (const r of per)
      for (const t of r.tables) {
        const cur = out.get(t.spec.name);
        if (cur) cur.rows += t.rows;
        else out.set(t.spec.name, { name: t.spec.name, dim: t.spec.dim, optimizer: { type: t.spec.optimizer.type, ...t.spec.optimizer.params }, rows: t.rows });
      }
    return [...out.values()];
  }

  // ------------------------------------------------------------ pull / push

  /** Rows of the keys, keys x dim float32, in the order of the keys (duplicates allowed). */
  async pull(table: string, keys: KeysLike): Promise<Float32Array> {
    this.live();
    const kb = keyBuffer(keys);
    const dim = await this.dimOf(table);
    const n = kb.length / 8;
    const split = splitBatch(kb, this.shards.length);
    const per = await Promise.all(
      split.keys.map(async (sk, s) => {
        if (sk.length === 0) return null;
        const chunks = chunk(sk, dim);
        const parts = await Promise.all(chunks.map((ck) => this.shards[s].call<{ values: Buffer }>('Pull', { table, keys: ck }).then((r) => r.values))).catch(
          async (e: PsError) => {
            // A table missing on one shard: that shard may have come back at a
            // checkpoint from before the table existed. Say so when it did.
            if (e.code === grpc.status.NOT_FOUND) await this.checkContinuity(this.shards[s]);
            throw e;
          },
        );
        const all = parts.length === 1 ? parts[0] : Buffer.concat(parts);
        if (all.length !== (sk.length / 8) * dim * 4) throw new PsError(`shard ${s} returned ${all.length} bytes for ${sk.length / 8} keys of dim ${dim}`);
        return floatView(all);
      }),
    );
    if (split.identity) return per[0]!;
    const out = new Float32Array(n * dim);
    // One memcpy a row (set), not dim element stores in JS: a third of the time.
    for (let i = 0; i < n; i++) {
      const p = split.pos[i] * dim;
      out.set(per[split.shard[i]]!.subarray(p, p + dim), i * dim);
    }
    return out;
  }

  /**
   * Applies the table's optimizer to the gradients (keys x dim float32;
   * gradients of duplicate keys are summed). Each shard applies its part
   * exactly once, retries included. A shard that restarted after a crash
   * throws ServerRestartedError: restore() before pushing on.
   */
  async push(table: string, keys: KeysLike, grads: Float32Array | Buffer): Promise<void> {
    this.live();
    const kb = keyBuffer(keys);
    const g = grads instanceof Float32Array ? grads : floatView(grads);
    const n = kb.length / 8;
    const dim = await this.dimOf(table);
    if (g.length !== n * dim)
      throw new PsError(`push to "${table}": ${n} keys x dim ${dim} needs ${n * dim} gradient values, got ${g.length}`, grpc.status.INVALID_ARGUMENT);
    const split = splitBatch(kb, this.shards.length);
    // Gradients of a key that repeats are summed in the order of the batch,
    // as the engine would sum them (so the result is the same bit for bit).
    // A shard's sums are written where the encoder wants them: at the end of
    // its PushRequest, the other fields going into the room before them
    // (proto/fast-codec.ts withRoomBefore), so they are not copied again.
    const whole: (Buffer | null)[] = split.keys.map(() => null);
    const sums = split.identity
      ? [g]
      : split.keys.map((sk, s) => {
          const n = (sk.length / 8) * dim;
          if (chunk(sk, dim).length > 1) return new Float32Array(n);
          const b = (whole[s] = withRoomBefore(n * 4, pushRoom(table, sk.length, this.pushWorkerId)));
          return new Float32Array(b.buffer, b.byteOffset, n);
        });
    if (!split.identity) {
      // Shards apply their parts on their own; a gradient every shard would
      // refuse is refused here, before any part goes (a NaN is the common case).
      for (let i = 0; i < g.length; i++)
        if (!Number.isFinite(g[i])) throw new PsError(`push to "${table}": gradient value ${i} is ${g[i]}; nothing was sent`, grpc.status.INVALID_ARGUMENT);
      const seen = split.keys.map((sk) => new Uint8Array(sk.length / 8));
      for (let i = 0; i < n; i++) {
        const s = split.shard[i];
        const acc = sums[s];
        const p = split.pos[i];
        const o = i * dim;
        if (!seen[s][p]) {
          seen[s][p] = 1;
          acc.set(g.subarray(o, o + dim), p * dim);
        } else for (let d = 0; d < dim; d++) acc[p * dim + d] += g[o + d];
      }
    }
    const parts: PushPart[] = [];
    for (const [s, sk] of split.keys.entries()) {
      if (sk.length === 0) continue;
      const kc = chunk(sk, dim);
      if (kc.length === 1) {
        // The Buffer the encoder knows (withRoomBefore), not a new view of its memory.
        const gb = whole[s] ?? Buffer.from(sums[s].buffer, sums[s].byteOffset, sums[s].byteLength);
        parts.push({ s, method: 'Push', req: { table, keys: sk, grads: gb }, sent: {} });
        continue;
      }
      // The chunks of a shard's part hold distinct keys: they go in parallel.
      let off = 0;
      for (const ck of kc) {
        const rows = ck.length / 8;
        parts.push({
          s,
          method: 'Push',
          req: { table, keys: ck, grads: Buffer.from(sums[s].buffer, sums[s].byteOffset + off * dim * 4, rows * dim * 4) },
          sent: {},
        });
        off += rows;
      }
    }
    await this.sendParts(parts);
  }

  // Sends a push's parts at once; when some fail, throws the first failure
  // with what the push left (PushOutcome) and a retry of the failed parts.
  private async sendParts(parts: PushPart[]): Promise<void> {
    const results = await Promise.allSettled(parts.map((p) => this.pushOnce(p.s, p.method, p.req, p.sent)));
    const failed = parts.filter((_, i) => results[i].status === 'rejected');
    if (failed.length === 0) return;
    const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    // A shard restarted or restored: the step is replayed from a checkpoint, whatever was applied.
    const restarted = errors.find((e) => e instanceof ServerRestartedError);
    if (restarted) throw restarted;
    const first = errors[0];
    if (!(first instanceof PsError)) throw first;
    const failedShards = [...new Set(failed.map((p) => p.s))].sort((a, b) => a - b);
    const appliedShards = [...new Set(parts.map((p) => p.s))].filter((s) => !failedShards.includes(s)).sort((a, b) => a - b);
    const partlyAppliedShards = [...new Set(parts.filter((_, i) => results[i].status === 'fulfilled').map((p) => p.s))]
      .filter((s) => failedShards.includes(s))
      .sort((a, b) => a - b);
    first.pushOutcome = { appliedShards, failedShards, partlyAppliedShards, retry: () => this.sendParts(failed) };
    const some = [...appliedShards, ...partlyAppliedShards].sort((a, b) => a - b);
    if (some.length > 0)
      first.message += ` (parts on shard${some.length > 1 ? 's' : ''} ${some.join(', ')} were applied: pushing the batch again would apply them twice; error.pushOutcome.retry() re-sends only the rest, exactly once)`;
    throw first;
  }

  // ------------------------------------------------------------ dense tensors

  /** Creates or overwrites a dense tensor kept by its shard (fnv1a64(name) mod N), with the optimizer PushDense applies. */
  async setDense(name: string, values: Float32Array, optimizer: OptimizerSpec): Promise<void> {
    const s = shardOfDense(name, this.shards.length);
    await this.shards[s].call('SetDense', { tensor: { name, values: bufOf(values) }, optimizer: optimizerToWire(optimizer) });
  }

  async pullDense(names: string[]): Promise<Map<string, Float32Array>> {
    const by = new Map<number, string[]>();
    for (const n of names) {
      const s = shardOfDense(n, this.shards.length);
      by.set(s, [...(by.get(s) ?? []), n]);
    }
    const out = new Map<string, Float32Array>();
    await Promise.all(
      [...by].map(async ([s, ns]) => {
        const r = await this.shards[s].call<{ tensors: { name: string; values: Buffer }[] }>('PullDense', { names: ns });
        for (const t of r.tensors) out.set(t.name, floatView(t.values).slice());
      }),
    );
    return new Map(names.map((n) => [n, out.get(n)!]));
  }

  /** Applies the tensor's optimizer to the gradient, exactly once. */
  async pushDense(name: string, grads: Float32Array): Promise<void> {
    const s = shardOfDense(name, this.shards.length);
    await this.sendParts([{ s, method: 'PushDense', req: { name, grads: bufOf(grads) }, sent: {} }]);
  }

  // ------------------------------------------------------------ checkpoints

  /**
   * Two-phase commit over every shard: the checkpoint (rows, optimizer
   * state, dense tensors, meta and step) exists on all shards or on none.
   * With several workers, call it from one chief worker between barrier()s,
   * so no push straddles the cut (see stepBarrier in docs/protocol.md).
   */
  persist(input: PersistInput): Promise<{ id: number }> {
    this.live();
    return this.oneAtATime(() => persistCheckpoint(this, input));
  }

  /**
   * Brings every shard back to the newest checkpoint committed everywhere
   * (resolving one a crash left prepared) and returns its step, meta and
   * dense tensors. Raises the coordinator ballot first, so a late call of an
   * older coordinator is refused.
   */
  restore(): Promise<RestoreResult> {
    this.live();
    return this.oneAtATime(() => restoreCheckpoint(this));
  }

  /**
   * After another worker's restore(): adopt the shards' state without
   * rolling back again, and get the step, meta and dense tensors of the
   * checkpoint they were restored to. Waits (up to waitMs, default 30 s)
   * while that restore has reached some shards but not all; after that,
   * throws: call restore().
   */
  rejoin(opts: { waitMs?: number } = {}): Promise<RestoreResult> {
    this.live();
    return this.oneAtATime(() => rejoinCheckpoint(this, opts.waitMs ?? 30_000));
  }

  // persist, restore and rejoin of one client run one after another: they
  // share the client's ballot, and two persists at once under one ballot
  // read the same next id, so a shard took the second PREPARE for a retry
  // of the first and one checkpoint id held two cuts.
  private checkpointTail: Promise<unknown> = Promise.resolve();
  private oneAtATime<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.checkpointTail.then(fn, fn);
    this.checkpointTail = run.catch(() => undefined);
    return run;
  }

  /**
   * Waits until `parties` workers reached barrier `name` with the same
   * `generation` (use the training step: it survives restarts of workers and
   * servers, so a restarted job never meets a barrier released long ago).
   * Served by shard 0; idempotent per worker when retried.
   */
  async barrier(name: string, parties: number, generation: number, timeoutMs = 600_000): Promise<void> {
    if (!Number.isSafeInteger(generation) || generation < 0 || generation >= 2 ** 52)
      throw new PsError('barrier generation must be a non-negative integer (e.g. the step)', grpc.status.INVALID_ARGUMENT);
    if (!Number.isSafeInteger(parties) || parties < 1)
      throw new PsError('barrier parties must be a positive integer (the number of workers that meet)', grpc.status.INVALID_ARGUMENT);
    if (parties === 1) return;
    await this.shards[0].call('Barrier', { name, generation, parties, worker_id: this.workerId }, { deadlineMs: timeoutMs, retryForMs: timeoutMs });
  }

  async status(): Promise<ShardStatus[]> {
    return this.all(async (s) => ({ ...(await s.call('Status', {})), shard: s.index, endpoint: s.endpoint }));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.shards) s.close();
  }

  // ------------------------------------------------------------ internals

  /** A restore or rejoin took the shards back: a table's dim may be another (dropped and created since the checkpoint). */
  forgetTableDims(): void {
    this.dims.clear();
  }

  /** Runs fn on every shard in parallel (results in shard order). */
  all<T>(fn: (s: ShardConnection) => Promise<T>): Promise<T[]> {
    return Promise.all(this.shards.map(fn));
  }

  /**
   * Sends a push-like call with this worker's next seq for the shard, keeping
   * the seq across retries. `sent` keeps the seq and the state the push was
   * computed against, so that a later retry of a failed part (PushOutcome)
   * goes under the same seq, and not into a restored state.
   */
  private async pushOnce(s: number, method: 'Push' | 'PushDense', req: Record<string, unknown>, sent: PushPart['sent'] = {}): Promise<void> {
    const conn = this.shards[s];
    if (sent.lineage !== undefined && sent.lineage !== conn.lineage) throw new ServerRestartedError(s, conn.endpoint, 'restore');
    // The state this push was computed against, fixed when it is called. A
    // restore (or rejoin) that this worker runs while the push is still
    // retrying on a shard (its other shards failed first), or waiting for a
    // slot, adopts the checkpoint's lineage and incarnation; a retry that
    // then went out with them, or passed the continuity check, was applied
    // on top of the restored state, and again when the step was replayed.
    const lineage = (sent.lineage ??= conn.lineage);
    let incarnation = conn.incarnation;
    // Fewer pushes in flight per shard than its exactly-once window, so a
    // retry always falls inside the window.
    await this.pushSlots[s].acquire();
    try {
      let seq = (sent.seq ??= ++this.seqs[s]);
      // Whether some attempt with this seq may have reached the shard with
      // its outcome unknown (a timeout, a dropped connection): then only the
      // shard's exactly-once record can say whether it was applied.
      let uncertain = sent.uncertain === true; // an earlier send of this part (a PushOutcome retry) counts
      const onUncertain = () => {
        uncertain = sent.uncertain = true;
      };
      for (;;) {
        try {
          await conn.call(method, { ...req, worker_id: this.pushWorkerId, seq, incarnation }, { onUncertain });
          return;
        } catch (e) {
          const err = e as PsError;
          if (err.reason === 'needs_restore') throw new ServerRestartedError(s, conn.endpoint, 'crash');
          if (err.reason === 'too_old' && !uncertain && err.nextSeq !== undefined && err.nextSeq > seq && err.nextSeq < 2 ** 52) {
            // Every attempt so far was refused outright, so this push was
            // never applied: it may go again under a seq the shard can judge
            // (its record of this worker was forgotten to bound memory).
            this.seqs[s] = Math.max(this.seqs[s], err.nextSeq);
            seq = sent.seq = ++this.seqs[s];
            continue;
          }
          if (err.reason !== 'incarnation') throw e;
          await this.checkContinuity(conn, lineage);
          incarnation = conn.incarnation; // a clean restart: the same lineage
        }
      }
    } finally {
      this.pushSlots[s].release();
    }
  }

  /**
   * The shard's incarnation changed. If its lineage is the one this worker
   * knows (and, for a push, the one the push began under), it stopped
   * cleanly and came back with every acknowledged update: adopt the new
   * incarnation. Otherwise its state is a checkpoint.
   */
  async checkContinuity(conn: ShardConnection, lineage = conn.lineage): Promise<void> {
    const st = await conn.call<ShardStatus>('Status', {});
    if (st.lineage === lineage && conn.lineage === lineage) {
      conn.incarnation = st.incarnation;
      return;
    }
    throw new ServerRestartedError(conn.index, conn.endpoint, st.needs_restore ? 'crash' : 'restore');
  }

  /**
   * Checks every shard's identity against the endpoint list, and forms a new
   * cluster in two phases (docs/protocol.md, Identity): phase 1 gives every
   * shard the cluster's identity, shard 0 first (the first id stored there
   * is the cluster's, so concurrent connects never split it); phase 2 seals
   * every shard once all hold it. An empty pool next to unsealed shards is a
   * cluster still being formed (by this worker, a concurrent one or a killed
   * one): it is completed. Next to a sealed shard it is a replaced pool:
   * refused unless adoptNewShards.
   */
  private async checkIdentities(): Promise<void> {
    const n = this.shards.length;
    let sts = await this.status();
    // Every round either finishes or saw another worker's progress (an
    // identity stored, which is never undone); more rounds than that means
    // pools are being replaced under us.
    for (let round = 0; ; round++) {
      if (round > 2 * n + 2)
        throw new IdentityMismatchError(`the shard identities kept changing during connect (${describeIdentities(sts)}); are pools being replaced?`);
      const clusterId = this.checkNamed(sts);
      const fresh = sts.filter((s) => !s.identity);
      if (fresh.length > 0 && sts.some((s) => s.identity?.sealed) && !this.opts.adoptNewShards) {
        // The Status answers are not one snapshot: a shard that answered
        // "empty" may have been identified, and the cluster sealed, before
        // another shard answered "sealed". Asked again now, after the seal
        // was seen, an empty pool is one that lost its identity: replaced.
        const again = await Promise.all(fresh.map((s) => this.statusOf(s.shard)));
        const still = again.filter((s) => !s.identity);
        if (still.length > 0)
          throw new IdentityMismatchError(
            `${still.map((s) => s.endpoint).join(', ')} ha${still.length > 1 ? 've' : 's'} a new, empty pool while the other servers belong to cluster ${clusterId}, which was complete; check --pmem, or pass adoptNewShards to accept an empty shard (its rows start from the initializer)`,
          );
        sts = await this.status();
        continue;
      }
      let id = clusterId;
      let claimed = false;
      if (id === null) {
        // A new cluster: shard 0 decides its id. A worker whose proposal
        // lost reads the winner's id in the next round.
        const proposal = randomBytes(16).toString('hex');
        if (!(await this.offerIdentity(0, proposal, false))) {
          sts = await this.status();
          continue;
        }
        failpoint('identity.after_claim');
        id = proposal;
        claimed = true;
      }
      const cid = id;
      const phase1 = await Promise.all(fresh.filter((s) => !(claimed && s.shard === 0)).map((s) => this.offerIdentity(s.shard, cid, false)));
      if (phase1.includes(false)) {
        sts = await this.status();
        continue;
      }
      failpoint('identity.after_identify');
      let sealed = 0;
      const phase2 = await Promise.all(
        sts
          .filter((s) => !s.identity?.sealed)
          .map(async (s) => {
            const ok = await this.offerIdentity(s.shard, cid, true);
            if (ok && ++sealed === 1) failpoint('identity.after_first_seal');
            return ok;
          }),
      );
      if (phase2.includes(false)) {
        sts = await this.status();
        continue;
      }
      this.clusterId = cid;
      for (const s of sts) {
        this.shards[s.shard].incarnation = s.incarnation;
        this.shards[s.shard].lineage = s.lineage;
      }
      return;
    }
  }

  /** The cluster id the identified shards agree on (null: none has one); throws if they do not fit the endpoint list. */
  private checkNamed(sts: ShardStatus[]): string | null {
    const n = this.shards.length;
    const named = sts.filter((s) => s.identity);
    const clusters = new Set(named.map((s) => s.identity!.cluster_id));
    if (clusters.size > 1) throw new IdentityMismatchError(`the servers belong to different clusters: ${describeIdentities(sts)}`);
    for (const s of named) {
      const id = s.identity!;
      if (id.shard_index !== s.shard || id.shard_count !== n)
        throw new IdentityMismatchError(
          `${s.endpoint} is shard ${id.shard_index} of ${id.shard_count} but the endpoint list has it at position ${s.shard} of ${n}; the list must name the servers in their shard order (a reordered or wrong list would send keys to the wrong rows)`,
        );
    }
    return named.length > 0 ? named[0].identity!.cluster_id : null;
  }

  private async statusOf(shard: number): Promise<ShardStatus> {
    const s = this.shards[shard];
    return { ...(await s.call('Status', {})), shard, endpoint: s.endpoint };
  }

  /**
   * SetIdentity on one shard; false when the shard refused it because it
   * holds another identity, or (sealing) none: the caller reads the shards
   * again and decides on what they hold now.
   */
  private async offerIdentity(shard: number, clusterId: string, sealed: boolean): Promise<boolean> {
    try {
      await this.shards[shard].call('SetIdentity', { identity: { cluster_id: clusterId, shard_index: shard, shard_count: this.shards.length, sealed } });
      return true;
    } catch (e) {
      if ((e as PsError).code === grpc.status.FAILED_PRECONDITION) return false;
      throw e;
    }
  }

  private async dimOf(table: string): Promise<number> {
    let d = this.dims.get(table);
    if (d === undefined) {
      const r = await this.shards[0].call<{ tables: TableInfoWire[] }>('ListTables', {});
      for (const t of r.tables) this.dims.set(t.spec.name, t.spec.dim);
      d = this.dims.get(table);
      if (d === undefined) throw new PsError(`no table "${table}"; create it with createTable`, grpc.status.NOT_FOUND, 0);
    }
    return d;
  }

  private live(): void {
    if (this.closed) throw new PsError('the client is closed');
  }
}

interface TableInfoWire {
  spec: { name: string; dim: number };
  rows: number;
}

export type { TableInfo };

export function keyBuffer(keys: KeysLike): Buffer {
  if (Buffer.isBuffer(keys)) {
    if (keys.length % 8 !== 0)
      throw new PsError(`keys Buffer must hold packed uint64 (a multiple of 8 bytes), got ${keys.length}`, grpc.status.INVALID_ARGUMENT);
    return keys;
  }
  if (keys instanceof BigUint64Array) return Buffer.from(keys.buffer, keys.byteOffset, keys.byteLength);
  const b = Buffer.allocUnsafe(keys.length * 8);
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i];
    if (typeof k === 'number' && !(Number.isSafeInteger(k) && k >= 0))
      throw new PsError(`key #${i} (${k}) is not a non-negative safe integer; pass bigints`, grpc.status.INVALID_ARGUMENT);
    b.writeBigUInt64LE(BigInt(k), i * 8);
  }
  return b;
}

function floatView(b: Buffer): Float32Array {
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
  // Unaligned (a field inside a received message): one memcpy into an aligned array.
  const out = new Float32Array(b.length / 4);
  new Uint8Array(out.buffer).set(b);
  return out;
}

function bufOf(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

// Splits one shard's keys so that no request or response passes MAX_CHUNK_BYTES.
function chunk(keys: Buffer, dim: number): Buffer[] {
  const per = Math.max(1, Math.floor(MAX_CHUNK_BYTES / (dim * 4)));
  if (keys.length / 8 <= per) return [keys];
  const out: Buffer[] = [];
  for (let off = 0; off < keys.length; off += per * 8) out.push(keys.subarray(off, Math.min(keys.length, off + per * 8)));
  return out;
}

function describeIdentities(sts: ShardStatus[]): string {
  return sts
    .map(
      (s) => `${s.endpoint}=${s.identity ? `${s.identity.cluster_id.slice(0, 8)}/${s.identity.shard_index}${s.identity.sealed ? '' : ' (unsealed)'}` : 'new'}`,
    )
    .join(', ');
}
