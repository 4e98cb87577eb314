// The fuzz and abuse suite under --auth-tokens (issue 8). The same harness,
// generator and seeds as without auth (test/fuzz.lib.ts); what changes is
// the authorization the fuzz requests carry:
//
//  * admin: every request carries the admin token, so the door lets all of
//    them through and every check of the run without auth must hold as is.
//  * reader: every request carries a reader token; the calls the role table
//    (server/auth.ts METHOD_ROLES) gives to trainers or admins must come back
//    PERMISSION_DENIED, the reads are judged as usual.
//  * none: no valid authorization at all, drawn per request from the seed:
//    no header, wrong or near-miss tokens, other schemes, empty, 64 KiB,
//    non-ASCII bytes, the header repeated, the admin token in a header the
//    server must not read. Every request must come back UNAUTHENTICATED.
//
// In both refused modes the harness (always admin) reads the server's whole
// observable state before and after every batch and it must not move a bit.
// The harness's own calls carry the admin token in every mode.
//
// grpc-js and node:http2 refuse to send two authorization headers or a
// non-ASCII header value, so those go out through a node:http2 session whose
// socket appends raw HPACK fields to each request's header block
// (HeaderSplicer): the server's HTTP/2 layer sees exactly those bytes.
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { Duplex } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { SERVICE_PATH } from '../proto/load';
import { R } from './fuzz.gen';
import { decodeResponse, type Outcome } from './fuzz.wire';

export type AuthMode = 'admin' | 'reader' | 'none';
export const AUTH_MODES: readonly AuthMode[] = ['admin', 'reader', 'none'];

/** Fixed tokens: nothing depends on their randomness, and a finding may quote them. */
export const FUZZ_TOKENS = {
  admin: 'fuzz-admin-token-7c1e93a0b25d4f86',
  reader: 'fuzz-reader-token-2b8f04d6e1a9c357',
} as const;

export const TOKENS_FILE_TEXT = `${FUZZ_TOKENS.admin} admin fuzz-admin\n${FUZZ_TOKENS.reader} reader fuzz-reader\n`;

export function bearer(token: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}

/** What one fuzz request presents at the door. */
export interface Presented {
  /** A name for findings: which variant this was. */
  kind: string;
  md: grpc.Metadata;
  /** Raw HPACK fields appended to the request's header block (sent through the splicer). */
  extra?: Buffer;
  /** A presented secret the error details must not echo. */
  secret?: string;
}

// ------------------------------------------------------------ HPACK, just enough

/** HPACK integer with an n-bit prefix (RFC 7541 5.1). */
function hpackInt(first: number, n: number, v: number): Buffer {
  const max = (1 << n) - 1;
  if (v < max) return Buffer.from([first | v]);
  const out = [first | max];
  v -= max;
  while (v >= 128) {
    out.push((v & 0x7f) | 0x80);
    v >>>= 7;
  }
  out.push(v);
  return Buffer.from(out);
}

/**
 * An `authorization` field as a literal that is never indexed (RFC 7541
 * 6.2.3), its name by the static table (index 23), its value raw (no
 * Huffman): it touches neither side's dynamic table, so it can be appended to
 * any header block.
 */
export function authorizationField(value: Buffer): Buffer {
  return Buffer.concat([hpackInt(0x10, 4, 23), hpackInt(0x00, 7, value.length), value]);
}

const FRAME_HEADERS = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;
const CLIENT_PREFACE = 24;

/**
 * A client socket that appends `extra` to the header block of every HEADERS
 * frame the node:http2 client writes (one request at a time, so the frame is
 * that request's). Padding is dropped, priority kept.
 */
class HeaderSplicer extends Duplex {
  extra: Buffer | null = null;
  private pending = Buffer.alloc(0);
  private prefaceLeft = CLIENT_PREFACE;

  constructor(private readonly sock: net.Socket) {
    super();
    sock.on('data', (d) => {
      if (!this.push(d)) sock.pause();
    });
    sock.on('end', () => this.push(null));
    sock.on('error', (e) => this.destroy(e));
    sock.on('close', () => this.destroy());
  }

  override _read(): void {
    this.sock.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.pending = Buffer.concat([this.pending, chunk]);
    const out: Buffer[] = [];
    if (this.prefaceLeft > 0) {
      const n = Math.min(this.prefaceLeft, this.pending.length);
      out.push(this.pending.subarray(0, n));
      this.pending = this.pending.subarray(n);
      this.prefaceLeft -= n;
    }
    while (this.prefaceLeft === 0 && this.pending.length >= 9) {
      const len = this.pending.readUIntBE(0, 3);
      if (this.pending.length < 9 + len) break;
      const frame = this.pending.subarray(0, 9 + len);
      this.pending = this.pending.subarray(9 + len);
      const type = frame[3];
      const flags = frame[4];
      if (type !== FRAME_HEADERS || !this.extra || !(flags & FLAG_END_HEADERS)) {
        out.push(frame);
        continue;
      }
      let p = frame.subarray(9);
      let pad = 0;
      if (flags & FLAG_PADDED) {
        pad = p[0];
        p = p.subarray(1);
      }
      const prio = flags & FLAG_PRIORITY ? p.subarray(0, 5) : Buffer.alloc(0);
      const block = p.subarray(prio.length, p.length - pad);
      const payload = Buffer.concat([prio, block, this.extra]);
      const head = Buffer.from(frame.subarray(0, 9));
      head.writeUIntBE(payload.length, 0, 3);
      head[4] = flags & ~FLAG_PADDED;
      out.push(head, payload);
    }
    if (out.length) this.sock.write(Buffer.concat(out), cb);
    else cb();
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.sock.end(cb);
  }

  override _destroy(e: Error | null, cb: (e?: Error | null) => void): void {
    this.sock.destroy();
    cb(e);
  }
}

/** A gRPC client over the splicer: one call at a time, each with its own appended fields. */
export class SplicedWire {
  private session: http2.ClientHttp2Session | null = null;
  private splicer: HeaderSplicer | null = null;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly endpoint: string) {}

  private open(): { session: http2.ClientHttp2Session; splicer: HeaderSplicer } {
    if (this.session && !this.session.closed && !this.session.destroyed) return { session: this.session, splicer: this.splicer! };
    const [host, port] = [this.endpoint.slice(0, this.endpoint.lastIndexOf(':')), Number(this.endpoint.slice(this.endpoint.lastIndexOf(':') + 1))];
    const splicer = new HeaderSplicer(net.connect(port, host));
    const session = http2.connect(`http://${this.endpoint}`, { createConnection: () => splicer });
    session.on('error', () => undefined);
    this.session = session;
    this.splicer = splicer;
    return { session, splicer };
  }

  call(rpc: string, body: Buffer, deadlineMs: number, path: string | undefined, p: Presented): Promise<Outcome> {
    const run = () => this.callNow(rpc, body, deadlineMs, path ?? `/${SERVICE_PATH}/${rpc}`, p);
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private callNow(rpc: string, body: Buffer, deadlineMs: number, path: string, p: Presented): Promise<Outcome> {
    const t0 = Date.now();
    const { session, splicer } = this.open();
    splicer.extra = p.extra ?? null;
    const headers: http2.OutgoingHttpHeaders = { ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' };
    for (const [k, v] of Object.entries(p.md.getMap())) headers[k] = Buffer.isBuffer(v) ? v.toString('base64') : v;
    return new Promise((resolve) => {
      let status: number | null = null;
      let details = '';
      let reason: string | undefined;
      const chunks: Buffer[] = [];
      const take = (h: http2.IncomingHttpHeaders) => {
        if (h['grpc-status'] === undefined) return;
        status = Number(h['grpc-status']);
        details = decodeURIComponent(String(h['grpc-message'] ?? ''));
        if (h['pmemps-reason'] !== undefined) reason = String(h['pmemps-reason']);
      };
      const st = session.request(headers);
      const timer = setTimeout(() => st.close(http2.constants.NGHTTP2_CANCEL), deadlineMs);
      st.on('response', take);
      st.on('trailers', take);
      st.on('data', (d: Buffer) => chunks.push(d));
      st.on('error', () => undefined);
      st.on('close', () => {
        clearTimeout(timer);
        const ms = Date.now() - t0;
        if (status === null) {
          const timedOut = ms >= deadlineMs;
          resolve({
            code: timedOut ? grpc.status.DEADLINE_EXCEEDED : grpc.status.UNAVAILABLE,
            details: `no grpc-status (stream closed, RST code ${st.rstCode})`,
            ms,
          });
          return;
        }
        if (status !== grpc.status.OK) return resolve({ code: status, details, reason, ms });
        const msg = Buffer.concat(chunks).subarray(5);
        try {
          resolve({ code: grpc.status.OK, details: '', res: decodeResponse(rpc, msg), ms });
        } catch (e) {
          resolve({ code: grpc.status.OK, details: '', badResponse: (e as Error).message, ms });
        }
      });
      const frame = Buffer.alloc(5 + body.length);
      frame.writeUInt32BE(body.length, 1);
      body.copy(frame, 5);
      st.end(frame);
    });
  }

  close(): void {
    this.session?.destroy();
    this.session = null;
  }
}

// ------------------------------------------------------------ what a request presents

const PRINTABLE = '!#$%&()*+-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_abcdefghijklmnopqrstuvwxyz{|}~';

function printable(r: R, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += PRINTABLE[r.int(0, PRINTABLE.length - 1)];
  return s;
}

/** The admin token with one character changed: as close to a valid token as a guess gets. */
function nearMiss(r: R): string {
  const t = FUZZ_TOKENS.admin;
  const i = r.int(0, t.length - 1);
  const c = PRINTABLE[(PRINTABLE.indexOf(t[i]) + r.int(1, PRINTABLE.length - 1)) % PRINTABLE.length];
  return t.slice(0, i) + c + t.slice(i + 1);
}

/** A header value that is no valid authorization (printable ASCII: grpc-js sends it). */
function invalidValue(r: R): { kind: string; value: string; secret?: string } {
  return r.weighted<() => { kind: string; value: string; secret?: string }>([
    [4, () => ({ kind: 'bearer-unknown', ...withSecret('Bearer ', printable(r, r.int(16, 64))) })],
    [3, () => ({ kind: 'bearer-near-miss', ...withSecret('Bearer ', nearMiss(r)) })],
    [1, () => ({ kind: 'bearer-admin-prefix', ...withSecret('Bearer ', FUZZ_TOKENS.admin.slice(0, r.int(1, FUZZ_TOKENS.admin.length - 1))) })],
    [1, () => ({ kind: 'bearer-admin-extended', ...withSecret('Bearer ', FUZZ_TOKENS.admin + printable(r, r.int(1, 4))) })],
    [2, () => ({ kind: 'basic', ...withSecret('Basic ', Buffer.from(`admin:${FUZZ_TOKENS.admin}`).toString('base64')) })],
    [1, () => ({ kind: 'other-scheme', ...withSecret(`${r.pick(['Token', 'Digest', 'Bearer:', 'MAC', 'Negotiate'])} `, FUZZ_TOKENS.admin) })],
    [1, () => ({ kind: 'bare-admin-token', ...withSecret('', FUZZ_TOKENS.admin) })],
    [1, () => ({ kind: 'bearer-two-tokens', ...withSecret('Bearer ', `${FUZZ_TOKENS.admin} ${FUZZ_TOKENS.admin}`) })],
    [2, () => ({ kind: 'empty', value: '' })],
    [1, () => ({ kind: 'bearer-alone', value: r.pick(['Bearer', 'Bearer ', 'bearer   ']) })],
    [2, () => ({ kind: 'bearer-64KiB', value: `Bearer ${'A'.repeat(64 * 1024)}` })],
    [1, () => ({ kind: 'bearer-1032-bytes', value: `Bearer ${'b'.repeat(1025)}` })],
  ])();
}

function withSecret(prefix: string, secret: string): { value: string; secret?: string } {
  return { value: prefix + secret, secret: secret.length >= 8 ? secret : undefined };
}

/** Bytes no grpc-js client sends in a header value: non-ASCII (obs-text), as raw bytes or around a token. */
function nonAscii(r: R): Buffer {
  const hi = () => Buffer.from(Array.from({ length: r.int(1, 24) }, () => r.int(0x80, 0xff)));
  return r.pick([
    () => Buffer.concat([Buffer.from('Bearer '), hi()]),
    () => Buffer.concat([Buffer.from('Bearer '), Buffer.from(FUZZ_TOKENS.admin), hi()]),
    () => Buffer.concat([Buffer.from('Bearer '), hi(), Buffer.from(FUZZ_TOKENS.admin)]),
    () => Buffer.from(`Bearer ${FUZZ_TOKENS.admin.replace('admin', 'ädmin')}`, 'utf8'),
    () => hi(),
  ])();
}

/**
 * The authorization of one fuzz request in the no-token mode: a function of
 * `r` alone (drawn in request order before the batch goes out, so the same
 * seed presents the same headers).
 */
export function presentNone(r: R): Presented {
  const md = new grpc.Metadata();
  return r.weighted<() => Presented>([
    [5, () => ({ kind: 'missing', md })],
    [
      14,
      () => {
        const v = invalidValue(r);
        md.set('authorization', v.value);
        return { kind: v.kind, md, secret: v.secret };
      },
    ],
    [
      3,
      () => {
        // A header the server must not read, carrying the admin token.
        const name = r.pick(['authorisation', 'x-authorization', 'proxy-authorization', 'grpc-authorization', 'authorization-bin']);
        if (name.endsWith('-bin')) md.set(name, Buffer.from(`Bearer ${FUZZ_TOKENS.admin}`));
        else md.set(name, `Bearer ${FUZZ_TOKENS.admin}`);
        return { kind: `admin-token-in-${name}`, md };
      },
    ],
    [3, () => ({ kind: 'non-ascii', md, extra: authorizationField(nonAscii(r)) })],
    [
      3,
      () => {
        // Two to four authorization headers, none valid (node:http2 keeps the first; grpc-js refuses more than one).
        const n = r.int(2, 4);
        const vals = Array.from({ length: n }, () => (r.chance(0.3) ? nonAscii(r) : Buffer.from(invalidValue(r).value.slice(0, 2048))));
        return { kind: `repeated-x${n}`, md, extra: Buffer.concat(vals.map(authorizationField)) };
      },
    ],
  ])();
}

export function presentFor(mode: AuthMode, r: R): Presented {
  if (mode === 'admin') return { kind: 'admin', md: bearer(FUZZ_TOKENS.admin) };
  if (mode === 'reader') return { kind: 'reader', md: bearer(FUZZ_TOKENS.reader) };
  return presentNone(r);
}

/**
 * The calls that change nothing, which a reader may make: the role
 * table, written here rather than read from server/auth.ts so that a call
 * the server wrongly opens to readers is a finding (the suite checks that
 * METHOD_ROLES gives readers exactly these).
 */
export const READS: ReadonlySet<string> = new Set(['Pull', 'PullDense', 'ListTables', 'Status', 'ReadCheckpoint']);

/** The refusal the door owes a request in this mode, or null when it must let it through. */
export function owedRefusal(mode: AuthMode, rpc: string, path: string | undefined): { code: grpc.status; why: string } | null {
  if (mode === 'none') return { code: grpc.status.UNAUTHENTICATED, why: 'no valid authorization' };
  if (mode === 'reader' && (path !== undefined || !READS.has(rpc)))
    return { code: grpc.status.PERMISSION_DENIED, why: `${path ?? rpc} is no read; the token is a reader's` };
  return null;
}
