// Which shard owns what. Every worker and every server must agree, so this is
// the one definition:
//
//   shard of key k        = splitmix64(k) mod N
//   shard of dense tensor = fnv1a64(utf8(name)) mod N
//
// splitmix64 is the finalizer of Steele et al.'s SplittableRandom
// (z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb;
// z ^= z >> 31), a bijection on 64-bit integers whose every output bit
// depends on every input bit: sequential ids (0, 1, 2, ...) and ids that are
// already hashes both spread evenly (test/cluster.test.ts measures both).
// N is fixed for the life of a cluster: the shard identity stored in each
// pool (cluster id, index, count) makes a wrong or reordered endpoint list
// an error at connect instead of silent corruption.

const M64 = (1n << 64n) - 1n;

export function splitmix64(k: bigint): bigint {
  let z = k & M64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

export function shardOfKey(k: bigint, n: number): number {
  return n === 1 ? 0 : Number(splitmix64(k) % BigInt(n));
}

export function fnv1a64(s: string): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(s, 'utf8')) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & M64;
  }
  return h;
}

export function shardOfDense(name: string, n: number): number {
  return Number(fnv1a64(name) % BigInt(n));
}

// High 32 bits of the 64-bit product of two uint32s, exact in doubles.
function mulhi(a: number, b: number): number {
  const a0 = a & 0xffff,
    a1 = a >>> 16,
    b0 = b & 0xffff,
    b1 = b >>> 16;
  const p01 = a0 * b1,
    p10 = a1 * b0;
  const mid = ((a0 * b0) >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  return (a1 * b1 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16)) >>> 0;
}

/**
 * Shard of the key whose little-endian uint32 halves are lo and hi:
 * splitmix64 on 32-bit halves (BigInt costs about 0.5 us a key; this about
 * 20 ns). Equal to shardOfKey for every key (test/cluster.test.ts checks it).
 */
export function shardOfHalves(lo: number, hi: number, n: number): number {
  if (n === 1) return 0;
  let l: number, h: number;
  // z ^= z >> 30; z *= 0xbf58476d1ce4e5b9
  l = (lo ^ ((lo >>> 30) | (hi << 2))) >>> 0;
  h = (hi ^ (hi >>> 30)) >>> 0;
  hi = (mulhi(l, 0x1ce4e5b9) + Math.imul(h, 0x1ce4e5b9) + Math.imul(l, 0xbf58476d)) >>> 0;
  lo = Math.imul(l, 0x1ce4e5b9) >>> 0;
  // z ^= z >> 27; z *= 0x94d049bb133111eb
  l = (lo ^ ((lo >>> 27) | (hi << 5))) >>> 0;
  h = (hi ^ (hi >>> 27)) >>> 0;
  hi = (mulhi(l, 0x133111eb) + Math.imul(h, 0x133111eb) + Math.imul(l, 0x94d049bb)) >>> 0;
  lo = Math.imul(l, 0x133111eb) >>> 0;
  // z ^= z >> 31
  l = (lo ^ ((lo >>> 31) | (hi << 1))) >>> 0;
  h = (hi ^ (hi >>> 31)) >>> 0;
  // A power of two divides 2^32: the low word decides, with no float modulo.
  if ((n & (n - 1)) === 0) return l & (n - 1);
  return ((h % n) * 4294967296 + l) % n;
}

/** Shard of each key of a packed little-endian uint64 Buffer. */
export function shardsOf(keys: Buffer, n: number): Uint32Array {
  const count = keys.length / 8;
  const out = new Uint32Array(count);
  if (n === 1) return out;
  if (n >= 1 << 21) throw new RangeError('at most 2^21 shards');
  for (let i = 0; i < count; i++) out[i] = shardOfHalves(keys.readUInt32LE(i * 8), keys.readUInt32LE(i * 8 + 4), n);
  return out;
}
