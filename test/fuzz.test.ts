// The attack surface, briefly: the seeded fuzzer (test/fuzz.lib.ts) with
// fixed seeds, and every directed abuse case (test/fuzz.cases.ts), each
// against a real pserver on a real pool over loopback gRPC. A failure lists
// each finding with its seed, the request that broke an invariant, and the
// command that replays it (node dist/test/fuzz.soak.js ...); the soak runs
// the same for as long as you like.
import { after, describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { ABUSE_CASES, runCase } from './fuzz.cases';
import { formatFinding, signature, type Finding } from './fuzz.gen';
import { closeAllHarnesses, runFuzz } from './fuzz.lib';
import { RPCS } from './fuzz.wire';

after(closeAllHarnesses);

/** Seeds and size of the CI run: about half a minute of requests on 2 cores (the abuse cases take another 40 s). */
const SEEDS = [1, 2, 3];
const REQUESTS = 2000;

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
