// A client that does not use the SDK: examples/python_client.py (grpcio and
// stubs generated from proto/pmemps.proto at run time) drives pserver
// processes, checks its own results exactly (--check), then the SDK reads
// what it wrote: the same rows on the same shards, the shard identity it
// set, the checkpoint it committed. Needs /usr/bin/python3 with grpcio and
// grpc_tools (Debian: python3-grpcio python3-grpc-tools); fails, never skips,
// without them.
import { after, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { LocalCluster } from '../examples/local-cluster';
import { PsClient, shardOfKey } from '../worker';
import { makeCerts } from './certs.lib';
import { poolDirs } from './helpers';

const ROOT = path.join(__dirname, '..', '..'); // dist/test -> repository root
const PYTHON = process.env.PMEMPS_PYTHON ?? '/usr/bin/python3';
const EXAMPLE = path.join(ROOT, 'examples', 'python_client.py');
const INSTALL = 'install them with: apt-get install python3-grpcio python3-grpc-tools';

const dirs = poolDirs(after);
const clusters: LocalCluster[] = [];
after(() => clusters.forEach((c) => c.killAll()));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve) =>
    execFile(file, args, { cwd: ROOT, timeout: timeoutMs, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr: stderr || (err && typeof err.code !== 'number' ? String(err) : '') });
    }),
  );
}

interface Summary {
  table: string;
  dim: number;
  keys: string[];
  rows: number[][];
  checkpoint: number;
  shards: number[];
  worker_id: string;
}

/** Runs the example with --check --json and returns its summary (the last line of stdout). */
async function runExample(stubs: string, endpoints: string[]): Promise<{ out: Run; summary: Summary }> {
  const out = await run(PYTHON, [EXAMPLE, '--stubs', stubs, '--check', '--json', ...endpoints]);
  assert.equal(out.code, 0, `python_client.py failed (exit ${out.code}):\n${out.stdout}\n${out.stderr}`);
  const lines = out.stdout.trim().split('\n');
  return { out, summary: JSON.parse(lines.at(-1)!) as Summary };
}

async function cluster(shards: number, tag: string): Promise<LocalCluster> {
  const c = await LocalCluster.start({ dir: dirs(tag), shards, cacheMb: 16, poolSize: '64M', logLevel: 'warn' });
  clusters.push(c);
  return c;
}

describe('a Python grpcio client, from the proto alone', () => {
  let stubs = '';
  const needStubs = (): void => assert.ok(stubs, `no Python stubs (the prerequisites test failed); ${INSTALL}`);

  // First, so that a machine without them fails here with the fix in the message (never a skip).
  test('prerequisites: python3 with grpcio and grpc_tools, stubs generated from proto/pmemps.proto', async () => {
    const probe = await run(PYTHON, ['-c', 'import grpc, grpc_tools.protoc, google.protobuf; print(grpc.__version__)']);
    if (probe.code !== 0)
      assert.fail(`${PYTHON} with the grpc and grpc_tools modules is required (${probe.stderr.trim().split('\n').at(-1) || `exit ${probe.code}`}); ${INSTALL}`);
    console.log(`python grpcio ${probe.stdout.trim()} (${PYTHON})`);
    const dir = dirs('pystubs');
    const gen = await run(PYTHON, [
      '-m',
      'grpc_tools.protoc',
      '-I',
      path.join(ROOT, 'proto'),
      `--python_out=${dir}`,
      `--grpc_python_out=${dir}`,
      path.join(ROOT, 'proto', 'pmemps.proto'),
    ]);
    assert.equal(gen.code, 0, `protoc failed:\n${gen.stdout}\n${gen.stderr}`);
    assert.ok(fs.existsSync(path.join(dir, 'pmemps_pb2.py')) && fs.existsSync(path.join(dir, 'pmemps_pb2_grpc.py')), 'stubs generated');
    stubs = dir;
  });

  test('two shards: the Python client checks itself, the SDK reads the same rows and restores its checkpoint', async () => {
    needStubs();
    const c = await cluster(2, 'py2');
    try {
      const { out, summary } = await runExample(stubs, c.endpoints);
      assert.match(out.stdout, /CreateTable py_emb: created = \[True, True\]/);
      assert.match(out.stdout, /Push seq 1 again: duplicate = \[True(, True)?\]/);
      assert.match(out.stdout, /Checkpoint 1 \(ballot 0\): committed_id = \[1, 1\]/);
      assert.match(out.stdout, /^check: ok$/m);
      assert.equal(summary.checkpoint, 1);
      assert.equal(summary.keys.length, summary.rows.length);

      const keys = BigUint64Array.from(summary.keys.map((k) => BigInt(k)));
      // The Python splitmix64 sends each key where the SDK does.
      assert.deepEqual(
        summary.shards,
        [...keys].map((k) => shardOfKey(k, 2)),
        'shard of every key, Python vs worker/shard.ts',
      );

      // The Python client gave the new cluster its identity; the SDK accepts it.
      const ps = await PsClient.connect({ endpoints: c.endpoints });
      try {
        const st = await ps.status();
        assert.deepEqual(
          st.map((s) => [s.identity?.shard_index, s.identity?.shard_count]),
          [
            [0, 2],
            [1, 2],
          ],
        );
        assert.equal(new Set(st.map((s) => s.identity?.cluster_id)).size, 1);
        assert.deepEqual(
          st.map((s) => s.committed_id),
          [1, 1],
        );

        // Cross-client agreement, bit for bit: the rows Python pushed and read back.
        const want = Float32Array.from(summary.rows.flat());
        assert.equal(want.length, keys.length * summary.dim);
        assert.ok(
          summary.rows.flat().every((v) => Math.fround(v) === v),
          'Python printed float32 values',
        );
        assert.deepEqual(await ps.pull(summary.table, keys), want, 'SDK pull = rows pushed from Python');
        // Both shards hold rows of the table (keys are random; 6 keys land on one shard with p = 1/32).
        const onShard = [0, 1].map((s) => summary.shards.filter((x) => x === s).length);
        const rows = st.map((s) => s.tables.find((t) => t.spec.name === summary.table)?.rows ?? 0);
        assert.deepEqual(rows, onShard, 'rows per shard = keys Python sent there');

        // The checkpoint Python committed on every shard is a cluster checkpoint for the SDK.
        const r = await ps.restore();
        assert.equal(r.id, 1);
        assert.equal(r.step, 1);
        assert.deepEqual(r.meta, { client: 'python' });
        assert.deepEqual(await ps.pull(summary.table, keys), want, 'rows after the SDK restored the Python checkpoint');
      } finally {
        ps.close();
      }

      // Once the shards have an identity, the Python client refuses a reordered list.
      const swapped = await run(PYTHON, [EXAMPLE, '--stubs', stubs, [...c.endpoints].reverse()[0], [...c.endpoints].reverse()[1]]);
      assert.notEqual(swapped.code, 0, 'reordered endpoints refused');
      assert.match(swapped.stderr, /is shard 1 of 2, not 0 of 2: list the shards in order/);

      // A second run on the same cluster (after the SDK's restore: new
      // incarnations, the restorer's ballot): table exists, next checkpoint id.
      const again = await runExample(stubs, c.endpoints);
      assert.match(again.out.stdout, /CreateTable py_emb: created = \[False, False\]/);
      assert.match(again.out.stdout, /Checkpoint 2 \(ballot [1-9]\d*\): committed_id = \[2, 2\]/);
    } finally {
      await c.stop();
    }
  });

  test('one shard: the same example, the checkpoint on that server alone', async () => {
    needStubs();
    const c = await cluster(1, 'py1');
    try {
      const { out, summary } = await runExample(stubs, c.endpoints);
      assert.match(out.stdout, /Push seq 1 again: duplicate = \[True\]/);
      assert.match(out.stdout, /Checkpoint 1 \(ballot 0\): committed_id = \[1\]/);
      const ps = await PsClient.connect({ endpoints: c.endpoints });
      try {
        assert.deepEqual(await ps.pull(summary.table, BigUint64Array.from(summary.keys.map((k) => BigInt(k)))), Float32Array.from(summary.rows.flat()));
      } finally {
        ps.close();
      }
    } finally {
      await c.stop();
    }
  });

  test('TLS with a client certificate and a token: the example checks itself; without the token it is refused', async () => {
    needStubs();
    const dir = dirs('py-tls');
    const certs = makeCerts(path.join(dir, 'certs'));
    const tokenFile = path.join(dir, 'token');
    fs.writeFileSync(tokenFile, 'py-trainer-token-3e1f0a9c\n');
    fs.writeFileSync(path.join(dir, 'tokens'), 'py-trainer-token-3e1f0a9c trainer python\n');
    const c = await LocalCluster.start({
      dir: path.join(dir, 'cluster'),
      shards: 1,
      cacheMb: 16,
      poolSize: '64M',
      logLevel: 'warn',
      env: {
        PMEMPS_TLS_CERT: certs.serverCert,
        PMEMPS_TLS_KEY: certs.serverKey,
        PMEMPS_TLS_CLIENT_CA: certs.caFile,
        PMEMPS_AUTH_TOKENS: path.join(dir, 'tokens'),
      },
      probe: {
        credentials: grpc.credentials.createSsl(certs.pem(certs.caFile), certs.pem(certs.clientKey), certs.pem(certs.clientCert)),
        token: 'py-trainer-token-3e1f0a9c',
      },
    });
    clusters.push(c);
    try {
      const tls = ['--ca', certs.caFile, '--cert', certs.clientCert, '--key', certs.clientKey];
      const ok = await run(PYTHON, [EXAMPLE, '--stubs', stubs, '--check', ...tls, '--token-file', tokenFile, ...c.endpoints]);
      assert.equal(ok.code, 0, `python_client.py over TLS failed (exit ${ok.code}):\n${ok.stdout}\n${ok.stderr}`);
      assert.match(ok.stdout, /^check: ok$/m);
      const none = await run(PYTHON, [EXAMPLE, '--stubs', stubs, ...tls, ...c.endpoints]);
      assert.equal(none.code, 1);
      assert.match(none.stderr, /failed: UNAUTHENTICATED \(reason unauthenticated\): this server requires a token/);
    } finally {
      await c.stop();
    }
  });

  test('a server that is not there: exit code 1 and the gRPC status on stderr', async () => {
    needStubs();
    const dead = await run(PYTHON, [EXAMPLE, '--stubs', stubs, '127.0.0.1:1']);
    assert.equal(dead.code, 1);
    assert.match(dead.stderr, /failed: UNAVAILABLE/);
  });
});
