// Directed abuse cases: hostile inputs chosen by hand, each sent to a fresh
// pserver and judged by the same per-request checks and invariants as the
// random fuzzer (test/fuzz.lib.ts). `known` names the defect a case was
// written to catch, where there is one; every case must pass on fixed code.
import * as http2 from 'node:http2';
import * as zlib from 'node:zlib';
import { packKeys } from '../native/engine';
import { SERVICE_PATH } from '../proto/load';
import {
  CONTROL,
  CURRENT_INCARNATION,
  Generator,
  LEDGER,
  LEDGER_KEYS,
  MAX_ID,
  R,
  U64_EDGES,
  bigName,
  cloneObj,
  edgeValues,
  type Finding,
  type FuzzRequest,
} from './fuzz.gen';
import { Harness, newStats, sendBatch } from './fuzz.lib';
import type { AuthMode } from './fuzz.auth';
import { RAW_TAIL, RPCS, WT_I32, WT_I64, WT_LEN, WT_VARINT, encodeRequest, isMap, messageType, requestType, tag, varint, type MessageDesc } from './fuzz.wire';

export interface AbuseCase {
  name: string;
  /** The known defect this case hits, if any. */
  known?: string;
  poolSize?: string;
  /**
   * Why the case means nothing when the door refuses its requests (auth
   * reader or none), if it does: it is then not run in those modes.
   */
  needsAccess?: string;
  run: (h: Harness, r: R) => Promise<void>;
}

const stats = newStats();

async function send(h: Harness, reqs: FuzzRequest[], concurrency = 4): Promise<void> {
  for (let i = 0; i < reqs.length; i += 40) await sendBatch(h, reqs.slice(i, i + 40), stats, concurrency);
}

const f32 = (xs: number[]): Buffer => Buffer.from(Float32Array.from(xs).buffer);
const ledgerPush = (worker: string | Buffer, seq: number | bigint, k = 0, g = 1, inc: unknown = 0): FuzzRequest => ({
  rpc: 'Push',
  kind: 'Push/ledger',
  obj: { table: LEDGER, keys: packKeys([LEDGER_KEYS[k]]), grads: f32([g, -g, 2 * g, 0]), worker_id: worker, seq, incarnation: inc },
});

async function state(h: Harness): Promise<{ B: number; C: number; last: number }> {
  const st = await h.status();
  return { B: st.ballot, C: st.committed_id, last: st.last_checkpoint_id };
}

/** A request of every RPC that is valid or nearly so, aimed at scratch names: the base the edge sweep varies. */
function neutral(rpc: string, s: { B: number; C: number; last: number }, h: Harness): Record<string, unknown> {
  const opt = { type: 'sgd', params: { lr: 0.1 } };
  switch (rpc) {
    case 'CreateTable':
      return { spec: { name: 'e0', dim: 4, optimizer: opt, initializer: { type: 'zeros' }, seed: 1 } };
    case 'UpdateTable':
      return { name: 'e0', params: { lr: 0.2 } };
    case 'DropTable':
      return { name: 'e1' };
    case 'Pull':
      return { table: 'e0', keys: packKeys([1n, 2n]) };
    case 'Push':
      return { table: 'e0', keys: packKeys([1n]), grads: f32([1, 2, 3, 4]), worker_id: 'edge', seq: 1, incarnation: CURRENT_INCARNATION };
    case 'PullDense':
      return { names: ['e-dense'] };
    case 'PushDense':
      return { name: 'e-dense', grads: f32([1, 2, 3]), worker_id: 'edge', seq: 1, incarnation: CURRENT_INCARNATION };
    case 'SetDense':
      return { tensor: { name: 'e-dense', values: f32([1, 2, 3]) }, optimizer: opt };
    case 'Checkpoint':
      return { id: s.last + 1000, phase: 'ABORT', ballot: s.B + 1, meta: Buffer.from('m'), dense: [], incarnation: 0 };
    case 'RaiseBallot':
      return { ballot: s.B + 1 };
    case 'Restore':
      return { ballot: s.B + 1, checkpoint_id: s.C + 7 };
    case 'SetIdentity':
      return { identity: { ...h.identity } };
    case 'Barrier':
      return { name: 'eb', generation: 1, parties: 1, worker_id: 'edge' };
    default:
      return {};
  }
}

/** Every field path of a message, one level into nested messages. */
function paths(t: MessageDesc, depth = 0): { path: string[]; parent: MessageDesc; field: MessageDesc['field'][number] }[] {
  const out: ReturnType<typeof paths> = [];
  for (const f of t.field) {
    out.push({ path: [f.name], parent: t, field: f });
    if (f.type === 'TYPE_MESSAGE' && !isMap(t, f) && f.label !== 'LABEL_REPEATED' && depth < 1)
      for (const p of paths(messageType(t, f), depth + 1)) out.push({ ...p, path: [f.name, ...p.path] });
  }
  return out;
}

function setPath(obj: Record<string, unknown>, path: string[], v: unknown): void {
  let o = obj;
  for (const k of path.slice(0, -1)) {
    const cur = o[k];
    o[k] = cur && typeof cur === 'object' && !Buffer.isBuffer(cur) ? { ...(cur as object) } : {};
    o = o[k] as Record<string, unknown>;
  }
  o[path[path.length - 1]] = v;
}

/** Raw HTTP/2 gRPC calls that break the framing: the gRPC library answers them before any handler. */
async function framing(endpoint: string, auth: Record<string, string>): Promise<{ name: string; answered: boolean; status?: string }[]> {
  const frame = (body: Buffer, compressed = 0, len = body.length): Buffer => {
    const hdr = Buffer.alloc(5);
    hdr[0] = compressed;
    hdr.writeUInt32BE(len, 1);
    return Buffer.concat([hdr, body]);
  };
  const bomb = zlib.gzipSync(Buffer.alloc(64 * 2 ** 20));
  const cases: { name: string; method: string; headers?: Record<string, string>; chunks: Buffer[]; reset?: boolean }[] = [
    { name: 'compressed flag without an encoding', method: 'Status', chunks: [frame(Buffer.alloc(0), 1)] },
    { name: 'gzip that is not gzip', method: 'Push', headers: { 'grpc-encoding': 'gzip' }, chunks: [frame(Buffer.from('garbage'), 1)] },
    { name: 'gzip bomb (64 MiB of zeros)', method: 'Push', headers: { 'grpc-encoding': 'gzip' }, chunks: [frame(bomb, 1)] },
    { name: 'unknown encoding', method: 'Status', headers: { 'grpc-encoding': 'snappy' }, chunks: [frame(Buffer.alloc(0), 1)] },
    { name: 'length prefix past the end', method: 'Checkpoint', chunks: [frame(Buffer.alloc(10), 0, 100)] },
    { name: 'length prefix of 4 GiB', method: 'Push', chunks: [frame(Buffer.alloc(0), 0, 0xffffffff)] },
    { name: 'two messages on a unary call', method: 'RaiseBallot', chunks: [frame(Buffer.alloc(0)), frame(Buffer.alloc(0))] },
    { name: 'no message', method: 'Restore', chunks: [] },
    { name: 'half a message header', method: 'Status', chunks: [Buffer.from([0, 0])] },
    { name: 'a JSON content type', method: 'Status', headers: { 'content-type': 'application/json' }, chunks: [frame(Buffer.alloc(0))] },
    { name: 'a bad grpc-timeout', method: 'Status', headers: { 'grpc-timeout': 'soon' }, chunks: [frame(Buffer.alloc(0))] },
    { name: 'a stream reset in the middle of a message', method: 'Push', chunks: [frame(Buffer.alloc(1000), 0, 5000)], reset: true },
    { name: 'a valid gzip-compressed Status', method: 'Status', headers: { 'grpc-encoding': 'gzip' }, chunks: [frame(zlib.gzipSync(Buffer.alloc(0)), 1)] },
  ];
  const session = http2.connect(`http://${endpoint}`);
  session.on('error', () => undefined);
  const out: { name: string; answered: boolean; status?: string }[] = [];
  try {
    for (const c of cases) {
      const res = await new Promise<{ answered: boolean; status?: string }>((resolve) => {
        const s = session.request({
          ':method': 'POST',
          ':path': `/${SERVICE_PATH}/${c.method}`,
          'content-type': 'application/grpc',
          te: 'trailers',
          ...auth,
          ...c.headers,
        });
        let status: string | undefined;
        s.on('response', (hd) => (status = String(hd['grpc-status'] ?? `http ${hd[':status']}`)));
        s.on('trailers', (t) => (status = String(t['grpc-status'])));
        s.on('data', () => undefined);
        s.on('error', () => undefined);
        s.setTimeout(10_000, () => s.close(http2.constants.NGHTTP2_CANCEL));
        s.on('close', () => resolve({ answered: status !== undefined || !!c.reset, status }));
        for (const ch of c.chunks) s.write(ch);
        if (c.reset) s.close(http2.constants.NGHTTP2_CANCEL);
        else s.end();
      });
      out.push({ name: c.name, ...res });
    }
  } finally {
    session.close();
  }
  return out;
}

export const ABUSE_CASES: AbuseCase[] = [
  {
    name: 'edge-values-of-every-field',
    async run(h, r) {
      const s = await state(h);
      const g = new Generator();
      const reqs: FuzzRequest[] = [];
      let n = 0;
      for (const rpc of RPCS) {
        const t = requestType(rpc);
        const base = neutral(rpc, s, h);
        if (!t.field.length) {
          for (const v of U64_EDGES.slice(0, 4))
            reqs.push({ rpc, kind: `edge:${rpc}.unknown-field`, obj: { [RAW_TAIL]: Buffer.concat([tag(7, WT_VARINT), varint(v)]) } });
          continue;
        }
        for (const p of paths(t))
          for (const v of edgeValues(p.parent, p.field, g, r)) {
            const obj = cloneObj(base);
            setPath(obj, p.path, p.field.label === 'LABEL_REPEATED' && !isMap(p.parent, p.field) && !Array.isArray(v) ? [v] : v);
            // Distinct pushes: an answer "duplicate" would skip the checks the edge value is meant to reach.
            if ((rpc === 'Push' || rpc === 'PushDense') && p.path[0] !== 'worker_id') obj.worker_id = `edge${n++}`;
            reqs.push({ rpc, kind: `edge:${rpc}.${p.path.join('.')}`, obj });
          }
      }
      await send(h, reqs); // sendBatch skips the ones that could change a protected object
    },
  },
  {
    name: 'garbage-bodies-of-every-rpc',
    async run(h, r) {
      const reqs: FuzzRequest[] = [];
      for (const rpc of RPCS) {
        const t = requestType(rpc);
        const bodies: Buffer[] = [
          Buffer.from([0xff]),
          Buffer.from([0x08]),
          Buffer.from([0x0a, 0x05, 0x61]),
          Buffer.from([0x00]),
          Buffer.alloc(11, 0xff),
          tag(1, 3),
          tag(1, 4),
          tag(1, 7),
        ];
        for (const f of t.field)
          for (const wt of [WT_VARINT, WT_I64, WT_LEN, WT_I32]) {
            const payload =
              wt === WT_VARINT
                ? varint(1)
                : wt === WT_I64
                  ? Buffer.alloc(8, 1)
                  : wt === WT_I32
                    ? Buffer.alloc(4, 1)
                    : Buffer.concat([varint(1), Buffer.from([0xff])]);
            bodies.push(Buffer.concat([tag(f.number, wt), payload]));
          }
        for (let i = 0; i < 4; i++) bodies.push(r.bytes(64));
        for (const b of bodies) reqs.push({ rpc, kind: 'garbage/fixed', raw: b });
      }
      reqs.push({ rpc: 'Status', kind: 'unknown-method', raw: Buffer.alloc(0), path: `/${SERVICE_PATH}/Nope` });
      await send(h, reqs);
    },
  },
  {
    name: 'http2-framing',
    async run(h) {
      // The harness's authorization where the door must let them through (framing is what is under test), none otherwise.
      const md = h.auth === 'admin' ? h.adminMd().getMap() : h.present().md.getMap();
      const auth = Object.fromEntries(Object.entries(md).map(([k, v]) => [k, Buffer.isBuffer(v) ? v.toString('base64') : v]));
      const before = h.auth === 'none' || h.auth === 'reader' ? await h.observe() : undefined;
      for (const c of await framing(h.endpoint, auth))
        if (!c.answered) h.find('a malformed HTTP/2 gRPC call got no answer', `${c.name}: no status within 10 s`);
      if (before) h.compareSnapshots(`the server's state changed under malformed calls the door refused (auth ${h.auth})`, before, await h.observe());
    },
  },
  {
    name: 'protocol-out-of-order',
    known: 'a refused COMMIT/Restore still raises the ballot (so do refused PREPARE and ABORT)',
    async run(h, r) {
      const s = await state(h);
      const up = s.B + 100;
      const id = Math.max(s.C, s.last) + 10;
      const ck = (kind: string, obj: Record<string, unknown>, onlyIfPrepared = false): FuzzRequest => ({
        rpc: 'Checkpoint',
        kind: `Checkpoint/${kind}`,
        obj,
        onlyIfPrepared,
      });
      await send(h, [
        ck('commit-before-prepare', { id, phase: 'COMMIT', ballot: up }),
        ck('abort-committed', { id: s.C, phase: 'ABORT', ballot: up + 1 }),
        { rpc: 'Restore', kind: 'Restore/wrong-id', obj: { ballot: up + 2, checkpoint_id: s.C + 5 } },
        { rpc: 'Restore', kind: 'Restore/id-2^52-1', obj: { ballot: up + 3, checkpoint_id: MAX_ID - 1 } },
        ck('prepare-stale-incarnation', { id, phase: 'PREPARE', ballot: up + 4, incarnation: h.incarnation + 1 }),
        ck('prepare-old-id', { id: Math.max(1, s.C - 1) === s.C ? s.last + 0 : s.C - 1, phase: 'PREPARE', ballot: up + 5, incarnation: 0 }),
        ck('stale-prepare', { id, phase: 'PREPARE', ballot: 0 }),
        ck('stale-commit', { id: s.C, phase: 'COMMIT', ballot: 0 }),
        ck('stale-abort', { id, phase: 'ABORT', ballot: 0 }),
        { rpc: 'Restore', kind: 'Restore/stale', obj: { ballot: 0, checkpoint_id: s.C } },
        { rpc: 'RaiseBallot', kind: 'RaiseBallot/lower', obj: { ballot: 1 } },
        ck('prepare-valid', { id: id + 1, phase: 'PREPARE', ballot: up + 6, meta: r.bytes(16), dense: [{ name: 't', values: f32([1]) }], incarnation: 0 }),
        ck('while-prepared-prepare', { id: id + 2, phase: 'PREPARE', ballot: up + 6, incarnation: 0 }, true),
        { rpc: 'Restore', kind: 'Restore/while-prepared', obj: { ballot: up + 7, checkpoint_id: s.C }, onlyIfPrepared: true },
        ck('while-prepared-commit-other', { id: id + 3, phase: 'COMMIT', ballot: up + 8 }, true),
        ck('commit-aborted', { id: id + 1, phase: 'COMMIT', ballot: up + 9 }),
        ck('prepare-aborted', { id: id + 1, phase: 'PREPARE', ballot: up + 9, incarnation: 0 }),
        ck('phase-unspecified', { id: id + 4, phase: 0, ballot: up + 9 }),
        ck('id-0', { id: 0, phase: 'ABORT', ballot: up + 9 }),
      ]);
      if (!(await h.restart('term', r))) return;
      await h.restart('kill', r);
    },
  },
  {
    name: 'ballot-2^52-1',
    known: 'RaiseBallot(2^52-1) exhausts the fence',
    async run(h) {
      await send(h, [{ rpc: 'RaiseBallot', kind: 'RaiseBallot/edge', obj: { ballot: MAX_ID - 1 } }]);
    },
  },
  {
    name: 'abort-id-2^52-1',
    known: 'ABORT of checkpoint id 2^52-1 (never prepared) ends all checkpoints',
    async run(h, r) {
      const s = await state(h);
      await send(h, [{ rpc: 'Checkpoint', kind: 'Checkpoint/abort-edge', obj: { id: MAX_ID - 1, phase: 'ABORT', ballot: s.B + 1 } }]);
      await h.restart('term', r); // takes a real checkpoint first
    },
  },
  {
    name: 'push-seq-edges',
    async run(h, r) {
      await send(
        h,
        [
          ledgerPush('seqw', 0),
          ledgerPush('seqw', 1),
          ledgerPush('seqw', 1, 1),
          ledgerPush('seqw', 2n ** 52n),
          ledgerPush('seqw', 2n ** 53n),
          ledgerPush('seqw', 2n ** 64n - 1n),
        ],
        1,
      );
      await send(
        h,
        Array.from({ length: 6 }, () => ledgerPush('seqw', 5, 2)),
        6,
      ); // concurrent retries: one applies
      await send(
        h,
        [10, 8, 9, 8, 3000, 1, 2999].map((q, i) => ledgerPush('seqw', q, i % 4)),
        1,
      ); // out of order, then too old
      await send(h, [ledgerPush('far', MAX_ID - 1, 3), ledgerPush('far', 1, 3), ledgerPush('far', MAX_ID - 1, 3)], 1);
      await send(h, [ledgerPush('inc', 1, 4, 1, MAX_ID), ledgerPush('inc', 2, 4, 1, h.incarnation + 1), ledgerPush('inc', 3, 4, 1, CURRENT_INCARNATION)], 1);
      await h.restart('term', r);
    },
  },
  {
    name: 'worker-id-65536-bytes',
    known: 'a 65,536-byte worker_id breaks the close record',
    async run(h, r) {
      await send(
        h,
        [ledgerPush(bigName(65_536, 0x77), 1, 1), ledgerPush(bigName(65_535, 0x77), 1, 2), ledgerPush(bigName(131_072, 0x77), 1, 3), ledgerPush('after', 1, 4)],
        1,
      );
      await h.restart('term', r);
    },
  },
  {
    name: 'invalid-utf8-worker-ids',
    known: 'invalid-UTF-8 worker ids collide',
    async run(h) {
      const ids = [[0xff], [0xfe], [0xc0, 0x80], [0xc1, 0x80], [0x77, 0xff], [0x77, 0xfe], [0xed, 0xa0, 0x80], [0xed, 0xb0, 0x80]].map((b) => Buffer.from(b));
      await send(
        h,
        ids.map((w, i) => ledgerPush(w, 1, i % 5)),
        1,
      );
    },
  },
  {
    name: 'worker-id-flood',
    known: 'many worker ids flush the exactly-once record',
    needsAccess:
      'its 65,537 pushes flush nothing unless they enter the exactly-once record (refused, they are a flood the fuzz runs already send, at 5 minutes)',
    async run(h, r) {
      await h.ledgerPush(); // acknowledged; its retry below must be answered duplicate
      const target = h.retryable[h.retryable.length - 1];
      const n = 65_537;
      // Pushes of no rows: cheap, and each one still enters the exactly-once record.
      const reqs: FuzzRequest[] = Array.from({ length: n }, (_, i) => ({
        rpc: 'Push',
        kind: 'Push/flood',
        obj: { table: LEDGER, keys: Buffer.alloc(0), grads: Buffer.alloc(0), worker_id: `flood${i}`, seq: 1, incarnation: 0 },
      }));
      const st = newStats();
      for (let i = 0; i < reqs.length; i += 2048) await sendBatch(h, reqs.slice(i, i + 2048), st, 32);
      await h.retryAcknowledged(r, 1, [target]);
    },
  },
  {
    name: 'huge-names-in-errors',
    known: 'error details echo 1 MiB names (from about 200 KB on, the call hangs and wedges its connection)',
    async run(h) {
      const reqs: FuzzRequest[] = [];
      for (const n of [4_097, 65_536]) {
        const name = bigName(n, 0x7a);
        reqs.push(
          { rpc: 'Pull', kind: 'Pull/huge-name', obj: { table: name, keys: packKeys([1n]) } },
          { rpc: 'Push', kind: 'Push/huge-name', obj: { table: name, keys: packKeys([1n]), grads: f32([1]), worker_id: '', seq: 0, incarnation: 0 } },
          { rpc: 'DropTable', kind: 'DropTable/huge-name', obj: { name } },
          { rpc: 'UpdateTable', kind: 'UpdateTable/huge-name', obj: { name, params: { lr: 0.1 } } },
          {
            rpc: 'CreateTable',
            kind: 'CreateTable/huge-name',
            obj: { spec: { name, dim: 1, optimizer: { type: 'sgd', params: { lr: 1 } }, initializer: { type: 'zeros' }, seed: 1 } },
          },
          {
            rpc: 'CreateTable',
            kind: 'CreateTable/huge-optimizer',
            obj: { spec: { name: 'hn', dim: 1, optimizer: { type: name, params: { lr: 1 } }, initializer: { type: 'zeros' }, seed: 1 } },
          },
          { rpc: 'PullDense', kind: 'PullDense/huge-name', obj: { names: [name] } },
          { rpc: 'PushDense', kind: 'PushDense/huge-name', obj: { name, grads: f32([1]), worker_id: '', seq: 0, incarnation: 0 } },
          { rpc: 'SetDense', kind: 'SetDense/huge-name', obj: { tensor: { name, values: f32([1]) }, optimizer: { type: 'sgd', params: { lr: 1 } } } },
          { rpc: 'Barrier', kind: 'Barrier/huge-name', obj: { name, generation: 1, parties: 1, worker_id: name } },
        );
      }
      // 1 MiB names (from about 200 KB on, the echoing call hangs): a few RPCs suffice.
      const mib = bigName(2 ** 20, 0x7a);
      reqs.push(
        { rpc: 'Pull', kind: 'Pull/1MiB-name', obj: { table: mib, keys: packKeys([1n]) } },
        { rpc: 'SetDense', kind: 'SetDense/1MiB-optimizer', obj: { tensor: { name: 'hn', values: f32([1]) }, optimizer: { type: mib } } },
      );
      await send(h, reqs, 2);
    },
  },
  {
    name: 'prototype-names',
    known: 'optimizer type "__proto__"/"constructor" gives INTERNAL',
    async run(h) {
      const reqs: FuzzRequest[] = [];
      for (const p of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
        reqs.push(
          {
            rpc: 'CreateTable',
            kind: 'CreateTable/proto-optimizer',
            obj: { spec: { name: 'pt', dim: 2, optimizer: { type: p, params: { lr: 0.1 } }, initializer: { type: 'zeros' }, seed: 1 } },
          },
          {
            rpc: 'CreateTable',
            kind: 'CreateTable/proto-initializer',
            obj: { spec: { name: 'pt', dim: 2, optimizer: { type: 'sgd', params: { lr: 0.1 } }, initializer: { type: p }, seed: 1 } },
          },
          {
            rpc: 'CreateTable',
            kind: 'CreateTable/proto-param',
            obj: {
              spec: {
                name: 'pt',
                dim: 2,
                optimizer: {
                  type: 'sgd',
                  params: [
                    ['lr', 0.1],
                    [p, 1],
                  ],
                },
                initializer: { type: 'zeros' },
                seed: 1,
              },
            },
          },
          {
            rpc: 'CreateTable',
            kind: 'CreateTable/proto-name',
            obj: { spec: { name: p, dim: 2, optimizer: { type: 'sgd', params: { lr: 0.1 } }, initializer: { type: 'zeros' }, seed: 1 } },
          },
          { rpc: 'SetDense', kind: 'SetDense/proto-optimizer', obj: { tensor: { name: 'pd', values: f32([1]) }, optimizer: { type: p } } },
          {
            rpc: 'SetDense',
            kind: 'SetDense/proto-name',
            obj: {
              tensor: { name: p, values: f32([1]) },
              optimizer: {
                type: 'sgd',
                params: [
                  ['lr', 0.1],
                  [p, 1],
                ],
              },
            },
          },
          { rpc: 'UpdateTable', kind: 'UpdateTable/proto-param', obj: { name: CONTROL, params: [[p, 1]] } },
          { rpc: 'PullDense', kind: 'PullDense/proto-name', obj: { names: [p] } },
          { rpc: 'PushDense', kind: 'PushDense/proto-name', obj: { name: p, grads: f32([1]), worker_id: p, seq: 1, incarnation: 0 } },
          ledgerPush(p, 1),
          { rpc: 'Barrier', kind: 'Barrier/proto-name', obj: { name: p, generation: 1, parties: 1, worker_id: p } },
        );
      }
      await send(h, reqs);
    },
  },
  {
    name: 'non-finite-from-finite-inputs',
    known: 'non-finite rows from finite inputs (SGD lr 1e308, constant 1e39, uniform +-1e300, gradients 3e38 summing to inf)',
    async run(h) {
      const table = (name: string, optimizer: unknown, initializer: unknown): FuzzRequest => ({
        rpc: 'CreateTable',
        kind: 'CreateTable/extreme',
        obj: { spec: { name, dim: 2, optimizer, initializer, seed: 3 } },
      });
      const push = (t: string, keys: bigint[], g: number): FuzzRequest => ({
        rpc: 'Push',
        kind: 'Push/extreme',
        obj: { table: t, keys: packKeys(keys), grads: f32(new Array(keys.length * 2).fill(g)), worker_id: '', seq: 0, incarnation: 0 },
      });
      const pull = (t: string): FuzzRequest => ({ rpc: 'Pull', kind: 'Pull/extreme', obj: { table: t, keys: packKeys([1n, 2n, 5n]) } });
      const sgd = (lr: number) => ({ type: 'sgd', params: { lr } });
      const zeros = { type: 'zeros' };
      await send(
        h,
        [
          table('nf-lr', sgd(1e308), zeros),
          table('nf-const', sgd(0.1), { type: 'constant', value: 1e39 }),
          table('nf-uniform', sgd(0.1), { type: 'uniform', min: -1e300, max: 1e300 }),
          table('nf-normal', sgd(0.1), { type: 'normal', mean: 0, std: 1e300 }),
          table('nf-sum', sgd(1), zeros),
          table('nf-adagrad', { type: 'adagrad', params: { lr: 1e308 } }, zeros),
          { rpc: 'SetDense', kind: 'SetDense/extreme', obj: { tensor: { name: 'nf-d', values: f32([1, 1]) }, optimizer: sgd(1e308) } },
        ],
        1,
      );
      await send(
        h,
        [
          push('nf-lr', [1n], 1),
          push('nf-sum', [5n, 5n], 3e38),
          push('nf-adagrad', [2n], 1),
          { rpc: 'PushDense', kind: 'PushDense/extreme', obj: { name: 'nf-d', grads: f32([1, 1]), worker_id: '', seq: 0, incarnation: 0 } },
        ],
        1,
      );
      await send(
        h,
        [
          ...['nf-lr', 'nf-const', 'nf-uniform', 'nf-normal', 'nf-sum', 'nf-adagrad'].map(pull),
          { rpc: 'PullDense', kind: 'PullDense/extreme', obj: { names: ['nf-d'] } },
        ],
        1,
      );
    },
  },
  {
    name: 'full-pool',
    known: 'a full pool breaks commit and close',
    poolSize: '32M',
    needsAccess: 'it fills the pool with its own pushes, and checks their answers itself',
    async run(h, r) {
      await send(
        h,
        [
          {
            rpc: 'CreateTable',
            kind: 'CreateTable/fill',
            obj: { spec: { name: 'fill', dim: 256, optimizer: { type: 'sgd', params: { lr: 0.1 } }, initializer: { type: 'zeros' }, seed: 1 } },
          },
        ],
        1,
      );
      // Fill to the last row: batches halve after each refusal, down to one row.
      let refusals = 0;
      let next = 0n;
      for (let rows = 512; rows >= 1;) {
        const keys = packKeys(Array.from({ length: rows }, (_, i) => next + BigInt(i)));
        const o = await h.wire.call(
          'Push',
          encodeRequest('Push', { table: 'fill', keys, grads: Buffer.alloc(rows * 256 * 4), worker_id: '', seq: 0, incarnation: 0 }),
        );
        if (o.code === 0) next += BigInt(rows);
        else {
          refusals++;
          if (o.code !== 8) h.find('a push into a full pool is not RESOURCE_EXHAUSTED', `code ${o.code}: ${o.details.slice(0, 200)}`);
          rows = Math.floor(rows / 2);
        }
        if (next > 100_000n) break;
      }
      if (!refusals) h.find('the pool never filled', `${next} rows x 256 were accepted by a 32 MiB pool`);
      // A checkpoint whose record did not grow (the fill pushes had no worker id) must go on.
      await h.checkpoint().catch((e: Error) => h.find('a checkpoint of a steady size fails on a full pool', e.message));
      // State kept in DRAM that checkpoints and the clean-close record must hold: a 1 MiB dense
      // tensor and a thousand new workers. Each write is either refused or has its room.
      await send(
        h,
        [
          {
            rpc: 'SetDense',
            kind: 'SetDense/big',
            obj: { tensor: { name: 'big', values: Buffer.alloc(2 ** 20) }, optimizer: { type: 'sgd', params: { lr: 0.1 } } },
          },
        ],
        1,
      );
      await send(
        h,
        Array.from({ length: 1000 }, (_, i) => ledgerPush(`full${i}`, 1, i % 8)),
        8,
      );
      // A PREPARE whose record grew may be refused (RESOURCE_EXHAUSTED, nothing prepared); one that succeeds is aborted by the lane.
      const s = await state(h);
      await send(
        h,
        [
          {
            rpc: 'Checkpoint',
            kind: 'Checkpoint/prepare-grown',
            obj: { id: Math.max(s.C, s.last) + 1, phase: 'PREPARE', ballot: s.B + 1, meta: bigName(65_536, 0x6d), dense: [], incarnation: 0 },
          },
        ],
        1,
      );
      await h.check();
      await h.cleanRestart(r); // a clean stop on a full pool, and every acknowledged update back
    },
  },
  {
    name: 'prepared-across-restarts',
    async run(h, r) {
      // A coordinator that prepared and vanished, then a clean stop: the prepared checkpoint
      // survives, writes wait for it, an ABORT resolves it, and nothing acknowledged is lost.
      await send(h, [ledgerPush('pr', 1, 1), ledgerPush('pr', 2, 2)], 1);
      const s = await state(h);
      const b = s.B + 1;
      await h.call('RaiseBallot', { ballot: b });
      const p1 = Math.max(s.C, s.last) + 1;
      await h.call('Checkpoint', { id: p1, phase: 'PREPARE', ballot: b, meta: Buffer.from('p1'), dense: [], incarnation: 0 });
      if (!(await h.bounce('term'))) return;
      let st = await h.status();
      if (st.prepared_id !== p1 || !st.last_stop_clean || st.lineage !== h.lineage)
        h.find(
          'a prepared checkpoint did not survive a clean stop as it was',
          `prepared ${st.prepared_id} (expected ${p1}), last_stop_clean ${st.last_stop_clean}, lineage ${st.lineage} (was ${h.lineage})`,
        );
      h.incarnation = st.incarnation;
      await send(h, [ledgerPush('pr', 3, 3), ledgerPush('pr', 2, 2)], 1); // refused while blocked, or applied: the model follows the answers
      await h.call('Checkpoint', { id: p1, phase: 'ABORT', ballot: b });
      await h.check();
      await h.retryAcknowledged(r, 24, h.retryable);
      // The same, with kill -9: back at the committed checkpoint once the prepared one is aborted and the shard restored.
      const s2 = await state(h);
      const p2 = Math.max(s2.C, s2.last) + 1;
      await h.call('Checkpoint', { id: p2, phase: 'PREPARE', ballot: s2.B, meta: Buffer.from('p2'), dense: [], incarnation: 0 });
      await send(h, [ledgerPush('pr', 4, 4)], 1);
      if (!(await h.bounce('kill'))) return;
      st = await h.status();
      if (st.prepared_id !== p2 || st.committed_id !== h.ck.id || !st.needs_restore)
        h.find(
          'a prepared checkpoint did not survive kill -9 as it was',
          `prepared ${st.prepared_id} (expected ${p2}), committed ${st.committed_id}, needs_restore ${st.needs_restore}`,
        );
      await h.call('Checkpoint', { id: p2, phase: 'ABORT', ballot: (await h.status()).ballot });
      await h.check({ afterCrash: true });
      if (!(await h.restoreAfterCrash())) return;
      await h.check();
      await h.retryAcknowledged(r, 24, h.retryable);
    },
  },
  {
    name: 'kill-9-then-restore',
    async run(h, r) {
      await send(h, [ledgerPush('k9', 1, 1), ledgerPush('k9', 2, 2)], 1);
      await h.restart('kill', r);
      await send(h, [ledgerPush('k9', 3, 3), ledgerPush('k9', 1, 1)], 1);
      await h.restart('term', r);
    },
  },
];

/** Runs one case on a fresh server; returns its findings (none: the case passed). */
export async function runCase(name: string, seed = 1, auth?: AuthMode): Promise<Finding[]> {
  const c = ABUSE_CASES.find((x) => x.name === name);
  if (!c) throw new Error(`no abuse case "${name}"; the cases: ${ABUSE_CASES.map((x) => x.name).join(', ')}`);
  const replay = () => `node dist/test/fuzz.soak.js --case ${name} --seed ${seed}${auth ? ` --auth ${auth}` : ''}`;
  const h = await Harness.start({ seed, runSeed: seed, replay, poolSize: c.poolSize, auth });
  try {
    h.where = `case ${name}`;
    await c.run(h, new R(seed));
    if (h.alive()) await h.check();
    else h.find('the server exited', `log: ${h.logTail()}`);
    return [...h.findings];
  } finally {
    await h.close();
  }
}
