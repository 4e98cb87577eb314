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
// Invariants:
//  * Work is linear in the bytes scanned and stops at the first field over
//    its bound; nothing is allocated per entry.
//  * A body the census cannot walk (truncated, a bad wire type) is left to
//    the decoder, which refuses it with its own message.

/** Occurrences of one field in one message that the census lets through. */
export const MAX_FIELD_ENTRIES = 4096;
const MAX_DEPTH = 16;

/** A message's fields, as proto-loader describes them: number -> [name, nested message type or undefined]. */
type Shape = Map<number, [string, string | undefined]>;
interface FieldDescriptor {
  name: string;
  number: number;
  type: string;
  typeName: string;
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
      for (const f of d.field) shape.set(f.number, [f.name, f.type === 'TYPE_MESSAGE' && types.has(f.typeName) ? f.typeName : undefined]);
      this.shapes.set(name, shape);
    }
  }

  /** Throws an Error naming the field when the body of a `type` message holds one field too many times. */
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
