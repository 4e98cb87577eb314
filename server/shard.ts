// One shard of a pmemps cluster, independent of gRPC: the engine plus what
// the service adds around it — exactly-once pushes, dense tensors, the
// incarnation and lineage that tell workers whether the state they pushed
// into is still there, and the shard's side of the checkpoint protocol
// (docs/protocol.md).
//
// Invariants:
//  * Every checkpoint and the clean-close record hold the rows, the
//    exactly-once record and the dense tensors of one boundary: a push is
//    counted in the same synchronous stretch as its gate check and uncounted
//    only after its exactly-once record; prepare closes the gate, waits for
//    the count to reach zero, takes the engine's boundary and the two
//    snapshots in one synchronous stretch, then reopens the gate.
//  * A shard that started after a crash refuses writes (needsRestore) until
//    a Restore, whoever asks: its state is a checkpoint.
//  * Checkpoint, RaiseBallot and Restore run one at a time (the protocol
//    queue), each checking the ballot after every wait, so a restore that
//    raised the ballot is never overtaken by an older coordinator's call.
//  * lineage changes exactly when the state stops being the continuation of
//    what was acknowledged: a start after a crash, and a restore.
import { randomInt } from 'node:crypto';
import {
  Engine,
  EngineError,
  asFloats,
  type EngineStats,
  type OpenInfo,
  type OptimizerSpec,
  type PoolLayout,
  type ShardIdentity,
  type TableInfo,
  type TableSpec,
} from '../native/engine';
import { shardOfDense } from '../worker/shard';
import { DenseStore, type DenseShape } from './dense';
import { ExactlyOnce, MAX_SEQ_AHEAD_US } from './exactly-once';
import { ServerError } from './errors';
import { log } from './log';
import { prepareDigest } from './prepare-digest';

export interface ShardOptions {
  dir: string;
  cacheMb: number;
  /** Engine.open's scratchMb (default 256). */
  scratchMb?: number;
  poolMb: number;
  /** Row layout of a pool created here (default 'auto'). */
  layout?: PoolLayout | 'auto';
}

/** A refusal the service maps to a gRPC code other than the engine's. */

// Envelope of the engine's checkpoint meta and of the close record: a small
// JSON header with section lengths, then the sections.
interface EnvelopeHead {
  v: 1;
  lineage?: number;
  incarnation?: number;
  restoredBallot?: number;
  restoringBallot?: number;
  needsRestore?: boolean;
  sections: Record<string, number>;
}
function encodeEnvelope(head: Omit<EnvelopeHead, 'sections' | 'v'>, sections: Record<string, Buffer>): Buffer {
  const h: EnvelopeHead = { v: 1, ...head, sections: Object.fromEntries(Object.entries(sections).map(([k, b]) => [k, b.length])) };
  const hb = Buffer.from(JSON.stringify(h), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32LE(hb.length);
  return Buffer.concat([len, hb, ...Object.values(sections)]);
}
function decodeEnvelope(buf: Buffer): { head: EnvelopeHead; sections: Record<string, Buffer> } {
  const hl = buf.readUInt32LE(0);
  const head = JSON.parse(buf.toString('utf8', 4, 4 + hl)) as EnvelopeHead;
  const sections: Record<string, Buffer> = {};
  let off = 4 + hl;
  for (const [k, n] of Object.entries(head.sections)) {
    sections[k] = buf.subarray(off, off + n);
    off += n;
  }
  return { head, sections };
}

/**
 * The most one accepted call may move a checkpoint id or a ballot. Both stay
 * below 2^52, so exhausting either takes at least 2^52 / 2^20 = 2^32 accepted
 * calls (docs/protocol.md, "Ids and ballots").
 */
export const MAX_ID_STEP = 2 ** 20;
export const MAX_BALLOT_STEP = 2 ** 20;

function checkNewId(id: number, st: CheckpointState): void {
  const last = Math.max(st.lastId, st.committedId);
  if (id <= last)
    throw new ServerError('FAILED_PRECONDITION', `checkpoint id ${id} must be greater than ${last} (ids strictly increase; an aborted id never comes back)`);
  if (id > last + MAX_ID_STEP)
    throw new ServerError(
      'ID_STEP',
      `checkpoint id ${id} is more than 2^20 above this shard's last id ${last}; take the next id (max over the shards of last_checkpoint_id, + 1)`,
    );
}

function checkBallotStep(b: number, cur: number): void {
  if (b > cur + MAX_BALLOT_STEP)
    throw new ServerError('BALLOT_STEP', `ballot ${b} is more than 2^20 above this shard's ballot ${cur}; raise it in steps of at most 2^20 (the SDK does)`);
}

// The close record's size for sections of these sizes: lineage,
// incarnation and ballots (below 2^52) counted at their longest.
function closeRecordBound(dedup: number, dense: number): number {
  const head = JSON.stringify({
    v: 1,
    lineage: 2 ** 53,
    incarnation: 2 ** 53,
    restoredBallot: 2 ** 53,
    restoringBallot: 2 ** 53,
    needsRestore: true,
    sections: { dedup, dense },
  });
  return 4 + Buffer.byteLength(head, 'utf8') + dedup + dense;
}

const noop = (): void => undefined;

function newId(): number {
  // 52 random bits: unique in practice, exact as a JS number and as uint64.
  return randomInt(1, 2 ** 26) * 2 ** 26 + randomInt(0, 2 ** 26);
}

export interface CheckpointState {
  committedId: number;
  preparedId: number;
  lastId: number;
  ballot: number;
  /** RaiseBallot only: the ballot before the call. */
  previous?: number;
}

/** A committed checkpoint as the trainer gave it: its id, its metadata and its dense tensors. */
export interface CommittedCheckpoint {
  id: number;
  meta: Buffer;
  dense: Map<string, Float32Array>;
}

export class Shard {
  // Private: the handlers reach the engine only through the Shard, so that
  // validation, limits and bookkeeping of every operation live here.
  private readonly engine: Engine;
  incarnation: number;
  lineage: number;
  /**
   * The ballot of the restore that made this state (0: none since the pool
   * was created). Shards that a restore has not reached yet hold an older
   * one, so a worker that rejoins can tell a finished restore from one
   * under way (rejoin requires one value on every shard).
   */
  restoredBallot = 0;
  /**
   * The highest ballot a coordinator raised here to restore (RaiseBallot
   * with for_restore). Above restoredBallot, a restore is under way, or
   * stopped part-way: its Restore has not reached this shard. Rejoin waits
   * for it, and a persist does not outrank it.
   */
  restoringBallot = 0;
  readonly lastStopClean: boolean;
  private dedup: ExactlyOnce;
  private dense: DenseStore;
  private gate: Promise<void> | null = null; // set while a prepare takes its boundary
  private pushesInEngine = 0;
  private drainWaiters: (() => void)[] = [];
  /** A checkpoint prepared before this start and not yet resolved: pushes wait for its commit or abort. */
  blockedBy: number;
  /** Started after a crash and not restored since: the state is a checkpoint while other shards may have gone on. */
  needsRestore: boolean;
  private protocolTail: Promise<unknown> = Promise.resolve();
  private closing = false;
  /** Room the pool holds for the clean-close record (reserveCloseRoom). */
  private closeRoom: number;
  /**
   * The checkpoint prepared here and the ballot of the coordinator that
   * prepared it in this process (null: prepared before this start, ballot
   * unknown). A PREPARE of that id is a retry only under that ballot.
   */
  private preparedBy: { id: number; ballot: number | null; digest?: string } | null = null;
  /** Workers unknown to the exactly-once record with pushes in flight, and their entries' bytes. */
  private readonly admitted = new Map<string, number>();
  private admittedBytes = 0;
  /**
   * The committed checkpoint as readCheckpoint last read it. Reading copies
   * the whole checkpoint out of the pool (its dense tensors and the
   * server's own state, hundreds of MiB at most) on the event loop, so
   * callers at once share one copy. Weakly held: the copy lives only as
   * long as a reply uses it, and DRAM stays within its bound.
   */
  private lastRead: WeakRef<CommittedCheckpoint> | null = null;

  constructor(opts: ShardOptions) {
    this.engine = Engine.open({ dir: opts.dir, cacheMb: opts.cacheMb, scratchMb: opts.scratchMb, poolMb: opts.poolMb, layout: opts.layout ?? 'auto' });
    const oi = this.engine.openInfo;
    this.lastStopClean = oi.cleanClose;
    this.blockedBy = oi.pushesBlocked ? (oi.prepared ?? 0) : 0;
    if (oi.prepared) this.preparedBy = { id: oi.prepared, ballot: null };
    this.needsRestore = !oi.created && !oi.cleanClose;
    this.incarnation = newId();
    this.dedup = new ExactlyOnce();
    this.dense = new DenseStore();
    this.closeRoom = this.engine.reserveCloseRecord(0);
    if (oi.cleanClose && oi.closeRecord && oi.closeRecord.length > 0) {
      const { head, sections } = decodeEnvelope(oi.closeRecord);
      this.lineage = head.lineage ?? newId();
      this.restoredBallot = head.restoredBallot ?? 0;
      this.restoringBallot = head.restoringBallot ?? 0;
      // Came back after a crash, then stopped cleanly before any restore:
      // still a checkpoint while other shards may have gone on.
      if (head.needsRestore) this.needsRestore = true;
      this.dedup = ExactlyOnce.decode(sections.dedup ?? Buffer.alloc(0));
      this.dense = DenseStore.decode(sections.dense ?? Buffer.alloc(0));
    } else if (oi.created) {
      this.lineage = newId();
    } else {
      // After a crash the rows are those of the last committed checkpoint
      // (or of the prepared one once resolved): so are the bookkeeping state.
      this.lineage = newId();
      this.loadCommittedState();
    }
  }

  // ------------------------------------------------------------ tables

  createTable(spec: TableSpec): boolean {
    this.live();
    const before = this.engine.listTables().some((t) => t.name === spec.name);
    this.engine.createTable(spec);
    return !before;
  }

  listTables(): TableInfo[] {
    return this.engine.listTables();
  }

  /** Changes hyperparameters of the table's optimizer (taking effect with the next push); its spec after the change. */
  updateTable(name: string, params: Record<string, number>): TableInfo {
    this.live();
    this.engine.updateTable(name, params);
    return this.engine.listTables().find((t) => t.name === name)!;
  }

  /** The engine's counters and sizes (Status, metrics). */
  stats(): EngineStats {
    return this.engine.stats();
  }

  /** What the pool was at open: created, last stop clean, on persistent memory, checkpoints. */
  get openInfo(): OpenInfo {
    return this.engine.openInfo;
  }

  /** Drops a table; a restore of a checkpoint from before the drop brings it back. */
  dropTable(name: string): Promise<void> {
    this.live();
    return this.engine.dropTable(name);
  }

  // ------------------------------------------------------------ pull / push

  /** Rows for the keys; `headroom` bytes free before them, at most `maxBytes` of rows (Engine.pull). */
  pull(table: string, keys: Buffer, headroom = 0, maxBytes = 0): Promise<Buffer> {
    this.live();
    return this.engine.pull(table, keys, headroom, maxBytes);
  }

  /** Applies the push once per (worker, seq); resolves true when it was a duplicate. */
  async push(table: string, keys: Buffer, grads: Buffer, worker: string, seq: number, incarnation: number): Promise<boolean> {
    return this.exactlyOnce(worker, seq, incarnation, () => this.engine.push(table, keys, grads));
  }

  // ------------------------------------------------------------ dense

  setDense(name: string, values: Float32Array, opt: OptimizerSpec): void {
    this.live();
    this.writable();
    this.ownDense(name);
    const apply = this.dense.prepareSet(name, values, opt);
    this.reserveCloseRoom('', { name, n: values.length, opt });
    apply();
  }

  /** What pullDense(names) returns, in bytes, without copying a value: the reply budget is taken before. */
  denseBytes(names: string[]): number {
    this.live();
    let bytes = 0;
    for (const n of names) bytes += this.dense.length(n) * 4;
    return bytes;
  }

  pullDense(names: string[]): Map<string, Float32Array> {
    this.live();
    return new Map(names.map((n) => [n, this.dense.get(n)]));
  }

  async pushDense(name: string, grads: Buffer, worker: string, seq: number, incarnation: number): Promise<boolean> {
    this.ownDense(name);
    return this.exactlyOnce(worker, seq, incarnation, async () => {
      this.dense.push(name, asFloats(grads));
    });
  }

  // ------------------------------------------------------------ checkpoints

  checkpointState(): CheckpointState {
    const st = this.engine.stats();
    return { committedId: st.committed ?? 0, preparedId: st.prepared ?? 0, lastId: st.lastId, ballot: this.engine.raiseBallot(0) };
  }

  prepare(id: number, ballot: number, meta: Buffer, dense: Map<string, Float32Array>, incarnation: number): Promise<CheckpointState> {
    return this.protocol(ballot, async () => {
      const st = this.checkpointState();
      if (st.committedId === id) return st; // a retry
      if (st.preparedId === id) {
        // A retry of the coordinator that prepared it. Another coordinator's
        // PREPARE of the same id (it read the shards' ids before the first
        // one's PREPARE landed here) was answered as a retry, and its COMMIT
        // then made one checkpoint id hold two cuts: the first coordinator's
        // on this shard, its own on the others.
        const by = this.preparedBy;
        // Prepared before this server restarted: a coordinator that sent it
        // then learns of the restart (reason incarnation: the SDK tells the
        // crash from a clean restart), not of another coordinator.
        if (by?.ballot === null) this.checkIncarnation(incarnation);
        if (by && by.id === id && by.ballot !== ballot)
          throw new ServerError(
            'FAILED_PRECONDITION',
            `checkpoint ${id} is prepared here by another coordinator${by.ballot === null ? ' (before this server started)' : ` (ballot ${by.ballot})`}; abort it and prepare a new id (the SDK's persist aborts it, restore() resolves it)`,
          );
        // A retry carries what the first PREPARE carried; other content under
        // the same ballot is a second persist of one coordinator at once.
        if (by?.digest !== undefined && by.digest !== (await prepareDigest(meta, dense)))
          throw new ServerError(
            'FAILED_PRECONDITION',
            `checkpoint ${id} is prepared here with other content under the same ballot (two persists at once from one coordinator?); abort it and prepare a new id`,
          );
        return st;
      }
      this.checkIncarnation(incarnation);
      this.writable();
      if (st.preparedId !== 0)
        throw new ServerError(
          'FAILED_PRECONDITION',
          `checkpoint ${st.preparedId} is prepared here and unresolved; COMMIT or ABORT it first (the SDK's restore() does) before preparing ${id}`,
        );
      checkNewId(id, st);
      // The ballot is recorded by the engine with the prepared checkpoint,
      // in one transaction: a prepare that fails (a full pool) moves nothing.
      // Close the gate, let the pushes already inside the engine finish, and
      // take every snapshot at one boundary.
      let open!: () => void;
      this.gate = new Promise<void>((r) => (open = r));
      try {
        await this.drain();
        this.checkBallot(ballot); // a restore may have raised it while we waited
        const envelope = encodeEnvelope({ lineage: this.lineage }, { user: meta, dedup: this.dedup.encode(), dense: this.dense.encode() });
        const done = this.engine.prepare(id, { dense, meta: envelope, ballot }); // boundary taken synchronously
        this.gate = null;
        open();
        await done;
        this.preparedBy = { id, ballot, digest: await prepareDigest(meta, dense) };
      } finally {
        if (this.gate) {
          this.gate = null;
          open();
        }
      }
      return this.checkpointState();
    });
  }

  commit(id: number, ballot: number): Promise<CheckpointState> {
    return this.protocol(ballot, async (adopt) => {
      const st = this.checkpointState();
      if (st.committedId === id) return st;
      if (st.preparedId !== id)
        throw new ServerError(
          'FAILED_PRECONDITION',
          `checkpoint ${id} is not prepared on this shard (committed ${st.committedId}, prepared ${st.preparedId || 'none'})`,
        );
      adopt();
      try {
        await this.engine.commit(id);
      } finally {
        this.lastRead = null; // a read during the commit may hold either checkpoint
      }
      if (this.blockedBy === id) {
        // Prepared before this start: the rows are now that checkpoint's, so
        // is the bookkeeping.
        this.loadCommittedState();
        this.blockedBy = 0;
      }
      return this.checkpointState();
    });
  }

  abort(id: number, ballot: number): Promise<CheckpointState> {
    return this.protocol(ballot, async (adopt) => {
      const st = this.checkpointState();
      if (st.committedId === id) throw new ServerError('FAILED_PRECONDITION', `checkpoint ${id} is already committed on this shard; it cannot be aborted`);
      // An id at or below last_id is already aborted or superseded: nothing to do.
      if (id !== st.preparedId && id > st.lastId) checkNewId(id, st);
      adopt();
      // The engine records an id never prepared here too, so a late PREPARE
      // of it (an old coordinator's retry) is refused.
      await this.engine.abort(id);
      if (this.blockedBy === id) this.blockedBy = 0;
      return this.checkpointState(); // aborting an id never prepared here is a no-op
    });
  }

  /**
   * Records ballot b durably when higher; returns the shard's state after
   * it. forRestore: the coordinator takes b to restore (restoringBallot).
   */
  raiseBallot(b: number, forRestore = false): Promise<CheckpointState> {
    return this.protocol(null, async () => {
      const previous = this.engine.raiseBallot(0);
      checkBallotStep(b, previous);
      this.engine.raiseBallot(b);
      if (forRestore && b >= previous) this.restoringBallot = Math.max(this.restoringBallot, b);
      return { ...this.checkpointState(), previous };
    });
  }

  /**
   * Brings the shard back to its committed checkpoint: rows, exactly-once
   * record, dense tensors; a new incarnation and lineage. Refused while a
   * prepared checkpoint is unresolved (the coordinator resolves it first).
   */
  restore(ballot: number, expectId: number): Promise<CommittedCheckpoint> {
    return this.protocol(ballot, async (adopt) => {
      const st = this.checkpointState();
      if (st.preparedId !== 0)
        throw new ServerError('FAILED_PRECONDITION', `checkpoint ${st.preparedId} is prepared and unresolved; commit or abort it before restoring`);
      if (expectId && st.committedId !== expectId)
        throw new ServerError('FAILED_PRECONDITION', `this shard's committed checkpoint is ${st.committedId || 'none'}, not ${expectId}`);
      // A Restore under the ballot that made this state is a retry (or a
      // duplicate): the rollback is done, and another would undo pushes
      // acknowledged since, on this shard alone, under the same
      // restored_ballot that tells rejoin the shards are one restore's.
      // (Ballot 0, a client outside the coordinator protocol on a shard no
      // coordinator ever reached, rolls back every time.)
      if (ballot !== 0 && ballot === this.restoredBallot) return this.readCheckpoint();
      adopt();
      let open!: () => void;
      this.gate = new Promise<void>((r) => (open = r));
      try {
        await this.drain();
        await this.engine.rollback();
        const content = this.loadCommittedState();
        this.incarnation = newId();
        this.lineage = newId();
        this.restoredBallot = ballot;
        this.needsRestore = false;
        log.info({ checkpoint: st.committedId, incarnation: this.incarnation, lineage: this.lineage, ballot }, 'restored to the committed checkpoint');
        return content;
      } finally {
        this.gate = null;
        open();
      }
    });
  }

  /** The committed checkpoint's trainer metadata and dense tensors; changes nothing. Do not modify what it returns: it is shared. */
  readCheckpoint(): CommittedCheckpoint {
    this.live();
    const shared = this.lastRead?.deref();
    if (shared) return shared;
    const c = this.engine.committedCheckpoint();
    if (!c) return { id: 0, meta: Buffer.alloc(0), dense: new Map() };
    const content = { id: c.id, meta: Buffer.from(decodeEnvelope(c.meta).sections.user ?? Buffer.alloc(0)), dense: c.dense };
    this.lastRead = new WeakRef(content);
    return content;
  }

  // ------------------------------------------------------------ identity, lifecycle

  identity(): ShardIdentity {
    return this.engine.identity();
  }

  setIdentity(clusterId: string, shardIndex: number, shardCount: number, sealed = false): ShardIdentity {
    this.live();
    if (!/^[0-9a-f]{32}$/.test(clusterId)) throw new ServerError('INVALID_ARGUMENT', 'cluster_id must be 32 lowercase hex digits');
    return this.engine.setIdentity({ clusterId, shardIndex, shardCount, sealed });
  }

  /** Refuses new work, waits for the pushes in the engine, then closes cleanly with the bookkeeping state. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    await this.protocolTail.catch(() => undefined);
    await this.drain();
    const record = encodeEnvelope(
      {
        lineage: this.lineage,
        incarnation: this.incarnation,
        restoredBallot: this.restoredBallot,
        restoringBallot: this.restoringBallot,
        needsRestore: this.needsRestore || undefined,
      },
      { dedup: this.dedup.encode(), dense: this.dense.encode() },
    );
    await this.engine.close(record);
  }

  get closed(): boolean {
    return this.closing;
  }

  // ------------------------------------------------------------ internals

  private checkIncarnation(incarnation: number): void {
    if (incarnation !== 0 && incarnation !== this.incarnation)
      throw new ServerError(
        'INCARNATION',
        `this call expects server incarnation ${incarnation} but the server is at ${this.incarnation} (it started, restarted or was restored since); read Status: the same lineage means nothing acknowledged was lost (retry with the new incarnation), another lineage means the state is a checkpoint (restore)`,
      );
  }

  private writable(): void {
    if (this.needsRestore)
      throw new ServerError(
        'NEEDS_RESTORE',
        "this shard came back after a crash at its last committed checkpoint and has not been restored since; restore the cluster (the SDK's restore()) before writing",
      );
    if (this.blockedBy)
      throw new ServerError('FAILED_PRECONDITION', `checkpoint ${this.blockedBy} was prepared before the restart and is unresolved; commit or abort it first`);
  }

  // Every push and dense push: gate, then count, then dedup and apply, then
  // record, then uncount. The gate check and the count happen in one
  // synchronous stretch and the count drops only after the record, so a
  // prepare, restore or close that drained the count sees the rows and the
  // exactly-once record of the same pushes.
  private async exactlyOnce(worker: string, seq: number, incarnation: number, apply: () => Promise<void>): Promise<boolean> {
    this.live();
    this.checkIncarnation(incarnation);
    if (worker && (!Number.isSafeInteger(seq) || seq <= 0)) throw new ServerError('INVALID_ARGUMENT', 'seq must be a positive integer when worker_id is set');
    if (worker && seq > Date.now() * 1000 + MAX_SEQ_AHEAD_US)
      throw new ServerError(
        'INVALID_ARGUMENT',
        `seq ${seq} is more than an hour ahead of this server's clock in microseconds; seqs start from the worker's clock (check the hosts' clocks)`,
      );
    while (this.gate) await this.gate; // no await between the last check and the count
    this.live();
    this.checkIncarnation(incarnation); // the gate may have been a restore
    this.writable();
    const settled = this.reserveCloseRoom(worker);
    if (worker) this.dedup.pin(worker); // in the same synchronous stretch as the admission
    this.pushesInEngine++;
    try {
      if (!worker) {
        await apply();
        return false;
      }
      for (;;) {
        const s = this.dedup.state(worker, seq);
        if (s === 'applied') return true;
        if (s === 'too-old')
          throw new ServerError(
            'TOO_OLD',
            `push ${seq} of this worker is older than what the shard's exactly-once record can judge (it may have been applied and forgotten); nothing was applied. A push never sent before may be sent again with seq >= ${this.dedup.nextSeq(worker)}`,
            { 'pmemps-next-seq': String(this.dedup.nextSeq(worker)) },
          );
        if (s === 'in-flight') {
          // A retry racing its original: the original's outcome decides.
          await this.dedup.running(worker, seq)!.catch(() => undefined);
          continue;
        }
        await this.dedup.applyOnce(worker, seq, apply);
        return false;
      }
    } finally {
      if (worker) this.dedup.unpin(worker);
      settled();
      if (--this.pushesInEngine === 0) for (const w of this.drainWaiters.splice(0)) w();
    }
  }

  /**
   * Refuses a write (OUT_OF_SPACE, nothing changed) that could make the
   * clean-close record outgrow the room the pool holds for it, when the
   * pool cannot reserve more: once acknowledged, a write must survive a
   * clean stop, and the stop writes the record without allocating. The
   * record grows with a worker the exactly-once record does not know yet
   * (counted from admission until its push settled: first pushes of several
   * workers may run at once) and with SetDense. Returns what to call once
   * the write settled.
   */
  private reserveCloseRoom(worker: string, dense?: DenseShape): () => void {
    const fresh = worker !== '' && !this.dedup.knows(worker);
    // A push of a worker the record knows grows nothing: the common case
    // costs one map lookup.
    if (!fresh && !dense) return noop;
    const extra = fresh && !this.admitted.has(worker) ? ExactlyOnce.entryBytes(worker) : 0;
    const need = closeRecordBound(this.dedup.encodedBound() + this.admittedBytes + extra, this.dense.encodedBound(dense));
    if (need > this.closeRoom) {
      try {
        this.closeRoom = this.engine.reserveCloseRecord(need);
      } catch (e) {
        if (!(e instanceof EngineError && e.code === 'OUT_OF_SPACE')) throw e;
        throw new ServerError(
          'OUT_OF_SPACE',
          `refused, nothing changed: the pool is full and cannot hold the ${need}-byte record a clean stop would then write (${dense ? `dense tensor "${dense.name}"` : `exactly-once entry of new worker "${worker}"`}); free space (DropTable, then a checkpoint) or use a larger pool`,
        );
      }
    }
    if (!fresh) return noop;
    this.admitted.set(worker, (this.admitted.get(worker) ?? 0) + 1);
    this.admittedBytes += extra;
    return () => {
      const n = (this.admitted.get(worker) ?? 1) - 1;
      if (n > 0) this.admitted.set(worker, n);
      else {
        this.admitted.delete(worker);
        this.admittedBytes -= ExactlyOnce.entryBytes(worker);
      }
    };
  }

  private drain(): Promise<void> {
    if (this.pushesInEngine === 0) return Promise.resolve();
    return new Promise<void>((r) => this.drainWaiters.push(r));
  }

  // ballot null: the call is RaiseBallot itself. Otherwise the ballot is
  // checked first and recorded durably only when fn calls adopt(), after its
  // own checks: a refused call moves nothing (a refusal that raised the
  // ballot would fence out the live coordinator for nothing).
  private protocol<T>(ballot: number | null, fn: (adopt: () => void) => Promise<T>): Promise<T> {
    const run = this.protocolTail
      .catch(() => undefined)
      .then(() => {
        this.live();
        if (ballot === null) return fn(() => undefined);
        this.checkBallot(ballot);
        checkBallotStep(ballot, this.engine.raiseBallot(0));
        return fn(() => {
          this.engine.raiseBallot(ballot);
        });
      });
    this.protocolTail = run;
    return run;
  }

  private checkBallot(ballot: number): void {
    const cur = this.engine.raiseBallot(0);
    if (ballot < cur)
      throw new ServerError(
        'STALE_BALLOT',
        `ballot ${ballot} is below this shard's ${cur}: another coordinator (a restore) took over; this call changed nothing`,
      );
  }

  private ownDense(name: string): void {
    const id = this.engine.identity();
    if (id.clusterId && id.shardCount > 1) {
      const owner = shardOfDense(name, id.shardCount);
      if (owner !== id.shardIndex)
        throw new ServerError('WRONG_SHARD', `dense tensor "${name}" belongs to shard ${owner}, this is shard ${id.shardIndex} of ${id.shardCount}`);
    }
  }

  // Reads the committed checkpoint's bookkeeping into memory (after a crash
  // or a rollback the rows are at that checkpoint).
  private loadCommittedState(): CommittedCheckpoint {
    const c = this.engine.committedCheckpoint();
    if (!c) {
      this.dedup = new ExactlyOnce();
      this.dense = new DenseStore();
      return { id: 0, meta: Buffer.alloc(0), dense: new Map() };
    }
    const { sections } = decodeEnvelope(c.meta);
    this.dedup = ExactlyOnce.decode(sections.dedup ?? Buffer.alloc(0));
    this.dense = DenseStore.decode(sections.dense ?? Buffer.alloc(0));
    return { id: c.id, meta: Buffer.from(sections.user ?? Buffer.alloc(0)), dense: c.dense };
  }

  private live(): void {
    if (this.closing) throw new ServerError('UNAVAILABLE', 'the server is stopping');
  }
}
