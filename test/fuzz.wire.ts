// The fuzzer's view of the wire: a protobuf encoder driven by the message
// descriptors of proto/pmemps.proto (so every RPC and every field is known
// without a second copy of the schema), able to write what a well-behaved
// client never would: uint64 above 2^53, negative varints, strings that are
// not UTF-8, a field with the wrong wire type, unknown and repeated fields.
// Requests go out through a grpc-js client whose serializer is the identity,
// so the server's own decoders (proto-loader's, and the fast Pull/Push codecs)
// see exactly these bytes.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { FAST_CODECS } from '../proto/fast-codec';
import { PROTO_FILE, SERVICE_PATH, parameterServerService } from '../proto/load';

const PKG = SERVICE_PATH.slice(0, SERVICE_PATH.lastIndexOf('.'));

export interface FieldDesc {
  name: string;
  number: number;
  label: string; // LABEL_OPTIONAL | LABEL_REPEATED
  type: string; // TYPE_STRING, TYPE_UINT64, ...
  typeName: string;
}
export interface MessageDesc {
  name: string;
  field: FieldDesc[];
  nestedType: MessageDesc[];
  options?: { mapEntry?: boolean } | null;
}

const def = protoLoader.loadSync(PROTO_FILE, { longs: Number, enums: String, bytes: Buffer, defaults: true, oneofs: true, keepCase: true });
const serviceDef = def[SERVICE_PATH] as protoLoader.ServiceDefinition;
/** Every RPC of the service, in .proto order. */
export const RPCS: string[] = Object.keys(serviceDef);

/** The codecs the SDK uses (fast Pull/Push codecs included): responses are decoded as a client would. */
const serverCodecs = parameterServerService(true).service as unknown as Record<string, grpc.MethodDefinition<unknown, unknown>>;
/**
 * The same decoders, unwrapped: the fast codecs for Pull and Push, protobufjs
 * (from this file's own load of the .proto) for the rest. A server that wraps
 * its decoders (to refuse undecodable bodies itself) does not change what
 * this side thinks the bytes say.
 */
const plainDecoders: Record<string, (b: Buffer) => any> = Object.fromEntries(
  RPCS.map((rpc) => [rpc, FAST_CODECS[rpc]?.request.decode ?? (serviceDef[rpc].requestDeserialize as (b: Buffer) => any)]),
);

export function requestType(rpc: string): MessageDesc {
  return (serviceDef[rpc].requestType as unknown as { type: MessageDesc }).type;
}

export function enumValues(typeName: string): string[] {
  const e = def[`${PKG}.${typeName}`] as unknown as { type: { value: { name: string }[] } } | undefined;
  return e ? e.type.value.map((v) => v.name) : [];
}

/** The descriptor of a field's message type: nested (map entries) first, then the package. */
export function messageType(parent: MessageDesc, f: FieldDesc): MessageDesc {
  const nested = parent.nestedType.find((n) => n.name === f.typeName);
  if (nested) return nested;
  const t = def[`${PKG}.${f.typeName}`] as unknown as { type: MessageDesc } | undefined;
  if (!t) throw new Error(`fuzz.wire: unknown message type ${f.typeName}`);
  return t.type;
}

export function isMap(parent: MessageDesc, f: FieldDesc): boolean {
  return f.type === 'TYPE_MESSAGE' && !!messageType(parent, f).options?.mapEntry;
}

// ------------------------------------------------------------ encoding

export const WT_VARINT = 0;
export const WT_I64 = 1;
export const WT_LEN = 2;
export const WT_I32 = 5;

/** A field written as given, whatever the descriptor says (wrong wire types, truncated payloads). */
export class RawField {
  constructor(
    readonly wireType: number,
    readonly payload: Buffer,
  ) {}
}

/** Appended to a message as is: unknown fields, repeats, garbage after the last field. */
export const RAW_TAIL = '$raw';

export function varint(v: bigint | number): Buffer {
  let x = BigInt.asUintN(64, BigInt(v)); // a negative number becomes its 10-byte two's complement, as protobuf writes int64
  const out: number[] = [];
  while (x >= 0x80n) {
    out.push(Number(x & 0x7fn) | 0x80);
    x >>= 7n;
  }
  out.push(Number(x));
  return Buffer.from(out);
}

export function tag(no: number, wt: number): Buffer {
  return varint((BigInt(no) << 3n) | BigInt(wt));
}

function lenField(no: number, payload: Buffer): Buffer {
  return Buffer.concat([tag(no, WT_LEN), varint(payload.length), payload]);
}

function scalar(f: FieldDesc, v: unknown): Buffer {
  if (v instanceof RawField) return Buffer.concat([tag(f.number, v.wireType), v.payload]);
  switch (f.type) {
    case 'TYPE_STRING':
    case 'TYPE_BYTES':
      return lenField(f.number, Buffer.isBuffer(v) ? v : Buffer.from(String(v), 'utf8'));
    case 'TYPE_UINT64':
    case 'TYPE_UINT32':
    case 'TYPE_INT64':
    case 'TYPE_INT32':
      return Buffer.concat([tag(f.number, WT_VARINT), varint(v as bigint | number)]);
    case 'TYPE_BOOL':
      return Buffer.concat([tag(f.number, WT_VARINT), varint(typeof v === 'boolean' ? (v ? 1 : 0) : (v as number | bigint))]);
    case 'TYPE_DOUBLE': {
      const b = Buffer.alloc(8);
      b.writeDoubleLE(v as number);
      return Buffer.concat([tag(f.number, WT_I64), b]);
    }
    case 'TYPE_FLOAT': {
      const b = Buffer.alloc(4);
      b.writeFloatLE(v as number);
      return Buffer.concat([tag(f.number, WT_I32), b]);
    }
    default:
      throw new Error(`fuzz.wire: no encoder for ${f.type}`);
  }
}

function enumNumber(f: FieldDesc, v: unknown): number | bigint {
  if (typeof v === 'string') {
    const i = enumValues(f.typeName).indexOf(v);
    if (i < 0) throw new Error(`fuzz.wire: ${v} is not a value of ${f.typeName}`);
    return i;
  }
  return v as number | bigint;
}

/**
 * Encodes `obj` as message `t`. Values: strings as string or Buffer (any
 * bytes), integers as number or bigint (negative: 10-byte varint), enums
 * by name or number, messages as objects or Buffers (written as they are),
 * maps as objects or [key, value] pairs (repeats allowed), any field as a
 * RawField; obj[RAW_TAIL] is appended.
 */
export function encode(t: MessageDesc, obj: Record<string, unknown>): Buffer {
  const parts: Buffer[] = [];
  for (const f of t.field) {
    const v = obj[f.name];
    if (v === undefined || v === null) continue;
    const one = (x: unknown): Buffer => {
      if (x instanceof RawField) return scalar(f, x);
      if (f.type === 'TYPE_MESSAGE') return lenField(f.number, Buffer.isBuffer(x) ? x : encode(messageType(t, f), x as Record<string, unknown>));
      if (f.type === 'TYPE_ENUM') return Buffer.concat([tag(f.number, WT_VARINT), varint(enumNumber(f, x))]);
      return scalar(f, x);
    };
    if (v instanceof RawField || Buffer.isBuffer(v)) {
      parts.push(one(v)); // a repeated or map field written as one raw value
    } else if (isMap(t, f)) {
      const entries = Array.isArray(v) ? (v as [unknown, unknown][]) : Object.entries(v as object);
      for (const [k, val] of entries) parts.push(one({ key: k, value: val }));
    } else if (f.label === 'LABEL_REPEATED') {
      for (const x of v as unknown[]) parts.push(one(x));
    } else {
      parts.push(one(v));
    }
  }
  const tail = obj[RAW_TAIL];
  if (Buffer.isBuffer(tail)) parts.push(tail);
  return Buffer.concat(parts);
}

export function encodeRequest(rpc: string, obj: Record<string, unknown>): Buffer {
  return encode(requestType(rpc), obj);
}

// ------------------------------------------------------------ decoding

/** The request as the server's decoder sees it, or null when it cannot decode it. */
export function serverView(rpc: string, body: Buffer): any | null {
  const d = plainDecoders[rpc];
  if (!d) return null;
  try {
    return d(body);
  } catch {
    return null;
  }
}

export function decodeResponse(rpc: string, body: Buffer): any {
  return serverCodecs[rpc].responseDeserialize(body);
}

/** Top-level fields of a protobuf message as raw values (varints as bigint), or null if malformed. */
export function rawFields(b: Buffer): { no: number; wt: number; v: bigint | Buffer }[] | null {
  const out: { no: number; wt: number; v: bigint | Buffer }[] = [];
  let off = 0;
  const rv = (): bigint | null => {
    let x = 0n;
    let shift = 0n;
    for (let i = 0; i < 10; i++) {
      if (off >= b.length) return null;
      const c = b[off++];
      x |= BigInt(c & 0x7f) << shift;
      if (c < 0x80) return BigInt.asUintN(64, x);
      shift += 7n;
    }
    return null;
  };
  while (off < b.length) {
    const t = rv();
    if (t === null) return null;
    const no = Number(t >> 3n);
    const wt = Number(t & 7n);
    if (wt === WT_VARINT) {
      const v = rv();
      if (v === null) return null;
      out.push({ no, wt, v });
    } else if (wt === WT_LEN) {
      const n = rv();
      if (n === null || off + Number(n) > b.length) return null;
      out.push({ no, wt, v: b.subarray(off, off + Number(n)) });
      off += Number(n);
    } else if (wt === WT_I64 || wt === WT_I32) {
      const n = wt === WT_I64 ? 8 : 4;
      if (off + n > b.length) return null;
      out.push({ no, wt, v: b.subarray(off, off + n) });
      off += n;
    } else return null;
  }
  return out;
}

/** The last value of a length-delimited top-level field (protobuf: the last one wins). */
export function lastBytes(fields: { no: number; wt: number; v: bigint | Buffer }[], no: number): Buffer | undefined {
  let r: Buffer | undefined;
  for (const f of fields) if (f.no === no && f.wt === WT_LEN) r = f.v as Buffer;
  return r;
}

// ------------------------------------------------------------ transport

export interface Outcome {
  code: grpc.status;
  details: string;
  reason?: string;
  /** The decoded response when code is OK. */
  res?: any;
  /** The response did not decode: the server broke its own contract. */
  badResponse?: string;
  ms: number;
}

/**
 * A client that sends bodies as given. Limits are wide open on this side so
 * that oversized requests reach the server and its limits answer.
 */
export class Wire {
  private readonly client: grpc.Client;
  /** `metadata` makes each call's metadata unless the call brings its own (a server with --auth-tokens reads the token from it). */
  constructor(
    readonly endpoint: string,
    private readonly metadata: () => grpc.Metadata = () => new grpc.Metadata(),
  ) {
    this.client = new grpc.Client(endpoint, grpc.credentials.createInsecure(), {
      'grpc.max_send_message_length': -1,
      'grpc.max_receive_message_length': -1,
      // A connection of its own (grpc-js shares connections between clients
      // by default): a call that wedges its connection must not take the
      // harness's or another lane's down with it.
      'grpc.use_local_subchannel_pool': 1,
    });
  }

  call(rpc: string, body: Buffer, deadlineMs = 15_000, path = `/${SERVICE_PATH}/${rpc}`, md: grpc.Metadata = this.metadata()): Promise<Outcome> {
    const t0 = Date.now();
    return new Promise((resolve) => {
      this.client.makeUnaryRequest<Buffer, Buffer>(
        path,
        (x) => x,
        (x) => x,
        body,
        md,
        { deadline: Date.now() + deadlineMs },
        (err, value) => {
          const ms = Date.now() - t0;
          if (err) {
            const reason = err.metadata?.get('pmemps-reason')[0];
            resolve({ code: err.code, details: err.details ?? '', reason: reason === undefined ? undefined : String(reason), ms });
            return;
          }
          try {
            resolve({ code: grpc.status.OK, details: '', res: serverCodecs[rpc] ? decodeResponse(rpc, value!) : value, ms });
          } catch (e) {
            resolve({ code: grpc.status.OK, details: '', badResponse: (e as Error).message, ms });
          }
        },
      );
    });
  }

  close(): void {
    this.client.close();
  }
}
