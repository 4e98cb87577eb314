// Who may call what: TLS (and mutual TLS) on the gRPC port, and bearer
// tokens with roles, checked in one place — a grpc-js server interceptor
// that sees every call's metadata before any handler runs. A refused call
// never reaches its handler: grpc-js reads the request body only once the
// metadata has been passed on, so it does no work and changes nothing.
//
// Tokens are found by their SHA-256 digest and the match confirmed with
// crypto.timingSafeEqual: what a lookup's timing can leak is about the
// digest, and a digest close to a real one gives no token close to it (a
// comparison of the raw strings would leak the token's prefix). One lookup,
// not a scan of every entry: a scan costs 0.1 us per token, 1 ms per call at
// 10,000 tokens. A token is never logged, echoed in a status or named in a
// file error: the entry's name stands for it.
import { createHash, createPrivateKey, timingSafeEqual, X509Certificate } from 'node:crypto';
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { log } from './log';
import type { TlsFiles } from './config';

export type Role = 'reader' | 'trainer' | 'admin';
const ROLES: readonly Role[] = ['reader', 'trainer', 'admin'];
const RANK: Record<Role, number> = { reader: 0, trainer: 1, admin: 2 };

/**
 * The minimum role of every RPC of pmemps.v1.ParameterServer (README's
 * "Security" table). test/auth.test.ts checks that it names exactly the
 * proto's methods; a method missing here needs admin (fail closed).
 */
export const METHOD_ROLES: Readonly<Record<string, Role>> = {
  // Serving and inspection: changes nothing.
  Pull: 'reader',
  PullDense: 'reader',
  ListTables: 'reader',
  Status: 'reader',
  ReadCheckpoint: 'reader',
  // Everything the SDK does during a job; Restore included, since rolling
  // a job back to its checkpoint is part of training.
  Push: 'trainer',
  PushDense: 'trainer',
  Barrier: 'trainer',
  Checkpoint: 'trainer',
  RaiseBallot: 'trainer',
  Restore: 'trainer',
  CreateTable: 'trainer',
  UpdateTable: 'trainer',
  SetDense: 'trainer',
  SetIdentity: 'trainer',
  DropTable: 'admin',
};

export const PS_SERVICE = 'pmemps.v1.ParameterServer';
/**
 * Methods any client may call without a token: load balancers and
 * orchestrators probe health with Check. Watch holds a stream open for as
 * long as the client likes, so it needs a token: 150,000 unauthenticated
 * Watch streams took 1.5 GiB and none was ever closed (a review's attack).
 */
const OPEN_METHODS = new Set(['/grpc.health.v1.Health/Check']);
const HEALTH_SERVICE = 'grpc.health.v1.Health';

export const AUTH_LIMITS = {
  /** A token: printable ASCII without spaces (it travels in an HTTP/2 header). */
  tokenMinBytes: 16,
  tokenMaxBytes: 1024,
  /** The authorization header: "Bearer " and the longest token. */
  headerBytes: 7 + 1024,
  nameBytes: 64,
  tokens: 10_000,
  /** Tokens file and each PEM file. */
  fileBytes: 1 << 20,
} as const;

/** A bad --tls-* or --auth-tokens file: the server refuses to start (exit code 2), naming the fix. */
export class SecurityConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SecurityConfigError';
  }
}

/** The minimum role of a full method path ("/pkg.Service/Method"); null for an open service. */
export function requiredRole(path: string): Role | null {
  if (OPEN_METHODS.has(path)) return null;
  const m = /^\/([^/]+)\/([^/]+)$/.exec(path);
  if (m && m[1] === HEALTH_SERVICE && m[2] === 'Watch') return 'reader';
  if (m && m[1] === PS_SERVICE && Object.hasOwn(METHOD_ROLES, m[2])) return METHOD_ROLES[m[2]];
  return 'admin';
}

// ------------------------------------------------------------ tokens file

export interface TokenEntry {
  /** SHA-256 of the token. */
  digest: Buffer;
  role: Role;
  /** What logs say instead of the token: the third field, or "line N". */
  name: string;
}

const TOKEN_CHARS = /^[\x21-\x7e]+$/;
const NAME_CHARS = /^[A-Za-z0-9._@:+-]+$/;

function sha256(s: string): Buffer {
  return createHash('sha256').update(s, 'utf8').digest();
}

function readBounded(file: string, what: string): Buffer {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw new SecurityConfigError(`${what} ${file}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  if (!st.isFile()) throw new SecurityConfigError(`${what} ${file} is not a regular file`);
  if (st.size > AUTH_LIMITS.fileBytes) throw new SecurityConfigError(`${what} ${file} is ${st.size} bytes, above the ${AUTH_LIMITS.fileBytes}-byte limit`);
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new SecurityConfigError(`${what} ${file}: ${(e as Error).message}`);
  }
}

/**
 * Parses a tokens file: one `token role [name]` per line, `#` comments and
 * blank lines allowed. An error names the file and line and never quotes a
 * field (a token written in the wrong column must not reach a log).
 */
export function parseTokens(text: string, file = 'tokens file'): TokenEntry[] {
  const out: TokenEntry[] = [];
  const lineOf = new Map<string, number>();
  const names = new Set<string>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const at = `${file}:${i + 1}`;
    let fields = lines[i]
      .trim()
      .split(/\s+/)
      .filter((f) => f !== '');
    const comment = fields.findIndex((f) => f.startsWith('#'));
    if (comment >= 0) fields = fields.slice(0, comment);
    if (fields.length === 0) continue;
    if (fields.length > 3) throw new SecurityConfigError(`${at}: ${fields.length} fields; a line is "token role [name]"`);
    const [token, role, name] = fields;
    if (!TOKEN_CHARS.test(token) || token.length < AUTH_LIMITS.tokenMinBytes || token.length > AUTH_LIMITS.tokenMaxBytes)
      throw new SecurityConfigError(
        `${at}: the token must be ${AUTH_LIMITS.tokenMinBytes}..${AUTH_LIMITS.tokenMaxBytes} printable ASCII characters (e.g. openssl rand -hex 32)`,
      );
    if (role === undefined) throw new SecurityConfigError(`${at}: no role; a line is "token role [name]" with role reader, trainer or admin`);
    if (!(ROLES as readonly string[]).includes(role)) throw new SecurityConfigError(`${at}: the second field must be a role: reader, trainer or admin`);
    if (name !== undefined && (name.length > AUTH_LIMITS.nameBytes || !NAME_CHARS.test(name)))
      throw new SecurityConfigError(`${at}: the name must be 1..${AUTH_LIMITS.nameBytes} characters of A-Z a-z 0-9 . _ @ : + -`);
    const digest = sha256(token);
    const key = digest.toString('hex');
    const seen = lineOf.get(key);
    if (seen !== undefined) throw new SecurityConfigError(`${at}: the same token as line ${seen}; each token once`);
    lineOf.set(key, i + 1);
    const label = name ?? `line ${i + 1}`;
    if (names.has(label)) throw new SecurityConfigError(`${at}: the name "${label}" is used twice; logs tell callers apart by it`);
    names.add(label);
    out.push({ digest, role: role as Role, name: label });
    if (out.length > AUTH_LIMITS.tokens) throw new SecurityConfigError(`${file}: more than ${AUTH_LIMITS.tokens} tokens`);
  }
  if (out.length === 0) throw new SecurityConfigError(`${file} holds no token; add a line "token role [name]" (nobody could call the server)`);
  return out;
}

/** The tokens of --auth-tokens, re-read on SIGHUP. */
export class TokenStore {
  private entries: TokenEntry[];
  private byDigest: Map<string, TokenEntry>;

  constructor(readonly file: string) {
    this.entries = this.read();
    this.byDigest = TokenStore.index(this.entries);
  }

  private static index(entries: TokenEntry[]): Map<string, TokenEntry> {
    return new Map(entries.map((t) => [t.digest.toString('base64'), t]));
  }

  private read(): TokenEntry[] {
    return parseTokens(readBounded(this.file, '--auth-tokens').toString('utf8'), this.file);
  }

  get size(): number {
    return this.entries.length;
  }

  /** Re-reads the file; a bad file keeps the tokens in force and logs why. True if reloaded. */
  reload(): boolean {
    try {
      const entries = this.read();
      this.byDigest = TokenStore.index(entries);
      this.entries = entries;
    } catch (e) {
      log.error({ file: this.file, reason: (e as Error).message }, 'tokens file not reloaded; the previous tokens stay in force');
      return false;
    }
    log.info({ file: this.file, tokens: this.entries.length, names: this.entries.map((t) => t.name) }, 'tokens file reloaded');
    return true;
  }

  /** The entry of a token: found by digest, confirmed in constant time. */
  lookup(token: string): TokenEntry | undefined {
    const d = sha256(token);
    const t = this.byDigest.get(d.toString('base64'));
    return t && timingSafeEqual(d, t.digest) ? t : undefined;
  }
}

// ------------------------------------------------------------ the door

type Refusal = { code: grpc.status; details: string; metadata: grpc.Metadata };

function refusal(code: grpc.status, details: string, reason: string): Refusal {
  const metadata = new grpc.Metadata();
  metadata.set('pmemps-reason', reason);
  return { code, details, metadata };
}

/** Why a call with this metadata may not run `path`, or null if it may. */
export function authorize(store: TokenStore, path: string, md: grpc.Metadata): Refusal | null {
  const need = requiredRole(path);
  if (need === null) return null;
  const values = md.get('authorization');
  if (values.length === 0)
    return refusal(
      grpc.status.UNAUTHENTICATED,
      'this server requires a token: send metadata "authorization: Bearer <token>" (the SDK\'s token option)',
      'unauthenticated',
    );
  if (values.length > 1) return refusal(grpc.status.UNAUTHENTICATED, 'send one authorization header, not several', 'unauthenticated');
  const v = values[0];
  if (typeof v !== 'string' || v.length > AUTH_LIMITS.headerBytes)
    return refusal(
      grpc.status.UNAUTHENTICATED,
      `the authorization header must be "Bearer <token>" of at most ${AUTH_LIMITS.headerBytes} bytes`,
      'unauthenticated',
    );
  const m = /^Bearer +(\S+)$/i.exec(v);
  if (!m) return refusal(grpc.status.UNAUTHENTICATED, 'the authorization header must be "Bearer <token>"', 'unauthenticated');
  const who = store.lookup(m[1]);
  if (!who) return refusal(grpc.status.UNAUTHENTICATED, 'the token is not known to this server (mistyped, revoked, or for another server)', 'unauthenticated');
  if (RANK[who.role] < RANK[need]) {
    log.warn({ rpc: path, caller: who.name, role: who.role, needs: need }, 'call refused: role too low');
    return refusal(
      grpc.status.PERMISSION_DENIED,
      `${path.split('/').pop()} needs role ${need} or above; this token's role is ${who.role}`,
      'permission_denied',
    );
  }
  return null;
}

/** The server interceptor that checks every call's token; put it last in the server's list (it then sees a call first). */
export function authInterceptor(store: TokenStore): grpc.ServerInterceptor {
  return (method, call) => {
    if (requiredRole(method.path) === null) return new grpc.ServerInterceptingCall(call);
    return new grpc.ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (md, pass) => {
            const refused = authorize(store, method.path, md);
            if (refused) {
              log.debug({ rpc: method.path, code: refused.code }, 'call refused at the door');
              call.sendStatus(refused);
            } else pass(md);
          },
        }),
    });
  };
}

// ------------------------------------------------------------ TLS

function parseCert(pem: Buffer, what: string, file: string): X509Certificate {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(pem);
  } catch (e) {
    throw new SecurityConfigError(`${what} ${file} is not a PEM certificate (${(e as Error).message})`);
  }
  const now = Date.now();
  if (Date.parse(cert.validTo) < now) throw new SecurityConfigError(`${what} ${file} expired on ${cert.validTo}; issue a new one`);
  if (Date.parse(cert.validFrom) > now)
    throw new SecurityConfigError(`${what} ${file} is not valid before ${cert.validFrom}; check the clock or the certificate`);
  return cert;
}

/**
 * The credentials of the gRPC port: plaintext without `tls`, else TLS with
 * the files checked first (readable, PEM, in date, key matching the
 * certificate), so a mistake is a message at start, not a failed handshake
 * for every client.
 */
export function serverCredentials(tls: TlsFiles | undefined): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  const certPem = readBounded(tls.certFile, '--tls-cert');
  const keyPem = readBounded(tls.keyFile, '--tls-key');
  const cert = parseCert(certPem, '--tls-cert', tls.certFile);
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (e) {
    throw new SecurityConfigError(`--tls-key ${tls.keyFile} is not a PEM private key (${(e as Error).message}); an encrypted key must be decrypted first`);
  }
  if (!cert.checkPrivateKey(key)) throw new SecurityConfigError(`--tls-key ${tls.keyFile} is not the key of --tls-cert ${tls.certFile}`);
  let ca: Buffer | null = null;
  if (tls.clientCaFile) {
    ca = readBounded(tls.clientCaFile, '--tls-client-ca');
    const c = parseCert(ca, '--tls-client-ca', tls.clientCaFile);
    if (!c.ca) throw new SecurityConfigError(`--tls-client-ca ${tls.clientCaFile} is not a CA certificate (basicConstraints CA:TRUE)`);
  }
  return grpc.ServerCredentials.createSsl(ca, [{ private_key: keyPem, cert_chain: certPem }], ca !== null);
}
