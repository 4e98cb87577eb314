// The shard's exactly-once record of pushes: per worker, the highest push
// sequence number applied and which of the `WINDOW` numbers below it were
// applied. A retried push (same worker_id and seq) is recognised and answered
// without applying it again.
//
// Invariants (docs/protocol.md, "Exactly-once and its bounds"):
//  * Never a wrong "new": a push judged new was not applied before. A seq
//    the record can no longer judge is refused ('too-old'), never guessed.
//  * Memory is bounded: at most MAX_WORKERS records of at most
//    MAX_WORKER_ID_BYTES + RECORD_OVERHEAD bytes each. Beyond that the least
//    recently seen record is forgotten, and only together with the
//    watermark: `watermark` is raised to the forgotten record's highest seq
//    first, so every seq it covered is refused from then on for a worker
//    without a record, and each record remembers the watermark it was born
//    under (`floor`), below which its own unset bits prove nothing.
//  * Seqs are clock-based microseconds (the SDK starts a worker's seqs from
//    its clock), so the watermark trails the present: a worker that starts
//    later starts above it. A seq more than MAX_SEQ_AHEAD_US past the
//    shard's clock is refused, so nobody can raise the watermark far beyond
//    the present and lock new workers out.
//  * Why a window and not only "highest seq": the SDK sends a worker's
//    pushes to a shard concurrently (at most 256 in flight per shard), so
//    they may arrive out of order; a live retry always falls inside it.
//
// Durability: the record (watermark included) is part of every checkpoint,
// taken at the same boundary as the rows, and of the clean-close record.

export const WINDOW = 1024;
/** Workers remembered per shard; the least recently seen is forgotten beyond this. */
export const MAX_WORKERS = 16_384;
/** Longest worker_id, UTF-8 bytes (checked at the door by the service). */
export const MAX_WORKER_ID_BYTES = 128;
/** A seq may run at most this far ahead of the shard's clock (clock skew between hosts). */
export const MAX_SEQ_AHEAD_US = 3600e6;
/** Encoded bytes per record besides its id: u16 id length, f64 high, f64 floor, the window. */
const RECORD_OVERHEAD = 2 + 8 + 8 + WINDOW / 8;
const MAGIC = 0x32656f70; // 'poe2': this format (the first had none)
/** u32 magic, f64 watermark, u32 count. */
const HEADER_BYTES = 16;

interface WorkerRecord {
  high: number; // highest applied seq (0: none)
  floor: number; // the watermark when this record was made: its bits say nothing at or below it
  bits: Uint8Array; // bit i: seq high - i applied, i < WINDOW
}

export type SeqState = 'new' | 'applied' | 'in-flight' | 'too-old';

export class ExactlyOnce {
  private readonly workers = new Map<string, WorkerRecord>();
  private readonly inFlight = new Map<string, Promise<unknown>>();
  /** Workers with a push admitted and not settled (pin), whose records are not forgotten meanwhile. */
  private readonly pinned = new Map<string, number>();
  /** Every seq at or below it, of a worker with no record, may have been applied and forgotten. */
  private watermark = 0;
  private bytes = HEADER_BYTES; // encode().length, kept as workers come and go

  constructor(private readonly maxWorkers = MAX_WORKERS) {}

  /** Bytes one worker's entry takes in encode(). */
  static entryBytes(worker: string): number {
    return RECORD_OVERHEAD + Buffer.byteLength(worker, 'utf8');
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
    if (!r) return seq <= this.watermark ? 'too-old' : 'new';
    if (seq > r.high) return seq <= r.floor ? 'too-old' : 'new';
    const back = r.high - seq;
    if (back < WINDOW && bit(r.bits, back)) return 'applied';
    if (back >= WINDOW || seq <= r.floor) return 'too-old';
    return 'new';
  }

  /** The lowest seq this worker's next new push may carry (what a refused 'too-old' first attempt should jump to). */
  nextSeq(worker: string): number {
    const r = this.workers.get(worker);
    return Math.max(r ? r.high : 0, r ? r.floor : this.watermark) + 1;
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
    if (r)
      this.workers.delete(worker); // re-insert: Map order is the LRU order
    else {
      r = { high: 0, floor: this.watermark, bits: new Uint8Array(WINDOW / 8) };
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
    // The least recently seen go first, a pinned one never (there may then
    // be more than maxWorkers for as long as pushes are in flight).
    if (this.workers.size > this.maxWorkers)
      for (const [oldest, or] of this.workers) {
        if (this.workers.size <= this.maxWorkers) break;
        if (this.pinned.has(oldest)) continue;
        // The watermark rises before the record goes: from here on its seqs are refused, not re-applied.
        this.watermark = Math.max(this.watermark, or.high);
        this.workers.delete(oldest);
        this.bytes -= ExactlyOnce.entryBytes(oldest);
      }
  }

  /**
   * Keeps the worker's record, if it has one, until unpin(): the shard
   * admits a push of a known worker without reserving room in the
   * clean-close record for its entry, so that entry must not be forgotten
   * and made anew (larger than reserved) when the push settles.
   */
  pin(worker: string): void {
    this.pinned.set(worker, (this.pinned.get(worker) ?? 0) + 1);
  }

  unpin(worker: string): void {
    const n = (this.pinned.get(worker) ?? 1) - 1;
    if (n > 0) this.pinned.set(worker, n);
    else this.pinned.delete(worker);
  }

  get size(): number {
    return this.workers.size;
  }

  get lowWatermark(): number {
    return this.watermark;
  }

  /** u32 magic, f64 watermark, u32 count, then per worker: u16 id length, id (utf8), f64 high, f64 floor, WINDOW/8 bytes. */
  encode(): Buffer {
    let n = HEADER_BYTES;
    const ids: Buffer[] = [];
    for (const id of this.workers.keys()) {
      const b = Buffer.from(id, 'utf8');
      ids.push(b);
      n += RECORD_OVERHEAD + b.length;
    }
    const out = Buffer.alloc(n);
    let off = out.writeUInt32LE(MAGIC, 0);
    off = out.writeDoubleLE(this.watermark, off);
    off = out.writeUInt32LE(this.workers.size, off);
    let i = 0;
    for (const r of this.workers.values()) {
      const b = ids[i++];
      // Ids are bounded at the door (MAX_WORKER_ID_BYTES), so the u16 can not overflow.
      off = out.writeUInt16LE(b.length, off);
      off += b.copy(out, off);
      off = out.writeDoubleLE(r.high, off);
      off = out.writeDoubleLE(r.floor, off);
      off += Buffer.from(r.bits.buffer, r.bits.byteOffset, r.bits.byteLength).copy(out, off);
    }
    return out;
  }

  static decode(buf: Buffer, maxWorkers = MAX_WORKERS): ExactlyOnce {
    const out = new ExactlyOnce(maxWorkers);
    if (buf.length === 0) return out;
    let off = 0;
    const v2 = buf.length >= 16 && buf.readUInt32LE(0) === MAGIC;
    if (v2) {
      out.watermark = buf.readDoubleLE(4);
      off = 12;
    }
    const n = buf.readUInt32LE(off);
    off += 4;
    for (let i = 0; i < n; i++) {
      const nl = buf.readUInt16LE(off);
      off += 2;
      const id = buf.toString('utf8', off, off + nl);
      off += nl;
      const high = buf.readDoubleLE(off);
      off += 8;
      let floor = 0;
      if (v2) {
        floor = buf.readDoubleLE(off);
        off += 8;
      }
      const bits = Uint8Array.from(buf.subarray(off, off + WINDOW / 8));
      off += WINDOW / 8;
      out.workers.set(id, { high, floor, bits });
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
