// Loads pmemps.proto at run time (grpc-js + proto-loader, no generated code)
// for the server and the SDK alike, with the options both sides rely on:
// uint64 fields as JS numbers (ids, seqs and ballots stay below 2^52),
// bytes as Buffers, enums as strings, defaults filled in. Pull and Push use
// the hand-written codecs of fast-codec.ts (same wire format, no copies).
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { EntryCensus } from './entry-census';
import { FAST_CODECS } from './fast-codec';

export const PROTO_FILE = path.join(__dirname, '..', '..', 'proto', 'pmemps.proto');
export const SERVICE_PATH = 'pmemps.v1.ParameterServer';

const cached = new Map<boolean, grpc.ServiceClientConstructor>();
let census: EntryCensus | undefined;

// The census of a loaded definition's messages, by their names without the
// package (the service's codecs, which the fast path replaces, play no part).
function censusOf(def: protoLoader.PackageDefinition): EntryCensus {
  const types = new Map<string, any>();
  for (const [name, t] of Object.entries(def)) {
    const m = /^pmemps\.v1\.([A-Za-z0-9_]+)$/.exec(name);
    const d = t as { format?: string; type?: unknown };
    if (m && d.format === 'Protocol Buffer 3 DescriptorProto') types.set(m[1], d.type);
  }
  return new EntryCensus(types);
}

/** The census of the proto's messages (entry-census.ts), made from the definition the service was loaded from. */
export function entryCensus(): EntryCensus {
  if (!census) parameterServerService();
  return census!;
}

/** The ParameterServer client constructor (its .service is the server's definition). fast: false gives plain protobufjs codecs. */
export function parameterServerService(fast = true): grpc.ServiceClientConstructor {
  let ctor = cached.get(fast);
  if (!ctor) {
    const def = protoLoader.loadSync(PROTO_FILE, { longs: Number, enums: String, bytes: Buffer, defaults: true, oneofs: true, keepCase: true });
    census ??= censusOf(def);
    if (fast) {
      const svc = def[SERVICE_PATH] as protoLoader.ServiceDefinition;
      for (const [name, c] of Object.entries(FAST_CODECS)) {
        const m = svc[name] as unknown as Record<string, unknown>;
        m.requestSerialize = c.request.encode;
        m.requestDeserialize = c.request.decode;
        m.responseSerialize = c.response.encode;
        m.responseDeserialize = c.response.decode;
      }
    }
    const pkg = grpc.loadPackageDefinition(def) as any;
    ctor = pkg.pmemps.v1.ParameterServer as grpc.ServiceClientConstructor;
    cached.set(fast, ctor);
  }
  return ctor;
}

/** Largest message either side accepts by default: a 65,536-key x dim-128 batch is 32 MiB. */
export const DEFAULT_MAX_MESSAGE_MB = 64;

/**
 * HTTP/2 flow-control window of the server's connections. grpc-js sets the
 * client's receive window (grpc-node.flow_control_window) but not the
 * server's, which stays at 64 KiB: a 1 MiB push then waits on 16 window
 * updates (6.5 ms against 1.5 ms per call on loopback, measured).
 */
export const FLOW_CONTROL_WINDOW = 16 * 2 ** 20;

/**
 * Largest HTTP/2 DATA frame each side advertises it accepts (the protocol's
 * default is 16 KiB, its maximum 16 MiB - 1). A sender splits a message into
 * frames of at most this size, each its own header, nghttp2 callback and
 * write vector entry: a 1 MiB pull reply is 64 frames at the default.
 */
export const MAX_FRAME_SIZE = 2 ** 20;

/** An optimizer spec as the wire's Optimizer message (booleans as 0/1). */
export function optimizerToWire(o: { type: string }): { type: string; params: Record<string, number> } {
  const params: Record<string, number> = {};
  for (const [k, v] of Object.entries(o)) if (k !== 'type') params[k] = typeof v === 'boolean' ? (v ? 1 : 0) : Number(v);
  return { type: o.type, params };
}
