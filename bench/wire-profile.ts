// Where a pull's and a push's milliseconds go, per process (issue 10, item 2):
// one pserver and one SDK worker, one call in flight, steps of 4,096 keys x
// dim 64 (Adagrad), each process's main thread sampled by V8's CPU profiler
// during the measured steps only (bench/profile-hook.ts), every sample put
// in a bucket by the innermost frame that names a part of the stack:
//
//   npx tsc -p tsconfig.json && node dist/bench/wire-profile.js [--servers N] [--steps N] [--reps N] [--build LABEL=DIR ...]
//                                  [--server-flags 'LABEL=--node-flag ...']
//
// CPU of the threads other than the main one (the engine's thread pool, V8's
// GC helpers and compiler) comes from /proc/PID/task/*/stat (10 ms ticks):
// the profiler sees only the main thread. Several --build options compare
// builds of the repository (e.g. the commit before a change, exported and
// built elsewhere) in the same run: their servers and workers run one after
// the other, the order rotated per repetition, and the table gives medians;
// --server-flags runs a build's pserver with node flags (e.g. GC sizes).
// The result goes to bench/results/wire-profile-latest.md.

import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { Rng, canConnect, median, parseBuilds } from './lib';
import { freePort } from '../examples/local-cluster';

const REPO = path.resolve(__dirname, '..', '..');
const HOOK = path.join(__dirname, 'profile-hook.js');
const DIM = 64;
const BATCH = 4096;
const TABLE = 'prof_emb';
const MODES = ['pull', 'push'] as const;
type Mode = (typeof MODES)[number];

interface ClientConfig {
  endpoints: string[];
  serverPids: number[];
  repo: string;
  keys: number;
  steps: number;
  warmSteps: number;
}

/** What one process did during one mode's measured steps. */
interface ProcShare {
  /** Main-thread milliseconds per step by bucket (from the profile). */
  buckets: Record<string, number>;
  /** CPU ms per step of the main thread and of all other threads (from /proc). */
  mainCpu: number;
  otherCpu: number;
}
interface ModeResult {
  mode: Mode;
  wallMs: number;
  client: ProcShare;
  server: ProcShare;
}

// ---------------------------------------------------------------- profiles

interface Profile {
  nodes: { id: number; callFrame: { functionName: string; url: string }; children?: number[] }[];
  samples: number[];
  timeDeltas: number[];
}

// Innermost frame first: a Buffer copy called by grpc-js is grpc-js's, one
// called by the codec is the codec's. Frames of no bucket (builtins, the
// task queue) pass the sample on to their caller.
const BUCKETS: [string, RegExp][] = [
  ['protobuf codec', /proto\/fast-codec/],
  ['engine binding', /native\/engine/],
  ['SDK (split, merge, calls)', /\/worker\//],
  ['server handlers', /\/server\//],
  ['grpc-js', /@grpc\/grpc-js/],
  ['HTTP/2 + socket (node)', /^node:internal\/(http2|net|stream_base|streams)|^node:net$/],
  ['bench loop', /\/bench\//],
];
export const BUCKET_ORDER = [
  'protobuf codec',
  'engine binding',
  'SDK (split, merge, calls)',
  'server handlers',
  'grpc-js',
  'HTTP/2 + socket (node)',
  'native, unattributed',
  'GC',
  'other JS',
  'bench loop',
];

function bucketsOf(p: Profile): Record<string, number> {
  const parent = new Map<number, number>();
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const memo = new Map<number, string>();
  const bucketOf = (id: number): string => {
    const hit = memo.get(id);
    if (hit) return hit;
    const fn = byId.get(id)!.callFrame;
    let b: string | undefined;
    if (fn.functionName === '(garbage collector)') b = 'GC';
    else if (fn.functionName === '(idle)') b = 'idle';
    else if (fn.functionName === '(program)') b = 'native, unattributed';
    else if (fn.functionName === '(root)') b = 'other JS';
    else b = BUCKETS.find(([, re]) => re.test(fn.url))?.[0];
    if (!b) {
      const up = parent.get(id);
      b = up === undefined ? 'other JS' : bucketOf(up);
    }
    memo.set(id, b);
    return b;
  };
  const out: Record<string, number> = {};
  // timeDeltas[i] is the time since the previous sample: sample i-1 ran for it.
  for (let i = 0; i + 1 < p.samples.length; i++) {
    const b = bucketOf(p.samples[i]);
    out[b] = (out[b] ?? 0) + p.timeDeltas[i + 1] / 1000;
  }
  return out;
}

/** CPU ms (user + system) of a process's main thread and of its other threads, from /proc (10 ms ticks). */
function threadCpu(pid: number): { main: number; other: number } {
  let main = 0;
  let other = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = st
        .slice(st.lastIndexOf(')') + 2)
        .split(' ')
        .map(Number);
      const ms = ((f[11] + f[12]) * 1000) / 100;
      if (Number(tid) === pid) main += ms;
      else other += ms;
    } catch {
      /* thread gone */
    }
  }
  return { main, other };
}

function serversCpu(pids: number[]): { main: number; other: number } {
  const t = { main: 0, other: 0 };
  for (const pid of pids) {
    const c = threadCpu(pid);
    t.main += c.main;
    t.other += c.other;
  }
  return t;
}

async function waitFile(file: string, ms: number): Promise<Profile> {
  const t0 = Date.now();
  while (!fs.existsSync(file)) {
    if (Date.now() - t0 > ms) throw new Error(`no profile ${file} within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
}

// ---------------------------------------------------------------- client (child)

async function clientMain(cfg: ClientConfig): Promise<void> {
  // The SDK of the build under test, not necessarily this one.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { PsClient } = require(path.join(cfg.repo, 'dist', 'worker')) as typeof import('../worker');
  const c = await PsClient.connect({ endpoints: cfg.endpoints });
  await c.createTable({ name: TABLE, dim: DIM, optimizer: { type: 'adagrad', lr: 0.01 }, initializer: { type: 'uniform', min: -0.01, max: 0.01 }, seed: 1 });
  const rng = new Rng(7);
  const batches = Array.from({ length: 16 }, () => {
    const k = Buffer.alloc(BATCH * 8);
    for (let i = 0; i < BATCH; i++) k.writeUInt32LE(rng.int(cfg.keys), i * 8);
    return k;
  });
  const grads = new Float32Array(BATCH * DIM).map(() => (rng.float() - 0.5) * 0.02);
  // Every row exists before measuring, as in bench/service.ts.
  for (let from = 0; from < cfg.keys; from += BATCH) {
    const n = Math.min(BATCH, cfg.keys - from);
    const k = Buffer.alloc(n * 8);
    for (let i = 0; i < n; i++) k.writeUInt32LE(from + i, i * 8);
    await c.push(TABLE, k, grads.subarray(0, n * DIM));
  }
  const step = async (mode: Mode, i: number): Promise<void> => {
    const k = batches[i % batches.length];
    if (mode === 'pull') {
      const v = await c.pull(TABLE, k);
      if (v.length !== BATCH * DIM) throw new Error('short pull');
    } else await c.push(TABLE, k, grads);
  };
  const out = path.dirname(process.env.PMEMPS_PROFILE_OUT!);
  let n = 0;
  const results: ModeResult[] = [];
  for (const mode of MODES) {
    for (let i = 0; i < cfg.warmSteps; i++) await step(mode, i);
    const s0 = serversCpu(cfg.serverPids);
    const c0 = threadCpu(process.pid);
    for (const pid of cfg.serverPids) process.kill(pid, 'SIGUSR2');
    process.kill(process.pid, 'SIGUSR2');
    await new Promise((r) => setTimeout(r, 20)); // both profilers started
    const t0 = performance.now();
    for (let i = 0; i < cfg.steps; i++) await step(mode, i);
    const wall = performance.now() - t0;
    process.kill(process.pid, 'SIGUSR2');
    for (const pid of cfg.serverPids) process.kill(pid, 'SIGUSR2');
    const s1 = serversCpu(cfg.serverPids);
    const c1 = threadCpu(process.pid);
    const mine = await waitFile(`${out}/prof.client.${n}.cpuprofile`, 30_000);
    // The servers' buckets summed: the CPU a step costs on all of them.
    const theirs: Record<string, number> = {};
    for (let i = 0; i < cfg.serverPids.length; i++)
      for (const [k, v] of Object.entries(bucketsOf(await waitFile(`${out}/prof.server${i}.${n}.cpuprofile`, 30_000)))) theirs[k] = (theirs[k] ?? 0) + v;
    n++;
    const per = (x: Record<string, number>): Record<string, number> => Object.fromEntries(Object.entries(x).map(([k, v]) => [k, v / cfg.steps]));
    // The profile's samples are wall time of the main thread, including
    // time it waited for a core (the machine is shared): its busy buckets
    // are scaled to the thread's CPU time from /proc, idle is kept as is.
    const scaled = (x: Record<string, number>, cpu: number): Record<string, number> => {
      const busy = Object.entries(x).reduce((a, [k, v]) => a + (k === 'idle' ? 0 : v), 0);
      return Object.fromEntries(Object.entries(x).map(([k, v]) => [k, k === 'idle' || busy === 0 ? v : (v * cpu) / busy]));
    };
    results.push({
      mode,
      wallMs: wall / cfg.steps,
      client: {
        buckets: scaled(per(bucketsOf(mine)), (c1.main - c0.main) / cfg.steps),
        mainCpu: (c1.main - c0.main) / cfg.steps,
        otherCpu: (c1.other - c0.other) / cfg.steps,
      },
      server: {
        buckets: scaled(per(theirs), (s1.main - s0.main) / cfg.steps),
        mainCpu: (s1.main - s0.main) / cfg.steps,
        otherCpu: (s1.other - s0.other) / cfg.steps,
      },
    });
  }
  c.close();
  process.stdout.write(`@@RESULT ${JSON.stringify(results)}\n`);
}

// ---------------------------------------------------------------- driver

const live = new Set<ChildProcess>();
const dirs = new Set<string>();
function cleanup(): void {
  for (const p of live) p.kill('SIGKILL');
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM'] as const)
  process.on(sig, () => {
    cleanup();
    process.exit(130);
  });

async function runOnce(
  label: string,
  repo: string,
  flags: string[],
  o: { keys: number; steps: number; warm: number; cacheMb: number; servers: number },
): Promise<ModeResult[]> {
  const shm = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const base = fs.mkdtempSync(path.join(shm, `pmemps-wireprof-${process.pid}-`));
  dirs.add(base);
  const env = { ...process.env, PMEM_IS_PMEM_FORCE: '1', PMEMPS_LOG_PRETTY: '0' };
  const servers: ChildProcess[] = [];
  const ports: number[] = [];
  for (let i = 0; i < o.servers; i++) {
    const port = await freePort();
    const dir = path.join(base, `shard${i}`);
    fs.mkdirSync(dir);
    ports.push(port);
    const server = spawn(
      process.execPath,
      [
        ...flags,
        '-r',
        HOOK,
        path.join(repo, 'dist', 'server', 'pserver.js'),
        '--bind',
        `127.0.0.1:${port}`,
        '--pmem',
        dir,
        '--cache-mb',
        String(o.cacheMb),
        '--pool-size',
        '1024M',
      ],
      { env: { ...env, PMEMPS_PROFILE_OUT: path.join(base, `prof.server${i}`) }, stdio: ['ignore', 'ignore', 'inherit'] },
    );
    live.add(server);
    servers.push(server);
  }
  try {
    const t0 = Date.now();
    for (const [i, port] of ports.entries())
      while (!(await canConnect(port))) {
        if (servers[i].exitCode !== null) throw new Error(`${label}: pserver ${i} exited at start`);
        if (Date.now() - t0 > 60_000) throw new Error(`${label}: pserver ${i} did not listen`);
        await new Promise((r) => setTimeout(r, 100));
      }
    const cfg: ClientConfig = {
      endpoints: ports.map((p) => `127.0.0.1:${p}`),
      serverPids: servers.map((x) => x.pid!),
      repo,
      keys: o.keys,
      steps: o.steps,
      warmSteps: o.warm,
    };
    const client = spawn(process.execPath, ['-r', HOOK, __filename, '--client', JSON.stringify(cfg)], {
      env: { ...env, PMEMPS_PROFILE_OUT: path.join(base, 'prof.client') },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    live.add(client);
    let text = '';
    client.stdout!.on('data', (d) => (text += d));
    const code = await new Promise<number | null>((r) => client.on('exit', r));
    live.delete(client);
    const m = /^@@RESULT (.*)$/m.exec(text);
    if (code !== 0 || !m) throw new Error(`${label}: the client failed (exit ${code})`);
    return JSON.parse(m[1]) as ModeResult[];
  } finally {
    for (const server of servers) {
      server.kill('SIGTERM');
      await new Promise((r) => (server.exitCode !== null ? r(null) : server.once('exit', r)));
      live.delete(server);
    }
    fs.rmSync(base, { recursive: true, force: true });
    dirs.delete(base);
  }
}

function sh(cmd: string, args: string[], cwd = REPO): string {
  try {
    return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

async function driverMain(): Promise<void> {
  const { values } = parseArgs({
    options: {
      steps: { type: 'string', default: '300' },
      warm: { type: 'string', default: '60' },
      reps: { type: 'string', default: '3' },
      keys: { type: 'string', default: '100000' },
      'cache-mb': { type: 'string', default: '512' },
      servers: { type: 'string', default: '1' },
      build: { type: 'string', multiple: true },
      'server-flags': { type: 'string', multiple: true },
      out: { type: 'string' },
    },
    strict: true,
  });
  const o = {
    steps: Number(values.steps),
    warm: Number(values.warm),
    keys: Number(values.keys),
    cacheMb: Number(values['cache-mb']),
    servers: Number(values.servers),
  };
  const reps = Number(values.reps);
  const builds = parseBuilds(values.build, REPO).map(({ label, root }) => {
    const flags = (values['server-flags'] ?? []).find((f) => f.startsWith(`${label}=`));
    return {
      label,
      repo: root,
      flags: flags
        ? flags
            .slice(label.length + 1)
            .split(' ')
            .filter(Boolean)
        : [],
    };
  });
  const load0 = os.loadavg()[0].toFixed(2);
  const all = new Map<string, ModeResult[][]>();
  for (let rep = 0; rep < reps; rep++) {
    for (let j = 0; j < builds.length; j++) {
      const b = builds[(j + rep) % builds.length];
      const r = await runOnce(b.label, b.repo, b.flags, o);
      all.set(b.label, [...(all.get(b.label) ?? []), r]);
      const total = (s: ProcShare): number => s.mainCpu + s.otherCpu;
      process.stderr.write(
        `[wire-profile] rep ${rep + 1}/${reps} ${b.label}: ` +
          r.map((x) => `${x.mode} wall ${x.wallMs.toFixed(2)} ms, CPU client ${total(x.client).toFixed(2)} server ${total(x.server).toFixed(2)}`).join('; ') +
          '\n',
      );
    }
  }
  const load1 = os.loadavg()[0].toFixed(2);
  const f = (x: number): string => x.toFixed(2);
  const L: string[] = ['# Where a pull and a push spend their milliseconds', ''];
  L.push(
    `- machine: ${os.cpus()[0]?.model ?? '?'}, nproc ${os.availableParallelism()}, node ${process.version}; 1-min load ${load0} at the start, ${load1} at the end; ${new Date().toISOString()}`,
  );
  for (const b of builds)
    L.push(
      `- build "${b.label}": commit ${sh('git', ['rev-parse', '--short', 'HEAD'], b.repo) || 'none (an exported tree)'}${sh('git', ['status', '--porcelain'], b.repo) ? ' + uncommitted changes' : ''}${b.flags.length ? `; pserver run with node ${b.flags.join(' ')}` : ''}`,
    );
  L.push(
    `- ${o.servers === 1 ? 'one pserver' : `${o.servers} pservers (the server figures are their sum)`} (pools on /dev/shm, PMEM_IS_PMEM_FORCE=1, --cache-mb ${o.cacheMb}) and one SDK worker (PsClient) on 127.0.0.1, one call in flight; ` +
      `table Adagrad dim ${DIM}, ${o.keys.toLocaleString('en-US')} rows filled first; steps of ${BATCH} uniform random keys; ${o.warm} warm-up steps, then ${o.steps} measured steps per mode; ` +
      `medians of ${reps} repetitions (a fresh server and worker each), builds interleaved`,
  );
  L.push(
    '- CPU ms per step. Main-thread buckets from V8 CPU profiles (250 us sampling) of the measured steps only, each sample put in the bucket of its innermost frame that names one ' +
      "(a Buffer copy inside grpc-js counts as grpc-js; inside the codec, as the codec), the shares scaled to the main thread's CPU time (samples are wall time, and a shared machine makes threads wait for a core); " +
      '"native, unattributed" is V8\'s (program): C++ work not called from JS, ' +
      "mostly nghttp2 and socket reads. CPU columns from /proc/PID/task (10 ms ticks): the main thread's, and all other threads' (for the server mostly the engine's thread pool; also V8's GC helpers and compiler)",
  );
  L.push('');
  const labels = builds.map((b) => b.label);
  for (const mode of MODES) {
    for (const side of ['client', 'server'] as const) {
      L.push(`${mode}, ${side === 'client' ? 'worker (SDK) process' : o.servers === 1 ? 'pserver process' : `${o.servers} pserver processes, summed`}:`, '');
      L.push(`| ms per ${mode} | ${labels.join(' | ')} |`);
      L.push(`|---|${labels.map(() => '---|').join('')}`);
      const val = (label: string, g: (r: ModeResult) => number): number => median(all.get(label)!.map((rs) => g(rs.find((r) => r.mode === mode)!)));
      for (const bk of BUCKET_ORDER) {
        const vs = labels.map((l) => val(l, (r) => r[side].buckets[bk] ?? 0));
        if (vs.every((v) => v < 0.005)) continue;
        L.push(`| ${bk} | ${vs.map(f).join(' | ')} |`);
      }
      L.push(`| main thread, CPU (/proc) | ${labels.map((l) => f(val(l, (r) => r[side].mainCpu))).join(' | ')} |`);
      L.push(`| other threads, CPU (/proc) | ${labels.map((l) => f(val(l, (r) => r[side].otherCpu))).join(' | ')} |`);
      L.push(`| **process CPU** | ${labels.map((l) => `**${f(val(l, (r) => r[side].mainCpu + r[side].otherCpu))}**`).join(' | ')} |`);
      L.push(`| main thread idle (profile) | ${labels.map((l) => f(val(l, (r) => r[side].buckets.idle ?? 0))).join(' | ')} |`);
      if (side === 'server') L.push(`| **wall per ${mode}** | ${labels.map((l) => `**${f(val(l, (r) => r.wallMs))}**`).join(' | ')} |`);
      L.push('');
    }
  }
  const text = L.join('\n');
  process.stdout.write(text + '\n');
  const outFile = path.resolve(values.out ?? path.join(REPO, 'bench', 'results', 'wire-profile-latest.md'));
  fs.mkdirSync(path.dirname(outFile), { recursive: true });
  fs.writeFileSync(outFile, text + '\n');
  process.stderr.write(`[wire-profile] written to ${path.relative(REPO, outFile)}\n`);
}

if (process.argv[2] === '--client')
  clientMain(JSON.parse(process.argv[3]) as ClientConfig).catch((e) => {
    process.stderr.write(`wire-profile client: ${(e as Error)?.stack ?? e}\n`);
    process.exit(1);
  });
else
  driverMain().catch((e) => {
    process.stderr.write(`wire-profile: ${(e as Error)?.stack ?? e}\n`);
    process.exitCode = 1;
  });
