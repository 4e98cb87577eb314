// A full pool never loses an acknowledged update: a real pserver on a small
// pool, filled through the wire until pushes are refused, then driven over
// every boundary (pushes to existing rows, new keys, new workers, SetDense,
// CreateTable, PREPARE / COMMIT / ABORT, DropTable, Restore) and stopped
// with SIGTERM, which must exit 0; after the restart every acknowledged
// push is there, bit for bit against a DRAM reference fed the same pushes.
// Everything a call may answer on a full pool is OK or RESOURCE_EXHAUSTED
// with nothing changed; nothing answers INTERNAL and nothing gets stuck.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { LocalCluster } from '../examples/local-cluster';
import { Engine, checkPoolFile, denseOptimizer, type OptimizerSpec, type TableSpec } from '../native/engine';
import { optimizerToWire, parameterServerService } from '../proto/load';
import { poolDirs, prng } from './helpers';

const dirs = poolDirs(after);
const clusters: LocalCluster[] = [];
const refs: Engine[] = [];
after(async () => {
  clusters.forEach((c) => c.killAll());
  for (const r of refs) await r.close();
});

const POOL = '64M';

async function server(tag: string): Promise<LocalCluster> {
  const c = await LocalCluster.start({ dir: dirs(tag), shards: 1, cacheMb: 16, poolSize: POOL, logLevel: 'warn' });
  clusters.push(c);
  return c;
}

type Client = grpc.Client & Record<string, any>;

function client(c: LocalCluster): Client {
  const Ctor = parameterServerService();
  return new Ctor(c.endpoints[0], grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 256 * 2 ** 20,
    'grpc.max_send_message_length': 256 * 2 ** 20,
  }) as Client;
}

function call<T = any>(cli: Client, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) =>
    cli[method](req, { deadline: Date.now() + 30_000 }, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res))),
  );
}

/** Runs the call; resolves true when it succeeded, false when the pool refused it (RESOURCE_EXHAUSTED); anything else fails the test. */
async function okOrFull(what: string, p: Promise<unknown>): Promise<boolean> {
  try {
    await p;
    return true;
  } catch (e) {
    const err = e as grpc.ServiceError;
    assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED, `${what}: expected OK or RESOURCE_EXHAUSTED, got ${grpc.status[err.code]}: ${err.details}`);
    return false;
  }
}

function keysOf(from: number, n: number): Buffer {
  const b = Buffer.alloc(n * 8);
  for (let i = 0; i < n; i++) b.writeBigUInt64LE(BigInt(from + i), i * 8);
  return b;
}

function gradsOf(rand: () => number, n: number): Buffer {
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = Math.fround(rand() * 2 - 1);
  return Buffer.from(f.buffer);
}

const SMALL: TableSpec = {
  name: 'emb',
  dim: 4,
  optimizer: { type: 'adagrad', lr: 0.1, initialAccumulator: 0.01 },
  initializer: { type: 'uniform', min: -0.1, max: 0.1 },
  seed: 5,
};
const BIG: TableSpec = { name: 'big', dim: 8, optimizer: { type: 'sgd', lr: 0.1 }, initializer: { type: 'zeros' }, seed: 6 };

function specToWire(s: TableSpec): unknown {
  return { name: s.name, dim: s.dim, optimizer: optimizerToWire(s.optimizer), initializer: s.initializer, seed: s.seed };
}

interface DenseRef {
  opt: OptimizerSpec;
  n: number;
  row: Float32Array;
  step: number;
}

/**
 * The server seen through the wire, and the DRAM reference (a memory-only
 * engine and dense rows updated by the same optimizer code) that every
 * acknowledged write is applied to, in the same order; the reference takes
 * the same checkpoints, so a Restore rolls both back alike.
 */
class Harness {
  cli: Client;
  readonly ref = Engine.open({ memoryOnly: true, cacheMb: 64 });
  private dense = new Map<string, DenseRef>();
  private readonly seqs = new Map<string, number>();
  /** The last acknowledged push of each worker (retried after the restart), and as it was at each checkpoint. */
  private lastPush = new Map<string, Record<string, unknown>>();
  private readonly lastPushAt = new Map<number, Map<string, Record<string, unknown>>>();
  private committed = 0;

  constructor(readonly c: LocalCluster) {
    this.cli = client(c);
    refs.push(this.ref);
  }

  call<T = any>(method: string, req: unknown): Promise<T> {
    return call<T>(this.cli, method, req);
  }

  /** Creates a table on the server; `mirror`: also in the reference (the tables the comparisons cover). */
  async createTable(spec: TableSpec, mirror: boolean): Promise<boolean> {
    const ok = await okOrFull(`CreateTable ${spec.name}`, this.call('CreateTable', { spec: specToWire(spec) }));
    if (ok && mirror) this.ref.createTable(spec);
    return ok;
  }

  /** One push with the next seq of `worker`; applied to the reference when acknowledged (mirror). */
  async push(table: string, keys: Buffer, grads: Buffer, worker: string, mirror: boolean): Promise<boolean> {
    const seq = (this.seqs.get(worker) ?? 0) + 1;
    this.seqs.set(worker, seq);
    const req = { table, keys, grads, worker_id: worker, seq, incarnation: 0 };
    let res: { duplicate: boolean } | undefined;
    if (
      !(await okOrFull(
        `Push to ${table} by ${worker}`,
        this.call('Push', req).then((r) => (res = r)),
      ))
    )
      return false;
    assert.equal(res!.duplicate, false);
    if (mirror) await this.ref.push(table, keys, grads);
    this.lastPush.set(worker, req);
    return true;
  }

  async setDense(name: string, values: Float32Array, opt: OptimizerSpec): Promise<boolean> {
    const req = { tensor: { name, values: Buffer.from(values.buffer, values.byteOffset, values.byteLength) }, optimizer: optimizerToWire(opt) };
    if (!(await okOrFull(`SetDense ${name}`, this.call('SetDense', req)))) return false;
    const row = new Float32Array(denseOptimizer.rowFloats(opt, values.length));
    denseOptimizer.initRow(opt, row);
    row.set(values);
    this.dense.set(name, { opt, n: values.length, row, step: 0 });
    return true;
  }

  async pushDense(name: string, grads: Float32Array, worker: string): Promise<boolean> {
    const seq = (this.seqs.get(worker) ?? 0) + 1;
    this.seqs.set(worker, seq);
    const req = { name, grads: Buffer.from(grads.buffer), worker_id: worker, seq, incarnation: 0 };
    if (!(await okOrFull(`PushDense ${name}`, this.call('PushDense', req)))) return false;
    const d = this.dense.get(name)!;
    d.step = denseOptimizer.apply(d.opt, d.row, d.step, grads);
    this.lastPush.delete(worker); // its last write is a dense push now
    return true;
  }

  /** PREPARE; when it succeeds the reference takes the same boundary (its dense rows in the meta). */
  async prepare(id: number, dense: { name: string; values: Buffer }[] = []): Promise<boolean> {
    const req = { id, phase: 'PREPARE', ballot: 0, meta: Buffer.from(`{"step":${id}}`), dense, incarnation: 0 };
    if (!(await okOrFull(`PREPARE ${id}`, this.call('Checkpoint', req)))) {
      const st = await this.call('Status', {});
      assert.equal(st.prepared_id, 0, `a refused PREPARE ${id} left checkpoint ${st.prepared_id} prepared`);
      return false;
    }
    const meta = [...this.dense].map(([name, d]) => ({ name, opt: d.opt, n: d.n, row: [...d.row], step: d.step }));
    await this.ref.prepare(id, { meta: Buffer.from(JSON.stringify(meta)) });
    this.lastPushAt.set(id, new Map(this.lastPush));
    return true;
  }

  /** COMMIT and ABORT succeed whatever the pool holds. */
  async resolve(id: number, phase: 'COMMIT' | 'ABORT'): Promise<void> {
    const st = await this.call('Checkpoint', { id, phase, ballot: 0 });
    assert.equal(st.prepared_id, 0, `${phase} ${id} left a prepared checkpoint`);
    if (phase === 'ABORT') return this.ref.abort(id);
    assert.equal(st.committed_id, id);
    await this.ref.commit(id);
    this.committed = id;
  }

  async checkpoint(id: number, dense: { name: string; values: Buffer }[] = []): Promise<void> {
    assert.ok(await this.prepare(id, dense), `PREPARE ${id} was refused`);
    await this.resolve(id, 'COMMIT');
  }

  /** Restore to the committed checkpoint; the reference rolls back alike. */
  async restore(): Promise<void> {
    const r = await this.call('Restore', { ballot: 0, checkpoint_id: this.committed });
    assert.equal(r.checkpoint_id, this.committed);
    await this.ref.rollback();
    const meta = JSON.parse(this.ref.committedCheckpoint()!.meta.toString()) as { name: string; opt: OptimizerSpec; n: number; row: number[]; step: number }[];
    this.dense = new Map(meta.map((d) => [d.name, { opt: d.opt, n: d.n, row: Float32Array.from(d.row), step: d.step }]));
    this.lastPush = new Map(this.lastPushAt.get(this.committed));
  }

  /** Pushes new keys of `table` (from key `from` on) until the pool refuses a single row; returns the rows acknowledged. */
  async fill(table: string, dim: number, from: number, worker: string, mirror: boolean): Promise<number> {
    const rand = prng(from + dim);
    let key = from;
    for (const batch of [16384, 256, 1]) {
      while (await this.push(table, keysOf(key, batch), gradsOf(rand, batch * dim), worker, mirror)) key += batch;
    }
    return key - from;
  }

  /** The server's rows of every mirrored table and its dense tensors equal the reference's, bit for bit. */
  async expectSame(keys: Buffer, what: string): Promise<void> {
    for (const t of this.ref.listTables()) {
      const got: Buffer = (await this.call('Pull', { table: t.name, keys })).values;
      assert.ok(got.equals(await this.ref.pull(t.name, keys)), `${what}: the rows of table ${t.name} differ from the reference`);
    }
    const res = await this.call('PullDense', { names: [...this.dense.keys()] });
    assert.equal(res.tensors.length, this.dense.size);
    for (const tn of res.tensors as { name: string; values: Buffer }[]) {
      const d = this.dense.get(tn.name)!;
      assert.ok(Buffer.from(d.row.buffer, 0, d.n * 4).equals(tn.values), `${what}: dense tensor ${tn.name} differs from the reference`);
    }
  }

  async poolUsed(): Promise<number> {
    return (await this.call('Status', {})).pool_used_bytes;
  }

  /** SIGTERM must stop the server cleanly (exit 0); it comes back saying so. */
  async stopAndRestart(): Promise<void> {
    this.cli.close();
    assert.equal(await this.c.kill(0, 'SIGTERM'), 0, `SIGTERM: the clean stop failed; server log:\n${fs.readFileSync(this.c.logFile(0), 'utf8').slice(-3000)}`);
    await this.c.startShard(0);
    this.cli = client(this.c);
    assert.equal((await this.call('Status', {})).last_stop_clean, true);
  }

  /** Every worker's last acknowledged push, sent again, is recognised as applied: the exactly-once record survived. */
  async expectRetriesDuplicate(): Promise<void> {
    assert.ok(this.lastPush.size > 0);
    for (const [worker, req] of this.lastPush)
      assert.equal((await this.call('Push', req)).duplicate, true, `the retried last push of ${worker} was applied again`);
  }

  close(): void {
    this.cli.close();
  }
}

describe('a full pool', () => {
  test('defect 2 as reported: DropTable and COMMIT on a full pool, then a push, SIGTERM and a restart keep that push', { timeout: 120_000 }, async () => {
    const c = await server('defect2');
    const h = new Harness(c);
    try {
      const rand = prng(2);
      assert.ok(await h.createTable(SMALL, true));
      assert.ok(await h.createTable(BIG, false));
      assert.ok(await h.push('emb', keysOf(1, 3), gradsOf(rand, 12), 'trainer', true));
      // Both workers are known before the checkpoints, so every checkpoint
      // record has the same size and PREPARE on the full pool reuses the
      // storage of the one before.
      assert.ok(await h.push('big', keysOf(0, 1), gradsOf(rand, 8), 'filler', false));
      await h.checkpoint(1);
      await h.checkpoint(2);
      assert.ok((await h.fill('big', BIG.dim, 1, 'filler', false)) > 0);
      assert.ok(await h.push('emb', keysOf(1, 3), gradsOf(rand, 12), 'trainer', true), 'a push to existing rows of a full pool');
      // A checkpoint with a dense tensor of one pool chunk takes what is left, if anything.
      if (!(await h.prepare(3, [{ name: 'w', values: Buffer.from(new Float32Array(20_000).fill(0.5).buffer) }]))) assert.ok(await h.prepare(3));
      await h.resolve(3, 'COMMIT');
      await h.call('DropTable', { name: 'big' });
      assert.ok(await h.prepare(4));
      await h.resolve(4, 'COMMIT'); // was: INTERNAL "extending the pool by appending parts with headers is not supported!"
      await h.checkpoint(5);
      assert.ok(await h.push('emb', keysOf(1, 3), gradsOf(rand, 12), 'trainer', true));
      await h.stopAndRestart();
      await h.expectSame(keysOf(0, 8), 'after the restart');
      await h.expectRetriesDuplicate();
    } finally {
      h.close();
    }
  });

  test(
    'every boundary: pushes, new keys, new workers, SetDense, CreateTable, PREPARE / COMMIT / ABORT, Restore, DropTable; SIGTERM exits 0 and the restart has every acknowledged push',
    { timeout: 120_000 },
    async (t) => {
      const c = await server('boundaries');
      const h = new Harness(c);
      const rand = prng(7);
      const ADAM: OptimizerSpec = { type: 'adam', lr: 0.01 };
      const EMB_KEYS = 512;
      const grads = (n: number) => gradsOf(rand, n);
      const denseGrads = (n: number) => new Float32Array(grads(n).buffer);
      const fillers = ['f0', 'f1', 'f2', 'f3'].map((name, i): TableSpec => ({ ...BIG, name, dim: 2 + i, seed: 10 + i }));
      try {
        // Before the pool is full: every table, dense tensor and worker the
        // checkpoints will hold, so that their records keep one size.
        assert.ok(await h.createTable(SMALL, true));
        for (const spec of [BIG, ...fillers]) assert.ok(await h.createTable(spec, false));
        assert.ok(
          await h.setDense(
            'mlp',
            Float32Array.from({ length: 16 }, (_, i) => i / 16),
            ADAM,
          ),
        );
        assert.ok(await h.push('emb', keysOf(0, EMB_KEYS), grads(EMB_KEYS * SMALL.dim), 'w0', true));
        assert.ok(await h.pushDense('mlp', denseGrads(16), 'w0'));
        assert.ok(await h.push('big', keysOf(0, 1), grads(BIG.dim), 'filler', false));
        await h.checkpoint(1);
        await h.checkpoint(2);
        const empty = await h.poolUsed();

        // Fill: pushes of new rows until refused, in every table (the fillers
        // start with one-chunk slabs: they take what is left between larger ones).
        let rows = await h.fill('big', BIG.dim, 1, 'filler', false);
        for (const f of fillers) rows += await h.fill(f.name, f.dim, 0, 'filler', false);
        t.diagnostic(`pool full after ${rows} rows: ${((await h.poolUsed()) / 2 ** 20).toFixed(1)} MiB used of ${POOL}`);

        // Pushes to existing rows are acknowledged; new keys until refused.
        for (let i = 0; i < 4; i++) assert.ok(await h.push('emb', keysOf(0, EMB_KEYS), grads(EMB_KEYS * SMALL.dim), 'w0', true), 'a push to existing rows');
        const emb = await h.fill('emb', SMALL.dim, EMB_KEYS, 'w0', true);
        assert.ok(await h.push('emb', keysOf(0, EMB_KEYS), grads(EMB_KEYS * SMALL.dim), 'w0', true));
        const embKeys = keysOf(0, EMB_KEYS + emb + 8);
        await h.expectSame(embKeys, 'full pool, after the refused pushes');

        // Checkpoints on the full pool. One whose record cannot fit is refused,
        // nothing is prepared, and the same id prepares next time.
        const tooLarge = [{ name: 'w', values: Buffer.alloc(32 * 2 ** 20) }];
        assert.equal(await h.prepare(3, tooLarge), false, 'PREPARE with a 32 MiB dense tensor on a full 64 MiB pool');
        await h.checkpoint(3);
        assert.ok(await h.pushDense('mlp', denseGrads(16), 'w0'));
        assert.ok(await h.push('emb', keysOf(0, EMB_KEYS), grads(EMB_KEYS * SMALL.dim), 'w0', true));
        assert.ok(await h.prepare(4));
        await h.resolve(4, 'ABORT');
        await h.restore();
        await h.expectSame(embKeys, 'after Restore on the full pool');
        assert.ok(await h.push('emb', keysOf(0, EMB_KEYS), grads(EMB_KEYS * SMALL.dim), 'w0', true));

        // DropTable and a checkpoint free the table's storage.
        const full = await h.poolUsed();
        await h.call('DropTable', { name: 'big' });
        await h.checkpoint(5);
        const after = await h.poolUsed();
        t.diagnostic(
          `pool used: ${(empty / 2 ** 20).toFixed(1)} MiB before the fill, ${(full / 2 ** 20).toFixed(1)} full, ${(after / 2 ** 20).toFixed(1)} once big was dropped and checkpoint 5 committed`,
        );
        assert.ok(full - after > (full - empty) / 2, 'the commit did not free the dropped table');

        // Full again: new tables, each filled, until CreateTable is refused
        // (and changes nothing). Then new workers until one is refused: it
        // changes nothing either.
        let refills = 0;
        while (await h.createTable({ ...BIG, name: `refill${refills}` }, false)) await h.fill(`refill${refills++}`, BIG.dim, 0, 'filler', false);
        assert.ok(refills > 0);
        const listed = (await h.call('ListTables', {})).tables.map((x: { spec: { name: string } }) => x.spec.name);
        assert.ok(!listed.includes(`refill${refills}`), 'a refused CreateTable left its table behind');
        let workers = 0;
        while (workers < 8000 && (await h.push('emb', keysOf(workers % EMB_KEYS, 4), grads(4 * SMALL.dim), `new-${workers}`, true))) workers++;
        assert.ok(workers < 8000, 'the pool never refused a new worker');
        t.diagnostic(`${workers} new workers acknowledged on the full pool before one was refused`);
        await h.expectSame(embKeys, 'after a new worker was refused');

        // SetDense on the full pool: a tensor larger than the pool is refused and changes nothing.
        assert.equal(await h.setDense('huge', new Float32Array(2_000_000), ADAM), false);
        await assert.rejects(h.call('PullDense', { names: ['huge'] }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
        assert.ok(await h.pushDense('mlp', denseGrads(16), 'w0'));
        assert.ok(await h.push('emb', keysOf(0, EMB_KEYS), grads(EMB_KEYS * SMALL.dim), 'w0', true));

        // PREPARE may be refused now (its record grew with the new workers);
        // if so, nothing is prepared and the next PREPARE is not refused for
        // being stuck behind it.
        let prepared = await h.prepare(6);
        if (!prepared) {
          t.diagnostic('PREPARE 6 was refused: the pool has no room for its larger record');
          // Not stuck behind the refused one (h.prepare checked nothing is
          // prepared): refused for room again, or prepared if the record
          // shrank meanwhile (exactly-once entries behind the watermark age
          // out with the clock, so on a slow machine it may).
          prepared = await h.prepare(6);
        }
        if (prepared) await h.resolve(6, 'COMMIT');

        await h.stopAndRestart();
        await h.expectSame(embKeys, 'after SIGTERM and the restart');
        await h.expectRetriesDuplicate();

        // A table no checkpoint holds is freed by its drop at once: room for the checkpoint.
        await h.call('DropTable', { name: 'refill0' });
        await h.checkpoint(prepared ? 7 : 6);
        await h.expectSame(embKeys, 'after the last checkpoint');
      } finally {
        h.close();
      }
    },
  );

  // The storage of a dropped table is freed after the commit that makes the
  // drop final (or at once for a table no checkpoint holds), a bounded
  // number of objects per transaction. A kill anywhere in between loses
  // nothing and leaks nothing: open finishes the job.
  const KEEP: TableSpec = { ...SMALL, name: 'keep' };
  const DROPPED: TableSpec = { ...BIG, name: 'd', dim: 1 };
  const DROPPED_ROWS = 400_000; // ~40 index segments and 6 slabs: several free transactions
  const childScript = (dir: string, inCheckpoint: boolean): string => `
    const { Engine } = require(${JSON.stringify(path.join(__dirname, '..', 'native', 'engine.js'))});
    const keys = (from, n) => { const b = Buffer.alloc(n * 8); for (let i = 0; i < n; i++) b.writeBigUInt64LE(BigInt(from + i), i * 8); return b; };
    (async () => {
      const e = Engine.open({ dir: ${JSON.stringify(dir)}, poolMb: 64, cacheMb: 16 });
      e.createTable(${JSON.stringify(KEEP)});
      await e.push('keep', keys(0, 64), Buffer.alloc(64 * 4 * 4, 1));
      ${inCheckpoint ? '' : 'await e.prepare(1); await e.commit(1);'}
      process.stdout.write(String(e.stats().poolUsedBytes));
      e.createTable(${JSON.stringify(DROPPED)});
      for (let k = 0; k < ${DROPPED_ROWS}; k += 50000) await e.push('d', keys(k, 50000), Buffer.alloc(50000 * 4, 1));
      ${inCheckpoint ? "await e.prepare(1); await e.commit(1); await e.dropTable('d'); await e.prepare(2); await e.commit(2);" : "await e.dropTable('d');"}
      process.exit(7); // the failpoint was not reached
    })();`;
  const kills: [string, boolean][] = [
    ['commit.after_publish:2', true], // the drop is final, nothing marked yet
    ['settle.step:1', true], // marked as garbage, nothing freed
    ['reclaim.step:1', true],
    ['reclaim.step:3', true],
    ['drop_table.mid_tx:1', false],
    ['reclaim.step:2', false], // a table no checkpoint holds, freed by its drop
  ];
  for (const [fp, inCheckpoint] of kills) {
    test(`engine: killed at ${fp} while freeing a dropped table ${inCheckpoint ? 'after the commit that made the drop final' : 'that no checkpoint held'}: reopened, it is gone and its storage free`, async () => {
      const dir = dirs('reclaim');
      const r = spawnSync(process.execPath, ['-e', childScript(dir, inCheckpoint)], { env: { ...process.env, PMEMPS_FAILPOINT: fp } });
      assert.equal(r.signal, 'SIGKILL', `the child was not killed at ${fp}: exit ${r.status}, ${r.stderr.toString()}`);
      const before = Number(r.stdout.toString());
      const e = Engine.open({ dir, poolMb: 64, cacheMb: 16 });
      try {
        // Dropped, or (killed inside the drop) created after the last checkpoint and so gone with the crash.
        assert.deepEqual(
          e.listTables().map((t) => t.name),
          ['keep'],
        );
        const st = e.stats();
        assert.equal(st.garbageTables, 0, 'open left storage unfreed');
        // What stays beyond the state before the table: checkpoint records and the like, not the table's ~20 MiB.
        assert.ok(st.poolUsedBytes - before < 2 ** 20, `${((st.poolUsedBytes - before) / 2 ** 20).toFixed(1)} MiB more in use than before the dropped table`);
        assert.deepEqual(e.fullCheck().problems, []);
        const rows = new Float32Array((await e.pull('keep', keysOf(0, 64))).buffer.slice(0));
        const ref = Engine.open({ memoryOnly: true, cacheMb: 16 });
        ref.createTable(KEEP);
        await ref.push('keep', keysOf(0, 64), Buffer.alloc(64 * 4 * 4, 1));
        assert.ok(Buffer.from(rows.buffer).equals(await ref.pull('keep', keysOf(0, 64))), 'the rows of the table kept differ');
        await ref.close();
      } finally {
        await e.close();
      }
      assert.deepEqual(checkPoolFile(path.join(dir, 'pmemps.pool')), { consistent: true, message: 'consistent' });
    });
  }
});
