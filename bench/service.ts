// The service benchmark of the pserver issue (a script, not a test):
//
//   npx tsc -p tsconfig.json && node dist/bench/service.js [--quick]
//   (npm run bench:service)
//
// Steps of 4,096 keys x dim 64 float32 -- pull, push, pull+push -- from 1, 2
// and 4 concurrent worker processes against 1 and 2 servers, for:
//   pmemps   node dist/server/pserver.js, pools under /dev/shm with
//            PMEM_IS_PMEM_FORCE=1, through the SDK (worker/), Adagrad
//   Redis    Debian's redis-server, ioredis, pipelined MGET/MSET of binary
//            rows, the optimizer applied in the client (bench/redis-peer.ts):
//            SGD and Adagrad
//   bare grpc-js  the same Pull and Push messages between a plain grpc-js
//            client and server built from proto/, no engine behind it
//            (bench/grpc-bare.ts)
//   ceiling  the same bytes over a plain TCP socket between Node processes
//            (bench/tcp-ceiling.ts)
// With --metrics-overhead, pmemps runs twice on identical servers, one set
// with --metrics-bind (scraped after each of its cells), the cells of both
// interleaved, and a table of the throughput ratio is added.
// One markdown table of every figure, written to
// bench/results/service-latest.md. Each worker is a separate process
// (bench/service-worker.ts); the workers of a cell start together on a
// signal. Everything binds to 127.0.0.1; every child process and temporary
// directory is removed at the end, on error and on SIGINT/SIGTERM, and a
// reaper process removes them if this process is killed outright.

import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { parseArgs } from 'node:util';
import { GiB, canConnect, fmtMs, median } from './lib';
import { freePorts } from '../examples/local-cluster';
import { startRedisServer } from './redis-peer';
import type { Mode, SystemName, WorkerConfig } from './service-worker';

const REPO = path.resolve(__dirname, '..', '..');

// ---------------------------------------------------------------- the reaper

// `node service.js --reaper`: reads `pid N` / `unpid N` / `dir D` / `undir D`
// lines on stdin; when stdin closes (the driver exited or was killed) it
// kills the pids still listed and removes the directories still listed.
if (process.argv[2] === '--reaper') {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => undefined);
  const pids = new Set<number>();
  const dirs = new Set<string>();
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (l) => {
    const [cmd, ...rest] = l.split(' ');
    const arg = rest.join(' ');
    if (cmd === 'pid') pids.add(Number(arg));
    else if (cmd === 'unpid') pids.delete(Number(arg));
    else if (cmd === 'dir') dirs.add(arg);
    else if (cmd === 'undir') dirs.delete(arg);
  });
  rl.on('close', () => {
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    // give the killed processes a moment to release their files
    setTimeout(
      () => {
        for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
        process.exit(0);
      },
      pids.size ? 300 : 0,
    );
  });
} else {
  driverMain();
}

function driverMain(): void {
  // ---------------------------------------------------------------- options

  const USAGE = `usage: node dist/bench/service.js [--quick] [--systems pmemps,redis,grpc,tcp] [--servers 1,2] [--workers 1,2,4]
                              [--keys N] [--dur-ms N] [--warm-ms N] [--reps N] [--out FILE] [--metrics-overhead]
  --quick          smoke run: 100k keys, 1 repetition of 400 ms per cell
  --systems LIST   systems to run (default pmemps,redis,grpc,tcp; redis = SGD and Adagrad, grpc = bare grpc-js)
  --servers LIST   server counts (default 1,2)
  --workers LIST   worker process counts (default 1,2,4)
  --keys N         key space: uniform random keys over 0..N-1 (default 1M, quick 100k)
  --dur-ms N       measured time per cell and repetition (default 1000, quick 400)
  --warm-ms N      warm-up before each cell (default 300, quick 150)
  --reps N         repetitions of every cell, interleaved; the table shows the median (default 3, quick 1)
  --redis-server P redis-server binary (default: redis-server on the PATH)
  --out FILE       results file (default bench/results/service-latest.md)
  --metrics-overhead  also run pmemps with --metrics-bind on a second, identical set of servers,
                   interleaved with plain pmemps; adds a table of the throughput ratio
  --gc-headroom-peers  give the peers' node processes (bare grpc-js server and workers, Redis and TCP
                   workers) the GC headroom that pserver and the SDK keep (proto/gc-headroom.ts)`;

  const CLI_OPTIONS = {
    quick: { type: 'boolean', default: false },
    systems: { type: 'string', default: 'pmemps,redis,grpc,tcp' },
    servers: { type: 'string', default: '1,2' },
    workers: { type: 'string', default: '1,2,4' },
    keys: { type: 'string' },
    'dur-ms': { type: 'string' },
    'cache-mb': { type: 'string' },
    'warm-ms': { type: 'string' },
    reps: { type: 'string' },
    'redis-server': { type: 'string' },
    out: { type: 'string' },
    'metrics-overhead': { type: 'boolean', default: false },
    'gc-headroom-peers': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  } as const;

  let parsed: ReturnType<typeof parseArgs<{ options: typeof CLI_OPTIONS; strict: true }>>;
  try {
    parsed = parseArgs({ options: CLI_OPTIONS, strict: true });
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    process.exit(2);
  }
  const argv = parsed.values;
  if (argv.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const usage = (msg: string): never => {
    console.error(`${msg}\n${USAGE}`);
    process.exit(2);
  };
  function intArg(v: string | undefined, def: number, name: string): number {
    if (v === undefined) return def;
    const n = Number(
      v.replace(/_/g, '').replace(/^(\d+(?:\.\d+)?)([kKmM])$/, (_m, a: string, u: string) => String(Number(a) * (u.toLowerCase() === 'k' ? 1e3 : 1e6))),
    );
    if (!Number.isSafeInteger(n) || n <= 0) usage(`--${name} needs a positive integer, got "${v}"`);
    return n;
  }
  function listArg(v: string, name: string): number[] {
    const xs = v
      .split(',')
      .filter(Boolean)
      .map((x) => intArg(x, 0, name));
    if (xs.length === 0) usage(`--${name} needs a list`);
    return xs;
  }
  const quick = argv.quick === true;
  const wanted = argv.systems!.split(',').filter(Boolean);
  for (const s of wanted) if (!['pmemps', 'redis', 'grpc', 'tcp'].includes(s)) usage(`unknown system "${s}"`);
  const systems: SystemName[] = [];
  if (wanted.includes('pmemps')) systems.push('pmemps');
  if (argv['metrics-overhead']) {
    if (!wanted.includes('pmemps')) usage('--metrics-overhead compares pmemps with and without metrics: --systems must include pmemps');
    systems.push('pmemps-metrics');
  }
  if (wanted.includes('redis')) systems.push('redis-sgd', 'redis-adagrad');
  if (wanted.includes('grpc')) systems.push('grpc-bare');
  if (wanted.includes('tcp')) systems.push('tcp');
  // Read by the peers' processes (service-worker.ts, grpc-bare.ts, tcp-ceiling.ts).
  if (argv['gc-headroom-peers']) process.env.PMEMPS_BENCH_PEER_GC_HEADROOM = '1';
  const opts = {
    quick,
    gcHeadroomPeers: argv['gc-headroom-peers'] === true,
    systems,
    servers: listArg(argv.servers!, 'servers'),
    workers: listArg(argv.workers!, 'workers'),
    modes: ['pull', 'push', 'pullpush'] as Mode[],
    keySpace: intArg(argv.keys, quick ? 100_000 : 1_000_000, 'keys'),
    durMs: intArg(argv['dur-ms'], quick ? 400 : 1000, 'dur-ms'),
    warmMs: intArg(argv['warm-ms'], quick ? 150 : 300, 'warm-ms'),
    firstWarmMs: quick ? 300 : 800,
    reps: intArg(argv.reps, quick ? 1 : 3, 'reps'),
    batch: 4096,
    dim: 64,
    lr: 0.01,
    initMin: -0.01,
    initMax: 0.01,
    tableSeed: 1,
    keySeed: 1,
    keyBatches: 16,
    // A cache that holds the whole 1M-row table, as Redis holds it in DRAM
    // (rows are 64 weights + 64 Adagrad accumulators; 1,536 MiB fits 1M).
    cacheMb: intArg(argv['cache-mb'], 1536, 'cache-mb'),
    poolSizeMb: 2048,
    out: path.resolve(argv.out ?? path.join(REPO, 'bench', 'results', 'service-latest.md')),
  };
  if (opts.keySpace > 2 ** 32) usage('--keys must be at most 2^32');
  const redisBin = argv['redis-server'] ?? findOnPath('redis-server');
  const PSERVER = path.join(REPO, 'dist', 'server', 'pserver.js');
  const SHM = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

  const rowBytes = opts.dim * 4;
  const LABEL: Record<SystemName, string> = {
    pmemps: 'pmemps',
    'pmemps-metrics': 'pmemps + metrics',
    'redis-sgd': 'Redis SGD',
    'redis-adagrad': 'Redis Adagrad',
    'grpc-bare': 'bare grpc-js',
    tcp: 'TCP ceiling',
  };
  const MODE_LABEL: Record<Mode, string> = { pull: 'pull', push: 'push', pullpush: 'pull+push' };

  function findOnPath(bin: string): string {
    for (const d of (process.env.PATH ?? '').split(':').concat(['/usr/bin', '/usr/local/bin', '/usr/sbin'])) {
      const p = path.join(d, bin);
      try {
        fs.accessSync(p, fs.constants.X_OK);
        return p;
      } catch {
        /* next */
      }
    }
    return bin;
  }

  // ---------------------------------------------------------------- cleanup

  const T0 = performance.now();
  const progress = (msg: string): void => {
    process.stderr.write(`[service-bench +${((performance.now() - T0) / 1000).toFixed(0)}s] ${msg}\n`);
  };

  const live = new Set<ChildProcess>();
  const ownedDirs = new Set<string>();
  let reaper: ChildProcess | null = null;
  const tellReaper = (line: string): void => {
    try {
      reaper?.stdin?.write(line + '\n');
    } catch {
      /* reaper gone */
    }
  };
  function track(p: ChildProcess): ChildProcess {
    live.add(p);
    if (p.pid) tellReaper(`pid ${p.pid}`);
    p.on('exit', () => {
      live.delete(p);
      if (p.pid) tellReaper(`unpid ${p.pid}`);
    });
    return p;
  }
  function ownDir(d: string): string {
    ownedDirs.add(d);
    tellReaper(`dir ${d}`);
    return d;
  }
  function removeDir(d: string): void {
    try {
      fs.rmSync(d, { recursive: true, force: true });
    } catch (e) {
      process.stderr.write(`could not remove ${d}: ${e}\n`);
    }
    ownedDirs.delete(d);
    tellReaper(`undir ${d}`);
  }
  function cleanupSync(): void {
    for (const c of live) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
    live.clear();
    for (const d of [...ownedDirs]) removeDir(d);
  }
  process.on('exit', cleanupSync);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      process.stderr.write(`\n${sig}: stopping children, removing temporary directories\n`);
      cleanupSync();
      process.exit(sig === 'SIGINT' ? 130 : 143);
    });
  }

  // ---------------------------------------------------------------- children

  interface Msg {
    tag: string;
    payload: any;
  }

  /** A node child speaking `@@TAG {json}` lines on stdout and reading JSON commands on stdin. */
  class Child {
    readonly proc: ChildProcess;
    readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
    private readonly inbox = new Map<string, Msg[]>();
    private readonly waiters = new Map<string, Array<{ resolve: (m: Msg) => void; reject: (e: Error) => void }>>();
    private failed: Error | null = null;
    private tail: string[] = [];

    constructor(
      readonly name: string,
      args: string[],
      env: NodeJS.ProcessEnv,
      private readonly quiet = false,
    ) {
      this.proc = track(spawn(process.execPath, args, { env, stdio: ['pipe', 'pipe', 'pipe'] }));
      const rl = readline.createInterface({ input: this.proc.stdout! });
      rl.on('line', (line) => {
        const m = /^@@([A-Z_]+) (.*)$/.exec(line);
        if (!m) return this.log(line);
        const msg = { tag: m[1], payload: JSON.parse(m[2]) };
        if (msg.tag === 'ERROR') return this.fail(new Error(`${name}: ${msg.payload.message}`));
        const ws = this.waiters.get(msg.tag);
        if (ws?.length) ws.shift()!.resolve(msg);
        else this.inbox.set(msg.tag, [...(this.inbox.get(msg.tag) ?? []), msg]);
      });
      readline.createInterface({ input: this.proc.stderr! }).on('line', (l) => this.log(l));
      this.proc.stdin!.on('error', () => undefined);
      this.exit = new Promise((resolve) => {
        this.proc.on('exit', (code, signal) => {
          resolve({ code, signal });
          this.fail(
            new Error(
              `${name} exited (${code !== null ? `code ${code}` : `signal ${signal}`})${this.tail.length ? `; last output: ${this.tail.slice(-3).join(' / ')}` : ''}`,
            ),
          );
        });
        this.proc.on('error', (e) => this.fail(e));
      });
    }

    private log(line: string): void {
      this.tail.push(line);
      if (this.tail.length > 20) this.tail.shift();
      if (!this.quiet) process.stderr.write(`[${this.name}] ${line}\n`);
    }

    private fail(e: Error): void {
      if (this.failed) return;
      this.failed = e;
      for (const ws of this.waiters.values()) for (const w of ws.splice(0)) w.reject(e);
    }

    send(obj: unknown): void {
      this.proc.stdin!.write(JSON.stringify(obj) + '\n');
    }

    /** The next message with this tag (messages are queued per tag). */
    next(tag: string, timeoutMs: number): Promise<any> {
      const q = this.inbox.get(tag);
      if (q?.length) return Promise.resolve(q.shift()!.payload);
      if (this.failed) return Promise.reject(this.failed);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          const ws = this.waiters.get(tag) ?? [];
          const i = ws.indexOf(w);
          if (i >= 0) ws.splice(i, 1);
          reject(new Error(`${this.name}: no ${tag} within ${fmtMs(timeoutMs)}`));
        }, timeoutMs);
        const w = {
          resolve: (m: Msg) => {
            clearTimeout(timer);
            resolve(m.payload);
          },
          reject: (e: Error) => {
            clearTimeout(timer);
            reject(e);
          },
        };
        this.waiters.set(tag, [...(this.waiters.get(tag) ?? []), w]);
      });
    }

    /** Asks the child to quit; kills it if it has not exited within `ms`. */
    async quit(ms = 10_000): Promise<void> {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
      try {
        this.send({ cmd: 'quit' });
      } catch {
        /* stdin closed */
      }
      const t = setTimeout(() => this.proc.kill('SIGKILL'), ms);
      await this.exit;
      clearTimeout(t);
    }
  }

  // ---------------------------------------------------------------- servers

  interface Servers {
    endpoints: Partial<Record<SystemName, string[]>>;
    /** Server process ids per system, for CPU accounting. */
    pids: Partial<Record<SystemName, number[]>>;
    /** The /metrics ports of the pmemps-metrics servers. */
    metricsPorts: number[];
    stop: () => Promise<void>;
  }

  /** CPU milliseconds (user + system) used so far by these processes, from /proc (10 ms ticks). */
  function cpuMsOf(pids: number[]): number {
    let t = 0;
    for (const pid of pids) {
      try {
        const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        const f = st
          .slice(st.lastIndexOf(')') + 2)
          .split(' ')
          .map(Number);
        t += ((f[11] + f[12]) * 1000) / 100;
      } catch {
        /* gone */
      }
    }
    return t;
  }

  const redisVersion = { v: '?' };

  async function startPmemps(
    count: number,
    metrics = false,
  ): Promise<{ endpoints: string[]; pids: number[]; metricsPorts: number[]; stop: () => Promise<void> }> {
    const base = ownDir(fs.mkdtempSync(path.join(SHM, `pmemps-svcbench-${process.pid}-`)));
    const procs: Array<{ proc: ChildProcess; out: string[] }> = [];
    const endpoints: string[] = [];
    const metricsPorts: number[] = [];
    try {
      const ports = await freePorts(count);
      for (let i = 0; i < count; i++) {
        const dir = path.join(base, `shard${i}`);
        fs.mkdirSync(dir);
        const port = ports[i];
        const args = [PSERVER, '--bind', `127.0.0.1:${port}`, '--pmem', dir, '--cache-mb', String(opts.cacheMb), '--pool-size', `${opts.poolSizeMb}M`];
        if (metrics) args.push('--metrics-bind', '127.0.0.1:0');
        const proc = track(
          spawn(process.execPath, args, { env: { ...process.env, PMEM_IS_PMEM_FORCE: '1', PMEMPS_LOG_PRETTY: '0' }, stdio: ['ignore', 'pipe', 'pipe'] }),
        );
        const out: string[] = [];
        let metricsPort = 0;
        const keep = (d: Buffer): void => {
          const lines = d.toString().split('\n').filter(Boolean);
          for (const l of lines) metricsPort ||= Number(/"metricsPort":(\d+)/.exec(l)?.[1] ?? 0);
          out.push(...lines);
          if (out.length > 30) out.splice(0, out.length - 30);
        };
        proc.stdout!.on('data', keep);
        proc.stderr!.on('data', keep);
        procs.push({ proc, out });
        const t0 = performance.now();
        while (!(await canConnect(port)) || (metrics && !metricsPort)) {
          if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`pserver ${i} exited at start: ${out.slice(-5).join(' / ')}`);
          if (performance.now() - t0 > 60_000) throw new Error(`pserver ${i} did not listen within 60 s: ${out.slice(-5).join(' / ')}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        endpoints.push(`127.0.0.1:${port}`);
        metricsPorts.push(metricsPort);
      }
    } catch (e) {
      for (const p of procs) p.proc.kill('SIGKILL');
      removeDir(base);
      throw e;
    }
    return {
      endpoints,
      pids: procs.map((p) => p.proc.pid!),
      metricsPorts,
      stop: async () => {
        // graceful: SIGTERM closes the engine cleanly; SIGKILL after 60 s
        await Promise.all(
          procs.map(async ({ proc, out }, i) => {
            if (proc.exitCode !== null || proc.signalCode !== null) {
              notes.push(`pserver ${i} had exited before the end (${proc.exitCode ?? proc.signalCode}): ${out.slice(-3).join(' / ')}`);
              return;
            }
            const exited = new Promise((r) => proc.once('exit', r));
            proc.kill('SIGTERM');
            const t = setTimeout(() => proc.kill('SIGKILL'), 60_000);
            await exited;
            clearTimeout(t);
          }),
        );
        removeDir(base);
      },
    };
  }

  async function startRedis(count: number): Promise<{ endpoints: string[]; pids: number[]; stop: () => Promise<void> }> {
    const base = ownDir(fs.mkdtempSync(path.join(os.tmpdir(), `pmemps-svcbench-redis-${process.pid}-`)));
    const procs: ChildProcess[] = [];
    const endpoints: string[] = [];
    try {
      const ports = await freePorts(count);
      for (let i = 0; i < count; i++) {
        const dir = path.join(base, `r${i}`);
        fs.mkdirSync(dir);
        const r = await startRedisServer(redisBin, ports[i], dir, (p) => {
          track(p);
          procs.push(p);
        });
        redisVersion.v = r.version;
        endpoints.push(r.endpoint);
      }
    } catch (e) {
      for (const p of procs) p.kill('SIGKILL');
      removeDir(base);
      throw e;
    }
    return {
      endpoints,
      pids: procs.map((p) => p.pid!),
      stop: async () => {
        await Promise.all(
          procs.map(async (p) => {
            if (p.exitCode !== null || p.signalCode !== null) return;
            const exited = new Promise((r) => p.once('exit', r));
            p.kill('SIGTERM');
            const t = setTimeout(() => p.kill('SIGKILL'), 20_000);
            await exited;
            clearTimeout(t);
          }),
        );
        removeDir(base);
      },
    };
  }

  /** Servers of a script with `--serve` that prints @@LISTEN and exits when its stdin closes (tcp-ceiling.js, grpc-bare.js). */
  async function startScriptServers(script: string, count: number): Promise<{ endpoints: string[]; pids: number[]; stop: () => Promise<void> }> {
    const kids: Child[] = [];
    const endpoints: string[] = [];
    for (let i = 0; i < count; i++) {
      const c = new Child(`${path.basename(script, '.js')}-server-${i}`, [path.join(__dirname, script), '--serve', '--dim', String(opts.dim)], process.env);
      kids.push(c);
      const { port } = await c.next('LISTEN', 20_000);
      endpoints.push(`127.0.0.1:${port}`);
    }
    return {
      endpoints,
      pids: kids.map((c) => c.proc.pid!),
      stop: async () => {
        for (const c of kids) {
          c.proc.stdin!.end();
          const t = setTimeout(() => c.proc.kill('SIGKILL'), 5000);
          await c.exit;
          clearTimeout(t);
        }
      },
    };
  }

  async function startServers(count: number): Promise<Servers> {
    const stops: Array<() => Promise<void>> = [];
    const endpoints: Servers['endpoints'] = {};
    const pids: Servers['pids'] = {};
    let metricsPorts: number[] = [];
    const stopAll = async (): Promise<void> => {
      for (const s of stops.splice(0).reverse()) await s();
    };
    try {
      if (opts.systems.includes('pmemps')) {
        const p = await startPmemps(count);
        stops.push(p.stop);
        endpoints.pmemps = p.endpoints;
        pids.pmemps = p.pids;
      }
      if (opts.systems.includes('pmemps-metrics')) {
        const p = await startPmemps(count, true);
        stops.push(p.stop);
        endpoints['pmemps-metrics'] = p.endpoints;
        pids['pmemps-metrics'] = p.pids;
        metricsPorts = p.metricsPorts;
      }
      if (opts.systems.includes('redis-sgd')) {
        const r = await startRedis(count);
        stops.push(r.stop);
        endpoints['redis-sgd'] = r.endpoints;
        endpoints['redis-adagrad'] = r.endpoints;
        pids['redis-sgd'] = r.pids;
        pids['redis-adagrad'] = r.pids;
      }
      if (opts.systems.includes('grpc-bare')) {
        const g = await startScriptServers('grpc-bare.js', count);
        stops.push(g.stop);
        endpoints['grpc-bare'] = g.endpoints;
        pids['grpc-bare'] = g.pids;
      }
      if (opts.systems.includes('tcp')) {
        const t = await startScriptServers('tcp-ceiling.js', count);
        stops.push(t.stop);
        endpoints.tcp = t.endpoints;
        pids.tcp = t.pids;
      }
    } catch (e) {
      await stopAll().catch(() => undefined);
      throw e;
    }
    return { endpoints, pids, metricsPorts, stop: stopAll };
  }

  // ---------------------------------------------------------------- workers

  function workerConfig(system: SystemName, endpoints: string[], workerIndex: number): WorkerConfig {
    return {
      system,
      endpoints,
      workerIndex,
      seed: opts.keySeed,
      keySpace: opts.keySpace,
      batch: opts.batch,
      dim: opts.dim,
      batches: opts.keyBatches,
      table: 'bench_emb',
      lr: opts.lr,
      initMin: opts.initMin,
      initMax: opts.initMax,
      tableSeed: opts.tableSeed,
    };
  }

  function spawnWorker(system: SystemName, endpoints: string[], index: number, tag: string): Child {
    return new Child(
      `${system}-${tag}${index}`,
      [path.join(__dirname, 'service-worker.js'), JSON.stringify(workerConfig(system, endpoints, index))],
      process.env,
    );
  }

  // ---------------------------------------------------------------- metrics scrapes

  const scrapes: Array<{ ms: number; bytes: number }> = [];

  /** Scrapes every metrics server once, after a cell (outside its measured time), and checks the rows counter of the cell's mode moved. */
  async function scrapeAll(ports: number[], mode: Mode): Promise<void> {
    let rows = 0;
    for (const port of ports) {
      const t0 = performance.now();
      const text = await new Promise<string>((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (d) => (body += d));
            res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`/metrics on port ${port}: HTTP ${res.statusCode}`))));
          })
          .on('error', reject);
      });
      scrapes.push({ ms: performance.now() - t0, bytes: Buffer.byteLength(text) });
      const name = mode === 'push' ? 'pmemps_rows_pushed_total' : 'pmemps_rows_pulled_total';
      rows += Number(new RegExp(`^${name}\\{table="bench_emb"\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
    }
    if (rows === 0) throw new Error(`the metrics servers counted no rows after a ${mode} cell: metrics are not live`);
  }

  // ---------------------------------------------------------------- results

  interface Sample {
    rowsPerSec: number;
    p50Ms: number;
    steps: number;
    /** Mean wall time of a step (per worker), and CPU per step of the worker processes and of the servers. */
    wallMsPerStep: number;
    clientCpuMsPerStep: number;
    serverCpuMsPerStep: number;
  }
  const results = new Map<string, Sample[]>();
  const key = (s: number, w: number, mode: Mode, sys: SystemName): string => `${s}/${w}/${mode}/${sys}`;
  const notes: string[] = [];
  const fills: string[] = [];

  async function cell(servers: number, workers: Child[], system: SystemName, mode: Mode, serverPids: number[]): Promise<Sample> {
    const tmo = 60_000 + 4 * (opts.durMs + opts.warmMs);
    for (const w of workers) w.send({ cmd: 'warm', mode, ms: opts.warmMs });
    await Promise.all(workers.map((w) => w.next('WARM', tmo)));
    const cpu0 = cpuMsOf(serverPids);
    for (const w of workers) w.send({ cmd: 'go', mode, ms: opts.durMs });
    const rs: Array<{ steps: number; secs: number; p50Ms: number; cpuMs: number }> = await Promise.all(workers.map((w) => w.next('RESULT', tmo)));
    const serverCpu = cpuMsOf(serverPids) - cpu0;
    const rowsPerSec = rs.reduce((a, r) => a + (r.steps * opts.batch) / r.secs, 0);
    const steps = rs.reduce((a, r) => a + r.steps, 0);
    const s: Sample = {
      rowsPerSec,
      p50Ms: median(rs.map((r) => r.p50Ms)),
      steps,
      wallMsPerStep: rs.reduce((a, r) => a + (r.secs * 1000) / r.steps, 0) / rs.length,
      clientCpuMsPerStep: rs.reduce((a, r) => a + r.cpuMs, 0) / steps,
      serverCpuMsPerStep: serverCpu / steps,
    };
    const k = key(servers, workers.length, mode, system);
    results.set(k, [...(results.get(k) ?? []), s]);
    return s;
  }

  async function fill(servers: number, system: SystemName, endpoints: string[]): Promise<void> {
    const c = spawnWorker(system, endpoints, 0, 'fill');
    try {
      await c.next('CONNECTED', 120_000);
      c.send({ cmd: 'fill', from: 0, to: opts.keySpace });
      const { secs } = await c.next('FILLED', 30 * 60_000);
      fills.push(`${LABEL[system]}, ${servers} server${servers > 1 ? 's' : ''}: ${(opts.keySpace / 1e6).toFixed(2)} M rows in ${secs.toFixed(1)} s`);
      progress(`filled ${LABEL[system]} on ${servers} server(s): ${opts.keySpace} rows in ${secs.toFixed(1)} s`);
    } finally {
      await c.quit();
    }
  }

  async function runServers(S: number): Promise<void> {
    progress(`starting ${S} server(s) of each system`);
    const srv = await startServers(S);
    try {
      for (const sys of opts.systems) if (sys !== 'tcp' && sys !== 'grpc-bare') await fill(S, sys, srv.endpoints[sys]!);
      for (const W of opts.workers) {
        progress(`${S} server(s), ${W} worker(s): starting ${W * opts.systems.length} worker processes`);
        const sets = new Map<SystemName, Child[]>();
        try {
          for (const sys of opts.systems) {
            const ws = Array.from({ length: W }, (_, i) => spawnWorker(sys, srv.endpoints[sys]!, i, `s${S}w`));
            sets.set(sys, ws);
            await Promise.all(ws.map((w) => w.next('CONNECTED', 120_000)));
          }
          // a first, longer warm-up per system (JIT, connections, server caches)
          for (const sys of opts.systems) {
            const ws = sets.get(sys)!;
            for (const w of ws) w.send({ cmd: 'warm', mode: 'pullpush', ms: opts.firstWarmMs });
            await Promise.all(ws.map((w) => w.next('WARM', 120_000)));
          }
          for (let rep = 0; rep < opts.reps; rep++) {
            for (const mode of opts.modes) {
              // system order rotated per repetition, so no system always runs first
              const order = opts.systems.map((_, i) => opts.systems[(i + rep) % opts.systems.length]);
              const line: string[] = [];
              for (const sys of order) {
                const s = await cell(S, sets.get(sys)!, sys, mode, srv.pids[sys] ?? []);
                if (sys === 'pmemps-metrics') await scrapeAll(srv.metricsPorts, mode);
                line.push(`${LABEL[sys]} ${(s.rowsPerSec / 1e3).toFixed(0)}k`);
              }
              progress(`S=${S} W=${W} rep ${rep + 1}/${opts.reps} ${MODE_LABEL[mode]}: ${line.join(', ')} rows/s`);
            }
          }
        } finally {
          await Promise.all([...sets.values()].flat().map((w) => w.quit()));
        }
      }
    } finally {
      progress(`stopping the ${S}-server set`);
      await srv.stop();
    }
  }

  // ---------------------------------------------------------------- report

  const mbPerRow = (mode: Mode): number => (mode === 'pullpush' ? 2 : 1) * rowBytes;
  function rateCell(r: number | undefined, mode: Mode): string {
    if (r === undefined || !Number.isFinite(r)) return 'not run';
    const rows = r >= 1e6 ? `${(r / 1e6).toFixed(2)} M` : `${(r / 1e3).toFixed(0)} k`;
    return `${rows} rows/s<br>${((r * mbPerRow(mode)) / 1e6).toFixed(0)} MB/s`;
  }
  const med = (s: number, w: number, mode: Mode, sys: SystemName): number | undefined => {
    const xs = results.get(key(s, w, mode, sys));
    return xs?.length ? median(xs.map((x) => x.rowsPerSec)) : undefined;
  };
  const ratio = (a: number | undefined, b: number | undefined): number | undefined => (a !== undefined && b !== undefined && b > 0 ? a / b : undefined);
  const fmtRatio = (x: number | undefined, bold: boolean): string => (x === undefined ? 'n/a' : bold ? `**${x.toFixed(2)}x**` : `${x.toFixed(2)}x`);

  function cpuTicks(): { busy: number; ours: number; load1: string } {
    const cpu = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
    const idle = cpu[3] + cpu[4];
    const st = fs.readFileSync('/proc/self/stat', 'utf8');
    const f = st
      .slice(st.lastIndexOf(')') + 2)
      .split(' ')
      .map(Number);
    return { busy: total - idle, ours: f[11] + f[12] + f[13] + f[14], load1: fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0] };
  }
  const CPU0 = cpuTicks();

  function sh(cmd: string, args: string[]): string {
    try {
      return execFileSync(cmd, args, { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
      return '';
    }
  }
  function gitDescribe(): string {
    const h = sh('git', ['rev-parse', '--short', 'HEAD']);
    if (!h) return 'unknown';
    return `${h}${sh('git', ['status', '--porcelain']) !== '' ? ' + uncommitted changes' : ''}`;
  }
  function pkgVersion(name: string): string {
    try {
      return JSON.parse(fs.readFileSync(path.join(REPO, 'node_modules', name, 'package.json'), 'utf8')).version;
    } catch {
      return '?';
    }
  }
  function machine(): { nproc: string; model: string; mem: string; kernel: string } {
    const model = /Model name:\s*(.*)/.exec(sh('lscpu', []))?.[1]?.trim() ?? os.cpus()[0]?.model ?? '?';
    const memKb = Number(/^MemTotal:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? NaN);
    return {
      nproc: sh('nproc', []) || String(os.availableParallelism()),
      model,
      mem: `${((memKb * 1024) / GiB).toFixed(1)} GiB`,
      kernel: `${os.type()} ${os.release()}`,
    };
  }

  function fmtRows(r: number): string {
    return r >= 1e6 ? `${(r / 1e6).toFixed(2)} M rows/s` : `${(r / 1e3).toFixed(0)} k rows/s`;
  }

  // Each repetition runs the two variants of a cell back to back (order
  // rotated), so a repetition's ratio compares them under the same load.
  function metricsOverhead(): string[] {
    const L: string[] = [];
    const pct = (r: number): string => `${((1 - r) * 100).toFixed(1)}%`;
    const pairsOf = (S: number, W: number, mode: Mode, f: (with_: Sample, without: Sample) => number): number[] => {
      const a = results.get(key(S, W, mode, 'pmemps')) ?? [];
      const b = results.get(key(S, W, mode, 'pmemps-metrics')) ?? [];
      return a.slice(0, b.length).map((x, i) => f(b[i], x));
    };
    const pairs = (S: number, W: number, mode: Mode): number[] => pairsOf(S, W, mode, (w, o) => w.rowsPerSec / o.rowsPerSec);
    // Server CPU per step is less sensitive than throughput to what else runs on the machine.
    const cpuPairs = (S: number, W: number, mode: Mode): number[] => pairsOf(S, W, mode, (w, o) => w.serverCpuMsPerStep / o.serverCpuMsPerStep);
    const cpuMs = (S: number, W: number, mode: Mode, sys: SystemName): string => {
      const xs = results.get(key(S, W, mode, sys));
      return xs?.length ? median(xs.map((x) => x.serverCpuMsPerStep)).toFixed(2) : '-';
    };
    L.push(
      `Metrics overhead (\`--metrics-overhead\`): pmemps twice, on two identical server sets, one started with \`--metrics-bind 127.0.0.1:0\` and scraped once after each of its cells ` +
        `(outside the measured time; ${scrapes.length} scrapes, median ${scrapes.length ? median(scrapes.map((x) => x.ms)).toFixed(1) : '-'} ms, ${scrapes.length ? (median(scrapes.map((x) => x.bytes)) / 1024).toFixed(1) : '-'} KiB). ` +
        `Per repetition the two cells of a step run back to back; the ratio is the median over the ${opts.reps} repetitions of with / without. Target (issue 8): metrics cost at most 2% of pull+push throughput.`,
    );
    L.push('');
    L.push(
      '| servers | workers | step | pmemps | pmemps + metrics | with / without, median (min..max) | cost | server CPU ms per step, without / with | CPU with / without, median |',
    );
    L.push('|---|---|---|---|---|---|---|---|---|');
    const all: number[] = [];
    const allCpu: number[] = [];
    for (const S of opts.servers)
      for (const W of opts.workers)
        for (const mode of opts.modes) {
          const r = pairs(S, W, mode);
          const c = cpuPairs(S, W, mode);
          if (mode === 'pullpush') {
            all.push(...r);
            allCpu.push(...c);
          }
          const m = r.length ? median(r) : undefined;
          L.push(
            `| ${S} | ${W} | ${MODE_LABEL[mode]} | ${rateCell(med(S, W, mode, 'pmemps'), mode)} | ${rateCell(med(S, W, mode, 'pmemps-metrics'), mode)} | ` +
              `${m === undefined ? 'n/a' : `${m.toFixed(3)} (${Math.min(...r).toFixed(3)}..${Math.max(...r).toFixed(3)})`} | ${m === undefined ? '' : pct(m)} | ` +
              `${cpuMs(S, W, mode, 'pmemps')} / ${cpuMs(S, W, mode, 'pmemps-metrics')} | ${c.length ? median(c).toFixed(3) : 'n/a'} |`,
          );
        }
    if (all.length) {
      const m = median(all);
      L.push(
        '',
        `pull+push over every cell and repetition (${all.length} pairs): with / without median ${m.toFixed(3)}, a cost of ${pct(m)}; ${1 - m <= 0.02 ? 'within' : '**above**'} the 2% target. ` +
          `Server CPU per pull+push step, with / without: median ${median(allCpu).toFixed(3)}.`,
      );
    }
    return L;
  }

  function render(wallMs: number, status: string, date: string): string {
    const m = machine();
    const now = cpuTicks();
    const other = Math.max(0, (now.busy - CPU0.busy - (now.ours - CPU0.ours)) / 100);
    const cores = Number(m.nproc) || 1;
    const W1 = Math.min(...opts.workers);
    const L: string[] = [];
    L.push('# pmemps service benchmark', '');
    L.push(
      `- machine: ${m.model}, nproc ${m.nproc}, ${m.mem} RAM, ${m.kernel}; node ${process.version}; redis-server ${redisVersion.v}; ioredis ${pkgVersion('ioredis')}; @grpc/grpc-js ${pkgVersion('@grpc/grpc-js')}`,
    );
    L.push(`- date: ${date}; commit ${gitDescribe()}; ${opts.quick ? '**quick run** (`--quick`)' : 'full run'}; took ${fmtMs(wallMs)}; ${status}`);
    L.push(
      `- machine load: 1-min load average ${CPU0.load1} at the start, ${now.load1} at the end; everything outside this benchmark's processes used ` +
        `${other.toFixed(1)} CPU-seconds during the run, ${((100 * other) / ((wallMs / 1000) * cores)).toFixed(0)}% of all cores`,
    );
    L.push(
      `- workload: steps of ${opts.batch} keys x dim ${opts.dim} float32; keys uniform random over ${opts.keySpace.toLocaleString('en-US')} ids ` +
        `(sfc32 seeded by worker index: worker i sends the same ${opts.keyBatches} batches, cycled, to every system); a pull+push step pulls the batch, then pushes gradients for the same keys. ` +
        `Every table is filled first (each row written once), so the steps find every row existing`,
    );
    L.push(
      `- systems: **pmemps** = \`node dist/server/pserver.js --cache-mb ${opts.cacheMb} --pool-size ${opts.poolSizeMb}M\`, pools under /dev/shm with PMEM_IS_PMEM_FORCE=1 (emulated PMEM), ` +
        `through the SDK (\`PsClient\`), table Adagrad lr ${opts.lr}, uniform(${opts.initMin}, ${opts.initMax}) init; ` +
        `**Redis** = \`redis-server --save '' --appendonly no --bind 127.0.0.1\`, ioredis, one binary value per row under a short ASCII key (SGD: the 256-byte weights; Adagrad: weights || accumulator, 512 bytes, one key a row because ioredis's cost is per key far more than per byte), ` +
        `pull = one pipeline of MGETs of 512 keys per server, push = sum duplicate keys, pipelined MGET of the rows, the update in float32 in the client (SGD / Adagrad lr ${opts.lr}), pipelined MSET: two round trips, not atomic (bench/redis-peer.ts); ` +
        `**bare grpc-js** = the same Pull and Push messages between a plain grpc-js client and server built from proto/ (proto-loader's protobufjs codecs, the same message limits and 16 MiB HTTP/2 windows as pmemps), ` +
        `the server answering Pull from a preallocated buffer of the size asked and Push with an empty reply, the client cutting the batch into contiguous ranges per server (bench/grpc-bare.ts); ` +
        `**TCP ceiling** = the same key, value and gradient bytes over one plain TCP connection per server between Node processes, length-prefixed frames, the server answering from a preallocated buffer and acknowledging pushes; no per-key work on either side (with 2 servers the batch is cut into two contiguous halves, answers land in place), so it is the raw transport bound (bench/tcp-ceiling.ts)`,
    );
    L.push(
      opts.gcHeadroomPeers
        ? `- GC: every node process of the run keeps 64 MiB of old-generation headroom (proto/gc-headroom.ts): pserver and the SDK by default, the peers' servers and workers because of --gc-headroom-peers`
        : `- GC: pserver and the SDK keep 64 MiB of old-generation headroom by default (proto/gc-headroom.ts); the peers' node processes (bare grpc-js, the Redis and TCP workers) run with V8's own policy, as plain grpc-js and ioredis do (--gc-headroom-peers gives it to them too)`,
    );
    L.push(
      `- servers: 1 or 2 of each system on 127.0.0.1; with 2, key k lives on server splitmix64(k) mod 2 for pmemps and Redis (the SDK's function, worker/shard.ts); ` +
        `a worker calls its servers in parallel and puts rows back in the caller's order`,
    );
    L.push(
      `- measurement: workers are separate node processes, one step in flight each; per cell the workers warm up for ${opts.warmMs} ms, then start together on a signal and run back-to-back steps for ${opts.durMs} ms; ` +
        `rows/s = sum over workers of keys / elapsed (a pull+push step counts its ${opts.batch} keys once); median of ${opts.reps} repetition${opts.reps > 1 ? 's' : ''}, ` +
        `cells interleaved (every system runs each mode in turn, the order rotated per repetition); ${m.nproc} cores are shared by the servers and up to 4 workers`,
    );
    L.push(
      `- MB/s = 10^6 bytes/s of float32 payload: values pulled and gradients pushed (pull ${rowBytes} B/key, push ${rowBytes} B/key, pull+push ${2 * rowBytes} B/key); key bytes, framing and optimizer state are not counted`,
    );
    L.push(
      `- targets (issue 10): pmemps ≥ 3x Redis (SGD and Adagrad) on pull+push in every cell; pmemps ≥ 0.8x bare grpc-js on pull+push with one worker ` +
        `(this replaces issue 3's 0.5x of the TCP ceiling, whose ratio is shown but not judged)`,
    );
    L.push('');
    L.push(
      '| servers | workers | step | pmemps | Redis SGD | Redis Adagrad | bare grpc-js | TCP ceiling | pmemps / Redis Adagrad | pmemps / Redis SGD | pmemps / bare grpc-js | pmemps / ceiling | met |',
    );
    L.push('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    let met = 0;
    let judged = 0;
    for (const S of opts.servers) {
      for (const W of opts.workers) {
        for (const mode of opts.modes) {
          const v = (sys: SystemName): number | undefined => med(S, W, mode, sys);
          const p = v('pmemps');
          const rA = ratio(p, v('redis-adagrad'));
          const rS = ratio(p, v('redis-sgd'));
          const rT = ratio(p, v('tcp'));
          const rG = ratio(p, v('grpc-bare'));
          const pp = mode === 'pullpush';
          const misses: string[] = [];
          let known = false;
          if (pp) {
            known = rA !== undefined && rS !== undefined && (W !== 1 || rG !== undefined);
            if (rA !== undefined && rA < 3) misses.push('< 3x Redis Adagrad');
            if (rS !== undefined && rS < 3) misses.push('< 3x Redis SGD');
            if (W === 1 && rG !== undefined && rG < 0.8) misses.push('< 0.8x bare grpc-js');
          }
          let metCell = '';
          if (p !== undefined && pp && (known || misses.length)) {
            judged++;
            if (misses.length === 0) met++;
            metCell = misses.length === 0 ? 'yes' : `**no** (${misses.join(', ')})`;
          }
          L.push(
            `| ${S} | ${W} | ${MODE_LABEL[mode]} | ${rateCell(p, mode)} | ${rateCell(v('redis-sgd'), mode)} | ${rateCell(v('redis-adagrad'), mode)} | ${rateCell(v('grpc-bare'), mode)} | ${rateCell(v('tcp'), mode)} | ` +
              `${fmtRatio(rA, pp)} | ${fmtRatio(rS, pp)} | ${fmtRatio(rG, pp && W === 1)} | ${fmtRatio(rT, false)} | ${metCell} |`,
          );
        }
      }
    }
    L.push('');
    L.push(`pull+push rows meeting their targets: ${judged ? `${met} of ${judged}` : 'none judged (pmemps not run)'}.`);
    if (opts.systems.includes('pmemps-metrics')) L.push('', ...metricsOverhead());
    // where the time of a step goes, with one worker (no contention between workers)
    L.push('');
    L.push(
      `Time per step with ${W1} worker${W1 > 1 ? 's' : ''}, ms: wall / CPU of the worker process / CPU of the server process(es) ` +
        `(medians over the repetitions; CPU from process.cpuUsage() in the worker and /proc/PID/stat of the servers, all threads, 10 ms ticks):`,
    );
    L.push('');
    L.push('| servers | step | pmemps | Redis SGD | Redis Adagrad | bare grpc-js | TCP ceiling |');
    L.push('|---|---|---|---|---|---|---|');
    for (const S of opts.servers) {
      for (const mode of opts.modes) {
        const c = (sys: SystemName): string => {
          const xs = results.get(key(S, W1, mode, sys));
          if (!xs?.length) return 'not run';
          const f = (g: (x: Sample) => number): string => median(xs.map(g)).toFixed(1);
          return `${f((x) => x.wallMsPerStep)} / ${f((x) => x.clientCpuMsPerStep)} / ${f((x) => x.serverCpuMsPerStep)}`;
        };
        L.push(`| ${S} | ${MODE_LABEL[mode]} | ${c('pmemps')} | ${c('redis-sgd')} | ${c('redis-adagrad')} | ${c('grpc-bare')} | ${c('tcp')} |`);
      }
    }
    L.push('', 'Notes:', '');
    // what the CPU alone allows: every step costs its worker's and its servers' CPU, and the run has nproc cores
    const bound: string[] = [];
    for (const S of opts.servers) {
      const per = opts.systems.map((sys) => {
        const xs = results.get(key(S, W1, 'pullpush', sys));
        if (!xs?.length) return null;
        const cpu = median(xs.map((x) => x.clientCpuMsPerStep + x.serverCpuMsPerStep));
        return `${LABEL[sys]} ${cpu.toFixed(1)} ms → ≤ ${fmtRows((cores * opts.batch * 1000) / cpu)}`;
      });
      if (per.some(Boolean)) bound.push(`${S} server${S > 1 ? 's' : ''}: ${per.filter(Boolean).join(', ')}`);
    }
    if (bound.length) {
      L.push(
        `- CPU per pull+push step (worker + servers, ${W1} worker) and the rows/s that ${cores} cores allow at that cost (${cores} x ${opts.batch} keys / CPU per step), ` +
          `an upper bound for any number of workers on this machine: ${bound.join('; ')}`,
      );
    }
    if (!opts.systems.includes('pmemps')) L.push('- pmemps was not run in this run (`--systems` without pmemps, or the server and SDK were not built yet)');
    if (fills.length) L.push(`- filling the tables before measuring (one process, 4 batches in flight): ${fills.join('; ')}`);
    for (const n of notes) L.push(`- ${n}`);
    return L.join('\n') + '\n';
  }

  // ---------------------------------------------------------------- main

  async function main(): Promise<void> {
    const date = new Date().toISOString();
    // stale temp dirs of earlier runs that were killed outright (their pid is gone)
    for (const dir of [SHM, os.tmpdir()]) {
      let names: string[] = [];
      try {
        names = fs.readdirSync(dir);
      } catch {
        continue;
      }
      for (const n of names) {
        const m = /^pmemps-svcbench-(?:redis-)?(\d+)-/.exec(n);
        if (!m || Number(m[1]) === process.pid) continue;
        let alive = true;
        try {
          process.kill(Number(m[1]), 0);
        } catch (e) {
          alive = (e as NodeJS.ErrnoException).code === 'EPERM';
        }
        if (!alive) {
          progress(`removing stale ${n} from an earlier run`);
          fs.rmSync(path.join(dir, n), { recursive: true, force: true });
        }
      }
    }
    for (const f of ['service-worker.js', 'tcp-ceiling.js', 'grpc-bare.js']) {
      if (!fs.existsSync(path.join(__dirname, f))) throw new Error(`${f} is missing next to this script; run npx tsc -p tsconfig.json`);
    }
    if (opts.systems.includes('pmemps') && !fs.existsSync(PSERVER)) {
      throw new Error('dist/server/pserver.js is missing: build the server (npx tsc -p tsconfig.json), or run without pmemps (--systems redis,tcp)');
    }
    if (opts.systems.includes('redis-sgd') && !fs.existsSync(redisBin)) {
      throw new Error(`${redisBin} not found: install redis-server (apt-get install -y redis-server) or pass --redis-server`);
    }
    reaper = spawn(process.execPath, [__filename, '--reaper'], { stdio: ['pipe', 'ignore', 'inherit'] });
    reaper.stdin!.on('error', () => undefined);
    reaper.unref();
    (reaper.stdin as unknown as { unref?: () => void }).unref?.();

    let status = 'completed';
    let err: unknown = null;
    try {
      for (const S of opts.servers) await runServers(S);
    } catch (e) {
      err = e;
      status = `**FAILED**: ${String((e as Error)?.message ?? e).split('\n')[0]}`;
    }
    const out = render(performance.now() - T0, status, date);
    process.stdout.write('\n' + out);
    if (err) {
      progress(`not writing ${path.relative(REPO, opts.out)}: the run failed`);
      throw err;
    }
    fs.mkdirSync(path.dirname(opts.out), { recursive: true });
    fs.writeFileSync(opts.out, out);
    progress(`results written to ${path.relative(REPO, opts.out)}`);
  }

  main()
    .catch((e) => {
      process.stderr.write(`benchmark failed: ${(e as Error)?.stack ?? e}\n`);
      process.exitCode = 1;
    })
    .finally(() => {
      cleanupSync();
      reaper?.stdin?.end();
    });
}
