// Prometheus metrics (server/metrics.ts, --metrics-bind) of a real pserver
// process: a seeded workload through the SDK and a raw gRPC client, scraped
// over HTTP before and after; the counters must move by exactly what was
// sent. Both ports are 0 and read from the server's log, so nothing races
// for a port.
import * as assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { parameterServerService } from '../proto/load';
import { PsClient } from '../worker';
import { poolDirs, prng } from './helpers';

const PSERVER = path.join(__dirname, '..', 'server', 'pserver.js');
const dirOf = poolDirs(after);
const CACHE_MB = 8;

interface Running {
  proc: ChildProcess;
  port: number;
  metricsPort: number;
  exit: Promise<number | null>;
}

/** Starts pserver on port 0 with metrics on port 0; resolves with both ports once it serves (from its JSON log). */
function startPserver(dir: string, extra: string[] = []): Promise<Running> {
  const proc = spawn(
    process.execPath,
    [
      PSERVER,
      '--bind',
      '127.0.0.1:0',
      '--metrics-bind',
      '127.0.0.1:0',
      '--pmem',
      dir,
      '--pool-size',
      '64M',
      '--cache-mb',
      String(CACHE_MB),
      '--log-level',
      'info',
      ...extra,
    ],
    { env: { ...process.env, PMEM_IS_PMEM_FORCE: '1', PMEMPS_LOG_PRETTY: '0' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exit = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve, reject) => {
    let metricsPort = 0;
    readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
      const ev = JSON.parse(line) as { msg: string; port?: number; metricsPort?: number };
      if (ev.metricsPort !== undefined) metricsPort = ev.metricsPort;
      if (ev.msg === 'serving') resolve({ proc, port: ev.port!, metricsPort, exit });
    });
    void exit.then((code) => reject(new Error(`pserver exited (${code}) before serving: ${stderr}`)));
  });
}

/** Stops a pserver startPserver started, unless it already exited. */
async function stopPserver(r: Running | undefined): Promise<void> {
  if (!r || r.proc.exitCode !== null) return;
  r.proc.kill('SIGTERM');
  await r.exit;
}

/** Runs pserver with these arguments to its exit: code and stderr. */
function runPserver(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string }> {
  const proc = spawn(process.execPath, [PSERVER, ...args], { env: { ...process.env, PMEM_IS_PMEM_FORCE: '1', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => proc.once('exit', (code) => resolve({ code, stderr })));
}

function get(port: number, urlPath: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

type Samples = Map<string, number>;
const key = (name: string, labels: Record<string, string> = {}): string =>
  `${name}{${Object.keys(labels)
    .sort()
    .map((k) => `${k}=${JSON.stringify(labels[k])}`)
    .join(',')}}`;

/** Parses the Prometheus text format strictly: every sample belongs to a family with # HELP and # TYPE, every line is well-formed. */
function parseExposition(text: string): Samples {
  const out: Samples = new Map();
  const typed = new Map<string, string>();
  const helped = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (m) {
      if (m[1] === 'TYPE') {
        assert.match(m[3], /^(counter|gauge|histogram|summary|untyped)$/, line);
        typed.set(m[2], m[3]);
      } else helped.add(m[2]);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const [, name, body, value] = m;
    const family = typed.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    assert.ok(typed.has(family) && helped.has(family), `${name} has no # TYPE and # HELP`);
    assert.ok(name.startsWith('pmemps_'), `${name} is not a pmemps_ metric`);
    const labels: Record<string, string> = {};
    if (body) {
      const rest = body.replace(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g, (_all, k: string, v: string) => {
        labels[k] = v.replace(/\\(.)/g, (_s, c: string) => (c === 'n' ? '\n' : c));
        return '';
      });
      assert.equal(rest, '', `bad labels in ${line}`);
    }
    // As Prometheus reads values (Go's ParseFloat: NaN and Inf in any case).
    const v = /^[+-]?inf$/i.test(value) ? (value.startsWith('-') ? -Infinity : Infinity) : /^nan$/i.test(value) ? NaN : Number(value);
    assert.ok(!Number.isNaN(v) || /^nan$/i.test(value), `bad value in ${line}`);
    out.set(key(name, labels), v);
  }
  // Every histogram series: its +Inf bucket is its count.
  for (const [k, v] of out) {
    const m = /^(.*)_bucket\{(.*)\}$/.exec(k);
    if (!m || !m[2].includes('le="+Inf"')) continue;
    const rest = m[2].replace(/,?le="\+Inf"/, '').replace(/^,/, '');
    assert.equal(out.get(`${m[1]}_count{${rest}}`), v, `${k} differs from its _count`);
  }
  return out;
}

async function scrape(port: number): Promise<Samples> {
  const r = await get(port, '/metrics');
  assert.equal(r.status, 200);
  assert.match(r.type, /^text\/plain; version=0\.0\.4/);
  return parseExposition(r.body);
}

const v = (s: Samples, name: string, labels?: Record<string, string>): number => s.get(key(name, labels)) ?? 0;
const calls = (s: Samples, method: string, code: string): number =>
  v(s, 'pmemps_rpc_duration_seconds_count', { service: 'pmemps.v1.ParameterServer', method, code });

function keysFrom(from: number, n: number): BigUint64Array {
  return BigUint64Array.from({ length: n }, (_, i) => BigInt(from + i));
}

function unary<T>(client: grpc.Client, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) =>
    (client as unknown as Record<string, (req: unknown, cb: (err: Error | null, res: T) => void) => void>)[method](req, (err: Error | null, res: T) =>
      err ? reject(err) : resolve(res),
    ),
  );
}

describe('metrics of a live pserver (--metrics-bind 127.0.0.1:0)', () => {
  let srv: Running;
  let ps: PsClient;
  let raw: grpc.Client;
  before(async () => {
    srv = await startPserver(path.join(dirOf('metrics'), 'pool'), ['--scratch-mb', '48']);
    ps = await PsClient.connect({ endpoints: [`127.0.0.1:${srv.port}`] });
    const Ctor = parameterServerService();
    raw = new Ctor(`127.0.0.1:${srv.port}`, grpc.credentials.createInsecure());
    await ps.createTable({ name: 't', dim: 8, seed: 1, optimizer: { type: 'sgd', lr: 0.1 }, initializer: { type: 'zeros' } });
    await ps.createTable({ name: 'u', dim: 4, seed: 2, optimizer: { type: 'sgd', lr: 0.1 }, initializer: { type: 'zeros' } });
  });
  after(async () => {
    raw?.close();
    ps?.close();
    await stopPserver(srv);
  });

  test('row counters and call counts move by exactly the workload; a refused call counts under its code and moves no rows', async () => {
    const rand = prng(8);
    const before = await scrape(srv.metricsPort);
    // P pulls and Q pushes of t, distinct keys within each call (the SDK
    // sends each distinct key once), sizes from the seeded generator.
    let pulledT = 0;
    let pushedT = 0;
    const P = 7;
    const Q = 5;
    for (let i = 0; i < P; i++) {
      const n = 1 + Math.floor(rand() * 300);
      await ps.pull('t', keysFrom(i * 1000, n));
      pulledT += n;
    }
    for (let i = 0; i < Q; i++) {
      const n = 1 + Math.floor(rand() * 300);
      await ps.push('t', keysFrom(i * 500, n), new Float32Array(n * 8).fill(0.5));
      pushedT += n;
    }
    await ps.pull('u', keysFrom(0, 13));
    // Refused: a missing table (NOT_FOUND) and gradients of the wrong size (INVALID_ARGUMENT).
    await assert.rejects(unary(raw, 'Pull', { table: 'nope', keys: Buffer.from(keysFrom(0, 5).buffer) }), { code: grpc.status.NOT_FOUND });
    await assert.rejects(unary(raw, 'Push', { table: 't', keys: Buffer.from(keysFrom(0, 5).buffer), grads: Buffer.alloc(4) }), {
      code: grpc.status.INVALID_ARGUMENT,
    });
    // The same push twice under one (worker, seq): applied once, then a duplicate.
    const dup = { table: 't', keys: Buffer.from(keysFrom(9000, 3).buffer), grads: Buffer.alloc(3 * 8 * 4), worker_id: 'metrics-test', seq: 1, incarnation: 0 };
    assert.equal((await unary<{ duplicate: boolean }>(raw, 'Push', dup)).duplicate, false);
    assert.equal((await unary<{ duplicate: boolean }>(raw, 'Push', dup)).duplicate, true);
    const now = await scrape(srv.metricsPort);

    const d = (name: string, labels?: Record<string, string>) => v(now, name, labels) - v(before, name, labels);
    assert.equal(d('pmemps_rows_pulled_total', { table: 't' }), pulledT);
    assert.equal(d('pmemps_rows_pulled_total', { table: 'u' }), 13);
    assert.equal(d('pmemps_rows_pushed_total', { table: 't' }), pushedT + 3);
    assert.equal(d('pmemps_rows_pushed_total', { table: 'u' }), 0);
    assert.equal(now.has(key('pmemps_rows_pulled_total', { table: 'nope' })), false, 'a refused pull makes no series');
    assert.equal(d('pmemps_duplicate_pushes_total'), 1);
    assert.equal(calls(now, 'Pull', 'OK') - calls(before, 'Pull', 'OK'), P + 1);
    assert.equal(calls(now, 'Push', 'OK') - calls(before, 'Push', 'OK'), Q + 2);
    assert.equal(calls(now, 'Pull', 'NOT_FOUND') - calls(before, 'Pull', 'NOT_FOUND'), 1);
    assert.equal(calls(now, 'Push', 'INVALID_ARGUMENT') - calls(before, 'Push', 'INVALID_ARGUMENT'), 1);
    // Latency: the sum of P+1 pull durations is positive and below the time the test took.
    const pullSeconds = v(now, 'pmemps_rpc_duration_seconds_sum', { service: 'pmemps.v1.ParameterServer', method: 'Pull', code: 'OK' });
    assert.ok(pullSeconds > 0 && pullSeconds < process.uptime(), `pull seconds ${pullSeconds}`);
    // Every row served by a pull is one cache lookup, a hit or a miss.
    assert.equal(d('pmemps_cache_hits_total') + d('pmemps_cache_misses_total'), pulledT + 13);
  });

  test('gauges agree with Status; a persist moves the checkpoint id and its phase histograms', async () => {
    const s0 = await scrape(srv.metricsPort);
    const [st0] = await ps.status();
    assert.equal(v(s0, 'pmemps_incarnation'), st0.incarnation);
    assert.equal(v(s0, 'pmemps_needs_restore'), 0);
    assert.equal(v(s0, 'pmemps_cache_budget_bytes'), CACHE_MB * 2 ** 20);
    assert.equal(v(s0, 'pmemps_scratch_budget_bytes'), 48 * 2 ** 20, '--scratch-mb reached the engine');
    assert.equal(v(s0, 'pmemps_scratch_bytes'), 0, 'no large call is running');
    assert.equal(v(s0, 'pmemps_scratch_waits_total'), 0);
    assert.equal(v(s0, 'pmemps_pool_bytes'), st0.pool_bytes);
    assert.ok(v(s0, 'pmemps_pool_used_bytes') > 0 && v(s0, 'pmemps_pool_used_bytes') <= v(s0, 'pmemps_pool_bytes'));
    assert.ok(v(s0, 'pmemps_cache_bytes') <= v(s0, 'pmemps_cache_budget_bytes'));
    const ratio = v(s0, 'pmemps_cache_hit_ratio');
    assert.ok(ratio >= 0 && ratio <= 1);
    assert.equal(v(s0, 'pmemps_build_info', { version: st0.version }), 1);
    assert.ok(s0.has(key('pmemps_process_cpu_seconds_total')), 'process metrics');

    const { id } = await ps.persist({ step: 1 });
    const s1 = await scrape(srv.metricsPort);
    const [st1] = await ps.status();
    assert.equal(st1.committed_id, id);
    assert.equal(v(s1, 'pmemps_checkpoint_committed_id'), id);
    assert.equal(v(s1, 'pmemps_checkpoint_prepared_id'), 0);
    for (const phase of ['prepare', 'commit']) {
      const n = v(s1, 'pmemps_checkpoint_phase_seconds_count', { phase }) - v(s0, 'pmemps_checkpoint_phase_seconds_count', { phase });
      assert.equal(n, 1, `${phase} observed once`);
    }
    assert.equal(calls(s1, 'Checkpoint', 'OK') - calls(s0, 'Checkpoint', 'OK'), 2);
    assert.ok(v(s1, 'pmemps_checkpoint_push_wait_max_seconds') >= 0);
    // The last prepare's phases: within the prepare the histogram observed.
    const prepared = v(s1, 'pmemps_checkpoint_phase_seconds_sum', { phase: 'prepare' }) - v(s0, 'pmemps_checkpoint_phase_seconds_sum', { phase: 'prepare' });
    const last = (phase: string) => v(s1, 'pmemps_checkpoint_last_prepare_seconds', { phase });
    for (const phase of ['flush', 'flush_slots', 'log_sync', 'persist', 'publish'])
      assert.ok(s1.has(key('pmemps_checkpoint_last_prepare_seconds', { phase })) && last(phase) >= 0, phase);
    assert.ok(last('publish') > 0, 'the publish took time');
    assert.ok(last('flush_slots') <= last('flush'));
    assert.ok(last('flush') + last('log_sync') + last('persist') + last('publish') <= prepared, `phases within the prepare's ${prepared} s`);
  });

  test("a dropped table's row series disappear (labels bounded by the live tables)", async () => {
    assert.ok((await scrape(srv.metricsPort)).has(key('pmemps_rows_pulled_total', { table: 'u' })));
    await ps.dropTable('u');
    const s = await scrape(srv.metricsPort);
    assert.equal(s.has(key('pmemps_rows_pulled_total', { table: 'u' })), false);
    assert.ok(s.has(key('pmemps_rows_pulled_total', { table: 't' })));
  });

  test('only /metrics is served: 404 elsewhere, 405 for other methods', async () => {
    assert.equal((await get(srv.metricsPort, '/')).status, 404);
    assert.equal((await get(srv.metricsPort, '/metricsx')).status, 404);
    assert.equal((await get(srv.metricsPort, '/metrics', 'POST')).status, 405);
  });

  test('SIGTERM stops the metrics endpoint with the server (exit 0)', async () => {
    srv.proc.kill('SIGTERM');
    assert.equal(await srv.exit, 0);
    await assert.rejects(get(srv.metricsPort, '/metrics'), { code: 'ECONNREFUSED' });
  });
});

describe("a logged pool's version log in the metrics", () => {
  const srvForLog = {} as { inPlace: Running; logged: Running };
  before(async () => {
    srvForLog.inPlace = await startPserver(path.join(dirOf('metrics-inplace'), 'pool'), ['--pool-layout', 'inplace']);
    srvForLog.logged = await startPserver(path.join(dirOf('metrics-logged'), 'pool'), ['--pool-layout', 'logged']);
  });
  after(async () => {
    await stopPserver(srvForLog.inPlace);
    await stopPserver(srvForLog.logged);
  });
  test('pmemps_log_bytes is the log of a logged pool (0 in place), and compaction has its two counters', async () => {
    const inPlace = await scrape(srvForLog.inPlace.metricsPort);
    const logged = await scrape(srvForLog.logged.metricsPort);
    assert.equal(v(inPlace, 'pmemps_log_bytes'), 0, 'an in-place pool has no log');
    const ps = await PsClient.connect({ endpoints: [`127.0.0.1:${srvForLog.logged.port}`] });
    try {
      await ps.createTable({ name: 'l', dim: 16, seed: 3, optimizer: { type: 'adagrad', lr: 0.1 }, initializer: { type: 'zeros' } });
      const rand = prng(0x109);
      const keys = BigUint64Array.from({ length: 2000 }, (_, i) => BigInt(i * 7 + 1));
      await ps.push(
        'l',
        keys,
        Float32Array.from({ length: keys.length * 16 }, () => rand() - 0.5),
      );
      await ps.persist({ step: 1 });
    } finally {
      ps.close();
    }
    const after = await scrape(srvForLog.logged.metricsPort);
    const log = v(after, 'pmemps_log_bytes');
    // The checkpoint wrote 2,000 records of 16 weights and 16 Adagrad sums into the log's segments.
    assert.ok(log >= 2000 * 32 * 4, `pmemps_log_bytes ${log} holds the checkpoint's records`);
    assert.ok(log <= v(after, 'pmemps_pool_used_bytes'), 'within the pool');
    assert.ok(v(logged, 'pmemps_log_bytes') < log, 'grew with the checkpoint');
    for (const name of ['pmemps_log_segments_freed_total', 'pmemps_log_copied_bytes_total'])
      assert.ok(after.has(key(name)) && v(after, name) >= 0, `${name} is exported`);
  });
});

describe('--metrics-bind refused at start: exit 2, a message naming the option, nothing opened', () => {
  for (const bad of ['localhost', '127.0.0.1:65536', ':9464', '127.0.0.1:port']) {
    test(`"${bad}"`, async () => {
      const dir = path.join(dirOf('metrics-bad'), 'pool');
      const r = await runPserver(['--bind', '127.0.0.1:0', '--pmem', dir, '--metrics-bind', bad]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /--metrics-bind must be HOST:PORT/);
      assert.equal(fs.existsSync(dir), false, 'no pool directory made');
    });
  }

  test('PMEMPS_METRICS_BIND is checked alike', async () => {
    const dir = path.join(dirOf('metrics-bad'), 'pool');
    const r = await runPserver(['--bind', '127.0.0.1:0', '--pmem', dir], { PMEMPS_METRICS_BIND: '127.0.0.1' });
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--metrics-bind must be HOST:PORT/);
  });

  test('a port in use', async () => {
    // This test holds the port for the whole run, so the outcome is certain.
    const holder = net.createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
    try {
      const port = (holder.address() as net.AddressInfo).port;
      const dir = path.join(dirOf('metrics-busy'), 'pool');
      const r = await runPserver(['--bind', '127.0.0.1:0', '--pmem', dir, '--metrics-bind', `127.0.0.1:${port}`]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /--metrics-bind 127\.0\.0\.1:\d+: the port is in use/);
      assert.equal(fs.existsSync(dir), false, 'the pool was not opened');
    } finally {
      await new Promise((r) => holder.close(r));
    }
  });
});
