// The gRPC face of a shard: one handler per RPC of proto/pmemps.proto.
// Handlers validate the wire input, call the Shard, and map failures with
// status-codes.ts; the data path of a pull is Pull -> Shard.pull ->
// Engine.pull (native/engine.ts) -> Engine::pull (native/src/engine_data.cc).
import * as grpc from '@grpc/grpc-js';
import {
  EngineError,
  OPTIMIZER_PARAMS,
  asFloats,
  type InitializerSpec,
  type OptimizerSpec,
  type OptimizerType,
  type TableInfo,
  type TableSpec,
} from '../native/engine';
import { entryCensus, optimizerToWire } from '../proto/load';
import { FAST_CODECS, PULL_REPLY_HEADROOM, pullReplyAround } from '../proto/fast-codec';
import { Barriers } from './barrier';
import { log } from './log';
import { NO_METRICS, type ServiceMetrics } from './metrics';
import { ServerError } from './errors';
import { type CommittedCheckpoint, Shard } from './shard';
import { invalid, toStatus } from './status-codes';
import { LIMITS, floatsArg, idArg, keysArg, listArg, paramsArg, str, tableName, workerId } from './wire-args';
import type { TransportGuard } from './transport-limits';

export const VERSION = '0.1.0';

type Unary = (call: grpc.ServerUnaryCall<any, any>, cb: grpc.sendUnaryData<any>) => void;

// ------------------------------------------------------------ wire <-> engine specs

export function optimizerFromWire(o: { type?: string; params?: Record<string, number> } | null | undefined): OptimizerSpec {
  if (!o || !o.type) throw invalid('optimizer.type is required (sgd, adagrad, adam, rmsprop or ftrl)');
  const type = str(o.type, 'optimizer.type', LIMITS.shortName) as OptimizerType;
  // Own properties only: "__proto__" or "constructor" is no optimizer.
  if (!Object.hasOwn(OPTIMIZER_PARAMS, type)) throw invalid(`unknown optimizer "${type}"; use one of ${Object.keys(OPTIMIZER_PARAMS).join(', ')}`);
  return { type, ...paramsArg(o.params, 'optimizer.params') } as OptimizerSpec;
}

function initializerFromWire(i: any): InitializerSpec {
  if (i) str(i.type, 'initializer.type', LIMITS.shortName, { optional: true });
  switch (i?.type) {
    case 'zeros':
      return { type: 'zeros' };
    case 'constant':
      return { type: 'constant', value: i.value };
    case 'uniform':
      return { type: 'uniform', min: i.min, max: i.max };
    case 'normal':
      return { type: 'normal', mean: i.mean, std: i.std, truncated: !!i.truncated };
    default:
      throw invalid(`initializer.type must be zeros, constant, uniform or normal (got "${i?.type ?? ''}")`);
  }
}

function tableToWire(t: TableInfo): unknown {
  return {
    spec: { name: t.name, dim: t.dim, optimizer: optimizerToWire(t.optimizer), initializer: t.initializer, seed: t.seed },
    rows: t.rows,
  };
}

// ------------------------------------------------------------ undecodable requests

// grpc-js answers a request its deserializer throws on with INTERNAL, as if
// the server were at fault. The server's definition therefore decodes
// through a wrapper that turns a bad body into a marked request, which the
// handler wrapper refuses with INVALID_ARGUMENT.
const UNDECODABLE = Symbol('undecodable');

/**
 * The service definition the server adds: the proto's, with bodies that do
 * not decode refused as INVALID_ARGUMENT, and bodies protobufjs decodes
 * counted first (entry-census.ts): a flood of tiny entries is refused
 * before it is made into objects. Pull and Push decode without objects
 * per entry (fast-codec.ts).
 */
export function serverDefinition(def: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  const census = entryCensus();
  for (const [name, m] of Object.entries(def)) {
    const decode = m.requestDeserialize;
    const type: string | undefined = name in FAST_CODECS ? undefined : (m as { requestType?: { type?: { name?: string } } }).requestType?.type?.name;
    out[name] = {
      ...m,
      requestDeserialize: (b: Buffer) => {
        try {
          if (type) census.check(type, b);
          return decode(b);
        } catch (e) {
          return { [UNDECODABLE]: e instanceof Error ? e.message : String(e) };
        }
      },
    };
  }
  return out as grpc.ServiceDefinition;
}

// ------------------------------------------------------------ handlers

function denseToWire(dense: Map<string, Float32Array>): { name: string; values: Buffer }[] {
  return [...dense].map(([name, v]) => ({ name, values: Buffer.from(v.buffer, v.byteOffset, v.byteLength) }));
}

export function makeHandlers(
  shard: Shard,
  barriers: Barriers,
  maxMessageBytes: number,
  transport?: Pick<TransportGuard, 'admitReply'>,
  metrics: ServiceMetrics = NO_METRICS,
): Record<string, Unary> {
  const dims = new Map<string, number>();
  let restoredLineage: number | undefined;
  const dimOf = (table: string): number | undefined => {
    let d = dims.get(table);
    if (d === undefined) {
      for (const t of shard.listTables()) dims.set(t.name, t.dim);
      d = dims.get(table);
    }
    return d;
  };

  // Wraps a handler: sync throws and rejections both become gRPC statuses.
  const unary =
    (name: string, fn: (req: any, call: grpc.ServerUnaryCall<any, any>) => unknown): Unary =>
    (call, cb) => {
      let p: unknown;
      try {
        const bad = (call.request as Record<symbol, string> | null)?.[UNDECODABLE];
        if (bad !== undefined) throw invalid(`the request is not a valid ${name} message of proto/pmemps.proto (${bad.slice(0, 200)})`);
        p = fn(call.request, call);
      } catch (e) {
        fail(name, e, cb);
        return;
      }
      Promise.resolve(p).then(
        (res) => cb(null, res ?? {}),
        (e) => fail(name, e, cb),
      );
    };

  // Restore and ReadCheckpoint answer alike: the checkpoint and the shard's
  // identity of state now. Its bytes wait for reply budget like a pull's: a
  // checkpoint's dense tensors may take a whole message, and clients that
  // ask for it without reading would otherwise pile up copies.
  const checkpointReply = async (r: CommittedCheckpoint, call: grpc.ServerUnaryCall<any, any>) => {
    let bytes = r.meta.length;
    for (const [name, v] of r.dense) bytes += v.byteLength + name.length;
    await transport?.admitReply(call, bytes);
    return checkpointWire(r);
  };
  const checkpointWire = (r: CommittedCheckpoint) => ({
    checkpoint_id: r.id,
    meta: r.meta,
    dense: denseToWire(r.dense),
    incarnation: shard.incarnation,
    lineage: shard.lineage,
  });

  return {
    CreateTable: unary('CreateTable', (req) => {
      const s = req.spec;
      if (!s) throw invalid('spec is required');
      const spec: TableSpec = {
        name: tableName(s.name),
        dim: s.dim,
        optimizer: optimizerFromWire(s.optimizer),
        initializer: initializerFromWire(s.initializer),
        seed: Number(s.seed),
      };
      const created = shard.createTable(spec);
      if (created) log.info({ table: spec.name, dim: spec.dim, optimizer: spec.optimizer.type }, 'table created');
      return { created };
    }),

    UpdateTable: unary('UpdateTable', (req) => {
      const name = tableName(req.name);
      const params = paramsArg(req.params, 'params');
      const t = shard.updateTable(name, params);
      log.info({ table: name, params }, 'table hyperparameters updated');
      return { spec: (tableToWire(t) as { spec: unknown }).spec };
    }),

    ListTables: unary('ListTables', () => ({ tables: shard.listTables().map(tableToWire) })),

    DropTable: unary('DropTable', async (req) => {
      const name = tableName(req.name);
      await shard.dropTable(name);
      dims.delete(name);
      log.info({ table: name }, 'table dropped');
      return {};
    }),

    Pull: unary('Pull', async (req, call) => {
      const table = tableName(req.table);
      const keys = keysArg(req.keys);
      const n = keys.length / 8;
      // The reply is sized with the dim this service last saw; the engine
      // refuses rows beyond what was sized with its own dim at the call, so
      // a table that changed since (dropped and created, or brought back by
      // a commit or a restore) is sized again, never answered unbounded.
      let rows: Buffer | undefined;
      for (let admitted = 0, again = false; !rows; again = true) {
        if (again) dims.clear();
        const bytes = n * (dimOf(table) ?? 0) * 4; // 0: no such table, which the engine reports
        if (bytes + 64 > maxMessageBytes)
          throw new ServerError(
            'TOO_LARGE',
            `${n} keys x dim ${bytes / 4 / n} is ${(bytes / 2 ** 20).toFixed(1)} MiB, above the server's --max-message-mb ${maxMessageBytes / 2 ** 20}; split the batch (the SDK does)`,
          );
        // Waits while clients hold too many unread replies (server/transport-limits.ts).
        if (bytes > admitted) await transport?.admitReply(call, bytes - admitted);
        admitted = Math.max(admitted, bytes);
        try {
          rows = await shard.pull(table, keys, PULL_REPLY_HEADROOM, Math.max(1, bytes));
        } catch (e) {
          if (again || !(e instanceof EngineError && e.code === 'TOO_LARGE')) throw e;
        }
      }
      // Encoded around the rows (proto/fast-codec.ts): one copy less of a reply that may be 16 MiB.
      const reply = pullReplyAround(rows, PULL_REPLY_HEADROOM);
      metrics.pulled(table, keys.length / 8);
      return reply;
    }),

    Push: unary('Push', async (req) => {
      const table = tableName(req.table);
      const keys = keysArg(req.keys);
      const grads = floatsArg(req.grads, 'grads');
      const duplicate = await shard.push(table, keys, grads, workerId(req.worker_id), idArg(req.seq, 'seq'), idArg(req.incarnation, 'incarnation'));
      if (duplicate) metrics.duplicate();
      else metrics.pushed(table, keys.length / 8);
      return { duplicate };
    }),

    PullDense: unary('PullDense', async (req, call) => {
      const names = listArg<unknown>(req.names, 'names', LIMITS.namesPerCall).map((n) => str(n, 'dense tensor name', LIMITS.denseName));
      // Sized before a value is copied: one call may name a 256 MiB tensor 4,096 times.
      let bytes = shard.denseBytes(names);
      for (const n of names) bytes += Buffer.byteLength(n) + 16; // a tensor's name and framing
      if (bytes > maxMessageBytes)
        throw new ServerError(
          'TOO_LARGE',
          `the ${names.length} tensors asked for take ${(bytes / 2 ** 20).toFixed(1)} MiB, above the server's --max-message-mb ${maxMessageBytes / 2 ** 20}; ask for fewer per call`,
        );
      await transport?.admitReply(call, bytes);
      return { tensors: denseToWire(shard.pullDense(names)) };
    }),

    PushDense: unary('PushDense', async (req) => {
      const name = str(req.name, 'dense tensor name', LIMITS.denseName);
      const grads = floatsArg(req.grads, 'grads');
      const duplicate = await shard.pushDense(name, grads, workerId(req.worker_id), idArg(req.seq, 'seq'), idArg(req.incarnation, 'incarnation'));
      if (duplicate) metrics.duplicate();
      return { duplicate };
    }),

    SetDense: unary('SetDense', (req) => {
      if (!req.tensor) throw invalid('tensor is required');
      const name = str(req.tensor.name, 'tensor.name', LIMITS.denseName);
      shard.setDense(name, asFloats(floatsArg(req.tensor.values, 'tensor.values')), optimizerFromWire(req.optimizer));
      return {};
    }),

    Checkpoint: unary('Checkpoint', async (req) => {
      const id = idArg(req.id, 'id');
      if (id === 0) throw invalid('checkpoint id must be positive');
      const ballot = idArg(req.ballot, 'ballot');
      let st;
      const t0 = performance.now();
      switch (req.phase) {
        case 'PREPARE': {
          const dense = new Map<string, Float32Array>();
          for (const t of listArg<{ name: unknown; values: unknown }>(req.dense, 'dense', LIMITS.namesPerCall)) {
            const name = str(t.name, 'dense tensor name', LIMITS.denseName);
            dense.set(name, asFloats(floatsArg(t.values, 'dense tensor values')).slice());
          }
          st = await shard.prepare(id, ballot, req.meta ?? Buffer.alloc(0), dense, idArg(req.incarnation, 'incarnation'));
          metrics.checkpointPhase('prepare', t0);
          log.info({ id, ballot }, 'checkpoint prepared');
          break;
        }
        case 'COMMIT':
          st = await shard.commit(id, ballot);
          dims.clear(); // a checkpoint prepared before a restart brings its tables back
          metrics.checkpointPhase('commit', t0);
          log.info({ id, ballot }, 'checkpoint committed');
          break;
        case 'ABORT':
          st = await shard.abort(id, ballot);
          log.info({ id, ballot }, 'checkpoint aborted');
          break;
        default:
          throw invalid('phase must be PREPARE, COMMIT or ABORT');
      }
      return { committed_id: st.committedId, prepared_id: st.preparedId, last_id: st.lastId };
    }),

    RaiseBallot: unary('RaiseBallot', async (req) => {
      const st = await shard.raiseBallot(idArg(req.ballot, 'ballot'), req.for_restore === true);
      return {
        ballot: st.ballot,
        committed_id: st.committedId,
        prepared_id: st.preparedId,
        last_id: st.lastId,
        previous: st.previous ?? 0,
        restoring_ballot: shard.restoringBallot,
        restored_ballot: shard.restoredBallot,
      };
    }),

    Restore: unary('Restore', async (req, call) => {
      const r = await shard.restore(idArg(req.ballot, 'ballot'), idArg(req.checkpoint_id, 'checkpoint_id'));
      dims.clear();
      // A new lineage: the job's steps, the barriers' generations, come again.
      if (shard.lineage !== restoredLineage) barriers.rewind();
      restoredLineage = shard.lineage;
      return checkpointReply(r, call);
    }),

    ReadCheckpoint: unary('ReadCheckpoint', (_req, call) => checkpointReply(shard.readCheckpoint(), call)),

    Status: unary('Status', () => {
      const st = shard.stats();
      const id = shard.identity();
      const lookups = st.hits + st.misses;
      return {
        identity: id.clusterId ? { cluster_id: id.clusterId, shard_index: id.shardIndex, shard_count: id.shardCount, sealed: id.sealed } : null,
        incarnation: shard.incarnation,
        last_stop_clean: shard.lastStopClean,
        committed_id: st.committed ?? 0,
        prepared_id: st.prepared ?? 0,
        pushes_blocked: shard.blockedBy !== 0,
        tables: shard.listTables().map(tableToWire),
        cache_hit_ratio: lookups ? st.hits / lookups : 0,
        cache_bytes: st.cacheBytes,
        cache_budget_bytes: st.cacheBudget,
        pool_bytes: st.poolBytes,
        pool_used_bytes: st.poolUsedBytes,
        pmem: shard.openInfo.isPmem,
        lineage: shard.lineage,
        ballot: shard.checkpointState().ballot,
        version: VERSION,
        last_checkpoint_id: st.lastId,
        needs_restore: shard.needsRestore,
        restored_ballot: shard.restoredBallot,
        restoring_ballot: shard.restoringBallot,
      };
    }),

    SetIdentity: unary('SetIdentity', (req) => {
      const i = req.identity;
      if (!i) throw invalid('identity is required');
      const before = shard.identity();
      const r = shard.setIdentity(str(i.cluster_id, 'identity.cluster_id', 32), i.shard_index, i.shard_count, i.sealed === true);
      if (!before.clusterId || before.sealed !== r.sealed) log.info({ identity: r }, r.sealed ? 'shard identity sealed' : 'shard identity set');
      return { identity: { cluster_id: r.clusterId, shard_index: r.shardIndex, shard_count: r.shardCount, sealed: r.sealed } };
    }),

    Barrier: unary('Barrier', (req, call) => {
      const name = str(req.name, 'barrier name', LIMITS.barrierName);
      const worker = str(req.worker_id, 'worker_id', LIMITS.workerId);
      if (!(req.parties >= 1 && req.parties <= LIMITS.parties)) throw invalid(`barrier parties must be in 1..${LIMITS.parties}`);
      return barriers.arrive(name, idArg(req.generation, 'generation'), req.parties, worker, call);
    }),
  };
}

function fail(name: string, e: unknown, cb: grpc.sendUnaryData<any>): void {
  const s = toStatus(e);
  if (s.code === grpc.status.INTERNAL || s.code === grpc.status.DATA_LOSS) log.error({ rpc: name, err: e }, 'request failed');
  else log.debug({ rpc: name, code: s.code, details: s.details }, 'request refused');
  cb(s as grpc.ServiceError);
}
