// Splitting a batch over the shards: the unique keys each shard gets, and
// for every key of the batch its shard and its position in that shard's
// list. On the hot path of every pull and push, so it avoids per-key
// objects: keys are compared as two uint32 halves in an open-addressing
// table (a JS Map of 4,096 keys costs about 1 ms; this about 0.1 ms).
import { shardsOf } from './shard';

export interface Split {
  /** Unique keys per shard, packed uint64 LE. */
  keys: Buffer[];
  /** Shard of each key of the batch. */
  shard: Uint32Array;
  /** Position of each key of the batch in its shard's unique list. */
  pos: Uint32Array;
  /** True when no key repeats and there is one shard: the batch goes as it is. */
  identity: boolean;
}

export function splitBatch(kb: Buffer, shards: number): Split {
  const n = kb.length / 8;
  const shard = shardsOf(kb, shards);
  const pos = new Uint32Array(n);
  // The halves of each key: a view when the buffer is aligned (it is for a
  // BigUint64Array), else a copy. Little-endian hosts only, as the wire.
  const words = kb.byteOffset % 4 === 0 ? new Uint32Array(kb.buffer, kb.byteOffset, n * 2) : new Uint32Array(Uint8Array.prototype.slice.call(kb).buffer);
  // Table of first occurrences (index + 1), sized to a power of two >= 2n.
  let cap = 16;
  while (cap < 2 * n) cap *= 2;
  const mask = cap - 1;
  const table = new Int32Array(cap);
  const counts = new Uint32Array(shards);
  const first = new Int32Array(n); // i if first occurrence, else -1
  let dups = 0;
  for (let i = 0; i < n; i++) {
    const l = words[2 * i],
      u = words[2 * i + 1];
    let h = (Math.imul(l, 0x9e3779b1) ^ Math.imul(u + 0x7f4a7c15, 0x85ebca6b)) & mask;
    for (;;) {
      const t = table[h];
      if (t === 0) {
        table[h] = i + 1;
        pos[i] = counts[shard[i]]++;
        first[i] = i;
        break;
      }
      const j = t - 1;
      if (words[2 * j] === l && words[2 * j + 1] === u) {
        pos[i] = pos[j];
        first[i] = -1;
        dups++;
        break;
      }
      h = (h + 1) & mask;
    }
  }
  if (dups === 0 && shards === 1) return { keys: [kb], shard, pos, identity: true };
  // Each shard's keys in an array of its own, written two words a key (a
  // Buffer.copy call per key costs ~0.1 us); the Buffers are views of them.
  const out = Array.from(counts, (c) => new Uint32Array(2 * c));
  for (let i = 0; i < n; i++) {
    if (first[i] < 0) continue;
    const w = out[shard[i]];
    w[2 * pos[i]] = words[2 * i];
    w[2 * pos[i] + 1] = words[2 * i + 1];
  }
  const keys = out.map((w) => Buffer.from(w.buffer, w.byteOffset, w.byteLength));
  return { keys, shard, pos, identity: false };
}
