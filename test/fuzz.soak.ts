// Fuzz soak: a long seeded run against a real pserver. Not a test file: run it as
//
//   node dist/test/fuzz.soak.js --seed 1 --requests 200000        (npm run fuzz -- --seed 1 ...)
//   node dist/test/fuzz.soak.js --seeds 1-20 --requests 20000      (one run per seed)
//   node dist/test/fuzz.soak.js --minutes 15 --seed 100            (seeds 100, 101, ... until the time is up)
//   node dist/test/fuzz.soak.js --case worker-id-65536-bytes       (one directed abuse case; --case all: every one)
//   node dist/test/fuzz.soak.js --minutes 15 --skip-known          (look past the known defects: see KNOWN_DEFECTS in fuzz.lib.ts)
//   node dist/test/fuzz.soak.js --auth both --seeds 1-4            (under --auth-tokens: each seed with the admin token, then without any)
//
// --auth admin|reader|none runs one mode, --auth both admin then none,
// --auth all admin, reader, none (see test/fuzz.auth.ts for what each checks);
// the replay command of a finding names its mode.
//
// The seed is printed first and with every finding, with the command that
// replays it. A finding that breaks the protected state ends that server:
// the run goes on with a fresh pool and server (so one run reports every
// kind of finding it meets). Prints a summary: requests, batches, restarts,
// findings grouped by cause; exits 1 if there were findings.
import { ABUSE_CASES, runCase } from './fuzz.cases';
import { formatFinding, signature, type Finding } from './fuzz.gen';
import { closeAllHarnesses, runFuzz, type FuzzSummary } from './fuzz.lib';
import { AUTH_MODES, type AuthMode } from './fuzz.auth';

interface Args {
  seeds: number[];
  requests: number;
  minutes: number;
  batch: number;
  restartEvery: number;
  concurrency: number;
  cases: string[];
  quiet: boolean;
  skipKnown: boolean;
  /** Modes under --auth-tokens, each seed run in each; [undefined]: no tokens. */
  auth: (AuthMode | undefined)[];
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    seeds: [1],
    requests: 20_000,
    minutes: 0,
    batch: 40,
    restartEvery: 10,
    concurrency: 4,
    cases: [],
    quiet: false,
    skipKnown: false,
    auth: [undefined],
  };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = (): string => {
      if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
      return argv[++i];
    };
    const int = (s: string): number => {
      const n = Number(s);
      if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${k} takes a non-negative integer, got ${s}`);
      return n;
    };
    if (k === '--seed') a.seeds = [int(v())];
    else if (k === '--seeds') {
      const m = /^(\d+)-(\d+)$/.exec(v());
      if (!m) throw new Error('--seeds takes a range like 1-20');
      a.seeds = Array.from({ length: Number(m[2]) - Number(m[1]) + 1 }, (_, j) => Number(m[1]) + j);
    } else if (k === '--requests') a.requests = int(v());
    else if (k === '--minutes') a.minutes = Number(v());
    else if (k === '--batch') a.batch = Math.max(1, int(v()));
    else if (k === '--restart-every') a.restartEvery = Math.max(1, int(v()));
    else if (k === '--concurrency') a.concurrency = Math.max(1, int(v()));
    else if (k === '--case') a.cases.push(v());
    else if (k === '--quiet') a.quiet = true;
    else if (k === '--skip-known') a.skipKnown = true;
    else if (k === '--auth') {
      const m = v();
      if (m === 'both') a.auth = ['admin', 'none'];
      else if (m === 'all') a.auth = [...AUTH_MODES];
      else if ((AUTH_MODES as readonly string[]).includes(m)) a.auth = [m as AuthMode];
      else throw new Error(`--auth takes ${AUTH_MODES.join(', ')}, both or all; got ${m}`);
    } else if (k === '--help' || k === '-h') {
      process.stdout.write(
        'usage: node dist/test/fuzz.soak.js [--seed S | --seeds A-B] [--requests N] [--minutes M] [--batch B] [--restart-every E] [--concurrency C] [--case NAME|all] [--auth admin|reader|none|both|all] [--skip-known] [--quiet]\n',
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${k} (see --help)`);
  }
  if (!(a.minutes >= 0)) throw new Error('--minutes must be a non-negative number');
  return a;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  for (const [sig, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const)
    process.on(sig, () => {
      void closeAllHarnesses().finally(() => process.exit(code)); // no pserver or pool left behind
    });
  const log = (l: string) => process.stderr.write(`${l}\n`);
  const all: Finding[] = [];
  const t0 = Date.now();
  const onFinding = (f: Finding) => {
    all.push(f);
    if (!args.quiet) process.stderr.write(`\n${formatFinding(f)}\n\n`);
  };

  if (args.cases.length) {
    const names = args.cases.includes('all') ? ABUSE_CASES.map((c) => c.name) : args.cases;
    for (const auth of args.auth)
      for (const name of names) {
        const seed = args.seeds[0];
        const c = ABUSE_CASES.find((x) => x.name === name);
        const tag = auth ? ` (auth ${auth})` : '';
        if (c?.needsAccess && (auth === 'none' || auth === 'reader')) {
          log(`case ${name}${tag}: not run: ${c.needsAccess}`);
          continue;
        }
        log(`case ${name}, seed ${seed}${tag}`);
        const t = Date.now();
        const fs = await runCase(name, seed, auth);
        fs.forEach(onFinding);
        log(`case ${name}${tag}: ${fs.length ? `${fs.length} findings` : 'no findings'}, ${((Date.now() - t) / 1000).toFixed(1)} s`);
      }
  } else {
    const runs: (FuzzSummary & { auth?: AuthMode })[] = [];
    const deadline = args.minutes ? t0 + args.minutes * 60_000 : Infinity;
    const seeds = function* (): Generator<number> {
      if (!args.minutes) yield* args.seeds;
      else for (let s = args.seeds[0]; Date.now() < deadline; s++) yield s;
    };
    for (const seed of seeds())
      for (const auth of args.auth) {
        const tag = auth ? ` (auth ${auth})` : '';
        log(`fuzz: seed ${seed}${tag}`);
        const s = await runFuzz({
          seed,
          requests: args.requests,
          batch: args.batch,
          restartEvery: args.restartEvery,
          concurrency: args.concurrency,
          skipKnown: args.skipKnown,
          auth,
          log: args.quiet ? undefined : log,
          onFinding,
        });
        runs.push({ ...s, auth });
        log(
          `fuzz: seed ${seed}${tag}: ${s.requests} requests in ${s.batches} batches (request digest ${s.digest}), ${s.seconds.toFixed(0)} s; restarts ${s.restarts.term} clean + ${s.restarts.kill} kill -9; ${s.resets} fresh servers; ${s.findings.length} findings`,
        );
      }
    const total = (f: (s: FuzzSummary) => number) => runs.reduce((n, s) => n + f(s), 0);
    const codes: Record<string, number> = {};
    const rpcs: Record<string, number> = {};
    for (const s of runs) {
      for (const [k, n] of Object.entries(s.stats.byCode)) codes[k] = (codes[k] ?? 0) + n;
      for (const [k, n] of Object.entries(s.stats.byRpc)) rpcs[k] = (rpcs[k] ?? 0) + n;
    }
    process.stdout.write(
      [
        `fuzz soak: seeds ${runs.map((s) => s.seed).join(',') || '-'}; ${total((s) => s.requests)} requests in ${total((s) => s.batches)} batches, ${((Date.now() - t0) / 1000).toFixed(0)} s`,
        `restarts: ${total((s) => s.restarts.term)} clean (SIGTERM), ${total((s) => s.restarts.kill)} kill -9; fresh servers after a broken invariant: ${total((s) => s.resets)}; requests drawn again as unsafe: ${total((s) => s.redrawn)}`,
        ...(args.skipKnown ? [`known defects skipped: their triggers not drawn, ${total((s) => s.knownFindings)} findings of theirs counted only`] : []),
        `requests by RPC: ${Object.entries(rpcs)
          .map(([k, n]) => `${k} ${n}`)
          .join(', ')}`,
        `answers by code: ${Object.entries(codes)
          .map(([k, n]) => `${k} ${n}`)
          .join(', ')}`,
        ...args.auth
          .filter((m) => m !== undefined)
          .map((m) => {
            const rs = runs.filter((s) => s.auth === m);
            const by = (f: (s: FuzzSummary) => Record<string, number>) => {
              const acc: Record<string, number> = {};
              for (const s of rs) for (const [k, n] of Object.entries(f(s))) acc[k] = (acc[k] ?? 0) + n;
              return Object.entries(acc)
                .map(([k, n]) => `${k} ${n}`)
                .join(', ');
            };
            const secs = rs.reduce((n, s) => n + s.seconds, 0);
            return `auth ${m}: ${rs.reduce((n, s) => n + s.requests, 0)} requests, ${secs.toFixed(0)} s, ${rs.reduce((n, s) => n + s.findings.length, 0)} findings; codes: ${by((s) => s.stats.byCode)}; presented: ${by((s) => s.stats.byAuth)}`;
          }),
      ].join('\n') + '\n',
    );
  }
  const bySig = new Map<string, Finding[]>();
  for (const f of all) bySig.set(signature(f), [...(bySig.get(signature(f)) ?? []), f]);
  const lines = [all.length ? `FINDINGS: ${all.length}, ${bySig.size} distinct:` : 'no findings'];
  for (const [sig, fs] of [...bySig].sort((x, y) => y[1].length - x[1].length))
    lines.push(`  ${String(fs.length).padStart(5)}  ${sig}  (first: seed ${fs[0].seed}, ${fs[0].where}; ${fs[0].replay})`);
  process.stdout.write(lines.join('\n') + '\n');
  return all.length ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`fuzz soak: ${e.stack}\n`);
    process.exit(2);
  },
);
