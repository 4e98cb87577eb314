// proto/gc-headroom.ts: the old generation keeps room for a call's
// megabyte of buffers, so they no longer start a full collection every few
// calls. The effect is shown in child processes (V8 flags are process-wide)
// running the same allocation pattern with and without it.
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { GC_HEADROOM_BYTES, growthPercentFor } from '../proto/gc-headroom';
import { PsClient, PsError } from '../worker';

const CHILD = path.join(__dirname, 'gc-headroom.child.js');
interface ChildResult {
  kept: boolean | null;
  majors: number;
  percent: number;
}
const run = (nodeArgs: string[], mode: 'on' | 'off'): ChildResult =>
  JSON.parse(execFileSync(process.execPath, ['--expose-gc', ...nodeArgs, CHILD, mode], { encoding: 'utf8' })) as ChildResult;

describe('GC headroom (proto/gc-headroom.ts)', () => {
  test('the growth percentage puts the limit the headroom above the live heap, and leaves large heaps to V8', () => {
    const MiB = 2 ** 20;
    assert.equal(growthPercentFor(16 * MiB, 64 * MiB), 400);
    assert.equal(growthPercentFor(10 * MiB, 64 * MiB), 640);
    assert.equal(growthPercentFor(1 * MiB, 64 * MiB), 2000, 'capped');
    assert.equal(growthPercentFor(0, 64 * MiB), 2000, 'an empty heap is not a division by zero');
    assert.equal(growthPercentFor(640 * MiB, 64 * MiB), 0, "V8's own 10% already gives the room");
    assert.equal(growthPercentFor(100 * MiB, 0), 0, 'no headroom asked: V8 decides');
  });

  test("a megabyte of buffers per step: an order of magnitude fewer full collections than V8's own policy", () => {
    const off = run([], 'off');
    const on = run([], 'on');
    assert.equal(on.kept, true);
    assert.ok(on.percent > 0, `growth percent set: ${on.percent}`);
    assert.ok(off.majors >= 8 && on.majors * 4 <= off.majors, `full collections over 1,000 steps: ${on.majors} with the headroom, ${off.majors} without`);
  });

  test('a process started with its own --heap-growing-percent keeps it', () => {
    const own = run(['--heap-growing-percent=50'], 'on');
    assert.equal(own.kept, false);
    assert.equal(own.percent, -1, 'never set');
  });

  test('the SDK refuses a gcHeadroomMb that is not 0 to 4096 MiB before connecting', async () => {
    for (const bad of [-1, 4097, Number.NaN, Infinity, '64' as unknown as number])
      await assert.rejects(PsClient.connect({ endpoints: ['127.0.0.1:1'], gcHeadroomMb: bad }), (e: unknown) => {
        assert.ok(e instanceof PsError && /gcHeadroomMb must be a number of MiB from 0 to 4096/.test(e.message), String(e));
        return true;
      });
    assert.equal(GC_HEADROOM_BYTES, 64 * 2 ** 20);
  });
});
