// Child of engine.test.ts's "large calls" test (the budget is process-wide):
// with a 16 MiB budget, one pull whose arrays pass it, a push as large
// refused for a NaN, four pushes that each pass the budget sent at once,
// then one pull of every row. Prints the budget's counts and what the calls
// did.
//   node scratch-budget.child.js DIR
import { Engine, asFloats, packKeys, scratchStats } from '../native/engine';

const KEYS = 300_000;
const DIM = 8;
const CALLS = 4;

async function main(): Promise<void> {
  const e = Engine.open({ dir: process.argv[2], poolMb: 512, cacheMb: 16, scratchMb: 16 });
  e.createTable({ name: 't', dim: DIM, optimizer: { type: 'sgd', lr: 1 }, initializer: { type: 'zeros' }, seed: 1 });
  const keys = Array.from({ length: CALLS }, (_, c) => packKeys(Array.from({ length: KEYS }, (_, i) => BigInt(c * KEYS + i))));
  const all = packKeys(Array.from({ length: CALLS * KEYS }, (_, i) => BigInt(i)));
  const opened = scratchStats();
  // 1.2M keys: ~23 MiB of arrays, more than the budget (alone, it runs).
  await e.pull('t', all);
  const afterFirstPull = scratchStats();
  // A push as large as those below, refused: its bytes must come back, its rows unchanged.
  const bad = new Float32Array(KEYS * DIM).fill(-1);
  bad[bad.length - 1] = NaN;
  let refused = '';
  await e.push('t', keys[0], Buffer.from(bad.buffer)).catch((err: { code?: string }) => (refused = String(err.code)));
  const afterRefused = scratchStats();
  // Gradient -(c + 1) for call c: after SGD with lr 1 every row of call c is c + 1.
  const grads = Array.from({ length: CALLS }, (_, c) => Buffer.from(new Float32Array(KEYS * DIM).fill(-(c + 1)).buffer));
  const before = scratchStats();
  await Promise.all(keys.map((k, c) => e.push('t', k, grads[c])));
  const afterPush = scratchStats();
  const rows = asFloats(await e.pull('t', all));
  let wrong = 0;
  for (let i = 0; i < CALLS * KEYS; i++) if (rows[i * DIM] !== Math.floor(i / KEYS) + 1) wrong++;
  const afterPull = scratchStats();
  await e.close();
  process.stdout.write(`@@RESULT ${JSON.stringify({ opened, afterFirstPull, refused, afterRefused, before, afterPush, afterPull, wrong })}\n`);
}

void main();
