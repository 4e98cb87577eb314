// Child of engine.test.ts's "pull buffers" test (the addon's buffers of
// pulled rows are process-wide, and collecting them needs --expose-gc):
// pulls 16 batches of 1 MiB, lets V8 collect them, pulls 16 more, lets
// those go too, then waits for the kept buffers to be given back. Prints
// the addon's counts at each step.
//   node --expose-gc row-buffers.child.js DIR
import { Engine, packKeys, rowBufferStats } from '../native/engine';

const gc = (globalThis as unknown as { gc: () => void }).gc;
const BATCHES = 16;
const MiB = 1024 * 1024;

async function until(cond: () => boolean, ms: number): Promise<number> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) return -1;
    gc();
    await new Promise((r) => setTimeout(r, 10));
  }
  return Date.now() - t0;
}

async function main(): Promise<void> {
  const e = Engine.open({ dir: process.argv[2], poolMb: 64, cacheMb: 16 });
  e.createTable({ name: 't', dim: 64, optimizer: { type: 'sgd', lr: 0.1 }, initializer: { type: 'zeros' }, seed: 1 });
  const keys = packKeys(Array.from({ length: 4096 }, (_, i) => BigInt(i)));
  // The replies, referenced until dropped: as a server's are until sent.
  const held: Buffer[] = [];
  const pullAll = async (): Promise<void> => {
    for (let i = 0; i < BATCHES; i++) held.push(await e.pull('t', keys));
  };
  const start = rowBufferStats();
  await pullAll();
  const first = rowBufferStats();
  held.length = 0;
  // Every buffer of the first round back (each is 1 MiB and a bit).
  const collectedMs = await until(() => rowBufferStats().keptBytes >= BATCHES * MiB, 5000);
  const kept = rowBufferStats();
  await pullAll();
  const second = rowBufferStats();
  held.length = 0;
  await until(() => rowBufferStats().keptBytes >= BATCHES * MiB, 5000);
  const idleMs = await until(() => rowBufferStats().keptBytes === 0, 10000);
  await e.close();
  process.stdout.write(
    `@@RESULT ${JSON.stringify({
      firstMaps: first.maps - start.maps,
      collectedMs,
      keptBytes: kept.keptBytes,
      secondMaps: second.maps - kept.maps,
      idleMs,
    })}\n`,
  );
}

void main();
