// Shared test helpers: temporary pool directories that are always removed,
// a seeded generator, and packing helpers.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** A fresh directory under the OS temp dir; remove it with the returned cleanup. */
export function tempDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `pmemps-${tag}-`));
}

export function removeDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * Registers an after() hook removing every directory made by the returned
 * function: pools of a test file are removed whatever the outcome.
 */
export function poolDirs(after: (fn: () => void) => void): (tag: string) => string {
  const dirs: string[] = [];
  // Say how the pools of this file are backed, as the output of a test run should.
  console.log(
    `pools: small libpmemobj pools under ${process.env.PMEM_IS_PMEM_FORCE === '1' ? 'the temp dir, PMEM emulated (PMEM_IS_PMEM_FORCE=1)' : 'the temp dir, msync path'}`,
  );
  after(() => dirs.forEach(removeDir));
  return (tag: string) => {
    const d = tempDir(tag);
    dirs.push(d);
    return d;
  };
}

/** mulberry32: small, fast, seeded; deterministic across runs. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function f32(arr: ArrayLike<number>): Buffer {
  return Buffer.from(Float32Array.from(arr).buffer);
}

export function randomGrads(rand: () => number, n: number): Buffer {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rand() * 2 - 1;
  return Buffer.from(a.buffer);
}

/**
 * Writes `bytes` at `offset` into every copy of the pmemps root in a closed
 * pool file (the root starts with the magic "PMSPEM01"; old transaction logs
 * may hold snapshots of it). Returns where the first copy starts.
 */
export function patchRoots(poolFile: string, offset: number, bytes: (old: Buffer) => Buffer): number {
  const buf = fs.readFileSync(poolFile);
  const magic = Buffer.from('PMSPEM01', 'latin1');
  const first = buf.indexOf(magic);
  if (first < 0) throw new Error(`no pmemps root in ${poolFile}`);
  const fd = fs.openSync(poolFile, 'r+');
  try {
    for (let at = first; at >= 0; at = buf.indexOf(magic, at + 1)) {
      const b = bytes(buf.subarray(at + offset, at + offset + 8));
      fs.writeSync(fd, b, 0, b.length, at + offset);
    }
  } finally {
    fs.closeSync(fd);
  }
  return first;
}
