// Shard identity when the workers of a job start together (docs/protocol.md,
// Identity): every concurrent first connect to a new cluster succeeds and
// agrees; a worker killed while identifying leaves a cluster the next connect
// completes; an empty pool put in place of a shard of a formed cluster is
// refused. Real pserver processes, real pools, workers as child processes
// (test/identity.child.ts) released together by one stdin line each.
import { after, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { LocalCluster } from '../examples/local-cluster';
import { Engine, packKeys } from '../native/engine';
import { parameterServerService } from '../proto/load';
import { IdentityMismatchError, PsClient } from '../worker';
import { patchRoots, poolDirs, prng, removeDir } from './helpers';
import type { ConnectReply, ConnectRequest } from './identity.child';

const CHILD = path.join(__dirname, 'identity.child.js');
const WORKERS = 8;
const dirs = poolDirs(after);
const clusters = new Set<LocalCluster>();
const children = new Set<ChildProcess>();
after(() => {
  for (const c of clusters) c.killAll();
  for (const p of children) p.kill('SIGKILL');
});

interface WireIdentity {
  cluster_id: string;
  shard_index: number;
  shard_count: number;
  sealed: boolean;
}

async function newCluster(tag: string): Promise<LocalCluster> {
  const c = await LocalCluster.start({ dir: dirs(tag), shards: 3, cacheMb: 8, poolSize: '32M', logLevel: 'warn' });
  clusters.add(c);
  return c;
}

async function dispose(c: LocalCluster): Promise<void> {
  await Promise.all(c.ports.map((_, i) => c.kill(i, 'SIGKILL')));
  clusters.delete(c);
  removeDir(c.opts.dir);
}

/** Each shard's stored identity, read with raw Status calls (an SDK connect would complete a cluster). */
async function identities(endpoints: string[]): Promise<(WireIdentity | null)[]> {
  const Ctor = parameterServerService();
  return Promise.all(
    endpoints.map((e) => {
      const c = new Ctor(e, grpc.credentials.createInsecure()) as grpc.Client & Record<string, any>;
      return new Promise<WireIdentity | null>((resolve, reject) =>
        c.Status({}, { deadline: Date.now() + 10_000 }, (err: Error | null, res: { identity: WireIdentity | null }) => {
          c.close();
          if (err) reject(err);
          else resolve(res.identity ? Object.assign({ sealed: false }, res.identity) : null);
        }),
      );
    }),
  );
}

/** Worker processes that each answer one connect request per stdin line. */
class Workers {
  private readonly pending: { resolve: (r: ConnectReply) => void; reject: (e: Error) => void }[][] = [];
  private readonly procs: ChildProcess[] = [];
  readonly exits: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>[] = [];

  constructor(n: number, env: Record<string, string> = {}) {
    for (let i = 0; i < n; i++) {
      const p = spawn(process.execPath, [CHILD], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
      children.add(p);
      this.procs.push(p);
      const waiting: (typeof this.pending)[number] = [];
      this.pending.push(waiting);
      let out = '';
      let stderr = '';
      p.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        for (let nl = out.indexOf('\n'); nl >= 0; nl = out.indexOf('\n')) {
          const line = out.slice(0, nl);
          out = out.slice(nl + 1);
          waiting.shift()?.resolve(JSON.parse(line) as ConnectReply);
        }
      });
      p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      this.exits.push(
        new Promise((resolve) =>
          p.once('exit', (code, signal) => {
            children.delete(p);
            for (const w of waiting.splice(0)) w.reject(new Error(`worker ${i} exited (${code ?? signal}) before answering: ${stderr}`));
            resolve({ code, signal, stderr });
          }),
        ),
      );
    }
  }

  send(i: number, req: ConnectRequest): Promise<ConnectReply> {
    return new Promise((resolve, reject) => {
      this.pending[i].push({ resolve, reject });
      this.procs[i].stdin!.write(JSON.stringify(req) + '\n');
    });
  }

  /** Releases every worker at once (one write each, in the same tick). */
  all(reqs: ConnectRequest[]): Promise<ConnectReply[]> {
    return Promise.all(reqs.map((r, i) => this.send(i, r)));
  }

  async close(): Promise<void> {
    for (const p of this.procs) p.stdin!.end();
    await Promise.all(this.exits);
  }
}

function describeFailures(replies: ConnectReply[]): string[] {
  return replies.flatMap((r, i) => (r.ok ? [] : [`worker ${i}: ${r.error}`]));
}

/** Every worker connected and saw shard i of 3 of one cluster, sealed; returns that cluster id. */
function assertAgree(replies: ConnectReply[], what: string): string {
  assert.deepEqual(describeFailures(replies), [], `${what}: every connect succeeds`);
  const seen = new Set(replies.map((r) => JSON.stringify(r.identities)));
  assert.equal(seen.size, 1, `${what}: every worker saw the same identities: ${[...seen].join(' | ')}`);
  const ids = replies[0].identities!;
  assert.deepEqual(
    ids.map((x) => [x.shard_index, x.shard_count, x.sealed]),
    [
      [0, 3, true],
      [1, 3, true],
      [2, 3, true],
    ],
    what,
  );
  assert.equal(new Set(ids.map((x) => x.cluster_id)).size, 1, `${what}: one cluster id`);
  assert.match(ids[0].cluster_id, /^[0-9a-f]{32}$/);
  return ids[0].cluster_id;
}

describe('workers of one job connecting at the same moment to a new cluster', () => {
  // Seeded delays of 0-11 ms before each connect: about the time one
  // identity round takes on loopback, so the 20 repetitions interleave the
  // workers' Status and SetIdentity calls differently.
  test(`${WORKERS} workers all succeed and agree, over 20 seeded repetitions`, async () => {
    const w = new Workers(WORKERS);
    const clusterIds = new Set<string>();
    try {
      for (let rep = 0; rep < 20; rep++) {
        const r = prng(7000 + rep);
        const c = await newCluster(`together${rep}`);
        const delays = Array.from({ length: WORKERS }, () => Math.floor(r() * 12));
        const replies = await w.all(delays.map((delayMs) => ({ endpoints: c.endpoints, delayMs })));
        const id = assertAgree(replies, `repetition ${rep} (delays ${delays.join(',')})`);
        assert.deepEqual(
          (await identities(c.endpoints)).map((x) => x && [x.cluster_id, x.shard_index, x.sealed]),
          [
            [id, 0, true],
            [id, 1, true],
            [id, 2, true],
          ],
          'what the shards store',
        );
        clusterIds.add(id);
        await dispose(c);
      }
    } finally {
      await w.close();
    }
    assert.equal(clusterIds.size, 20, 'every new cluster gets its own id');
  });

  test('workers naming the servers differently (127.0.0.1 and localhost) agree too', async () => {
    const w = new Workers(WORKERS);
    try {
      for (let rep = 0; rep < 3; rep++) {
        const r = prng(7100 + rep);
        const c = await newCluster(`spelling${rep}`);
        const local = c.ports.map((p) => `localhost:${p}`);
        const replies = await w.all(Array.from({ length: WORKERS }, (_, i) => ({ endpoints: i % 2 ? local : c.endpoints, delayMs: Math.floor(r() * 12) })));
        assertAgree(replies, `repetition ${rep}`);
        await dispose(c);
      }
    } finally {
      await w.close();
    }
  });
});

describe('a worker killed while it identifies a new cluster', () => {
  // PMEMPS_SDK_FAILPOINT kills the worker with SIGKILL at a point of connect:
  // after shard 0 took its identity (the others have none), after every
  // shard took it (none sealed), and after the first shard was sealed.
  const cases: { fp: string; left: (ids: (WireIdentity | null)[]) => void }[] = [
    {
      fp: 'identity.after_claim',
      left: (ids) => {
        assert.deepEqual(
          ids.map((x) => x && [x.shard_index, x.sealed]),
          [[0, false], null, null],
        );
      },
    },
    {
      fp: 'identity.after_identify',
      left: (ids) => {
        assert.deepEqual(
          ids.map((x) => x && [x.shard_index, x.sealed]),
          [
            [0, false],
            [1, false],
            [2, false],
          ],
        );
      },
    },
    {
      fp: 'identity.after_first_seal',
      left: (ids) => {
        assert.ok(
          ids.every((x) => x),
          'every shard has the identity',
        );
        assert.ok(
          ids.some((x) => x!.sealed),
          'a shard is sealed',
        );
      },
    },
  ];
  for (const { fp, left } of cases) {
    test(`at ${fp}: the next connect completes the cluster with the id it wrote`, async () => {
      const c = await newCluster(fp);
      const w = new Workers(1, { PMEMPS_SDK_FAILPOINT: fp });
      await assert.rejects(w.send(0, { endpoints: c.endpoints, delayMs: 0 }), /exited/);
      const exit = await w.exits[0];
      assert.equal(exit.signal, 'SIGKILL', `the worker died at the failpoint: ${exit.stderr}`);
      const before = await identities(c.endpoints);
      left(before);
      const written = before[0]!.cluster_id;
      if (fp === 'identity.after_identify') {
        // A shard crashing between the phases keeps its identity: it is in the pool.
        await c.restart(2);
        assert.deepEqual(await identities(c.endpoints), before);
      }
      const ps = await PsClient.connect({ endpoints: c.endpoints });
      ps.close();
      assert.deepEqual(
        (await identities(c.endpoints)).map((x) => x && [x.cluster_id, x.shard_index, x.shard_count, x.sealed]),
        [
          [written, 0, 3, true],
          [written, 1, 3, true],
          [written, 2, 3, true],
        ],
      );
      await dispose(c);
    });
  }
});

describe('an empty pool in place of a shard of a formed cluster', () => {
  test('is refused, by workers connecting together too, unless adoptNewShards', async () => {
    const c = await newCluster('replaced');
    const e = c.endpoints;
    const ps = await PsClient.connect({ endpoints: e });
    let formed: (WireIdentity | null)[];
    try {
      formed = await identities(e);
      // A restore rolls the rows back, never the identity.
      await ps.createTable({ name: 't', dim: 2, seed: 1, optimizer: { type: 'sgd', lr: 0.1 }, initializer: { type: 'constant', value: 0 } });
      const keys = BigUint64Array.from([1n, 2n, 3n, 4n]);
      await ps.push('t', keys, new Float32Array(8).fill(1));
      await ps.persist({ step: 1 });
      await ps.push('t', keys, new Float32Array(8).fill(1));
      assert.equal((await ps.restore()).step, 1);
      assert.deepEqual(await identities(e), formed);
      assert.ok(formed.every((x) => x?.sealed));
    } finally {
      ps.close();
    }
    // A crash keeps the seal: it is in the pool.
    await c.restart(1);
    assert.deepEqual(await identities(e), formed);

    await c.kill(1, 'SIGTERM');
    removeDir(c.poolDir(1));
    await c.startShard(1);
    await assert.rejects(PsClient.connect({ endpoints: e }), (err: Error) => {
      assert.ok(err instanceof IdentityMismatchError, String(err));
      assert.match(err.message, new RegExp(`${e[1]} has a new, empty pool`));
      assert.match(err.message, /adoptNewShards/);
      return true;
    });
    // Workers starting together see the same thing: every one is refused.
    const w = new Workers(WORKERS);
    try {
      const r = prng(7200);
      const replies = await w.all(Array.from({ length: WORKERS }, () => ({ endpoints: e, delayMs: Math.floor(r() * 12) })));
      assert.deepEqual(
        replies.map((x) => !x.ok && /^IdentityMismatchError: .* has a new, empty pool/.test(x.error!)),
        new Array(WORKERS).fill(true),
        describeFailures(replies).join('\n'),
      );
    } finally {
      await w.close();
    }
    assert.equal((await identities(e))[1], null, 'a refused connect writes nothing');

    const adopt = await PsClient.connect({ endpoints: e, adoptNewShards: true });
    adopt.close();
    assert.deepEqual(await identities(e), formed, 'adopted: the same identity, sealed');
    await dispose(c);
  });
});

// The ops that wrote the pools of test/fixtures: a table, a push,
// checkpoint 1, another push. Returns the rows at the checkpoint.
const FIXTURE_KEYS = packKeys(Array.from({ length: 500 }, (_, i) => BigInt(i * 3)));
async function fixtureOps(e: Engine): Promise<Buffer> {
  e.createTable({
    name: 'emb',
    dim: 8,
    optimizer: { type: 'adagrad', lr: 0.1, initialAccumulator: 0.1 },
    initializer: { type: 'uniform', min: -0.5, max: 0.5 },
    seed: 11,
  });
  const g = Buffer.alloc(500 * 8 * 4);
  for (let i = 0; i < 500 * 8; i++) g.writeFloatLE(((i * 37) % 101) / 100 - 0.5, 4 * i);
  await e.push('emb', FIXTURE_KEYS, g);
  await e.prepare(1);
  await e.commit(1);
  const atCheckpoint = await e.pull('emb', FIXTURE_KEYS);
  await e.push('emb', FIXTURE_KEYS, g);
  return atCheckpoint;
}

/** The rows a fixture pool holds at its checkpoint and at its close, from the reference engine. */
async function fixtureState(): Promise<{ atCheckpoint: Buffer; latest: Buffer }> {
  const ref = Engine.open({ memoryOnly: true });
  const atCheckpoint = await fixtureOps(ref);
  const latest = await ref.pull('emb', FIXTURE_KEYS);
  await ref.close();
  return { atCheckpoint, latest };
}

describe('pools of an older layout', () => {
  test('are refused with their version named, and left unchanged', async () => {
    const dir = dirs('v3');
    const e = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
    await e.close();
    const file = path.join(dir, 'pmemps.pool');
    const v3 = Buffer.alloc(4);
    v3.writeUInt32LE(3);
    const at = patchRoots(file, 8, () => v3); // the layout version
    const root = (b: Buffer) => b.subarray(at, at + 256);
    const before = Buffer.from(root(fs.readFileSync(file)));
    for (let i = 0; i < 2; i++) assert.throws(() => Engine.open({ dir, poolMb: 16, cacheMb: 2 }), /layout version 3; this build reads version 7/);
    // (libpmemobj's own open writes its run-time state; pmemps writes nothing.)
    assert.ok(root(fs.readFileSync(file)).equals(before), 'the refused pool root is unchanged');
  });

  test('of version 4 open as in-place pools of version 7, their state and checkpoint intact', async () => {
    // test/fixtures/pool-v4.pool.gz: a 16 MiB pool written by the last build
    // of layout version 4 (PMEM_IS_PMEM_FORCE=1) with fixtureOps, then
    // closed cleanly.
    const { atCheckpoint, latest } = await fixtureState();
    const keys = FIXTURE_KEYS;
    const dir = dirs('v4');
    const file = path.join(dir, 'pmemps.pool');
    fs.writeFileSync(file, zlib.gunzipSync(fs.readFileSync(path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'pool-v4.pool.gz'))));
    for (let round = 0; round < 2; round++) {
      const e = Engine.open({ dir, poolMb: 16, cacheMb: 2, layout: 'logged' });
      assert.equal(e.openInfo.layout, 'inplace', 'an upgraded pool keeps its rows in place, whatever a new pool would get');
      assert.equal(e.openInfo.cleanClose, true);
      assert.equal(e.openInfo.committed, 1);
      assert.deepEqual(await e.pull('emb', keys), latest, `round ${round}: the state at the clean close`);
      const check = e.fullCheck();
      assert.deepEqual([check.rowsLive, check.badEpochs, check.problems], [500, 0, []]);
      await e.close();
    }
    const e = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
    await e.rollback();
    assert.deepEqual(await e.pull('emb', keys), atCheckpoint, 'the checkpoint written by version 4 restores');
    await e.close();
  });

  // test/fixtures/pool-v5.pool.gz and pool-v6.pool.gz: 16 MiB logged pools
  // written by the last build of layout version 5 and 6
  // (PMEM_IS_PMEM_FORCE=1, layout 'logged') with fixtureOps, then closed
  // cleanly.
  for (const v of [5, 6]) {
    test(`of version ${v} open as pools of version 7, their layout, state and checkpoint intact`, async () => {
      const { atCheckpoint, latest } = await fixtureState();
      const keys = FIXTURE_KEYS;
      const dir = dirs(`v${v}`);
      fs.writeFileSync(
        path.join(dir, 'pmemps.pool'),
        zlib.gunzipSync(fs.readFileSync(path.resolve(__dirname, '..', '..', 'test', 'fixtures', `pool-v${v}.pool.gz`))),
      );
      for (let round = 0; round < 2; round++) {
        const e = Engine.open({ dir, poolMb: 16, cacheMb: 2, layout: 'inplace' });
        assert.equal(e.openInfo.layout, 'logged', 'the pool keeps the layout it was created with');
        assert.equal(e.openInfo.cleanClose, true);
        assert.equal(e.openInfo.committed, 1);
        assert.equal(e.openInfo.replayedRecords, 0, 'a clean close leaves nothing to replay');
        assert.deepEqual(await e.pull('emb', keys), latest, `round ${round}: the state at the clean close`);
        assert.deepEqual(e.fullCheck().problems, []);
        await e.close();
      }
      const e = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
      await e.rollback();
      assert.deepEqual(await e.pull('emb', keys), atCheckpoint, `the checkpoint written by version ${v} restores`);
      await e.close();
    });
  }

  test('of version 6, crashed, open as pools of version 7 whose slots need no replay, and restore', async () => {
    // test/fixtures/pool-v6-crashed.pool.gz: as pool-v6, SIGKILLed instead
    // of closed. Version 6 synced every slot before the publish that made
    // it live, so the upgrade puts the slots' mark at the published tail.
    const { atCheckpoint } = await fixtureState();
    const dir = dirs('v6c');
    fs.writeFileSync(
      path.join(dir, 'pmemps.pool'),
      zlib.gunzipSync(fs.readFileSync(path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'pool-v6-crashed.pool.gz'))),
    );
    const e = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
    assert.deepEqual([e.openInfo.layout, e.openInfo.cleanClose, e.openInfo.committed], ['logged', false, 1]);
    assert.equal(e.openInfo.replayedRecords, 0);
    await e.rollback();
    assert.deepEqual(await e.pull('emb', FIXTURE_KEYS), atCheckpoint, 'the checkpoint written by version 6 restores');
    assert.deepEqual(e.fullCheck().problems, []);
    await e.close();
  });
});
