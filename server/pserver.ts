#!/usr/bin/env node
// pserver: one shard of a pmemps cluster.
//
//   pserver --bind 127.0.0.1:7000 --pmem /mnt/pmem0/ps0
//
// Every option can also be set by environment variable (PMEMPS_BIND,
// PMEMPS_PMEM, PMEMPS_CACHE_MB, ...). SIGTERM / SIGINT stop gracefully: the
// server stops accepting calls, finishes those in flight, and closes the
// pool cleanly, so the next start has every acknowledged update.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { DEFAULT_MAX_MESSAGE_MB, FLOW_CONTROL_WINDOW, parameterServerService } from '../proto/load';
import { Barriers } from './barrier';
import { log } from './log';
import { Metrics, MetricsBindError, parseMetricsBind } from './metrics';
import { makeHandlers, serverDefinition, VERSION } from './service';
import { Shard } from './shard';
import { DEFAULT_TRANSPORT_LIMITS, http2ServersOf, TransportGuard, type TransportLimits } from './transport-limits';

const SERVICE_NAME = 'pmemps.v1.ParameterServer';

export interface ServerOptions {
  bind: string;
  pmem: string;
  cacheMb: number;
  poolSizeMb: number;
  maxMessageMb: number;
  drainSeconds: number;
  limits: TransportLimits;
  /** HOST:PORT of the Prometheus /metrics endpoint (server/metrics.ts); none when unset. */
  metricsBind?: string;
}

export function parseOptions(argv: string[]): ServerOptions {
  // Every option also reads PMEMPS_<NAME> (e.g. PMEMPS_CACHE_MB); set
  // explicitly rather than with yargs' env() so that other PMEMPS_ variables
  // (PMEMPS_FAILPOINT in tests) are not taken for unknown options.
  const env = (name: string): string | undefined => process.env[`PMEMPS_${name.toUpperCase().replace(/-/g, '_')}`];
  const num = (name: string, def: number): number => (env(name) !== undefined ? Number(env(name)) : def);
  const D = DEFAULT_TRANSPORT_LIMITS;
  const a = yargs(argv)
    .scriptName('pserver')
    .usage('$0 --bind HOST:PORT --pmem DIR [options]\n\nServes one shard of a pmemps cluster from a libpmemobj pool in DIR.\nEvery option can also be set as PMEMPS_<OPTION> (e.g. PMEMPS_CACHE_MB=4096).')
    .option('bind', { type: 'string', default: env('bind'), describe: 'address to listen on, HOST:PORT' })
    .option('pmem', { type: 'string', default: env('pmem'), describe: 'directory of the pool: a DAX mount, CXL memory, /dev/shm or any filesystem' })
    .option('cache-mb', { type: 'number', default: num('cache-mb', 1024), describe: 'hard DRAM budget of the row cache, MiB' })
    .option('pool-size', { type: 'string', default: env('pool-size') ?? '16G', describe: 'pool size when the pool is created (e.g. 512M, 64G; a bare number is MiB); ignored for an existing pool' })
    .option('max-message-mb', { type: 'number', default: num('max-message-mb', DEFAULT_MAX_MESSAGE_MB), describe: 'largest request or response, MiB' })
    .option('drain-seconds', { type: 'number', default: num('drain-seconds', 30), describe: 'on SIGTERM, how long calls in flight may take before they are cancelled' })
    .option('max-connections', { type: 'number', default: num('max-connections', D.maxConnections), describe: 'connections served at once; more are closed on accept' })
    .option('max-streams', { type: 'number', default: num('max-streams', D.maxStreams), describe: 'concurrent calls per connection (HTTP/2 MAX_CONCURRENT_STREAMS); the SDK uses up to 256 pushes plus pull chunks per server' })
    .option('idle-seconds', { type: 'number', default: num('idle-seconds', D.idleSeconds), describe: 'close a connection without a call for this long (gRPC clients reconnect on their next call)' })
    .option('reply-mb-per-connection', { type: 'number', default: num('reply-mb-per-connection', D.replyMbPerConnection), describe: 'unsent reply bytes one connection may hold, MiB; further pulls wait' })
    .option('reply-mb', { type: 'number', default: num('reply-mb', D.replyMb), describe: 'unsent reply bytes all connections may hold, MiB; further pulls wait' })
    .option('stall-seconds', { type: 'number', default: num('stall-seconds', D.stallSeconds), describe: 'close a connection whose queued replies make no progress for this long; a pull waits at most twice this long for reply budget' })
    .option('request-seconds', { type: 'number', default: num('request-seconds', D.requestSeconds), describe: 'refuse and reset a request whose body has not fully arrived after this long' })
    .option('recv-mb-per-connection', { type: 'number', default: num('recv-mb-per-connection', D.recvMbPerConnection), describe: 'bytes of requests not yet fully arrived one connection may have sent, MiB (above --max-message-mb); over it its newest such requests are refused (UNAVAILABLE)' })
    .option('recv-mb', { type: 'number', default: num('recv-mb', D.recvMb), describe: 'bytes of requests not yet fully arrived all connections may have sent, MiB; over it the newest such requests of the connection holding the most are refused (UNAVAILABLE)' })
    // METRICS (issue 8): --metrics-bind
    .option('metrics-bind', { type: 'string', default: env('metrics-bind'), describe: 'serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port, logged); unset: no metrics' })
    .option('log-level', { type: 'string', default: env('log-level') ?? 'info', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal'], describe: 'log level' })
    .version(VERSION)
    .strict()
    .help()
    .parseSync();
  if (!a.bind) throw new Error('--bind HOST:PORT is required (or PMEMPS_BIND)');
  if (!a.pmem) throw new Error('--pmem DIR is required (or PMEMPS_PMEM)');
  if (!/^[^:]+:\d+$/.test(a.bind) && !/^\[.*\]:\d+$/.test(a.bind)) throw new Error(`--bind must be HOST:PORT, got "${a.bind}"`);
  if (!(a['cache-mb'] >= 1)) throw new Error('--cache-mb must be at least 1');
  if (!(a['max-message-mb'] >= 1 && a['max-message-mb'] <= 2047)) throw new Error('--max-message-mb must be in 1..2047');
  for (const o of ['max-connections', 'max-streams'] as const) if (!(Number.isInteger(a[o]) && a[o] >= 1)) throw new Error(`--${o} must be a positive integer, got ${a[o]}`);
  for (const o of ['idle-seconds', 'reply-mb-per-connection', 'reply-mb', 'stall-seconds', 'request-seconds', 'recv-mb-per-connection', 'recv-mb'] as const)
    if (!(a[o] > 0 && Number.isFinite(a[o]))) throw new Error(`--${o} must be a positive number, got ${a[o]}`);
  // A request of the largest size (plus its 5-byte gRPC header) must be able to arrive.
  if (!(a['recv-mb-per-connection'] > a['max-message-mb']))
    throw new Error(`--recv-mb-per-connection (${a['recv-mb-per-connection']}) must be above --max-message-mb (${a['max-message-mb']}), or no request of the largest size could arrive`);
  if (!(a['recv-mb'] >= a['recv-mb-per-connection'])) throw new Error(`--recv-mb (${a['recv-mb']}) must be at least --recv-mb-per-connection (${a['recv-mb-per-connection']})`);
  if (a['metrics-bind'] !== undefined) parseMetricsBind(a['metrics-bind']);
  log.level = a['log-level'];
  return {
    bind: a.bind as string,
    pmem: a.pmem as string,
    cacheMb: a['cache-mb'],
    poolSizeMb: parseSize(a['pool-size']),
    maxMessageMb: a['max-message-mb'],
    drainSeconds: a['drain-seconds'],
    limits: {
      maxConnections: a['max-connections'],
      maxStreams: a['max-streams'],
      idleSeconds: a['idle-seconds'],
      replyMbPerConnection: a['reply-mb-per-connection'],
      replyMb: a['reply-mb'],
      stallSeconds: a['stall-seconds'],
      requestSeconds: a['request-seconds'],
      recvMbPerConnection: a['recv-mb-per-connection'],
      recvMb: a['recv-mb'],
    },
    metricsBind: a['metrics-bind'],
  };
}

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)i?B?$/i.exec(String(s).trim());
  if (!m) throw new Error(`--pool-size must look like 512M or 64G, got "${s}"`);
  const mul: Record<string, number> = { '': 1, K: 1 / 1024, M: 1, G: 1024, T: 1024 * 1024 };
  const mb = Number(m[1]) * mul[m[2].toUpperCase()];
  if (mb < 16) throw new Error('--pool-size must be at least 16M');
  return mb;
}

// grpc-js has no server option for the HTTP/2 receive window; its http2
// servers are reachable only through a private field. Without it the server
// receives at 64 KiB per round trip (see FLOW_CONTROL_WINDOW).
function widenServerWindow(server: grpc.Server): void {
  const servers = http2ServersOf(server);
  if (!servers) {
    log.warn('cannot widen the HTTP/2 receive window with this grpc-js version: large pushes will be slower');
    return;
  }
  for (const h of servers)
    h.on('session', (session: import('node:http2').ServerHttp2Session) => {
      session.setLocalWindowSize(FLOW_CONTROL_WINDOW);
      session.settings({ initialWindowSize: FLOW_CONTROL_WINDOW });
    });
}

export async function startServer(o: ServerOptions): Promise<{ stop: () => Promise<void>; port: number; metricsPort?: number }> {
  // Bound before the pool is opened: a port in use stops the start with nothing opened.
  const metrics = o.metricsBind !== undefined ? await Metrics.listen(o.metricsBind, VERSION) : null;
  if (metrics) log.info({ metricsBind: o.metricsBind, metricsPort: metrics.port }, 'serving metrics at /metrics');
  fs.mkdirSync(o.pmem, { recursive: true });
  let shard: Shard;
  try {
    shard = new Shard({ dir: o.pmem, cacheMb: o.cacheMb, poolMb: o.poolSizeMb });
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  metrics?.watch(shard);
  const oi = shard.engine.openInfo;
  log.info(
    {
      pmem: o.pmem,
      created: oi.created,
      lastStopClean: shard.lastStopClean,
      isPmem: oi.isPmem,
      committed: oi.committed,
      prepared: oi.prepared,
      incarnation: shard.incarnation,
      lineage: shard.lineage,
      identity: shard.identity(),
    },
    oi.created
      ? 'new pool created'
      : shard.lastStopClean
        ? 'pool reopened after a clean stop: every acknowledged update is here'
        : `pool reopened after a crash: state is checkpoint ${oi.committed ?? 'none (initial rows)'}${oi.prepared ? `; checkpoint ${oi.prepared} is prepared and awaits commit or abort (pushes wait)` : ''}; workers must restore`,
  );
  if (!oi.isPmem) log.warn('the pool is not on persistent memory: flushes use msync (batched); PMEM_IS_PMEM_FORCE=1 only for tests');

  const maxBytes = o.maxMessageMb * 2 ** 20;
  const transport = new TransportGuard(o.limits);
  const transportOptions = transport.serverOptions();
  const server = new grpc.Server({
    'grpc.max_receive_message_length': maxBytes,
    'grpc.max_send_message_length': maxBytes,
    'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW,
    ...transportOptions,
    // The metrics interceptor first: nearest the wire, it sees the statuses the others send.
    interceptors: [...(metrics ? [metrics.interceptor] : []), ...(transportOptions.interceptors ?? [])],
  } as grpc.ServerOptions);
  const barriers = new Barriers();
  server.addService(serverDefinition(parameterServerService().service), makeHandlers(shard, barriers, maxBytes, transport, metrics ?? undefined) as grpc.UntypedServiceImplementation);
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
  health.addToServer(server);

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(o.bind, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  widenServerWindow(server);
  transport.attach(server);
  log.info({ bind: o.bind, port, version: VERSION, limits: o.limits }, 'serving');

  let stopping: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    if (stopping) return stopping;
    stopping = (async () => {
      log.info('stopping: no new calls; finishing those in flight');
      health.setStatus('', 'NOT_SERVING');
      health.setStatus(SERVICE_NAME, 'NOT_SERVING');
      barriers.failAll();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          log.warn({ drainSeconds: o.drainSeconds }, 'calls still in flight after the drain time: cancelling them');
          server.forceShutdown();
          resolve();
        }, o.drainSeconds * 1000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      await metrics?.close();
      await shard.close();
      log.info('pool closed cleanly');
    })();
    return stopping;
  };
  return { stop, port, metricsPort: metrics?.port };
}

async function main(): Promise<void> {
  let opts: ServerOptions;
  try {
    opts = parseOptions(hideBin(process.argv));
  } catch (e) {
    process.stderr.write(`pserver: ${(e as Error).message}\n`);
    process.exit(2);
  }
  let srv: Awaited<ReturnType<typeof startServer>>;
  try {
    srv = await startServer(opts);
  } catch (e) {
    if (e instanceof MetricsBindError) {
      process.stderr.write(`pserver: ${e.message}\n`);
      process.exit(2);
    }
    log.fatal({ err: e }, `cannot start: ${(e as Error).message}`);
    process.exit(1);
  }
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      log.info({ signal: sig }, 'signal received');
      srv.stop().then(
        () => process.exit(0),
        (e) => {
          log.fatal({ err: e }, 'clean stop failed; the next start recovers from the last checkpoint');
          process.exit(1);
        },
      );
    });
  }
}

if (require.main === module) void main();
