// How every failure reaches a client: one gRPC status code per cause (the
// README's error table is this mapping), plus a `pmemps-reason` trailer
// where a client must tell two causes with the same code apart.
import * as grpc from '@grpc/grpc-js';
import { EngineError } from '../native/engine';
import { ShardError } from './shard';
import { OverloadError } from './transport-limits';

const ENGINE_CODES: Record<EngineError['code'], grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  OUT_OF_SPACE: grpc.status.RESOURCE_EXHAUSTED,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  LOCKED: grpc.status.UNAVAILABLE,
  CORRUPT: grpc.status.DATA_LOSS,
  INCOMPATIBLE: grpc.status.FAILED_PRECONDITION,
  IO: grpc.status.INTERNAL,
  INTERNAL: grpc.status.INTERNAL,
};

const SHARD_CODES: Record<ShardError['kind'], grpc.status> = {
  STALE_BALLOT: grpc.status.ABORTED,
  INCARNATION: grpc.status.FAILED_PRECONDITION,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  TOO_OLD: grpc.status.FAILED_PRECONDITION,
  WRONG_SHARD: grpc.status.FAILED_PRECONDITION,
  TOO_LARGE: grpc.status.RESOURCE_EXHAUSTED,
  NEEDS_RESTORE: grpc.status.FAILED_PRECONDITION,
};

export function toStatus(err: unknown): Partial<grpc.StatusObject> {
  const metadata = new grpc.Metadata();
  if (err instanceof ShardError) {
    metadata.set('pmemps-reason', err.kind.toLowerCase());
    return { code: SHARD_CODES[err.kind], details: err.message, metadata };
  }
  if (err instanceof OverloadError) {
    metadata.set('pmemps-reason', 'overloaded');
    return { code: grpc.status.RESOURCE_EXHAUSTED, details: err.message, metadata };
  }
  if (err instanceof EngineError) {
    metadata.set('pmemps-reason', err.code.toLowerCase());
    return { code: ENGINE_CODES[err.code], details: err.message, metadata };
  }
  return { code: grpc.status.INTERNAL, details: err instanceof Error ? err.message : String(err), metadata };
}

export function invalid(message: string): EngineError {
  return new EngineError('INVALID_ARGUMENT', message);
}
