// Bad input gets a clear error and changes nothing: buffer shapes, unknown
// tables, conflicting specs, NaN/Inf gradients, a full pool, pools of another
// layout or damaged ones, and a second opener of the same directory.
process.env.PMEM_IS_PMEM_FORCE ??= '1';

import { after, describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Engine, EngineError, packKeys, type TableSpec } from '../native/engine';
import { f32, patchRoots, poolDirs } from './helpers';

const pool = poolDirs(after);

const spec: TableSpec = {
  name: 'emb',
  dim: 4,
  optimizer: { type: 'adagrad', lr: 0.1 },
  initializer: { type: 'constant', value: 0.5 },
  seed: 1,
};

function code(c: string): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof EngineError, `expected an EngineError, got ${String(e)}`);
    assert.equal(e.code, c, e.message);
    assert.ok(e.message.length > 10);
    return true;
  };
}

describe('bad input', () => {
  it('is refused with a clear error and changes nothing', async () => {
    const e = Engine.open({ dir: pool('bad'), poolMb: 32, cacheMb: 4 });
    e.createTable(spec);
    const k = packKeys([1n, 2n]);
    await e.push('emb', k, f32(new Array(8).fill(1)));
    const before = await e.pull('emb', k);

    await assert.rejects(e.pull('emb', Buffer.alloc(7)), code('INVALID_ARGUMENT'));
    await assert.rejects(e.push('emb', Buffer.alloc(12), Buffer.alloc(16)), code('INVALID_ARGUMENT'));
    await assert.rejects(e.push('emb', k, Buffer.alloc(31)), code('INVALID_ARGUMENT'));
    await assert.rejects(e.push('emb', k, f32(new Array(4).fill(1))), /8 expected/);
    await assert.rejects(e.pull('nope', k), code('NOT_FOUND'));
    await assert.rejects(e.push('nope', k, f32(new Array(8).fill(1))), code('NOT_FOUND'));
    const nan = new Array(8).fill(1);
    nan[6] = NaN;
    await assert.rejects(e.push('emb', k, f32(nan)), /NaN.*whole batch/);
    const inf = new Array(8).fill(1);
    inf[0] = -Infinity;
    await assert.rejects(e.push('emb', k, f32(inf)), code('INVALID_ARGUMENT'));
    assert.deepEqual(await e.pull('emb', k), before, 'refused pushes changed nothing');

    assert.throws(() => e.createTable({ ...spec, dim: 5 }), code('ALREADY_EXISTS'));
    assert.throws(() => e.createTable({ ...spec, optimizer: { type: 'adam', lr: 0.1 } }), code('ALREADY_EXISTS'));
    e.createTable(spec); // identical: idempotent
    assert.throws(() => e.createTable({ ...spec, name: 'x', dim: 0 }), code('INVALID_ARGUMENT'));
    assert.throws(() => e.createTable({ ...spec, name: 'x', dim: 4097 }), code('INVALID_ARGUMENT'));
    assert.throws(() => e.createTable({ ...spec, name: 'bad name!' }), code('INVALID_ARGUMENT'));
    assert.throws(() => e.createTable({ ...spec, name: 'x', optimizer: { type: 'sgd', lr: 0 } }), code('INVALID_ARGUMENT'));
    assert.throws(() => e.createTable({ ...spec, name: 'x', optimizer: { type: 'sgd', lr: 0.1, mom: 0.9 } as never }), /no hyperparameter "mom"/);
    assert.throws(() => e.createTable({ ...spec, name: 'x', optimizer: { type: 'lion', lr: 1 } as never }), code('INVALID_ARGUMENT'));
    assert.throws(() => e.createTable({ ...spec, name: 'x', initializer: { type: 'uniform', min: 1, max: 0 } }), code('INVALID_ARGUMENT'));
    assert.throws(() => e.createTable({ ...spec, name: 'big', dim: 4096, optimizer: { type: 'adam', lr: 0.1 } }), /cache budget is too small/);
    await assert.rejects(e.prepare(0), code('INVALID_ARGUMENT'));
    await assert.rejects(e.commit(3), code('FAILED_PRECONDITION'));
    assert.deepEqual(
      e.listTables().map((t) => t.name),
      ['emb'],
    );
    await e.close();
    await assert.rejects(e.pull('emb', k), code('FAILED_PRECONDITION'));
  });

  it('a full pool fails the push that needs space, keeps what is stored, and checkpoints still work', async () => {
    const dir = pool('full');
    const e = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
    e.createTable({ ...spec, dim: 64 });
    let pushed = 0;
    let err: unknown;
    for (let b = 0; b < 1000 && !err; b++) {
      const keys = packKeys(Array.from({ length: 256 }, (_, i) => BigInt(b * 256 + i)));
      try {
        await e.push('emb', keys, f32(new Array(256 * 64).fill(0.01)));
        pushed = (b + 1) * 256;
      } catch (x) {
        err = x;
      }
    }
    assert.ok(err, 'the pool must fill up');
    code('OUT_OF_SPACE')(err);
    assert.match((err as Error).message, /pool is full/);
    assert.ok(pushed > 0);
    // Existing rows still update and checkpoint (eviction and prepare need no new space).
    const old = packKeys(Array.from({ length: pushed }, (_, i) => BigInt(i)));
    await e.push('emb', old, f32(new Array(pushed * 64).fill(0.01)));
    await e.prepare(1);
    await e.commit(1);
    const v = await e.pull('emb', old);
    await e.close();
    const e2 = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
    assert.deepEqual(await e2.pull('emb', old), v);
    await e2.close();
  });

  it('a second opener of the same directory gets a lock error', async () => {
    const dir = pool('lock');
    const e = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
    assert.throws(() => Engine.open({ dir, poolMb: 16, cacheMb: 2 }), code('LOCKED'));
    await e.close();
    const again = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
    await again.close();
  });

  it('a damaged pool or one of another layout is refused at open', async () => {
    const dir = pool('damage');
    const e = Engine.open({ dir, poolMb: 16, cacheMb: 2 });
    e.createTable(spec);
    await e.push('emb', packKeys([1n]), f32([1, 1, 1, 1]));
    await e.prepare(1);
    await e.commit(1);
    await e.close();
    const file = path.join(dir, 'pmemps.pool');
    // Flip a bit in the root's epoch counter.
    patchRoots(file, 16, (old) => Buffer.from([old[0] ^ 0x40]));
    assert.throws(() => Engine.open({ dir, poolMb: 16, cacheMb: 2 }), code('CORRUPT'));
    // A damaged libpmemobj header.
    const fd2 = fs.openSync(file, 'r+');
    fs.writeSync(fd2, Buffer.alloc(64, 0xab), 0, 64, 40);
    fs.closeSync(fd2);
    assert.throws(() => Engine.open({ dir, poolMb: 16, cacheMb: 2 }), code('CORRUPT'));

    // A libpmemobj pool of another layout (made with pmempool from pmdk-tools).
    const other = pool('layout');
    execFileSync('pmempool', ['create', '--layout', 'someone-else', '--size', '16M', 'obj', path.join(other, 'pmemps.pool')]);
    assert.throws(() => Engine.open({ dir: other, poolMb: 16, cacheMb: 2 }), code('INCOMPATIBLE'));
  });
});
