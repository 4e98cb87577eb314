// Clients that misbehave at the HTTP/2 level, for the transport abuse test
// and benchmark: raw node:http2 sessions that ask for replies and never
// read them (initial window 0), requests whose body never completes, bare
// connections. Plus the server's RSS from /proc.
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import type * as tls from 'node:tls';
import { FAST_CODECS } from '../proto/fast-codec';

export const PULL_PATH = '/pmemps.v1.ParameterServer/Pull';

/** Resident set of a process, MiB (VmRSS of /proc/<pid>/status). */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) / 1024;
}

/** Open file descriptors of a process (sockets included). */
export function openFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** A gRPC length-prefixed message. */
export function grpcFrame(msg: Buffer): Buffer {
  const b = Buffer.alloc(5 + msg.length);
  b.writeUInt32BE(msg.length, 1);
  msg.copy(b, 5);
  return b;
}

/** The first `sentBytes` of a gRPC message announced as `announcedBytes` long: a request body that never finishes. */
export function unfinishedFrame(announcedBytes: number, sentBytes: number): Buffer {
  const b = Buffer.alloc(sentBytes, 7);
  b[0] = 0;
  b.writeUInt32BE(announcedBytes, 1);
  return b;
}

export function pullFrame(table: string, keys: Buffer): Buffer {
  return grpcFrame(FAST_CODECS.Pull.request.encode({ table, keys }));
}

export const GRPC_HEADERS = { ':method': 'POST', 'content-type': 'application/grpc', te: 'trailers' };

/** How a stream of a raw session ended: the gRPC status it got (headers or trailers) and the RST code. */
export interface StreamEnd {
  grpcStatus: number | null;
  grpcMessage: string;
  rstCode: number;
}

export function streamEnd(st: http2.ClientHttp2Stream): Promise<StreamEnd> {
  let grpcStatus: number | null = null;
  let grpcMessage = '';
  const take = (h: http2.IncomingHttpHeaders): void => {
    if (h['grpc-status'] !== undefined) {
      grpcStatus = Number(h['grpc-status']);
      grpcMessage = decodeURIComponent(String(h['grpc-message'] ?? ''));
    }
  };
  st.on('response', take);
  st.on('trailers', take);
  st.on('error', () => {});
  return new Promise((resolve) => st.once('close', () => resolve({ grpcStatus, grpcMessage, rstCode: st.rstCode ?? 0 })));
}

/** A raw HTTP/2 connection; `closed` resolves when it closes, `goaway` holds the code of a GOAWAY the server sent. */
export class RawSession {
  readonly session: http2.ClientHttp2Session;
  readonly closed: Promise<void>;
  readonly connected: Promise<void>;
  goaway: number | null = null;
  /** The server's SETTINGS arrived: the server took the connection. */
  accepted = false;
  isClosed = false;
  closedByUs = false;

  /** With `o.tls`, the connection speaks TLS; `o.headers` go on every request (e.g. authorization). */
  constructor(
    endpoint: string,
    settings: http2.Settings = {},
    private readonly o: { tls?: tls.ConnectionOptions; headers?: Record<string, string> } = {},
  ) {
    this.session = http2.connect(`${o.tls ? 'https' : 'http'}://${endpoint}`, { settings, ...o.tls });
    this.session.on('error', () => {});
    this.session.on('goaway', (code) => (this.goaway = code));
    this.closed = new Promise((r) =>
      this.session.once('close', () => {
        this.isClosed = true;
        r();
      }),
    );
    // Connected once the server's SETTINGS arrived (or closed before).
    this.connected = new Promise((r) => {
      this.session.once('remoteSettings', () => {
        this.accepted = true;
        r();
      });
      this.session.once('close', () => r());
    });
  }

  request(path: string, body: Buffer | null, end = true): { stream: http2.ClientHttp2Stream; done: Promise<StreamEnd> } {
    const stream = this.session.request({ ...GRPC_HEADERS, ...this.o.headers, ':path': path }, { endStream: false });
    const done = streamEnd(stream);
    if (body && end) stream.end(body);
    else if (body) stream.write(body);
    else if (end) stream.end();
    return { stream, done };
  }

  destroy(): void {
    this.closedByUs = true;
    this.session.destroy();
  }
}

/**
 * A slow reader: a connection that advertises a zero stream window and
 * sends `pulls` pulls it will never read the replies of. `replying`
 * resolves when the server has started a reply (its response headers
 * arrived: the rows are computed and queued).
 */
export function slowReader(
  endpoint: string,
  table: string,
  keys: Buffer,
  pulls: number,
  o: ConstructorParameters<typeof RawSession>[2] = {},
): { raw: RawSession; ends: Promise<StreamEnd[]>; replying: Promise<void> } {
  const raw = new RawSession(endpoint, { initialWindowSize: 0 }, o);
  const frame = pullFrame(table, keys);
  const ends: Promise<StreamEnd>[] = [];
  let replying!: () => void;
  const started = new Promise<void>((r) => (replying = r));
  for (let i = 0; i < pulls; i++) {
    const { stream, done } = raw.request(PULL_PATH, frame);
    // Headers without a grpc-status open a reply; with one they are a refusal.
    stream.on('response', (h) => h['grpc-status'] === undefined && replying());
    ends.push(done);
  }
  return { raw, ends: Promise.all(ends), replying: started };
}

/** A bare TCP connection that never speaks HTTP/2; `closed` resolves when the server closes it. */
export function bareSocket(port: number): { socket: net.Socket; closed: Promise<void> } {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  socket.resume();
  return { socket, closed: new Promise((r) => socket.once('close', () => r())) };
}

/** Rejects after `ms` with a message saying what did not happen: a guard against hanging on a broken server, not a synchronisation. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
    }),
  ]);
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}
