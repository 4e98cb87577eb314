// Prometheus metrics of one pserver (--metrics-bind HOST:PORT): every
// pmemps_* metric is defined here and served as text at /metrics by a plain
// node:http server of its own (README, "Metrics", lists them).
//
// Cost model: the data path pays only what must be counted as it happens —
// per call one histogram observe on a label child cached per method and code
// (gRPC server interceptor), per Pull/Push one counter increment on a child
// cached per table (service.ts). Everything the shard already knows (cache,
// pool, checkpoint ids, incarnation) is read once per scrape, in the
// metrics' collect().
//
// Label cardinality is bounded: method by the services' methods, code by the
// 17 gRPC codes, table by the engine's live tables (at most 256, kMaxTables
// in native/src/layout.h; a dropped table's series disappear at the next
// scrape), phase by {prepare, commit}.
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { scratchStats, type EngineStats, type PrepareTimes } from '../native/engine';
import { splitHostPort } from './config';
import { log } from './log';
import type { Shard } from './shard';

/** What the handlers of service.ts report as they serve; a no-op without --metrics-bind. */
export interface ServiceMetrics {
  /** Rows of a Pull that succeeded. */
  pulled(table: string, rows: number): void;
  /** Rows of a Push that was applied (not a duplicate). */
  pushed(table: string, rows: number): void;
  /** A Push or PushDense answered as a duplicate by the exactly-once record. */
  duplicate(): void;
  /** A checkpoint phase that succeeded, and how long it took from performance.now() = t0. */
  checkpointPhase(phase: 'prepare' | 'commit', t0: number): void;
}

export const NO_METRICS: ServiceMetrics = {
  pulled: () => undefined,
  pushed: () => undefined,
  duplicate: () => undefined,
  checkpointPhase: () => undefined,
};

/** --metrics-bind could not be served (a bad address or a port in use): pserver exits with code 2, nothing opened. */
export class MetricsBindError extends Error {
  override name = 'MetricsBindError';
}

// Seconds; a 4,096-key pull on loopback takes about a millisecond, a
// checkpoint of a large dirty set seconds.
const CALL_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const CHECKPOINT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

const CODE_NAMES: string[] = [];
for (const [name, code] of Object.entries(grpc.status)) if (typeof code === 'number') CODE_NAMES[code] = name;

interface Sample {
  stats: EngineStats;
  scratch: ReturnType<typeof scratchStats>;
  tables: Set<string>;
  incarnation: number;
  needsRestore: boolean;
}

type Observer = { observe(v: number): void };

export class Metrics implements ServiceMetrics {
  private readonly registry = new Registry();
  private shard: Shard | null = null;
  // One engine read per scrape, shared by every collect() of that scrape.
  private sampled: Sample | null | undefined;

  private readonly rowsPulled: Counter<'table'>;
  private readonly rowsPushed: Counter<'table'>;
  private readonly pulledBy = new Map<string, Counter.Internal>();
  private readonly pushedBy = new Map<string, Counter.Internal>();
  private readonly duplicates: Counter;
  private readonly calls: Histogram<'service' | 'method' | 'code'>;
  // Per gRPC path, the histogram's child per status code, made on first use.
  private readonly callChildren = new Map<string, { service: string; method: string; byCode: Observer[] }>();
  private readonly phases: Record<'prepare' | 'commit', Observer>;

  private constructor(
    private readonly http: http.Server,
    readonly port: number,
    version: string,
  ) {
    const registers = [this.registry];
    const sample = (): Sample | null => this.sample();
    const stat = (f: (s: Sample) => number) =>
      function (this: Gauge) {
        const s = sample();
        if (s) this.set(f(s));
      };
    // A counter the engine keeps: set to its total at each scrape.
    const engineCounter = (f: (s: Sample) => number) =>
      function (this: Counter) {
        const s = sample();
        if (!s) return;
        this.reset();
        this.inc(f(s));
      };
    const prune = (by: Map<string, Counter.Internal>) =>
      function (this: Counter<'table'>) {
        const s = sample();
        if (!s) return;
        for (const t of by.keys())
          if (!s.tables.has(t)) {
            by.delete(t);
            this.remove(t);
          }
      };

    this.rowsPulled = new Counter({
      name: 'pmemps_rows_pulled_total',
      help: 'Rows (keys) served by Pull calls that succeeded, per table',
      labelNames: ['table'],
      registers,
      collect: prune(this.pulledBy),
    });
    this.rowsPushed = new Counter({
      name: 'pmemps_rows_pushed_total',
      help: 'Rows (keys) of Push calls applied (duplicates not counted), per table',
      labelNames: ['table'],
      registers,
      collect: prune(this.pushedBy),
    });
    this.duplicates = new Counter({
      name: 'pmemps_duplicate_pushes_total',
      help: 'Push and PushDense calls the exactly-once record answered as already applied (a retry), nothing applied again',
      registers,
    });
    this.calls = new Histogram({
      name: 'pmemps_rpc_duration_seconds',
      help: 'gRPC calls from arrival to status, per service, method and status code (CANCELLED / DEADLINE_EXCEEDED: the call ended without an answer)',
      labelNames: ['service', 'method', 'code'],
      buckets: CALL_BUCKETS,
      registers,
    });
    const ckpt = new Histogram({
      name: 'pmemps_checkpoint_phase_seconds',
      help: 'Checkpoint phases that succeeded on this shard, per phase',
      labelNames: ['phase'],
      buckets: CHECKPOINT_BUCKETS,
      registers,
    });
    this.phases = { prepare: ckpt.labels('prepare'), commit: ckpt.labels('commit') };

    new Gauge({ name: 'pmemps_cache_bytes', help: 'Bytes of rows held by the DRAM row cache', registers, collect: stat((s) => s.stats.cacheBytes) });
    new Gauge({
      name: 'pmemps_cache_budget_bytes',
      help: 'Hard DRAM budget of the row cache (--cache-mb)',
      registers,
      collect: stat((s) => s.stats.cacheBudget),
    });
    new Gauge({ name: 'pmemps_cache_rows', help: 'Rows held by the row cache', registers, collect: stat((s) => s.stats.cacheRows) });
    new Gauge({
      name: 'pmemps_cache_hit_ratio',
      help: 'Rows pulls found in the cache since the start, over all rows pulled (0 before any); rate() the hits and misses counters for a recent ratio',
      registers,
      collect: stat((s) => (s.stats.hits + s.stats.misses ? s.stats.hits / (s.stats.hits + s.stats.misses) : 0)),
    });
    new Counter({ name: 'pmemps_cache_hits_total', help: 'Rows a pull found in the cache', registers, collect: engineCounter((s) => s.stats.hits) });
    new Counter({
      name: 'pmemps_cache_misses_total',
      help: 'Rows a pull did not find in the cache (read from the pool, or initial rows)',
      registers,
      collect: engineCounter((s) => s.stats.misses),
    });
    new Counter({
      name: 'pmemps_cache_evictions_total',
      help: 'Rows evicted from the cache to stay within its budget',
      registers,
      collect: engineCounter((s) => s.stats.evictions),
    });
    new Counter({
      name: 'pmemps_cache_writebacks_total',
      help: 'Dirty rows written back from the cache to the pool',
      registers,
      collect: engineCounter((s) => s.stats.writebacks),
    });
    new Counter({
      name: 'pmemps_rows_saturated_total',
      help: 'Rows stored saturated at +-3.4e38: two pushes of the row, each checked alone, overflowed float32 together',
      registers,
      collect: engineCounter((s) => s.stats.rowsSaturated),
    });
    new Gauge({
      name: 'pmemps_scratch_bytes',
      help: 'Bytes of working memory held by pulls and pushes too large for the arrays each engine thread keeps',
      registers,
      collect: stat((s) => s.scratch.usedBytes),
    });
    new Gauge({
      name: 'pmemps_scratch_budget_bytes',
      help: 'Budget of that working memory (--scratch-mb); a call larger than the whole budget runs alone',
      registers,
      collect: stat((s) => s.scratch.budgetBytes),
    });
    new Counter({
      name: 'pmemps_scratch_waits_total',
      help: 'Large pulls and pushes that waited for working memory since the start',
      registers,
      collect: engineCounter((s) => s.scratch.waits),
    });
    new Gauge({ name: 'pmemps_pool_bytes', help: 'Size of the libpmemobj pool', registers, collect: stat((s) => s.stats.poolBytes) });
    new Gauge({ name: 'pmemps_pool_used_bytes', help: 'Bytes of the pool allocated', registers, collect: stat((s) => s.stats.poolUsedBytes) });
    new Gauge({
      name: 'pmemps_log_bytes',
      help: "Pool bytes held by the version log's segments (logged pools; 0 in place); compaction works it down toward twice the rows' records plus four segments",
      registers,
      collect: stat((s) => s.stats.logBytes),
    });
    new Counter({
      name: 'pmemps_log_segments_freed_total',
      help: 'Version log segments compaction freed since the start',
      registers,
      collect: engineCounter((s) => s.stats.logSegmentsFreed),
    });
    new Counter({
      name: 'pmemps_log_copied_bytes_total',
      help: 'Bytes of live row versions compaction copied forward since the start (what reclaiming the rest cost)',
      registers,
      collect: engineCounter((s) => s.stats.logBytesCopied),
    });
    new Gauge({
      name: 'pmemps_pool_copy_room_bytes',
      help: 'Free pool bytes reserved for copies of rows a checkpoint has yet to write (PMEM only); given back when the pool fills',
      registers,
      collect: stat((s) => s.stats.copyRoomBytes),
    });
    new Gauge({
      name: 'pmemps_checkpoint_committed_id',
      help: 'Id of the last committed checkpoint (0: none)',
      registers,
      collect: stat((s) => s.stats.committed ?? 0),
    });
    new Gauge({
      name: 'pmemps_checkpoint_prepared_id',
      help: 'Id of the checkpoint prepared and awaiting commit or abort (0: none)',
      registers,
      collect: stat((s) => s.stats.prepared ?? 0),
    });
    new Gauge({
      name: 'pmemps_checkpoint_push_wait_max_seconds',
      help: 'Longest time a push waited on a running checkpoint since the start',
      registers,
      collect: stat((s) => s.stats.maxPushWaitUs / 1e6),
    });
    const phases: [string, (p: PrepareTimes) => number][] = [
      ['flush', (p) => p.flushUs],
      ['flush_slots', (p) => p.slotsUs],
      ['log_sync', (p) => p.logSyncUs],
      ['persist', (p) => p.persistUs],
      ['publish', (p) => p.publishUs],
    ];
    new Gauge({
      name: 'pmemps_checkpoint_last_prepare_seconds',
      help: "The last prepare's time by phase: flush (of which flush_slots), log_sync, persist, publish",
      labelNames: ['phase'],
      registers,
      collect() {
        const s = sample();
        if (!s) return;
        for (const [phase, get] of phases) this.set({ phase }, get(s.stats.lastPrepare) / 1e6);
      },
    });
    new Gauge({
      name: 'pmemps_needs_restore',
      help: '1 while the shard came back after a crash and refuses writes until a Restore, else 0',
      registers,
      collect: stat((s) => (s.needsRestore ? 1 : 0)),
    });
    new Gauge({
      name: 'pmemps_incarnation',
      help: "The shard's incarnation (Status.incarnation): changes at every start and restore",
      registers,
      collect: stat((s) => s.incarnation),
    });
    new Gauge({ name: 'pmemps_build_info', help: 'Always 1; the version as a label', labelNames: ['version'], registers }).set({ version }, 1);
    collectDefaultMetrics({ register: this.registry, prefix: 'pmemps_' });
  }

  /** Serves /metrics on HOST:PORT; rejects with MetricsBindError (nothing left open) when it cannot. Answers 503 until watch(). */
  static async listen(bind: string, version: string): Promise<Metrics> {
    // --metrics-bind was checked with the rest of the configuration.
    const hp = splitHostPort(bind);
    if (!hp) throw new MetricsBindError(`--metrics-bind must be HOST:PORT, got "${bind}"`);
    const { host, port } = hp;
    let self: Metrics | null = null;
    const server = http.createServer((req, res) => {
      if (self) self.serve(req, res);
      else res.writeHead(503).end();
    });
    // Prometheus keeps one connection and scrapes every few seconds: a few
    // connections and short timeouts bound what a stray client can hold.
    server.maxConnections = 16;
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          new MetricsBindError(
            e.code === 'EADDRINUSE'
              ? `--metrics-bind ${bind}: the port is in use by another process; choose another port (or 0 for any free one)`
              : e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN'
                ? `--metrics-bind ${bind}: no such address on this host; use one of its addresses (e.g. 127.0.0.1)`
                : `--metrics-bind ${bind}: cannot listen (${e.code ?? e.message})`,
          ),
        ),
      );
      server.listen(port, host, resolve);
    });
    self = new Metrics(server, (server.address() as AddressInfo).port, version);
    return self;
  }

  /** From now on gauges read this shard. */
  watch(shard: Shard): void {
    this.shard = shard;
  }

  /** Stops serving; open scrape connections are closed. */
  close(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeAllConnections();
    });
  }

  // ------------------------------------------------------------ the data path

  pulled(table: string, rows: number): void {
    let c = this.pulledBy.get(table);
    if (!c) this.pulledBy.set(table, (c = this.rowsPulled.labels(table)));
    c.inc(rows);
  }

  pushed(table: string, rows: number): void {
    let c = this.pushedBy.get(table);
    if (!c) this.pushedBy.set(table, (c = this.rowsPushed.labels(table)));
    c.inc(rows);
  }

  duplicate(): void {
    this.duplicates.inc();
  }

  checkpointPhase(phase: 'prepare' | 'commit', t0: number): void {
    this.phases[phase].observe((performance.now() - t0) / 1000);
  }

  /**
   * Times every call from arrival to the status it ends with. First in the
   * server's interceptor list, it sees the statuses other interceptors send
   * (transport limits, authentication) as well as the handlers'.
   */
  readonly interceptor: grpc.ServerInterceptor = (method, call) => {
    const t0 = performance.now();
    const byCode = this.childrenOf(method.path);
    let done = false;
    const end = (code: number): void => {
      if (done) return;
      done = true;
      let o = byCode[code];
      if (!o) {
        const m = this.callChildren.get(method.path)!;
        o = byCode[code] = this.calls.labels(m.service, m.method, CODE_NAMES[code] ?? 'UNKNOWN');
      }
      o.observe((performance.now() - t0) / 1000);
    };
    return new grpc.ServerInterceptingCall(call, {
      // grpc-js ends a call without passing a status through the
      // interceptors when the client cancels or the deadline passes.
      start: (next) => next({ onCancel: () => end(Number(call.getDeadline()) <= Date.now() ? grpc.status.DEADLINE_EXCEEDED : grpc.status.CANCELLED) }),
      sendStatus: (status, next) => {
        end(status.code);
        next(status);
      },
    });
  };

  private childrenOf(path: string): Observer[] {
    let m = this.callChildren.get(path);
    if (!m) {
      const slash = path.lastIndexOf('/');
      m = { service: path.slice(1, slash), method: path.slice(slash + 1), byCode: [] };
      this.callChildren.set(path, m);
    }
    return m.byCode;
  }

  // ------------------------------------------------------------ scrapes

  private sample(): Sample | null {
    if (this.sampled !== undefined) return this.sampled;
    const shard = this.shard;
    if (!shard || shard.closed) return (this.sampled = null);
    return (this.sampled = {
      stats: shard.stats(),
      scratch: scratchStats(),
      tables: new Set(shard.listTables().map((t) => t.name)),
      incarnation: shard.incarnation,
      needsRestore: shard.needsRestore,
    });
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    this.sampled = undefined;
    this.registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': this.registry.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (e) => {
        log.error({ err: e }, 'metrics scrape failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`scrape failed: ${(e as Error).message}\n`);
      },
    );
  }
}
