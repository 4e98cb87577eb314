// Hand-written protobuf codecs for the four hot messages (PullRequest,
// PullResponse, PushRequest, PushResponse). protobufjs copies every bytes
// field and allocates per field; for a 1 MiB pull that is about 2 ms of the
// call on each side (bench/results/service-latest.md). These produce and
// accept the standard protobuf wire format of the same messages — any
// protobuf client interoperates (test/codec.test.ts checks both directions
// against protobufjs) — and hand bytes fields over as views of the received
// message, without a copy.
//
// uint64 fields are JS numbers below 2^53 (as everywhere in pmemps); a larger
// value decodes as NaN so the handler refuses it.

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

/** gRPC's frame header before every message: a compressed flag and a uint32 length. */
export const GRPC_FRAME_HEADER = 5;

// Messages whose bytes before the view are free for the gRPC frame header
// (frameInPlace).
const framable = new WeakSet<Buffer>();

function varintSize(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function writeVarint(b: Buffer, off: number, v: number): number {
  while (v >= 128) {
    b[off++] = (v % 128) | 128;
    v = Math.floor(v / 128);
  }
  b[off++] = v;
  return off;
}

type Field = { no: number; kind: 'string' | 'bytes' | 'uint64' | 'bool' };

// Bytes fields with free room before them (withRoomBefore): an encoder may
// write the rest of the message there and the field last, in place.
const roomBefore = new WeakMap<Buffer, number>();

/**
 * A Buffer of `n` bytes for a bytes field, with `room` bytes (a multiple of
 * 8, so the field stays aligned) free before it: encoded as the last field
 * of a message whose other fields and gRPC frame header fit in the room, it
 * becomes the end of the message without being copied. Once only: a second
 * encoding of the same Buffer copies it, so that an earlier message still
 * being written is never overwritten.
 */
export function withRoomBefore(n: number, room: number): Buffer {
  const b = Buffer.allocUnsafe(room + n).subarray(room);
  roomBefore.set(b, room);
  return b;
}

/** Room (withRoomBefore) a PushRequest needs before its grads for the other fields and the gRPC frame header. */
export function pushRoom(table: string, keyBytes: number, workerId: string): number {
  const str = (s: string): number => 1 + 5 + Buffer.byteLength(s, 'utf8');
  // table, keys, worker_id, seq and incarnation (varints of at most 10 bytes), the grads' tag and length
  const need = GRPC_FRAME_HEADER + str(table) + 1 + 5 + keyBytes + str(workerId) + 2 * 11 + 1 + 5;
  return Math.ceil(need / 8) * 8;
}

/**
 * Encodes the fields of `msg` in field order; empty strings/bytes and zeros
 * are omitted, as proto3 does. A bytes field with room before it
 * (withRoomBefore) goes last instead — any field order is valid protobuf —
 * and the message ends with it in place.
 */
function encoder(fields: Field[]): (msg: Record<string, unknown>, names: string[]) => Buffer {
  return (msg, names) => {
    const vals: (Buffer | number | null)[] = [];
    let size = 0;
    let tail = -1;
    fields.forEach((f, i) => {
      const v = msg[names[i]];
      let enc: Buffer | number | null = null;
      if (f.kind === 'string') {
        const s = (v as string | undefined) ?? '';
        if (s.length) enc = Buffer.from(s, 'utf8');
      } else if (f.kind === 'bytes') {
        const b = v as Buffer | undefined;
        if (b && b.length) enc = b;
        if (b && tail < 0 && roomBefore.has(b)) tail = i;
      } else if (f.kind === 'uint64') {
        const n = Number(v ?? 0);
        if (n) enc = n;
      } else if (v) enc = 1;
      vals.push(enc);
      if (enc === null) return;
      const tag = f.no * 8 + (typeof enc === 'number' ? WIRE_VARINT : WIRE_LEN);
      size += varintSize(tag) + (typeof enc === 'number' ? varintSize(enc) : varintSize(enc.length) + enc.length);
    });
    const write = (out: Buffer, off: number, i: number): number => {
      const enc = vals[i];
      if (enc === null) return off;
      const no = fields[i].no;
      if (typeof enc === 'number') {
        off = writeVarint(out, off, no * 8 + WIRE_VARINT);
        return writeVarint(out, off, enc);
      }
      off = writeVarint(out, off, no * 8 + WIRE_LEN);
      off = writeVarint(out, off, enc.length);
      if (out.buffer !== enc.buffer || out.byteOffset + off !== enc.byteOffset) enc.copy(out, off);
      return off + enc.length;
    };
    if (tail >= 0) {
      const t = vals[tail] as Buffer;
      const room = roomBefore.get(t)!;
      const start = room - (size - t.length);
      roomBefore.delete(t);
      if (start >= GRPC_FRAME_HEADER) {
        const out = Buffer.from(t.buffer, t.byteOffset - room + start, size);
        framable.add(out);
        let off = 0;
        for (let i = 0; i < fields.length; i++) if (i !== tail) off = write(out, off, i);
        write(out, off, tail); // the header only: the bytes are already in place
        return out;
      }
    }
    // Room for the gRPC frame header before the message, so grpc-frames.ts
    // frames it without copying it (grpc-js's own path copies it instead).
    const out = Buffer.allocUnsafe(GRPC_FRAME_HEADER + size).subarray(GRPC_FRAME_HEADER);
    framable.add(out);
    let off = 0;
    for (let i = 0; i < fields.length; i++) off = write(out, off, i);
    return out;
  };
}

class Reader {
  off = 0;
  constructor(readonly b: Buffer) {}
  varint(): number {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (this.off >= this.b.length) throw new Error('truncated protobuf varint');
      const byte = this.b[this.off++];
      v += (byte & 127) * mul;
      if (byte < 128) break;
      mul *= 128;
      if (mul > 2 ** 63) throw new Error('protobuf varint too long');
    }
    return v > Number.MAX_SAFE_INTEGER ? NaN : v;
  }
  bytes(): Buffer {
    const n = this.varint();
    if (!(n >= 0) || this.off + n > this.b.length) throw new Error('truncated protobuf field');
    const s = this.b.subarray(this.off, this.off + n);
    this.off += n;
    return s;
  }
  skip(wire: number): void {
    if (wire === WIRE_VARINT) this.varint();
    else if (wire === WIRE_I64) this.fixed(8);
    else if (wire === WIRE_LEN) this.bytes();
    else if (wire === WIRE_I32) this.fixed(4);
    else throw new Error(`unsupported protobuf wire type ${wire} (groups are not used by this proto)`);
  }
  private fixed(n: number): void {
    if (this.off + n > this.b.length) throw new Error('truncated protobuf field');
    this.off += n;
  }
}

function decoder(fields: Field[], names: string[]): (b: Buffer) => Record<string, unknown> {
  const byNo = new Map(fields.map((f, i) => [f.no, { f, name: names[i] }]));
  return (b) => {
    const out: Record<string, unknown> = {};
    for (const [i, f] of fields.entries()) out[names[i]] = f.kind === 'string' ? '' : f.kind === 'bytes' ? EMPTY : f.kind === 'bool' ? false : 0;
    const r = new Reader(b);
    while (r.off < b.length) {
      const tag = r.varint();
      if (!(tag >= 8)) throw new Error('invalid protobuf tag (field number 0)');
      const wire = tag % 8;
      const hit = byNo.get(Math.floor(tag / 8));
      if (!hit) {
        r.skip(wire);
        continue;
      }
      // A known field of another wire type is refused, not skipped as
      // standard parsers do: skipped, a Push's incarnation would go unchecked.
      if (wire !== (hit.f.kind === 'string' || hit.f.kind === 'bytes' ? WIRE_LEN : WIRE_VARINT))
        throw new Error(`field "${hit.name}" came with wire type ${wire}, not as proto/pmemps.proto declares it`);
      if (hit.f.kind === 'string') out[hit.name] = r.bytes().toString('utf8');
      else if (hit.f.kind === 'bytes') out[hit.name] = r.bytes();
      else if (hit.f.kind === 'bool') out[hit.name] = r.varint() !== 0;
      else out[hit.name] = r.varint();
    }
    return out;
  };
}

const EMPTY = Buffer.alloc(0);

function codec(fields: [string, number, Field['kind']][]): { encode: (m: any) => Buffer; decode: (b: Buffer) => any } {
  const fs = fields.map(([, no, kind]) => ({ no, kind }));
  const names = fields.map(([n]) => n);
  const enc = encoder(fs);
  return { encode: (m) => enc(m, names), decode: decoder(fs, names) };
}

/**
 * Bytes the server has the engine leave free before a pull's rows
 * (Engine.pull's headroom, a multiple of 8): the gRPC frame header (5), the
 * padding field (at most 9) and PullResponse's header, a tag and the length
 * as a varint (at most 6), fit in 32.
 */
export const PULL_REPLY_HEADROOM = 32;

/**
 * Field number of PullResponse's padding (reserved in proto/pmemps.proto):
 * a length-delimited field no decoder knows, so every one skips it.
 */
export const PULL_PAD_FIELD = 15;

/**
 * A PullResponse encoded around rows that start at byte `headroom` of `buf`:
 * the header is written into the bytes before them and the message is a view
 * of `buf`. The Pull serializer passes an encoded Buffer through, and the
 * server frames it in place (frameInPlace), so a reply's rows are not copied
 * on the event loop at all.
 *
 * A padding field before the rows puts them at a multiple of 8 from the
 * start of the gRPC frame. grpc-js receives a message at byte 5 of a buffer
 * of its own (the frame, joined), so there the rows are aligned and the SDK
 * views them as a Float32Array instead of copying a megabyte to align them.
 */
export function pullReplyAround(buf: Buffer, headroom: number): Buffer {
  const len = buf.length - headroom;
  if (len === 0) return EMPTY; // proto3 leaves an empty bytes field out
  const header = 1 + varintSize(len);
  let pad = (8 - ((GRPC_FRAME_HEADER + header) % 8)) % 8;
  if (pad === 1) pad = 9; // the smallest padding field is 2 bytes (tag, length 0)
  if (header + pad > headroom) throw new Error(`pull reply header needs ${header + pad} bytes, the buffer leaves ${headroom}`);
  let off = headroom - header - pad;
  const start = off;
  if (pad) {
    buf[off++] = PULL_PAD_FIELD * 8 + WIRE_LEN;
    buf[off++] = pad - 2;
    buf.fill(0, off, off + pad - 2);
    off += pad - 2;
  }
  buf[off] = 1 * 8 + WIRE_LEN;
  writeVarint(buf, off + 1, len);
  const msg = buf.subarray(start);
  if (start >= GRPC_FRAME_HEADER) framable.add(msg);
  return msg;
}

/**
 * The gRPC frame of a message from pullReplyAround or an encoder here,
 * written into the bytes before it: a view of the same memory, or null for
 * any other message (which the caller frames by copying, as grpc-js does).
 */
export function frameInPlace(msg: Buffer): Buffer | null {
  if (!framable.has(msg)) return null;
  framable.delete(msg); // a message is framed once: its header bytes are then in use
  const f = Buffer.from(msg.buffer, msg.byteOffset - GRPC_FRAME_HEADER, msg.length + GRPC_FRAME_HEADER);
  f[0] = 0; // not compressed
  f.writeUInt32BE(msg.length, 1);
  return f;
}

/** The codec, except that a Buffer is taken as the message already encoded (pullReplyAround). */
function passEncoded(c: ReturnType<typeof codec>): ReturnType<typeof codec> {
  return { encode: (m) => (Buffer.isBuffer(m) ? m : c.encode(m)), decode: c.decode };
}

/** Field numbers as in proto/pmemps.proto (test/codec.test.ts compares them with the .proto). */
export const FAST_CODECS: Record<string, { request: ReturnType<typeof codec>; response: ReturnType<typeof codec> }> = {
  Pull: {
    request: codec([
      ['table', 1, 'string'],
      ['keys', 2, 'bytes'],
    ]),
    response: passEncoded(codec([['values', 1, 'bytes']])),
  },
  Push: {
    request: codec([
      ['table', 1, 'string'],
      ['keys', 2, 'bytes'],
      ['grads', 3, 'bytes'],
      ['worker_id', 4, 'string'],
      ['seq', 5, 'uint64'],
      ['incarnation', 6, 'uint64'],
    ]),
    response: codec([['duplicate', 1, 'bool']]),
  },
};
