// Crash tests of the cluster: SIGKILL of a server or of the coordinating
// worker at named points of the two-phase commit and at seeded points of
// training, then restore. After every restore the worker reports a digest of
// every row and dense tensor of the cluster; it must equal the reference at
// the restored checkpoint's step. The run then goes on to the end and must
// equal the reference run without a crash (exact resume).
import { after, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { LocalCluster } from '../examples/local-cluster';
import { PLAN, referenceDigest, runWorker, type Plan, type WorkerEvent, type WorkerRun } from './cluster.lib';
import { poolDirs, prng } from './helpers';

const dirs = poolDirs(after);
const live: LocalCluster[] = [];
after(() => live.forEach((c) => c.killAll()));

const plan: Plan = { ...PLAN }; // 40 steps, persist every 8: checkpoints 1..5 at steps 8..40
const refs = new Map<number, string>();
async function ref(step: number): Promise<string> {
  if (!refs.has(step)) refs.set(step, await referenceDigest(plan, step));
  return refs.get(step)!;
}

async function startCluster(tag: string, shardEnv?: Record<number, Record<string, string>>): Promise<LocalCluster> {
  const c = await LocalCluster.start({ dir: dirs(tag), shards: 3, cacheMb: 8, poolSize: '64M', logLevel: 'warn', shardEnv });
  live.push(c);
  return c;
}

/** Every restore reported must equal the reference at its step; the last worker must finish equal to the full reference. */
async function checkRuns(runs: WorkerRun[]): Promise<{ restores: WorkerEvent[] }> {
  const restores = runs.flatMap((r) => r.events.filter((e) => e.event === 'restored'));
  for (const r of restores) assert.equal(r.digest, await ref(r.step!), `restored at step ${r.step} (checkpoint ${r.id}) equals the reference`);
  const last = runs.at(-1)!;
  assert.equal(last.code, 0, `the last worker finished: ${last.stderr}`);
  const done = last.events.find((e) => e.event === 'done')!;
  assert.equal(done.step, plan.steps);
  assert.equal(done.digest, await ref(plan.steps), 'the resumed run ends bit-identical to the run without a crash');
  return { restores };
}

/** Restarts shard i whenever it dies (a failpoint or a timer kill), until stopped. */
function respawn(c: LocalCluster, i: number, delayMs = 200): { crashes: () => number; stop: () => void } {
  let n = 0;
  let on = true;
  const watch = (): void => {
    void c.exited(i).then(async () => {
      if (!on) return;
      n++;
      await new Promise((r) => setTimeout(r, delayMs));
      if (!on) return;
      await c.startShard(i);
      watch();
    });
  };
  watch();
  return { crashes: () => n, stop: () => (on = false) };
}

describe('a server killed at a named point of the checkpoint protocol', () => {
  const points: [string, number][] = [
    ['prepare.after_boundary:2', 1],
    ['prepare.mid_flush:3', 2],
    ['prepare.before_publish:2', 0],
    ['prepare.after_publish:3', 1],
    ['commit.before_publish:2', 2],
    ['commit.after_publish:3', 0],
    ['push.after_apply:13', 1],
    ['push.after_apply:29', 2],
  ];
  for (const [fp, shard] of points) {
    test(`${fp} on shard ${shard}`, async () => {
      const c = await startCluster('fp', { [shard]: { PMEMPS_FAILPOINT: fp } });
      const rs = respawn(c, shard);
      try {
        const w = runWorker({ endpoints: c.endpoints, plan, worker: 0 });
        const run = await w.done;
        assert.equal(rs.crashes(), 1, `the server reached ${fp} and died`);
        const { restores } = await checkRuns([run]);
        assert.equal(restores.length, 1, 'the worker restored once');
        // The worker was told what happened: a server that crashed (a
        // PREPARE published before the crash was once reported as "prepared
        // here by another coordinator"), or one that was down for a while.
        const err = run.events.find((e) => e.event === 'error');
        assert.ok(
          err && (err.name === 'ServerRestartedError' || (err.name === 'PsError' && /UNAVAILABLE|unavailable|No connection/i.test(err.message ?? ''))),
          `the worker's error: ${err?.name}: ${err?.message}`,
        );
      } finally {
        rs.stop();
        c.killAll();
      }
    });
  }

  test('a second server dies inside the restore (rollback.before_publish), the restore is retried', async () => {
    const c = await startCluster('rb', { 0: { PMEMPS_FAILPOINT: 'push.after_apply:20' }, 2: { PMEMPS_FAILPOINT: 'rollback.before_publish:1' } });
    const r0 = respawn(c, 0);
    const r2 = respawn(c, 2);
    try {
      const run = await runWorker({ endpoints: c.endpoints, plan, worker: 0 }).done;
      assert.equal(r0.crashes(), 1);
      assert.equal(r2.crashes(), 1, 'the rollback failpoint was reached');
      await checkRuns([run]);
    } finally {
      r0.stop();
      r2.stop();
      c.killAll();
    }
  });

  test('rollback.after_publish during the restore', async () => {
    const c = await startCluster('ra', { 1: { PMEMPS_FAILPOINT: 'push.after_apply:25' }, 0: { PMEMPS_FAILPOINT: 'rollback.after_publish:1' } });
    const r0 = respawn(c, 0);
    const r1 = respawn(c, 1);
    try {
      const run = await runWorker({ endpoints: c.endpoints, plan, worker: 0 }).done;
      assert.equal(r1.crashes(), 1);
      assert.equal(r0.crashes(), 1);
      await checkRuns([run]);
    } finally {
      r0.stop();
      r1.stop();
      c.killAll();
    }
  });
});

describe('the coordinating worker killed inside persist() or restore()', () => {
  // Failpoints hit at the second persist (step 16): the restore must come back
  // at checkpoint 1 (step 8) when not every shard prepared checkpoint 2, and
  // at checkpoint 2 (step 16) once every shard prepared it.
  // after_first_prepare: the other PREPAREs were sent in parallel and may
  // have landed before the kill, so either outcome is right; the digest
  // check decides whether the cut is consistent.
  const points: [string, number | number[]][] = [
    ['persist.before_prepare:2', 8],
    ['persist.after_first_prepare:2', [8, 16]],
    ['persist.after_prepare:2', 16],
    ['persist.after_first_commit:2', 16],
    ['persist.after_commit:2', 16],
  ];
  for (const [fp, step] of points) {
    test(`${fp}: restore comes back at step ${step}`, async () => {
      const c = await startCluster('co');
      try {
        const first = await runWorker({ endpoints: c.endpoints, plan, worker: 0 }, { PMEMPS_SDK_FAILPOINT: fp }).done;
        assert.equal(first.signal, 'SIGKILL', `the coordinator died at ${fp}: ${first.stderr}`);
        const second = await runWorker({ endpoints: c.endpoints, plan, worker: 0, restoreFirst: true }).done;
        const { restores } = await checkRuns([first, second]);
        if (Array.isArray(step)) assert.ok(step.includes(restores[0].step!), `restored at ${restores[0].step}`);
        else assert.equal(restores[0].step, step);
      } finally {
        c.killAll();
      }
    });
  }

  for (const fp of ['restore.after_ballot:1', 'restore.after_resolve:1']) {
    test(`a replacement coordinator dies at ${fp}; a third one restores`, async () => {
      const c = await startCluster('co2');
      try {
        const first = await runWorker({ endpoints: c.endpoints, plan, worker: 0 }, { PMEMPS_SDK_FAILPOINT: 'persist.after_prepare:3' }).done;
        assert.equal(first.signal, 'SIGKILL');
        const second = await runWorker({ endpoints: c.endpoints, plan, worker: 0, restoreFirst: true }, { PMEMPS_SDK_FAILPOINT: fp }).done;
        assert.equal(second.signal, 'SIGKILL', `died at ${fp}: ${second.stderr}`);
        const third = await runWorker({ endpoints: c.endpoints, plan, worker: 0, restoreFirst: true }).done;
        const { restores } = await checkRuns([first, second, third]);
        assert.equal(restores.at(-1)!.step, 24, 'checkpoint 3 was prepared on every shard: the restore commits it');
      } finally {
        c.killAll();
      }
    });
  }
});

describe('kills at seeded moments of training', () => {
  for (const seed of [1, 2, 3]) {
    test(`a server, seed ${seed}`, async () => {
      const r = prng(seed * 7919);
      const shard = Math.floor(r() * 3);
      const delay = 40 + Math.floor(r() * 360);
      const c = await startCluster('ts');
      const rs = respawn(c, shard, 150);
      try {
        const w = runWorker({ endpoints: c.endpoints, plan, worker: 0, stepDelayMs: 15 }, {}, (e) => {
          if (e.event === 'started') setTimeout(() => void c.kill(shard, 'SIGKILL'), delay);
        });
        const run = await w.done;
        assert.equal(rs.crashes(), 1, 'the server was killed mid-run');
        const { restores } = await checkRuns([run]);
        assert.equal(restores.length, 1);
      } finally {
        rs.stop();
        c.killAll();
      }
    });
  }

  for (const seed of [4, 5, 6]) {
    test(`the coordinating worker, seed ${seed}`, async () => {
      const delay = 40 + Math.floor(prng(seed * 104729)() * 400);
      const c = await startCluster('tw');
      try {
        const w = runWorker({ endpoints: c.endpoints, plan, worker: 0, stepDelayMs: 15 }, {}, (e) => {
          if (e.event === 'started') setTimeout(() => w.kill(), delay);
        });
        const first = await w.done;
        assert.equal(first.signal, 'SIGKILL', 'killed before it finished');
        const second = await runWorker({ endpoints: c.endpoints, plan, worker: 0, restoreFirst: true }).done;
        await checkRuns([first, second]);
      } finally {
        c.killAll();
      }
    });
  }
});

describe('exact resume', () => {
  test('a run restored at checkpoint 3 without a crash ends bit-identical to one that crashed after it', async () => {
    const c1 = await startCluster('er1', { 1: { PMEMPS_FAILPOINT: 'push.after_apply:28' } });
    const rs = respawn(c1, 1);
    const c2 = await startCluster('er2');
    try {
      const crashed = await runWorker({ endpoints: c1.endpoints, plan, worker: 0 }).done;
      assert.equal(rs.crashes(), 1);
      const voluntary = await runWorker({ endpoints: c2.endpoints, plan, worker: 0, restoreAtStep: 27 }).done;
      const rc = crashed.events.find((e) => e.event === 'restored')!;
      const rv = voluntary.events.find((e) => e.event === 'restored')!;
      assert.equal(rc.step, 24);
      assert.equal(rv.step, 24);
      assert.equal(rc.digest, rv.digest, 'same state at the restored checkpoint');
      assert.equal(crashed.events.at(-1)!.digest, voluntary.events.at(-1)!.digest, 'same tables at the end');
      await checkRuns([crashed]);
      await checkRuns([voluntary]);
    } finally {
      rs.stop();
      c1.killAll();
      c2.killAll();
    }
  });
});
