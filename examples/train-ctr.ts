// The README's main command: a click-through model trained on a pmemps
// cluster, with a server killed mid-training and the run restored.
//
//   node dist/examples/train-ctr.js [--servers 2] [--steps 1200] [--kill-at 700] [--compute-ms 0]
//
// It starts the pservers (emulated PMEM directories under --dir), generates
// a synthetic Criteo-like data set (26 categorical fields with Zipf-skewed
// hashed ids; labels from a hidden logistic model), and trains a
// factorization machine (per feature: a linear weight and a k-dim factor,
// one table row [w, v1..vk], Adagrad on the servers; the bias is a dense
// weight the trainer keeps and checkpoints). Batches are a pure function of
// (seed, step), so a restored run replays exactly the data it lost.
import * as fs from 'node:fs';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { PeriodicPersist, PsClient, ServerRestartedError } from '../worker';
import { LocalCluster } from './local-cluster';

const FIELDS = 26;

interface Args {
  servers: number;
  steps: number;
  batch: number;
  k: number;
  vocab: number;
  lr: number;
  persistEvery: number;
  persistSeconds: number;
  killAt: number;
  computeMs: number;
  dir: string;
  seed: number;
  endpoints?: string;
  quiet: boolean;
  json?: string;
}

function parseArgs(): Args {
  const a = yargs(hideBin(process.argv))
    .scriptName('train-ctr')
    .usage(
      '$0 [options]\n\nTrains a factorization machine on a synthetic Criteo-like data set against a local pmemps cluster, kills a server mid-run, restores and finishes.',
    )
    .option('servers', { type: 'number', default: 2, describe: 'pservers to start' })
    .option('steps', { type: 'number', default: 1200, describe: 'training steps' })
    .option('batch', { type: 'number', default: 512, describe: 'examples per step' })
    .option('k', { type: 'number', default: 8, describe: 'factor size of the FM' })
    .option('vocab', { type: 'number', default: 20000, describe: 'ids per field' })
    .option('lr', { type: 'number', default: 0.05, describe: 'Adagrad learning rate' })
    .option('persist-every', { type: 'number', default: 100, describe: 'persist every N steps (0: off)' })
    .option('persist-seconds', { type: 'number', default: 0, describe: 'also persist every T seconds (0: off)' })
    .option('kill-at', { type: 'number', default: 750, describe: 'kill -9 the last server at this step, restart it, restore (0: no kill)' })
    .option('compute-ms', { type: 'number', default: 0, describe: 'emulated trainer compute per step (e.g. a GPU forward/backward), ms' })
    .option('dir', { type: 'string', default: path.join('data', 'train'), describe: "directory of the servers' pools and logs (emptied first)" })
    .option('endpoints', { type: 'string', describe: 'use running servers (comma-separated host:port) instead of starting them; no kill' })
    .option('seed', { type: 'number', default: 1 })
    .option('quiet', { type: 'boolean', default: false, describe: 'only the summary' })
    .option('json', { type: 'string', describe: 'also write the summary as JSON to this file' })
    .strict()
    .help()
    .parseSync();
  return { ...a, persistEvery: a['persist-every'], persistSeconds: a['persist-seconds'], killAt: a['kill-at'], computeMs: a['compute-ms'] } as Args;
}

// ------------------------------------------------------------ data

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hash32(a: number, b: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x632be5ab, 0xc2b2ae35);
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  return (h ^ (h >>> 16)) >>> 0;
}

class Dataset {
  private readonly cdf: Float64Array;
  constructor(
    readonly vocab: number,
    readonly seed: number,
  ) {
    // Zipf(1.1) over the ids of a field: a few ids are very frequent.
    this.cdf = new Float64Array(vocab);
    let s = 0;
    for (let i = 0; i < vocab; i++) this.cdf[i] = s += 1 / Math.pow(i + 1, 1.1);
    for (let i = 0; i < vocab; i++) this.cdf[i] /= s;
  }

  // The hidden model: a weight per (field, id), a pure function of them.
  private trueWeight(f: number, id: number): number {
    const u = hash32(f * 7919 + this.seed, id) / 4294967296;
    const v = hash32(id + 31 * this.seed, f + 101) / 4294967296;
    return 0.6 * Math.sqrt(-2 * Math.log(u + 1e-12)) * Math.cos(2 * Math.PI * v);
  }

  /** Batch of step t: keys (FIELDS per example, field in the high bits) and labels. */
  batch(step: number, n: number, split = 0): { keys: BigUint64Array; labels: Uint8Array } {
    const rnd = mulberry32(hash32(this.seed * 1000003 + split, step));
    const keys = new BigUint64Array(n * FIELDS);
    const labels = new Uint8Array(n);
    for (let e = 0; e < n; e++) {
      let logit = -0.5;
      for (let f = 0; f < FIELDS; f++) {
        const u = rnd();
        let lo = 0,
          hi = this.vocab - 1;
        while (lo < hi) {
          const m = (lo + hi) >> 1;
          if (this.cdf[m] < u) lo = m + 1;
          else hi = m;
        }
        // The raw id is hashed as Criteo's are; the field sits in the top byte.
        const id = hash32(f, lo) % 0xffffffff;
        keys[e * FIELDS + f] = (BigInt(f) << 56n) | BigInt(id);
        logit += this.trueWeight(f, lo) / Math.sqrt(FIELDS / 4);
      }
      labels[e] = rnd() < 1 / (1 + Math.exp(-logit)) ? 1 : 0;
    }
    return { keys, labels };
  }
}

// ------------------------------------------------------------ the model

/** Forward and backward of the FM on one batch; returns the mean log loss and fills the gradients. */
function fmStep(rows: Float32Array, labels: Uint8Array, k: number, bias: number, grads: Float32Array | null): { loss: number; gBias: number } {
  const n = labels.length;
  const dim = 1 + k;
  let loss = 0;
  let gBias = 0;
  const s = new Float64Array(k);
  for (let e = 0; e < n; e++) {
    s.fill(0);
    let lin = 0,
      sq = 0;
    for (let f = 0; f < FIELDS; f++) {
      const r = (e * FIELDS + f) * dim;
      lin += rows[r];
      for (let j = 0; j < k; j++) {
        const v = rows[r + 1 + j];
        s[j] += v;
        sq += v * v;
      }
    }
    let inter = 0;
    for (let j = 0; j < k; j++) inter += s[j] * s[j];
    const logit = bias + lin + 0.5 * (inter - sq);
    const p = 1 / (1 + Math.exp(-logit));
    const y = labels[e];
    loss -= y ? Math.log(Math.max(p, 1e-7)) : Math.log(Math.max(1 - p, 1e-7));
    const g = (p - y) / n;
    gBias += g;
    if (!grads) continue;
    for (let f = 0; f < FIELDS; f++) {
      const r = (e * FIELDS + f) * dim;
      grads[r] = g;
      for (let j = 0; j < k; j++) grads[r + 1 + j] = g * (s[j] - rows[r + 1 + j]);
    }
  }
  return { loss: loss / n, gBias };
}

// ------------------------------------------------------------ main

async function main(): Promise<void> {
  const a = parseArgs();
  const say = (s: string): void => {
    if (!a.quiet) process.stdout.write(s + '\n');
  };
  let cluster: LocalCluster | null = null;
  let endpoints: string[];
  if (a.endpoints) {
    endpoints = a.endpoints.split(',');
  } else {
    fs.rmSync(a.dir, { recursive: true, force: true });
    say(`starting ${a.servers} pservers (pools in ${a.dir}/ps*, emulated PMEM) ...`);
    cluster = await LocalCluster.start({ dir: a.dir, shards: a.servers, cacheMb: 64, poolSize: '512M' });
    endpoints = cluster.endpoints;
    say(`  ${endpoints.join('  ')}`);
  }
  liveCluster = cluster;
  process.on('SIGINT', () => {
    cluster?.killAll();
    process.exit(130);
  });

  const t0 = performance.now();
  const ps = await PsClient.connect({ endpoints });
  const dim = 1 + a.k;
  await ps.createTable({
    name: 'fm',
    dim,
    optimizer: { type: 'adagrad', lr: a.lr, initialAccumulator: 0.01 },
    initializer: { type: 'normal', mean: 0, std: 0.01, truncated: true },
    seed: a.seed,
  });
  const data = new Dataset(a.vocab, a.seed);
  const evalBatch = data.batch(0, 4096, 1); // held out: another split of the same distribution
  const evaluate = async (bias: number): Promise<number> => fmStep(await ps.pull('fm', evalBatch.keys), evalBatch.labels, a.k, bias, null).loss;

  let bias = 0;
  const periodic =
    a.persistEvery || a.persistSeconds
      ? new PeriodicPersist(ps, { everySteps: a.persistEvery || undefined, everySeconds: a.persistSeconds || undefined })
      : null;
  const startLoss = await evaluate(bias);
  say(`held-out log loss before training: ${startLoss.toFixed(4)}  (a constant predictor scores ~0.69)`);
  say(
    `training: ${a.steps} steps x ${a.batch} examples x ${FIELDS} fields, FM k=${a.k}, persist every ${a.persistEvery || '-'} steps${a.persistSeconds ? ` / ${a.persistSeconds} s` : ''}${cluster && a.killAt ? `, kill -9 of server ${a.servers - 1} at step ${a.killAt}` : ''}`,
  );

  let step = 0;
  let executed = 0;
  let restores = 0;
  let killed = false;
  let lossSum = 0,
    lossN = 0;
  let lastLoss = NaN;
  const grads = new Float32Array(a.batch * FIELDS * dim);
  let lastPrint = performance.now();
  let examplesSincePrint = 0;
  while (step < a.steps) {
    try {
      if (cluster && a.killAt && !killed && step === a.killAt) {
        killed = true;
        const victim = a.servers - 1;
        await cluster.kill(victim, 'SIGKILL');
        say(`step ${step}: kill -9 of server ${victim} (${endpoints[victim]}); restarting it in 1 s`);
        setTimeout(() => {
          cluster!.startShard(victim).then(
            () => say(`  server ${victim} is back (it reopened its pool at its last committed checkpoint, in constant time)`),
            (e) => say(`  restart failed: ${(e as Error).message}`),
          );
        }, 1000);
      }
      ps.stall.beginStep();
      const { keys, labels } = data.batch(step, a.batch);
      const rows = await ps.pull('fm', keys);
      const { loss, gBias } = fmStep(rows, labels, a.k, bias, grads);
      if (a.computeMs > 0) await new Promise((r) => setTimeout(r, a.computeMs));
      await ps.push('fm', keys, grads);
      bias -= 0.05 * gBias;
      ps.stall.endStep();
      step++;
      executed++;
      lossSum += loss;
      lossN++;
      examplesSincePrint += a.batch;
      const id = periodic && (await periodic.maybePersist(step, () => ({ dense: { bias: Float32Array.of(bias) }, meta: { dataStep: step } })));
      if (id && !a.quiet && step % (a.persistEvery * 2 || 200) === 0) say(`  checkpoint ${id} at step ${step}`);
      if (step % 100 === 0 || step === a.steps) {
        const now = performance.now();
        lastLoss = lossSum / lossN;
        say(
          `step ${String(step).padStart(5)}  train log loss ${lastLoss.toFixed(4)}  ${Math.round((examplesSincePrint * 1000) / (now - lastPrint))} ex/s  stalled on servers ${(100 * ps.stall.stalledShare).toFixed(0)}%`,
        );
        lossSum = lossN = 0;
        lastPrint = now;
        examplesSincePrint = 0;
      }
    } catch (e) {
      if (!(e instanceof ServerRestartedError)) throw e;
      ps.stall.endStep();
      say(`step ${step}: ${e.message.split(';')[0]}`);
      const r = await ps.restore();
      restores++;
      bias = r.dense.get('bias')?.[0] ?? 0;
      say(`  restore(): every shard back at checkpoint ${r.id} (step ${r.step}); replaying from there`);
      step = r.step;
    }
  }
  const endLoss = await evaluate(bias);
  const st = await ps.status();
  const wall = (performance.now() - t0) / 1000;
  const summary = {
    servers: endpoints.length,
    steps: a.steps,
    stepsExecuted: executed,
    restores,
    persists: periodic?.persisted ?? 0,
    persistMs: Math.round(periodic?.persistMs ?? 0),
    heldOutLossBefore: Number(startLoss.toFixed(4)),
    heldOutLossAfter: Number(endLoss.toFixed(4)),
    trainLossLast: Number(lastLoss.toFixed(4)),
    wallSeconds: Number(wall.toFixed(1)),
    examplesPerSecond: Math.round((executed * a.batch) / wall),
    stalledShare: Number(ps.stall.stalledShare.toFixed(3)),
    rows: st.reduce((n, s) => n + (s.tables.find((t) => t.spec.name === 'fm')?.rows ?? 0), 0),
    committedCheckpoint: st[0].committed_id,
  };
  process.stdout.write(
    `\nsummary: ${summary.steps} steps (${summary.stepsExecuted} run, ${summary.restores} restore${summary.restores === 1 ? '' : 's'}), ${summary.persists} checkpoints (${summary.persistMs} ms in persist)\n` +
      `  held-out log loss ${summary.heldOutLossBefore} -> ${summary.heldOutLossAfter}; ${summary.rows} rows over ${summary.servers} servers\n` +
      `  ${summary.wallSeconds} s, ${summary.examplesPerSecond} examples/s, ${(100 * summary.stalledShare).toFixed(1)}% of step time stalled on the parameter servers` +
      (a.computeMs ? ` (compute emulated at ${a.computeMs} ms/step)` : '') +
      '\n',
  );
  if (a.json) fs.writeFileSync(a.json, JSON.stringify(summary, null, 2));
  ps.close();
  if (cluster) {
    await cluster.stop();
    say(`servers stopped cleanly; pools and logs are in ${a.dir}`);
  }
  if (!(endLoss < startLoss)) {
    process.stderr.write('train-ctr: the held-out loss did not fall\n');
    process.exit(1);
  }
}

let liveCluster: LocalCluster | null = null;

main().catch((e) => {
  liveCluster?.killAll(); // never leave servers behind
  process.stderr.write(`train-ctr: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
