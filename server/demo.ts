// The engine demo (`./run.sh demo`): opens a pool in an embedded data
// directory, trains a toy embedding table for a few steps with checkpoints,
// shows a rollback and a clean reopen, and prints what the engine reports.
// The service issue turns this into a cluster plus a training run.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Engine, packKeys, asFloats } from '../native/engine';
import { log } from './log';

function parseArgs(argv: string[]): { dir: string; steps: number; cacheMb: number; poolMb: number } {
  const out = { dir: path.resolve('data', 'demo'), steps: 40, cacheMb: 16, poolMb: 256 };
  // Every option takes a value.
  for (let i = 0; i < argv.length; i += 2) {
    const [k, v] = [argv[i], argv[i + 1]];
    if (k === '--pmem') out.dir = path.resolve(v);
    else if (k === '--steps') out.steps = Number(v);
    else if (k === '--cache-mb') out.cacheMb = Number(v);
    else if (k === '--pool-mb') out.poolMb = Number(v);
    else throw new Error(`unknown option ${k}; use --pmem DIR --steps N --cache-mb N --pool-mb N`);
  }
  return out;
}

// xorshift64*: deterministic demo data.
function rng(seed: bigint): () => bigint {
  let s = seed;
  return () => {
    s ^= s >> 12n;
    s ^= (s << 25n) & 0xffffffffffffffffn;
    s ^= s >> 27n;
    return (s * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
  };
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  fs.mkdirSync(opts.dir, { recursive: true });
  let engine = Engine.open({ dir: opts.dir, cacheMb: opts.cacheMb, poolMb: opts.poolMb });
  const oi = engine.openInfo;
  log.info(
    { dir: opts.dir, ...oi, closeRecord: undefined },
    oi.isPmem ? 'pool is on persistent memory (or PMEM_IS_PMEM_FORCE)' : 'pool is NOT on persistent memory: flushes use msync, batched',
  );
  if (oi.pushesBlocked && oi.prepared) {
    log.warn({ prepared: oi.prepared }, 'a checkpoint prepared before the last crash is unresolved; aborting it');
    await engine.abort(oi.prepared);
  }
  const dim = 16;
  engine.createTable({
    name: 'demo',
    dim,
    optimizer: { type: 'adagrad', lr: 0.05, initialAccumulator: 0.1 },
    initializer: { type: 'normal', mean: 0, std: 0.01 },
    seed: 42,
  });
  const next = rng(7n);
  const batch = 4096;
  const universe = 200_000n;
  let ckpt = (oi.committed ?? 0) + 1;
  const t0 = Date.now();
  for (let step = 1; step <= opts.steps; step++) {
    const keys: bigint[] = [];
    for (let i = 0; i < batch; i++) keys.push(next() % universe);
    const kb = packKeys(keys);
    const rows = asFloats(await engine.pull('demo', kb));
    // A toy objective: pull every row towards 1.0 (gradient = w - 1).
    const grads = new Float32Array(rows.length);
    let loss = 0;
    for (let i = 0; i < rows.length; i++) {
      grads[i] = rows[i] - 1;
      loss += 0.5 * grads[i] * grads[i];
    }
    await engine.push('demo', kb, Buffer.from(grads.buffer));
    if (step % 10 === 0) {
      await engine.prepare(ckpt, { meta: Buffer.from(JSON.stringify({ step })), dense: { bias: new Float32Array([step]) } });
      await engine.commit(ckpt);
      const s = engine.stats();
      log.info(
        {
          step,
          loss: +(loss / rows.length).toFixed(5),
          checkpoint: ckpt,
          cacheMiB: +(s.cacheBytes / 2 ** 20).toFixed(1),
          hitRatio: +(s.hits / Math.max(1, s.hits + s.misses)).toFixed(3),
          evictions: s.evictions,
        },
        'step',
      );
      ckpt++;
    }
  }
  log.info({ steps: opts.steps, seconds: (Date.now() - t0) / 1000 }, 'training done');
  const probe = packKeys([1n, 2n, 3n]);
  const before = asFloats(await engine.pull('demo', probe)).slice(0, 3);
  await engine.push('demo', probe, Buffer.from(new Float32Array(3 * dim).fill(100).buffer));
  await engine.rollback();
  const after = asFloats(await engine.pull('demo', probe)).slice(0, 3);
  log.info(
    { before: Array.from(before), after: Array.from(after), same: before.every((v, i) => v === after[i]) },
    'a bad push rolled back to the last checkpoint',
  );
  await engine.close();
  engine = Engine.open({ dir: opts.dir, cacheMb: opts.cacheMb, poolMb: opts.poolMb });
  const cc = engine.committedCheckpoint();
  log.info(
    { ...engine.openInfo, closeRecord: undefined, tables: engine.listTables().map((t) => ({ name: t.name, rows: t.rows })), meta: cc?.meta.toString() },
    'reopened after a clean close',
  );
  await engine.close();
}

main().catch((err) => {
  log.error({ err }, 'demo failed');
  process.exit(1);
});
