// proto/gc-headroom.ts: after a full collection the old generation's limit
// sits the headroom above the live heap, so the megabyte of buffers of each
// call no longer starts the next full collection. The test checks the limit
// V8 sets, which is deterministic; how many full collections that saves
// depends on the concurrent collector's timing and is measured in
// BENCHMARKS.md. Shown in child processes (V8 flags are process-wide) with
// --trace-gc-verbose, which prints the limit V8 sets after each collection.
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { GC_HEADROOM_BYTES, growthPercentFor } from '../proto/gc-headroom';
import { PsClient, PsError } from '../worker';

const CHILD = path.join(__dirname, 'gc-headroom.child.js');
const KiB = 1024;
const MiB = 1024 * KiB;
interface ChildResult {
  kept: boolean | null;
  percent: number;
  /** The old generation after the last collection and the limit V8 set then, bytes. */
  size: number;
  limit: number;
}
function run(nodeArgs: string[], mode: 'on' | 'off'): ChildResult {
  const out = execFileSync(process.execPath, ['--expose-gc', '--trace-gc-verbose', ...nodeArgs, CHILD, mode], { encoding: 'utf8', maxBuffer: 64 * MiB });
  const limits = [...out.matchAll(/\[HeapController\] Limit: old size: (\d+) KB, new limit: (\d+) KB/g)];
  assert.ok(limits.length >= 2, `two collections traced:\n${out.slice(-2000)}`);
  const last = limits[limits.length - 1];
  const result = /^@@RESULT (.*)$/m.exec(out);
  assert.ok(result, out.slice(-2000));
  return { ...(JSON.parse(result[1]) as { kept: boolean | null; percent: number }), size: Number(last[1]) * KiB, limit: Number(last[2]) * KiB };
}

describe('GC headroom (proto/gc-headroom.ts)', () => {
  test('the growth percentage puts the limit the headroom above the live heap, and leaves large heaps to V8', () => {
    assert.equal(growthPercentFor(16 * MiB, 64 * MiB), 400);
    assert.equal(growthPercentFor(10 * MiB, 64 * MiB), 640);
    assert.equal(growthPercentFor(1 * MiB, 64 * MiB), 2000, 'capped');
    assert.equal(growthPercentFor(0, 64 * MiB), 2000, 'an empty heap is not a division by zero');
    assert.equal(growthPercentFor(640 * MiB, 64 * MiB), 0, "V8's own 10% already gives the room");
    assert.equal(growthPercentFor(100 * MiB, 0), 0, 'no headroom asked: V8 decides');
  });

  test('after a full collection the limit sits the headroom above the live heap', () => {
    const on = run([], 'on');
    assert.equal(on.kept, true);
    assert.ok(on.percent > 0, `growth percent set: ${on.percent}`);
    assert.ok(on.limit - on.size >= GC_HEADROOM_BYTES, `with the headroom: limit ${on.limit} for ${on.size} live`);
  });

  test('a process started with its own --heap-growing-percent keeps it', () => {
    const own = run(['--heap-growing-percent=50'], 'on');
    assert.equal(own.kept, false);
    assert.equal(own.percent, -1, 'never set');
    // The flag is what sets the room (so the test above is not V8's own
    // choice): 50% of a 10 MiB heap leaves less than the 32 MiB of young
    // ArrayBuffers at which V8 scavenges, the case that collected the
    // pserver's old generation every few calls.
    assert.ok(own.limit - own.size < 32 * MiB, `its own 50%: limit ${own.limit} for ${own.size} live`);
  });

  test('the SDK refuses a gcHeadroomMb that is not 0 to 4096 MiB before connecting', async () => {
    for (const bad of [-1, 4097, Number.NaN, Infinity, '64' as unknown as number])
      await assert.rejects(PsClient.connect({ endpoints: ['127.0.0.1:1'], gcHeadroomMb: bad }), (e: unknown) => {
        assert.ok(e instanceof PsError && /gcHeadroomMb must be a number of MiB from 0 to 4096/.test(e.message), String(e));
        return true;
      });
  });
});
