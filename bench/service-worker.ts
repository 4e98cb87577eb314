// One worker of the service benchmark (bench/service.ts): a child process
// that connects to one system and runs steps of pull, push or pull+push when
// the driver says so, so that several workers run truly concurrently.
//
//   node dist/bench/service-worker.js '<json WorkerConfig>'
//
// Commands arrive as JSON lines on stdin; results leave as `@@TAG {json}`
// lines on stdout (logs go to stderr):
//   {"cmd":"fill","from":F,"to":T}   write rows F..T-1 once        -> @@FILLED {secs}
//   {"cmd":"warm","mode":M,"ms":X}   run steps for X ms (>= 2)     -> @@WARM {steps}
//   {"cmd":"go","mode":M,"ms":X}     the measurement               -> @@RESULT {steps, secs, p50Ms, p99Ms, cpuMs}
//   {"cmd":"quit"}                   close the client and exit 0
// The process exits when its stdin closes (the driver went away).
//
// Every worker of a given index uses the same key batches whatever the system
// (uniform random keys over 0..keySpace-1 from a seeded generator), so the
// systems see the same keys.

import * as readline from 'node:readline';
import { PsClient } from '../worker';
import { Rng, emit, log, peerGcHeadroom, percentile } from './lib';
import { RedisPeer } from './redis-peer';
import { TcpPeer } from './tcp-ceiling';
import { GrpcBarePeer } from './grpc-bare';

// pmemps-metrics: the same servers with --metrics-bind (bench/service.ts --metrics-overhead).
export type SystemName = 'pmemps' | 'pmemps-metrics' | 'redis-sgd' | 'redis-adagrad' | 'grpc-bare' | 'tcp';
export type Mode = 'pull' | 'push' | 'pullpush';

export interface WorkerConfig {
  system: SystemName;
  endpoints: string[];
  workerIndex: number;
  seed: number;
  keySpace: number;
  batch: number;
  dim: number;
  /** Distinct key batches cycled through. */
  batches: number;
  table: string;
  lr: number;
  initMin: number;
  initMax: number;
  tableSeed: number;
}

/** What every system offers a worker: the SDK's pull and push. */
interface Peer {
  pull(keys: Buffer): Promise<Float32Array>;
  push(keys: Buffer, grads: Float32Array): Promise<void>;
  fill(from: number, to: number): Promise<number>;
  close(): Promise<void>;
}

function keyRange(from: number, n: number): Buffer {
  const b = Buffer.alloc(n * 8);
  for (let i = 0; i < n; i++) b.writeUInt32LE((from + i) >>> 0, i * 8);
  return b;
}

function initRows(cfg: WorkerConfig, rows: number): Float32Array {
  const rng = new Rng(cfg.tableSeed);
  const f = new Float32Array(rows * cfg.dim);
  for (let i = 0; i < f.length; i++) f[i] = cfg.initMin + (cfg.initMax - cfg.initMin) * rng.float();
  return f;
}

/** Runs op(i) for i = 0.. with `inflight` outstanding until `to` is exhausted. */
async function lanes(total: number, inflight: number, op: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < total) await op(next++);
  };
  await Promise.all(Array.from({ length: inflight }, lane));
}

async function connect(cfg: WorkerConfig): Promise<Peer> {
  switch (cfg.system) {
    case 'tcp': {
      const p = await TcpPeer.connect(cfg.endpoints, cfg.dim);
      return { pull: (k) => p.pull(k), push: (k, g) => p.push(k, g), fill: async () => 0, close: () => p.close() };
    }
    case 'grpc-bare': {
      const p = await GrpcBarePeer.connect(cfg.endpoints, cfg.dim);
      return { pull: (k) => p.pull(k), push: (k, g) => p.push(k, g), fill: async () => 0, close: () => p.close() };
    }
    case 'redis-sgd':
    case 'redis-adagrad': {
      const optimizer = cfg.system === 'redis-sgd' ? ({ type: 'sgd', lr: cfg.lr } as const) : ({ type: 'adagrad', lr: cfg.lr } as const);
      const p = await RedisPeer.connect(cfg.endpoints, { dim: cfg.dim, optimizer });
      const init = initRows(cfg, 4096);
      return { pull: (k) => p.pull(k), push: (k, g) => p.push(k, g), fill: (from, to) => p.fill(from, to, init, cfg.batch, 4), close: () => p.close() };
    }
    case 'pmemps':
    case 'pmemps-metrics': {
      const c = await PsClient.connect({ endpoints: cfg.endpoints });
      await c.createTable({
        name: cfg.table,
        dim: cfg.dim,
        optimizer: { type: 'adagrad', lr: cfg.lr },
        initializer: { type: 'uniform', min: cfg.initMin, max: cfg.initMax },
        seed: cfg.tableSeed,
      });
      const fillGrads = initRows({ ...cfg, initMin: -0.01, initMax: 0.01, tableSeed: cfg.tableSeed + 1 }, cfg.batch);
      return {
        pull: (k) => c.pull(cfg.table, k),
        push: async (k, g) => {
          await c.push(cfg.table, k, g);
        },
        // a first push of every row creates it, so the measured steps find every row existing (as in Redis)
        fill: async (from, to) => {
          const t0 = performance.now();
          await lanes(Math.ceil((to - from) / cfg.batch), 4, async (i) => {
            const start = from + i * cfg.batch;
            const n = Math.min(cfg.batch, to - start);
            await c.push(cfg.table, keyRange(start, n), fillGrads.subarray(0, n * cfg.dim));
          });
          return (performance.now() - t0) / 1000;
        },
        close: async () => c.close(),
      };
    }
    default:
      throw new Error(`unknown system ${String(cfg.system)}`);
  }
}

async function main(): Promise<void> {
  peerGcHeadroom(); // pmemps's SDK keeps it anyway
  const cfg = JSON.parse(process.argv[2]) as WorkerConfig;
  const { dim, batch } = cfg;

  // the same batches for a worker index on every system
  const rng = new Rng(cfg.seed * 7919 + cfg.workerIndex * 104729 + 1);
  const keyBatches: Buffer[] = [];
  for (let b = 0; b < cfg.batches; b++) {
    const k = Buffer.alloc(batch * 8);
    for (let i = 0; i < batch; i++) k.writeUInt32LE(rng.int(cfg.keySpace), i * 8);
    keyBatches.push(k);
  }
  const gradBatches: Float32Array[] = [];
  for (let b = 0; b < 4; b++) {
    const g = new Float32Array(batch * dim);
    for (let i = 0; i < g.length; i++) g[i] = (rng.float() - 0.5) * 0.02;
    gradBatches.push(g);
  }

  const peer = await connect(cfg);
  let sink = 0; // keeps pulled values observed
  const step = async (mode: Mode, i: number): Promise<void> => {
    const keys = keyBatches[i % keyBatches.length];
    const grads = gradBatches[i % gradBatches.length];
    if (mode !== 'push') {
      const v = await peer.pull(keys);
      if (v.length !== batch * dim) throw new Error(`${cfg.system}: pull returned ${v.length} floats, expected ${batch * dim}`);
      sink += v[i % v.length];
    }
    if (mode !== 'pull') await peer.push(keys, grads);
  };
  emit('CONNECTED', { pid: process.pid });

  let queue: Promise<void> = Promise.resolve();
  const handle = async (line: string): Promise<void> => {
    const m = JSON.parse(line) as { cmd: string; mode?: Mode; ms?: number; from?: number; to?: number };
    switch (m.cmd) {
      case 'fill': {
        const secs = await peer.fill(m.from!, m.to!);
        // check: the pulled rows of a filled table are finite numbers
        const v = await peer.pull(keyBatches[0]);
        for (let i = 0; i < v.length; i++) if (!Number.isFinite(v[i])) throw new Error(`${cfg.system}: non-finite value after filling`);
        emit('FILLED', { secs });
        break;
      }
      case 'warm': {
        const t0 = performance.now();
        let i = 0;
        while (i < 2 || performance.now() - t0 < m.ms!) await step(m.mode!, i++);
        emit('WARM', { steps: i });
        break;
      }
      case 'go': {
        const lat: number[] = [];
        const c0 = process.cpuUsage();
        const t0 = performance.now();
        let t = t0;
        let i = 0;
        while (t - t0 < m.ms!) {
          await step(m.mode!, i++);
          const now = performance.now();
          lat.push(now - t);
          t = now;
        }
        const cu = process.cpuUsage(c0);
        emit('RESULT', { steps: i, secs: (t - t0) / 1000, p50Ms: percentile(lat, 50), p99Ms: percentile(lat, 99), cpuMs: (cu.user + cu.system) / 1000 });
        break;
      }
      case 'quit':
        await peer.close();
        if (sink === 42.4242) log('unlikely');
        process.exit(0);
        break;
      default:
        throw new Error(`unknown command ${line}`);
    }
  };
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    queue = queue
      .then(() => handle(line))
      .catch((e) => {
        log(`${cfg.system} worker ${cfg.workerIndex}: ${(e as Error)?.stack ?? e}`);
        emit('ERROR', { message: String((e as Error)?.message ?? e) });
        process.exit(1);
      });
  });
  rl.on('close', () => process.exit(70));
}

main().catch((e) => {
  log(`worker failed: ${(e as Error)?.stack ?? e}`);
  emit('ERROR', { message: String((e as Error)?.message ?? e) });
  process.exit(1);
});
