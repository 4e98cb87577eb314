// Latency of a well-behaved client while slow readers abuse the server
// (issue 7, defect 9): the same client's pull latency without and with the
// abuse, in one run against one pserver process.
//
//   npm run bench:abuse            (= npm run build && node dist/bench/abuse-slow-readers.js)
//   ./run.sh bench-abuse [--pairs 3] [--seconds 8] [--rate 50] [--round-seconds 0] [--stall-seconds 20] [--keys 64]
//
// The abuse is the reported one, repeated: 2 raw HTTP/2 connections that
// advertise a zero stream window and never read send 8 pulls of 1,024 keys
// on a dim-4096 table each (16 MiB replies); once the server has closed them
// (after its --stall-seconds), or after --round-seconds, the abusers
// disconnect and the next round starts. The well-behaved client is the SDK
// pulling `--keys` keys of the same table at a fixed rate (open loop: a
// pull's latency counts from when it was due, so a stall shows in every
// pull it delays, not only in the one that waited).
// Phases alternate, unloaded (U) and abused (A), in pairs whose order
// alternates too (U A, A U, ...), because the machine is shared and its load
// drifts; the ratio is of the medians over the phases. The server runs with
// its defaults except --stall-seconds; its RSS is read from /proc.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { LocalCluster } from '../examples/local-cluster';
import { percentile, rssMiB, slowReader, type StreamEnd } from '../test/abuse.lib';
import { PsClient } from '../worker';

const REPO = path.join(__dirname, '..', '..');
const args = yargs(hideBin(process.argv))
  .scriptName('abuse-slow-readers')
  .option('pairs', { type: 'number', default: 3, describe: 'pairs of phases (unloaded, abused)' })
  .option('seconds', { type: 'number', default: 8, describe: 'length of a phase, s' })
  .option('round-seconds', {
    type: 'number',
    default: 0,
    describe: 'the abusers disconnect and start over after this long if the server has not closed them (0: they wait for the server)',
  })
  .option('stall-seconds', { type: 'number', default: 20, describe: "the server's --stall-seconds (its default is 20)" })
  .option('keys', { type: 'number', default: 64, describe: 'keys per pull of the well-behaved client (x dim 4096 x 4 B)' })
  .option('rate', { type: 'number', default: 50, describe: 'pulls per second of the well-behaved client' })
  .option('readers', { type: 'number', default: 2, describe: 'slow-reader connections per round' })
  .option('pulls', { type: 'number', default: 8, describe: 'pulls per slow-reader connection' })
  .option('out', { type: 'string', default: path.join(REPO, 'bench', 'results', 'abuse-slow-readers-latest.md') })
  .strict()
  .help()
  .parseSync();

const DIM = 4096;
const TABLE = { name: 'wide', dim: DIM, seed: 3, optimizer: { type: 'sgd' as const, lr: 0.1 }, initializer: { type: 'uniform' as const, min: -1, max: 1 } };

function keyBuf(n: number, from = 0): Buffer {
  return Buffer.from(BigUint64Array.from({ length: n }, (_, i) => BigInt(from + i)).buffer);
}

function loadavg(): string {
  return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
}

function machine(): string {
  const memKb = Number(/^MemTotal:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? NaN);
  return `${os.cpus()[0]?.model ?? '?'}, ${os.cpus().length} CPUs, ${(memKb / 2 ** 20).toFixed(1)} GiB RAM, Linux ${os.release()}; node ${process.version}`;
}

function commit(): string {
  try {
    const h = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: REPO, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], {
      cwd: REPO,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    return dirty ? `${h} + uncommitted changes` : h;
  } catch {
    return '?';
  }
}

interface Phase {
  kind: 'U' | 'A';
  ms: number[];
  peakRss: number;
  load1: string;
  rounds: number;
  ends: StreamEnd[];
}

/** The well-behaved client's pulls for `seconds`, one due every 1/rate s, and the server's peak RSS meanwhile. */
async function clientPhase(ps: PsClient, pid: number, seconds: number, keys: number): Promise<{ ms: number[]; peakRss: number }> {
  const ms: number[] = [];
  let peakRss = rssMiB(pid);
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, rssMiB(pid))), 10);
  const start = performance.now();
  const n = Math.round(seconds * args.rate);
  const calls: Promise<void>[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const due = start + (i * 1000) / args.rate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      calls.push(ps.pull(TABLE.name, keyBuf(keys, (i * 97) % 100_000)).then(() => void ms.push(performance.now() - due)));
    }
    await Promise.all(calls);
  } finally {
    clearInterval(sampler);
  }
  ms.sort((a, b) => a - b);
  return { ms, peakRss };
}

/** Rounds of slow readers until `stopped`: a round ends when the server has closed its connections. */
async function abuse(endpoint: string, stopped: Promise<void>, ends: StreamEnd[]): Promise<number> {
  const keys = keyBuf(1024);
  let rounds = 0;
  let stop = false;
  void stopped.then(() => (stop = true));
  while (!stop) {
    const rs = Array.from({ length: args.readers }, () => slowReader(endpoint, TABLE.name, keys, args.pulls));
    rounds++;
    let timer: NodeJS.Timeout | undefined;
    const roundOver = args['round-seconds'] > 0 ? new Promise<void>((r) => (timer = setTimeout(r, args['round-seconds'] * 1000))) : new Promise<void>(() => {});
    await Promise.race([Promise.all(rs.map((r) => r.raw.closed)), stopped, roundOver]);
    clearTimeout(timer);
    for (const r of rs) r.raw.destroy();
    for (const r of rs) ends.push(...(await r.ends));
  }
  return rounds;
}

const median = (xs: number[]): number =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );
const f2 = (x: number): string => x.toFixed(2);

async function main(): Promise<void> {
  const started = new Date();
  const loadStart = loadavg();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-bench-abuse-'));
  const cluster = await LocalCluster.start({ dir, shards: 1, cacheMb: 256, poolSize: '1G', env: { PMEMPS_STALL_SECONDS: String(args['stall-seconds']) } });
  const pid = cluster.procs[0]!.pid!;
  const ps = await PsClient.connect({ endpoints: cluster.endpoints });
  const phases: Phase[] = [];
  let idleRss = 0;
  try {
    await ps.createTable(TABLE);
    // Warm-up: rows, JIT, one full-size reply to a client that reads it.
    await ps.pull(TABLE.name, keyBuf(1024));
    await clientPhase(ps, pid, 1, args.keys);
    idleRss = rssMiB(pid);
    for (let pair = 0; pair < args.pairs; pair++) {
      for (const kind of pair % 2 === 0 ? (['U', 'A'] as const) : (['A', 'U'] as const)) {
        const load1 = loadavg().split(' ')[0];
        if (kind === 'U') {
          phases.push({ kind, ...(await clientPhase(ps, pid, args.seconds, args.keys)), load1, rounds: 0, ends: [] });
          continue;
        }
        let stop!: () => void;
        const stopped = new Promise<void>((r) => (stop = r));
        const ends: StreamEnd[] = [];
        const abusing = abuse(cluster.endpoints[0], stopped, ends);
        const m = await clientPhase(ps, pid, args.seconds, args.keys);
        stop();
        phases.push({ kind, ...m, load1, rounds: await abusing, ends });
      }
    }
  } finally {
    ps.close();
    await cluster.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }

  const of = (k: 'U' | 'A') => phases.filter((p) => p.kind === k);
  const p99 = (p: Phase) => percentile(p.ms, 99);
  const u99 = median(of('U').map(p99));
  const a99 = median(of('A').map(p99));
  const L: string[] = [];
  L.push('# pmemps: a well-behaved client under slow-reader abuse (issue 7, defect 9)', '');
  L.push(`- machine: ${machine()}`);
  L.push(
    `- date: ${started.toISOString()}; commit ${commit()}; took ${((Date.now() - started.getTime()) / 1000).toFixed(0)} s; load average (1, 5, 15 min) ${loadStart} at the start, ${loadavg()} at the end`,
  );
  L.push(
    `- server: one pserver, defaults (reply budget 16 MiB per connection, 256 MiB in all) except --stall-seconds ${args['stall-seconds']}, cache 256 MB, pool on emulated PMEM in the temp dir`,
  );
  L.push(
    `- well-behaved client: the SDK pulling ${args.keys} keys x dim ${DIM} (${((args.keys * DIM * 4) / 2 ** 20).toFixed(2)} MiB replies), ${args.rate} pulls/s at fixed times (latency from the time a pull was due), ${args.seconds} s per phase`,
  );
  L.push(
    `- abuse (phases A): rounds of ${args.readers} raw HTTP/2 connections with initial window 0, ${args.pulls} pulls of 1,024 keys (16 MiB replies) each, never read; a round ends when the server has closed its connections${args['round-seconds'] > 0 ? ` or after ${args['round-seconds']} s (the abusers disconnect)` : ''}`,
  );
  L.push(`- phases: ${args.pairs} pairs, alternating order (U A, A U, ...); server RSS idle (after the warm-up) ${idleRss.toFixed(0)} MiB`, '');
  L.push(
    '| phase | kind | load1 | pulls | p50 ms | p99 ms | max ms | server RSS peak MiB | abuse rounds | abusive pulls: refused / cut with their connection |',
  );
  L.push('|---|---|---|---|---|---|---|---|---|---|');
  phases.forEach((p, i) => {
    const refused = p.ends.filter((e) => e.grpcStatus === 8).length;
    const cut = p.ends.filter((e) => e.grpcStatus === null).length;
    L.push(
      `| ${i + 1} | ${p.kind} | ${p.load1} | ${p.ms.length} | ${f2(percentile(p.ms, 50))} | ${f2(p99(p))} | ${p.ms[p.ms.length - 1].toFixed(1)} | ${p.peakRss.toFixed(0)} | ${p.kind === 'A' ? p.rounds : '-'} | ${p.kind === 'A' ? `${refused} / ${cut} of ${p.ends.length}` : '-'} |`,
    );
  });
  L.push('');
  L.push(`Median p99: unloaded ${f2(u99)} ms, abused ${f2(a99)} ms: **abused / unloaded = ${(a99 / u99).toFixed(2)}x** (target: at most 2x).`);
  L.push(`Server RSS: idle ${idleRss.toFixed(0)} MiB, highest under abuse ${Math.max(...of('A').map((p) => p.peakRss)).toFixed(0)} MiB.`);
  const text = L.join('\n') + '\n';
  fs.mkdirSync(path.dirname(args.out), { recursive: true });
  fs.writeFileSync(args.out, text);
  process.stdout.write(text);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
