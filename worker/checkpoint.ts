// The coordinator side of the cluster checkpoint protocol (docs/protocol.md
// has it in full, with the argument for its safety):
//
//   persist:  PREPARE(id, ballot) on every shard; if all succeed, COMMIT on
//             every shard; if any refuses, ABORT on every shard.
//   restore:  raise the ballot on every shard (durably), read each shard's
//             committed and prepared ids, resolve the newest prepared
//             checkpoint (commit when some shard committed it or every shard
//             prepared it, abort otherwise), then roll every shard back to
//             the one committed checkpoint they now share.
//
// Shards refuse checkpoint calls below their recorded ballot, so an old
// coordinator that wakes up after a restore can neither prepare nor commit.
import * as grpc from '@grpc/grpc-js';
import type { PsClient, ShardStatus } from './client';
import { CheckpointError, CoordinatorSupersededError, PsError, ServerRestartedError } from './errors';
import { shardOfDense } from './shard';

export interface PersistInput {
  /** The trainer's step: restore() returns it. */
  step: number;
  /** Dense tensors the trainer holds (e.g. its MLP weights); each is stored on shard fnv1a64(name) mod N. */
  dense?: Map<string, Float32Array> | Record<string, Float32Array>;
  /** Anything else to resume from (reader position, RNG state): JSON-serialisable, or a Buffer. */
  meta?: unknown;
}

export interface RestoreResult {
  /** Checkpoint id, 0 when there was none (every shard back to its initial rows). */
  id: number;
  step: number;
  dense: Map<string, Float32Array>;
  meta: unknown;
}

/** A shard's Status reply as the wire gives it (the SDK's status() adds shard and endpoint). */
type WireStatus = Omit<ShardStatus, 'shard' | 'endpoint'>;

interface CkptState {
  committed_id: number;
  prepared_id: number;
  last_id: number;
}

// Test hook: PMEMPS_SDK_FAILPOINT=<name>[:n] kills this process with SIGKILL
// the n-th time (default 1st) it reaches that point of the protocol (the
// crash tests of the coordinator, and of connect's identity phases).
const fpHits = new Map<string, number>();
export function failpoint(name: string): void {
  const spec = process.env.PMEMPS_SDK_FAILPOINT;
  if (!spec) return;
  const [fp, n] = spec.split(':');
  if (fp !== name) return;
  const hits = (fpHits.get(name) ?? 0) + 1;
  fpHits.set(name, hits);
  if (hits === Number(n ?? 1)) process.kill(process.pid, 'SIGKILL');
}

function encodeMeta(step: number, meta: unknown): Buffer {
  const isBuf = Buffer.isBuffer(meta);
  return Buffer.from(JSON.stringify({ step, meta: isBuf ? (meta as Buffer).toString('base64') : meta, buffer: isBuf }), 'utf8');
}

function decodeMeta(b: Buffer): { step: number; meta: unknown } {
  if (b.length === 0) return { step: 0, meta: undefined };
  const o = JSON.parse(b.toString('utf8')) as { step: number; meta: unknown; buffer: boolean };
  return { step: o.step, meta: o.buffer ? Buffer.from(o.meta as string, 'base64') : o.meta };
}

function stale(e: unknown): boolean {
  return (e as PsError).code === grpc.status.ABORTED && (e as PsError).reason === 'stale_ballot';
}

/**
 * Takes a coordinator ballot above every shard's: raises a fresh one (a new
 * round, plus random low bits so two coordinators rarely pick the same) and
 * owns it only if every shard had a lower one before. Two coordinators with
 * one ballot would fence nothing, so a tie on any shard means start over
 * above it.
 */
type BallotState = CkptState & { ballot: number; previous: number; restoring_ballot: number; restored_ballot: number };

/**
 * Throws when some shard holds a restore under way (its ballot raised
 * for_restore, its Restore not there yet): a persist must not outrank it.
 */
function refuseIfRestorePending(sts: { restoring_ballot: number; restored_ballot: number }[]): void {
  const shard = sts.findIndex((s) => s.restoring_ballot > s.restored_ballot);
  if (shard >= 0)
    throw new CoordinatorSupersededError(
      `a restore() by another worker is under way, or stopped part-way (shard ${shard} has its ballot but was not restored yet): call rejoin(), which waits for it; if that worker stopped, call restore()`,
      shard,
    );
}

const BALLOT_ROUND = 2 ** 16;
/** The most a shard lets one call raise its ballot (server/shard.ts MAX_BALLOT_STEP). */
const MAX_BALLOT_STEP = 2 ** 20;

/**
 * Returns the ballot and every shard's state as its RaiseBallot left it.
 * forRestore: the shards record the ballot as a restore under way. Without
 * it (a persist), a restore under way is never outranked knowingly: its
 * Restore calls would be refused and the cluster left half-restored.
 */
export async function acquireBallot(c: PsClient, forRestore = false): Promise<{ ballot: number; states: BallotState[] }> {
  // RaiseBallot(0) only reads: every shard's ballot, to start above them all.
  let known = await c.all((s) => s.call<BallotState>('RaiseBallot', { ballot: 0 }));
  if (!forRestore) refuseIfRestorePending(known);
  let top = Math.max(c.ballot, ...known.map((s) => s.ballot));
  for (let attempt = 0; ; attempt++) {
    // A new round of 2^16 above every ballot seen, with random low bits:
    // each take moves a ballot by at most 2^17, well inside the 2^20 a
    // shard accepts per call (docs/protocol.md, "Ids and ballots").
    const b = (Math.floor(top / BALLOT_ROUND) + 1) * BALLOT_ROUND + 1 + Math.floor(Math.random() * (BALLOT_ROUND - 1));
    // A shard far below (a replaced pool, or one raised by hand) is walked
    // up in steps a shard accepts; these interim ballots are never used.
    await c.all(async (s) => {
      let cur = known[s.index].ballot;
      while (b - cur > MAX_BALLOT_STEP) cur = (await s.call<BallotState>('RaiseBallot', { ballot: cur + MAX_BALLOT_STEP })).ballot;
    });
    const sts = await c.all((s) => s.call<BallotState>('RaiseBallot', { ballot: b, for_restore: forRestore }));
    // A restore that raised its ballot since the read above: ours is above
    // it now, and its restore() takes a new one (restoreCheckpoint).
    if (!forRestore) refuseIfRestorePending(sts);
    if (sts.every((s) => s.previous < b)) {
      c.ballot = b;
      return { ballot: b, states: sts };
    }
    top = Math.max(top, ...sts.map((s) => s.ballot));
    known = sts;
    if (attempt >= 50)
      throw new CoordinatorSupersededError('could not take a coordinator ballot: other workers keep raising theirs (several workers restoring at once?)');
    await new Promise((r) => setTimeout(r, 10 + Math.random() * 50 * (attempt + 1)));
  }
}

export async function persistCheckpoint(c: PsClient, input: PersistInput): Promise<{ id: number }> {
  if (!Number.isSafeInteger(input.step) || input.step < 0) throw new PsError('persist: step must be a non-negative integer', grpc.status.INVALID_ARGUMENT);
  const n = c.shards.length;
  const dense = input.dense instanceof Map ? [...input.dense] : Object.entries(input.dense ?? {});
  const perShard: { name: string; values: Buffer }[][] = c.shards.map(() => []);
  for (const [name, v] of dense) {
    if (!(v instanceof Float32Array)) throw new PsError(`persist: dense tensor "${name}" must be a Float32Array`, grpc.status.INVALID_ARGUMENT);
    perShard[shardOfDense(name, n)].push({ name, values: Buffer.from(v.buffer, v.byteOffset, v.byteLength) });
  }
  const meta = encodeMeta(input.step, input.meta);

  // This worker's own ballot, taken at its first persist or its restore:
  // never one read back from the shards, or a coordinator that lost to a
  // restore would silently adopt the winner's ballot. Taken before the
  // shards' ids are read: a PREPARE under a lower ballot then either landed
  // before (the read shows it prepared) or is refused after, so no two
  // coordinators prepare one id (with one's ABORT lost, a restore would
  // commit that id holding two cuts).
  const ballot = c.ballot || (await acquireBallot(c)).ballot;
  let sts = await c.all((s) => s.call<WireStatus>('Status', {}));
  refuseIfRestorePending(sts);
  const unresolved = sts.find((s) => s.prepared_id !== 0);
  if (unresolved) {
    if (sts.some((s) => s.needs_restore))
      throw new CheckpointError(
        `checkpoint ${unresolved.prepared_id} is prepared and unresolved on some shard, and a shard came back after a crash; call restore()`,
        unresolved.prepared_id,
      );
    // Left by a coordinator that lost its ballot to this one (two workers
    // persisting at once) or stopped: resolved as restore() resolves it,
    // under this ballot, so the cluster does not stay blocked until a restore.
    try {
      await resolvePrepared(c, ballot, sts);
    } catch (e) {
      throw stale(e) ? await superseded(c, `persist found checkpoint ${unresolved.prepared_id} prepared and could not resolve it`, e) : e;
    }
    sts = await c.all((s) => s.call<WireStatus>('Status', {}));
  }
  const id = Math.max(...sts.map((s) => Math.max(s.committed_id, s.last_checkpoint_id))) + 1;

  failpoint('persist.before_prepare');
  let prepared = 0;
  const results = await Promise.allSettled(
    c.shards.map(async (s) => {
      for (;;) {
        try {
          await s.call<CkptState>('Checkpoint', { id, phase: 'PREPARE', ballot, meta, dense: perShard[s.index], incarnation: s.incarnation });
          break;
        } catch (e) {
          const reason = (e as PsError).reason;
          if (reason === 'needs_restore') throw new ServerRestartedError(s.index, s.endpoint, 'crash');
          if (reason !== 'incarnation') throw e;
          await c.checkContinuity(s); // a clean restart: go on; a crash: ServerRestartedError
        }
      }
      if (++prepared === 1) failpoint('persist.after_first_prepare');
    }),
  );
  // Every PREPARE has finished (succeeded or failed for good) before any
  // ABORT goes out, so no PREPARE lands after its ABORT.
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    const e = failed.reason as Error;
    if (stale(e)) throw await superseded(c, `persist of checkpoint ${id} was refused`, e);
    // Some shard could not prepare: abort everywhere (the shards record the
    // id, so it can never be prepared later; restore() aborts what is left).
    await c.all((s) => s.call('Checkpoint', { id, phase: 'ABORT', ballot }, { retryForMs: 5000 }).catch(() => undefined));
    if (e instanceof ServerRestartedError) throw e;
    throw new CheckpointError(`checkpoint ${id} was aborted: ${e.message}`, id, e);
  }
  failpoint('persist.after_prepare');
  // Every shard prepared: the checkpoint is decided. COMMIT is retried for
  // as long as the connection retries; should a shard stay unreachable, the
  // next restore() commits it there (every shard prepared it).
  let committed = 0;
  try {
    await c.all(async (s) => {
      await s.call('Checkpoint', { id, phase: 'COMMIT', ballot });
      if (++committed === 1) failpoint('persist.after_first_commit');
    });
  } catch (e) {
    if (stale(e)) throw await superseded(c, `commit of checkpoint ${id} was refused`, e);
    throw new CheckpointError(
      `checkpoint ${id} is prepared everywhere but not committed on every shard (${(e as Error).message}); restore() will commit it`,
      id,
      e as Error,
    );
  }
  failpoint('persist.after_commit');
  return { id };
}

export async function restoreCheckpoint(c: PsClient): Promise<RestoreResult> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await restoreUnderNewBallot(c);
    } catch (e) {
      if (!stale(e)) throw e;
      // A higher ballot took over while this restore ran. Another worker's
      // restore goes on, and this one's later calls are refused: adopt its
      // result. A persist's (it raised its ballot before it could see this
      // restore's) leaves no one to finish: start over above it.
      const sts = await c.all((s) => s.call<BallotState>('RaiseBallot', { ballot: 0 }));
      if (sts.some((s) => s.restoring_ballot > c.ballot) || attempt >= 5)
        throw new CoordinatorSupersededError(
          "restore was overtaken by another worker's restore() (it raised the ballot); call rejoin() to adopt the state it restores",
          (e as PsError).shard,
        );
    }
  }
}

async function restoreUnderNewBallot(c: PsClient): Promise<RestoreResult> {
  // 1. Take over: a ballot above every shard's, recorded durably by all.
  const taken = await acquireBallot(c, true); // a new round above this worker's own ballot too
  const ballot = taken.ballot;
  let sts: (CkptState & { ballot: number })[] = taken.states;
  failpoint('restore.after_ballot');

  // 2. Resolve the newest checkpoint that any shard prepared.
  if (await resolvePrepared(c, ballot, sts)) {
    failpoint('restore.after_resolve');
    sts = await c.all((s) => s.call<CkptState & { ballot: number }>('RaiseBallot', { ballot }));
  }
  const committed = new Set(sts.map((s) => s.committed_id));
  if (committed.size !== 1)
    throw new PsError(
      `shards disagree on the committed checkpoint (${sts.map((s, i) => `shard ${i}: ${s.committed_id}`).join(', ')}); this cannot follow from the protocol — check that every server runs on its own pool`,
    );
  const id = [...committed][0];

  // 3. Every shard back to it.
  const rs = await c.all((s) =>
    s.call<{ checkpoint_id: number; meta: Buffer; dense: { name: string; values: Buffer }[]; incarnation: number; lineage: number }>('Restore', {
      ballot,
      checkpoint_id: id,
    }),
  );
  return adopt(c, rs, id);
}

/**
 * Resolves the newest checkpoint any shard prepared, under `ballot`: commits
 * it where it is prepared if some shard committed it or every shard prepared
 * it (its coordinator had decided it), else aborts it; aborts older ones.
 * Returns whether there was one.
 */
async function resolvePrepared(c: PsClient, ballot: number, sts: Pick<CkptState, 'committed_id' | 'prepared_id'>[]): Promise<boolean> {
  const k = Math.max(0, ...sts.map((s) => s.prepared_id));
  if (!k) return false;
  const commit = sts.some((s) => s.committed_id === k) || sts.every((s) => s.prepared_id === k);
  await c.all(async (s) => {
    const st = sts[s.index];
    if (st.prepared_id !== 0) {
      // A shard holds at most one prepared checkpoint; older than k can only
      // be left by an aborted protocol run: abort it.
      const phase = commit && st.prepared_id === k ? 'COMMIT' : 'ABORT';
      await s.call('Checkpoint', { id: st.prepared_id, phase, ballot });
    }
  });
  return true;
}

/**
 * The error of a persist whose ballot another coordinator outranked. A
 * restore's (a shard's lineage moved on, or one is under way) means this
 * worker must rejoin; another worker's persist leaves this worker's state
 * current, and rejoining would replay steps the shards already hold, so
 * it is told so and takes a new ballot at its next persist.
 */
async function superseded(c: PsClient, what: string, e: unknown): Promise<CoordinatorSupersededError> {
  const shard = (e as PsError).shard;
  const sts = await c.all((s) => s.call<WireStatus>('Status', {})).catch(() => null);
  // Unknown: rejoin() could take back a checkpoint the rows have moved past
  // (the replayed steps applied twice); restore() is safe either way.
  if (!sts)
    return new CoordinatorSupersededError(
      `${what}: another coordinator raised the ballot, and a shard did not answer whether a restore happened; call restore() (not rejoin(): without a restore it would replay steps the shards already hold)`,
      shard,
    );
  const restored = sts.some((s, i) => s.lineage !== c.shards[i].lineage || s.restoring_ballot > s.restored_ballot);
  if (restored) return new CoordinatorSupersededError(`${what}: a restore() by another worker raised the ballot; this worker must rejoin (or restore)`, shard);
  c.ballot = 0;
  return new CoordinatorSupersededError(
    `${what}: another worker's persist() took a higher ballot (let one worker persist); no restore happened, so this worker's state is current: go on without rejoining, and persist() again to take a new ballot`,
    shard,
  );
}

type CheckpointReply = { checkpoint_id: number; meta: Buffer; dense: { name: string; values: Buffer }[]; incarnation: number; lineage: number };

// Takes the shards' new incarnations and lineages and merges their halves of
// the checkpoint's trainer state.
function adopt(c: PsClient, rs: CheckpointReply[], id: number): RestoreResult {
  c.forgetTableDims();
  const dense = new Map<string, Float32Array>();
  for (const [i, r] of rs.entries()) {
    c.shards[i].incarnation = r.incarnation;
    c.shards[i].lineage = r.lineage;
    for (const t of r.dense) {
      const v = new Float32Array(t.values.length / 4);
      Buffer.from(v.buffer).set(t.values);
      dense.set(t.name, v);
    }
  }
  const { step, meta } = decodeMeta(rs[0].meta);
  return { id, step, dense, meta };
}

/**
 * For a worker whose pushes failed with ServerRestartedError because another
 * worker ran restore(): takes the shards as they are now (no rollback) and
 * returns the checkpoint they were restored to. Every shard must be at the
 * same committed checkpoint, with nothing prepared, restored by the same
 * restore (one restored_ballot): a shard that another worker's restore has
 * not reached yet still holds updates from after the checkpoint. While that
 * is not so, waits up to waitMs (the restoring worker may be mid-way), then
 * gives up: restore() is needed.
 */
export async function rejoinCheckpoint(c: PsClient, waitMs: number): Promise<RestoreResult> {
  if (!(Number.isFinite(waitMs) && waitMs >= 0))
    throw new PsError('rejoin: waitMs must be a non-negative number of milliseconds', grpc.status.INVALID_ARGUMENT);
  const deadline = Date.now() + waitMs;
  for (let attempt = 0; ; attempt++) {
    // A shard that is down counts against waitMs too (at least a second
    // per round, for a call to be answered at all).
    const o = { retryForMs: Math.max(1000, deadline - Date.now()), deadlineMs: Math.max(1000, Math.min(30_000, deadline - Date.now())) };
    const rs = await c.all((s) => s.call<CheckpointReply>('ReadCheckpoint', {}, o));
    const sts = await c.all((s) => s.call<WireStatus>('Status', {}, o));
    const why = notRejoinable(rs, sts);
    if (!why) {
      c.ballot = 0; // the next persist() from this worker takes a new ballot
      return adopt(c, rs, rs[0].checkpoint_id);
    }
    if (Date.now() >= deadline)
      throw new PsError(
        `cannot rejoin: ${why}; if no other worker is restoring the cluster (it stopped part-way), call restore()`,
        grpc.status.FAILED_PRECONDITION,
      );
    await new Promise((r) => setTimeout(r, Math.min(500, 20 * 2 ** attempt, Math.max(0, deadline - Date.now()))));
  }
}

// Why the shards, as read, are not one restored checkpoint to rejoin ('' if they are).
function notRejoinable(rs: CheckpointReply[], sts: WireStatus[]): string {
  for (const [i, s] of sts.entries()) {
    if (s.needs_restore) return `shard ${i} came back after a crash and no restore has reached it`;
    if (s.restoring_ballot > s.restored_ballot) return `a restore is under way: it raised the ballot on shard ${i} but has not restored it yet`;
    if (s.prepared_id !== 0) return `checkpoint ${s.prepared_id} is prepared and unresolved on shard ${i}`;
    if (rs[i].lineage !== s.lineage) return `shard ${i} changed while it was read (a restore is under way)`;
    if (rs[i].checkpoint_id !== s.committed_id) return `shard ${i} committed checkpoint ${s.committed_id} while it was read`;
  }
  if (new Set(sts.map((s) => s.committed_id)).size !== 1)
    return `the shards are at different committed checkpoints (${sts.map((s, i) => `shard ${i}: ${s.committed_id}`).join(', ')})`;
  if (new Set(sts.map((s) => s.restored_ballot)).size !== 1)
    return `a restore has reached some shards but not others (restored under ballots ${sts.map((s, i) => `shard ${i}: ${s.restored_ballot}`).join(', ')})`;
  return '';
}
