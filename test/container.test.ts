// The image of deploy/Dockerfile, built and crash-tested for real: a private
// Docker daemon (test/docker.lib.ts) builds it, two shard containers serve
// pools on named volumes with ports published on 127.0.0.1, a worker on the
// host trains through the SDK (the plan of test/cluster.lib.ts), one
// container is killed with SIGKILL mid-run and started again, the worker
// restores and finishes; the other is stopped with docker stop (SIGTERM) and
// comes back needing no restore. Every row is compared bit for bit with the
// DRAM-only reference. It runs last in `npm test`: it is the slowest file,
// and it fails (never skips) when Docker cannot run here.
import { after, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { freePorts } from '../examples/local-cluster';
import { check } from '../server/healthcheck';
import { PsClient, type ShardStatus } from '../worker';
import { PLAN, allKeys, DENSE_NAME, reference, referenceDigest, runWorker, TABLE, type Plan } from './cluster.lib';
import { ensurePackages, PrivateDocker } from './docker.lib';

const BASE = 'node:20-bookworm-slim';
const IMAGE = `pmemps-ci:${process.pid}`;
const SHARDS = [0, 1].map((i) => ({ name: `pmemps-ci-ps${i}-${process.pid}`, volume: `pmemps-ci-pool${i}-${process.pid}`, port: 0 }));
// 150 ms per step: the kill, sent on the checkpoint at step 16, lands while
// steps 17..40 (3.6 s at least) are still to run, even on a loaded machine.
const plan: Plan = { ...PLAN, steps: 40, persistEvery: 8 };
const STEP_DELAY_MS = 150;
const KILL_AFTER_CHECKPOINT_AT = 16;

let docker: PrivateDocker | null = null;
// Each step needs the one before; a failed step fails those after it at once.
const reached = { image: false, serving: false };
let worker: { kill: () => void } | null = null;
const t0 = Date.now();
const timings: string[] = [];
function lap(what: string, since: number): void {
  timings.push(`${what} ${((Date.now() - since) / 1000).toFixed(1)} s`);
}

after(async () => {
  worker?.kill();
  const since = Date.now();
  try {
    await docker?.close();
  } finally {
    lap('cleanup', since);
    console.log(`container test timings: ${timings.join(', ')}; total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
});

function d(): PrivateDocker {
  assert.ok(docker, 'the private Docker daemon is running (see the first test)');
  return docker;
}

const endpoint = (i: number): string => `127.0.0.1:${SHARDS[i].port}`;

/** Until the shard's grpc.health.v1 answers SERVING from the host, or the container stops. */
async function serving(i: number, deadlineMs = 60_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const ok = await check(endpoint(i), 1000).then(
      (s) => s === 'SERVING',
      () => false,
    );
    if (ok) return;
    const running = d().docker(['inspect', '-f', '{{.State.Running}}', SHARDS[i].name]).trim();
    if (running !== 'true') throw new Error(`shard container ${i} stopped:\n${d().docker(['logs', '--tail', '30', SHARDS[i].name])}`);
    if (Date.now() > end) throw new Error(`shard ${i} not serving within ${deadlineMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function logsOf(i: number): string {
  // The server logs to stdout; docker logs replays both streams.
  return d().docker(['logs', SHARDS[i].name]);
}

async function rowsEqualReference(ps: PsClient, steps: number): Promise<void> {
  const ref = await reference(plan, steps);
  const rows = await ps.pull(TABLE.name, allKeys(plan));
  const got = Buffer.from(rows.buffer, rows.byteOffset, rows.byteLength);
  assert.equal(got.length, ref.rows.length);
  const firstDiff = got.findIndex((b, k) => b !== ref.rows[k]);
  assert.equal(firstDiff, -1, `every row of every plan key equals the reference at step ${steps} bit for bit (first difference at byte ${firstDiff})`);
  const dense = (await ps.pullDense([DENSE_NAME])).get(DENSE_NAME)!;
  assert.deepEqual(Buffer.from(dense.buffer, dense.byteOffset, dense.byteLength), Buffer.from(ref.dense.buffer), 'the dense tensor equals the reference');
}

describe('the deploy/Dockerfile image, in containers', { concurrency: false }, () => {
  test('a private Docker daemon starts (the test fails, never skips, when it cannot)', async () => {
    assert.equal(process.getuid?.(), 0, 'the container test runs dockerd itself and needs root (CI runs as root)');
    const since = Date.now();
    ensurePackages();
    lap('packages', since);
    const s2 = Date.now();
    docker = await PrivateDocker.start();
    lap('daemon start', s2);
    assert.match(d().docker(['version', '-f', '{{.Server.Version}}']), /\d+\.\d+/);
  });

  test(`the image builds FROM ${BASE} (a stand-in made from Debian and the host's Node when no registry is reachable)`, { timeout: 900_000 }, async () => {
    let since = Date.now();
    const base = await d().ensureBaseImage(BASE, 20);
    lap(`base image (${base})`, since);
    console.log(`container test: base image ${BASE}: ${base}`);
    since = Date.now();
    // --network host: the private daemon does no NAT (it leaves the host's
    // firewall alone), so build steps use the host's network directly.
    d().docker(['build', '--network', 'host', '--force-rm', '-f', path.join('deploy', 'Dockerfile'), '-t', IMAGE, '.'], { timeoutMs: 900_000 });
    lap('image build', since);
    const probe = d().docker([
      'run',
      '--rm',
      '--entrypoint',
      'sh',
      IMAGE,
      '-c',
      'id -u; for c in g++ gcc cc make; do command -v $c; done; ldconfig -p | grep -c libpmemobj.so.1',
    ]);
    const [uid, ...rest] = probe.trim().split('\n');
    assert.notEqual(uid, '0', 'the server runs as a non-root user');
    assert.deepEqual(rest, ['1'], 'no compiler in the runtime image, and libpmemobj is there');
    reached.image = true;
  });

  test('two shard containers on named volumes become healthy through grpc.health.v1', async () => {
    assert.ok(reached.image, 'the image was built');
    const ports = await freePorts(SHARDS.length);
    for (const [i, s] of SHARDS.entries()) {
      s.port = ports[i];
      d().docker(['volume', 'create', s.volume]);
      d().docker([
        'run',
        '-d',
        '--name',
        s.name,
        '-v',
        `${s.volume}:/var/lib/pmemps`,
        '-p',
        `127.0.0.1:${s.port}:7000`,
        // Plaintext inside the test's own bridge; the pool is on an ordinary
        // volume, so PMEM is emulated as in the other service tests.
        '-e',
        'PMEMPS_INSECURE=1',
        '-e',
        'PMEM_IS_PMEM_FORCE=1',
        '-e',
        'PMEMPS_POOL_SIZE=64M',
        '-e',
        'PMEMPS_CACHE_MB=8',
        '-e',
        'PMEMPS_DRAIN_SECONDS=10',
        '--health-interval',
        '1s',
        '--health-start-period',
        '30s',
        IMAGE,
      ]);
    }
    await Promise.all(SHARDS.map((_, i) => serving(i)));
    // The image's own HEALTHCHECK (the same probe, run inside the container).
    const end = Date.now() + 60_000;
    for (const s of SHARDS) {
      let h = '';
      while ((h = d().docker(['inspect', '-f', '{{.State.Health.Status}}', s.name]).trim()) !== 'healthy' && Date.now() < end)
        await new Promise((r) => setTimeout(r, 250));
      assert.equal(h, 'healthy', `${s.name}: ${d().docker(['inspect', '-f', '{{json .State.Health}}', s.name])}`);
    }
    reached.serving = true;
  });

  test('training from the host survives docker kill -s KILL of a shard: restart, restore, bit for bit', { timeout: 300_000 }, async () => {
    assert.ok(reached.serving, 'both shards serve');
    const endpoints = SHARDS.map((_, i) => endpoint(i));
    let killed: Promise<number> | null = null;
    const w = runWorker({ endpoints, plan, worker: 0, stepDelayMs: STEP_DELAY_MS, retryForMs: 60_000 }, {}, (e) => {
      if (e.event === 'persisted' && e.step === KILL_AFTER_CHECKPOINT_AT && !killed)
        killed = (async () => {
          await d().dockerAsync(['kill', '-s', 'KILL', SHARDS[1].name]);
          const code = Number((await d().dockerAsync(['wait', SHARDS[1].name])).trim());
          await d().dockerAsync(['start', SHARDS[1].name]);
          return code;
        })();
    });
    worker = w;
    const run = await w.done;
    worker = null;
    assert.ok(killed, 'the checkpoint at the kill step was reached');
    assert.equal(await killed, 137, 'the container died of SIGKILL');
    assert.equal(run.code, 0, `the worker finished: ${run.stderr}`);
    const restores = run.events.filter((e) => e.event === 'restored');
    assert.equal(restores.length, 1, 'the worker restored once');
    const r = restores[0];
    assert.ok(r.step! >= KILL_AFTER_CHECKPOINT_AT && r.step! < plan.steps, `restored at a checkpoint after the kill was sent (step ${r.step})`);
    assert.equal(r.digest, await referenceDigest(plan, r.step!), `the cluster right after the restore equals the reference at step ${r.step}`);
    const done = run.events.find((e) => e.event === 'done')!;
    assert.equal(done.digest, await referenceDigest(plan, plan.steps), 'the resumed run ends equal to the run without a crash');
    assert.match(logsOf(1), /pool reopened after a crash/, 'the killed shard reopened its pool as after a crash');

    const ps = await PsClient.connect({ endpoints, retryForMs: 30_000 });
    try {
      await rowsEqualReference(ps, plan.steps);
    } finally {
      ps.close();
    }
  });

  test('docker stop of the other shard: a clean stop, and it comes back with no restore needed', { timeout: 180_000 }, async () => {
    assert.ok(reached.serving, 'both shards serve');
    const endpoints = SHARDS.map((_, i) => endpoint(i));
    const ps = await PsClient.connect({ endpoints, retryForMs: 30_000 });
    try {
      const before = (await ps.status())[0];
      // More than the drain (PMEMPS_DRAIN_SECONDS=10): SIGTERM, never a SIGKILL.
      d().docker(['stop', '-t', '40', SHARDS[0].name]);
      assert.equal(d().docker(['inspect', '-f', '{{.State.ExitCode}}', SHARDS[0].name]).trim(), '0', 'the server exited 0 on SIGTERM');
      assert.match(logsOf(0), /pool closed cleanly/);
      d().docker(['start', SHARDS[0].name]);
      await serving(0);
      const st: ShardStatus = (await ps.status())[0];
      assert.equal(st.needs_restore, false, 'no restore needed');
      assert.equal(st.last_stop_clean, true, 'the shard saw its last stop was clean');
      assert.notEqual(st.incarnation, before.incarnation, 'it is a new process');
      assert.equal(st.lineage, before.lineage, 'its state is the continuation of what it acknowledged');
      // The same client, connected before the stop, reads on without restoring.
      await rowsEqualReference(ps, plan.steps);
    } finally {
      ps.close();
    }
  });
});
