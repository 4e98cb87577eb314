// The attack surface, briefly: the seeded fuzzer (test/fuzz.lib.ts) with
// fixed seeds, and every directed abuse case (test/fuzz.cases.ts), each
// against a real pserver on a real pool over loopback gRPC. A failure lists
// each finding with its seed, the request that broke an invariant, and the
// command that replays it (node dist/test/fuzz.soak.js ...); the soak runs
// the same for as long as you like. The last block runs the fuzzer and a
// share of the cases again against servers with --auth-tokens
// (test/fuzz.auth.ts): with the admin token, with a reader's, with none.
import { after, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { METHOD_ROLES } from '../server/auth';
import { packKeys } from '../native/engine';
import { FUZZ_TOKENS, READS, bearer, type AuthMode } from './fuzz.auth';
import { ABUSE_CASES, runCase } from './fuzz.cases';
import { SCRATCH, SCRATCH_DENSE, formatFinding, signature, type Finding } from './fuzz.gen';
import { Harness, closeAllHarnesses, runFuzz } from './fuzz.lib';
import { RPCS } from './fuzz.wire';

after(closeAllHarnesses);

/** Seeds and size of the CI run: about half a minute of requests on 2 cores (the abuse cases take another 40 s). */
const SEEDS = [1, 2, 3];
const REQUESTS = 2000;
/** Request digests of the runs without auth, by seed: the admin run of a seed must draw the same requests. */
const digests = new Map<number, string>();

function report(findings: Finding[]): string {
  const bySig = new Map<string, Finding[]>();
  for (const f of findings) bySig.set(signature(f), [...(bySig.get(signature(f)) ?? []), f]);
  const lines = [`${findings.length} findings, ${bySig.size} distinct:`];
  for (const fs of bySig.values()) lines.push('', `(${fs.length}x) ${formatFinding(fs[0])}`);
  return lines.join('\n');
}

describe('fuzz: seeded hostile requests of every RPC against a real pserver', () => {
  for (const seed of SEEDS)
    test(`seed ${seed}: ${REQUESTS} requests in batches, invariants after each, clean and kill -9 restarts`, async () => {
      console.log(`fuzz seed ${seed} (replay: node dist/test/fuzz.soak.js --seed ${seed} --requests ${REQUESTS})`);
      const s = await runFuzz({ seed, requests: REQUESTS, maxFindings: 200 });
      console.log(
        `fuzz seed ${seed}: ${s.requests} requests, ${s.batches} batches, ${s.restarts.term} clean restarts, ${s.restarts.kill} kill -9, ${s.resets} fresh servers, ${s.seconds.toFixed(1)} s; codes ${JSON.stringify(s.stats.byCode)}`,
      );
      digests.set(seed, s.digest);
      assert.deepEqual(s.findings.length, 0, report(s.findings));
      // The run did what it claims (seeded: the same every time).
      assert.deepEqual(
        RPCS.filter((r) => !s.stats.byRpc[r]),
        [],
        'every RPC was sent',
      );
      assert.ok(s.restarts.term >= 2 && s.restarts.kill >= 1, `restarts: ${JSON.stringify(s.restarts)}`);
    });
});

describe('abuse cases against a real pserver', () => {
  for (const c of ABUSE_CASES)
    test(`${c.name}${c.known ? ` (written for: ${c.known})` : ''}`, async () => {
      const findings = await runCase(c.name, 1);
      assert.deepEqual(findings.length, 0, report(findings));
    });
});

/**
 * Under --auth-tokens, about 50 s on 2 cores: admin (the seed and size of
 * the first run above: same requests, same checks), none (every request
 * refused UNAUTHENTICATED, the whole observable state unchanged after each
 * batch), reader (writes refused PERMISSION_DENIED, reads judged as usual,
 * nothing changed); then the cases that reach the door in other ways than
 * the fuzzer (the soak runs every case: --case all --auth both).
 */
const AUTH_RUNS: { auth: AuthMode; seed: number; requests: number }[] = [
  { auth: 'admin', seed: SEEDS[0], requests: REQUESTS },
  { auth: 'none', seed: 4, requests: 800 },
  { auth: 'reader', seed: 5, requests: 800 },
];
/** With the admin token the cases send what the fuzzer sends; the framing case is the one that writes its own headers. */
const AUTH_CASES: Record<'admin' | 'none', string[]> = {
  admin: ['http2-framing'],
  none: ['edge-values-of-every-field', 'http2-framing', 'huge-names-in-errors'],
};

describe('fuzz and abuse under --auth-tokens', () => {
  test('the harness server runs with tokens, and the observation of its whole state sees every change a refused call could make', async () => {
    const h = await Harness.start({ seed: 9, replay: () => 'node dist/test/fuzz.test.js', auth: 'none' });
    try {
      // Without these refusals every run below would pass against a server that checks nothing.
      const none = await h.wire.call('Status', Buffer.alloc(0), 5000, undefined, new grpc.Metadata());
      assert.equal(grpc.status[none.code], 'UNAUTHENTICATED', none.details);
      const reader = await h.wire.call('DropTable', Buffer.alloc(0), 5000, undefined, bearer(FUZZ_TOKENS.reader));
      assert.equal(grpc.status[reader.code], 'PERMISSION_DENIED', reader.details);

      // Guards the refused runs against an observation that sees nothing: each mutation here is made with the admin token.
      const control = await h.observe();
      await h.controlPush();
      assert.ok(h.compareSnapshots('control push', control, await h.observe()), 'a push to the control table changed nothing the observation reads');
      const st = await h.status();
      const f32 = (n: number) => Buffer.from(Float32Array.from({ length: n }, (_, i) => i + 1).buffer);
      const s0 = SCRATCH[0];
      const d0 = SCRATCH_DENSE[0];
      const next = Math.max(st.committed_id, st.last_checkpoint_id) + 1;
      const mutations: [string, string, unknown][] = [
        ['Push', 'Push', { table: s0.name, keys: packKeys([3n]), grads: f32(s0.dim), worker_id: '', seq: 0, incarnation: 0 }],
        ['Push of a new key', 'Push', { table: s0.name, keys: packKeys([99n]), grads: f32(s0.dim), worker_id: '', seq: 0, incarnation: 0 }],
        ['PushDense', 'PushDense', { name: d0.name, grads: f32(d0.n), worker_id: '', seq: 0, incarnation: 0 }],
        ['SetDense', 'SetDense', { tensor: { name: SCRATCH_DENSE[1].name, values: f32(SCRATCH_DENSE[1].n) }, optimizer: { type: 'sgd', params: { lr: 0.1 } } }],
        ['SetDense of a new name', 'SetDense', { tensor: { name: 'fresh-dense', values: f32(2) }, optimizer: { type: 'sgd', params: { lr: 0.1 } } }],
        ['UpdateTable', 'UpdateTable', { name: SCRATCH[1].name, params: { lr: 0.25 } }],
        ['DropTable', 'DropTable', { name: SCRATCH[2].name }],
        [
          'CreateTable',
          'CreateTable',
          { spec: { name: 'fresh', dim: 2, optimizer: { type: 'sgd', params: { lr: 0.1 } }, initializer: { type: 'zeros' }, seed: 1 } },
        ],
        ['RaiseBallot', 'RaiseBallot', { ballot: st.ballot + 1 }],
        ['Checkpoint ABORT of a new id', 'Checkpoint', { id: next, phase: 'ABORT', ballot: st.ballot + 1 }],
        ['Restore', 'Restore', { ballot: st.ballot + 1, checkpoint_id: st.committed_id }],
      ];
      for (const [what, rpc, req] of mutations) {
        const dense = rpc === 'SetDense' ? [(req as { tensor: { name: string } }).tensor.name] : [];
        const before = await h.observe(dense);
        await h.call(rpc, req);
        const changed = h.compareSnapshots(what, before, await h.observe(dense));
        assert.ok(changed, `${what} (admin) changed nothing the observation reads`);
      }
      // The reads the reader runs expect to pass are exactly what the server gives readers.
      assert.deepEqual(
        Object.keys(METHOD_ROLES)
          .filter((m) => METHOD_ROLES[m] === 'reader')
          .sort(),
        [...READS].sort(),
      );
      // Every role-gated RPC that can change state was tried: a Barrier keeps none, a sealed identity takes no change.
      const gated = Object.keys(METHOD_ROLES).filter((m) => METHOD_ROLES[m] !== 'reader');
      const notHere = ['Barrier', 'SetIdentity'];
      assert.deepEqual(gated.filter((m) => !notHere.includes(m) && !mutations.some(([, rpc]) => rpc === m)).sort(), []);
    } finally {
      h.findings.length = 0;
      await h.close();
    }
  });

  for (const { auth, seed, requests } of AUTH_RUNS)
    test(`auth ${auth}, seed ${seed}: ${requests} requests${auth === 'admin' ? ' (the same requests as without auth)' : auth === 'none' ? ', every one refused, nothing changed' : ', every write refused, nothing changed'}`, async () => {
      console.log(`fuzz seed ${seed}, auth ${auth} (replay: node dist/test/fuzz.soak.js --seed ${seed} --requests ${requests} --auth ${auth})`);
      const s = await runFuzz({ seed, requests, maxFindings: 200, auth });
      console.log(
        `fuzz seed ${seed}, auth ${auth}: ${s.requests} requests, ${s.batches} batches, ${s.restarts.term} clean restarts, ${s.restarts.kill} kill -9, ${s.seconds.toFixed(1)} s; codes ${JSON.stringify(s.stats.byCode)}; presented ${JSON.stringify(s.stats.byAuth)}`,
      );
      assert.deepEqual(s.findings.length, 0, report(s.findings));
      assert.deepEqual(
        RPCS.filter((r) => !s.stats.byRpc[r]),
        [],
        'every RPC was sent',
      );
      assert.ok(s.restarts.term >= 1 && s.restarts.kill >= 1, `restarts: ${JSON.stringify(s.restarts)}`);
      const codes = Object.keys(s.stats.byCode).sort();
      if (auth === 'admin') {
        if (digests.has(seed)) assert.equal(s.digest, digests.get(seed), 'the admin run drew other requests than the run without auth');
        assert.ok(!codes.includes('UNAUTHENTICATED') && !codes.includes('PERMISSION_DENIED'), `codes ${codes}`);
      }
      // Requests to paths no service registered are answered UNIMPLEMENTED before the door (see judgeRefused).
      if (auth === 'none')
        assert.deepEqual(
          codes.filter((c) => c !== 'UNIMPLEMENTED'),
          ['UNAUTHENTICATED'],
        );
      if (auth === 'none') assert.ok(Object.keys(s.stats.byAuth).length >= 15, `presented: ${JSON.stringify(s.stats.byAuth)}`);
      if (auth === 'reader') assert.ok(s.stats.byCode.PERMISSION_DENIED > 0 && s.stats.byCode.OK > 0, `codes ${JSON.stringify(s.stats.byCode)}`);
    });

  for (const auth of ['admin', 'none'] as const)
    for (const name of AUTH_CASES[auth])
      test(`case ${name}, auth ${auth}`, async () => {
        assert.ok(!ABUSE_CASES.find((c) => c.name === name)?.needsAccess);
        const findings = await runCase(name, 1, auth);
        assert.deepEqual(findings.length, 0, report(findings));
      });
});
