// Child of gc-headroom.test.ts (V8 flags are process-wide): a heap of
// ~10 MiB live objects collected once, then 1,000 steps that each allocate
// a 1 MiB Buffer and a few small objects kept alive for four steps, as a
// server or worker does per call. Prints what keepGcHeadroom returned, the
// full collections during the steps, and the growth percentage set.
//   node --expose-gc gc-headroom.child.js on|off
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { gcGrowthPercent, keepGcHeadroom } from '../proto/gc-headroom';

let majors = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) if ((e as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) majors++;
}).observe({ entryTypes: ['gc'] });

const kept = process.argv[2] === 'on' ? keepGcHeadroom() : null;
const live = Array.from({ length: 100_000 }, (_, i) => ({ i, s: `v${i}` }));
(globalThis as unknown as { gc: () => void }).gc();

void (async () => {
  await new Promise((r) => setImmediate(r));
  const before = majors;
  const ring: { b: Buffer; o: { j: number }[] }[] = [];
  for (let i = 0; i < 1000; i++) {
    ring.push({ b: Buffer.allocUnsafe(1 << 20), o: Array.from({ length: 50 }, (_, j) => ({ j })) });
    if (ring.length > 4) ring.shift();
    await new Promise((r) => setImmediate(r));
  }
  process.stdout.write(JSON.stringify({ kept, majors: majors - before, percent: gcGrowthPercent(), live: live.length }) + '\n');
})();
