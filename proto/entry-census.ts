// Counts a request's fields on the wire before protobufjs decodes it.
//
// protobufjs makes objects for every entry of a repeated field (and, with
// defaults, a default Buffer per bytes field) before any handler can apply
// its bound: one 63 MiB Checkpoint of 33M empty `dense` entries held the
// event loop for 84 s and ran the server out of heap (a review's attack).
// The census walks the bytes first, without making anything, and refuses a
// message in which any field (or the unknown ones together) appears more
// than MAX_FIELD_ENTRIES times in one message, descending into fields whose
// type is a message of the proto. Every bound the handlers apply later is
// lower (wire-args.ts), so no valid request is refused here.
//
// It also refuses a field of the proto sent with another wire type (a
// uint64 as fixed64, say). Standard parsers skip such a field as unknown,
// so the server would act as if it were absent: a Push's `incarnation`
// check, made to refuse pushes meant for a server since restarted, would
// silently not happen. protobufjs instead reads it as its declared type and
// goes on from the wrong place.
//
// Invariants:
//  * Work is linear in the bytes scanned and stops at the first field over
//    its bound; nothing is allocated per entry.
//  * A body the census cannot walk (truncated, a bad wire type) is left to
//    the decoder, which refuses it with its own message.

/** Occurrences of one field in one message that the census lets through. */
export const MAX_FIELD_ENTRIES = 4096;
const MAX_DEPTH = 16;

/** A message's fields, as proto-loader describes them: number -> [name, nested message type or undefined, wire types allowed (bits)]. */
type Shape = Map<number, [string, string | undefined, number]>;
interface FieldDescriptor {
  name: string;
  number: number;
  type: string;
  typeName: string;
  label?: string;
}

const WIRE_NAMES = ['varint', '64-bit', 'length-delimited', 'group start', 'group end', '32-bit'];

/** The wire types a field of this descriptor may come in, as bits (1 << wire type). */
function wireTypes(f: FieldDescriptor): number {
  let w: number;
  if (f.type === 'TYPE_STRING' || f.type === 'TYPE_BYTES' || f.type === 'TYPE_MESSAGE') return 1 << 2;
  else if (f.type === 'TYPE_DOUBLE' || f.type === 'TYPE_FIXED64' || f.type === 'TYPE_SFIXED64') w = 1 << 1;
  else if (f.type === 'TYPE_FLOAT' || f.type === 'TYPE_FIXED32' || f.type === 'TYPE_SFIXED32') w = 1 << 5;
  else w = 1 << 0;
  return f.label === 'LABEL_REPEATED' ? w | (1 << 2) : w; // repeated scalars may come packed
}
interface MessageDescriptor {
  name: string;
  field: FieldDescriptor[];
}

class Truncated extends Error {}

export class EntryCensus {
  private readonly shapes = new Map<string, Shape>();

  /** types: message name -> its descriptor (proto-loader's `type`), names without the package. */
  constructor(types: Map<string, MessageDescriptor>) {
    for (const [name, d] of types) {
      const shape: Shape = new Map();
      for (const f of d.field) shape.set(f.number, [f.name, f.type === 'TYPE_MESSAGE' && types.has(f.typeName) ? f.typeName : undefined, wireTypes(f)]);
      this.shapes.set(name, shape);
    }
  }

  /** Throws an Error naming the field when the body of a `type` message holds one field too many times, or one of another wire type. */
  check(type: string, body: Buffer): void {
    try {
      this.walk(type, body, 0, body.length, 0);
    } catch (e) {
      if (!(e instanceof Truncated)) throw e;
    }
  }

  private walk(type: string, b: Buffer, at: number, end: number, depth: number): void {
    const shape = this.shapes.get(type);
    if (!shape || depth > MAX_DEPTH) return;
    const counts = new Map<number, number>();
    while (at < end) {
      const [tag, next] = varint(b, at, end);
      at = next;
      const no = Math.floor(tag / 8);
      const field = shape.get(no);
      const key = field ? no : 0; // unknown fields count together
      const n = (counts.get(key) ?? 0) + 1;
      if (n > MAX_FIELD_ENTRIES) {
        const what = field ? `field "${field[0]}"` : 'fields it does not know';
        throw new Error(`${type} holds ${what} more than ${MAX_FIELD_ENTRIES} times`);
      }
      counts.set(key, n);
      if (field && !(field[2] & (1 << (tag % 8))))
        throw new Error(`${type} field "${field[0]}" came as a ${WIRE_NAMES[tag % 8] ?? 'invalid'} value, not as proto/pmemps.proto declares it`);
      switch (tag % 8) {
        case 0:
          at = varint(b, at, end)[1];
          break;
        case 1:
          at += 8;
          break;
        case 2: {
          const [len, from] = varint(b, at, end);
          if (from + len > end) throw new Truncated();
          if (field?.[1]) this.walk(field[1], b, from, from + len, depth + 1);
          at = from + len;
          break;
        }
        case 5:
          at += 4;
          break;
        default:
          throw new Truncated(); // groups and invalid wire types: the decoder's to refuse
      }
    }
  }
}

/** The varint at `at` and the offset after it; throws Truncated past `end` or after 10 bytes. */
function varint(b: Buffer, at: number, end: number): [number, number] {
  let v = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (at >= end) throw new Truncated();
    const byte = b[at++];
    v += (byte & 0x7f) * scale;
    if (byte < 0x80) return [v, at];
    scale *= 128;
  }
  throw new Truncated();
}
