// Crash consistency of the engine: a child process runs seeded operations on
// a pool and is SIGKILLed (by the engine at a named failpoint, by itself
// right after issuing its N-th operation, or by the parent after a delay);
// the parent reopens the pool and compares it bit for bit with a memoryOnly
// reference fed the same operations up to the checkpoint the pool reports.
// See test/crash.lib.ts for the machinery and test/crash.soak.ts for the
// long-running variant.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it, test } from 'node:test';
import { Engine, failpoints, type PoolLayout } from '../native/engine';
import {
  applyOp,
  applyPowerCut,
  ChildPlan,
  childEnv,
  expectSame,
  freshDir,
  Op,
  POOL_MB,
  runChild,
  FAILPOINT_NAMES,
  FAILPOINTS,
  FAILPOINTS_ELSEWHERE,
  FAILPOINTS_LOGGED,
  KillSpec,
  killLiveChildren,
  mix,
  removeDir,
  Rng,
  runScenario,
  Scenario,
  ScenarioResult,
} from './crash.lib';

const BASE_SEED = 20261125;
const JOBS = 2;
/** Kills wanted per failpoint name, and the most runs spent trying to reach them. */
const KILLS_PER_FAILPOINT = 2;
const ATTEMPTS_PER_FAILPOINT = 6;
const MIN_TOTAL_KILLS = 50;

const dirs = new Set<string>();
const kills = new Map<string, number>();
let totalKills = 0;
let totalRuns = 0;
const t0 = Date.now();

after(async () => {
  await killLiveChildren();
  for (const d of dirs) removeDir(d);
});

function killKey(k: KillSpec): string {
  return k.mode === 'failpoint' ? k.fp : k.mode === 'timer' && k.fromSpawn ? 'timer-from-spawn' : k.mode;
}

async function run(sc: Scenario): Promise<ScenarioResult> {
  const res = await runScenario(sc, { onDir: (d) => dirs.add(d), timeoutMs: 90_000 });
  for (const g of res.gens) {
    totalRuns++;
    if (g.replayKilled) {
      totalKills++;
      kills.set('replay.mid', (kills.get('replay.mid') ?? 0) + 1);
    }
    if (!g.killed) continue;
    totalKills++;
    kills.set(killKey(g.kill), (kills.get(killKey(g.kill)) ?? 0) + 1);
  }
  return res;
}

/**
 * Runs seeded scenarios that kill at failpoint fp until `wanted` kills
 * happened (at most `attempts` runs, halving the hit count after a run that
 * never reached it); fails when none did.
 */
async function killAt(
  t: { diagnostic(msg: string): void },
  fp: string,
  o: { seeds: number[]; attempts: number; wanted: number; force: boolean; layout: PoolLayout },
): Promise<void> {
  let maxN = FAILPOINTS[fp] ?? FAILPOINTS_LOGGED[fp];
  const tried: string[] = [];
  let got = 0;
  for (let attempt = 0; attempt < o.attempts && got < o.wanted; attempt++) {
    const seed = mix(BASE_SEED, ...o.seeds, attempt);
    const r = new Rng(seed);
    const n = r.int(1, maxN);
    // replay.mid: in the open after a crash right after a checkpoint's publish.
    const replay = fp === 'replay.mid';
    const gens: KillSpec[] = [replay ? { mode: 'failpoint', fp: 'prepare.after_publish', n: 1 } : { mode: 'failpoint', fp, n }];
    const res = await run({ seed, gens, force: o.force, cacheMb: r.chance(0.7) ? 1 : 2, layout: o.layout, ...(replay ? { replayKill: n } : {}) });
    const killed = replay ? res.gens[0].replayKilled : res.gens[0].killed;
    tried.push(`${fp}:${n} (seed ${seed}) ${killed ? 'killed' : 'not reached'}`);
    if (killed) got++;
    else maxN = Math.max(1, Math.floor(n / 2));
  }
  t.diagnostic(tried.join('; '));
  assert.ok(got >= 1, `failpoint ${fp} never killed the child; runs: ${tried.join('; ')}`);
}

const OP_DELAYS = ['sync', 'immediate', 0, 1, 3] as const;

test('every failpoint of the engine is killed at here, or by the test named for it', () => {
  const engine = failpoints();
  const stale = [...Object.keys(FAILPOINTS), ...Object.keys(FAILPOINTS_LOGGED), ...Object.keys(FAILPOINTS_ELSEWHERE)].filter((fp) => !engine.includes(fp));
  assert.deepEqual(stale, [], `listed in crash.lib.ts but not failpoints of the engine: ${stale.join(', ')}`);
  const uncovered = engine.filter((fp) => !(fp in FAILPOINTS) && !(fp in FAILPOINTS_LOGGED) && !(fp in FAILPOINTS_ELSEWHERE));
  assert.deepEqual(uncovered, [], `failpoints of the engine no crash test kills at (add them to FAILPOINTS in crash.lib.ts): ${uncovered.join(', ')}`);
  for (const [fp, file] of Object.entries(FAILPOINTS_ELSEWHERE)) {
    const src = fs.readFileSync(path.join(__dirname, file), 'utf8');
    assert.ok(src.includes(`'${fp}`), `${file} is said to kill at ${fp} but does not name it`);
  }
});

describe('crash consistency', { concurrency: JOBS }, () => {
  FAILPOINT_NAMES.filter((fp) => fp in FAILPOINTS).forEach((fp, fi) => {
    it(`kill at failpoint ${fp}, reopen, compare with the reference`, { timeout: 300_000 }, async (t) => {
      await killAt(t, fp, { seeds: [fi], attempts: ATTEMPTS_PER_FAILPOINT, wanted: KILLS_PER_FAILPOINT, force: true, layout: 'inplace' });
    });
  });

  for (let i = 0; i < 12; i++) {
    const seed = mix(BASE_SEED, 0x0b, i);
    const delay = OP_DELAYS[i % OP_DELAYS.length];
    it(`self-kill right after issuing a seeded op (seed ${seed}, delay ${delay})`, { timeout: 120_000 }, async () => {
      const res = await run({ seed, gens: [{ mode: 'op', pick: new Rng(seed).int(0, 1 << 20), delay }], force: true, cacheMb: 1 });
      assert.ok(res.gens[0].killed, 'the child was not killed');
    });
  }

  for (let i = 0; i < 3; i++) {
    const seed = mix(BASE_SEED, 0x71, i);
    const ms = new Rng(seed).int(5, 150);
    it(`parent SIGKILLs the child ${ms} ms after open (seed ${seed})`, { timeout: 120_000 }, async () => {
      await run({ seed, gens: [{ mode: 'timer', ms }], force: true, cacheMb: 1 });
    });
  }

  const chains: KillSpec[][] = [
    [{ mode: 'failpoint', fp: 'prepare.after_publish', n: 2 }, { mode: 'op', pick: 77, delay: 'sync' }, { mode: 'none' }],
    [
      { mode: 'op', pick: 1234, delay: 1 },
      { mode: 'failpoint', fp: 'commit.after_publish', n: 1 },
      { mode: 'failpoint', fp: 'close.mid_writeback', n: 1 },
    ],
    [{ mode: 'none' }, { mode: 'failpoint', fp: 'rollback.after_publish', n: 1 }, { mode: 'failpoint', fp: 'evict.after_write', n: 7 }],
    [
      { mode: 'failpoint', fp: 'prepare.before_publish', n: 3 },
      { mode: 'failpoint', fp: 'close.before_clean_mark', n: 1 },
      { mode: 'op', pick: 4321, delay: 'immediate' },
    ],
    // Kills that may land before, inside or after open (and its recovery) of an existing pool.
    [
      { mode: 'failpoint', fp: 'commit.before_publish', n: 2 },
      { mode: 'timer', ms: 120, fromSpawn: true },
      { mode: 'timer', ms: 200, fromSpawn: true },
    ],
  ];
  chains.forEach((gens, i) => {
    const seed = mix(BASE_SEED, 0xc4, i);
    it(
      `generations on one pool: ${gens.map((g) => killKey(g) + (g.mode === 'failpoint' ? `:${g.n}` : '')).join(' -> ')} (seed ${seed})`,
      { timeout: 300_000 },
      async () => {
        await run({ seed, gens, force: true, cacheMb: 1 });
      },
    );
  });

  const msync: KillSpec[] = [
    { mode: 'failpoint', fp: 'prepare.mid_flush', n: 2 },
    { mode: 'failpoint', fp: 'evict.after_write', n: 3 },
    { mode: 'failpoint', fp: 'commit.before_publish', n: 2 },
    { mode: 'op', pick: 99, delay: 'sync' },
    { mode: 'op', pick: 555, delay: 1 },
  ];
  msync.forEach((k, i) => {
    const seed = mix(BASE_SEED, 0x35, i);
    it(`msync path (no PMEM_IS_PMEM_FORCE): ${killKey(k)} (seed ${seed})`, { timeout: 300_000 }, async () => {
      await run({ seed, gens: [k], force: false, cacheMb: 2 });
    });
  });
});

// The logged layout (the version log and 56-byte row records), where its
// users run it: the msync path, a pool on an ordinary file. Every failpoint
// once (the log's own among them), seeded op and timer kills, and a chain
// of generations; a few on emulated PMEM, where the log is written with
// non-temporal stores and drained per writer.
describe('crash consistency, logged layout', { concurrency: JOBS }, () => {
  const names = FAILPOINT_NAMES.filter((fp) => fp in FAILPOINTS || fp in FAILPOINTS_LOGGED);
  names.forEach((fp, fi) => {
    const force = fi % 4 === 3;
    it(`logged, ${force ? 'emulated PMEM' : 'msync path'}: kill at failpoint ${fp}, reopen, compare`, { timeout: 300_000 }, async (t) => {
      await killAt(t, fp, { seeds: [0x106, fi], attempts: 4, wanted: 1, force, layout: 'logged' });
    });
  });
  for (let i = 0; i < 6; i++) {
    const seed = mix(BASE_SEED, 0x10b, i);
    const delay = OP_DELAYS[i % OP_DELAYS.length];
    it(`logged, msync path: self-kill right after issuing a seeded op (seed ${seed}, delay ${delay})`, { timeout: 120_000 }, async () => {
      const res = await run({ seed, gens: [{ mode: 'op', pick: new Rng(seed).int(0, 1 << 20), delay }], force: false, cacheMb: 1, layout: 'logged' });
      assert.ok(res.gens[0].killed, 'the child was not killed');
    });
  }
  for (let i = 0; i < 2; i++) {
    const seed = mix(BASE_SEED, 0x171, i);
    const ms = new Rng(seed).int(5, 150);
    it(`logged, msync path: parent SIGKILLs the child ${ms} ms after open (seed ${seed})`, { timeout: 120_000 }, async () => {
      await run({ seed, gens: [{ mode: 'timer', ms }], force: false, cacheMb: 1, layout: 'logged' });
    });
  }
  const gens: KillSpec[] = [
    { mode: 'failpoint', fp: 'writeback.after_append', n: 40 },
    { mode: 'failpoint', fp: 'prepare.after_publish', n: 1 },
    { mode: 'failpoint', fp: 'close.mid_writeback', n: 1 },
    { mode: 'none' },
  ];
  // After a compaction repointed slots at its copies: the next generation
  // appends (over the copies, were the tail not published with them).
  const afterCompaction: KillSpec[] = [{ mode: 'failpoint', fp: 'compact.before_free', n: 1 }, { mode: 'op', pick: 4242, delay: 1 }, { mode: 'none' }];
  [gens, afterCompaction].forEach((g, i) => {
    const seed = mix(BASE_SEED, 0x1c4, i);
    it(`logged, msync path: generations on one pool: ${g.map((k) => killKey(k)).join(' -> ')} (seed ${seed})`, { timeout: 300_000 }, async () => {
      await run({ seed, gens: g, force: false, cacheMb: 1, layout: 'logged' });
    });
  });
});

// Power cuts on the msync path (native/test/powercut_shim.c): a kill -9
// keeps every store in the page cache, so only these show a write the
// engine relied on without an msync. Each generation's pool loses the
// pages no msync covered (each kept with the scenario's probability, as
// the kernel's own write-back may have written it), then is checked as
// after a kill. A missing sync of the version log or of the in-place slots
// fails nearly every one of these scenarios.
describe('crash consistency after a power cut (msync path)', { concurrency: JOBS }, () => {
  const POWER_FAILPOINTS = [
    'prepare.mid_flush',
    'prepare.before_publish',
    'prepare.after_publish',
    'commit.after_publish',
    'close.mid_writeback',
    'close.before_clean_mark',
    'evict.after_write',
  ];
  const LOGGED_ONLY = ['writeback.after_append', 'compact.before_free', 'log.after_grow', 'mark.before_advance'];
  for (const layout of ['inplace', 'logged'] as const) {
    const fps = layout === 'logged' ? [...POWER_FAILPOINTS, ...LOGGED_ONLY] : POWER_FAILPOINTS;
    fps.forEach((fp, i) => {
      const seed = mix(BASE_SEED, 0x9c, layout === 'logged' ? 1 : 0, i);
      const r = new Rng(seed);
      const keep = [0, 0.5][i % 2];
      const n = r.int(1, FAILPOINTS[fp] ?? FAILPOINTS_LOGGED[fp]);
      it(
        `${layout}: kill at ${fp}:${n}, power cut keeping ${keep * 100}% of unsynced pages, then a seeded op kill and a clean stop (seed ${seed})`,
        { timeout: 300_000 },
        async () => {
          const gens: KillSpec[] = [{ mode: 'failpoint', fp, n }, { mode: 'op', pick: r.int(0, 1 << 20), delay: r.pick(OP_DELAYS) }, { mode: 'none' }];
          const res = await run({ seed, gens, force: false, cacheMb: 1, layout, powerCut: keep });
          const cut = res.gens.reduce((a, g) => a + (g.cut?.lost ?? 0), 0);
          assert.ok(cut > 0, 'the power cuts lost no page: the shim did not see the pool');
        },
      );
    });
  }
  // The slots of a logged pool are not synced at a checkpoint. Here no
  // other sync covers them: the second run makes no row (so the checkpoint
  // syncs no index or row page near them), does not compact, and keeps its
  // mark, so after a power cut the committed checkpoint's rows are in the
  // log alone; without the replay they read back as the first checkpoint's.
  it('logged: a checkpoint of rows that exist, cut off from its slot pages by a power cut, is whole after the replay', { timeout: 120_000 }, async () => {
    const root = freshDir();
    dirs.add(root);
    const dir = path.join(root, 'pool');
    fs.mkdirSync(dir);
    const first: Op[] = [
      { k: 'create', t: 'a8' },
      { k: 'push', t: 'a8', n: 16, s: 1, full: true },
      { k: 'prepare', id: 1, s: 11 },
      { k: 'commit', id: 1 },
      { k: 'close' },
    ];
    const second: Op[] = [
      { k: 'push', t: 'a8', n: 16, s: 2, full: true },
      { k: 'prepare', id: 2, s: 12 },
      { k: 'commit', id: 2 },
    ];
    const ref = Engine.open({ memoryOnly: true });
    try {
      for (const op of [...first, ...second].filter((o) => o.k !== 'close')) await applyOp(ref, op, undefined, true);
      for (const [g, ops] of [first, second].entries()) {
        const plan: ChildPlan = { dir, progress: path.join(root, `progress-${g}.log`), poolMb: POOL_MB, cacheMb: 1, layout: 'logged', ops };
        fs.writeFileSync(path.join(root, `plan-${g}.json`), JSON.stringify(plan));
        const env = childEnv({ force: false, powerCutDir: g === 1 ? dir : undefined });
        delete env.PMEMPS_LOG_COMPACT;
        env.PMEMPS_LOG_MARK_MB = '100000';
        const ex = await runChild([path.join(root, `plan-${g}.json`)], env, { timeoutMs: 60_000 });
        assert.equal(ex.code, 0, `run ${g}: ${ex.stderr.slice(-2000)}`);
      }
      // The second run exited without close(): as a crash, then the cut.
      const cut = applyPowerCut(dir, 0, new Rng(7));
      assert.ok(cut.lost > 0, 'the power cut lost no page');
      const e = Engine.open({ dir, poolMb: POOL_MB, cacheMb: 1 });
      try {
        assert.equal(e.openInfo.committed, 2);
        assert.ok(e.openInfo.replayedRecords > 0, `nothing replayed: ${JSON.stringify(e.openInfo)}`);
        // The cut lost slot pages, so some slots did not hold their record.
        assert.ok(e.openInfo.replayWrites > 0, `no slot rewritten: ${JSON.stringify(e.openInfo)}`);
        assert.ok(e.openInfo.replayWrites <= e.openInfo.replayedRecords);
        // The generations wrote the log and the slots as this open does: with pwrite (a power cut drops what no msync covered, either way).
        assert.equal(e.openInfo.logPwrite, true);
        assert.equal(e.openInfo.slotPwrite, true);
        await expectSame(e, ref, { id: 2, s: 12 }, 'after the power cut');
      } finally {
        await e.close();
      }
    } finally {
      await ref.close();
    }
  });

  // The slots of a logged pool are not synced at a checkpoint: what a power
  // cut loses of them, the reopen replays from the log. Killed again in
  // that replay, and cut again: the next reopen replays it whole.
  [1, 5].forEach((m, i) => {
    const seed = mix(BASE_SEED, 0x9d, i);
    const r = new Rng(seed);
    const gens: KillSpec[] = [
      { mode: 'failpoint', fp: 'prepare.after_publish', n: r.int(1, 2) },
      { mode: 'op', pick: r.int(0, 1 << 20), delay: r.pick(OP_DELAYS) },
      { mode: 'none' },
    ];
    it(
      `logged: power cuts keeping no unsynced page, then a kill inside the replay at replay.mid:${m} and a cut again (seed ${seed})`,
      { timeout: 300_000 },
      async () => {
        const res = await run({ seed, gens, force: false, cacheMb: 1, layout: 'logged', powerCut: 0, replayKill: m });
        assert.ok(
          res.gens.some((g) => g.replayKilled),
          'no replay was killed (fewer records after the mark than replay.mid counts)',
        );
      },
    );
  });
});

test(`at least ${MIN_TOTAL_KILLS} actual kill points, every failpoint among them`, (t) => {
  const parts = [...kills.entries()].sort().map(([k, v]) => `${k}=${v}`);
  t.diagnostic(`${totalKills} kills in ${totalRuns} child runs, ${((Date.now() - t0) / 1000).toFixed(1)} s: ${parts.join(' ')}`);
  const missing = FAILPOINT_NAMES.filter((fp) => !kills.get(fp));
  assert.deepEqual(missing, [], `failpoints that never killed a child: ${missing.join(', ')}`);
  assert.ok(totalKills >= MIN_TOTAL_KILLS, `only ${totalKills} kills happened (want >= ${MIN_TOTAL_KILLS}): ${parts.join(' ')}`);
});
