// Persist overhead of the training run (issue 3, "Benchmark", last target):
// the throughput of examples/train-ctr with a persist every 10 s against the
// same run without persist, as the median over alternating pairs of runs.
//
//   npm run bench:persist            (= npm run build && node dist/bench/persist-overhead.js)
//   node dist/bench/persist-overhead.js [--pairs 3] [--seconds 60] [--steps N] [--persist-seconds 10]
//
// A = --persist-every 0 --persist-seconds 10 (a two-phase-commit checkpoint
//     over all shards every 10 s);
// B = no persist. train-ctr cannot be told "--persist-every 0
//     --persist-seconds 0" (PeriodicPersist refuses to be built with neither
//     set), so B is --persist-every <more than the run's steps>
//     --persist-seconds 0: the helper exists but is never due, which costs one
//     comparison per step.
// Both with --kill-at 0 (no crash), the example's defaults otherwise (2
// pservers on emulated PMEM, batch 512, FM k=8), each run in a fresh pool
// directory under /dev/shm (or os.tmpdir()), removed after the run.
//
// Pairs alternate, and so does the order inside a pair: A B, B A, A B, ...
// Without --steps, a calibration run (no persist, not counted) measures the
// machine's steps/s and the runs get as many steps as take --seconds.
//
// Throughput is measured over the training loop only. train-ctr's own
// examplesPerSecond divides by a wall time that starts after the cluster is
// up but includes the client's connect, CreateTable, generating the held-out
// batch, two held-out evaluations and a Status; the loop time here is instead
// summed from train-ctr's progress lines (one every 100 steps, examples of the
// interval / its ex/s, both measured inside train-ctr with performance.now(),
// the first interval starting right before the loop). The loop includes the
// persists, which is the point. Both numbers are in the table.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';

const REPO = path.join(__dirname, '..', '..');
const TRAIN = path.join(__dirname, '..', 'examples', 'train-ctr.js');
const BATCH = 512; // train-ctr's default; passed explicitly so the math here holds

const args = yargs(hideBin(process.argv))
  .scriptName('persist-overhead')
  .option('pairs', { type: 'number', default: 3, describe: 'alternating pairs of runs (at least 3 for the target)' })
  .option('seconds', { type: 'number', default: 60, describe: "target length of a run's training loop, s (sets --steps by calibration)" })
  .option('steps', { type: 'number', describe: 'training steps per run (skips the calibration)' })
  .option('calibration-steps', { type: 'number', default: 800, describe: 'steps of the calibration run' })
  .option('persist-seconds', { type: 'number', default: 10, describe: 'persist period of the A runs, s' })
  .option('servers', { type: 'number', default: 2 })
  .option('root', { type: 'string', describe: 'parent of the pool directories (default /dev/shm if writable, else os.tmpdir())' })
  .option('out', { type: 'string', default: path.join(REPO, 'bench', 'results', 'persist-overhead-latest.md') })
  .strict()
  .help()
  .parseSync();

// ------------------------------------------------------------ machine

function sh(cmd: string, a: string[]): string {
  try {
    return execFileSync(cmd, a, { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

function loadavg(): string {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

/** Jiffies: machine busy (all CPUs), and this process's reaped children (train-ctr, which reaps its pservers). */
function cpuSnap(): { busy: number; children: number } {
  const cpu = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const total = cpu.reduce((s, x) => s + x, 0);
  const idle = cpu[3] + (cpu[4] ?? 0);
  const self = fs.readFileSync('/proc/self/stat', 'utf8');
  const f = self
    .slice(self.lastIndexOf(')') + 2)
    .split(' ')
    .map(Number); // f[0] is field 3 (state)
  return { busy: total - idle, children: f[13] + f[14] }; // cutime, cstime
}
const HZ = 100;

function machine(): string {
  const model = /Model name:\s*(.*)/.exec(sh('lscpu', []))?.[1]?.trim() ?? os.cpus()[0]?.model ?? '?';
  const memKb = Number(/^MemTotal:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? NaN);
  return `${model}, nproc ${sh('nproc', []) || os.cpus().length}, ${(memKb / 1024 / 1024).toFixed(1)} GiB RAM, Linux ${os.release()}`;
}

function commit(): string {
  const h = sh('git', ['rev-parse', '--short', 'HEAD']) || '?';
  return `${h}${sh('git', ['status', '--porcelain', '--untracked-files=no']) !== '' ? ' + uncommitted changes (in the tree; see git status)' : ''}`;
}

// ------------------------------------------------------------ one run

type Config = 'A' | 'B';
interface Run {
  label: string;
  config: Config;
  pair: number; // -1: calibration
  steps: number;
  stepsExecuted: number;
  loopSeconds: number;
  loopExamplesPerSecond: number;
  /** train-ctr's own numbers (wall from before connect to after the final evaluation). */
  wallSeconds: number;
  examplesPerSecond: number;
  persists: number;
  persistMs: number;
  /** Table rows over all servers at the end. */
  rows: number;
  /** ex/s of each 100-step interval, for the last-intervals rate of the calibration. */
  intervals: number[];
  cpuOurs: number;
  cpuOthers: number;
  load1: string;
}

const rootDir = (() => {
  if (args.root) return args.root;
  try {
    fs.accessSync('/dev/shm', fs.constants.W_OK);
    return '/dev/shm';
  } catch {
    return os.tmpdir();
  }
})();
const workDir = fs.mkdtempSync(path.join(rootDir, 'pmemps-persist-overhead-'));
let child: ChildProcess | null = null;
const cleanup = (): void => {
  if (child && child.exitCode === null && child.pid) child.kill('SIGINT'); // train-ctr kills its cluster on SIGINT
  fs.rmSync(workDir, { recursive: true, force: true });
};
process.on('SIGINT', () => {
  cleanup();
  process.exit(130);
});
process.on('SIGTERM', () => {
  cleanup();
  process.exit(143);
});

function configArgs(c: Config, steps: number): string[] {
  return c === 'A'
    ? ['--persist-every', '0', '--persist-seconds', String(args['persist-seconds'])]
    : ['--persist-every', String(steps + 1), '--persist-seconds', '0'];
}

async function runOnce(label: string, config: Config, pair: number, steps: number): Promise<Run> {
  const dir = path.join(workDir, label);
  const json = path.join(workDir, `${label}.json`);
  const argv = [
    TRAIN,
    '--kill-at',
    '0',
    '--servers',
    String(args.servers),
    '--batch',
    String(BATCH),
    '--steps',
    String(steps),
    '--dir',
    dir,
    '--json',
    json,
    ...configArgs(config, steps),
  ];
  const load1 = fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0];
  const c0 = cpuSnap();
  const intervals: { steps: number; exs: number }[] = [];
  let out = '';
  let err = '';
  const code = await new Promise<number | null>((resolve, reject) => {
    const p = spawn(process.execPath, argv, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    child = p;
    let buf = '';
    let lastStep = 0;
    p.stdout!.setEncoding('utf8');
    p.stdout!.on('data', (d: string) => {
      out += d;
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = /^step\s+(\d+)\s+train log loss \S+\s+(\d+) ex\/s/.exec(line);
        if (m) {
          const s = Number(m[1]);
          intervals.push({ steps: s - lastStep, exs: Number(m[2]) });
          lastStep = s;
        }
      }
    });
    p.stderr!.setEncoding('utf8');
    p.stderr!.on('data', (d: string) => (err += d));
    p.on('error', reject);
    p.on('exit', (code) => resolve(code));
  });
  child = null;
  const c1 = cpuSnap();
  if (code !== 0) throw new Error(`train-ctr ${label} exited with ${code}:\n${err.slice(-3000)}\n${out.slice(-2000)}`);
  const s = JSON.parse(fs.readFileSync(json, 'utf8'));
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(json, { force: true });
  const covered = intervals.reduce((n, i) => n + i.steps, 0);
  if (covered !== s.stepsExecuted || s.restores !== 0)
    throw new Error(`${label}: progress lines cover ${covered} steps of ${s.stepsExecuted} (restores ${s.restores})`);
  const loopSeconds = intervals.reduce((t, i) => t + (i.steps * BATCH) / i.exs, 0);
  const ours = (c1.children - c0.children) / HZ;
  return {
    label,
    config,
    pair,
    steps,
    stepsExecuted: s.stepsExecuted,
    loopSeconds,
    loopExamplesPerSecond: (s.stepsExecuted * BATCH) / loopSeconds,
    wallSeconds: s.wallSeconds,
    examplesPerSecond: s.examplesPerSecond,
    persists: s.persists,
    persistMs: s.persistMs,
    rows: s.rows,
    intervals: intervals.map((i) => i.exs),
    cpuOurs: ours,
    cpuOthers: Math.max(0, (c1.busy - c0.busy) / HZ - ours),
    load1,
  };
}

// ------------------------------------------------------------ main

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
const fmt = (x: number, d = 0): string => x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
const log = (s: string): void => void process.stderr.write(`[persist-overhead] ${s}\n`);

async function main(): Promise<void> {
  if (!fs.existsSync(TRAIN)) throw new Error(`${TRAIN} is missing: npm run build first`);
  const started = new Date();
  const t0 = performance.now();
  const loadStart = loadavg();
  const commitStart = commit(); // dist/ was built from this tree (npm run bench:persist builds first)
  log(`pools under ${workDir}; load average ${loadStart}`);

  let steps = args.steps ?? 0;
  let calib: Run | null = null;
  if (!steps) {
    calib = await runOnce('calibration', 'B', -1, args['calibration-steps']);
    const tail = calib.intervals.slice(-3);
    const rate = median(tail) / BATCH; // steps/s once most rows exist
    steps = Math.max(300, Math.round((rate * args.seconds) / 100) * 100);
    log(
      `calibration: ${calib.stepsExecuted} steps in ${calib.loopSeconds.toFixed(1)} s, last intervals ${tail.join(', ')} ex/s -> ${rate.toFixed(1)} steps/s -> ${steps} steps per run`,
    );
  }

  const runs: Run[] = [];
  for (let p = 0; p < args.pairs; p++) {
    const order: Config[] = p % 2 === 0 ? ['A', 'B'] : ['B', 'A'];
    for (const c of order) {
      const r = await runOnce(`pair${p + 1}-${c}`, c, p + 1, steps);
      runs.push(r);
      log(
        `pair ${p + 1} ${c}: ${fmt(r.loopExamplesPerSecond)} ex/s over the loop (${r.loopSeconds.toFixed(1)} s), ${r.persists} persists in ${r.persistMs} ms; train-ctr: ${r.examplesPerSecond} ex/s over ${r.wallSeconds} s; load ${r.load1}`,
      );
    }
  }
  const loadEnd = loadavg();
  const headEnd = sh('git', ['rev-parse', '--short', 'HEAD']) || '?';
  const took = (performance.now() - t0) / 1000;

  const pairs = Array.from({ length: args.pairs }, (_, i) => {
    const a = runs.find((r) => r.pair === i + 1 && r.config === 'A')!;
    const b = runs.find((r) => r.pair === i + 1 && r.config === 'B')!;
    return {
      pair: i + 1,
      order: i % 2 === 0 ? 'A B' : 'B A',
      a,
      b,
      ratio: a.loopExamplesPerSecond / b.loopExamplesPerSecond,
      ratioCtr: a.examplesPerSecond / b.examplesPerSecond,
    };
  });
  const medRatio = median(pairs.map((p) => p.ratio));
  const medRatioCtr = median(pairs.map((p) => p.ratioCtr));
  const met = medRatio >= 0.98;
  const aRuns = runs.filter((r) => r.config === 'A');
  const bRuns = runs.filter((r) => r.config === 'B');
  const msPerPersist =
    aRuns.reduce((s, r) => s + r.persistMs, 0) /
    Math.max(
      1,
      aRuns.reduce((s, r) => s + r.persists, 0),
    );
  // Where the A runs' extra time goes: the time inside persist() against the
  // loop time above B's, at B's rate (pair by pair, median).
  const extra = pairs.map((p) => {
    const bTime = (p.a.stepsExecuted * BATCH) / p.b.loopExamplesPerSecond;
    return {
      extraS: p.a.loopSeconds - bTime,
      persistS: p.a.persistMs / 1000,
      exPersist: (p.a.stepsExecuted * BATCH) / (p.a.loopSeconds - p.a.persistMs / 1000) / p.b.loopExamplesPerSecond,
      cpu: p.a.cpuOurs / p.a.stepsExecuted / (p.b.cpuOurs / p.b.stepsExecuted),
    };
  });

  const L: string[] = [];
  L.push('# pmemps: persist overhead of the training run');
  L.push('');
  L.push(`- machine: ${machine()}; node ${process.version}`);
  L.push(
    `- date: ${started.toISOString()}; commit ${commitStart} at the start${headEnd !== commitStart.split(' ')[0] ? ` (HEAD moved to ${headEnd} during the run; the runs used dist/ as built at the start)` : ''}; took ${took.toFixed(0)} s`,
  );
  L.push(
    `- machine load: load average (1, 5, 15 min) ${loadStart} at the start, ${loadEnd} at the end; per run, the 1-min load average at its start and the CPU-seconds used during the run by this run (train-ctr + its pservers) and by everything else on the machine are in the table`,
  );
  L.push(
    `- workload: \`node dist/examples/train-ctr.js --kill-at 0 --servers ${args.servers} --batch ${BATCH} --steps ${steps}\` with its other defaults (FM k=8 over 26 hashed fields, vocab 20,000 per field, Adagrad on the servers, cache 64 MB, pool 512M per server); ${args.servers} pservers on emulated PMEM (PMEM_IS_PMEM_FORCE=1), pools in a fresh directory under ${rootDir} per run, removed after it`,
  );
  L.push(
    `- configurations: **A** = \`--persist-every 0 --persist-seconds ${args['persist-seconds']}\` (a two-phase-commit checkpoint over all shards every ${args['persist-seconds']} s, by the SDK's PeriodicPersist, inside the training loop); **B** = no persist: \`--persist-every ${steps + 1} --persist-seconds 0\` (never due; train-ctr refuses \`--persist-every 0 --persist-seconds 0\`, as PeriodicPersist needs one of the two)`,
  );
  L.push(
    `- runs: ${args.pairs} pairs, alternating and with alternating order inside a pair (A B, B A, ...); ${
      calib
        ? `steps per run ${steps}, chosen by a calibration run of ${calib.stepsExecuted} steps without persist (not counted; its last three 100-step intervals ran at ${calib.intervals.slice(-3).join(', ')} ex/s) for a loop of about ${args.seconds} s`
        : `steps per run ${steps} (given)`
    }`,
  );
  L.push(
    "- throughput: examples/s over the training loop = steps x 512 / loop time, the loop time summed from train-ctr's progress lines (every 100 steps it prints the interval's ex/s, timed inside train-ctr; the first interval starts right before the loop), so cluster start, connect, CreateTable, the held-out evaluations and shutdown are out, and the persists are in. train-ctr's own `examplesPerSecond` (summary JSON) is shown too: it excludes the cluster's start but includes the client's connect, CreateTable, generating the 4,096-example held-out batch, two held-out evaluations and a Status",
  );
  L.push(`- target (issue 3): with persist every ${args['persist-seconds']} s at most 2% slower, i.e. median over the pairs of A/B ≥ 0.98`);
  L.push('');
  L.push(
    '| run | pair | config | steps | loop s | ex/s (loop) | train-ctr ex/s (wall s) | rows at end | persists | ms in persist | ms / persist | share of loop in persist | CPU s: run / others | load1 at start |',
  );
  L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  runs.forEach((r, i) =>
    L.push(
      `| ${i + 1} | ${r.pair} | ${r.config} | ${r.stepsExecuted} | ${r.loopSeconds.toFixed(1)} | ${fmt(r.loopExamplesPerSecond)} | ${fmt(r.examplesPerSecond)} (${r.wallSeconds}) | ${fmt(r.rows)} | ${r.persists} | ${fmt(r.persistMs)} | ${r.persists ? fmt(r.persistMs / r.persists) : '-'} | ${((100 * r.persistMs) / 1000 / r.loopSeconds).toFixed(2)}% | ${r.cpuOurs.toFixed(1)} / ${r.cpuOthers.toFixed(1)} | ${r.load1} |`,
    ),
  );
  L.push('');
  L.push(
    "| pair | order | A ex/s (loop) | B ex/s (loop) | A / B (loop) | A / B (train-ctr ex/s) | A's extra loop time over B's rate | of it inside persist() | A / B with persist() time taken out | CPU s per step, A / B |",
  );
  L.push('|---|---|---|---|---|---|---|---|---|---|');
  pairs.forEach((p, i) =>
    L.push(
      `| ${p.pair} | ${p.order} | ${fmt(p.a.loopExamplesPerSecond)} | ${fmt(p.b.loopExamplesPerSecond)} | ${p.ratio.toFixed(4)} | ${p.ratioCtr.toFixed(4)} | ${extra[i].extraS.toFixed(2)} s | ${extra[i].persistS.toFixed(2)} s | ${extra[i].exPersist.toFixed(4)} | ${extra[i].cpu.toFixed(4)} |`,
    ),
  );
  L.push(
    `| **median** | | ${fmt(median(aRuns.map((r) => r.loopExamplesPerSecond)))} | ${fmt(median(bRuns.map((r) => r.loopExamplesPerSecond)))} | **${medRatio.toFixed(4)}** | ${medRatioCtr.toFixed(4)} | ${median(extra.map((e) => e.extraS)).toFixed(2)} s | ${median(extra.map((e) => e.persistS)).toFixed(2)} s | ${median(extra.map((e) => e.exPersist)).toFixed(4)} | ${median(extra.map((e) => e.cpu)).toFixed(4)} |`,
  );
  L.push('');
  L.push(
    'CPU s per step: CPU-seconds of the run (train-ctr and its pservers, startup and shutdown included) per step executed; it depends much less than time on how much of the 2 cores other processes took, so it shows whether persist costs work or only time.',
  );
  L.push('');
  const ratios = pairs.map((p) => p.ratio);
  const shares = aRuns.map((r) => r.persistMs / 1000 / r.loopSeconds);
  L.push(
    `**Median A / B = ${medRatio.toFixed(4)}** (${(Math.abs(1 - medRatio) * 100).toFixed(2)}% ${medRatio <= 1 ? 'slower' : 'faster'} with persist): target ≥ 0.98 ${met ? '**met**' : '**not met**'}.`,
  );
  L.push('');
  L.push(
    `Resolution: the pair ratios range ${Math.min(...ratios).toFixed(3)}–${Math.max(...ratios).toFixed(3)}, a spread ${((Math.max(...ratios) - Math.min(...ratios)) * 100).toFixed(1)} points wide; compare the CPU-seconds other processes took during each run (column "others"). ` +
      `The direct cost is measured without that noise: the loop waits on persist() (Status, then PREPARE and COMMIT on every shard), which took ${fmt(msPerPersist)} ms per persist on average, ` +
      `${(Math.min(...shares) * 100).toFixed(2)}–${(Math.max(...shares) * 100).toFixed(2)}% of the A runs' loop time (median ${(median(shares) * 100).toFixed(2)}%); ` +
      `the CPU-per-step ratio A / B (median ${median(extra.map((e) => e.cpu)).toFixed(4)}, range ${Math.min(...extra.map((e) => e.cpu)).toFixed(3)}–${Math.max(...extra.map((e) => e.cpu)).toFixed(3)}) shows the extra work a persist causes on both sides, the servers' flush of the rows changed since the last checkpoint included.`,
  );
  L.push('');
  fs.mkdirSync(path.dirname(args.out), { recursive: true });
  fs.writeFileSync(args.out, L.join('\n'));
  process.stdout.write(L.join('\n') + '\n');
  log(`wrote ${args.out}`);
}

main()
  .catch((e) => {
    process.stderr.write(`persist-overhead: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exitCode = 1;
  })
  .finally(cleanup);
