// Child of gc-headroom.test.ts (V8 flags are process-wide): a heap of
// ~10 MiB of live objects, collected twice (the headroom is applied after a
// full collection, so the second one sets its limit); run with
// --expose-gc --trace-gc-verbose, whose "[HeapController] Limit" lines give
// the old generation's limit after each. Prints what keepGcHeadroom
// returned and the growth percentage set.
//   node --expose-gc --trace-gc-verbose gc-headroom.child.js on|off
import { gcGrowthPercent, keepGcHeadroom } from '../proto/gc-headroom';

const gc = (globalThis as unknown as { gc: () => void }).gc;
const kept = process.argv[2] === 'on' ? keepGcHeadroom() : null;
const live = Array.from({ length: 100_000 }, (_, i) => ({ i, s: `v${i}` }));
gc();
// The observer hears of the collection asynchronously.
setTimeout(() => {
  gc();
  process.stdout.write(`@@RESULT ${JSON.stringify({ kept, percent: gcGrowthPercent(), live: live.length })}\n`);
}, 20);
