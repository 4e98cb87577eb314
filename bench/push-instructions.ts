// Instructions per engine push, for comparing two builds with callgrind
// (instruction counts are repeatable whatever else the machine runs, unlike
// seconds). A script, not a test:
//
//   PMEM_IS_PMEM_FORCE=1 valgrind --tool=callgrind --callgrind-out-file=cg.out \
//     node dist/bench/push-instructions.js
//   callgrind_annotate --inclusive=yes cg.out | grep 'Engine::push'
//
// 30 pushes of 4,096 uniform keys out of 20,000 (dim 64, Adagrad) into a
// pool on /dev/shm whose cache holds the table; the first 10 create the rows.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Engine } from '../native/engine';

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'pmemps-pushins-'));
  try {
    const e = Engine.open({ dir, poolMb: 256, cacheMb: 128 });
    e.createTable({ name: 't', dim: 64, optimizer: { type: 'adagrad', lr: 0.05 }, initializer: { type: 'normal', mean: 0, std: 0.01 }, seed: 1 });
    let s = 12345;
    const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
    const batch = () => {
      const b = Buffer.alloc(4096 * 8);
      for (let i = 0; i < 4096; i++) b.writeBigUInt64LE(BigInt(Math.floor(rnd() * 20_000)), i * 8);
      return b;
    };
    const g = Buffer.from(Float32Array.from({ length: 4096 * 64 }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5).buffer);
    const t = process.hrtime.bigint();
    for (let i = 0; i < 30; i++) await e.push('t', batch(), g);
    console.log(`30 pushes of 4096 keys: ${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(0)} ms`);
    await e.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

void main();
