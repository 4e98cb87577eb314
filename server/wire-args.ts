// Every field of every request is checked here, at the door, before it can
// reach the shard or the engine: a bound on every length and count, valid
// UTF-8 for every string, ids within their range. A refusal names the field
// and its bound and never echoes the value back (a 1 MiB name must not make a
// 1 MiB error). Each bound is listed in README's "Limits" table.
import { MAX_DENSE_NAME } from './dense';
import { MAX_WORKER_ID_BYTES } from './exactly-once';
import { invalid } from './status-codes';

export const LIMITS = {
  /** Table names: the engine's own rule for CreateTable. */
  tableName: 64,
  denseName: MAX_DENSE_NAME,
  workerId: MAX_WORKER_ID_BYTES,
  barrierName: 256,
  /** optimizer.type, initializer.type and hyperparameter names. */
  shortName: 32,
  /** Names in one PullDense, tensors in one PREPARE. */
  namesPerCall: 4096,
  /** Hyperparameters in one optimizer or UpdateTable. */
  params: 16,
  /** Parties of one barrier. */
  parties: 65_536,
} as const;

/**
 * A string field: at most `max` UTF-8 bytes, and valid UTF-8. The decoder
 * turns invalid bytes into U+FFFD, so two different invalid names would
 * decode to one string (two workers would share an exactly-once record): a
 * string holding U+FFFD is refused rather than guessed.
 */
export function str(v: unknown, what: string, max: number, opts: { optional?: boolean } = {}): string {
  if (v === undefined || v === null) v = '';
  if (typeof v !== 'string') throw invalid(`${what} must be a string`);
  if (v.length === 0) {
    if (opts.optional) return v;
    throw invalid(`${what} is required`);
  }
  // Cheap bound first: a UTF-16 length above max can not be <= max bytes.
  if (v.length > max || Buffer.byteLength(v, 'utf8') > max) throw invalid(`${what} is longer than ${max} bytes`);
  if (v.includes('\uFFFD')) throw invalid(`${what} is not valid UTF-8 (or holds U+FFFD)`);
  return v;
}

export function tableName(v: unknown, what = 'table'): string {
  return str(v, `${what} name`, LIMITS.tableName);
}

export function workerId(v: unknown): string {
  return str(v, 'worker_id', LIMITS.workerId, { optional: true });
}

export function keysArg(keys: unknown): Buffer {
  if (!Buffer.isBuffer(keys) || keys.length % 8 !== 0)
    throw invalid(`keys must be packed uint64 (a multiple of 8 bytes), got ${Buffer.isBuffer(keys) ? keys.length : 0} bytes`);
  return keys;
}

export function floatsArg(b: unknown, what: string): Buffer {
  if (!Buffer.isBuffer(b) || b.length % 4 !== 0)
    throw invalid(`${what} must be packed float32 (a multiple of 4 bytes), got ${Buffer.isBuffer(b) ? b.length : 0} bytes`);
  return b;
}

// Ids, seqs, ballots and incarnations stay below 2^52, so that one more
// (a new ballot or id) is always representable.
const MAX_ID = 2 ** 52;
export function idArg(v: unknown, what: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0 || n >= MAX_ID) throw invalid(`${what} must be an integer below 2^52`);
  return n;
}

export function listArg<T>(v: unknown, what: string, max: number): T[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalid(`${what} must be a list`);
  if (v.length > max) throw invalid(`${what} has ${v.length} entries; at most ${max}`);
  return v as T[];
}

/** A map<string, double> of hyperparameters, as an object with only own, bounded keys. */
export function paramsArg(v: unknown, what: string): Record<string, number> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object') throw invalid(`${what} must be a map of names to numbers`);
  const entries = Object.entries(v as Record<string, unknown>);
  if (entries.length > LIMITS.params) throw invalid(`${what} has ${entries.length} entries; at most ${LIMITS.params}`);
  const out: Record<string, number> = Object.create(null);
  for (const [k, x] of entries) {
    str(k, `${what} name`, LIMITS.shortName);
    if (typeof x !== 'number') throw invalid(`${what}: value of a hyperparameter must be a number`);
    out[k] = x;
  }
  return out;
}
