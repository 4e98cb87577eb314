// Access control against real pserver processes (server/auth.ts): TLS and
// mutual TLS handshakes with certificates made by openssl at test time,
// bearer tokens with roles over real gRPC, the tokens file re-read on
// SIGHUP, and the SDK end to end over TLS with a token. Refused calls are
// checked to have changed nothing by reading the state back.
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { LocalCluster } from '../examples/local-cluster';
import { FLOW_CONTROL_WINDOW, parameterServerService } from '../proto/load';
import { AUTH_LIMITS, METHOD_ROLES, PS_SERVICE, parseTokens, requiredRole, SecurityConfigError } from '../server/auth';
import { AccessDeniedError, PsClient, TlsError } from '../worker';
import { slowReader, within } from './abuse.lib';
import { makeCerts, type Certs } from './certs.lib';
import { poolDirs } from './helpers';

const dirOf = poolDirs(after);
const PSERVER = path.join(__dirname, '..', 'server', 'pserver.js');

// Tokens are fixed strings: nothing here depends on their randomness.
const T = {
  reader: 'reader-token-5a0c1e7f3b9d',
  trainer: 'trainer-token-81f2c4a6d0e3',
  admin: 'admin-token-c3d7e9a1b5f2',
  later: 'later-token-0f9e8d7c6b5a',
};
const TOKENS_FILE = `# test tokens
${T.reader} reader dashboards

${T.trainer} trainer job-7   # a trailing comment
${T.admin}   admin
`;

const TABLE = { name: 'emb', dim: 4, seed: 1, optimizer: { type: 'sgd' as const, lr: 0.5 }, initializer: { type: 'constant' as const, value: 1 } };
const KEYS = Buffer.from(BigUint64Array.of(1n, 2n, 3n).buffer);

type Stub = grpc.Client & Record<string, any>;
interface Outcome {
  err: grpc.ServiceError | null;
  res: any;
}

function stub(endpoint: string, creds: grpc.ChannelCredentials): Stub {
  const Ctor = parameterServerService();
  // A private subchannel: a refused handshake must not be shared with the next stub.
  return new Ctor(endpoint, creds, { 'grpc.use_local_subchannel_pool': 1, 'grpc.ssl_target_name_override': 'localhost' }) as Stub;
}

function call(c: grpc.Client & Record<string, any>, method: string, req: unknown, token?: string, header?: string): Promise<Outcome> {
  const md = new grpc.Metadata();
  if (header !== undefined) md.set('authorization', header);
  else if (token !== undefined) md.set('authorization', `Bearer ${token}`);
  return new Promise((resolve) => c[method](req, md, { deadline: Date.now() + 5000 }, (err: grpc.ServiceError | null, res: unknown) => resolve({ err, res })));
}

/** float32 values of a reply's bytes field (which may sit at any offset of a pooled Buffer). */
function floats(b: Buffer): number[] {
  return [...new Float32Array(Uint8Array.from(b).buffer)];
}

function codeName(o: Outcome): string {
  return o.err ? grpc.status[o.err.code] : 'OK';
}

/** Count of log lines of `file` matching `re`. */
function logCount(file: string, re: RegExp): number {
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => re.test(l)).length;
}

/** Resolves once the log holds more than `seen` lines matching `re` (the server logs every reload). */
async function logged(file: string, re: RegExp, seen: number): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const lines = fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => re.test(l));
    if (lines.length > seen) return lines;
    if (Date.now() > deadline) throw new Error(`no new log line matching ${re} in ${file} within 10 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Runs pserver with `args` (and a pool dir that must stay unopened); resolves with its exit code and output. */
function pserver(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; pmem: string }> {
  const pmem = path.join(dirOf('auth-refuse'), 'pool');
  return new Promise((resolve) =>
    execFile(
      process.execPath,
      [PSERVER, '--bind', '127.0.0.1:1', '--pmem', pmem, '--pool-size', '64M', ...args],
      { env: { ...process.env, PMEM_IS_PMEM_FORCE: '1', PMEMPS_LOG_PRETTY: '0', ...env }, timeout: 20_000 },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, out: stdout + stderr, pmem }),
    ),
  );
}

let certs: Certs;
before(() => {
  certs = makeCerts(dirOf('auth-certs'));
});

describe('the role table and the tokens file', () => {
  test('every RPC of the proto has exactly one minimum role, and the table names nothing else', () => {
    const methods = Object.values(parameterServerService().service).map((m) => m.path.split('/').pop()!);
    assert.ok(methods.length >= 16, `the proto's service has ${methods.length} methods`);
    assert.deepEqual(Object.keys(METHOD_ROLES).sort(), [...new Set(methods)].sort());
    for (const m of methods) assert.equal(requiredRole(`/${PS_SERVICE}/${m}`), METHOD_ROLES[m]);
    // Not in the table: closed to all but admin. Health's Check: open;
    // its Watch (a stream held open) needs a token.
    assert.equal(requiredRole(`/${PS_SERVICE}/NoSuchCall`), 'admin');
    assert.equal(requiredRole('/other.Service/Pull'), 'admin');
    assert.equal(requiredRole('/grpc.health.v1.Health/Check'), null);
    assert.equal(requiredRole('/grpc.health.v1.Health/Watch'), 'reader');
    assert.equal(requiredRole('/grpc.health.v1.Health/Other'), 'admin');
  });

  test('parses token, role and optional name; comments and blank lines skipped', () => {
    const t = parseTokens(TOKENS_FILE, 'tokens');
    assert.deepEqual(
      t.map((e) => [e.role, e.name]),
      [
        ['reader', 'dashboards'],
        ['trainer', 'job-7'],
        ['admin', 'line 5'],
      ],
    );
  });

  test('a malformed line is refused with its line number, never with the token', () => {
    const secret = 'very-secret-token-value-0001';
    const cases: [string, RegExp][] = [
      [`# head\n\n${secret} writer`, /tokens:3: the second field must be a role/],
      [`readerreaderreader ${secret}`, /tokens:1: the second field must be a role/],
      [`${secret}`, /tokens:1: no role/],
      [`${secret} admin a b`, /tokens:1: 4 fields/],
      [`short admin`, /tokens:1: the token must be 16\.\.1024 printable ASCII/],
      [`${secret} admin a\n${secret} reader b`, /tokens:2: the same token as line 1/],
      [`${secret} admin a\n${secret}x reader a`, /tokens:2: the name "a" is used twice/],
      [`${secret} admin bad/name`, /tokens:1: the name must be/],
      [`${'x'.repeat(AUTH_LIMITS.tokenMaxBytes + 1)} admin`, /tokens:1: the token must be/],
      ['# only comments\n\n', /holds no token/],
    ];
    for (const [text, re] of cases) {
      assert.throws(
        () => parseTokens(text, 'tokens'),
        (e: Error) => {
          assert.ok(e instanceof SecurityConfigError);
          assert.match(e.message, re);
          assert.ok(!e.message.includes(secret) && !e.message.includes('xxxxxxxx'), `the error quotes the token: ${e.message}`);
          return true;
        },
      );
    }
  });
});

describe('pserver refuses to start on bad security options (exit 2, pool not created)', () => {
  test('each bad option is named with its fix', async () => {
    const bad = path.join(certs.dir, 'bad-tokens');
    fs.writeFileSync(bad, `${T.admin} admin\n${T.reader} root\n`);
    const cases: [string[], RegExp][] = [
      [['--tls-cert', certs.serverCert], /--tls-cert needs --tls-key/],
      [['--tls-client-ca', certs.caFile], /--tls-client-ca needs --tls-cert/],
      [['--tls-cert', certs.serverCert, '--tls-key', certs.clientKey], /--tls-key .* is not the key of --tls-cert/],
      [['--tls-cert', certs.expiredCert, '--tls-key', certs.serverKey], /--tls-cert .* expired on .*; issue a new one/],
      [['--tls-cert', certs.serverCert, '--tls-key', certs.caFile], /--tls-key .* is not a PEM private key/],
      [['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-client-ca', certs.serverCert], /--tls-client-ca .* is not a CA certificate/],
      [['--auth-tokens', path.join(certs.dir, 'missing')], /--auth-tokens names .*missing, which does not exist/],
      [['--auth-tokens', bad], /bad-tokens:2: the second field must be a role/],
    ];
    const runs = await Promise.all(cases.map(([args]) => pserver(args)));
    runs.forEach((r, i) => {
      assert.equal(r.code, 2, `${cases[i][0].join(' ')}: exit ${r.code}\n${r.out}`);
      assert.match(r.out, cases[i][1]);
      assert.ok(!r.out.includes(T.reader), 'a token reached the output');
      assert.ok(!fs.existsSync(r.pmem), `${cases[i][0].join(' ')}: the pool directory was created`);
    });
  });
});

describe('TLS and tokens on one server', () => {
  let cluster: LocalCluster;
  let tokensFile: string;
  let tlsCreds: grpc.ChannelCredentials;
  let c: Stub;
  let endpoint: string;
  const pull = async (token: string): Promise<Buffer> => {
    const o = await call(c, 'Pull', { table: TABLE.name, keys: KEYS }, token);
    assert.equal(codeName(o), 'OK', o.err?.details);
    return o.res.values as Buffer;
  };

  before(async () => {
    const dir = dirOf('auth-tls');
    tokensFile = path.join(dir, 'tokens');
    fs.writeFileSync(tokensFile, TOKENS_FILE);
    tlsCreds = grpc.credentials.createSsl(certs.pem(certs.caFile));
    cluster = await LocalCluster.start({
      dir,
      shards: 1,
      cacheMb: 16,
      poolSize: '64M',
      env: {
        PMEMPS_TLS_CERT: certs.serverCert,
        PMEMPS_TLS_KEY: certs.serverKey,
        PMEMPS_AUTH_TOKENS: tokensFile,
        PMEMPS_STALL_SECONDS: '1',
        PMEMPS_LOG_PRETTY: '0',
      },
      probe: { credentials: tlsCreds, token: T.reader },
    });
    endpoint = cluster.endpoints[0];
    c = stub(endpoint, tlsCreds);
  });
  after(async () => {
    c?.close();
    await cluster?.stop();
  });

  test('a TLS client with the right CA gets in; a plaintext client and one trusting another CA do not', async () => {
    assert.equal(codeName(await call(c, 'Status', {}, T.reader)), 'OK');
    for (const creds of [grpc.credentials.createInsecure(), grpc.credentials.createSsl(certs.pem(certs.foreignCaFile))]) {
      const other = stub(endpoint, creds);
      const o = await call(other, 'Status', {}, T.admin);
      other.close();
      assert.equal(codeName(o), 'UNAVAILABLE', o.err?.details);
    }
  });

  test('no token, an unknown one, a malformed header: UNAUTHENTICATED, the token never echoed', async () => {
    const none = await call(c, 'Status', {});
    assert.equal(codeName(none), 'UNAUTHENTICATED');
    assert.match(none.err!.details, /requires a token: send metadata "authorization: Bearer <token>"/);
    const guess = 'guessed-token-1234567890';
    const unknown = await call(c, 'ListTables', {}, guess);
    assert.equal(codeName(unknown), 'UNAUTHENTICATED');
    assert.match(unknown.err!.details, /not known to this server/);
    assert.ok(!unknown.err!.details.includes(guess));
    const basic = await call(c, 'Status', {}, undefined, `Basic ${T.admin}`);
    assert.equal(codeName(basic), 'UNAUTHENTICATED');
    assert.ok(!basic.err!.details.includes(T.admin));
    assert.ok(!fs.readFileSync(cluster.logFile(0), 'utf8').includes(guess), 'a presented token reached the log');
  });

  test('reader pulls but cannot push (PERMISSION_DENIED, row unchanged); trainer pushes but cannot drop (table stays); admin drops', async () => {
    assert.equal(codeName(await call(c, 'CreateTable', { spec: { ...TABLE, optimizer: { type: 'sgd', params: { lr: 0.5 } } } }, T.trainer)), 'OK');
    const before = await pull(T.reader);
    assert.deepEqual(floats(before), Array(12).fill(1));
    const status = await call(c, 'Status', {}, T.reader);
    const grads = Buffer.from(Float32Array.from({ length: 12 }, () => 1).buffer);
    const push = { table: TABLE.name, keys: KEYS, grads, worker_id: 'w', incarnation: status.res.incarnation };

    const denied = await call(c, 'Push', { ...push, seq: 1 }, T.reader);
    assert.equal(codeName(denied), 'PERMISSION_DENIED');
    assert.match(denied.err!.details, /Push needs role trainer or above; this token's role is reader/);
    assert.deepEqual(await pull(T.reader), before, 'a refused push changed the rows');

    assert.equal(codeName(await call(c, 'Push', { ...push, seq: 2 }, T.trainer)), 'OK');
    const after = await pull(T.trainer);
    assert.deepEqual(floats(after), Array(12).fill(0.5), 'sgd lr 0.5, grad 1 from 1');

    const drop = await call(c, 'DropTable', { name: TABLE.name }, T.trainer);
    assert.equal(codeName(drop), 'PERMISSION_DENIED');
    assert.match(drop.err!.details, /DropTable needs role admin/);
    const tables = await call(c, 'ListTables', {}, T.reader);
    assert.deepEqual(
      tables.res.tables.map((t: { spec: { name: string } }) => t.spec.name),
      [TABLE.name],
    );
    await logged(cluster.logFile(0), /"caller":"job-7".*call refused: role too low/, 0);

    assert.equal(codeName(await call(c, 'DropTable', { name: TABLE.name }, T.admin)), 'OK');
    assert.deepEqual((await call(c, 'ListTables', {}, T.reader)).res.tables, []);
    assert.ok(!fs.readFileSync(cluster.logFile(0), 'utf8').includes(T.trainer.slice(0, 12)), 'a token reached the log');
  });

  test('the health service answers without a token', async () => {
    const Health = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
    const h = new Health(endpoint, tlsCreds, { 'grpc.ssl_target_name_override': 'localhost' }) as Stub;
    const o = await new Promise<Outcome>((resolve) =>
      h.Check({ service: PS_SERVICE }, { deadline: Date.now() + 5000 }, (err: grpc.ServiceError | null, res: unknown) => resolve({ err, res })),
    );
    h.close();
    assert.equal(codeName(o), 'OK', o.err?.details);
    assert.equal(o.res.status, 'SERVING');
  });

  test("the health service's Watch, a stream held open, needs a token", async () => {
    const Health = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
    const h = new Health(endpoint, tlsCreds, { 'grpc.ssl_target_name_override': 'localhost' }) as Stub;
    const watch = (token?: string) =>
      new Promise<{ code?: number; status?: string }>((resolve) => {
        const md = new grpc.Metadata();
        if (token) md.set('authorization', `Bearer ${token}`);
        const st = h.Watch({ service: PS_SERVICE }, md, { deadline: Date.now() + 5000 });
        st.on('data', (m: { status: string }) => {
          resolve({ status: m.status });
          st.cancel();
        });
        st.on('error', (e: grpc.ServiceError) => resolve({ code: e.code }));
      });
    try {
      assert.deepEqual(await watch(), { code: grpc.status.UNAUTHENTICATED });
      assert.deepEqual(await watch(T.reader), { status: 'SERVING' });
    } finally {
      h.close();
    }
  });

  test('a 64 KiB token is refused cleanly and the server goes on serving', async () => {
    const huge = 'a'.repeat(64 * 1024);
    const o = await call(c, 'Status', {}, huge);
    assert.notEqual(codeName(o), 'OK');
    assert.ok(['UNAUTHENTICATED', 'RESOURCE_EXHAUSTED', 'INTERNAL'].includes(codeName(o)), `${codeName(o)}: ${o.err?.details}`);
    assert.ok(!o.err!.details.includes('aaaaaaaa'), 'the token is echoed');
    // Still serving, on the same channel and on a new one.
    assert.equal(codeName(await call(c, 'Status', {}, T.reader)), 'OK');
    const fresh = stub(endpoint, tlsCreds);
    assert.equal(codeName(await call(fresh, 'Status', {}, T.reader)), 'OK');
    fresh.close();
    console.log(`64 KiB token: ${codeName(o)} "${o.err!.details.slice(0, 120)}"`);
  });

  test('over TLS the HTTP/2 window is widened and a stalled connection is closed (the session hooks still fire)', async () => {
    // The server's first SETTINGS are grpc-js's; widenServerWindow sends the wide window from its 'session' hook.
    const tls = { ca: certs.pem(certs.caFile), servername: 'localhost' };
    const s = http2.connect(`https://${endpoint}`, tls);
    s.on('error', () => {});
    await within(
      new Promise<void>((r) => s.on('remoteSettings', (st) => st.initialWindowSize === FLOW_CONTROL_WINDOW && r())),
      5000,
      `SETTINGS with the window ${FLOW_CONTROL_WINDOW}`,
    );
    s.destroy();

    assert.equal(
      codeName(await call(c, 'CreateTable', { spec: { ...TABLE, name: 'stall', optimizer: { type: 'sgd', params: { lr: 0.5 } } } }, T.trainer)),
      'OK',
    );
    const keys = Buffer.from(BigUint64Array.from({ length: 4096 }, (_, i) => BigInt(i)).buffer);
    const reader = slowReader(endpoint, 'stall', keys, 4, { tls, headers: { authorization: `Bearer ${T.reader}` } });
    await within(reader.replying, 5000, 'the server replying to the slow reader');
    await within(reader.raw.closed, 10_000, 'the server closing the stalled TLS connection (--stall-seconds 1)');
    // Not the GOAWAY code: destroying a TLS session drops the GOAWAY frame
    // the plaintext path delivers. The server's own account instead.
    await logged(cluster.logFile(0), /closing a connection that has read none of its replies/, 0);
  });

  test('the SDK over TLS with a token: connect, create, push, pull; wrong or missing tokens are typed errors', async () => {
    const tls = { ca: certs.pem(certs.caFile), serverName: 'localhost' };
    const ps = await PsClient.connect({ endpoints: [endpoint], tls, token: T.trainer, retryForMs: 0 });
    try {
      const spec = { ...TABLE, name: 'sdk' };
      await ps.createTable(spec);
      const keys = BigUint64Array.of(10n, 11n);
      await ps.push(
        'sdk',
        keys,
        Float32Array.from({ length: 8 }, (_, i) => i),
      );
      assert.deepEqual(
        [...(await ps.pull('sdk', keys))],
        Array.from({ length: 8 }, (_, i) => 1 - 0.5 * i),
      );
    } finally {
      ps.close();
    }
    const reader = await PsClient.connect({ endpoints: [endpoint], tls, token: T.reader, retryForMs: 0 });
    try {
      await assert.rejects(reader.push('sdk', BigUint64Array.of(10n), new Float32Array(4)), (e: Error) => {
        assert.ok(e instanceof AccessDeniedError, String(e));
        assert.equal(e.code, grpc.status.PERMISSION_DENIED);
        return true;
      });
    } finally {
      reader.close();
    }
    await assert.rejects(
      PsClient.connect({ endpoints: [endpoint], tls }),
      (e: Error) => e instanceof AccessDeniedError && e.code === grpc.status.UNAUTHENTICATED,
    );
    // A certificate the SDK cannot trust, or a name it does not hold, is a
    // TlsError at once, not an UNAVAILABLE retried for retryForMs (as if the
    // server were down): retrying cannot fix it.
    for (const [what, bad] of [
      ['a CA that did not sign the server', { ...tls, ca: certs.pem(certs.foreignCaFile) }],
      ['a server name the certificate does not hold', { ...tls, serverName: 'not-the-server.example' }],
    ] as const)
      await assert.rejects(PsClient.connect({ endpoints: [endpoint], tls: bad, token: T.trainer, retryForMs: 5000 }), (e: Error) => {
        assert.ok(e instanceof TlsError, `${what}: ${e}`);
        assert.match(e.message, /check the tls options/);
        return true;
      });
  });

  // Last: it changes the tokens.
  test('SIGHUP re-reads the tokens file: a new token works, a removed one stops; a malformed file keeps the old ones and the log says why', async () => {
    const log = cluster.logFile(0);
    const pid = cluster.procs[0]!.pid!;
    const reloaded = /tokens file reloaded/;
    const rejected = /tokens file not reloaded/;
    assert.equal(codeName(await call(c, 'Status', {}, T.later)), 'UNAUTHENTICATED');

    let seen = logCount(log, reloaded);
    fs.writeFileSync(tokensFile, `${T.admin} admin ops\n${T.later} reader later\n`);
    process.kill(pid, 'SIGHUP');
    await logged(log, reloaded, seen);
    assert.equal(codeName(await call(c, 'Status', {}, T.later)), 'OK');
    assert.equal(codeName(await call(c, 'Status', {}, T.reader)), 'UNAUTHENTICATED', 'a removed token still works');

    seen = logCount(log, rejected);
    fs.writeFileSync(tokensFile, `${T.admin} admin ops\n${T.reader} superuser\n`);
    process.kill(pid, 'SIGHUP');
    const lines = await logged(log, rejected, seen);
    assert.match(lines.at(-1)!, /:2: the second field must be a role/);
    assert.ok(!fs.readFileSync(log, 'utf8').includes(T.reader), 'a token reached the log');
    assert.equal(codeName(await call(c, 'Status', {}, T.later)), 'OK', 'the old tokens stay after a malformed file');
    assert.equal(codeName(await call(c, 'Status', {}, T.reader)), 'UNAUTHENTICATED', 'a malformed file let its tokens in');
    assert.equal(cluster.procs[0]!.exitCode, null, 'the server lives');
  });
});

describe('mutual TLS', () => {
  let cluster: LocalCluster;
  let endpoint: string;
  before(async () => {
    const creds = grpc.credentials.createSsl(certs.pem(certs.caFile), certs.pem(certs.clientKey), certs.pem(certs.clientCert));
    cluster = await LocalCluster.start({
      dir: dirOf('auth-mtls'),
      shards: 1,
      cacheMb: 16,
      poolSize: '64M',
      env: { PMEMPS_TLS_CERT: certs.serverCert, PMEMPS_TLS_KEY: certs.serverKey, PMEMPS_TLS_CLIENT_CA: certs.caFile },
      probe: { credentials: creds },
    });
    endpoint = cluster.endpoints[0];
  });
  after(async () => {
    await cluster?.stop();
  });

  test('no client certificate and one from another CA are refused; one signed by the client CA gets in', async () => {
    const ca = certs.pem(certs.caFile);
    const tries: [string, grpc.ChannelCredentials, string][] = [
      ['no client certificate', grpc.credentials.createSsl(ca), 'UNAVAILABLE'],
      ['a certificate of another CA', grpc.credentials.createSsl(ca, certs.pem(certs.foreignKey), certs.pem(certs.foreignCert)), 'UNAVAILABLE'],
      ['a certificate of the client CA', grpc.credentials.createSsl(ca, certs.pem(certs.clientKey), certs.pem(certs.clientCert)), 'OK'],
    ];
    for (const [what, creds, want] of tries) {
      const s = stub(endpoint, creds);
      const o = await call(s, 'Status', {});
      s.close();
      assert.equal(codeName(o), want, `${what}: ${o.err?.details}`);
    }
    const ps = await PsClient.connect({
      endpoints: [endpoint],
      tls: { ca, cert: certs.pem(certs.clientCert), key: certs.pem(certs.clientKey), serverName: 'localhost' },
    });
    assert.equal((await ps.status())[0].version.length > 0, true);
    ps.close();
  });
});
