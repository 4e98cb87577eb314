// DropTable in the engine: gone at once, back after a rollback or a crash to
// a point before the drop, freed once a checkpoint after the drop commits.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { Engine, EngineError, packKeys } from '../native/engine';
import type { TableSpec } from '../native/engine';
import { poolDirs } from './helpers';

const dirs = poolDirs(after);
const SPEC: TableSpec = { name: 'd', dim: 4, optimizer: { type: 'sgd', lr: 0.5 }, initializer: { type: 'constant', value: 1 }, seed: 3 };
const KEYS = packKeys([1, 2, 3, 1n << 62n]);
const G = Buffer.from(new Float32Array(16).fill(1).buffer);

function open(dir: string): Engine {
  return Engine.open({ dir, poolMb: 64, cacheMb: 8 });
}

const notFound = (e: unknown): boolean => e instanceof EngineError && e.code === 'NOT_FOUND';

describe('DropTable', () => {
  it('hides the table at once and frees its name; a rollback to a checkpoint before the drop brings it back', async () => {
    const e = open(dirs('drop'));
    try {
      e.createTable(SPEC);
      await e.push('d', KEYS, G);
      await e.prepare(1);
      await e.commit(1);
      const at1 = await e.pull('d', KEYS);
      await e.push('d', KEYS, G);
      await e.dropTable('d');
      await assert.rejects(e.pull('d', KEYS), notFound);
      await assert.rejects(e.push('d', KEYS, G), notFound);
      assert.deepEqual(
        e.listTables().map((t) => t.name),
        [],
      );
      await assert.rejects(e.dropTable('d'), notFound);
      // The name is free: another table of another shape takes it.
      e.createTable({ ...SPEC, dim: 2 });
      assert.equal((await e.pull('d', KEYS)).length, 4 * 2 * 4);
      await e.rollback();
      assert.deepEqual(
        e.listTables().map((t) => [t.name, t.dim]),
        [['d', 4]],
      );
      assert.ok((await e.pull('d', KEYS)).equals(at1), 'back at checkpoint 1');
    } finally {
      await e.close();
    }
  });

  it('is freed when a checkpoint taken after the drop commits; then no rollback brings it back', async () => {
    const e = open(dirs('free'));
    try {
      e.createTable(SPEC);
      await e.push('d', KEYS, G);
      await e.prepare(1);
      await e.commit(1);
      await e.dropTable('d');
      assert.equal(e.fullCheck().tables, 1, 'kept while checkpoint 1 may be restored');
      await e.prepare(2);
      await e.commit(2);
      assert.equal(e.fullCheck().tables, 0, 'freed with the commit of checkpoint 2');
      await e.rollback();
      assert.deepEqual(e.listTables(), []);
    } finally {
      await e.close();
    }
  });

  it('a table that no checkpoint holds is freed at once', async () => {
    const e = open(dirs('now'));
    try {
      await e.prepare(1);
      await e.commit(1);
      e.createTable(SPEC);
      await e.push('d', KEYS, G);
      await e.dropTable('d');
      assert.equal(e.fullCheck().tables, 0);
    } finally {
      await e.close();
    }
  });

  it('survives a clean restart; a crash before the next checkpoint undoes it', async () => {
    const dir = dirs('crash');
    let e = open(dir);
    e.createTable(SPEC);
    await e.push('d', KEYS, G);
    await e.prepare(1);
    await e.commit(1);
    const at1 = await e.pull('d', KEYS);
    await e.dropTable('d');
    await e.close();
    e = open(dir);
    assert.deepEqual(e.listTables(), [], 'a clean stop keeps the drop');
    await e.close();
    // A child drops nothing new but crashes: the pool reopens at checkpoint 1, before the drop.
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `const { Engine } = require(${JSON.stringify(path.join(__dirname, '..', 'native', 'engine.js'))});
         const e = Engine.open({ dir: ${JSON.stringify(dir)}, poolMb: 64, cacheMb: 8 });
         if (e.listTables().length !== 0) process.exit(3);
         process.kill(process.pid, 'SIGKILL');`,
      ],
      { env: process.env },
    );
    assert.equal(r.signal, 'SIGKILL', r.stderr.toString());
    e = open(dir);
    try {
      assert.equal(e.openInfo.cleanClose, false);
      assert.deepEqual(
        e.listTables().map((t) => t.name),
        ['d'],
        'the drop after checkpoint 1 died with the crash',
      );
      assert.ok((await e.pull('d', KEYS)).equals(at1));
    } finally {
      await e.close();
    }
  });

  it('a crash after a checkpoint that followed the drop keeps it dropped; one with the drop prepared resolves both ways', async () => {
    const eng = JSON.stringify(path.join(__dirname, '..', 'native', 'engine.js'));
    const crashAfter = (dir: string, body: string): void => {
      const r = spawnSync(
        process.execPath,
        [
          '-e',
          `(async () => { const { Engine } = require(${eng}); const e = Engine.open({ dir: ${JSON.stringify(dir)}, poolMb: 64, cacheMb: 8 }); ${body}; process.kill(process.pid, 'SIGKILL'); })()`,
        ],
        { env: process.env },
      );
      assert.equal(r.signal, 'SIGKILL', r.stderr.toString());
    };
    const spec = JSON.stringify(SPEC);
    // Killed inside the drop's transaction: libpmemobj rolls it back.
    const d0 = dirs('mid');
    const r0 = spawnSync(
      process.execPath,
      [
        '-e',
        `(async () => { const { Engine } = require(${eng}); const e = Engine.open({ dir: ${JSON.stringify(d0)}, poolMb: 64, cacheMb: 8 }); e.createTable(${spec}); await e.prepare(1); await e.commit(1); await e.dropTable('d'); })()`,
      ],
      { env: { ...process.env, PMEMPS_FAILPOINT: 'drop_table.mid_tx' } },
    );
    assert.equal(r0.signal, 'SIGKILL', r0.stderr.toString());
    const e0 = open(d0);
    assert.deepEqual(
      e0.listTables().map((t) => t.name),
      ['d'],
    );
    assert.equal(e0.fullCheck().problems.length, 0);
    await e0.close();
    // Committed after the drop: stays dropped.
    const d1 = dirs('crash2');
    crashAfter(d1, `e.createTable(${spec}); await e.prepare(1); await e.commit(1); await e.dropTable('d'); await e.prepare(2); await e.commit(2)`);
    let e = open(d1);
    assert.deepEqual(e.listTables(), []);
    assert.equal(e.fullCheck().tables, 0);
    await e.close();
    // Prepared after the drop, unresolved at the crash: visible at checkpoint 1 until resolved.
    for (const resolve of ['commit', 'abort'] as const) {
      const d = dirs('crash3');
      crashAfter(d, `e.createTable(${spec}); await e.prepare(1); await e.commit(1); await e.dropTable('d'); await e.prepare(2)`);
      e = open(d);
      try {
        assert.equal(e.openInfo.prepared, 2);
        assert.deepEqual(
          e.listTables().map((t) => t.name),
          ['d'],
          'reads are at checkpoint 1 meanwhile',
        );
        if (resolve === 'commit') {
          await e.commit(2);
          assert.deepEqual(e.listTables(), []);
          assert.equal(e.fullCheck().tables, 0);
        } else {
          await e.abort(2);
          assert.deepEqual(
            e.listTables().map((t) => t.name),
            ['d'],
            'the drop was only in the aborted checkpoint',
          );
        }
      } finally {
        await e.close();
      }
    }
  });

  it('a table created after the committed checkpoint, held by an aborted one, dropped, then rolled back is simply gone', async () => {
    const e = open(dirs('abortdrop'));
    try {
      await e.prepare(1);
      await e.commit(1);
      e.createTable(SPEC);
      await e.push('d', KEYS, G);
      await e.prepare(2); // holds table d
      await e.dropTable('d'); // marked: checkpoint 2 may still commit
      await e.abort(2);
      await e.rollback(); // back to 1, before the table existed
      assert.deepEqual(e.listTables(), []);
      assert.equal(e.fullCheck().problems.length, 0);
    } finally {
      await e.close();
    }
  });

  it('256 tables at most, counting those dropped since the last checkpoint; its commit frees their slots', async () => {
    const e = Engine.open({ dir: dirs('limit'), poolMb: 512, cacheMb: 1 });
    try {
      for (let i = 0; i < 256; i++) e.createTable({ ...SPEC, name: `t${i}`, dim: 1 });
      assert.throws(() => e.createTable({ ...SPEC, name: 'one-more', dim: 1 }), /at most 256 tables/);
      // A checkpoint holds t0: dropped, its slot stays taken until the next commit.
      await e.prepare(1);
      await e.commit(1);
      await e.dropTable('t0');
      assert.equal(e.listTables().length, 255);
      assert.throws(
        () => e.createTable({ ...SPEC, name: 'late', dim: 1 }),
        (err: unknown) =>
          err instanceof EngineError && err.code === 'OUT_OF_SPACE' && /at most 256 tables, counting those dropped .* commit a checkpoint/.test(err.message),
      );
      await e.prepare(2);
      await e.commit(2);
      e.createTable({ ...SPEC, name: 'late', dim: 1 });
      assert.equal(e.listTables().length, 256);
    } finally {
      await e.close();
    }
  });
});
