// Instructions per engine push or pull, for comparing two builds with
// callgrind (instruction counts are repeatable whatever else the machine
// runs, unlike seconds). A script, not a test:
//
//   PMEM_IS_PMEM_FORCE=1 PMEMPS_ENGINE_HELPERS=0 valgrind --tool=callgrind --callgrind-out-file=cg.out \
//     node dist/bench/push-instructions.js [push|pull] [calls]
//   callgrind_annotate --inclusive=yes cg.out | grep -E 'Engine::(push|pull)\('
//
// A table of 20,480 rows (dim 64, Adagrad, normal init) in a pool on
// /dev/shm whose cache holds it is first populated by 5 pushes of 4,096
// consecutive keys; then `calls` (default 30) pushes or pulls of 4,096
// uniform keys out of those rows: the steady state of a cached table, every
// row present (a row never pushed would cost an initializer per pull).
// Per pull: Engine::pull's inclusive count / calls. Per push: the 5
// populating pushes count too, so take the difference of Engine::push
// between a run with `calls` and one with 0, divided by `calls`.
// PMEMPS_ENGINE_HELPERS=0 keeps each call on its own thread, so that its
// inclusive count holds all its work (a build before the helpers ignores it).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Engine } from '../native/engine';

const ROWS = 5 * 4096;

async function main(): Promise<void> {
  const op = process.argv[2] ?? 'push';
  const calls = Number(process.argv[3] ?? 30);
  if ((op !== 'push' && op !== 'pull') || !Number.isInteger(calls) || calls < 0) throw new Error('usage: push-instructions.js [push|pull] [calls]');
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'pmemps-pushins-'));
  try {
    const e = Engine.open({ dir, poolMb: 256, cacheMb: 128 });
    e.createTable({ name: 't', dim: 64, optimizer: { type: 'adagrad', lr: 0.05 }, initializer: { type: 'normal', mean: 0, std: 0.01 }, seed: 1 });
    let s = 12345;
    const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
    const batch = () => {
      const b = Buffer.alloc(4096 * 8);
      for (let i = 0; i < 4096; i++) b.writeBigUInt64LE(BigInt(Math.floor(rnd() * ROWS)), i * 8);
      return b;
    };
    const g = Buffer.from(Float32Array.from({ length: 4096 * 64 }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5).buffer);
    for (let i = 0; i < ROWS / 4096; i++) {
      const b = Buffer.alloc(4096 * 8);
      for (let j = 0; j < 4096; j++) b.writeBigUInt64LE(BigInt(i * 4096 + j), j * 8);
      await e.push('t', b, g);
    }
    const t = process.hrtime.bigint();
    for (let i = 0; i < calls; i++) await (op === 'push' ? e.push('t', batch(), g) : e.pull('t', batch()));
    console.log(`${calls} x ${op} of 4096 keys: ${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(0)} ms`);
    await e.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main();
