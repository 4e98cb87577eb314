// The server's own refusals: everything the server (not the engine) decides
// to refuse — bad input, protocol calls out of order, fences, limits — is a
// ServerError. Its kind becomes the gRPC code (server/status-codes.ts) and,
// lowercased, the `pmemps-reason` trailer clients branch on; EngineError is
// left for what the engine itself reports (a full pool, a corrupt one, I/O).

export type ServerErrorKind =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'FAILED_PRECONDITION'
  | 'OUT_OF_SPACE'
  | 'STALE_BALLOT'
  | 'INCARNATION'
  | 'UNAVAILABLE'
  | 'TOO_OLD'
  | 'WRONG_SHARD'
  | 'TOO_LARGE'
  | 'NEEDS_RESTORE'
  | 'BALLOT_STEP'
  | 'ID_STEP';

export class ServerError extends Error {
  constructor(
    readonly kind: ServerErrorKind,
    message: string,
    /** Extra trailers a client acts on (e.g. pmemps-next-seq with TOO_OLD). */
    readonly trailers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ServerError';
  }
}

/** Bad input: INVALID_ARGUMENT, nothing changed. */
export function invalid(message: string): ServerError {
  return new ServerError('INVALID_ARGUMENT', message);
}
