// Errors of the SDK. Every failure a trainer may act on has its own class;
// all carry the shard and the gRPC code when a server gave them.
import * as grpc from '@grpc/grpc-js';

export class PsError extends Error {
  constructor(
    message: string,
    /** gRPC status code (grpc.status), or undefined for client-side errors. */
    readonly code?: grpc.status,
    /** Index of the shard that answered, when one did. */
    readonly shard?: number,
    /** The server's pmemps-reason trailer (e.g. "incarnation", "stale_ballot"). */
    readonly reason?: string,
  ) {
    super(message);
    this.name = 'PsError';
  }
}

/**
 * A server came back after a crash (or was restored by another worker): its
 * state is a checkpoint, not what this worker pushed. Call restore() (or, in
 * a multi-worker job, let the chief do it) and go on from its step.
 */
export class ServerRestartedError extends PsError {
  constructor(
    shard: number,
    readonly endpoint: string,
    readonly lastStopClean: boolean,
  ) {
    super(
      `server ${endpoint} (shard ${shard}) restarted ${lastStopClean ? 'after being restored by another worker' : 'after a crash'}: its state is its last committed checkpoint; call restore() and resume from the step it returns`,
      grpc.status.FAILED_PRECONDITION,
      shard,
      'incarnation',
    );
    this.name = 'ServerRestartedError';
  }
}

/** The endpoint list does not match the shard identities stored in the pools. */
export class IdentityMismatchError extends PsError {
  constructor(message: string) {
    super(message, undefined, undefined, 'identity');
    this.name = 'IdentityMismatchError';
  }
}

/** Another coordinator (a restore) raised the ballot: this persist was refused and changed nothing it could decide. */
export class CoordinatorSupersededError extends PsError {
  constructor(message: string, shard?: number) {
    super(message, grpc.status.ABORTED, shard, 'stale_ballot');
    this.name = 'CoordinatorSupersededError';
  }
}

/** persist() failed: the checkpoint was aborted (or will be resolved by restore()). */
export class CheckpointError extends PsError {
  constructor(
    message: string,
    readonly id: number,
    override readonly cause?: Error,
  ) {
    super(message, (cause as PsError | undefined)?.code, (cause as PsError | undefined)?.shard, (cause as PsError | undefined)?.reason);
    this.name = 'CheckpointError';
  }
}
