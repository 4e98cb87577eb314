// How every failure reaches a client: one gRPC status code per cause (the
// README's error table is this mapping), plus a `pmemps-reason` trailer
// where a client must tell two causes with the same code apart.
import * as grpc from '@grpc/grpc-js';
import { EngineError } from '../native/engine';
import { ServerError } from './errors';
import { OverloadError } from './transport-limits';

/** The status of each engine error code (test/engine.test.ts checks it covers the engine's list). */
export const ENGINE_CODES: Readonly<Record<EngineError['code'], grpc.status>> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  OUT_OF_SPACE: grpc.status.RESOURCE_EXHAUSTED,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  LOCKED: grpc.status.UNAVAILABLE,
  CORRUPT: grpc.status.DATA_LOSS,
  INCOMPATIBLE: grpc.status.FAILED_PRECONDITION,
  IO: grpc.status.INTERNAL,
  TOO_LARGE: grpc.status.RESOURCE_EXHAUSTED,
  INTERNAL: grpc.status.INTERNAL,
};

const SERVER_CODES: Record<ServerError['kind'], grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  OUT_OF_SPACE: grpc.status.RESOURCE_EXHAUSTED,
  STALE_BALLOT: grpc.status.ABORTED,
  INCARNATION: grpc.status.FAILED_PRECONDITION,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  TOO_OLD: grpc.status.FAILED_PRECONDITION,
  WRONG_SHARD: grpc.status.FAILED_PRECONDITION,
  TOO_LARGE: grpc.status.RESOURCE_EXHAUSTED,
  NEEDS_RESTORE: grpc.status.FAILED_PRECONDITION,
  BALLOT_STEP: grpc.status.OUT_OF_RANGE,
  ID_STEP: grpc.status.OUT_OF_RANGE,
};

/** Longest status details sent: nothing a client sent is echoed back unbounded. */
export const MAX_DETAILS = 1024;

function bounded(details: string): string {
  if (Buffer.byteLength(details) <= MAX_DETAILS) return details;
  return (
    Buffer.from(details)
      .subarray(0, MAX_DETAILS - 20)
      .toString('utf8')
      .replace(/\uFFFD$/, '') + ' ...(truncated)'
  );
}

export function toStatus(err: unknown): Partial<grpc.StatusObject> {
  const metadata = new grpc.Metadata();
  if (err instanceof ServerError) {
    metadata.set('pmemps-reason', err.kind.toLowerCase());
    for (const [k, v] of Object.entries(err.trailers)) metadata.set(k, v);
    return { code: SERVER_CODES[err.kind], details: bounded(err.message), metadata };
  }
  if (err instanceof OverloadError) {
    metadata.set('pmemps-reason', 'overloaded');
    return { code: grpc.status.RESOURCE_EXHAUSTED, details: err.message, metadata };
  }
  if (err instanceof EngineError) {
    metadata.set('pmemps-reason', err.code.toLowerCase());
    return { code: ENGINE_CODES[err.code], details: bounded(err.message), metadata };
  }
  return { code: grpc.status.INTERNAL, details: bounded(err instanceof Error ? err.message : String(err)), metadata };
}

export { invalid } from './errors';
