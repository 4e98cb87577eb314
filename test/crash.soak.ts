// Crash soak: thousands of kill points. Not a test file: run it as
//
//   node dist/test/crash.soak.js --runs 2000 --seed 1 [--jobs 2] [--verbose]
//   node dist/test/crash.soak.js --scenario '<json printed by a failure>'
//
// Each run is a random scenario (test/crash.lib.ts randomScenario): 1-3
// generations on one pool, each killed at a named failpoint, right after a
// seeded op, by a parent timer, or not at all; ~10% of runs take the msync
// path (no PMEM_IS_PMEM_FORCE). Prints a summary; exits 1 on any mismatch.
// The verification runs in this process: if it crashes, rerun with
// --jobs 1 --verbose to see which scenario was running.

import * as os from 'node:os';
import {
  CrashMismatch,
  describeKill,
  FAILPOINT_NAMES,
  killLiveChildren,
  mix,
  pool,
  randomScenario,
  removeDir,
  reproHint,
  runScenario,
  Scenario,
} from './crash.lib';

function parseArgs(argv: string[]): { runs: number; seed: number; jobs: number; verbose: boolean; scenario?: Scenario } {
  const o = { runs: 200, seed: 1, jobs: Math.max(1, Math.min(2, os.cpus().length)), verbose: false, scenario: undefined as Scenario | undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--runs') o.runs = Number(v());
    else if (a === '--seed') o.seed = Number(v());
    else if (a === '--jobs') o.jobs = Number(v());
    else if (a === '--verbose') o.verbose = true;
    else if (a === '--scenario') o.scenario = JSON.parse(v()) as Scenario;
    else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: node dist/test/crash.soak.js [--runs N] [--seed S] [--jobs J] [--verbose] [--scenario JSON]\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (!(Number.isInteger(o.runs) && o.runs > 0)) throw new Error('--runs must be a positive integer');
  if (!(Number.isInteger(o.jobs) && o.jobs > 0)) throw new Error('--jobs must be a positive integer');
  if (!Number.isFinite(o.seed)) throw new Error('--seed must be a number');
  return o;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const scenarios = args.scenario ? [args.scenario] : Array.from({ length: args.runs }, (_, i) => randomScenario(mix(args.seed, i)));
  const dirs = new Set<string>();
  const cleanup = async () => {
    await killLiveChildren();
    for (const d of dirs) removeDir(d);
  };
  for (const [sig, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    process.on(sig, () => {
      void cleanup().finally(() => process.exit(code));
    });
  }

  const t0 = Date.now();
  const byPoint = new Map<string, { kills: number; reached: number; runs: number }>();
  const count = (key: string, killed: boolean) => {
    const c = byPoint.get(key) ?? { kills: 0, reached: 0, runs: 0 };
    c.runs++;
    if (killed) c.kills++;
    byPoint.set(key, c);
  };
  let kills = 0;
  let childRuns = 0;
  let msyncKills = 0;
  let pendingResolved = 0;
  let cleanCloses = 0;
  let done = 0;
  const failures: string[] = [];

  await pool(scenarios, args.jobs, async (sc, i) => {
    if (args.verbose) process.stderr.write(`[run ${i}] start ${JSON.stringify(sc)}\n`);
    try {
      const res = await runScenario(sc, { onDir: (d) => dirs.add(d), timeoutMs: 120_000 });
      for (const g of res.gens) {
        childRuns++;
        const key = g.kill.mode === 'failpoint' ? g.kill.fp : g.kill.mode;
        count(key, g.killed);
        if (g.killed) {
          kills++;
          if (!sc.force) msyncKills++;
        }
        if (g.resolution) pendingResolved++;
        if (g.cleanClose) cleanCloses++;
      }
      if (args.verbose)
        process.stderr.write(
          `[run ${i}] ok ${res.gens.map((g) => `${describeKill(g.kill)}:${g.killed ? 'killed' : 'completed'}->${g.restoredTo}`).join(' ')}\n`,
        );
    } catch (e) {
      const msg = e instanceof CrashMismatch ? e.message : `run ${i} failed: ${(e as Error).stack}\n  ${reproHint(sc)}`;
      failures.push(msg);
      process.stderr.write(`\nFAIL [run ${i}]\n${msg}\n`);
    }
    done++;
    if (!args.verbose && done % 50 === 0) {
      process.stderr.write(`${done}/${scenarios.length} runs, ${kills} kills, ${failures.length} failures, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    }
  });
  await cleanup();

  const secs = (Date.now() - t0) / 1000;
  const lines = [
    `crash soak: seed ${args.seed}, ${scenarios.length} runs (${childRuns} child runs) in ${secs.toFixed(1)} s`,
    `kill points reached: ${kills} (${msyncKills} on the msync path); clean completions: ${childRuns - kills}; prepared checkpoints resolved after a crash: ${pendingResolved}; reopened after clean close: ${cleanCloses}`,
    'per kill point (kills/runs):',
  ];
  for (const k of [...FAILPOINT_NAMES, 'op', 'timer', 'none']) {
    const c = byPoint.get(k);
    lines.push(`  ${k.padEnd(26)} ${c ? `${c.kills}/${c.runs}` : '0/0'}`);
  }
  lines.push(failures.length ? `MISMATCHES: ${failures.length}` : 'no mismatches');
  process.stdout.write(lines.join('\n') + '\n');
  return failures.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`crash soak: ${e.stack}\n`);
    process.exit(2);
  },
);
