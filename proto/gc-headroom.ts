// Keeps V8's old generation from being collected after every few calls.
//
// Why: every pull reply and push request is a megabyte of ArrayBuffers
// (node's HTTP/2 read buffers, grpc-js's joined message, the rows), and V8
// counts ArrayBuffer bytes allocated since the last full collection against
// the old generation's limit. Young ArrayBuffers are only freed by a
// scavenge, which V8 starts for their sake once they reach 32 MiB; but the
// limit it sets after a full collection of a small heap (12 MiB live, a
// growth factor near 1.2) leaves a few MiB above the new space's size, so
// the external bytes of two or three calls start a full mark-compact: one
// every ~40 ms under load, a third of the pserver's CPU (concurrent
// marking and sweeping on the other core) and 1-1.5 ms per call in a
// worker. BENCHMARKS.md, "V8's old generation and the wire's buffers".
//
// What: after each full collection, V8's heap growth factor is set so that
// the limit sits at least HEADROOM above the live heap — room for the
// young ArrayBuffers to reach their scavenge. The factor falls back to
// V8's own once the live heap is large enough that V8's growth gives that
// room anyway, so a large heap never grows by more than V8 lets it; the
// cost is bounded: at most HEADROOM more JS heap than V8's default.
//
// Invariants:
//  * Installing twice is a no-op (the larger headroom is kept): the pserver
//    and every PsClient of a process share one observer.
//  * A process started with --heap-growing-percent keeps its own setting.
//  * V8 reads the flag when it computes a limit (at the end of a full
//    collection), so a value set between collections takes effect at the
//    next one; node documents changing V8 flags after start as unsupported
//    in general, this one is read on every use (measured, node 20 / V8 11.3).
import { constants, PerformanceObserver } from 'node:perf_hooks';
import * as v8 from 'node:v8';

/** Default room above the live heap, bytes: above the 32 MiB of young ArrayBuffers at which V8 scavenges, with margin. */
export const GC_HEADROOM_BYTES = 64 * 1024 * 1024;
// A 5 MiB live heap with 64 MiB of room is 1,280%; never more.
const MAX_PERCENT = 2000;

let headroom = 0;
let current = -1;
let observer: PerformanceObserver | null = null;

// Only on node's command line: NODE_OPTIONS refuses V8 flags of this kind.
function userOwnsFlag(): boolean {
  return process.execArgv.some((a) => /^--heap[-_]growing[-_]percent\b/.test(a));
}

/** The growth percentage that puts the limit `room` above a live heap of `live` bytes (0: V8's own factor, which gives at least 10%). */
export function growthPercentFor(live: number, room: number): number {
  if (room <= 0 || live * 0.1 >= room) return 0;
  return Math.min(MAX_PERCENT, Math.ceil((100 * room) / Math.max(live, 1)));
}

function apply(): void {
  const pct = growthPercentFor(v8.getHeapStatistics().used_heap_size, headroom);
  if (pct === current) return;
  v8.setFlagsFromString(`--heap-growing-percent=${pct}`);
  current = pct;
}

/**
 * Keeps at least `bytes` of old-generation room above the live JS heap
 * (see the top of this file). Returns false, changing nothing, when the
 * process was started with its own --heap-growing-percent or bytes <= 0.
 */
export function keepGcHeadroom(bytes = GC_HEADROOM_BYTES): boolean {
  if (bytes <= 0 || userOwnsFlag()) return false;
  headroom = Math.max(headroom, bytes);
  apply();
  if (!observer) {
    observer = new PerformanceObserver((list) => {
      if (list.getEntries().some((e) => (e as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR)) apply();
    });
    observer.observe({ entryTypes: ['gc'] });
  }
  return true;
}

/** The percentage now set (-1: never set by this module); for tests and benchmarks. */
export function gcGrowthPercent(): number {
  return current;
}
