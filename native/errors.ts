// Error classes of the engine. The addon throws plain Errors whose message
// starts with "CODE: "; the wrapper turns them into these classes so callers
// (and the gRPC layer, which maps codes to status codes) can branch on them.
// The codes are the engine's list (PMEMPS_ERROR_CODES in native/src/common.h,
// exported by the addon); the type below restates it for the compiler, and
// test/engine.test.ts checks the two agree.

export type EngineErrorCode =
  | 'INVALID_ARGUMENT' // bad buffer lengths, NaN/Inf gradients, bad specs
  | 'NOT_FOUND' // unknown table, unknown checkpoint id
  | 'ALREADY_EXISTS' // a table with the same name and another spec
  | 'OUT_OF_SPACE' // the pool cannot hold the new rows
  | 'FAILED_PRECONDITION' // checkpoint protocol order, pushes blocked, closed engine
  | 'LOCKED' // another process holds the pool directory
  | 'CORRUPT' // damaged pool metadata
  | 'INCOMPATIBLE' // a pool of another layout or version
  | 'IO' // the filesystem refused something
  | 'TOO_LARGE' // a reply above the caller's limit (Engine.pull maxBytes)
  | 'INTERNAL';

export class EngineError extends Error {
  readonly code: EngineErrorCode;
  constructor(code: EngineErrorCode, message: string) {
    super(message);
    this.name = 'EngineError';
    this.code = code;
  }
}

/** Converts an error thrown by the addon ("CODE: message", CODE one of `codes`, the addon's list) into an EngineError. */
export function fromNative(err: unknown, codes: ReadonlySet<string>): Error {
  if (!(err instanceof Error)) return new EngineError('INTERNAL', String(err));
  const m = /^([A-Z_]+): ([\s\S]*)$/.exec(err.message);
  if (m && codes.has(m[1])) {
    const e = new EngineError(m[1] as EngineErrorCode, m[2]);
    e.stack = `EngineError: ${m[2]}\n` + (err.stack ?? '').split('\n').slice(1).join('\n');
    return e;
  }
  if (err instanceof TypeError || err instanceof RangeError) return new EngineError('INVALID_ARGUMENT', err.message);
  return err;
}
