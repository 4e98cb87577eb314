// Regression tests for what hostile input did to a running pserver (issue 7):
// each case drove one real server through the wire and lost an acknowledged
// push, ended checkpoints for good, fenced out coordinators, answered a retry
// wrongly, echoed megabytes, or served non-finite rows. Each test below
// failed before its fix. Clients speak raw gRPC from the proto, as an
// attacker would; where a field must carry bytes no encoder would produce
// (invalid UTF-8), the request is encoded by hand.
import { after, before, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { LocalCluster } from '../examples/local-cluster';
import { parameterServerService } from '../proto/load';
import { PsClient } from '../worker';
import { poolDirs } from './helpers';

const dirs = poolDirs(after);
const clusters: LocalCluster[] = [];
after(() => clusters.forEach((c) => c.killAll()));

type Raw = grpc.Client & Record<string, any>;

function raw(endpoint: string): Raw {
  const Ctor = parameterServerService();
  return new Ctor(endpoint, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 * 2 ** 20,
    'grpc.max_send_message_length': 64 * 2 ** 20,
  }) as Raw;
}

function call<T = any>(c: Raw, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) =>
    c[method](req, { deadline: Date.now() + 30_000 }, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res))),
  );
}

/** A call whose request body is sent as given, encoded by hand. */
function rawCall(c: Raw, method: string, body: Buffer): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) =>
    c.makeUnaryRequest(
      `/pmemps.v1.ParameterServer/${method}`,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      { deadline: Date.now() + 30_000 },
      (err: grpc.ServiceError | null, res?: Buffer) => (err ? reject(err) : resolve(res)),
    ),
  );
}

/** The refusal of a call: its code, details and reason trailer. */
async function refusal(p: Promise<unknown>): Promise<{ code: grpc.status; details: string; reason: string; nextSeq?: string }> {
  try {
    await p;
  } catch (e) {
    const err = e as grpc.ServiceError;
    return {
      code: err.code,
      details: err.details,
      reason: String(err.metadata?.get('pmemps-reason')?.[0] ?? ''),
      nextSeq: err.metadata?.get('pmemps-next-seq')?.[0] as string | undefined,
    };
  }
  assert.fail('the call was expected to be refused');
}

function keys(...ks: number[]): Buffer {
  const b = Buffer.alloc(ks.length * 8);
  ks.forEach((k, i) => b.writeBigUInt64LE(BigInt(k), i * 8));
  return b;
}

function floats(...xs: number[]): Buffer {
  return Buffer.from(Float32Array.from(xs).buffer);
}

function f32(b: Buffer): number[] {
  return [...new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length))];
}

function allFinite(b: Buffer): boolean {
  return f32(b).every((x) => Number.isFinite(x));
}

// Protobuf by hand, for bytes the encoders would not produce.
function varint(n: bigint): Buffer {
  const out: number[] = [];
  do {
    let b = Number(n & 0x7fn);
    n >>= 7n;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return Buffer.from(out);
}
function lenField(no: number, v: Buffer): Buffer {
  return Buffer.concat([varint(BigInt((no << 3) | 2)), varint(BigInt(v.length)), v]);
}
function intField(no: number, v: number): Buffer {
  return Buffer.concat([varint(BigInt(no << 3)), varint(BigInt(v))]);
}
function rawPush(c: Raw, body: Buffer): Promise<{ duplicate: boolean }> {
  return new Promise((resolve, reject) =>
    c.makeUnaryRequest(
      '/pmemps.v1.ParameterServer/Push',
      (b: Buffer) => b,
      (b: Buffer) => ({ duplicate: b.length >= 2 && b[0] === 0x08 && b[1] === 1 }),
      body,
      { deadline: Date.now() + 30_000 },
      (err: grpc.ServiceError | null, res?: { duplicate: boolean }) => (err ? reject(err) : resolve(res!)),
    ),
  );
}

async function ckptState(c: Raw): Promise<{ ballot: number; committed: number; last: number; prepared: number }> {
  const s = await call(c, 'Status', {});
  return { ballot: s.ballot, committed: s.committed_id, last: s.last_checkpoint_id, prepared: s.prepared_id };
}

const SGD1 = { type: 'sgd', params: { lr: 1 } };

describe('hostile input through the wire', () => {
  let cl: LocalCluster;
  let c: Raw;
  let endpoint: string;
  before(async () => {
    cl = await LocalCluster.start({ dir: dirs('hostile'), shards: 1, cacheMb: 16, poolSize: '128M', logLevel: 'warn' });
    clusters.push(cl);
    endpoint = cl.endpoints[0];
    c = raw(endpoint);
    await call(c, 'CreateTable', { spec: { name: 't', dim: 2, optimizer: SGD1, initializer: { type: 'zeros' }, seed: 1 } });
  });
  after(async () => {
    c.close();
    await cl.stop();
  });

  async function restartClean(): Promise<void> {
    c.close();
    const code = await cl.kill(0, 'SIGTERM');
    assert.equal(code, 0, 'a clean stop exits 0');
    await cl.startShard(0);
    c = raw(endpoint);
    assert.equal((await call(c, 'Status', {})).last_stop_clean, true);
  }

  test('defect 1: a 64 KiB worker_id is refused at the door; checkpoints and the clean stop keep every acknowledged push', async () => {
    const r = await refusal(call(c, 'Push', { table: 't', keys: Buffer.alloc(0), grads: Buffer.alloc(0), worker_id: 'w'.repeat(65_536), seq: 1 }));
    assert.equal(r.code, grpc.status.INVALID_ARGUMENT);
    assert.match(r.details, /worker_id is longer than 128 bytes/);
    // The longest id allowed, in a checkpoint and in the close record.
    const seq = Date.now() * 1000;
    await call(c, 'Push', { table: 't', keys: keys(1), grads: floats(1, 2), worker_id: 'x'.repeat(128), seq });
    const st = await ckptState(c);
    const id = st.last + 1;
    await call(c, 'Checkpoint', { id, phase: 'PREPARE', ballot: st.ballot });
    await call(c, 'Checkpoint', { id, phase: 'COMMIT', ballot: st.ballot });
    await call(c, 'Push', { table: 't', keys: keys(1), grads: floats(1, 2), worker_id: 'y', seq });
    await restartClean();
    assert.deepEqual(f32((await call(c, 'Pull', { table: 't', keys: keys(1) })).values), [-2, -4]);
    // ...and the retries are still recognised after the stop.
    assert.equal((await call(c, 'Push', { table: 't', keys: keys(1), grads: floats(1, 2), worker_id: 'x'.repeat(128), seq })).duplicate, true);
    assert.equal((await call(c, 'Push', { table: 't', keys: keys(1), grads: floats(1, 2), worker_id: 'y', seq })).duplicate, true);
  });

  test('defect 4: a checkpoint id far above the last is refused; ids stay usable', async () => {
    const before = await ckptState(c);
    for (const phase of ['ABORT', 'PREPARE']) {
      const r = await refusal(call(c, 'Checkpoint', { id: 2 ** 52 - 1, phase, ballot: before.ballot }));
      assert.equal(r.code, grpc.status.OUT_OF_RANGE, phase);
      assert.equal(r.reason, 'id_step');
    }
    assert.deepEqual(await ckptState(c), before, 'the refusals moved nothing');
    // The largest step accepted, then the next checkpoint works as ever.
    const far = Math.max(before.last, before.committed) + 2 ** 20;
    await call(c, 'Checkpoint', { id: far, phase: 'ABORT', ballot: before.ballot });
    await call(c, 'Checkpoint', { id: far + 1, phase: 'PREPARE', ballot: before.ballot });
    await call(c, 'Checkpoint', { id: far + 1, phase: 'COMMIT', ballot: before.ballot });
    assert.equal((await ckptState(c)).committed, far + 1);
  });

  test('defect 5: a ballot far above the shard is refused; the SDK still takes one', async () => {
    const before = await ckptState(c);
    for (const b of [2 ** 52 - 1, before.ballot + 2 ** 20 + 1]) {
      const r = await refusal(call(c, 'RaiseBallot', { ballot: b }));
      assert.equal(r.code, grpc.status.OUT_OF_RANGE);
      assert.equal(r.reason, 'ballot_step');
    }
    const r = await refusal(call(c, 'Checkpoint', { id: before.last + 1, phase: 'PREPARE', ballot: 2 ** 52 - 1 }));
    assert.equal(r.reason, 'ballot_step');
    assert.deepEqual(await ckptState(c), before);
    // An attacker raising by the most one call allows: a coordinator walks past it.
    await call(c, 'RaiseBallot', { ballot: before.ballot + 2 ** 20 });
    await call(c, 'RaiseBallot', { ballot: before.ballot + 2 ** 21 });
    const ps = await PsClient.connect({ endpoints: [endpoint] });
    try {
      await ps.persist({ step: 1 });
      assert.ok(ps.ballot > before.ballot + 2 ** 21);
    } finally {
      ps.close();
    }
  });

  test('defect 6: a refused COMMIT or Restore does not raise the ballot', async () => {
    const before = await ckptState(c);
    let r = await refusal(call(c, 'Checkpoint', { id: before.last + 5, phase: 'COMMIT', ballot: before.ballot + 1000 }));
    assert.equal(r.code, grpc.status.FAILED_PRECONDITION);
    r = await refusal(call(c, 'Restore', { ballot: before.ballot + 1000, checkpoint_id: 999 }));
    assert.equal(r.code, grpc.status.FAILED_PRECONDITION);
    r = await refusal(call(c, 'Checkpoint', { id: before.committed, phase: 'ABORT', ballot: before.ballot + 1000 }));
    assert.equal(r.code, grpc.status.FAILED_PRECONDITION);
    assert.deepEqual(await ckptState(c), before, 'the ballot and the ids are where they were');
  });

  test('defect 8: worker ids that are not UTF-8 are refused, so two of them never share a record', async () => {
    const st = await call(c, 'Status', {});
    const body = (id: Buffer) =>
      Buffer.concat([
        lenField(1, Buffer.from('t')),
        lenField(2, keys(7)),
        lenField(3, floats(1, 1)),
        lenField(4, id),
        intField(5, 1),
        intField(6, st.incarnation),
      ]);
    for (const id of [Buffer.from([0x72, 0x74, 0x2d, 0xff]), Buffer.from([0x72, 0x74, 0x2d, 0xfe])]) {
      const r = await refusal(rawPush(c, body(id)));
      assert.equal(r.code, grpc.status.INVALID_ARGUMENT);
      assert.match(r.details, /worker_id is not valid UTF-8/);
    }
    const pulled = (await call(c, 'Pull', { table: 't', keys: keys(7) })).values as Buffer;
    assert.deepEqual(f32(pulled), [0, 0], 'neither push was applied');
    // Valid UTF-8 ids that differ are two workers.
    await rawPush(c, body(Buffer.from('rt-\u00ff')));
    assert.equal((await rawPush(c, body(Buffer.from('rt-\u00fe')))).duplicate, false);
  });

  test('defect 10: a 1 MiB name gets a short error in every call that takes one', async () => {
    const big = 'n'.repeat(2 ** 20);
    const calls: [string, unknown][] = [
      ['UpdateTable', { name: big, params: { lr: 0.1 } }],
      ['DropTable', { name: big }],
      ['Pull', { table: big, keys: keys(1) }],
      ['Push', { table: big, keys: keys(1), grads: floats(1, 1) }],
      ['PullDense', { names: [big] }],
      ['PushDense', { name: big, grads: floats(1) }],
      ['SetDense', { tensor: { name: big, values: floats(1) }, optimizer: SGD1 }],
      ['CreateTable', { spec: { name: big, dim: 2, optimizer: SGD1, initializer: { type: 'zeros' } } }],
      ['Barrier', { name: big, generation: 1, parties: 2, worker_id: 'w' }],
      ['Barrier', { name: 'b', generation: 1, parties: 2, worker_id: big }],
    ];
    for (const [m, req] of calls) {
      const r = await refusal(call(c, m, req));
      assert.equal(r.code, grpc.status.INVALID_ARGUMENT, m);
      assert.ok(Buffer.byteLength(r.details) < 1024, `${m}: ${Buffer.byteLength(r.details)} bytes of details`);
    }
  });

  test('defect 11: names of Object.prototype are no optimizer, and nothing non-finite is ever stored or served', async () => {
    for (const type of ['__proto__', 'constructor', 'hasOwnProperty', 'toString']) {
      let r = await refusal(call(c, 'CreateTable', { spec: { name: 'p', dim: 2, optimizer: { type, params: { lr: 1 } }, initializer: { type: 'zeros' } } }));
      assert.equal(r.code, grpc.status.INVALID_ARGUMENT, type);
      assert.match(r.details, /unknown optimizer/);
      r = await refusal(call(c, 'SetDense', { tensor: { name: 'd', values: floats(1) }, optimizer: { type, params: { lr: 1 } } }));
      assert.equal(r.code, grpc.status.INVALID_ARGUMENT, type);
      assert.match(r.details, /unknown optimizer/);
    }
    const params = JSON.parse('{"lr": 1, "constructor": 2}');
    const r = await refusal(call(c, 'CreateTable', { spec: { name: 'p', dim: 2, optimizer: { type: 'sgd', params }, initializer: { type: 'zeros' } } }));
    assert.equal(r.code, grpc.status.INVALID_ARGUMENT);
    assert.match(r.details, /no hyperparameter "constructor"/);

    // Hyperparameters and initializers that are not finite in float32.
    const bad: unknown[] = [
      { name: 'a', dim: 2, optimizer: { type: 'sgd', params: { lr: 1e308 } }, initializer: { type: 'zeros' } },
      { name: 'a', dim: 2, optimizer: SGD1, initializer: { type: 'constant', value: 1e39 } },
      { name: 'a', dim: 2, optimizer: SGD1, initializer: { type: 'uniform', min: -1e300, max: 1e300 } },
      { name: 'a', dim: 2, optimizer: SGD1, initializer: { type: 'normal', mean: 3e38, std: 1e38 } },
    ];
    for (const spec of bad) assert.equal((await refusal(call(c, 'CreateTable', { spec }))).code, grpc.status.INVALID_ARGUMENT, JSON.stringify(spec));
    assert.equal((await refusal(call(c, 'UpdateTable', { name: 't', params: { lr: 1e39 } }))).code, grpc.status.INVALID_ARGUMENT);
    assert.equal(
      (await refusal(call(c, 'SetDense', { tensor: { name: 'd', values: floats(1) }, optimizer: { type: 'sgd', params: { lr: 1e39 } } }))).code,
      grpc.status.INVALID_ARGUMENT,
    );

    // Gradients finite one by one whose sum is not: refused, nothing changed.
    await call(c, 'CreateTable', {
      spec: { name: 'big', dim: 2, optimizer: { type: 'sgd', params: { lr: 1e30 } }, initializer: { type: 'constant', value: 1 } },
    });
    const k4 = keys(3, 3, 3, 3);
    const before = (await call(c, 'Pull', { table: 'big', keys: keys(3, 4) })).values as Buffer;
    let e = await refusal(call(c, 'Push', { table: 'big', keys: k4, grads: floats(3e38, 3e38, 3e38, 3e38, 3e38, 3e38, 3e38, 3e38) }));
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /after summing/);
    // An update that would overflow the row, in a batch with a harmless one:
    // the whole batch is refused.
    e = await refusal(call(c, 'Push', { table: 'big', keys: keys(4, 3), grads: floats(1e-30, 1e-30, 1e10, 1e10) }));
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /non-finite/);
    assert.deepEqual((await call(c, 'Pull', { table: 'big', keys: keys(3, 4) })).values, before, 'the refused pushes changed nothing');
    // The same through a rows' step at a time: never a NaN or inf served.
    for (let i = 0; i < 4; i++) {
      await call(c, 'Push', { table: 'big', keys: keys(5), grads: floats(1e8, -1e8) }).catch(() => undefined);
      assert.ok(allFinite((await call(c, 'Pull', { table: 'big', keys: keys(5) })).values));
    }
    // Dense tensors too.
    await call(c, 'SetDense', { tensor: { name: 'd', values: floats(3e38) }, optimizer: { type: 'sgd', params: { lr: 1 } } });
    e = await refusal(call(c, 'PushDense', { name: 'd', grads: floats(-3e38) }));
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    const d = (await call(c, 'PullDense', { names: ['d'] })).tensors[0].values as Buffer;
    assert.deepEqual(f32(d), [Math.fround(3e38)]);
  });

  test('a refused SetDense takes no pool space (it reserved the close record for the tensor first)', async () => {
    const used = async (): Promise<number> => Number((await call(c, 'Status', {})).pool_used_bytes);
    const adam = { type: 'adam', params: { lr: 0.01 } };
    const values = new Float32Array(2 ** 22); // 16 MiB, 48 MiB with Adam's state
    values[values.length - 1] = NaN;
    const before = await used();
    const r = await refusal(call(c, 'SetDense', { tensor: { name: 'big', values: Buffer.from(values.buffer) }, optimizer: adam }));
    assert.equal(r.code, grpc.status.INVALID_ARGUMENT);
    assert.match(r.details, /element 4194303 is not finite/);
    assert.equal(await used(), before, 'pool bytes in use after the refused SetDense');
    assert.equal((await refusal(call(c, 'PullDense', { names: ['big'] }))).code, grpc.status.NOT_FOUND);
  });

  test('a body that is no protobuf message is INVALID_ARGUMENT in every RPC, never INTERNAL', async () => {
    const methods = Object.keys(parameterServerService().service);
    assert.equal(methods.length, 16);
    for (const m of methods)
      for (const body of [Buffer.from([0xff]), Buffer.from([0x0f]), Buffer.from([0x08, 0x80])]) {
        const r = await refusal(rawCall(c, m, body));
        assert.equal(r.code, grpc.status.INVALID_ARGUMENT, `${m}: ${r.code} ${r.details}`);
        assert.match(r.details, new RegExp(`not a valid ${m} message`));
      }
    assert.equal((await call(c, 'Status', {})).needs_restore, false, 'the server lives and answers');
  });

  test('a field sent with another wire type is refused, never skipped: a push cannot slip past its incarnation check', async () => {
    // Standard parsers skip a known field of another wire type as unknown:
    // a Push whose incarnation came as fixed64 was applied unchecked.
    const fixed64 = (no: number, v: number) => {
      const b = Buffer.alloc(9);
      b[0] = (no << 3) | 1;
      b.writeBigUInt64LE(BigInt(v), 1);
      return b;
    };
    const push = Buffer.concat([lenField(1, Buffer.from('t')), lenField(2, keys(8)), lenField(3, floats(1, 1)), fixed64(6, 12345)]);
    const r = await refusal(rawPush(c, push));
    assert.equal(r.code, grpc.status.INVALID_ARGUMENT, `${r.code} ${r.details}`);
    assert.match(r.details, /not a valid Push message.*"incarnation" came with wire type 1/);
    assert.deepEqual(f32((await call(c, 'Pull', { table: 't', keys: keys(8) })).values as Buffer), [0, 0], 'the push was not applied');
    // The same through the protobufjs path: a Checkpoint whose id came as fixed64, a Pull's table as a varint.
    const st = await ckptState(c);
    const ckpt = await refusal(rawCall(c, 'Checkpoint', Buffer.concat([fixed64(1, st.last + 1), intField(2, 1)])));
    assert.equal(ckpt.code, grpc.status.INVALID_ARGUMENT, `${ckpt.code} ${ckpt.details}`);
    assert.match(ckpt.details, /CheckpointRequest field "id" came as a 64-bit value/);
    assert.deepEqual(await ckptState(c), st, 'the refused checkpoint changed nothing');
    const pull = await refusal(rawCall(c, 'Pull', Buffer.concat([intField(1, 5), lenField(2, keys(8))])));
    assert.equal(pull.code, grpc.status.INVALID_ARGUMENT);
    assert.match(pull.details, /"table" came with wire type 0/);
  });

  test('a request of millions of tiny entries is refused before it is decoded; the server stays up and responsive', async () => {
    // A review's attack: a 63 MiB Checkpoint of 33M empty `dense` entries
    // held the event loop for 84 s and ran the server out of heap, since
    // protobufjs made every entry into objects before the door's 4,096
    // bound. 2M entries here (4 MiB) took seconds and hundreds of MiB.
    const send = (m: string, body: Buffer) => refusal(rawCall(c, m, body));
    const repeat = (unit: number[], n: number) => Buffer.from(new Uint8Array(unit.length * n).map((_, i) => unit[i % unit.length]));
    // Checkpoint PREPARE id 1 with 2M empty dense entries (field 5).
    const ckpt = Buffer.concat([Buffer.from([0x08, 0x01, 0x10, 0x01]), repeat([0x2a, 0x00], 2_000_000)]);
    // PullDense with 2M empty names (field 1).
    const names = repeat([0x0a, 0x00], 2_000_000);
    // CreateTable whose spec.optimizer.params (nested two deep) has 100k entries.
    const entries = repeat([0x12, 0x00], 100_000);
    const opt = Buffer.concat([Buffer.from([0x0a, 3]), Buffer.from('sgd'), entries]);
    const varint = (n: number) => {
      const o: number[] = [];
      for (; n >= 128; n = Math.floor(n / 128)) o.push((n % 128) | 128);
      return Buffer.from([...o, n]);
    };
    const spec = Buffer.concat([Buffer.from([0x0a, 5]), Buffer.from('flood'), Buffer.from([0x10, 4, 0x1a]), varint(opt.length), opt]);
    const create = Buffer.concat([Buffer.from([0x0a]), varint(spec.length), spec]);
    const t0 = Date.now();
    for (const [m, body, field] of [
      ['Checkpoint', ckpt, 'dense'],
      ['PullDense', names, 'names'],
      ['CreateTable', create, 'params'],
    ] as const) {
      const r = await send(m, body);
      assert.equal(r.code, grpc.status.INVALID_ARGUMENT, `${m}: ${r.code} ${r.details}`);
      assert.match(r.details, new RegExp(`"${field}" more than 4096 times`));
    }
    // Refused after 4,097 entries each: well under the seconds a decode took.
    assert.ok(Date.now() - t0 < 5_000, `took ${Date.now() - t0} ms`);
    const st = await call(c, 'Status', {});
    assert.equal(st.prepared_id, 0, 'nothing was prepared');
    assert.ok(!st.tables.some((t: { spec: { name: string } }) => t.spec.name === 'flood'), 'no table was made');
    // At the bound itself a request still decodes and reaches the handler
    // (which finds no such tensor).
    const r = await refusal(call(c, 'PullDense', { names: Array.from({ length: 4096 }, (_, i) => `n${i}`) }));
    assert.equal(r.code, grpc.status.NOT_FOUND, r.details);
    assert.match(r.details, /no dense tensor "n0"/);
  });

  test('a compressed request is refused before it is inflated; uncompressed calls go on', async () => {
    // A review's attack: gzip'd pulls of 63 KiB each inflated to 63 MiB
    // each inside grpc-js, past the receive budget (which counts wire bytes).
    const Ctor = parameterServerService();
    const gz = new Ctor(endpoint, grpc.credentials.createInsecure(), { 'grpc.default_compression_algorithm': 2 }) as Raw;
    try {
      for (const [m, req] of [
        ['Status', {}],
        ['Pull', { table: 't', keys: keys(1, 2) }],
      ] as const) {
        const r = await refusal(call(gz, m, req));
        assert.equal(r.code, grpc.status.UNIMPLEMENTED, `${m}: ${r.code} ${r.details}`);
        assert.match(r.details, /compressed requests are not accepted \(grpc-encoding: gzip\); send them uncompressed/);
      }
    } finally {
      gz.close();
    }
    assert.equal((await call(c, 'Pull', { table: 't', keys: keys(1) })).values.length, 8);
  });

  test('one barrier call with a huge generation does not release the later rounds of its name', async () => {
    // A review's attack: generation 2^52-1 with parties 1 was released at
    // once, and every later round of "step" then returned without waiting.
    const barrier = (generation: number, worker: string, ms: number) =>
      new Promise<string>((resolve) =>
        c.Barrier(
          { name: 'step', generation, parties: worker === 'x' ? 1 : 2, worker_id: worker },
          { deadline: Date.now() + ms },
          (e: grpc.ServiceError | null) => resolve(e ? grpc.status[e.code] : 'OK'),
        ),
      );
    assert.equal(await barrier(2 ** 52 - 1, 'x', 5_000), 'OK');
    assert.equal(await barrier(7, 'a', 1_000), 'DEADLINE_EXCEEDED', 'one party of two waits for the other');
    const [a, b] = await Promise.all([barrier(7, 'a', 10_000), barrier(7, 'b', 10_000)]);
    assert.deepEqual([a, b], ['OK', 'OK']);
    assert.equal(await barrier(7, 'a', 5_000), 'OK', 'a retry of a released round returns at once');
    // A restore rewinds the job's steps: step 7 is a round again, not a retry.
    const st = await ckptState(c);
    const id = st.last + 1;
    await call(c, 'Checkpoint', { id, phase: 'PREPARE', ballot: st.ballot + 1 });
    await call(c, 'Checkpoint', { id, phase: 'COMMIT', ballot: st.ballot + 1 });
    await call(c, 'Restore', { ballot: st.ballot + 2, checkpoint_id: id });
    assert.equal(await barrier(7, 'a', 1_000), 'DEADLINE_EXCEEDED', 'after a restore one party of two waits again');
  });

  test('a barrier party whose call was cancelled is not counted: the others wait for it to come again', async () => {
    const barrier = (worker: string, ms: number) =>
      new Promise<string>((resolve) =>
        c.Barrier({ name: 'gone', generation: 1, parties: 3, worker_id: worker }, { deadline: Date.now() + ms }, (e: grpc.ServiceError | null) =>
          resolve(e ? grpc.status[e.code] : 'OK'),
        ),
      );
    const a = barrier('a', 30_000);
    assert.equal(await barrier('b', 500), 'DEADLINE_EXCEEDED', 'b waits, then gives up');
    assert.equal(await barrier('c', 1_000), 'DEADLINE_EXCEEDED', 'c is the second party there, not the third');
    const [b, c2] = await Promise.all([barrier('b', 10_000), barrier('c', 10_000)]);
    assert.deepEqual([await a, b, c2], ['OK', 'OK', 'OK'], 'the three parties there at once are released');
  });

  test('barrier calls are bounded per worker and in total, and a mass cancel is cheap (found by a review, 2026-12-02)', async () => {
    const { Barriers, MAX_WAITING_CALLS, MAX_CALLS_PER_WORKER } = await import('../server/barrier');
    const { EventEmitter } = await import('node:events');
    const b = new Barriers();
    const calls: InstanceType<typeof EventEmitter>[] = [];
    const arrive = (worker: string, gen = 1, parties = 65_536) => {
      const call = new EventEmitter();
      calls.push(call);
      return b.arrive('flood', gen, parties, worker, call as unknown as grpc.ServerUnaryCall<unknown, unknown>);
    };
    const outcomes: Promise<string>[] = [];
    const track = (p: Promise<unknown>) =>
      outcomes.push(
        p.then(
          () => 'OK',
          (e: Error) => e.message,
        ),
      );
    for (let i = 0; i < MAX_CALLS_PER_WORKER; i++) track(arrive('same'));
    await assert.rejects(arrive('same'), /worker "same" already has 4 calls waiting at barrier "flood" generation 1, the limit/);
    const first = arrive('x', 3, 2); // the first of a round of two
    for (let i = MAX_CALLS_PER_WORKER + 1; i < MAX_WAITING_CALLS; i++) track(arrive(`w${i}`));
    await assert.rejects(arrive('one-more'), /16384 barrier calls are waiting on this server, its limit/);
    await assert.rejects(arrive('one-more', 2), /16384 barrier calls are waiting on this server, its limit/, 'a new round too');
    // A round's last party is let in at the limit: it releases the round.
    assert.deepEqual(await Promise.all([first, arrive('y', 3, 2)]), [{}, {}]);
    for (const call of calls) call.emit('cancelled');
    const got = await Promise.all(outcomes);
    assert.equal(got.filter((m) => m === 'barrier call cancelled').length, MAX_WAITING_CALLS - 1);
    // Every call left: the limit is free again, and a round of two releases.
    const pair = [arrive('p', 5, 2), arrive('q', 5, 2)];
    assert.deepEqual(await Promise.all(pair), [{}, {}]);
  });

  test('defect 7: many new worker ids never make a retry count twice; a forgotten seq is refused, and the SDK carries on', async () => {
    const st = await call(c, 'Status', {});
    const seq = Date.now() * 1000;
    const victim = { table: 't', keys: keys(9), grads: floats(1, 1), worker_id: 'victim', seq, incarnation: st.incarnation };
    assert.equal((await call(c, 'Push', victim)).duplicate, false);
    assert.equal((await call(c, 'Push', victim)).duplicate, true);
    // More new workers than the shard remembers (16,384): victim's record goes.
    const n = 16_384 + 64;
    for (let i = 0; i < n; i += 256)
      await Promise.all(
        Array.from({ length: Math.min(256, n - i) }, (_, j) =>
          call(c, 'Push', {
            table: 't',
            keys: Buffer.alloc(0),
            grads: Buffer.alloc(0),
            worker_id: `flood-${i + j}`,
            seq: seq + 1,
            incarnation: st.incarnation,
          }),
        ),
      );
    const r = await refusal(call(c, 'Push', victim));
    assert.equal(r.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(r.reason, 'too_old', 'the retry is refused, not applied again');
    assert.ok(Number(r.nextSeq) > seq);
    const row = (await call(c, 'Pull', { table: 't', keys: keys(9) })).values as Buffer;
    assert.deepEqual(f32(row), [-1, -1], 'applied exactly once');
    // The watermark survives a clean stop.
    await restartClean();
    const st2 = await call(c, 'Status', {});
    assert.equal((await refusal(call(c, 'Push', { ...victim, incarnation: st2.incarnation }))).reason, 'too_old');
    // An SDK worker whose clock-based seqs fall below the watermark (its
    // record was forgotten) sends its never-applied push again above it.
    const ps = await PsClient.connect({ endpoints: [endpoint], workerId: 'victim' });
    try {
      (ps as unknown as { seqs: number[] }).seqs[0] = seq - 10;
      await ps.push('t', [9], Float32Array.from([1, 1]));
      const after = (await ps.pull('t', [9])) as Float32Array;
      assert.deepEqual([...after], [-2, -2]);
    } finally {
      ps.close();
    }
    // A seq far ahead of the server's clock is refused: nobody can raise
    // the watermark beyond the present.
    const ahead = await refusal(call(c, 'Push', { ...victim, worker_id: 'future', seq: 2 ** 52 - 1, incarnation: st2.incarnation }));
    assert.equal(ahead.code, grpc.status.INVALID_ARGUMENT);
    assert.match(ahead.details, /ahead of this server's clock/);
  });
});

describe('a pull sized with a dim that changed (found by a review, 2026-12-02)', () => {
  test('a table brought back by the commit of a checkpoint prepared before a crash is sized with its own dim', async () => {
    const cl = await LocalCluster.start({
      dir: dirs('stale-dim'),
      shards: 1,
      cacheMb: 16,
      poolSize: '128M',
      logLevel: 'warn',
      env: { PMEMPS_MAX_MESSAGE_MB: '4', PMEMPS_REPLY_MB: '8', PMEMPS_REPLY_MB_PER_CONNECTION: '5', PMEMPS_RECV_MB_PER_CONNECTION: '8' },
    });
    clusters.push(cl);
    let c = raw(cl.endpoints[0]);
    try {
      const spec = (dim: number) => ({ spec: { name: 'x', dim, optimizer: SGD1, initializer: { type: 'zeros' }, seed: 1 } });
      await call(c, 'CreateTable', spec(1));
      await call(c, 'Checkpoint', { id: 1, phase: 'PREPARE', ballot: 1 });
      await call(c, 'Checkpoint', { id: 1, phase: 'COMMIT', ballot: 1 });
      await call(c, 'DropTable', { name: 'x' });
      await call(c, 'CreateTable', spec(4096));
      await call(c, 'Checkpoint', { id: 2, phase: 'PREPARE', ballot: 1 });
      c.close();
      await cl.kill(0, 'SIGKILL');
      await cl.startShard(0);
      c = raw(cl.endpoints[0]);
      // Back at checkpoint 1 (x of dim 1), with 2 prepared: the service learns dim 1.
      assert.equal((await call(c, 'Pull', { table: 'x', keys: keys(1) })).values.length, 4);
      await call(c, 'Checkpoint', { id: 2, phase: 'COMMIT', ballot: 1 });
      // x is dim 4096 now: 200 keys are 3.1 MiB, under the 4 MiB limit...
      const ks = keys(...Array.from({ length: 200 }, (_, i) => i));
      assert.equal((await call(c, 'Pull', { table: 'x', keys: ks })).values.length, 200 * 4096 * 4);
      // ...and 100,000 keys (0.8 MiB of request) are 1.5 GiB of rows: refused before any is allocated.
      const many = keys(...Array.from({ length: 100_000 }, (_, i) => i));
      const r = await refusal(call(c, 'Pull', { table: 'x', keys: many }));
      assert.equal(r.code, grpc.status.RESOURCE_EXHAUSTED);
      assert.match(r.details, /100000 keys x dim 4096 is 1562\.5 MiB, above the server's --max-message-mb 4/);
      assert.equal((await call(c, 'Status', {})).committed_id, 2, 'the server is up');
    } finally {
      c.close();
      await cl.stop();
    }
  });
});
