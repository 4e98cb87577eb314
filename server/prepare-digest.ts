// What tells a PREPARE's retry from another PREPARE of the same id: a hash
// of its metadata and dense tensors (server/shard.ts compares it).
//
// Dense tensors run to hundreds of MiB, and SHA-256 does about 1.4 GB/s
// here, so hashing them whole held the event loop (every call of the
// shard) for 45 ms per 64 MiB, 130 ms on a loaded machine. The hash is
// made a piece at a time with a turn of the event loop between pieces;
// the digest is the same as hashing everything at once. WebCrypto's
// subtle.digest is no way out: it held the loop 57 ms for 64 MiB itself.
import { createHash } from 'node:crypto';

/** Bytes hashed between two turns of the event loop (~3 ms of SHA-256). */
export const DIGEST_PIECE = 4 << 20;

export async function prepareDigest(meta: Buffer, dense: Map<string, Float32Array>): Promise<string> {
  const h = createHash('sha256').update(meta);
  let since = meta.length;
  for (const [name, v] of dense) {
    const n = Buffer.from(name);
    h.update(Buffer.from(Uint32Array.of(n.length, v.length).buffer)).update(n);
    const bytes = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    for (let o = 0; o < bytes.length;) {
      if (since >= DIGEST_PIECE) {
        await new Promise<void>((r) => setImmediate(r));
        since = 0;
      }
      const end = Math.min(bytes.length, o + DIGEST_PIECE - since);
      h.update(bytes.subarray(o, end));
      since += end - o;
      o = end;
    }
  }
  return h.digest('hex');
}
