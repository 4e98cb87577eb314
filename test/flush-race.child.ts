// A child of flush-race.test.ts (PMEMPS_TEST_PAUSE is read once per
// process): a prepare whose flush starts late, so that a push copies rows
// still pending aside (shadows), and whose first shadow write-back is held
// with its slot chosen while pushes of other keys evict the whole cache
// around it. Prints @@RESULT with the rows that differ from a DRAM-only
// reference, live and at the checkpoint.
process.env.PMEM_IS_PMEM_FORCE ??= '1';

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Engine, packKeys, type TableSpec } from '../native/engine';
import { prng, randomGrads } from './helpers';

async function main(): Promise<void> {
  const layout = process.argv[2] as 'inplace' | 'logged';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-flush-race-'));
  try {
    const e = Engine.open({ dir, poolMb: 64, cacheMb: 1, layout });
    const ref = Engine.open({ memoryOnly: true });
    const spec: TableSpec = {
      name: 'emb',
      dim: 8,
      optimizer: { type: 'adagrad', lr: 0.1, initialAccumulator: 0.1 },
      initializer: { type: 'uniform', min: -0.5, max: 0.5 },
      seed: 5,
    };
    e.createTable(spec);
    ref.createTable(spec);
    const rand = prng(3);
    const A = 1000;
    const hot = packKeys(Array.from({ length: A }, (_, i) => BigInt(i)));
    const both = async (k: Buffer, g: Buffer): Promise<void> => {
      await e.push('emb', k, g);
      await ref.push('emb', k, g);
    };
    for (let i = 0; i < 2; i++) await both(hot, randomGrads(rand, A * 8));
    const atPrepare = await ref.pull('emb', hot);
    // The flush starts 300 ms late (flush.start): this push finds every hot
    // row pending and, with room in the cache, copies each aside.
    const prep = e.prepare(1);
    await both(hot, randomGrads(rand, A * 8));
    // Meanwhile the flusher reaches the first shadow and is held 1.5 s with
    // its slot chosen (writeback.shadow_slot_chosen); these pushes of 40k
    // other keys cycle a 1 MiB cache (~7k rows) several times over.
    await new Promise((r) => setTimeout(r, 500));
    for (let b = 0; b < 20; b++) {
      const k = packKeys(Array.from({ length: 2048 }, (_, i) => BigInt(A + b * 2048 + i)));
      await both(k, randomGrads(rand, 2048 * 8));
    }
    const evictions = e.stats().evictions;
    await prep;
    await e.commit(1);
    const differing = (a: Buffer, b: Buffer): number => {
      let n = 0;
      for (let r = 0; r < A; r++) n += a.compare(b, r * 32, (r + 1) * 32, r * 32, (r + 1) * 32) === 0 ? 0 : 1;
      return n;
    };
    // Every row through the pool: a cache of 1 MiB cannot hold them all.
    const live = differing(await e.pull('emb', hot), await ref.pull('emb', hot));
    await e.close();
    const again = Engine.open({ dir, poolMb: 64, cacheMb: 1 });
    const liveAfterReopen = differing(await again.pull('emb', hot), await ref.pull('emb', hot));
    await again.rollback();
    const atCheckpoint = differing(await again.pull('emb', hot), atPrepare);
    await again.close();
    await ref.close();
    process.stdout.write(`@@RESULT ${JSON.stringify({ live, liveAfterReopen, atCheckpoint, evictions })}\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
