// One batch's latency in the engine, A/B: the builds named on the command
// line run side by side, each in its own child process with its own pool on
// /dev/shm (PMEM_IS_PMEM_FORCE=1), and are measured in turns (A B, then B A,
// ...) so that the load of a shared machine falls on all of them alike.
// Reports the median rows/s and process CPU time per row (every thread) of
// each build, and each build's ratio to the first.
// A script, not a test:
//
//   node dist/bench/one-batch.js [--build label=DIR ...] [--rows N] [--reps N] [--ms N]
//
// A build is a directory holding this repository's dist/ and build/ (a copy
// of a checkout's, e.g. of main); default: this checkout only. Each child
// creates the 1M-row table of bench/engine.ts phase 1 (dim 64, Adagrad),
// pushes every row once and pulls every row once (so every row is cached),
// then measures pull and push of 4,096 uniform keys, 1 and 8 in flight.

import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { parseArgs } from 'node:util';
import { BATCH, DIM, Rng, TABLE, drive, fmtRate, gradBuffers, machineInfo, median, rangeBatch, uniformBatch, parseBuilds } from './lib';

interface ChildCfg {
  root: string;
  dir: string;
  rows: number;
}

async function child(cfg: ChildCfg): Promise<void> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { Engine }: typeof import('../native/engine') = require(path.join(cfg.root, 'dist', 'native', 'engine'));
  const e = Engine.open({ dir: cfg.dir, poolMb: Math.ceil((cfg.rows * 1700) / 2 ** 20) + 256, cacheMb: Math.ceil((cfg.rows * 700) / 2 ** 20) + 64 });
  e.createTable(TABLE);
  const grads = gradBuffers(7);
  await drive(
    4,
    (i) =>
      e.push(
        TABLE.name,
        rangeBatch(i * BATCH, Math.min(BATCH, cfg.rows - i * BATCH)),
        grads[i % grads.length].subarray(0, Math.min(BATCH, cfg.rows - i * BATCH) * DIM * 4),
      ),
    (n) => n * BATCH >= cfg.rows,
  );
  await drive(
    4,
    (i) => e.pull(TABLE.name, rangeBatch(i * BATCH, Math.min(BATCH, cfg.rows - i * BATCH))),
    (n) => n * BATCH >= cfg.rows,
  );
  const rng = new Rng(1001);
  const keys = Array.from({ length: 64 }, () => uniformBatch(rng, cfg.rows));
  process.stdout.write('@@READY\n');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [op, inflightS, msS] = line.trim().split(' ');
    if (op === 'quit') break;
    const inflight = Number(inflightS);
    const call = (i: number): Promise<unknown> =>
      op === 'pull' ? e.pull(TABLE.name, keys[i % keys.length]) : e.push(TABLE.name, keys[i % keys.length], grads[i % grads.length]);
    await drive(inflight, call, (n) => n >= inflight * 2);
    const c0 = process.cpuUsage();
    const r = await drive(inflight, call, (_n, el) => el >= Number(msS));
    const c = process.cpuUsage(c0);
    // CPU time of the whole process (every thread, JavaScript included) per row.
    const cpuNsPerRow = ((c.user + c.system) * 1000) / (r.calls * BATCH);
    process.stdout.write(`@@RATE ${JSON.stringify({ rate: (r.calls * BATCH) / r.secs, cpuNsPerRow })}\n`);
  }
  await e.close();
  fs.rmSync(cfg.dir, { recursive: true, force: true });
  process.exit(0);
}

class Peer {
  readonly proc: ChildProcess;
  private readonly lines: string[] = [];
  private wake: (() => void) | null = null;
  constructor(
    readonly label: string,
    cfg: ChildCfg,
  ) {
    this.proc = spawn(process.execPath, [__filename, '--child', JSON.stringify(cfg)], {
      env: { ...process.env, PMEM_IS_PMEM_FORCE: '1' },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    readline.createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      if (!l.startsWith('@@')) return void process.stderr.write(`[${label}] ${l}\n`);
      this.lines.push(l);
      this.wake?.();
    });
    this.proc.on('exit', (code) => {
      if (code !== 0) {
        process.stderr.write(`${label} exited with ${code}\n`);
        process.exit(1);
      }
    });
  }
  async next(): Promise<string> {
    while (this.lines.length === 0) await new Promise<void>((r) => (this.wake = r));
    return this.lines.shift()!;
  }
  async measure(op: string, inflight: number, ms: number): Promise<{ rate: number; cpuNsPerRow: number }> {
    this.proc.stdin!.write(`${op} ${inflight} ${ms}\n`);
    const l = await this.next();
    return JSON.parse(l.slice('@@RATE '.length)) as { rate: number; cpuNsPerRow: number };
  }
}

async function main(): Promise<void> {
  const { values: a } = parseArgs({
    options: {
      build: { type: 'string', multiple: true },
      rows: { type: 'string', default: '1000000' },
      reps: { type: 'string', default: '7' },
      ms: { type: 'string', default: '1000' },
      child: { type: 'string' },
    },
  });
  if (a.child) return child(JSON.parse(a.child) as ChildCfg);
  const builds = parseBuilds(a.build, path.resolve(__dirname, '..', '..'));
  const rows = Number(a.rows);
  const reps = Number(a.reps);
  const ms = Number(a.ms);
  const base = fs.mkdtempSync('/dev/shm/pmemps-onebatch-');
  process.on('exit', () => fs.rmSync(base, { recursive: true, force: true }));
  // Populated one after another: the populations would otherwise share the cores.
  const peers: Peer[] = [];
  for (const [i, b] of builds.entries()) {
    const p = new Peer(b.label, { root: b.root, dir: path.join(base, String(i)), rows });
    await p.next();
    peers.push(p);
  }
  const modes: Array<[string, number]> = [
    ['pull', 1],
    ['push', 1],
    ['pull', 8],
    ['push', 8],
  ];
  const samples = new Map<string, number[]>();
  const cpu = new Map<string, number[]>();
  for (let rep = 0; rep < reps; rep++) {
    for (const [op, inflight] of modes) {
      const order = rep % 2 === 0 ? peers : [...peers].reverse();
      for (const p of order) {
        const key = `${p.label} ${op}@${inflight}`;
        const r = await p.measure(op, inflight, ms);
        samples.set(key, [...(samples.get(key) ?? []), r.rate]);
        cpu.set(key, [...(cpu.get(key) ?? []), r.cpuNsPerRow]);
      }
    }
    process.stderr.write(`repetition ${rep + 1}/${reps}\n`);
  }
  for (const p of peers) p.proc.stdin!.write('quit\n');
  const m = machineInfo();
  console.log(`${m.cpu}, ${m.cores} cores, node ${m.node}, ${m.date}, load ${fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
  console.log(`${rows} rows, dim ${DIM}, Adagrad, ${BATCH} uniform keys per call, median of ${reps} x ${ms} ms, builds measured in turns\n`);
  console.log(
    `| call | ${peers.map((p) => p.label).join(' | ')} | ${peers
      .slice(1)
      .map((p) => `${p.label} / ${peers[0].label}`)
      .join(' | ')} |`,
  );
  console.log(
    `|---|${peers.map(() => '---').join('|')}|${peers
      .slice(1)
      .map(() => '---')
      .join('|')}|`,
  );
  const row = (label: string, key: string, m: Map<string, number[]>, fmt: (x: number) => string, lo: (x: number) => string): void => {
    const meds = peers.map((p) => median(m.get(`${p.label} ${key}`)!));
    const cells = peers.map((p) => {
      const s = m.get(`${p.label} ${key}`)!;
      return `${fmt(median(s))} (${lo(Math.min(...s))}..${lo(Math.max(...s))})`;
    });
    console.log(
      `| ${label} | ${cells.join(' | ')} | ${meds
        .slice(1)
        .map((x) => `**${(x / meds[0]).toFixed(2)}x**`)
        .join(' | ')} |`,
    );
  };
  for (const [op, inflight] of modes) {
    row(`${op}, ${inflight} in flight: rows/s`, `${op}@${inflight}`, samples, fmtRate, (x) => `${(x / 1e6).toFixed(2)}M`);
    row(
      `${op}, ${inflight} in flight: process CPU ns/row`,
      `${op}@${inflight}`,
      cpu,
      (x) => x.toFixed(0),
      (x) => x.toFixed(0),
    );
  }
}

void main().catch((e) => {
  console.error(e);
  process.exit(1);
});
