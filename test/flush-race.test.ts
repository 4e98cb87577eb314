// A row's checkpoint copy (shadow) is written outside its stripe's lock
// while the row's entry holds a newer version: were that entry evicted
// meanwhile, the two write-backs of one row would choose a slot at once and
// could choose the same one, losing the newer version or the checkpoint's
// (docs/design.md, "Prepare without stopping pushes"). The flusher marks
// the entry `flushing`, so eviction passes over it. Shown deterministically
// in a child: the flusher is held with its slot chosen (PMEMPS_TEST_PAUSE)
// while pushes evict the whole cache around it, on both row layouts.
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, it } from 'node:test';

const CHILD = path.join(__dirname, 'flush-race.child.js');

describe('a checkpoint copy written while its row is evicted', () => {
  for (const layout of ['inplace', 'logged'])
    it(`keeps both versions (${layout} pool)`, { timeout: 60_000 }, () => {
      const out = execFileSync(process.execPath, [CHILD, layout], {
        encoding: 'utf8',
        env: { ...process.env, PMEM_IS_PMEM_FORCE: '1', PMEMPS_TEST_PAUSE: 'flush.start:300,writeback.shadow_slot_chosen:1500' },
      });
      const m = /^@@RESULT (.*)$/m.exec(out);
      assert.ok(m, out);
      const r = JSON.parse(m[1]) as { live: number; liveAfterReopen: number; atCheckpoint: number; evictions: number };
      assert.ok(r.evictions > 20000, `the pushes cycled the cache (${r.evictions} evictions)`);
      assert.equal(r.live, 0, 'rows whose newest version was lost');
      assert.equal(r.liveAfterReopen, 0, 'rows whose newest version was lost (after a clean close)');
      assert.equal(r.atCheckpoint, 0, 'rows whose checkpoint version was lost');
    });
});
