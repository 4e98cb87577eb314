// A seeded fuzzer that drives one real pserver (a child process on a real
// libpmemobj pool, real gRPC over 127.0.0.1) with malformed and hostile
// requests of every RPC, and checks after every batch that nothing it must
// protect has moved. test/fuzz.gen.ts draws and judges the requests,
// test/fuzz.wire.ts puts them on the wire, test/fuzz.cases.ts holds the
// directed abuse cases (same harness, same checks); test/fuzz.test.ts runs
// all briefly with fixed seeds, test/fuzz.soak.ts as long as you like.
//
// What is protected, and what "unchanged" means for each piece:
//
//  * The control table "control" (adagrad, uniform initializer, 64 keys
//    from 0 to 2^64-1): its spec exactly as ListTables reports it, its row
//    count, and the bytes of a Pull of its keys, compared with a memory-only
//    engine fed the same harness pushes (so optimizer state that went wrong
//    shows at the next harness push). Only the harness writes to it.
//  * The dense tensor "control-dense" (SGD with momentum): the bytes of
//    PullDense, compared with the engine's own optimizer applied to a copy
//    of the row, state included. Only the harness writes to it.
//  * The checkpoint state: the committed id, and the committed checkpoint's
//    meta and trainer dense tensors (ReadCheckpoint) bit for bit; nothing
//    prepared (prepared_id 0, not blocked, not needs_restore) between
//    batches; the identity set and sealed at setup; the lineage (a restore or a lost
//    update would change it) and the incarnation within one server process.
//    The ballot and the highest checkpoint id may only grow (the fuzzer
//    raises them legitimately), and a coordinator must still be able to
//    take over: a ballot one above the shard's is accepted after every batch,
//    both stay 2^32 below the 2^52 limit (no client may use up the ballots
//    or ids of the coordinators and checkpoints to come), and at every
//    restart the harness commits a real checkpoint.
//  * The ledger table "ledger" (SGD lr 1, zeros: a row is minus the sum of
//    its applied gradients; gradients are small integers so every sum is
//    exact in any order): its rows equal the sum of the pushes the server
//    acknowledged as applied, across clean restarts too.
//  * Exactly once, for every push and dense push with a worker id, keyed by
//    the worker id's bytes as sent: a (worker, seq) is answered "applied"
//    (duplicate false) at most once, and answered "duplicate" only after it
//    was applied. After a clean restart, retries of acknowledged pushes are
//    still answered duplicate.
//
//  * Everything else a client can read (every table's spec, row count and
//    rows of the keys the fuzzer uses, the fuzzer's dense tensors): bit for
//    bit across a clean stop.
//
// After a kill -9 the server must come back at the committed checkpoint
// (needs_restore, the rows, dense tensors and ledger of that moment), and a
// Restore must bring it back in service with those, every table included.
// Pushes acknowledged after the checkpoint are lost by design there (the SDK
// restores the job).
//
// The server runs with --max-message-mb 4 (oversized requests are cheap to
// send) and a 256 MiB pool; requests go out on three connections of their
// own: protocol calls, data calls (4 in flight), and bodies above 64 KiB
// one at a time (a call that wedges its connection costs only itself).
//
// Per request: the answer is OK or a classified refusal (INVALID_ARGUMENT,
// NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED, RESOURCE_EXHAUSTED,
// OUT_OF_RANGE), never INTERNAL, UNKNOWN, UNAVAILABLE or DATA_LOSS (the server
// did not classify the input, or fell over); error details stay under 4 KiB;
// a request the fuzzer knows must be refused is refused; no Pull or PullDense
// returns a non-finite number (every stored input is finite, so a non-finite
// row was made by the server); a refused Checkpoint, RaiseBallot or Restore
// changes nothing of the protocol state (ballot, ids).
//
// The fuzzer never sends a valid mutation of a protected object: every
// request, hand-made or garbage, is decoded with the server's own decoder and
// judged (assess()) before it is sent; one that could change a protected
// object is drawn again. A valid PREPARE is aborted right after it, so no
// checkpoint of the fuzzer's is ever committed over the harness's.
//
// Replay: requests are a function of the seed and of the server's answers to
// the protocol lane (which runs one call at a time), so the same seed gives
// the same requests (the soak prints a digest of them). Every finding prints
// the seed, the batch, the request and the command that replays it; a broken
// state invariant is narrowed down to one request by replaying its batch one
// request at a time on a fresh server.
//
// Under --auth-tokens (HarnessOptions.auth, test/fuzz.auth.ts) the same
// requests carry the admin token, a reader's, or no valid authorization; in
// the last two the door must refuse what it owes and sendBatch compares the
// server's whole observable state (observe()) before and after every batch.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { LocalCluster } from '../examples/local-cluster';
import { Engine, denseOptimizer, packKeys } from '../native/engine';
import { optimizerToWire, parameterServerService } from '../proto/load';
import type { ShardStatus } from '../worker/client';
import { mix } from './crash.lib';
import { removeDir, tempDir } from './helpers';
import { Wire, serverView, type Outcome } from './fuzz.wire';
import { FUZZ_TOKENS, TOKENS_FILE_TEXT, SplicedWire, bearer, owedRefusal, presentFor, type AuthMode, type Presented } from './fuzz.auth';
import {
  CLASSIFIED,
  CONTROL,
  CONTROL_DENSE,
  CONTROL_DENSE_LEN,
  CONTROL_DENSE_OPT,
  CONTROL_KEYS,
  CONTROL_SPEC,
  DETAILS_LIMIT,
  EDGE_KEYS,
  Generator,
  HARNESS_WORKER,
  HEADROOM,
  LEDGER,
  LEDGER_KEYS,
  LEDGER_SPEC,
  MAX_ID,
  R,
  SCRATCH,
  SCRATCH_DENSE,
  TRAINER_DENSE,
  assess,
  bodyOf,
  describe,
  knownFinding,
  laneOf,
  short,
  type Assessment,
  type Finding,
  type FuzzRequest,
  type GenCtx,
} from './fuzz.gen';

// ------------------------------------------------------------ the server and the harness

const Ctor = parameterServerService();
type StdClient = grpc.Client & Record<string, any>;

/** Status as the wire returns it: the SDK's view of one shard, without the shard's place in a list. */
type StatusView = Omit<ShardStatus, 'shard' | 'endpoint'>;

/** The ledger model: per key, the sum of applied gradients. */
class Ledger {
  sums = new Map<bigint, Float64Array>();
  apply(keys: bigint[], grads: Float32Array): void {
    const d = LEDGER_SPEC.dim;
    keys.forEach((k, i) => {
      let s = this.sums.get(k);
      if (!s) this.sums.set(k, (s = new Float64Array(d)));
      for (let j = 0; j < d; j++) s[j] += grads[i * d + j];
    });
  }
  expected(): Buffer {
    const d = LEDGER_SPEC.dim;
    const out = Buffer.alloc(LEDGER_KEYS.length * d * 4);
    LEDGER_KEYS.forEach((k, i) => {
      const s = this.sums.get(k);
      for (let j = 0; j < d; j++) out.writeFloatLE(s ? 0 - s[j] : 0, (i * d + j) * 4); // 0 - x: +0 for a sum of 0, as the server's w - g gives
    });
    return out;
  }
  clone(): Ledger {
    const l = new Ledger();
    for (const [k, s] of this.sums) l.sums.set(k, Float64Array.from(s));
    return l;
  }
}

interface CheckpointExpect {
  id: number;
  meta: Buffer;
  trainer: Buffer;
  controlK: number;
  controlRows: Buffer;
  dense: { row: Float32Array; step: number; j: number };
  ledger: Ledger;
  applied: Set<string>;
  retryable: RetryablePush[];
  /** snapshotAll() at the checkpoint (taken by the restarts only). */
  all?: Map<string, string>;
}

interface RetryablePush {
  rpc: 'Push' | 'PushDense';
  obj: Record<string, unknown>;
  key: string;
}

const live = new Set<Harness>();

/** Kills every server a harness started and removes its pool (for test teardown and signals). */
export async function closeAllHarnesses(): Promise<void> {
  await Promise.all([...live].map((h) => h.close()));
}

export interface HarnessOptions {
  /** Seeds the protected state (identity, harness pushes, checkpoint meta). */
  seed: number;
  /** The seed findings name (the run's, which replays them). */
  runSeed?: number;
  poolSize?: string;
  cacheMb?: number;
  maxMessageMb?: number;
  /** How a finding says it is replayed. */
  replay: (where: string) => string;
  /**
   * Start the server with --auth-tokens and send the fuzz requests as this
   * mode says (test/fuzz.auth.ts); the harness's own calls carry the admin
   * token. Without it: no tokens, as before issue 8.
   */
  auth?: AuthMode;
}

/**
 * One pserver under attack and everything the fuzzer knows it must hold.
 * start() spawns it on a fresh pool and sets up the protected state.
 */
export class Harness {
  cluster!: LocalCluster;
  /** Connections of the fuzzer's lanes: small data requests, big ones (one at a time), protocol calls. */
  wire!: Wire;
  bigWire!: Wire;
  protoWire!: Wire;
  /** Requests whose authorization no grpc-js client sends (repeated, non-ASCII), one at a time. */
  spliced!: SplicedWire;
  private ps!: StdClient;
  /** Draws what each fuzz request presents at the door, in request order. */
  readonly authR: R;
  private readonly dir: string;
  readonly findings: Finding[] = [];
  where = 'setup';

  // what must hold
  identity!: { cluster_id: string; shard_index: number; shard_count: number; sealed?: boolean };
  incarnation = 0;
  lineage = 0;
  ballotMin = 0;
  lastIdMin = 0;
  private controlSpec = '';
  private ledgerSpec = '';
  private reference!: Engine;
  private controlK = 0;
  private dense!: { row: Float32Array; step: number; j: number };
  readonly ledger = new Ledger();
  applied = new Set<string>();
  /** Acknowledged pushes that can be sent again (retries must be answered duplicate). */
  retryable: RetryablePush[] = [];
  ck!: CheckpointExpect;
  private hseq = 0;
  private ckCount = 0;
  restarts = { term: 0, kill: 0 };

  private constructor(readonly opts: HarnessOptions) {
    this.dir = tempDir('fuzz');
    this.authR = new R(mix(opts.seed, 0xa07));
  }

  get auth(): AuthMode | undefined {
    return this.opts.auth;
  }

  /** The harness's metadata: the admin token when the server wants one. */
  adminMd(): grpc.Metadata {
    return this.opts.auth ? bearer(FUZZ_TOKENS.admin) : new grpc.Metadata();
  }

  /** What a fuzz request presents (drawn from authR), or the plain metadata without auth. */
  present(): Presented {
    return this.opts.auth ? presentFor(this.opts.auth, this.authR) : { kind: 'no auth', md: new grpc.Metadata() };
  }

  static async start(opts: HarnessOptions): Promise<Harness> {
    const h = new Harness(opts);
    live.add(h);
    try {
      const env: Record<string, string> = { PMEMPS_MAX_MESSAGE_MB: String(opts.maxMessageMb ?? 4), PMEMPS_DRAIN_SECONDS: '10' };
      if (opts.auth) {
        env.PMEMPS_AUTH_TOKENS = path.join(h.dir, 'tokens');
        fs.writeFileSync(env.PMEMPS_AUTH_TOKENS, TOKENS_FILE_TEXT, { mode: 0o600 });
      }
      h.cluster = await LocalCluster.start({
        dir: h.dir,
        shards: 1,
        cacheMb: opts.cacheMb ?? 32,
        poolSize: opts.poolSize ?? '256M',
        logLevel: 'warn',
        env,
        probe: opts.auth ? { token: FUZZ_TOKENS.admin } : undefined,
      });
      h.connect();
      await h.setup();
      // Something for refused requests to change: every scratch table and dense tensor the generator aims at, with rows.
      if (opts.auth && opts.auth !== 'admin') await h.setupScratch();
    } catch (e) {
      await h.close();
      throw e;
    }
    return h;
  }

  get endpoint(): string {
    return this.cluster.endpoints[0];
  }

  private connect(): void {
    const md = () => this.present().md;
    this.wire = new Wire(this.endpoint, md);
    this.bigWire = new Wire(this.endpoint, md);
    this.protoWire = new Wire(this.endpoint, md);
    this.spliced = new SplicedWire(this.endpoint);
    this.ps = new Ctor(this.endpoint, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 64 * 2 ** 20,
      'grpc.use_local_subchannel_pool': 1,
    }) as StdClient;
  }

  private disconnect(): void {
    this.wire?.close();
    this.bigWire?.close();
    this.protoWire?.close();
    this.spliced?.close();
    this.ps?.close();
  }

  async close(): Promise<void> {
    live.delete(this);
    this.disconnect();
    this.cluster?.killAll();
    if (this.cluster) await this.cluster.kill(0, 'SIGKILL').catch(() => undefined);
    if (this.reference) await this.reference.close().catch(() => undefined);
    removeDir(this.dir);
  }

  /** A harness call: the server must answer it. */
  call<T = any>(method: string, req: unknown, deadlineMs = 15_000): Promise<T> {
    return new Promise((resolve, reject) =>
      this.ps[method](req, this.adminMd(), { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: T) => {
        if (err) reject(Object.assign(new Error(`${method}: ${grpc.status[err.code]}: ${err.details}`), { code: err.code }));
        else resolve(res);
      }),
    );
  }

  status(): Promise<StatusView> {
    return this.call<StatusView>('Status', {});
  }

  /** The server's log, last bytes: for findings where it fell over. */
  logTail(n = 1500): string {
    try {
      const s = fs.readFileSync(this.cluster.logFile(0), 'utf8');
      return s.slice(-n);
    } catch {
      return '';
    }
  }

  alive(): boolean {
    const p = this.cluster.procs[0];
    return !!p && p.exitCode === null && p.signalCode === null;
  }

  find(invariant: string, detail: string, extra: Partial<Finding> = {}): Finding {
    const f: Finding = { seed: this.opts.runSeed ?? this.opts.seed, where: this.where, invariant, detail, replay: this.opts.replay(this.where), ...extra };
    this.findings.push(f);
    return f;
  }

  genCtx(st: StatusView): GenCtx {
    return { ballot: st.ballot, committed: st.committed_id, lastId: st.last_checkpoint_id, incarnation: st.incarnation, identity: this.identity };
  }

  // ---------------------------------------------------------- setup

  private async setup(): Promise<void> {
    const r = new R(mix(this.opts.seed, 0x5e7));
    // Set, then sealed, as the SDK forms a cluster: the seal is never undone either.
    const id = { cluster_id: r.bytes(16).toString('hex'), shard_index: 0, shard_count: 1 };
    await this.call('SetIdentity', { identity: id });
    this.identity = (await this.call('SetIdentity', { identity: { ...id, sealed: true } })).identity;
    for (const s of [CONTROL_SPEC, LEDGER_SPEC])
      await this.call('CreateTable', { spec: { name: s.name, dim: s.dim, optimizer: optimizerToWire(s.optimizer), initializer: s.initializer, seed: s.seed } });
    const init = new Float32Array(CONTROL_DENSE_LEN).map((_, i) => Math.fround(Math.sin(i + this.opts.seed)));
    await this.call('SetDense', { tensor: { name: CONTROL_DENSE, values: Buffer.from(init.buffer) }, optimizer: optimizerToWire(CONTROL_DENSE_OPT) });
    const row = new Float32Array(denseOptimizer.rowFloats(CONTROL_DENSE_OPT, CONTROL_DENSE_LEN));
    denseOptimizer.initRow(CONTROL_DENSE_OPT, row);
    row.set(init);
    this.dense = { row, step: 0, j: 0 };
    this.reference = Engine.open({ memoryOnly: true, cacheMb: 8 });
    this.reference.createTable(CONTROL_SPEC);
    const st = await this.status();
    this.incarnation = st.incarnation;
    this.lineage = st.lineage;
    await this.controlPush();
    await this.densePush();
    await this.checkpoint();
    await this.controlPush();
    await this.densePush();
    const st2 = await this.status();
    this.controlSpec = JSON.stringify(st2.tables.find((t) => t.spec.name === CONTROL)?.spec);
    this.ledgerSpec = JSON.stringify(st2.tables.find((t) => t.spec.name === LEDGER)?.spec);
    this.ballotMin = st2.ballot;
    this.lastIdMin = st2.last_checkpoint_id;
  }

  private controlGrads(k: number): Buffer {
    const r = new R(mix(this.opts.seed, 0xc0, k));
    const g = Buffer.alloc(CONTROL_KEYS.length * CONTROL_SPEC.dim * 4);
    for (let i = 0; i < g.length / 4; i++) g.writeFloatLE(r.float() * 2 - 1, i * 4);
    return g;
  }

  /** A harness push to the control table (and to the reference), so the current rows differ from the checkpoint's. */
  async controlPush(): Promise<void> {
    const keys = packKeys(CONTROL_KEYS);
    const grads = this.controlGrads(this.controlK);
    const res = await this.call('Push', { table: CONTROL, keys, grads, worker_id: HARNESS_WORKER, seq: ++this.hseq, incarnation: this.incarnation });
    if (res.duplicate) throw new Error(`the harness's control push ${this.hseq} was answered duplicate`);
    await this.reference.push(CONTROL, keys, grads);
    this.controlK++;
  }

  async densePush(): Promise<void> {
    const r = new R(mix(this.opts.seed, 0xde, this.dense.j));
    const g = Float32Array.from({ length: CONTROL_DENSE_LEN }, () => r.float() * 2 - 1);
    const res = await this.call('PushDense', {
      name: CONTROL_DENSE,
      grads: Buffer.from(g.buffer),
      worker_id: HARNESS_WORKER,
      seq: ++this.hseq,
      incarnation: this.incarnation,
    });
    if (res.duplicate) throw new Error(`the harness's dense push ${this.hseq} was answered duplicate`);
    this.dense.step = denseOptimizer.apply(CONTROL_DENSE_OPT, this.dense.row, this.dense.step, g);
    this.dense.j++;
  }

  /** A harness push to the ledger, recorded as a retryable acknowledged push. */
  async ledgerPush(): Promise<void> {
    const r = new R(mix(this.opts.seed, 0x1e, this.hseq));
    const ks = [r.pick(LEDGER_KEYS), r.pick(LEDGER_KEYS)];
    const g = Float32Array.from({ length: 2 * LEDGER_SPEC.dim }, () => r.int(-3, 3));
    const obj = { table: LEDGER, keys: packKeys(ks), grads: Buffer.from(g.buffer), worker_id: HARNESS_WORKER, seq: ++this.hseq, incarnation: 0 };
    const res = await this.call('Push', obj);
    if (res.duplicate) throw new Error(`the harness's ledger push ${this.hseq} was answered duplicate`);
    this.ledger.apply(ks, g);
    const key = `${Buffer.from(HARNESS_WORKER).toString('hex')}:${obj.seq}`;
    this.applied.add(key);
    this.retryable.push({ rpc: 'Push', obj, key });
  }

  /**
   * Creates the generator's scratch tables (rows in each, so a Push, an
   * UpdateTable or a DropTable that got through would show) and dense tensors
   * (a PushDense or SetDense that got through would move their values). No
   * worker id: nothing enters the exactly-once record.
   */
  async setupScratch(): Promise<void> {
    const r = new R(mix(this.opts.seed, 0x5c));
    for (const t of SCRATCH) {
      await this.call('CreateTable', {
        spec: { name: t.name, dim: t.dim, optimizer: { type: 'adagrad', params: { lr: 0.1 } }, initializer: { type: 'uniform', min: -1, max: 1 }, seed: 7 },
      });
      const keys = [...Array.from({ length: 16 }, (_, i) => BigInt(i)), ...EDGE_KEYS];
      const g = Float32Array.from({ length: keys.length * t.dim }, () => r.float() * 2 - 1);
      await this.call('Push', { table: t.name, keys: packKeys(keys), grads: Buffer.from(g.buffer), worker_id: '', seq: 0, incarnation: 0 });
    }
    for (const d of SCRATCH_DENSE) {
      const v = Float32Array.from({ length: d.n }, () => r.float());
      await this.call('SetDense', { tensor: { name: d.name, values: Buffer.from(v.buffer) }, optimizer: { type: 'sgd', params: { lr: 0.5, momentum: 0.9 } } });
      const g = Float32Array.from({ length: d.n }, () => r.float() - 0.5);
      await this.call('PushDense', { name: d.name, grads: Buffer.from(g.buffer), worker_id: '', seq: 0, incarnation: 0 });
    }
  }

  /** Takes a ballot above the shard's the way a new coordinator does; it must be granted. */
  async takeBallot(): Promise<number> {
    const st = await this.status();
    const b = st.ballot + 1;
    const res = await this.call('RaiseBallot', { ballot: b });
    if (!(res.previous < b && res.ballot === b)) throw new Error(`RaiseBallot(${b}) was not granted: previous ${res.previous}, ballot ${res.ballot}`);
    return b;
  }

  /** A real checkpoint (prepare + commit), taken by the harness; becomes the expected committed state. */
  async checkpoint(): Promise<void> {
    const b = await this.takeBallot();
    const st = await this.status();
    const id = Math.max(st.committed_id, st.last_checkpoint_id) + 1;
    const r = new R(mix(this.opts.seed, 0xcc, this.ckCount++));
    const meta = Buffer.concat([Buffer.from(`ck${this.ckCount}:`), r.bytes(64)]);
    const trainer = Buffer.alloc(4 * 9);
    for (let i = 0; i < 9; i++) trainer.writeFloatLE(r.float(), i * 4);
    await this.call('Checkpoint', { id, phase: 'PREPARE', ballot: b, meta, dense: [{ name: TRAINER_DENSE, values: trainer }], incarnation: this.incarnation });
    await this.call('Checkpoint', { id, phase: 'COMMIT', ballot: b });
    this.ck = {
      id,
      meta,
      trainer,
      controlK: this.controlK,
      controlRows: await this.reference.pull(CONTROL, packKeys(CONTROL_KEYS)),
      dense: { row: this.dense.row.slice(), step: this.dense.step, j: this.dense.j },
      ledger: this.ledger.clone(),
      applied: new Set(this.applied),
      retryable: [...this.retryable],
    };
  }

  // ---------------------------------------------------------- everything, for restarts

  /**
   * Everything a client can read of the shard's data: every table's spec, row
   * count and the rows of the keys the fuzzer uses with it (the generator
   * draws keys below max(16, 65536 / dim) and the edge keys), and the dense
   * tensors of the fuzzer's names. A clean restart must keep all of it bit
   * for bit; kill -9 and a restore must bring back what it was at the
   * checkpoint.
   */
  async snapshotAll(extraDense: string[] = []): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    const st = await this.status();
    for (const t of st.tables) {
      const dim = t.spec.dim as number;
      const keys = [...Array.from({ length: Math.max(16, Math.floor(65_536 / dim)) }, (_, i) => BigInt(i)), ...EDGE_KEYS];
      const v = (await this.call('Pull', { table: t.spec.name, keys: packKeys(keys) })).values as Buffer;
      out.set(`table ${t.spec.name}`, `${JSON.stringify(t.spec)} rows ${t.rows} ${createHash('sha256').update(v).digest('hex').slice(0, 16)}`);
    }
    for (const name of new Set([CONTROL_DENSE, ...SCRATCH_DENSE.map((d) => d.name), ...extraDense])) {
      const got = await this.call('PullDense', { names: [name] }).then(
        (res) =>
          createHash('sha256')
            .update((res.tensors[0]?.values as Buffer) ?? Buffer.alloc(0))
            .digest('hex')
            .slice(0, 16),
        () => 'absent',
      );
      out.set(`dense ${name}`, got);
    }
    return out;
  }

  /**
   * The server's whole observable state, read with the admin token: every
   * table and dense tensor as snapshotAll() reads them, ListTables (specs and
   * row counts), the fields of Status that are state rather than counters,
   * and the committed checkpoint as ReadCheckpoint returns it. Dense tensors
   * cannot be listed: `denseNames` adds those a batch aimed at. A request the
   * door refused must leave all of it as it was.
   */
  async observe(denseNames: string[] = []): Promise<Map<string, string>> {
    const out = await this.snapshotAll(denseNames);
    const st = (await this.status()) as unknown as Record<string, unknown>;
    for (const k of [
      'identity',
      'incarnation',
      'lineage',
      'ballot',
      'committed_id',
      'prepared_id',
      'last_checkpoint_id',
      'pushes_blocked',
      'needs_restore',
      'last_stop_clean',
    ])
      out.set(`Status.${k}`, JSON.stringify(st[k]));
    out.set('ListTables', JSON.stringify((await this.call('ListTables', {})).tables));
    const rc = await this.call('ReadCheckpoint', {});
    const dense = (rc.dense as { name: string; values: Buffer }[]).map((t) => `${t.name}=${createHash('sha256').update(t.values).digest('hex')}`);
    out.set('ReadCheckpoint', `id ${rc.checkpoint_id} meta ${Buffer.from(rc.meta).toString('hex')} dense ${dense.join(',')}`);
    return out;
  }

  /** Adds a finding for each piece of `got` that differs from `want`; true if any did. */
  compareSnapshots(what: string, want: Map<string, string> | undefined, got: Map<string, string>, extra: Partial<Finding> = {}): boolean {
    if (!want) return false;
    const diffs: string[] = [];
    for (const k of new Set([...want.keys(), ...got.keys()]))
      if (want.get(k) !== got.get(k)) diffs.push(`${k}: ${want.get(k) ?? 'absent'} -> ${got.get(k) ?? 'absent'}`);
    if (diffs.length) this.find(what, `${diffs.length} differ: ${diffs.slice(0, 4).join('; ')}`.slice(0, 1500), extra);
    return diffs.length > 0;
  }

  // ---------------------------------------------------------- the invariants

  /** A new connection for big requests, after one of them wedged the last (see sendBatch). */
  renewBigWire(): void {
    this.bigWire.close();
    this.bigWire = new Wire(this.endpoint, () => this.present().md);
  }

  /** Checks every protected piece; returns the findings (also kept in this.findings). */
  async check(opts: { afterCrash?: boolean; probe?: boolean } = {}): Promise<Finding[]> {
    const out: Finding[] = [];
    const fail = (inv: string, detail: string) => out.push(this.find(inv, detail));
    if (!this.alive()) {
      fail('the server exited', `exit ${this.cluster.procs[0]?.exitCode ?? this.cluster.procs[0]?.signalCode}; log: ${this.logTail()}`);
      return out;
    }
    let st: StatusView;
    try {
      st = await this.status();
    } catch (e) {
      fail('Status does not answer', (e as Error).message);
      return out;
    }
    const eq = (what: string, got: unknown, want: unknown) => {
      if (JSON.stringify(got) !== JSON.stringify(want)) fail(`${what} changed`, `got ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
    };
    eq('identity', st.identity, this.identity);
    eq('committed checkpoint id', st.committed_id, this.ck.id);
    eq('prepared checkpoint', st.prepared_id, 0);
    eq('needs_restore', st.needs_restore, !!opts.afterCrash);
    eq('pushes_blocked', st.pushes_blocked, false);
    if (!opts.afterCrash) {
      eq('lineage', st.lineage, this.lineage);
      eq('incarnation', st.incarnation, this.incarnation);
    }
    if (st.ballot < this.ballotMin) fail('ballot went down', `${st.ballot} < ${this.ballotMin}`);
    if (st.last_checkpoint_id < this.lastIdMin) fail('last checkpoint id went down', `${st.last_checkpoint_id} < ${this.lastIdMin}`);
    if (Math.max(st.committed_id, st.last_checkpoint_id) >= MAX_ID - HEADROOM)
      fail(
        'checkpoint ids (nearly) exhausted',
        `last_checkpoint_id ${st.last_checkpoint_id}: fewer than 2^32 ids are left below 2^52 for the checkpoints to come`,
      );
    const ct = st.tables.find((t) => t.spec.name === CONTROL);
    eq('control table spec', JSON.stringify(ct?.spec), this.controlSpec);
    eq('control table row count', ct?.rows, CONTROL_KEYS.length);
    eq('ledger table spec', JSON.stringify(st.tables.find((t) => t.spec.name === LEDGER)?.spec), this.ledgerSpec);

    const want = opts.afterCrash
      ? { control: this.ck.controlRows, ledger: this.ck.ledger.expected(), dense: this.ck.dense.row }
      : { control: await this.reference.pull(CONTROL, packKeys(CONTROL_KEYS)), ledger: this.ledger.expected(), dense: this.dense.row };
    try {
      const got = (await this.call('Pull', { table: CONTROL, keys: packKeys(CONTROL_KEYS) })).values as Buffer;
      if (!Buffer.from(got).equals(want.control)) fail('control rows changed', firstDiff(got, want.control, CONTROL_SPEC.dim));
      const led = (await this.call('Pull', { table: LEDGER, keys: packKeys(LEDGER_KEYS) })).values as Buffer;
      if (!Buffer.from(led).equals(want.ledger)) fail('ledger rows differ from the acknowledged pushes', firstDiff(led, want.ledger, LEDGER_SPEC.dim));
      const pd = (await this.call('PullDense', { names: [CONTROL_DENSE] })).tensors as { name: string; values: Buffer }[];
      const wantDense = Buffer.from(want.dense.buffer, want.dense.byteOffset, CONTROL_DENSE_LEN * 4);
      if (pd.length !== 1 || !Buffer.from(pd[0].values).equals(wantDense))
        fail('control dense tensor changed', firstDiff(pd[0]?.values ?? Buffer.alloc(0), wantDense, 1));
      const rc = await this.call('ReadCheckpoint', {});
      eq('ReadCheckpoint id', rc.checkpoint_id, this.ck.id);
      if (!Buffer.from(rc.meta).equals(this.ck.meta)) fail('checkpoint meta changed', `got ${Buffer.from(rc.meta).toString('hex').slice(0, 80)}`);
      const td = (rc.dense as { name: string; values: Buffer }[]).map((t) => [t.name, Buffer.from(t.values).toString('hex')]);
      eq('checkpoint trainer dense tensors', td, [[TRAINER_DENSE, this.ck.trainer.toString('hex')]]);
    } catch (e) {
      fail('a read of the protected state failed', (e as Error).message);
    }
    if (opts.probe !== false && !opts.afterCrash) {
      try {
        await this.takeBallot();
      } catch (e) {
        fail('a new coordinator cannot take over (ballot fence exhausted)', `${(e as Error).message} (shard ballot ${st.ballot})`);
      }
      const st2 = await this.status().catch(() => st);
      if (st2.ballot >= MAX_ID - HEADROOM)
        fail('ballot fence (nearly) exhausted', `shard ballot ${st2.ballot}: fewer than 2^32 ballots are left below 2^52 for the coordinators to come`);
      this.ballotMin = Math.max(this.ballotMin, st2.ballot);
      this.lastIdMin = Math.max(this.lastIdMin, st2.last_checkpoint_id);
    }
    return out;
  }

  /** Sends acknowledged pushes again: each must be answered duplicate (or refused), never applied twice. */
  async retryAcknowledged(r: R, n: number, pool: RetryablePush[]): Promise<Finding[]> {
    const out: Finding[] = [];
    const picks = pool.length <= n ? pool : Array.from({ length: n }, () => r.pick(pool));
    for (const p of picks) {
      const q: FuzzRequest = { rpc: p.rpc, kind: `${p.rpc}/retry-acknowledged`, obj: { ...p.obj, incarnation: 0 } };
      const body = bodyOf(q, this.incarnation);
      const o = await this.wire.call(p.rpc, body, undefined, undefined, this.adminMd());
      if (o.code === grpc.status.OK && !o.res?.duplicate)
        out.push(
          this.find('an acknowledged push was applied again (exactly-once record lost)', `retry of ${p.key} answered duplicate=false`, {
            rpc: p.rpc,
            kind: q.kind,
            request: describe(q, body),
          }),
        );
      else if (o.code !== grpc.status.OK && o.code !== grpc.status.FAILED_PRECONDITION)
        out.push(
          this.find('a retry of an acknowledged push failed', `${grpc.status[o.code]}: ${o.details.slice(0, 200)}`, {
            rpc: p.rpc,
            kind: q.kind,
            request: describe(q, body),
          }),
        );
    }
    return out;
  }

  // ---------------------------------------------------------- restarts

  /**
   * Ends an epoch: a real checkpoint, a harness push after it, then SIGTERM
   * (every acknowledged update must survive) or SIGKILL (back at the
   * checkpoint, then Restore), and the checks. Returns false when the server
   * cannot be brought back in service (the caller resets).
   */
  async restart(kind: 'term' | 'kill', r: R): Promise<boolean> {
    const before = this.findings.length;
    try {
      await this.ledgerPush();
      await this.checkpoint();
      this.ck.all = await this.snapshotAll();
      await this.controlPush();
      await this.densePush();
      await this.ledgerPush();
    } catch (e) {
      // Stop anyway: what was acknowledged must survive a clean stop all the same.
      this.find('the harness cannot checkpoint or push after the batch', `${(e as Error).message}; log: ${this.logTail(600)}`);
    }
    const ok = (): boolean => this.findings.length === before;
    if (kind === 'term') return (await this.cleanRestart(r)) && ok();
    if (!(await this.bounce(kind))) return false;
    const st = await this.status();
    if (st.last_stop_clean) this.find('last_stop_clean is true after kill -9', 'Status.last_stop_clean true');
    await this.check({ afterCrash: true });
    if (!(await this.restoreAfterCrash())) return false;
    await this.check();
    this.compareSnapshots('tables or dense tensors after kill -9 and restore differ from the checkpoint', this.ck.all, await this.snapshotAll());
    await this.retryAcknowledged(r, 24, this.retryable);
    await this.controlPush();
    return ok();
  }

  /** SIGTERM and start again: everything acknowledged must be there, bit for bit. False if the server does not come back. */
  async cleanRestart(r: R): Promise<boolean> {
    const beforeStop = await this.snapshotAll().catch(() => undefined);
    if (!(await this.bounce('term'))) return false;
    const st = await this.status();
    if (!st.last_stop_clean) this.find('last_stop_clean is false after a clean stop', 'Status.last_stop_clean false');
    if (st.lineage !== this.lineage) this.find('lineage changed across a clean stop', `${this.lineage} -> ${st.lineage}`);
    this.incarnation = st.incarnation;
    await this.check();
    this.compareSnapshots('tables or dense tensors changed across a clean stop', beforeStop, await this.snapshotAll());
    await this.retryAcknowledged(r, 24, this.retryable);
    return true;
  }

  /** Stops the server (SIGTERM: must exit 0) and starts it again on the same pool; false if it does not come back. */
  async bounce(kind: 'term' | 'kill'): Promise<boolean> {
    this.disconnect();
    const code = await this.cluster.kill(0, kind === 'term' ? 'SIGTERM' : 'SIGKILL');
    if (kind === 'term' && code !== 0) this.find('the clean stop failed', `pserver exited ${code} after SIGTERM; log: ${this.logTail()}`);
    try {
      await this.cluster.startShard(0);
    } catch (e) {
      this.find(`the server does not start again after ${kind === 'term' ? 'a clean stop' : 'kill -9'}`, (e as Error).message.slice(0, 2500));
      return false;
    }
    this.connect();
    this.restarts[kind]++;
    return true;
  }

  /** Restore after a crash (as the SDK's restore() does); from then on the harness expects the checkpoint's state. */
  async restoreAfterCrash(): Promise<boolean> {
    try {
      const b = await this.takeBallot();
      const res = await this.call('Restore', { ballot: b, checkpoint_id: this.ck.id });
      if (res.checkpoint_id !== this.ck.id || !Buffer.from(res.meta).equals(this.ck.meta))
        this.find('Restore answered another checkpoint', `id ${res.checkpoint_id}`);
    } catch (e) {
      this.find('Restore after kill -9 failed', (e as Error).message);
      return false;
    }
    const st = await this.status();
    this.incarnation = st.incarnation;
    this.lineage = st.lineage;
    this.ledger.sums = this.ck.ledger.clone().sums;
    this.applied = new Set(this.ck.applied);
    this.retryable = [...this.ck.retryable];
    this.dense = { row: this.ck.dense.row.slice(), step: this.ck.dense.step, j: this.ck.dense.j };
    await this.reference.close();
    this.reference = Engine.open({ memoryOnly: true, cacheMb: 8 });
    this.reference.createTable(CONTROL_SPEC);
    for (let k = 0; k < this.ck.controlK; k++) await this.reference.push(CONTROL, packKeys(CONTROL_KEYS), this.controlGrads(k));
    this.controlK = this.ck.controlK;
    return true;
  }
}

function firstDiff(got: Buffer, want: Buffer, dim: number): string {
  if (got.length !== want.length) return `${got.length} bytes, expected ${want.length}`;
  for (let i = 0; i < got.length; i += 4)
    if (got.readUInt32LE(i) !== want.readUInt32LE(i))
      return `first difference at row ${Math.floor(i / 4 / dim)} element ${(i / 4) % dim}: got ${got.readFloatLE(i)}, expected ${want.readFloatLE(i)}`;
  return 'equal';
}

// ------------------------------------------------------------ sending and judging

export interface Sent {
  q: FuzzRequest;
  body: Buffer;
  a: Assessment;
  o?: Outcome;
  skipped?: boolean;
  /** The authorization it carried (drawn before the batch went out). */
  p: Presented;
}

/** Requests above this go on the big lane. */
const BIG = 64 * 1024;

export interface Stats {
  requests: number;
  byRpc: Record<string, number>;
  byCode: Record<string, number>;
  skipped: number;
  /** Requests by the authorization they presented (runs under --auth-tokens). */
  byAuth: Record<string, number>;
}

export function newStats(): Stats {
  return { requests: 0, byRpc: {}, byCode: {}, skipped: 0, byAuth: {} };
}

/**
 * A request the door owed a refusal: that refusal and nothing else (never
 * OK, never another code), details bounded and without the secret it
 * presented. Its answer is not judged further: no handler saw it.
 */
function judgeRefused(h: Harness, s: Sent, owed: { code: grpc.status; why: string }): void {
  const { q, o, p } = s;
  if (!o) return;
  const at = { rpc: q.rpc, kind: `${q.kind} [auth: ${p.kind}]`, request: describe(q, s.body) };
  // grpc-js answers a path no service registered before any interceptor runs: nothing ran, so no door was passed.
  const unregistered = o.code === grpc.status.UNIMPLEMENTED && q.path !== undefined;
  if (o.code !== owed.code && !unregistered)
    h.find(
      `a request the door must refuse got ${grpc.status[o.code] ?? o.code}, not ${grpc.status[owed.code]}`,
      `${owed.why}; answer: ${o.details.slice(0, 300)}`,
      at,
    );
  if (Buffer.byteLength(o.details) > DETAILS_LIMIT)
    h.find(`error details over ${DETAILS_LIMIT} bytes`, `${Buffer.byteLength(o.details)} bytes: ${o.details.slice(0, 120)}…`, at);
  if (p.secret && o.details.includes(p.secret)) h.find('a refusal echoes the presented token', o.details.slice(0, 300), at);
}

/** Dense tensor names a batch aims at (they cannot be listed: the observation reads them by name). */
function denseTargets(sent: Sent[]): string[] {
  const names = new Set<string>();
  for (const s of sent) {
    if (s.q.rpc !== 'SetDense' && s.q.rpc !== 'PushDense') continue;
    const v = serverView(s.q.rpc, s.body);
    const n = s.q.rpc === 'SetDense' ? v?.tensor?.name : v?.name;
    if (typeof n === 'string' && n.length > 0 && n.length <= 256) names.add(n);
  }
  return [...names].sort();
}

/** Per-request checks: the status code, the size of error details, refusals, what a read returns. */
function judge(h: Harness, s: Sent): void {
  const { q, a, o } = s;
  if (!o) return;
  const at = { rpc: q.rpc, kind: q.kind, request: describe(q, s.body) };
  const name = grpc.status[o.code] ?? String(o.code);
  const timeoutOk = o.code === grpc.status.DEADLINE_EXCEEDED && q.rpc === 'Barrier' && !!a.barrierWait && q.group === undefined;
  const unimplementedOk = o.code === grpc.status.UNIMPLEMENTED && q.path !== undefined;
  if (!CLASSIFIED.has(o.code) && !timeoutOk && !unimplementedOk) {
    const why =
      o.code === grpc.status.INTERNAL || o.code === grpc.status.UNKNOWN
        ? 'the server did not classify the input'
        : o.code === grpc.status.DEADLINE_EXCEEDED
          ? 'no answer within the deadline'
          : 'not a classified refusal';
    h.find(`status ${name}: ${why}`, `details: ${o.details.slice(0, 300)}`, at);
  }
  if (Buffer.byteLength(o.details) > DETAILS_LIMIT)
    h.find(`error details over ${DETAILS_LIMIT} bytes`, `${Buffer.byteLength(o.details)} bytes: ${o.details.slice(0, 120)}…`, at);
  if (o.badResponse) h.find('the response does not decode', o.badResponse, at);
  if (o.code === grpc.status.OK && a.refused) h.find('a request that must be refused was accepted', `it must be refused: ${a.refused}`, at);
  if (o.code === grpc.status.OK && a.refusedUnlessDuplicate && o.res?.duplicate === false)
    h.find('a request that must be refused was applied', `it must be refused (or answered duplicate): ${a.refusedUnlessDuplicate}`, at);
  if (o.code === grpc.status.OK && q.rpc === 'Pull' && o.res?.values) {
    const v = Buffer.from(o.res.values);
    for (let i = 0; i + 4 <= v.length; i += 4)
      if (!Number.isFinite(v.readFloatLE(i))) {
        h.find('a pull returned a non-finite value', `element ${i / 4} is ${v.readFloatLE(i)}`, at);
        break;
      }
  }
  if (o.code === grpc.status.OK && q.rpc === 'PullDense')
    for (const t of (o.res?.tensors ?? []) as { name: string; values: Buffer }[]) {
      const v = Buffer.from(t.values);
      for (let i = 0; i + 4 <= v.length; i += 4)
        if (!Number.isFinite(v.readFloatLE(i))) {
          h.find('a dense pull returned a non-finite value', `tensor ${short(t.name)} element ${i / 4} is ${v.readFloatLE(i)}`, at);
          break;
        }
    }
}

/**
 * Sends a batch: protocol calls one at a time in their lane (each refused one
 * must leave the protocol state as it was; a PREPARE that succeeded is
 * aborted right away), the others on `concurrency` lanes. Then the
 * exactly-once model of the batch.
 */
export async function sendBatch(h: Harness, reqs: FuzzRequest[], stats: Stats, concurrency = 4): Promise<Sent[]> {
  const st0 = await h.status();
  const ctx = h.genCtx(st0);
  const sent: Sent[] = [];
  for (const q of reqs) {
    const body = bodyOf(q, h.incarnation);
    const a = assess(q.rpc, body, ctx, !!q.onlyIfPrepared);
    // The last guard: nothing that could change a protected object goes out, whoever made it.
    if (a.unsafe) stats.skipped++;
    else sent.push({ q, body, a, p: h.present() });
  }
  // Under a refusing mode the whole observable state must come through the batch untouched.
  const refusing = h.auth === 'none' || h.auth === 'reader';
  const dense = refusing ? denseTargets(sent) : [];
  const before = refusing ? await h.observe(dense) : undefined;
  const count = (s: Sent) => {
    stats.requests++;
    stats.byRpc[s.q.rpc] = (stats.byRpc[s.q.rpc] ?? 0) + 1;
    const c = grpc.status[s.o!.code] ?? String(s.o!.code);
    stats.byCode[c] = (stats.byCode[c] ?? 0) + 1;
    if (h.auth) stats.byAuth[s.p.kind] = (stats.byAuth[s.p.kind] ?? 0) + 1;
  };
  const send = async (s: Sent, wire: Wire) => {
    // A barrier that cannot be released: the caller gives up, as a crashed worker would.
    const deadline = s.a.barrierWait && s.q.group === undefined ? 150 : wire === h.bigWire ? 5_000 : (s.q.deadlineMs ?? 15_000);
    s.o = s.p.extra ? await h.spliced.call(s.q.rpc, s.body, deadline, s.q.path, s.p) : await wire.call(s.q.rpc, s.body, deadline, s.q.path, s.p.md);
    count(s);
    const owed = h.auth ? owedRefusal(h.auth, s.q.rpc, s.q.path) : null;
    if (owed) judgeRefused(h, s, owed);
    else judge(h, s);
  };

  const protocolLane = async () => {
    let st = st0;
    for (const s of sent.filter((x) => laneOf(x.q.rpc) === 'protocol' && !x.q.path)) {
      if (s.q.onlyIfPrepared && st.prepared_id === 0) {
        s.skipped = true;
        stats.skipped++;
        continue;
      }
      await send(s, h.protoWire);
      let after: StatusView;
      try {
        after = await h.status();
      } catch {
        return; // the checks after the batch report it
      }
      const moved = ['ballot', 'last_checkpoint_id', 'committed_id', 'prepared_id'].filter((k) => (after as any)[k] !== (st as any)[k]);
      const at = { rpc: s.q.rpc, kind: s.q.kind, request: describe(s.q, s.body) };
      if (s.o!.code !== grpc.status.OK && moved.length)
        h.find(
          `a refused ${s.q.rpc} changed the protocol state`,
          `${grpc.status[s.o!.code]} (${s.o!.details.slice(0, 120)}) but ${moved.map((k) => `${k} ${(st as any)[k]} -> ${(after as any)[k]}`).join(', ')}`,
          at,
        );
      if (after.committed_id !== st.committed_id) h.find("a fuzzer's call changed the committed checkpoint", `${st.committed_id} -> ${after.committed_id}`, at);
      if (after.ballot >= MAX_ID - HEADROOM && st.ballot < MAX_ID - HEADROOM)
        h.find(
          'this call used up the ballot fence',
          `ballot ${st.ballot} -> ${after.ballot}: fewer than 2^32 ballots are left below 2^52 for the coordinators to come`,
          at,
        );
      if (after.last_checkpoint_id >= MAX_ID - HEADROOM && st.last_checkpoint_id < MAX_ID - HEADROOM)
        h.find(
          'this call used up the checkpoint ids',
          `last_checkpoint_id ${st.last_checkpoint_id} -> ${after.last_checkpoint_id}: fewer than 2^32 ids are left below 2^52`,
          at,
        );
      if (after.prepared_id !== 0 && !s.a.prepareId && !s.q.onlyIfPrepared && st.prepared_id === 0)
        h.find('a checkpoint got prepared by a call that should not prepare one', `prepared_id ${after.prepared_id}`, at);
      // Resolve a prepared checkpoint of the fuzzer's once its hostile followers ran.
      const next = sent[sent.indexOf(s) + 1];
      if (after.prepared_id !== 0 && !(next && next.q.onlyIfPrepared)) {
        try {
          await h.call('Checkpoint', { id: after.prepared_id, phase: 'ABORT', ballot: after.ballot });
          after = await h.status();
        } catch (e) {
          h.find("the fuzzer's prepared checkpoint cannot be aborted", (e as Error).message, at);
        }
      }
      st = after;
    }
  };

  const data = sent.filter((x) => laneOf(x.q.rpc) === 'data' || x.q.path);
  const units: Sent[][] = [];
  for (const s of data.filter((x) => x.body.length <= BIG)) {
    const last = units[units.length - 1];
    if (s.q.group !== undefined && last && last[0].q.group === s.q.group) last.push(s);
    else units.push([s]);
  }
  let next = 0;
  const dataLane = async () => {
    while (next < units.length) {
      const u = units[next++];
      await Promise.all(u.map((s) => send(s, h.wire)));
    }
  };
  // Big requests one at a time on their own connection: a call that wedges
  // its connection (a huge error trailer does) costs only itself.
  const bigLane = async () => {
    for (const s of data.filter((x) => x.body.length > BIG)) {
      await send(s, h.bigWire);
      if (s.o!.code === grpc.status.DEADLINE_EXCEEDED || s.o!.code === grpc.status.UNAVAILABLE) h.renewBigWire();
    }
  };
  await Promise.all([protocolLane(), bigLane(), ...Array.from({ length: concurrency }, dataLane)]);
  resolveOnce(h, sent);
  if (before) {
    const after = await h.observe(dense);
    // The suspects first: requests the door let through that it owed a refusal.
    const through = sent.filter(
      (s) =>
        s.o && owedRefusal(h.auth!, s.q.rpc, s.q.path) && s.o.code !== owedRefusal(h.auth!, s.q.rpc, s.q.path)!.code && s.o.code !== grpc.status.UNIMPLEMENTED,
    );
    const rpcs = [...new Set(sent.filter((s) => !s.skipped).map((s) => s.q.rpc))].join(' ');
    const request = through.length
      ? `${through.length} of the batch got past the door: ${through
          .slice(0, 3)
          .map((s) => `${grpc.status[s.o!.code]} ${describe(s.q, s.body)} [auth: ${s.p.kind}]`)
          .join(' | ')}`
      : `a batch of ${sent.length} requests (${rpcs}), each answered as owed`;
    h.compareSnapshots(`the server's state changed under requests the door refused (auth ${h.auth})`, before, after, { request: request.slice(0, 1500) });
  }
  return sent;
}

/** The exactly-once model: which pushes were applied, which were duplicates, and the ledger sums. */
function resolveOnce(h: Harness, sent: Sent[]): void {
  const byKey = new Map<string, Sent[]>();
  for (const s of sent) {
    if (s.o?.code !== grpc.status.OK) continue;
    if (s.a.ledgerNoDedup) h.ledger.apply(s.a.ledgerNoDedup.keys, s.a.ledgerNoDedup.grads);
    if (!s.a.push) continue;
    const k = `${s.a.push.worker}:${s.a.push.seq}`;
    byKey.set(k, [...(byKey.get(k) ?? []), s]);
  }
  for (const [k, ss] of byKey) {
    const applied = ss.filter((s) => s.o!.res?.duplicate === false);
    const dups = ss.filter((s) => s.o!.res?.duplicate === true);
    const was = h.applied.has(k);
    const at = (s: Sent) => ({ rpc: s.q.rpc, kind: s.q.kind, request: describe(s.q, s.body) });
    if (was && applied.length)
      h.find('a push was applied twice (exactly once broken)', `(worker hex, seq) ${k} was applied before and again now`, at(applied[0]));
    else if (applied.length > 1)
      h.find('a push was applied twice (exactly once broken)', `(worker hex, seq) ${k} applied by ${applied.length} requests of one batch`, at(applied[1]));
    else if (!was && !applied.length && dups.length)
      h.find('a push was answered duplicate but never applied (update lost)', `(worker hex, seq) ${k} was never applied, yet answered duplicate`, at(dups[0]));
    if (!was && applied.length) {
      h.applied.add(k);
      const s = applied[0];
      if (s.a.push!.ledger) h.ledger.apply(s.a.push!.ledger.keys, s.a.push!.ledger.grads);
      if (s.q.obj) {
        h.retryable.push({ rpc: s.q.rpc as 'Push' | 'PushDense', obj: s.q.obj, key: k });
        if (h.retryable.length > 512) h.retryable.splice(0, h.retryable.length - 512);
      }
    }
  }
}

// ------------------------------------------------------------ the run

export interface FuzzOptions {
  seed: number;
  requests: number;
  batch?: number;
  /** Batches between restarts (each restart also commits a checkpoint). */
  restartEvery?: number;
  concurrency?: number;
  /** Stop after this many findings (the run also stops when the server cannot be reset). */
  maxFindings?: number;
  log?: (line: string) => void;
  /** Called with each finding as the run goes (they are also in the summary). */
  onFinding?: (f: Finding) => void;
  /** After a state invariant broke: replay the batch one request at a time on a fresh server to name the request. */
  isolate?: boolean;
  /** Look past the known defects (see KNOWN_DEFECTS): their triggers are not drawn, their harmless findings only counted. */
  skipKnown?: boolean;
  /** Run against a server with --auth-tokens, the fuzz requests authorized as this mode says (test/fuzz.auth.ts). */
  auth?: AuthMode;
}

export interface FuzzSummary {
  seed: number;
  requests: number;
  batches: number;
  restarts: { term: number; kill: number };
  resets: number;
  redrawn: number;
  stats: Stats;
  findings: Finding[];
  /** Findings of known defects counted but not reported (skipKnown). */
  knownFindings: number;
  /** sha256 of the requests drawn (see Generator.digest), 16 hex digits. */
  digest: string;
  seconds: number;
}

export function replayCommand(
  o: { seed: number; batch: number; restartEvery: number; concurrency: number; skipKnown?: boolean; auth?: AuthMode },
  batchNo: number,
): string {
  const extra = [
    o.auth ? `--auth ${o.auth}` : '',
    o.skipKnown ? '--skip-known' : '',
    o.batch !== 40 ? `--batch ${o.batch}` : '',
    o.restartEvery !== 10 ? `--restart-every ${o.restartEvery}` : '',
    o.concurrency !== 4 ? `--concurrency ${o.concurrency}` : '',
  ]
    .filter(Boolean)
    .join(' ');
  return `node dist/test/fuzz.soak.js --seed ${o.seed} --requests ${(batchNo + 1) * o.batch}${extra ? ' ' + extra : ''}`;
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzSummary> {
  const t0 = Date.now();
  const opt = { seed: o.seed, batch: o.batch ?? 40, restartEvery: o.restartEvery ?? 10, concurrency: o.concurrency ?? 4, skipKnown: o.skipKnown, auth: o.auth };
  const log = o.log ?? (() => undefined);
  const stats = newStats();
  const findings: Finding[] = [];
  const gen = new Generator(!!o.skipKnown);
  let known = 0;
  const nBatches = Math.ceil(o.requests / opt.batch);
  let batchNo = 0;
  let resets = 0;
  const replay = () => replayCommand(opt, batchNo);
  let h = await Harness.start({ seed: o.seed, runSeed: o.seed, replay, auth: o.auth });
  const restarts = { term: 0, kill: 0 };
  log(
    `fuzz: seed ${o.seed}, ${nBatches} batches of ${opt.batch}, restart every ${opt.restartEvery} batches, server ${h.endpoint}${o.auth ? `, --auth-tokens, fuzz requests as ${o.auth}` : ''}`,
  );
  const takeFindings = () => {
    for (const f of h.findings.splice(0)) {
      if (o.skipKnown && knownFinding(f)) {
        known++;
        continue;
      }
      findings.push(f);
      o.onFinding?.(f);
    }
  };
  const reset = async (why: string) => {
    takeFindings();
    restarts.term += h.restarts.term;
    restarts.kill += h.restarts.kill;
    await h.close();
    resets++;
    log(`fuzz: fresh server and pool after batch ${batchNo} (${why})`);
    h = await Harness.start({ seed: mix(o.seed, resets), runSeed: o.seed, replay, auth: o.auth });
  };
  try {
    for (batchNo = 0; batchNo < nBatches; batchNo++) {
      if (o.maxFindings !== undefined && findings.length + h.findings.length >= o.maxFindings) break;
      h.where = `batch ${batchNo}`;
      const st = await h.status().catch(() => null);
      if (!st) {
        await h.check();
        await reset('the server stopped answering');
        continue;
      }
      const r = new R(mix(o.seed, batchNo));
      const reqs = gen.batch(r, h.genCtx(st), opt.batch);
      const sent = await sendBatch(h, reqs, stats, opt.concurrency);
      const broken = await h.check();
      if (broken.length) {
        if (o.isolate !== false) await isolate(o.seed, batchNo, sent, broken, log, replay, o.auth);
        await reset(broken[0].invariant);
        continue;
      }
      const reported = findings.length;
      takeFindings();
      if (findings.length > reported) log(`fuzz: batch ${batchNo}: ${findings.length - reported} findings`);
      if ((batchNo + 1) % opt.restartEvery === 0) {
        // Every third restart is a kill -9, the second one first.
        const kind = ((batchNo + 1) / opt.restartEvery) % 3 === 2 ? 'kill' : 'term';
        h.where = `restart (${kind}) after batch ${batchNo}`;
        if (!(await h.restart(kind, r))) await reset(`restart (${kind}) broke an invariant`);
      }
    }
  } finally {
    takeFindings();
    restarts.term += h.restarts.term;
    restarts.kill += h.restarts.kill;
    await h.close();
  }
  return {
    seed: o.seed,
    requests: stats.requests,
    batches: batchNo,
    restarts,
    resets,
    redrawn: gen.redrawn,
    stats,
    findings,
    knownFindings: known,
    digest: gen.digest.digest('hex').slice(0, 16),
    seconds: (Date.now() - t0) / 1000,
  };
}

/**
 * Names the request that broke a state invariant: a fresh server, the batch
 * sent one request at a time (each judged again against the fresh state:
 * one that would now be a valid mutation of a protected object is skipped),
 * the invariants checked after each.
 */
async function isolate(
  seed: number,
  batchNo: number,
  sent: Sent[],
  broken: Finding[],
  log: (l: string) => void,
  replay: (w: string) => string,
  auth?: AuthMode,
): Promise<void> {
  const h = await Harness.start({ seed: mix(seed, 0x150), runSeed: seed, replay, auth }).catch(() => null);
  if (!h) return;
  try {
    const stats = newStats();
    for (const s of sent) {
      if (s.skipped) continue;
      const st = await h.status();
      const body = bodyOf(s.q, h.incarnation);
      if (assess(s.q.rpc, body, h.genCtx(st), !!s.q.onlyIfPrepared).unsafe) continue;
      await sendBatch(h, [s.q], stats, 1);
      const f = await h.check();
      if (f.length) {
        for (const b of broken) {
          b.request ??= describe(s.q, body);
          b.rpc ??= s.q.rpc;
          b.kind ??= s.q.kind;
          b.detail += ` (isolated: this request alone breaks it on a fresh server: ${f[0].invariant})`;
        }
        log(`fuzz: isolated batch ${batchNo}'s finding to ${s.q.rpc} [${s.q.kind}]`);
        return;
      }
    }
    for (const b of broken) b.detail += ' (not reproduced one request at a time on a fresh server: it needs the history; replay the seed)';
  } finally {
    h.findings.length = 0;
    await h.close();
  }
}
