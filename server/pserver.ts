#!/usr/bin/env node
// pserver: one shard of a pmemps cluster.
//
//   pserver --bind 127.0.0.1:7000 --pmem /mnt/pmem0/ps0
//
// Options (server/config.ts): argv, PMEMPS_<OPTION> environment variables or
// a --config YAML/JSON file. SIGTERM / SIGINT stop gracefully: the
// server stops accepting calls, finishes those in flight, and closes the
// pool cleanly, so the next start has every acknowledged update.
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { hideBin } from 'yargs/helpers';
import { FLOW_CONTROL_WINDOW, MAX_FRAME_SIZE, parameterServerService } from '../proto/load';
import { installServerFrameInPlace } from '../proto/grpc-frames';
import { keepGcHeadroom } from '../proto/gc-headroom';
import { authInterceptor, SecurityConfigError, serverCredentials, TokenStore } from './auth';
import { Barriers } from './barrier';
import { ConfigError, loadConfig, redactConfig, type PserverConfig } from './config';
import { initLog, log } from './log';
import { Metrics, MetricsBindError } from './metrics';
import { makeHandlers, serverDefinition, VERSION } from './service';
import { Shard } from './shard';
import { http2ServersOf, TransportGuard } from './transport-limits';

const SERVICE_NAME = 'pmemps.v1.ParameterServer';

/** What startServer needs: the whole configuration (tests build one with loadConfig). */
export type ServerOptions = PserverConfig;

// grpc-js has no server option for the HTTP/2 receive window; its http2
// servers are reachable only through a private field. Without it the server
// receives at 64 KiB per round trip (see FLOW_CONTROL_WINDOW), in frames of
// 16 KiB (see MAX_FRAME_SIZE).
function widenServerWindow(server: grpc.Server): void {
  const servers = http2ServersOf(server);
  if (!servers) {
    log.warn('cannot widen the HTTP/2 receive window with this grpc-js version: large pushes will be slower');
    return;
  }
  for (const h of servers)
    h.on('session', (session: import('node:http2').ServerHttp2Session) => {
      session.setLocalWindowSize(FLOW_CONTROL_WINDOW);
      session.settings({ initialWindowSize: FLOW_CONTROL_WINDOW, maxFrameSize: MAX_FRAME_SIZE });
    });
}

export async function startServer(o: ServerOptions): Promise<{ stop: () => Promise<void>; port: number; metricsPort?: number; reloadTokens: () => boolean }> {
  // Before the pool is opened: a bad file or a metrics port in use changes nothing.
  const credentials = serverCredentials(o.tls);
  const tokens = o.authTokensFile ? new TokenStore(o.authTokensFile) : null;
  const metrics = o.metricsBind !== undefined ? await Metrics.listen(o.metricsBind, VERSION) : null;
  if (metrics) log.info({ metricsBind: o.metricsBind, metricsPort: metrics.port }, 'serving metrics at /metrics');
  fs.mkdirSync(o.pmem, { recursive: true });
  let shard: Shard;
  try {
    shard = new Shard({ dir: o.pmem, cacheMb: o.cacheMb, scratchMb: o.scratchMb, poolMb: o.poolSizeMb, layout: o.poolLayout });
  } catch (e) {
    await metrics?.close();
    throw e;
  }
  metrics?.watch(shard);
  const oi = shard.openInfo;
  log.info(
    {
      pmem: o.pmem,
      created: oi.created,
      lastStopClean: shard.lastStopClean,
      isPmem: oi.isPmem,
      layout: oi.layout,
      replayedRecords: oi.replayedRecords,
      replayWrites: oi.replayWrites,
      logPwrite: oi.logPwrite,
      slotPwrite: oi.slotPwrite,
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
    // grpc-js wraps the call in these in order, the first nearest the wire:
    // metrics first, so it sees every status the others send; the token
    // check last, so a refused call never reaches a handler.
    interceptors: [...(metrics ? [metrics.interceptor] : []), ...(transportOptions.interceptors ?? []), ...(tokens ? [authInterceptor(tokens)] : [])],
  } as grpc.ServerOptions);
  const barriers = new Barriers();
  server.addService(
    serverDefinition(parameterServerService().service),
    makeHandlers(shard, barriers, maxBytes, transport, metrics ?? undefined) as grpc.UntypedServiceImplementation,
  );
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
  health.addToServer(server);

  const port = await new Promise<number>((resolve, reject) => server.bindAsync(o.bind, credentials, (err, p) => (err ? reject(err) : resolve(p))));
  widenServerWindow(server);
  if (!installServerFrameInPlace()) log.warn('cannot frame pull replies in place with this grpc-js version: each reply is copied once more');
  transport.attach(server);
  log.info(
    { bind: o.bind, port, version: VERSION, limits: o.limits, tls: o.tls ? (o.tls.clientCaFile ? 'mutual' : 'server') : 'off', tokens: tokens?.size ?? 'off' },
    'serving',
  );

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
  const reloadTokens = (): boolean => {
    if (tokens) return tokens.reload();
    log.warn('SIGHUP: no --auth-tokens file to re-read');
    return false;
  };
  return { stop, port, metricsPort: metrics?.port, reloadTokens };
}

async function main(): Promise<void> {
  let opts: ServerOptions;
  try {
    const { config, sources } = loadConfig(hideBin(process.argv), process.env, { isTTY: !!process.stdout.isTTY, version: VERSION });
    opts = config;
    initLog(config);
    const set = Object.fromEntries(Object.entries(sources).filter(([, s]) => s !== 'default'));
    log.info({ config: redactConfig(config), sources: set }, 'config');
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    process.stderr.write(`pserver: ${e.message}\n`);
    process.exit(2);
  }
  // Each call's megabyte of buffers would otherwise start a full collection
  // every few calls (proto/gc-headroom.ts).
  if (!keepGcHeadroom()) log.info('--heap-growing-percent given to node: its own setting is kept');
  // Handlers go in before the pool opens: a SIGTERM during the start (the
  // default action would kill the process with the pool open) is honoured
  // as a clean stop once the server is up.
  let srv: Awaited<ReturnType<typeof startServer>> | null = null;
  // SIGHUP too: its default action would end the process.
  process.on('SIGHUP', () => (srv ? srv.reloadTokens() : log.warn('SIGHUP before the server serves: ignored')));
  let signalled: NodeJS.Signals | null = null;
  const stop = (): void => {
    srv!.stop().then(
      () => process.exit(0),
      (e) => {
        log.fatal({ err: e }, 'clean stop failed; the next start recovers from the last checkpoint');
        process.exit(1);
      },
    );
  };
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => {
      log.info({ signal: sig }, srv ? 'signal received' : 'signal received while starting: stopping once the server is up');
      if (signalled) return;
      signalled = sig;
      if (srv) stop();
    });
  }
  try {
    srv = await startServer(opts);
  } catch (e) {
    if (e instanceof MetricsBindError) {
      process.stderr.write(`pserver: ${e.message}\n`);
      process.exit(2);
    }
    log.fatal({ err: e }, `cannot start: ${(e as Error).message}`);
    process.exit(e instanceof SecurityConfigError ? 2 : 1);
  }
  if (signalled) stop();
}

if (require.main === module) void main();
