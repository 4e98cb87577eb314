// The shard's exactly-once record of pushes: per worker, the highest push
// sequence number applied and which of the `WINDOW` numbers below it were
// applied. A retried push (same worker_id and seq) is recognised and answered
// without applying it again.
//
// Why a window and not only "highest seq": the SDK sends a worker's pushes to
// a shard concurrently (several batches in flight), so they may arrive out of
// order; a seq below the window is refused, never guessed. The SDK keeps
// at most 256 pushes in flight per shard (worker/client.ts), so a live retry
// always falls inside it.
//
// Durability: the record is part of every checkpoint (taken at the same
// boundary as the rows) and of the clean-close record, so after a clean
// restart or a restore it says exactly which pushes the rows contain.

export const WINDOW = 1024;
/** Workers remembered; the least recently seen is forgotten beyond this. */
export const MAX_WORKERS = 65_536;

interface WorkerRecord {
  high: number; // highest applied seq (0: none)
  bits: Uint8Array; // bit i: seq high - i applied, i < WINDOW
}

export type SeqState = 'new' | 'applied' | 'in-flight' | 'too-old';

export class ExactlyOnce {
  private readonly workers = new Map<string, WorkerRecord>();
  private readonly inFlight = new Map<string, Promise<unknown>>();
  private bytes = 4; // encode().length, kept as workers come and go

  /** Bytes one worker's entry takes in encode(). */
  static entryBytes(worker: string): number {
    return 2 + Buffer.byteLength(worker, 'utf8') + 8 + WINDOW / 8;
  }

  /** An upper bound of encode().length (exact today); the clean-close record reserves room for it. */
  encodedBound(): number {
    return this.bytes;
  }

  knows(worker: string): boolean {
    return this.workers.has(worker);
  }

  state(worker: string, seq: number): SeqState {
    if (this.inFlight.has(flightKey(worker, seq))) return 'in-flight';
    const r = this.workers.get(worker);
    if (!r || seq > r.high) return 'new';
    const back = r.high - seq;
    if (back >= WINDOW) return 'too-old';
    return bit(r.bits, back) ? 'applied' : 'new';
  }

  /** The promise of the push now running with this (worker, seq), if any. */
  running(worker: string, seq: number): Promise<unknown> | undefined {
    return this.inFlight.get(flightKey(worker, seq));
  }

  /** Runs `apply` as the one application of (worker, seq); records it when it succeeds. */
  async applyOnce<T>(worker: string, seq: number, apply: () => Promise<T>): Promise<T> {
    const key = flightKey(worker, seq);
    const p = apply();
    this.inFlight.set(key, p);
    try {
      const v = await p;
      this.record(worker, seq);
      return v;
    } finally {
      this.inFlight.delete(key);
    }
  }

  record(worker: string, seq: number): void {
    let r = this.workers.get(worker);
    if (r) this.workers.delete(worker); // re-insert: Map order is the LRU order
    else {
      r = { high: 0, bits: new Uint8Array(WINDOW / 8) };
      this.bytes += ExactlyOnce.entryBytes(worker);
    }
    if (seq > r.high) {
      shiftWindow(r.bits, seq - r.high);
      r.high = seq;
      setBit(r.bits, 0);
    } else {
      setBit(r.bits, r.high - seq);
    }
    this.workers.set(worker, r);
    if (this.workers.size > MAX_WORKERS) {
      const oldest = this.workers.keys().next().value as string;
      this.workers.delete(oldest);
      this.bytes -= ExactlyOnce.entryBytes(oldest);
    }
  }

  get size(): number {
    return this.workers.size;
  }

  /** u32 count, then per worker: u16 id length, id (utf8), f64 high, WINDOW/8 bytes. */
  encode(): Buffer {
    const parts: Buffer[] = [];
    const head = Buffer.alloc(4);
    head.writeUInt32LE(this.workers.size);
    parts.push(head);
    for (const [id, r] of this.workers) {
      const nb = Buffer.from(id, 'utf8');
      const h = Buffer.alloc(2 + nb.length + 8);
      h.writeUInt16LE(nb.length, 0);
      nb.copy(h, 2);
      h.writeDoubleLE(r.high, 2 + nb.length);
      parts.push(h, Buffer.from(r.bits));
    }
    return Buffer.concat(parts);
  }

  static decode(buf: Buffer): ExactlyOnce {
    const out = new ExactlyOnce();
    if (buf.length === 0) return out;
    let off = 0;
    const n = buf.readUInt32LE(off);
    off += 4;
    for (let i = 0; i < n; i++) {
      const nl = buf.readUInt16LE(off);
      off += 2;
      const id = buf.toString('utf8', off, off + nl);
      off += nl;
      const high = buf.readDoubleLE(off);
      off += 8;
      const bits = Uint8Array.from(buf.subarray(off, off + WINDOW / 8));
      off += WINDOW / 8;
      out.workers.set(id, { high, bits });
      out.bytes += ExactlyOnce.entryBytes(id);
    }
    return out;
  }
}

function flightKey(worker: string, seq: number): string {
  return `${worker}\u0000${seq}`;
}

function bit(b: Uint8Array, i: number): boolean {
  return (b[i >> 3] & (1 << (i & 7))) !== 0;
}

function setBit(b: Uint8Array, i: number): void {
  b[i >> 3] |= 1 << (i & 7);
}

// Moves every bit i to i + by (older), dropping those that leave the window.
function shiftWindow(b: Uint8Array, by: number): void {
  if (by >= WINDOW) {
    b.fill(0);
    return;
  }
  for (let i = WINDOW - 1; i >= 0; i--) {
    const from = i - by;
    const v = from >= 0 && bit(b, from);
    if (v) setBit(b, i);
    else b[i >> 3] &= ~(1 << (i & 7));
  }
}
