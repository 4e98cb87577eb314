// A cluster of pserver processes on loopback, for the training example, the
// multi-process tests and the benchmarks: start N shards on free ports,
// SIGKILL or SIGTERM one, start it again on the same port and pool.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { parameterServerService } from '../proto/load';

const PSERVER = path.join(__dirname, '..', 'server', 'pserver.js');

export interface ClusterOptions {
  /** Parent directory: shard i keeps its pool in dir/ps<i> and its log in dir/ps<i>.log. */
  dir: string;
  shards: number;
  cacheMb?: number;
  poolSize?: string;
  /** Extra environment for the servers (e.g. PMEMPS_FAILPOINT). PMEM_IS_PMEM_FORCE=1 unless given. */
  env?: Record<string, string>;
  /** Extra environment for one shard's first start, by shard index. */
  shardEnv?: Record<number, Record<string, string>>;
  logLevel?: string;
  /** How the readiness probe (a Status call) reaches servers started with TLS or --auth-tokens (in env). */
  probe?: { credentials?: grpc.ChannelCredentials; token?: string };
}

/**
 * n distinct free loopback ports. All n sockets are held open until every
 * port is known: a port released before the next is asked for may be handed
 * out again, and a cluster then lists one server twice.
 */
export async function freePorts(n: number): Promise<number[]> {
  const held: net.Server[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const s = net.createServer();
      held.push(s);
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => resolve());
      });
    }
    return held.map((s) => (s.address() as net.AddressInfo).port);
  } finally {
    await Promise.all(held.map((s) => new Promise<void>((r) => (s.listening ? s.close(() => r()) : r()))));
  }
}

export async function freePort(): Promise<number> {
  return (await freePorts(1))[0];
}

function statusOnce(endpoint: string, probe: ClusterOptions['probe'] = {}): Promise<void> {
  const Ctor = parameterServerService();
  // Certificates for loopback name localhost: Node deprecates an IP as the TLS server name.
  const c = new Ctor(
    endpoint,
    probe.credentials ?? grpc.credentials.createInsecure(),
    probe.credentials ? { 'grpc.ssl_target_name_override': 'localhost' } : {},
  ) as grpc.Client & Record<string, any>;
  const md = new grpc.Metadata();
  if (probe.token) md.set('authorization', `Bearer ${probe.token}`);
  return new Promise<void>((resolve, reject) =>
    c.Status({}, md, { deadline: Date.now() + 1000 }, (err: Error | null) => {
      c.close();
      if (err) reject(err);
      else resolve();
    }),
  );
}

function safeTail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').slice(-2000);
  } catch {
    return '';
  }
}

export class LocalCluster {
  readonly ports: number[] = [];
  readonly procs: (ChildProcess | null)[] = [];
  private readonly exits: (Promise<number | null> | null)[] = [];

  private constructor(readonly opts: ClusterOptions) {}

  static async start(opts: ClusterOptions): Promise<LocalCluster> {
    const c = new LocalCluster(opts);
    fs.mkdirSync(opts.dir, { recursive: true });
    c.ports.push(...(await freePorts(opts.shards)));
    try {
      await Promise.all(c.ports.map((_, i) => c.startShard(i, opts.shardEnv?.[i])));
    } catch (e) {
      c.killAll();
      throw e;
    }
    return c;
  }

  get endpoints(): string[] {
    return this.ports.map((p) => `127.0.0.1:${p}`);
  }

  poolDir(i: number): string {
    return path.join(this.opts.dir, `ps${i}`);
  }

  logFile(i: number): string {
    return path.join(this.opts.dir, `ps${i}.log`);
  }

  /** Starts shard i (again) and resolves once it serves; rejects if it exits first. */
  startShard(i: number, env: Record<string, string> = {}): Promise<void> {
    const log = fs.openSync(this.logFile(i), 'a');
    const child = spawn(
      process.execPath,
      [
        PSERVER,
        '--bind',
        `127.0.0.1:${this.ports[i]}`,
        '--pmem',
        this.poolDir(i),
        '--cache-mb',
        String(this.opts.cacheMb ?? 64),
        '--pool-size',
        this.opts.poolSize ?? '256M',
        '--log-level',
        this.opts.logLevel ?? 'info',
      ],
      { env: { ...process.env, PMEM_IS_PMEM_FORCE: '1', ...this.opts.env, ...env }, stdio: ['ignore', 'pipe', log] },
    );
    fs.closeSync(log);
    this.procs[i] = child;
    this.exits[i] = new Promise((r) => child.once('exit', (code, sig) => r(code ?? (sig ? -1 : null))));
    const out = fs.createWriteStream(this.logFile(i), { flags: 'a' });
    child.stdout!.pipe(out);
    return new Promise<void>((resolve, reject) => {
      let done = false;
      child.once('exit', (code, sig) => {
        if (done) return;
        done = true;
        reject(new Error(`pserver ${i} exited (${code ?? sig}) before serving; see ${this.logFile(i)}:\n${safeTail(this.logFile(i))}`));
      });
      // Ready when it answers Status (whatever the log level).
      const poll = (): void => {
        if (done) return;
        statusOnce(this.endpoints[i], this.opts.probe).then(
          () => {
            if (done) return;
            done = true;
            resolve();
          },
          () => setTimeout(poll, 50),
        );
      };
      poll();
    });
  }

  /** Kills shard i with the signal and waits for it to exit. */
  async kill(i: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    const p = this.procs[i];
    if (!p || p.exitCode !== null || p.signalCode !== null) return this.exits[i] ?? null;
    p.kill(signal);
    const code = await this.exits[i];
    this.procs[i] = null;
    return code;
  }

  /** Resolves when shard i exits by itself (e.g. at a failpoint). */
  exited(i: number): Promise<number | null> {
    return this.exits[i] ?? Promise.resolve(null);
  }

  async restart(i: number, env: Record<string, string> = {}): Promise<void> {
    await this.kill(i, 'SIGKILL');
    await this.startShard(i, env);
  }

  /** Stops every shard gracefully (SIGTERM: clean close). */
  async stop(): Promise<void> {
    await Promise.all(this.procs.map((_, i) => this.kill(i, 'SIGTERM')));
  }

  killAll(): void {
    for (const p of this.procs) if (p && p.exitCode === null) p.kill('SIGKILL');
  }
}
