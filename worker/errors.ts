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

  /** With reason "too_old": the lowest seq the shard would judge for this worker (its pmemps-next-seq trailer). */
  nextSeq?: number;

  /** Thrown by push() or pushDense(): what the push left, and how to finish it exactly once. */
  pushOutcome?: PushOutcome;
}

/**
 * A push goes to each shard as its own call, applied or refused per shard:
 * when one shard refuses its part (or stays unreachable), the parts of the
 * others may be applied. Pushing the batch again would apply those twice;
 * retry() re-sends only the parts that failed, under their first seqs, so a
 * part that was applied after all (its answer lost) is not applied again.
 */
export interface PushOutcome {
  /** Shards that applied their whole part. */
  appliedShards: number[];
  /** Shards with a part that failed (on an unreachable shard, it may still have been applied once). */
  failedShards: number[];
  /** Of failedShards, those where other parts (chunks of a large batch) were applied: re-pushing their keys by hand would apply those twice. */
  partlyAppliedShards: number[];
  /** Re-sends the failed parts only; throws as push() does, with the outcome of this retry. */
  retry(): Promise<void>;
}

/**
 * The server refused the caller: UNAUTHENTICATED (no token, or one it does
 * not know: check the token option) or PERMISSION_DENIED (the token's role
 * is too low for the call: README's "Security" table). Never retried.
 */
export class AccessDeniedError extends PsError {
  constructor(message: string, code: grpc.status.UNAUTHENTICATED | grpc.status.PERMISSION_DENIED, shard?: number) {
    super(message, code, shard, code === grpc.status.UNAUTHENTICATED ? 'unauthenticated' : 'permission_denied');
    this.name = 'AccessDeniedError';
  }
}

/**
 * The TLS handshake with a server failed on its certificate or ours (an
 * untrusted or expired certificate, a name that does not match, a client
 * certificate missing or refused): check the tls options (ca, cert, key,
 * serverName). Not retried, since retrying cannot fix it; gRPC reports it
 * as UNAVAILABLE, like a server that is down.
 */
export class TlsError extends PsError {
  constructor(message: string, shard?: number) {
    super(message, grpc.status.UNAVAILABLE, shard, 'tls');
    this.name = 'TlsError';
  }
}

/**
 * A server's state is no longer what this worker pushed into: it came back
 * after a crash at its last committed checkpoint, or another worker restored
 * the cluster. Call restore() (one worker), or rejoin() when another worker
 * of the job is restoring, and resume from the step it returns.
 */
export class ServerRestartedError extends PsError {
  constructor(
    shard: number,
    readonly endpoint: string,
    /** 'restore': another worker restored the cluster; 'crash': the server came back after a crash and no restore has run since. */
    readonly why: 'crash' | 'restore',
  ) {
    super(
      `server ${endpoint} (shard ${shard}) ${why === 'restore' ? 'was restored to a checkpoint by another worker' : 'restarted after a crash, at its last committed checkpoint'}; call restore() (or rejoin() if another worker of this job restores) and resume from the step it returns`,
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
