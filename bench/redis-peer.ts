// The Redis baseline of the service benchmark (bench/service.ts): an
// embedding table kept in one or more real redis-server processes, read and
// updated through ioredis, with the optimizer applied in the client.
//
// Layout: one Redis string per row, under an ASCII key = a one-letter
// namespace + the key in decimal:
//   SGD:      's<key>' -> the row's 64 float32 weights, 256 binary bytes
//   Adagrad:  'a<key>' -> weights || accumulator, 512 binary bytes
// Both choices favour Redis: ioredis's cost is per key and per argument far
// more than per byte (measured on this machine: MGET of 4,096 values takes
// about the same time at 256 and at 512 bytes a value, and Buffer keys are
// slower than string keys because they put a command into ioredis's buffer
// mode), so Adagrad reads and writes one key a row, not two, at the price of
// pulls reading 512 bytes a row. With several servers a key lives on
// redis #splitmix64(key) mod servers, the function pmemps uses (shardOfHalves in
// worker/shard.ts).
//
// pull = per server, one pipeline of MGETs (CHUNK keys each), servers in
//        parallel; rows back in the caller's order.
// push = sum the gradients of duplicate keys, then per server: one pipeline
//        of MGETs of weights (+ accumulators), the update in float32 in the
//        client, one pipeline of MSETs; servers in parallel. Two round trips
//        per server; not atomic (a concurrent push to the same row can be
//        lost; pmemps applies pushes atomically).
//
// Also here: starting a redis-server on a loopback port, and filling a table.

import { ChildProcess, spawn } from 'node:child_process';
import Redis from 'ioredis';
import { shardOfHalves } from '../worker/shard';

export type RedisOptimizer = { type: 'sgd'; lr: number } | { type: 'adagrad'; lr: number; eps?: number; initialAccumulator?: number };

export interface RedisPeerOptions {
  dim: number;
  optimizer: RedisOptimizer;
  /** Keys per MGET/MSET command (default 512). */
  chunk?: number;
}

/** Per server: the row indices (into the unique rows of a push) or key indices (a pull) it holds. */
function split(lo: Uint32Array, hi: Uint32Array, n: number, shards: number): Int32Array[] {
  if (shards === 1) {
    const a = new Int32Array(n);
    for (let i = 0; i < n; i++) a[i] = i;
    return [a];
  }
  const of = new Uint8Array(n);
  const counts = new Int32Array(shards);
  for (let i = 0; i < n; i++) {
    of[i] = shardOfHalves(lo[i], hi[i], shards);
    counts[of[i]]++;
  }
  const out = Array.from(counts, (c) => new Int32Array(c));
  const fill = new Int32Array(shards);
  for (let i = 0; i < n; i++) out[of[i]][fill[of[i]]++] = i;
  return out;
}

export class RedisPeer {
  private readonly dim: number;
  private readonly rowBytes: number;
  private readonly chunk: number;
  private readonly opt: RedisOptimizer;
  private readonly tag: string;
  /** Bytes of a stored value: weights, or weights || accumulator. */
  private readonly valBytes: number;

  private constructor(
    private readonly clients: Redis[],
    o: RedisPeerOptions,
  ) {
    this.dim = o.dim;
    this.rowBytes = o.dim * 4;
    this.chunk = o.chunk ?? 512;
    this.opt = o.optimizer;
    this.tag = o.optimizer.type === 'sgd' ? 's' : 'a';
    this.valBytes = o.optimizer.type === 'sgd' ? this.rowBytes : 2 * this.rowBytes;
  }

  static async connect(endpoints: string[], o: RedisPeerOptions): Promise<RedisPeer> {
    const clients = endpoints.map((e) => {
      const i = e.lastIndexOf(':');
      return new Redis({ host: e.slice(0, i), port: Number(e.slice(i + 1)), lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false });
    });
    await Promise.all(clients.map((c) => c.connect()));
    return new RedisPeer(clients, o);
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.quit().catch(() => c.disconnect())));
  }

  /** Redis keys of the given rows of a packed LE uint64 key buffer (halves as from halves()). */
  private redisKeys(lo: Uint32Array, hi: Uint32Array, idx: ArrayLike<number>): string[] {
    const out = new Array<string>(idx.length);
    for (let j = 0; j < idx.length; j++) out[j] = this.tag + (hi[idx[j]] * 4294967296 + lo[idx[j]]);
    return out;
  }

  private halves(keys: Buffer): { lo: Uint32Array; hi: Uint32Array; n: number } {
    const n = keys.length / 8;
    const lo = new Uint32Array(n);
    const hi = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      lo[i] = keys.readUInt32LE(i * 8);
      hi[i] = keys.readUInt32LE(i * 8 + 4);
      if (hi[i] >= 1 << 21) throw new Error('redis-peer: keys must be below 2^53 (decimal key names)');
    }
    return { lo, hi, n };
  }

  /** One pipeline of MGETs; returns the values in order, failing on a missing row. */
  private async mget(client: Redis, rkeys: string[]): Promise<Buffer[]> {
    const p = client.pipeline();
    for (let i = 0; i < rkeys.length; i += this.chunk) p.mgetBuffer(...rkeys.slice(i, i + this.chunk));
    const res = (await p.exec()) ?? [];
    const out: Buffer[] = [];
    for (const [err, vals] of res) {
      if (err) throw err;
      for (const v of vals as Array<Buffer | null>) {
        if (v === null || v.length !== this.valBytes) throw new Error(`redis-peer: a row is missing or has ${v?.length ?? 0} bytes (table not filled?)`);
        out.push(v);
      }
    }
    return out;
  }

  /** One pipeline of MSETs of key/value pairs. */
  private async mset(client: Redis, rkeys: string[], vals: Buffer[]): Promise<void> {
    const p = client.pipeline();
    for (let i = 0; i < rkeys.length; i += this.chunk) {
      const args: Array<string | Buffer> = [];
      for (let j = i; j < Math.min(rkeys.length, i + this.chunk); j++) args.push(rkeys[j], vals[j]);
      p.mset(...args);
    }
    const res = (await p.exec()) ?? [];
    for (const [err] of res) if (err) throw err;
  }

  /** keys: packed LE uint64. Returns keys x dim float32 in the order of the keys. */
  async pull(keys: Buffer): Promise<Float32Array> {
    const { lo, hi, n } = this.halves(keys);
    const out = Buffer.allocUnsafe(n * this.rowBytes);
    const parts = split(lo, hi, n, this.clients.length);
    await Promise.all(
      parts.map(async (idx, s) => {
        if (idx.length === 0) return;
        const vals = await this.mget(this.clients[s], this.redisKeys(lo, hi, idx));
        for (let j = 0; j < idx.length; j++) vals[j].copy(out, idx[j] * this.rowBytes, 0, this.rowBytes);
      }),
    );
    return new Float32Array(out.buffer, out.byteOffset, n * this.dim);
  }

  /** keys: packed LE uint64; grads: keys x dim float32 (duplicate keys' gradients are summed). */
  async push(keys: Buffer, grads: Float32Array): Promise<void> {
    const dim = this.dim;
    const { lo, hi, n } = this.halves(keys);
    if (grads.length !== n * dim) throw new Error(`redis-peer: ${grads.length} grads for ${n} keys of dim ${dim}`);
    // unique keys, first occurrence order; gradients of repeats summed in float32
    const seen = new Map<number, number>();
    const first = new Int32Array(n);
    const g = new Float32Array(n * dim);
    let u = 0;
    for (let i = 0; i < n; i++) {
      const k = hi[i] * 4294967296 + lo[i]; // exact below 2^53; the benchmark's keys are < 2^32
      const at = seen.get(k);
      if (at === undefined) {
        seen.set(k, u);
        first[u] = i;
        g.set(grads.subarray(i * dim, (i + 1) * dim), u * dim);
        u++;
      } else {
        for (let j = 0; j < dim; j++) g[at * dim + j] += grads[i * dim + j];
      }
    }
    const ulo = new Uint32Array(u);
    const uhi = new Uint32Array(u);
    for (let r = 0; r < u; r++) {
      ulo[r] = lo[first[r]];
      uhi[r] = hi[first[r]];
    }
    const parts = split(ulo, uhi, u, this.clients.length);
    await Promise.all(parts.map((rows, s) => (rows.length ? this.pushShard(this.clients[s], this.redisKeys(ulo, uhi, rows), rows, g) : undefined)));
  }

  /** rkeys[j] is the Redis key of unique row rows[j], whose summed gradient is g[rows[j] * dim ..]. */
  private async pushShard(client: Redis, rkeys: string[], rows: Int32Array, g: Float32Array): Promise<void> {
    const dim = this.dim;
    const vb = this.valBytes;
    const m = rows.length;
    const vals = await this.mget(client, rkeys);
    // values copied into one aligned buffer to compute on
    const buf = Buffer.allocUnsafe(m * vb);
    for (let j = 0; j < m; j++) vals[j].copy(buf, j * vb);
    const f = new Float32Array(buf.buffer, buf.byteOffset, (m * vb) / 4);
    const lr = this.opt.lr;
    if (this.opt.type === 'sgd') {
      for (let j = 0; j < m; j++) {
        const gb = rows[j] * dim;
        const wb = j * dim;
        for (let d = 0; d < dim; d++) f[wb + d] -= lr * g[gb + d];
      }
    } else {
      // torch.optim.Adagrad: sum += g*g; w -= lr * g / (sqrt(sum) + eps), in float32
      const eps = this.opt.eps ?? 1e-10;
      for (let j = 0; j < m; j++) {
        const gb = rows[j] * dim;
        const wb = j * 2 * dim;
        const ab = wb + dim;
        for (let d = 0; d < dim; d++) {
          const gd = g[gb + d];
          f[ab + d] += Math.fround(gd * gd);
          f[wb + d] -= Math.fround((lr * gd) / (Math.sqrt(f[ab + d]) + eps));
        }
      }
    }
    const out = new Array<Buffer>(m);
    for (let j = 0; j < m; j++) out[j] = buf.subarray(j * vb, (j + 1) * vb);
    await this.mset(client, rkeys, out);
  }

  /**
   * Writes the initial rows of keys from..to-1 (weights from `init`, reused
   * round-robin; accumulators at initialAccumulator), `inflight` batches of
   * `batch` keys at a time. Returns the seconds taken.
   */
  async fill(from: number, to: number, init: Float32Array, batch = 4096, inflight = 4): Promise<number> {
    const t0 = performance.now();
    const dim = this.dim;
    const rb = this.rowBytes;
    const initRows = init.length / dim;
    const initBuf = Buffer.from(init.buffer, init.byteOffset, init.byteLength);
    // the stored value of init row r: weights (and the accumulator at initialAccumulator)
    const values = Buffer.alloc(initRows * this.valBytes);
    for (let r = 0; r < initRows; r++) initBuf.copy(values, r * this.valBytes, r * rb, (r + 1) * rb);
    if (this.opt.type === 'adagrad' && this.opt.initialAccumulator) {
      const vf = new Float32Array(values.buffer, values.byteOffset, values.length / 4);
      for (let r = 0; r < initRows; r++) vf.fill(this.opt.initialAccumulator, r * 2 * dim + dim, (r + 1) * 2 * dim);
    }
    let next = from;
    const lane = async (): Promise<void> => {
      while (next < to) {
        const start = next;
        const n = Math.min(batch, to - start);
        next += n;
        const keys = Buffer.alloc(n * 8);
        for (let i = 0; i < n; i++) keys.writeUInt32LE((start + i) >>> 0, i * 8);
        const { lo, hi } = this.halves(keys);
        const parts = split(lo, hi, n, this.clients.length);
        await Promise.all(
          parts.map((idx, s) => {
            if (idx.length === 0) return undefined;
            const rv = Array.from(idx, (i) => {
              const r = (start + i) % initRows;
              return values.subarray(r * this.valBytes, (r + 1) * this.valBytes);
            });
            return this.mset(this.clients[s], this.redisKeys(lo, hi, idx), rv);
          }),
        );
      }
    };
    await Promise.all(Array.from({ length: inflight }, lane));
    return (performance.now() - t0) / 1000;
  }

  /** Keys and memory of each server (INFO), for the notes. */
  async info(): Promise<Array<{ keys: number; usedMemory: number }>> {
    return Promise.all(
      this.clients.map(async (c) => {
        const keys = await c.dbsize();
        const mem = /used_memory:(\d+)/.exec(await c.info('memory'));
        return { keys, usedMemory: mem ? Number(mem[1]) : NaN };
      }),
    );
  }
}

// ---------------------------------------------------------------- the server process

export interface RedisServer {
  proc: ChildProcess;
  port: number;
  endpoint: string;
  version: string;
}

/**
 * Starts `redis-server --port P --save '' --appendonly no --bind 127.0.0.1`
 * (no persistence, loopback only; its working directory is `dir`) and waits
 * until it answers PING.
 */
export async function startRedisServer(bin: string, port: number, dir: string, onSpawn?: (p: ChildProcess) => void): Promise<RedisServer> {
  const args = [
    '--port',
    String(port),
    '--save',
    '',
    '--appendonly',
    'no',
    '--bind',
    '127.0.0.1',
    '--dir',
    dir,
    '--daemonize',
    'no',
    '--loglevel',
    'warning',
    '--protected-mode',
    'yes',
  ];
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir });
  onSpawn?.(proc);
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  let exited = false;
  proc.on('exit', () => (exited = true));
  const t0 = performance.now();
  for (;;) {
    if (exited) throw new Error(`redis-server on port ${port} exited at start: ${out.trim().split('\n').slice(-3).join(' / ')}`);
    const c = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null });
    c.on('error', () => undefined);
    try {
      await c.connect();
      await c.ping();
      const v = /redis_version:(\S+)/.exec(await c.info('server'))?.[1] ?? '?';
      c.disconnect();
      return { proc, port, endpoint: `127.0.0.1:${port}`, version: v };
    } catch {
      c.disconnect();
    }
    if (performance.now() - t0 > 20_000) throw new Error(`redis-server on port ${port} did not answer within 20 s: ${out.trim()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
