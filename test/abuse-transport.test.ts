// Transport abuse against a real pserver process (server/transport-limits.ts):
// clients that never read their replies, idle and half-sent connections,
// floods of connections. The abusers are raw node:http2 sessions on
// loopback; a well-behaved SDK client runs alongside and must keep working.
import * as assert from 'node:assert/strict';
import * as http2 from 'node:http2';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { LocalCluster } from '../examples/local-cluster';
import { DEFAULT_TRANSPORT_LIMITS, http2ServersOf, TransportGuard } from '../server/transport-limits';
import { PsClient } from '../worker';
import { bareSocket, grpcFrame, openFds, PULL_PATH, RawSession, rssMiB, slowReader, type StreamEnd, unfinishedFrame, within } from './abuse.lib';
import { FAST_CODECS } from '../proto/fast-codec';
import { poolDirs } from './helpers';

const dirOf = poolDirs(after);

const WIDE = { name: 'wide', dim: 4096, seed: 3, optimizer: { type: 'sgd' as const, lr: 0.1 }, initializer: { type: 'uniform' as const, min: -1, max: 1 } };
const SMALL = { name: 'small', dim: 8, seed: 4, optimizer: { type: 'sgd' as const, lr: 0.1 }, initializer: { type: 'zeros' as const } };

function keyBuf(n: number, from = 0): Buffer {
  return Buffer.from(BigUint64Array.from({ length: n }, (_, i) => BigInt(from + i)).buffer);
}

/** A well-behaved SDK client pulling small batches in a loop until stopped: how many calls succeeded, the first error. */
function legitLoop(ps: PsClient, table: string, keys: number): { stop: () => Promise<{ ok: number; error: Error | null }> } {
  let running = true;
  let ok = 0;
  let error: Error | null = null;
  const done = (async () => {
    for (let i = 0; running && !error; i++) {
      try {
        await ps.pull(table, keyBuf(keys, (i * 37) % 1000));
        ok++;
      } catch (e) {
        error = e as Error;
      }
    }
  })();
  return {
    stop: async () => {
      running = false;
      await done;
      return { ok, error };
    },
  };
}

// What the server holds, not what it has yet to collect: the lowest RSS over
// `ms` while the well-behaved client keeps it busy. A single sample counts
// the buffers of replies already dropped until V8 happens to collect them
// (it collects external memory in batches of about 64 MiB), which is as
// large as the bound itself; over a second of traffic a collection runs.
async function rssFloor(pid: number, ms: number): Promise<number> {
  let low = rssMiB(pid);
  for (const until = Date.now() + ms; Date.now() < until;) {
    await new Promise((r) => setTimeout(r, 20)); // a sampling period, not a synchronisation
    low = Math.min(low, rssMiB(pid));
  }
  return low;
}

describe('slow readers (defect 9: 2 connections x 8 unread pulls of 1,024 keys x dim 4096)', () => {
  let cluster: LocalCluster;
  let ps: PsClient;
  before(async () => {
    // Default budgets; only the stall time is short, so a round takes a second.
    cluster = await LocalCluster.start({ dir: dirOf('abuse-slow'), shards: 1, env: { PMEMPS_STALL_SECONDS: '1' } });
    ps = await PsClient.connect({ endpoints: cluster.endpoints });
    await ps.createTable(WIDE);
  });
  after(async () => {
    ps?.close();
    await cluster?.stop();
  });

  test('10 rounds: RSS back below idle + 64 MiB after each, bounded while held, not growing; the readers are closed; an SDK client keeps pulling', async () => {
    const pid = cluster.procs[0]!.pid!;
    const keys = keyBuf(1024);
    // Idle level: after the server has served one such pull to a reader that reads it.
    assert.equal((await ps.pull(WIDE.name, keys)).length, 1024 * WIDE.dim);
    const idle = await rssFloor(pid, 500);
    const legit = legitLoop(ps, WIDE.name, 16);
    const held: number[] = [];
    const settled: number[] = [];
    const peaks: number[] = [];
    const show = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(' ');
    try {
      for (let round = 0; round < 10; round++) {
        let peak = rssMiB(pid);
        // Sampling /proc is the measurement here, not a synchronisation.
        const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 5);
        const readers = [0, 1].map(() => slowReader(cluster.endpoints[0], WIDE.name, keys, 8));
        // While the server holds the readers' replies...
        await within(Promise.all(readers.map((r) => r.replying)), 10_000, 'the server replying to the slow readers');
        // Within the 1 s the server waits before closing them: their replies stay queued throughout.
        held.push(await rssFloor(pid, 300));
        // ... and once it has dealt with them.
        const ended = await within(Promise.all(readers.map((r) => r.ends)), 10_000, 'the server ending every stream of the slow readers').then(
          (ends) => ends,
          () => null,
        );
        settled.push(await rssFloor(pid, 1000));
        clearInterval(sampler);
        peaks.push(Math.max(peak, ...settled.slice(-1)));
        for (const r of readers) r.raw.destroy();
        const where = `idle ${idle.toFixed(0)} MiB; RSS while held ${show(held)}, after ${show(settled)}`;
        assert.ok(
          settled[round] < idle + 64,
          `round ${round}: server RSS ${settled[round].toFixed(0)} MiB once it dealt with the readers, above idle + 64 MiB (${where})`,
        );
        // While held: the two replies the budget lets through (2 x 16 MiB)
        // are queued, and the other buffers of their making (rows and
        // encoding, 2 x 2 x 16 MiB) may not be collected yet (V8 collects
        // external memory in batches of about 64 MiB): at most everything
        // those two replies allocated, plus 16 MiB.
        assert.ok(
          held[round] < idle + 112,
          `round ${round}: server RSS ${held[round].toFixed(0)} MiB while holding the readers' replies, above idle + 112 MiB (${where})`,
        );
        assert.ok(ended, `round ${round}: the server left streams of readers that read nothing open for 10 s`);
        for (const r of readers)
          assert.equal(
            r.raw.goaway,
            http2.constants.NGHTTP2_ENHANCE_YOUR_CALM,
            'the server closes a connection that reads none of its replies with ENHANCE_YOUR_CALM',
          );
        // What did not get through waited for budget and was refused, or went with the connection.
        for (const e of ended!.flat())
          assert.ok(e.grpcStatus === 8 || e.grpcStatus === null, `a slow reader's pull ended with gRPC status ${e.grpcStatus} (${e.grpcMessage})`);
      }
    } finally {
      const { ok, error } = await legit.stop();
      assert.equal(error, null, `the well-behaved client's pull failed during the abuse: ${error?.message}`);
      assert.ok(ok > 10, `the well-behaved client completed only ${ok} pulls in 10 rounds`);
    }
    // No growth from round to round: after the last five rounds no higher
    // than after the first five, give or take the two replies.
    const early = Math.max(...settled.slice(0, 5));
    const late = Math.max(...settled.slice(5));
    assert.ok(late <= early + 32, `RSS grows from round to round: while held ${show(held)}, after ${show(settled)} MiB`);
    console.log(
      `slow readers: server RSS idle ${idle.toFixed(0)} MiB; per round while held ${show(held)}, after ${show(settled)}, highest sample ${show(peaks)} MiB`,
    );
  });

  test('MAX_CONCURRENT_STREAMS is advertised and leaves room for the SDK (256 pushes in flight plus pull chunks)', async () => {
    const raw = new RawSession(cluster.endpoints[0]);
    await raw.connected;
    const n = raw.session.remoteSettings.maxConcurrentStreams!;
    raw.destroy();
    assert.equal(n, 1024);
  });
});

describe('idle, half-sent and flooding connections', () => {
  const MAX_CONNECTIONS = 200;
  let cluster: LocalCluster;
  let ps: PsClient;
  before(async () => {
    cluster = await LocalCluster.start({
      dir: dirOf('abuse-conn'),
      shards: 1,
      env: { PMEMPS_IDLE_SECONDS: '1', PMEMPS_REQUEST_SECONDS: '1', PMEMPS_MAX_CONNECTIONS: String(MAX_CONNECTIONS), PMEMPS_MAX_STREAMS: '64' },
    });
    ps = await PsClient.connect({ endpoints: cluster.endpoints });
    await ps.createTable(SMALL);
  });
  after(async () => {
    ps?.close();
    await cluster?.stop();
  });

  test('idle connections are closed after --idle-seconds, bare TCP ones too', async () => {
    const t0 = Date.now();
    const sessions = Array.from({ length: 100 }, () => new RawSession(cluster.endpoints[0]));
    const bare = Array.from({ length: 20 }, () => bareSocket(cluster.ports[0]));
    try {
      await Promise.all(sessions.map((s) => s.connected));
      assert.equal(sessions[0].session.remoteSettings.maxConcurrentStreams, 64);
      const closedAt: number[] = [];
      await within(
        Promise.all([...sessions.map((s) => s.closed), ...bare.map((b) => b.closed)].map((p) => p.then(() => closedAt.push(Date.now() - t0)))),
        10_000,
        'the server closing 120 idle connections',
      );
      assert.ok(Math.min(...closedAt) >= 900, `an idle connection was closed after ${Math.min(...closedAt)} ms, before --idle-seconds 1`);
      for (const s of sessions) assert.equal(s.goaway, http2.constants.NGHTTP2_NO_ERROR, 'an idle connection gets a GOAWAY NO_ERROR');
    } finally {
      for (const s of sessions) s.destroy();
      for (const b of bare) b.socket.destroy();
    }
  });

  test('a request whose body never completes is answered DEADLINE_EXCEEDED after --request-seconds and reset', async () => {
    const raw = new RawSession(cluster.endpoints[0]);
    try {
      // A frame announcing 1,000 bytes of which 10 arrive; and headers alone.
      const partial = grpcFrame(Buffer.alloc(1000)).subarray(0, 15);
      const half = raw.request(PULL_PATH, partial, false);
      const bare = raw.request(PULL_PATH, null, false);
      for (const { done } of [half, bare]) {
        const e = await within(done, 10_000, 'the server ending an incomplete request');
        assert.equal(e.grpcStatus, 4, `incomplete request ended with gRPC status ${e.grpcStatus} (${e.grpcMessage}), RST ${e.rstCode}`);
        assert.match(e.grpcMessage, /--request-seconds/);
      }
      // The connection itself is fine: a complete request on it is answered.
      const ok = raw.request(PULL_PATH, grpcFrame(Buffer.alloc(0)));
      assert.equal((await within(ok.done, 10_000, 'an answer to a complete request')).grpcStatus, 3, 'a pull naming no table is INVALID_ARGUMENT');
    } finally {
      raw.destroy();
    }
  });

  test('a flood of connections is capped at --max-connections; the server lives and an SDK client works during and after', async () => {
    const pid = cluster.procs[0]!.pid!;
    const fdsBefore = openFds(pid);
    const legit = legitLoop(ps, SMALL.name, 64);
    const flood = Array.from({ length: 3 * MAX_CONNECTIONS }, () => new RawSession(cluster.endpoints[0]));
    let fdsDuring: number;
    let openDuring: number;
    try {
      await Promise.all(flood.map((s) => s.connected));
      fdsDuring = openFds(pid);
      // Idle flood connections are closed after a second, so more than the
      // cap may be taken over the flood; never more than the cap at once.
      openDuring = flood.filter((s) => s.accepted && !s.isClosed).length;
      // The SDK client pulls while the flood holds every connection slot.
      for (let i = 0; i < 20; i++) assert.equal((await ps.pull(SMALL.name, keyBuf(100, i))).length, 100 * SMALL.dim);
    } finally {
      for (const s of flood) s.destroy();
      const { ok, error } = await legit.stop();
      assert.equal(error, null, `the well-behaved client's pull failed during the flood: ${error?.message}`);
      assert.ok(ok > 0);
    }
    const refused = flood.filter((s) => !s.accepted).length;
    assert.ok(
      fdsDuring <= fdsBefore + MAX_CONNECTIONS,
      `the server held ${fdsDuring} descriptors during a flood of ${flood.length} connections (before: ${fdsBefore}, --max-connections ${MAX_CONNECTIONS})`,
    );
    assert.ok(openDuring <= MAX_CONNECTIONS, `${openDuring} flood connections open at once, --max-connections ${MAX_CONNECTIONS}`);
    assert.ok(refused > 0, 'no flood connection was refused');
    assert.equal(cluster.procs[0]!.exitCode, null, 'the server survived the flood');
    // After: a new client connects and works.
    const late = await PsClient.connect({ endpoints: cluster.endpoints });
    try {
      assert.equal((await late.pull(SMALL.name, keyBuf(10))).length, 10 * SMALL.dim);
    } finally {
      late.close();
    }
  });
});

describe('dense and checkpoint replies take reply budget too (--reply-mb-per-connection 4, tensors of 4 MiB)', () => {
  // A review's attack: PullDense and ReadCheckpoint replies skipped the
  // budget only Pull took, and each ReadCheckpoint copied the checkpoint
  // anew; 20 reads of a 60 MiB checkpoint at once held a Status for 20-40 s
  // and 1.6 GiB.
  const FLOATS = 2 ** 20;
  let cluster: LocalCluster;
  let ps: PsClient;
  before(async () => {
    cluster = await LocalCluster.start({
      dir: dirOf('abuse-dense'),
      shards: 1,
      env: { PMEMPS_STALL_SECONDS: '1', PMEMPS_REPLY_MB_PER_CONNECTION: '4' },
    });
    ps = await PsClient.connect({ endpoints: cluster.endpoints });
    await ps.setDense('w', new Float32Array(FLOATS).fill(0.5), { type: 'sgd', lr: 0.1 });
    await ps.persist({ step: 1, dense: { d: new Float32Array(FLOATS).fill(0.25) } });
  });
  after(async () => {
    ps?.close();
    await cluster?.stop();
  });

  const name = (n: string) => Buffer.concat([Buffer.from([0x0a, n.length]), Buffer.from(n)]);
  for (const [method, body] of [
    ['PullDense', name('w')],
    ['ReadCheckpoint', Buffer.alloc(0)],
  ] as const)
    test(`${method}: a reader that reads nothing gets one reply started, the rest wait and go with its connection`, async () => {
      const raw = new RawSession(cluster.endpoints[0], { initialWindowSize: 0 });
      let started = 0;
      const ends: Promise<StreamEnd>[] = [];
      for (let i = 0; i < 6; i++) {
        const { stream, done } = raw.request(`/pmemps.v1.ParameterServer/${method}`, grpcFrame(body));
        stream.on('response', (h) => h['grpc-status'] === undefined && started++);
        ends.push(done);
      }
      const end = await within(Promise.all(ends), 10_000, 'the server ending the reader');
      raw.destroy();
      assert.equal(started, 1, `${started} replies of 4 MiB were started on a connection whose budget is 4 MiB`);
      assert.equal(raw.goaway, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      for (const e of end) assert.ok(e.grpcStatus === 8 || e.grpcStatus === null, `a call ended with ${e.grpcStatus} (${e.grpcMessage})`);
      // A client that reads gets its reply.
      assert.equal((await ps.pullDense(['w'])).get('w')?.length, FLOATS);
    });

  test('a PullDense of one tensor named many times is sized before a value is copied, and refused', async () => {
    // 64 x 4 MiB is four times --max-message-mb: the server copied every one first.
    const raw = new RawSession(cluster.endpoints[0]);
    const { done } = raw.request('/pmemps.v1.ParameterServer/PullDense', grpcFrame(Buffer.concat(Array(64).fill(name('w')))));
    const end = await within(done, 10_000, 'the answer to a PullDense of 256 MiB');
    raw.destroy();
    assert.equal(end.grpcStatus, grpc.status.RESOURCE_EXHAUSTED);
    assert.match(end.grpcMessage, /take 256\.0 MiB, above the server's --max-message-mb 64; ask for fewer per call/);
    assert.equal(cluster.procs[0]!.exitCode, null);
  });
});

describe('reply budget accounting (the guard in a grpc-js server of this process)', () => {
  const MiB = 2 ** 20;
  // A unary method whose request says how many reply bytes it wants.
  const method = {
    path: '/t.T/Get',
    requestStream: false,
    responseStream: false,
    requestSerialize: (m: { n: number }) => Buffer.from(Uint32Array.of(m.n).buffer),
    requestDeserialize: (b: Buffer) => ({ n: b.readUInt32LE(0) }),
    responseSerialize: (m: { payload: Buffer }) => m.payload,
    responseDeserialize: (b: Buffer) => ({ payload: b }),
  };
  let server: grpc.Server;
  let guard: TransportGuard;
  let endpoint: string;
  // The server side of every connection, to know when the server is done with one.
  const serverClosed: Promise<void>[] = [];
  before(async () => {
    guard = new TransportGuard({ ...DEFAULT_TRANSPORT_LIMITS, replyMbPerConnection: 1, replyMb: 3, stallSeconds: 0.5 });
    server = new grpc.Server(guard.serverOptions());
    server.addService({ Get: method } as grpc.ServiceDefinition, {
      Get: (call: grpc.ServerUnaryCall<{ n: number }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
        guard.admitReply(call, call.request.n).then(
          () => cb(null, { payload: Buffer.alloc(call.request.n, 1) }),
          (e: Error) => cb({ code: grpc.status.RESOURCE_EXHAUSTED, details: e.message }),
        );
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    assert.ok(guard.attach(server));
    for (const h of http2ServersOf(server)!)
      h.on('session', (s: http2.ServerHttp2Session) => serverClosed.push(new Promise((r) => s.once('close', () => r()))));
    endpoint = `127.0.0.1:${port}`;
  });
  after(() => server?.forceShutdown());

  const req = (n: number) => grpcFrame(method.requestSerialize({ n }));
  const replying = (st: http2.ClientHttp2Stream) => new Promise<void>((r) => st.once('response', () => r()));

  test('a slow reader holds one reply of its budget, waits for the rest, is closed; every byte comes back', async () => {
    const raw = new RawSession(endpoint, { initialWindowSize: 0 });
    const calls = Array.from({ length: 4 }, () => raw.request('/t.T/Get', req(MiB)));
    await within(replying(calls[0].stream), 5000, 'the first reply');
    assert.deepEqual(guard.stats(), { unsentBytes: MiB, connections: 1, waiting: 3 });
    const ends = await within(Promise.all(calls.map((c) => c.done)), 5000, 'the server ending the slow reader');
    assert.equal(raw.goaway, http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
    // Closed after --stall-seconds, before the waiting calls' own time limit (twice that): they go with it.
    assert.deepEqual(
      ends.map((e) => e.grpcStatus),
      [null, null, null, null],
    );
    await Promise.all(serverClosed);
    assert.deepEqual(guard.stats(), { unsentBytes: 0, connections: 0, waiting: 0 });
  });

  test('replies to clients that read get through; one larger than the budget left waits until the stalled connections are closed', async () => {
    const client = new grpc.Client(endpoint, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    const get = (n: number) =>
      new Promise<number>((resolve, reject) =>
        client.makeUnaryRequest(method.path, method.requestSerialize, method.responseDeserialize, { n }, (e, r) =>
          e ? reject(e) : resolve(r!.payload.length),
        ),
      );
    // Two slow readers hold 2 of the 3 MiB in all.
    const slow = [0, 1].map(() => new RawSession(endpoint, { initialWindowSize: 0 }));
    const held = slow.map((s) => s.request('/t.T/Get', req(MiB)));
    await Promise.all(held.map((h) => replying(h.stream)));
    try {
      assert.deepEqual(await Promise.all([MiB, MiB / 2, 1000, MiB].map(get)), [MiB, MiB / 2, 1000, MiB]);
      assert.equal(guard.stats().unsentBytes, 2 * MiB);
      const big = get(3 * MiB);
      await Promise.all(slow.map((s) => s.closed));
      assert.equal(await big, 3 * MiB);
      assert.ok(slow.every((s) => s.goaway === http2.constants.NGHTTP2_ENHANCE_YOUR_CALM));
    } finally {
      client.close();
      for (const s of slow) s.destroy();
    }
    await Promise.all(serverClosed);
    assert.deepEqual(guard.stats(), { unsentBytes: 0, connections: 0, waiting: 0 });
  });
});

describe('requests that never finish arriving (--recv-mb-per-connection 16, --recv-mb 48)', () => {
  const PER_CONNECTION_MB = 16;
  const TOTAL_MB = 48;
  const CONNECTIONS = 4;
  const STREAMS = 32;
  // Each stream announces a message just under --max-message-mb and sends SENT_MB of it.
  const SENT_MB = 3;
  let cluster: LocalCluster;
  let ps: PsClient;
  before(async () => {
    cluster = await LocalCluster.start({
      dir: dirOf('abuse-recv'),
      shards: 1,
      env: {
        PMEMPS_RECV_MB_PER_CONNECTION: String(PER_CONNECTION_MB),
        PMEMPS_RECV_MB: String(TOTAL_MB),
        PMEMPS_MAX_MESSAGE_MB: '8',
        // The streams left within the budgets are ended by the request timeout.
        PMEMPS_REQUEST_SECONDS: '2',
      },
    });
    ps = await PsClient.connect({ endpoints: cluster.endpoints, maxMessageMb: 8 });
    await ps.createTable(SMALL);
  });
  after(async () => {
    ps?.close();
    await cluster?.stop();
  });

  test(`${CONNECTIONS} connections x ${STREAMS} streams x ${SENT_MB} MiB never finished: RSS stays below idle + --recv-mb + 128 MiB, the excess is refused, an SDK client pushes and pulls throughout`, async () => {
    const pid = cluster.procs[0]!.pid!;
    const grads = new Float32Array(64 * SMALL.dim).fill(0.5);
    await ps.push(SMALL.name, keyBuf(64), grads);
    assert.equal((await ps.pull(SMALL.name, keyBuf(64))).length, 64 * SMALL.dim);
    const idle = await rssFloor(pid, 500);
    // The SDK client alternates pushes and pulls while the abuse goes on.
    let running = true;
    let legitOk = 0;
    const legit = (async () => {
      for (let i = 0; running; i++) {
        await ps.push(SMALL.name, keyBuf(64, (i * 37) % 1000), grads);
        assert.equal((await ps.pull(SMALL.name, keyBuf(64, (i * 53) % 1000))).length, 64 * SMALL.dim);
        legitOk++;
      }
    })();
    let peak = rssMiB(pid);
    // Sampling /proc is the measurement here, not a synchronisation.
    const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 5);
    const body = unfinishedFrame(8 * 2 ** 20 - 64, SENT_MB * 2 ** 20);
    const sessions = Array.from({ length: CONNECTIONS }, () => new RawSession(cluster.endpoints[0]));
    let ends: StreamEnd[];
    try {
      const done = sessions.flatMap((s) => Array.from({ length: STREAMS }, () => s.request(PULL_PATH, body, false).done));
      ends = await within(Promise.all(done), 20_000, 'the server ending every stream of the abusers');
    } finally {
      clearInterval(sampler);
      for (const s of sessions) s.destroy();
      running = false;
    }
    await legit;
    const where = `idle ${idle.toFixed(0)} MiB, highest ${peak.toFixed(0)} MiB; ${CONNECTIONS * STREAMS * SENT_MB} MiB sent`;
    // The bound: what the budgets let the server hold, plus what it received
    // and dropped that V8 has not collected yet (it collects external memory
    // lazily) and freed memory the allocator keeps: RSS is a high-water mark.
    assert.ok(peak < idle + TOTAL_MB + 128, `server RSS rose to ${peak.toFixed(0)} MiB, above idle + --recv-mb ${TOTAL_MB} + 128 MiB (${where})`);
    const { NGHTTP2_REFUSED_STREAM, NGHTTP2_CANCEL, NGHTTP2_ENHANCE_YOUR_CALM } = http2.constants;
    // Refused for the budgets: UNAVAILABLE naming the option, or only the
    // REFUSED_STREAM that follows it when the reset overtakes the answer.
    const refused = ends.filter((e) => e.grpcStatus === grpc.status.UNAVAILABLE || (e.grpcStatus === null && e.rstCode === NGHTTP2_REFUSED_STREAM));
    // What stayed within the budgets waited for --request-seconds.
    const timedOut = ends.filter((e) => e.grpcStatus === grpc.status.DEADLINE_EXCEEDED || (e.grpcStatus === null && e.rstCode === NGHTTP2_CANCEL));
    // Node's own guard (maxSessionMemory) refuses new streams while a session holds much.
    const nodeRefused = ends.filter((e) => e.grpcStatus === null && e.rstCode === NGHTTP2_ENHANCE_YOUR_CALM);
    for (const e of refused) if (e.grpcStatus !== null) assert.match(e.grpcMessage, /--recv-mb/);
    const counts = `${refused.length} refused, ${timedOut.length} timed out, ${nodeRefused.length} refused by Node`;
    // Every stream was ended by the server (a few show INTERNAL_ERROR: a reset racing the answer, not yet explained).
    for (const e of ends) assert.ok(e.grpcStatus !== null || e.rstCode !== 0, `an abuser stream ended without status or reset (${counts})`);
    assert.ok(refused.length > 0, `no abuser stream was refused for the budgets (${counts}; ${where})`);
    assert.ok(
      timedOut.length >= 1 && timedOut.length <= TOTAL_MB / SENT_MB,
      `${timedOut.length} abuser streams were let through to the request timeout; the budgets hold ${TOTAL_MB / SENT_MB} (${counts})`,
    );
    assert.ok(legitOk > 0, 'the SDK client completed no push and pull during the abuse');
    assert.equal(cluster.procs[0]!.exitCode, null, 'the server survived');
    await ps.push(SMALL.name, keyBuf(64), grads);
    assert.equal((await ps.pull(SMALL.name, keyBuf(64))).length, 64 * SMALL.dim);
    console.log(`requests never finished: ${where}; ${counts}; SDK push+pull pairs during: ${legitOk}`);
  });
});

describe('requests that arrived and wait are held within the receive budget (found by a review, 2026-12-02)', () => {
  test('pulls waiting for reply budget count in --recv-mb-per-connection: beyond it the newest are refused, unprocessed', async () => {
    const cluster = await LocalCluster.start({
      dir: dirOf('abuse-held'),
      shards: 1,
      env: {
        PMEMPS_MAX_MESSAGE_MB: '8',
        PMEMPS_RECV_MB_PER_CONNECTION: '16',
        PMEMPS_RECV_MB: '32',
        PMEMPS_REPLY_MB_PER_CONNECTION: '2',
        PMEMPS_REPLY_MB: '8',
        PMEMPS_STALL_SECONDS: '30',
      },
    });
    const ps = await PsClient.connect({ endpoints: cluster.endpoints, maxMessageMb: 8 });
    const raw = new RawSession(cluster.endpoints[0], { initialWindowSize: 0 });
    try {
      await ps.createTable({ ...SMALL, name: 'd1', dim: 1 });
      await raw.connected;
      const keys = Buffer.alloc(4 * 2 ** 20 - 64); // a 4 MiB request, a 2 MiB reply
      for (let i = 0; i < keys.length; i += 8) keys.writeUInt32LE(i, i);
      const frame = grpcFrame(FAST_CODECS.Pull.request.encode({ table: 'd1', keys }));
      // The first reply is never read (window 0): it holds the connection's reply budget.
      const first = raw.request(PULL_PATH, frame);
      await new Promise((r) => first.stream.once('response', r));
      const ends: Promise<StreamEnd>[] = [];
      for (let i = 0; i < 8; i++) {
        const { stream, done } = raw.request(PULL_PATH, frame);
        ends.push(done);
        await new Promise((r) => stream.once('finish', r).once('close', r));
      }
      await new Promise((r) => setTimeout(r, 1000));
      const settled: StreamEnd[] = [];
      for (const d of ends) void d.then((e) => settled.push(e));
      await new Promise((r) => setTimeout(r, 100));
      const refused = settled.filter((e) => e.grpcStatus === grpc.status.UNAVAILABLE);
      assert.ok(refused.length >= 4, `at most 16 MiB of the connection's requests are held: ${refused.length} of 8 refused`);
      for (const e of refused) assert.match(e.grpcMessage, /requests arriving or waiting to be answered \(server limit --recv-mb-per-connection 16\)/);
      // The server serves others meanwhile.
      assert.equal((await ps.pull('d1', [1n])).length, 1);
    } finally {
      raw.destroy();
      ps.close();
      await cluster.stop();
    }
  });
});

// Two ways the server held request bytes the receive budget no longer
// counted (found by a review, 2026-12-03; --recv-mb 1024 by default, 64
// connections x 4 requests of 30 MiB never finished took it 1.3-1.4 GB above
// idle, 256 x 2 took it 4.2 GB): each connection's close listener kept the
// connection's first stream, with all it had received, until the connection
// closed; and a stream was charged only its own bytes of the socket reads
// its DATA came in, while holding any of a read holds all of it, the bytes
// of streams refused meanwhile included. At these sizes the server rose
// 740 MiB above idle with neither fixed, 604 and 495 with one or the other,
// 206-236 with both.
describe('a flood of large requests that never finish (--recv-mb 128: 32 connections x 4 requests of 12 MiB)', () => {
  const TOTAL_MB = 128;
  const CONNECTIONS = 32;
  const STREAMS = 4;
  const SENT_MB = 12;
  test('the server stays within idle + --recv-mb + 256 MiB (what it refused and V8 has not collected yet); every stream ends; an SDK client works after', async () => {
    const cluster = await LocalCluster.start({
      dir: dirOf('abuse-flood'),
      shards: 1,
      env: {
        PMEMPS_RECV_MB: String(TOTAL_MB),
        PMEMPS_RECV_MB_PER_CONNECTION: '64',
        PMEMPS_MAX_MESSAGE_MB: '32',
        PMEMPS_REQUEST_SECONDS: '3',
      },
    });
    const ps = await PsClient.connect({ endpoints: cluster.endpoints, maxMessageMb: 32 });
    const sessions: RawSession[] = [];
    try {
      await ps.createTable(SMALL);
      const pid = cluster.procs[0]!.pid!;
      const idle = await rssFloor(pid, 300);
      let peak = rssMiB(pid);
      // Sampling /proc is the measurement here, not a synchronisation.
      const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 5);
      const body = unfinishedFrame(31 * 2 ** 20, SENT_MB * 2 ** 20);
      for (let i = 0; i < CONNECTIONS; i++) sessions.push(new RawSession(cluster.endpoints[0]));
      let ends: StreamEnd[];
      try {
        const done = sessions.flatMap((s) => Array.from({ length: STREAMS }, () => s.request(PULL_PATH, body, false).done));
        ends = await within(Promise.all(done), 60_000, 'the server ending every stream of the flood');
      } finally {
        clearInterval(sampler);
      }
      const refused = ends.filter(
        (e) => e.grpcStatus === grpc.status.UNAVAILABLE || (e.grpcStatus === null && e.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM),
      );
      const where = `idle ${idle.toFixed(0)} MiB, highest ${peak.toFixed(0)} MiB; ${CONNECTIONS * STREAMS * SENT_MB} MiB offered, ${refused.length} of ${ends.length} streams refused`;
      assert.ok(peak < idle + TOTAL_MB + 256, `server RSS rose to ${peak.toFixed(0)} MiB, above idle + --recv-mb ${TOTAL_MB} + 256 MiB (${where})`);
      assert.ok(refused.length > 0, `no stream of the flood was refused (${where})`);
      assert.equal(cluster.procs[0]!.exitCode, null, 'the server survived');
      const grads = new Float32Array(64 * SMALL.dim).fill(0.5);
      await ps.push(SMALL.name, keyBuf(64), grads);
      assert.equal((await ps.pull(SMALL.name, keyBuf(64))).length, 64 * SMALL.dim);
      console.log(`flood of large requests: ${where}`);
    } finally {
      for (const s of sessions) s.destroy();
      ps.close();
      await cluster.stop();
    }
  });
});
