// Loads pmemps.proto at run time (grpc-js + proto-loader, no generated code)
// for the server and the SDK alike, with the options both sides rely on:
// uint64 fields as JS numbers (ids, seqs and ballots stay below 2^53),
// bytes as Buffers, enums as strings, defaults filled in.
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export const PROTO_FILE = path.join(__dirname, '..', '..', 'proto', 'pmemps.proto');

let cached: grpc.ServiceClientConstructor | undefined;

export function parameterServerService(): grpc.ServiceClientConstructor {
  if (!cached) {
    const def = protoLoader.loadSync(PROTO_FILE, { longs: Number, enums: String, bytes: Buffer, defaults: true, oneofs: true, keepCase: true });
    const pkg = grpc.loadPackageDefinition(def) as any;
    cached = pkg.pmemps.v1.ParameterServer as grpc.ServiceClientConstructor;
  }
  return cached;
}

/** Largest message either side accepts by default: a 65,536-key x dim-128 batch is 32 MiB. */
export const DEFAULT_MAX_MESSAGE_MB = 64;
