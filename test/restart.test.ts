// Restart semantics of the engine: clean close vs. crash, the directory lock,
// rollback on a running engine, and the checkpoint protocol (prepare/commit/
// abort ids, a prepared checkpoint that survives a crash).

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { after, describe, it } from 'node:test';
import { Engine, EngineError } from '../native/engine';
import {
  applyOp,
  buildReference,
  CHILD,
  ChildPlan,
  childEnv,
  expectSame,
  freshDir,
  killLiveChildren,
  Op,
  POOL_MB,
  prepareInput,
  pushPayload,
  removeDir,
  runChild,
} from './crash.lib';

const dirs = new Set<string>();
const engines = new Set<Engine>();
after(async () => {
  await killLiveChildren();
  for (const e of engines) await e.close().catch(() => undefined);
  for (const d of dirs) removeDir(d);
});

function tmp(): string {
  const d = freshDir('pmemps-restart-');
  dirs.add(d);
  return d;
}

function open(dir: string, cacheMb = 1): Engine {
  const e = Engine.open({ dir, poolMb: POOL_MB, cacheMb });
  engines.add(e);
  return e;
}

async function closeEngine(e: Engine): Promise<void> {
  await e.close();
  engines.delete(e);
}

async function ref(ops: Op[], end = ops.length): Promise<Engine> {
  const r = await buildReference(ops, end);
  engines.add(r);
  return r;
}

async function rejects(p: () => Promise<unknown> | unknown, codes: string[], what: string): Promise<void> {
  let err: unknown = null;
  try {
    await p();
  } catch (e) {
    err = e;
  }
  assert.ok(err, `${what}: expected EngineError ${codes.join(' or ')}, but it succeeded`);
  assert.ok(err instanceof EngineError, `${what}: expected an EngineError, got ${(err as Error).name}: ${(err as Error).message}`);
  assert.ok(codes.includes(err.code), `${what}: expected code ${codes.join(' or ')}, got ${err.code}: ${err.message}`);
}

const push = (t: string, n: number, s: number): Op => ({ k: 'push', t, n, s });
const prep = (id: number, s = id * 7919): Op => ({ k: 'prepare', id, s });
const ck = (id: number, s = id * 7919) => ({ id, s });

/** Runs ops in a child on dir and SIGKILLs it right after issuing the last one. */
async function crashChild(dir: string, ops: Op[]): Promise<void> {
  const root = tmp();
  const plan: ChildPlan = {
    dir,
    progress: path.join(root, 'progress.log'),
    poolMb: POOL_MB,
    cacheMb: 1,
    layout: 'inplace',
    ops,
    kill: { op: ops.length - 1, delay: 'sync' },
  };
  fs.writeFileSync(path.join(root, 'plan.json'), JSON.stringify(plan));
  const ex = await runChild([path.join(root, 'plan.json')], childEnv({ force: true }), { timeoutMs: 60_000 });
  assert.equal(ex.signal, 'SIGKILL', `the child should have been killed; exit ${ex.code}, stderr: ${ex.stderr}`);
}

describe('restart', () => {
  it('clean close, then reopen: the latest state (not the last checkpoint), cleanClose true', async () => {
    const dir = tmp();
    const ops: Op[] = [
      { k: 'create', t: 'a8' },
      { k: 'create', t: 'm4' },
      push('a8', 300, 1),
      push('m4', 200, 2),
      prep(1),
      { k: 'commit', id: 1 },
      push('a8', 100, 3),
      push('a8', 500, 4),
      { k: 'lr', t: 'm4', lr: 0.0625 },
      { k: 'create', t: 'f64' },
      push('f64', 400, 5),
      push('m4', 50, 6),
    ];
    const e1 = open(dir);
    assert.equal(e1.openInfo.created, true);
    assert.equal(e1.openInfo.committed, null);
    for (const op of ops) await applyOp(e1, op);
    await closeEngine(e1);
    const r = await ref(ops);

    const e2 = open(dir);
    assert.deepEqual(
      {
        created: e2.openInfo.created,
        cleanClose: e2.openInfo.cleanClose,
        committed: e2.openInfo.committed,
        prepared: e2.openInfo.prepared,
        pushesBlocked: e2.openInfo.pushesBlocked,
      },
      { created: false, cleanClose: true, committed: 1, prepared: null, pushesBlocked: false },
    );
    await expectSame(e2, r, ck(1), 'after a clean close and reopen');
    const more = [push('a8', 2000, 7), push('f64', 700, 8), push('m4', 900, 9)];
    for (const op of more) {
      await applyOp(e2, op);
      await applyOp(r, op, undefined, true);
    }
    await expectSame(e2, r, ck(1), 'after further pushes on the reopened pool (optimizer state)');
    await closeEngine(e2);

    const e3 = open(dir, 2);
    assert.equal(e3.openInfo.cleanClose, true);
    await expectSame(e3, r, ck(1), 'after a second clean close and reopen');
    await closeEngine(e3);
  });

  it('a second process opening a held directory gets LOCKED; the lock dies with its holder', async () => {
    const dir = tmp();
    const c = spawn(process.execPath, [CHILD, '--hold', dir], { env: childEnv({ force: true }), stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<void>((res) => c.on('close', () => res()));
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        c.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('ready')) resolve();
        });
        c.on('close', (code) => reject(new Error(`holder exited ${code} before it was ready: ${stderr}`)));
      });
      assert.throws(
        () => Engine.open({ dir, poolMb: POOL_MB, cacheMb: 1 }),
        (e: unknown) => e instanceof EngineError && e.code === 'LOCKED',
        'opening a directory another process holds must fail with LOCKED',
      );
    } finally {
      c.kill('SIGKILL');
      await exited;
    }
    const e = open(dir);
    assert.equal(e.openInfo.created, false);
    assert.equal(e.openInfo.cleanClose, false, 'the holder was killed, not closed');
    await closeEngine(e);
  });

  it('kill with no committed checkpoint: reopen gives an empty state', async () => {
    const dir = tmp();
    await crashChild(dir, [
      { k: 'create', t: 'a8' },
      { k: 'create', t: 'f64' },
      push('a8', 600, 11),
      push('f64', 600, 12),
      { k: 'lr', t: 'a8', lr: 0.5 },
      push('f64', 300, 13),
      push('a8', 300, 14),
    ]);
    const e = open(dir);
    const i = e.openInfo;
    assert.deepEqual(
      { created: i.created, cleanClose: i.cleanClose, committed: i.committed, prepared: i.prepared, pushesBlocked: i.pushesBlocked },
      { created: false, cleanClose: false, committed: null, prepared: null, pushesBlocked: false },
    );
    assert.deepEqual(e.listTables(), []);
    assert.equal(e.committedCheckpoint(), null);
    // A table created again starts from its initializer: nothing of the lost pushes leaks back.
    const again: Op[] = [
      { k: 'create', t: 'a8' },
      { k: 'create', t: 'f64' },
    ];
    const r = await ref(again);
    for (const op of again) await applyOp(e, op);
    await expectSame(e, r, null, 'tables re-created after a crash with no checkpoint');
    const p = push('a8', 500, 15);
    await applyOp(e, p);
    await applyOp(r, p, undefined, true);
    await expectSame(e, r, null, 'a push on a re-created table');
    await closeEngine(e);
  });

  it('kill: tables created after the last committed checkpoint do not exist', async () => {
    const dir = tmp();
    const ops: Op[] = [
      { k: 'create', t: 's3' },
      push('s3', 400, 21),
      prep(3),
      { k: 'commit', id: 3 },
      { k: 'create', t: 'm4' },
      push('m4', 300, 22),
      { k: 'lr', t: 's3', lr: 0.25 },
      push('s3', 300, 23),
    ];
    await crashChild(dir, ops);
    const e = open(dir);
    assert.equal(e.openInfo.committed, 3);
    const r = await ref(ops, 3);
    await expectSame(e, r, ck(3), 'reopen after a kill');
    await closeEngine(e);
  });

  it('rollback on a running engine returns to the last committed checkpoint', async () => {
    const dir = tmp();
    const e = open(dir);
    const ops: Op[] = [
      { k: 'create', t: 'a8' },
      { k: 'create', t: 's3' },
      push('a8', 500, 31),
      push('s3', 500, 32),
      prep(1),
      { k: 'commit', id: 1 },
      push('a8', 700, 33),
      { k: 'lr', t: 'a8', lr: 0.125 },
      { k: 'create', t: 'm4' },
      push('m4', 300, 34),
      push('s3', 2000, 35),
    ];
    for (const op of ops) await applyOp(e, op);
    await e.rollback();
    const r = await ref(ops, 5); // up to prepare(1)
    await r.commit(1);
    await expectSame(e, r, ck(1), 'after rollback (expected checkpoint 1)');
    const more: Op[] = [push('a8', 900, 36), push('s3', 100, 37)];
    for (const op of more) {
      await applyOp(e, op);
      await applyOp(r, op, undefined, true);
    }
    await expectSame(e, r, ck(1), 'pushes after rollback (optimizer state)');
    await e.rollback();
    await r.rollback();
    await expectSame(e, r, ck(1), 'second rollback to checkpoint 1');
    const next: Op[] = [push('a8', 300, 38), prep(2), { k: 'commit', id: 2 }, push('a8', 300, 39), { k: 'create', t: 'r16' }, push('r16', 300, 40)];
    for (const op of next) {
      await applyOp(e, op);
      await applyOp(r, op, undefined, true);
    }
    await e.rollback();
    await r.rollback();
    await expectSame(e, r, ck(2), 'rollback to checkpoint 2');
    await closeEngine(e);
    const e2 = open(dir);
    assert.equal(e2.openInfo.cleanClose, true);
    await expectSame(e2, r, ck(2), 'reopen after rollback and clean close');
    await closeEngine(e2);
  });

  for (const [resolution, closeFirst] of [
    ['commit', false],
    ['abort', false],
    ['commit', true],
    ['abort', true],
  ] as const) {
    const how = closeFirst ? ' (after a clean close while still unresolved)' : '';
    it(`a prepared checkpoint survives a kill and blocks pushes until ${resolution}${how}`, async () => {
      const dir = tmp();
      const ops: Op[] = [
        { k: 'create', t: 'a8' },
        { k: 'create', t: 'm4' },
        push('a8', 400, 41),
        push('m4', 400, 42),
        prep(1),
        { k: 'commit', id: 1 },
        push('a8', 400, 43),
        { k: 'lr', t: 'm4', lr: 0.03 },
        prep(2), // index 8
        push('a8', 400, 44), // in the prepare/commit window: not part of checkpoint 2
        { k: 'create', t: 's3' },
        push('s3', 100, 45),
      ];
      await crashChild(dir, ops);
      let e = open(dir);
      if (closeFirst) {
        // A clean stop before the checkpoint is resolved must not end the
        // recovery: the next open still reads checkpoint 1 and blocks pushes.
        await closeEngine(e);
        e = open(dir);
      }
      const i = e.openInfo;
      assert.deepEqual(
        { committed: i.committed, prepared: i.prepared, pushesBlocked: i.pushesBlocked, cleanClose: i.cleanClose },
        { committed: 1, prepared: 2, pushesBlocked: true, cleanClose: false },
      );
      const r1 = await ref(ops, 5);
      await expectSame(e, r1, ck(1), 'reopen with checkpoint 2 prepared (expected: checkpoint 1)');
      const p = pushPayload('a8', 10, 46);
      await rejects(() => e.push('a8', p.keys, p.grads), ['FAILED_PRECONDITION'], 'push while checkpoint 2 is prepared after a restart');
      if (resolution === 'commit') {
        await e.prepare(2, prepareInput(2, 2 * 7919)); // a retried prepare: no-op
        await e.commit(2);
        const r2 = await ref(ops, 9);
        await r2.commit(2);
        await expectSame(e, r2, ck(2), 'after commit(2)');
        await e.commit(2); // a retried commit: no-op
        for (const op of [push('a8', 600, 47), push('m4', 600, 48)]) {
          await applyOp(e, op);
          await applyOp(r2, op, undefined, true);
        }
        await expectSame(e, r2, ck(2), 'pushes after commit(2)');
        await closeEngine(e);
        const e2 = open(dir);
        assert.equal(e2.openInfo.committed, 2);
        assert.equal(e2.openInfo.cleanClose, true);
        await expectSame(e2, r2, ck(2), 'reopen after clean close');
        await closeEngine(e2);
      } else {
        await e.abort(2);
        await rejects(() => e.commit(2), ['FAILED_PRECONDITION', 'NOT_FOUND'], 'commit(2) after abort(2)');
        await r1.commit(1);
        await expectSame(e, r1, ck(1), 'after abort(2)');
        for (const op of [push('a8', 600, 47), push('m4', 600, 48), prep(3), { k: 'commit', id: 3 } as Op]) {
          await applyOp(e, op);
          await applyOp(r1, op, undefined, true);
        }
        await expectSame(e, r1, ck(3), 'pushes and checkpoint 3 after abort(2)');
        await closeEngine(e);
      }
    });
  }

  it('a retried prepare or commit of the same id is a no-op', async () => {
    const dir = tmp();
    const e = open(dir);
    const ops: Op[] = [{ k: 'create', t: 'm4' }, push('m4', 500, 51), prep(4), push('m4', 500, 52)];
    for (const op of ops) await applyOp(e, op);
    await e.prepare(4, prepareInput(4, 4 * 7919)); // must not capture the push after the first prepare
    await e.commit(4);
    await e.commit(4);
    assert.equal(e.stats().committed, 4);
    await e.rollback();
    const r = await ref(ops, 3);
    await r.commit(4);
    await expectSame(e, r, ck(4), 'rollback after a retried prepare (checkpoint = state at the first prepare)');
    await closeEngine(e);
  });

  it('checkpoint ids must strictly increase; a lower id is refused', async () => {
    const dir = tmp();
    const e = open(dir);
    await applyOp(e, { k: 'create', t: 'a8' });
    await applyOp(e, push('a8', 100, 61));
    await e.prepare(5, prepareInput(5, 5));
    await e.commit(5);
    await rejects(() => e.prepare(3, prepareInput(3, 3)), ['FAILED_PRECONDITION'], 'prepare(3) after commit(5)');
    await rejects(() => e.prepare(4, prepareInput(4, 4)), ['FAILED_PRECONDITION'], 'prepare(4) after commit(5)');
    await rejects(() => e.commit(4), ['FAILED_PRECONDITION', 'NOT_FOUND'], 'commit(4), never prepared');
    assert.equal(e.stats().committed, 5);
    await e.prepare(9, prepareInput(9, 9));
    await rejects(() => e.prepare(7, prepareInput(7, 7)), ['FAILED_PRECONDITION'], 'prepare(7) while 9 is prepared');
    await e.commit(9);
    assert.equal(e.stats().committed, 9);
    assert.equal(e.committedCheckpoint()?.id, 9);
    await closeEngine(e);
  });

  it('an aborted id never commits, not even after a restart', async () => {
    const dir = tmp();
    const e = open(dir);
    await applyOp(e, { k: 'create', t: 'a8' });
    await applyOp(e, push('a8', 100, 71));
    await e.prepare(1, prepareInput(1, 1));
    await e.abort(1);
    await rejects(() => e.commit(1), ['FAILED_PRECONDITION', 'NOT_FOUND'], 'commit(1) after abort(1)');
    assert.equal(e.stats().committed, null);
    assert.equal(e.committedCheckpoint(), null);
    await e.prepare(2, prepareInput(2, 2));
    await e.commit(2);
    await closeEngine(e);
    const e2 = open(dir);
    await rejects(() => e2.commit(1), ['FAILED_PRECONDITION', 'NOT_FOUND'], 'commit(1) after abort(1) and a restart');
    assert.equal(e2.openInfo.committed, 2);
    assert.equal(e2.committedCheckpoint()?.id, 2);
    await closeEngine(e2);
  });

  it('keeps the coordinator ballot and the shard identity across restarts and crashes', async () => {
    const dir = tmp();
    let e = open(dir);
    assert.deepEqual(e.identity(), { clusterId: null, shardIndex: 0, shardCount: 0, sealed: false });
    const id = { clusterId: '0123456789abcdef0123456789abcdef', shardIndex: 1, shardCount: 3 };
    await rejects(() => e.setIdentity({ ...id, sealed: true }), ['FAILED_PRECONDITION'], 'sealing a pool that holds no identity');
    assert.deepEqual(e.setIdentity(id), { ...id, sealed: false });
    assert.deepEqual(e.setIdentity(id), { ...id, sealed: false }, 'the same identity again is a no-op');
    await rejects(() => e.setIdentity({ ...id, shardIndex: 2 }), ['FAILED_PRECONDITION'], 'another shard index');
    await rejects(() => e.setIdentity({ ...id, shardIndex: 3 }), ['INVALID_ARGUMENT'], 'index past the count');
    assert.equal(e.raiseBallot(5), 5);
    assert.equal(e.raiseBallot(3), 5, 'a lower ballot never lowers the stored one');
    await closeEngine(e);
    e = open(dir);
    assert.deepEqual(e.identity(), { ...id, sealed: false }, 'unsealed across a restart');
    await e.prepare(1, prepareInput(1, 1));
    await e.commit(1);
    assert.deepEqual(e.setIdentity({ ...id, sealed: true }), { ...id, sealed: true });
    assert.deepEqual(e.setIdentity(id), { ...id, sealed: true }, 'a seal is never removed');
    await rejects(() => e.setIdentity({ ...id, clusterId: 'f'.repeat(32), sealed: true }), ['FAILED_PRECONDITION'], 'sealing another identity');
    assert.equal(e.raiseBallot(0), 5);
    assert.equal(e.raiseBallot(9), 9);
    // A rollback to the checkpoint taken before the seal keeps it.
    await e.rollback();
    assert.deepEqual(e.identity(), { ...id, sealed: true });
    await closeEngine(e);
    // A crash keeps them too: they are not part of any checkpoint's rollback.
    await crashChild(dir, [{ k: 'create', t: 'a8' }, push('a8', 10, 1)]);
    e = open(dir);
    assert.equal(e.openInfo.cleanClose, false);
    assert.deepEqual(e.identity(), { ...id, sealed: true });
    assert.equal(e.raiseBallot(0), 9);
    await closeEngine(e);
  });

  // The offline check (server/check.ts, a real process) on the pool itself:
  // it closed the pool cleanly with an empty record, so a server's close
  // record (its exactly-once table, dense tensors) was lost and a retried
  // push applied twice, and a crashed pool was reported clean, skipping the
  // server's restore.
  describe('pmemps-check leaves the pool as it found it', () => {
    const check = (dir: string): { ok: boolean; committed: number | null } => {
      const out = execFileSync(process.execPath, [path.join(__dirname, '..', 'server', 'check.js'), '--pmem', dir], {
        env: childEnv({ force: true }),
        encoding: 'utf8',
      });
      return JSON.parse(out) as { ok: boolean; committed: number | null };
    };
    const ops: Op[] = [{ k: 'create', t: 'a8' }, push('a8', 400, 21), prep(1), { k: 'commit', id: 1 }, push('a8', 300, 22)];

    it('a pool closed cleanly keeps its close record and its rows', async () => {
      const dir = tmp();
      const e = open(dir);
      for (const op of ops) await applyOp(e, op);
      const record = Buffer.from('the server state a close keeps: exactly-once table, dense tensors');
      await e.close(record);
      engines.delete(e);
      const report = check(dir);
      assert.deepEqual({ ok: report.ok, committed: report.committed }, { ok: true, committed: 1 });
      const r = await ref(ops);
      const e2 = open(dir);
      assert.equal(e2.openInfo.cleanClose, true);
      assert.deepEqual(e2.openInfo.closeRecord, record, 'the close record survives the check');
      await expectSame(e2, r, ck(1), 'after the check: the latest state, as closed');
      await closeEngine(e2);
    });

    it('a crashed pool is still crashed after the check', async () => {
      const dir = tmp();
      await crashChild(dir, ops);
      assert.equal(check(dir).ok, true);
      const e = open(dir);
      assert.deepEqual({ cleanClose: e.openInfo.cleanClose, committed: e.openInfo.committed }, { cleanClose: false, committed: 1 });
      await expectSame(e, await ref(ops, 4), ck(1), 'after the check: the last committed checkpoint');
      await closeEngine(e);
    });

    it('refuses a directory with no pool, and creates none', () => {
      const dir = tmp();
      assert.throws(() => execFileSync(process.execPath, [path.join(__dirname, '..', 'server', 'check.js'), '--pmem', dir], { stdio: 'pipe' }), /no pool in/);
      assert.deepEqual(fs.readdirSync(dir), []);
    });

    // Found by a review (2026-12-01): the check upgraded a pool of an older
    // layout version in place, so the build that wrote it refused it after.
    it('refuses a pool of an older layout version and leaves it unchanged', () => {
      const dir = tmp();
      const file = path.join(dir, 'pmemps.pool');
      fs.writeFileSync(file, zlib.gunzipSync(fs.readFileSync(path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'pool-v5.pool.gz'))));
      const before = fs.readFileSync(file);
      assert.throws(
        () =>
          execFileSync(process.execPath, [path.join(__dirname, '..', 'server', 'check.js'), '--pmem', dir], { stdio: 'pipe', env: childEnv({ force: true }) }),
        /layout version 5; this build reads version 7/,
      );
      // (libpmemobj's own open writes its run-time state; pmemps writes nothing.)
      const at = before.indexOf('PMSPEM01'); // the root's magic
      assert.ok(at > 0);
      const root = (b: Buffer): Buffer => b.subarray(at, at + 512);
      assert.ok(root(fs.readFileSync(file)).equals(root(before)), 'the root is unchanged');
    });
  });
});
