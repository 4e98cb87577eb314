// Guards of the server's HTTP/2 transport against clients that do not play
// along: a client that asks for replies and never reads them (a zero
// HTTP/2 window), one that never finishes sending a request, and floods of
// connections. Without them each such client pins server memory for as
// long as it likes: a reply the client does not read stays in the stream's
// write queue, and grpc-js sets no stream, idle or connection limit.
//
// What it does, all per pserver options (README's option table):
// - MAX_CONCURRENT_STREAMS, an idle timeout and a cap on connections
//   (grpc-js options and net.Server.maxConnections).
// - A byte budget of unsent replies, per connection and in total. A Pull
//   reserves its reply size before the engine computes it (admitReply, the
//   one call the Pull handler makes) and waits while the budget is full;
//   other replies are charged as they are sent. A reservation is returned
//   when the reply has left (grpc-js sends the status from the write
//   callback) or the call ends. A reply that waits twice --stall-seconds
//   (by then every stalled connection that held budget is gone) fails
//   with RESOURCE_EXHAUSTED.
// - A connection that has replies queued and finishes none of them for
//   --stall-seconds is destroyed (GOAWAY ENHANCE_YOUR_CALM), which drops its
//   write queues.
// - A request whose body has not fully arrived after --request-seconds is
//   answered DEADLINE_EXCEEDED and its stream reset, freeing what grpc-js
//   buffered of it.
// - A byte budget of requests held, per connection and in total.
//   grpc-js reads HTTP/2 DATA as it comes (so flow-control windows bound
//   nothing) and buffers a message until it is complete: without a budget,
//   1,024 streams x --max-message-mb per connection, on many connections,
//   run the server out of memory well within --request-seconds; and a
//   request that arrived is held by its handler while it waits (for the
//   engine, a checkpoint, reply budget). A stream's bytes count from its
//   first DATA until it closes (its call ended); over the connection's
//   budget its newest streams still arriving are refused, over the total
//   the newest of the connection holding the most.
//   A stream is charged the socket reads its DATA came in, not only its
//   own bytes of them (countIncoming).
//
// The calls are seen through a grpc-js server interceptor (public API); the
// connections through grpc-js's http2 servers, a private field (as
// widenServerWindow in pserver.ts).
import type { EventEmitter } from 'node:events';
import * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { log } from './log';

export interface TransportLimits {
  /** Connections served at once; more are closed on accept. */
  maxConnections: number;
  /** Concurrent calls per connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  maxStreams: number;
  /** A connection without a call for this long is closed (GOAWAY; gRPC clients reconnect on their next call). */
  idleSeconds: number;
  /** Unsent reply bytes one connection may hold, MiB. */
  replyMbPerConnection: number;
  /** Unsent reply bytes all connections together may hold, MiB. */
  replyMb: number;
  /** A connection whose queued replies make no progress for this long is closed; a reply waits at most twice this long for budget. */
  stallSeconds: number;
  /** A request whose body has not fully arrived after this long is refused and its stream reset. */
  requestSeconds: number;
  /** Bytes of requests not yet complete one connection may have sent, MiB; above --max-message-mb, so one request always fits. */
  recvMbPerConnection: number;
  /** Bytes of requests not yet complete all connections together may have sent, MiB. */
  recvMb: number;
}

/**
 * Defaults. 1,024 streams leave room for the SDK's 256 pushes in flight
 * per shard plus its pull chunks (worker/client.ts). 16 MiB per connection
 * is one SDK chunk (MAX_CHUNK_BYTES): a connection always gets one reply in
 * flight whatever its size, and loopback or a datacenter link drains 16 MiB
 * in milliseconds, so a reader that keeps up never waits long on it.
 */
export const DEFAULT_TRANSPORT_LIMITS: TransportLimits = {
  maxConnections: 4096,
  maxStreams: 1024,
  idleSeconds: 300,
  replyMbPerConnection: 16,
  replyMb: 256,
  stallSeconds: 20,
  requestSeconds: 60,
  recvMbPerConnection: 256,
  recvMb: 1024,
};

/** A reply refused for lack of reply budget: RESOURCE_EXHAUSTED (server/status-codes.ts). */
export class OverloadError extends Error {
  override name = 'OverloadError';
}

const MB = 2 ** 20;

/** A request the server holds: its body still arriving, or arrived and its call not yet ended. */
interface Incoming {
  stream: http2.ServerHttp2Stream;
  conn: RecvConn;
  /** Bytes charged to it so far: the socket reads its DATA came in (see countIncoming). */
  bytes: number;
  /** The socket read its last chunk was a slice of. */
  lastRead: ArrayBufferLike | null;
  /** Its whole body arrived: its call is being handled (and may wait: for the engine, a checkpoint, reply budget). */
  arrived: boolean;
}

interface RecvConn {
  session: http2.Http2Session;
  /** The requests it has the server hold, oldest first. */
  incoming: Set<Incoming>;
  bytes: number;
}

interface Conn {
  key: string;
  session: http2.ServerHttp2Session | null;
  /** Reply bytes reserved or queued and not yet sent. */
  bytes: number;
  /** Reply messages handed to the transport and not yet written out. */
  sending: number;
  stallTimer: NodeJS.Timeout | null;
  /** Calls seen on it (a connection grpc-js reached us without: dropped with its last call). */
  calls: number;
  /** Its session has closed. */
  gone: boolean;
}

interface CallState {
  conn: Conn;
  /** Budget reserved by admitReply for a reply not yet sent. */
  reserved: number;
  /** Bytes of messages handed to the transport whose write has not completed. */
  inFlight: number;
  /** How many such messages. */
  messages: number;
  ended: boolean;
}

interface Waiter {
  call: CallState;
  bytes: number;
  resolve: () => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

// Abuse shows up in bursts (a flood, a misbehaving job): one line per kind
// and per 10 s, with the number of events it stands for.
class ThrottledLog {
  private last = new Map<string, { at: number; suppressed: number }>();
  warn(kind: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    const s = this.last.get(kind);
    if (s && now - s.at < 10_000) {
      s.suppressed++;
      return;
    }
    log.warn({ ...fields, ...(s?.suppressed ? { similarEventsNotLogged: s.suppressed } : {}) }, msg);
    this.last.set(kind, { at: now, suppressed: 0 });
  }
}

/** Sum of the Buffers of a reply message (its bytes fields), a few levels deep. */
function bufferBytes(v: unknown, depth = 3): number {
  if (Buffer.isBuffer(v) || ArrayBuffer.isView(v)) return (v as ArrayBufferView).byteLength;
  if (depth === 0 || v === null || typeof v !== 'object') return 0;
  let n = 0;
  for (const x of Array.isArray(v) ? v : Object.values(v as object)) n += bufferBytes(x, depth - 1);
  return n;
}

function keyOf(address: string | undefined, port: number | undefined): string {
  return `${address ?? '?'}|${port ?? '?'}`;
}

/** grpc-js keeps its http2 servers in a private field; null if this grpc-js version does not. */
export function http2ServersOf(server: grpc.Server): EventEmitter[] | null {
  const servers = (server as unknown as { http2Servers?: Map<EventEmitter, unknown> }).http2Servers;
  return servers instanceof Map ? [...servers.keys()] : null;
}

export class TransportGuard {
  private readonly conns = new Map<string, Conn>();
  private readonly byRequest = new WeakMap<object, CallState>();
  private waiters: Waiter[] = [];
  private pumpScheduled = false;
  private total = 0;
  private readonly perConnBytes: number;
  private readonly totalBytes: number;
  private readonly stallMs: number;
  private readonly requestMs: number;
  private readonly warn = new ThrottledLog();
  private readonly recvConns = new Map<http2.Http2Session, RecvConn>();
  private recvTotal = 0;
  private readonly recvPerConnBytes: number;
  private readonly recvTotalBytes: number;

  constructor(readonly limits: TransportLimits) {
    this.perConnBytes = limits.replyMbPerConnection * MB;
    this.totalBytes = limits.replyMb * MB;
    this.recvPerConnBytes = limits.recvMbPerConnection * MB;
    this.recvTotalBytes = limits.recvMb * MB;
    this.stallMs = limits.stallSeconds * 1000;
    this.requestMs = limits.requestSeconds * 1000;
  }

  /** Options for the grpc.Server constructor. */
  serverOptions(): grpc.ServerOptions {
    return {
      'grpc.max_concurrent_streams': this.limits.maxStreams,
      'grpc.max_connection_idle_ms': Math.round(this.limits.idleSeconds * 1000),
      interceptors: [this.interceptor],
    } as grpc.ServerOptions;
  }

  /** Hooks the server's connections; call after bindAsync. False if grpc-js's internals are not as expected. */
  attach(server: grpc.Server): boolean {
    const servers = http2ServersOf(server);
    if (!servers) {
      log.warn(
        'cannot reach the HTTP/2 connections with this grpc-js version: stalled connections are not closed, incomplete requests not timed out, connections not capped',
      );
      return false;
    }
    for (const h of servers) {
      (h as unknown as { maxConnections: number }).maxConnections = this.limits.maxConnections;
      h.on('drop', (d: { remoteAddress?: string }) =>
        this.warn.warn(
          'drop',
          { remote: d?.remoteAddress, maxConnections: this.limits.maxConnections },
          'connection refused: the server is at --max-connections',
        ),
      );
      h.on('session', (s: http2.ServerHttp2Session) => this.onSession(s));
      h.on('stream', (st: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => this.onStream(st, headers));
    }
    return true;
  }

  /** Unsent reply bytes now, open connections, replies waiting for budget: for tests and logs. */
  stats(): { unsentBytes: number; connections: number; waiting: number } {
    let open = 0;
    for (const c of this.conns.values()) if (c.session) open++;
    return { unsentBytes: this.total, connections: open, waiting: this.waiters.length };
  }

  /** Bytes of requests still arriving, and how many such requests: for tests and logs. */
  recvStats(): { incompleteBytes: number; incompleteRequests: number } {
    let n = 0;
    for (const rc of this.recvConns.values()) n += rc.incoming.size;
    return { incompleteBytes: this.recvTotal, incompleteRequests: n };
  }

  /**
   * Reserves `bytes` of reply budget for the call's reply before it is
   * computed; waits while the connection's or the server's budget is full.
   * Rejects with OverloadError after twice --stall-seconds, or if the call
   * ends.
   */
  admitReply(call: { request?: unknown }, bytes: number): Promise<void> {
    const c = call.request && typeof call.request === 'object' ? this.byRequest.get(call.request) : undefined;
    if (!c) return Promise.resolve(); // not through the interceptor (no server of ours)
    if (c.ended || this.gone(c.conn)) return Promise.reject(new OverloadError('the call ended while its reply waited for budget'));
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        call: c,
        bytes,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new OverloadError(this.overloadMessage(c.conn, bytes)));
        }, 2 * this.stallMs),
      };
      w.timer.unref();
      this.waiters.push(w);
      this.pump();
    });
  }

  // ------------------------------------------------------------ calls

  private readonly interceptor: grpc.ServerInterceptor = (_method, next) => {
    const info = next.getConnectionInfo();
    const conn = this.connOf(keyOf(info.remoteAddress, info.remotePort));
    conn.calls++;
    const c: CallState = { conn, reserved: 0, inFlight: 0, messages: 0, ended: false };
    return new TrackedCall(next, this, c, {
      start: (go) =>
        go({
          onReceiveMessage: (msg, pass) => {
            if (msg && typeof msg === 'object') this.byRequest.set(msg, c);
            pass(msg);
          },
          onCancel: () => this.end(c),
        }),
      sendStatus: (status, pass) => {
        this.end(c);
        pass(status);
      },
    });
  };

  /** A message of the call is handed to the transport: it holds its reservation, or what it weighs. */
  messageQueued(c: CallState, msg: unknown): number {
    if (c.ended) return 0;
    let bytes = c.reserved;
    c.reserved = 0;
    if (bytes === 0) {
      bytes = bufferBytes(msg);
      c.conn.bytes += bytes;
      this.total += bytes;
    }
    c.inFlight += bytes;
    c.messages++;
    c.conn.sending++;
    this.armStall(c.conn);
    return bytes;
  }

  /** Its write completed: the bytes have left the server. */
  messageSent(c: CallState, bytes: number): void {
    if (c.ended) return;
    c.inFlight -= bytes;
    c.messages--;
    c.conn.bytes -= bytes;
    this.total -= bytes;
    this.progress(c.conn, 1);
    this.pumpSoon();
  }

  // A connection is known by its peer's address and port (what grpc-js tells
  // an interceptor); a new session from a reused port gets a new entry.
  private connOf(key: string): Conn {
    let conn = this.conns.get(key);
    if (!conn || conn.gone) {
      conn = { key, session: null, bytes: 0, sending: 0, stallTimer: null, calls: 0, gone: false };
      this.conns.set(key, conn);
    }
    return conn;
  }

  private fits(conn: Conn, bytes: number): boolean {
    // One reply per connection and one in all always fits, however large:
    // the budgets bound what waits, not the largest message.
    return this.connFits(conn, bytes) && (this.total === 0 || this.total + bytes <= this.totalBytes);
  }

  private reserve(c: CallState, bytes: number): void {
    c.reserved += bytes;
    c.conn.bytes += bytes;
    this.total += bytes;
  }

  private end(c: CallState): void {
    if (c.ended) return;
    c.ended = true;
    const conn = c.conn;
    const left = c.reserved + c.inFlight;
    conn.bytes -= left;
    this.total -= left;
    c.reserved = c.inFlight = 0;
    if (c.messages > 0) this.progress(conn, c.messages);
    c.messages = 0;
    if (--conn.calls === 0 && conn.session === null) this.forget(conn);
    this.pumpSoon();
  }

  // n of the connection's queued messages are gone (sent, or their call ended).
  private progress(conn: Conn, n: number): void {
    conn.sending -= n;
    if (conn.sending === 0) this.disarmStall(conn);
    else conn.stallTimer?.refresh();
  }

  // Budget comes back, also, when a connection dies: its streams close and
  // their writes complete at once, but their calls learn it a few ticks
  // later (grpc-js's onCancel is a nextTick). Admitting on the next turn of
  // the loop keeps the waiters of a dead connection from computing replies
  // nobody will read.
  private pumpSoon(): void {
    if (this.pumpScheduled || this.waiters.length === 0) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  // Admits waiters in order. One that waits on its own connection does not
  // hold up the others; one that waits on the total budget does (FIFO, so
  // large replies are not starved by small ones).
  private pump(): void {
    if (this.waiters.length === 0) return;
    const keep: Waiter[] = [];
    let blocked = false;
    for (const w of this.waiters) {
      if (w.call.ended || this.gone(w.call.conn)) {
        clearTimeout(w.timer);
        w.reject(new OverloadError('the call ended while its reply waited for budget'));
      } else if (!blocked && this.fits(w.call.conn, w.bytes)) {
        clearTimeout(w.timer);
        this.reserve(w.call, w.bytes);
        w.resolve();
      } else {
        if (this.connFits(w.call.conn, w.bytes)) blocked = true;
        keep.push(w);
      }
    }
    this.waiters = keep;
  }

  private gone(conn: Conn): boolean {
    return conn.gone || (conn.session !== null && conn.session.destroyed);
  }

  private connFits(conn: Conn, bytes: number): boolean {
    return conn.bytes === 0 || conn.bytes + bytes <= this.perConnBytes;
  }

  private overloadMessage(conn: Conn, bytes: number): string {
    const mib = (b: number) => (b / MB).toFixed(1);
    return !this.connFits(conn, bytes)
      ? `this connection has ${mib(conn.bytes)} MiB of replies it has not read (server limit --reply-mb-per-connection ${this.limits.replyMbPerConnection}); read the replies you asked for, or ask for less at once`
      : `the server holds ${mib(this.total)} MiB of replies its clients have not read (server limit --reply-mb ${this.limits.replyMb}); retry later`;
  }

  // ------------------------------------------------------------ connections

  private onSession(session: http2.ServerHttp2Session): void {
    const sock = session.socket;
    const conn = this.connOf(keyOf(sock?.remoteAddress, sock?.remotePort));
    conn.session = session;
    session.once('close', () => {
      this.disarmStall(conn);
      conn.gone = true;
      conn.session = null;
      if (conn.calls === 0) this.forget(conn);
    });
  }

  private forget(conn: Conn): void {
    if (this.conns.get(conn.key) === conn) this.conns.delete(conn.key);
  }

  private armStall(conn: Conn): void {
    if (conn.stallTimer) return;
    conn.stallTimer = setTimeout(() => this.onStall(conn), this.stallMs);
    conn.stallTimer.unref();
  }

  private disarmStall(conn: Conn): void {
    if (conn.stallTimer) clearTimeout(conn.stallTimer);
    conn.stallTimer = null;
  }

  private onStall(conn: Conn): void {
    conn.stallTimer = null;
    const s = conn.session;
    if (conn.sending === 0 || !s || s.destroyed) return;
    this.warn.warn(
      'stall',
      { remote: conn.key.replace('|', ':'), unsentMiB: +(conn.bytes / MB).toFixed(1), repliesQueued: conn.sending, stallSeconds: this.limits.stallSeconds },
      'closing a connection that has read none of its replies for --stall-seconds (ENHANCE_YOUR_CALM)',
    );
    // Destroying the session drops its streams' write queues; the calls end
    // through onCancel, which returns their budget.
    s.destroy(new Error('replies unread for --stall-seconds'), http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
  }

  // ------------------------------------------------------------ requests

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const path = headers[':path'];
    const encoding = headers['grpc-encoding'];
    if (encoding !== undefined && encoding !== 'identity') {
      // grpc-js inflates a compressed request up to --max-message-mb after
      // the receive budget counted its compressed bytes: 200 gzip'd pulls
      // of 63 KiB each took the server past 5.7 GB (a review's attack).
      // Requests are taken uncompressed only; replies are not compressed.
      this.refuseStream(
        stream,
        grpc.status.UNIMPLEMENTED,
        `compressed requests are not accepted (grpc-encoding: ${String(encoding).slice(0, 32)}); send them uncompressed`,
        http2.constants.NGHTTP2_NO_ERROR,
      );
      return;
    }
    const timer = setTimeout(() => {
      if (stream.destroyed || stream.closed || stream.state?.remoteClose) return;
      this.warn.warn(
        'request',
        { remote: stream.session?.socket?.remoteAddress, path, requestSeconds: this.limits.requestSeconds },
        'resetting a stream whose request has not fully arrived within --request-seconds',
      );
      this.refuseStream(
        stream,
        grpc.status.DEADLINE_EXCEEDED,
        `the request did not arrive in full within the server's --request-seconds (${this.limits.requestSeconds} s); the server reset the stream`,
      );
    }, this.requestMs);
    timer.unref();
    stream.once('close', () => clearTimeout(timer));
    this.countIncoming(stream);
  }

  /**
   * Ends a stream with a gRPC status of the server's own (trailers only),
   * then resets it: with NO_ERROR when the client may still be sending (it
   * keeps the status, as HTTP/2 has a server that answers before the end of
   * a request do), REFUSED_STREAM when it was never processed (clients
   * retry it), else CANCEL.
   */
  private refuseStream(stream: http2.ServerHttp2Stream, code: grpc.status, message: string, rst = http2.constants.NGHTTP2_CANCEL): void {
    if (stream.destroyed) return;
    if (!stream.headersSent) {
      try {
        stream.respond(
          { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(code), 'grpc-message': grpcMessage(message) },
          { endStream: true },
        );
      } catch {
        // the stream went away meanwhile: the reset below is all there is to do
      }
    }
    stream.close(rst);
  }

  // The bytes are counted from a 'data' listener beside grpc-js's: both get
  // every chunk, and grpc-js has already paused the stream (it resumes it
  // when it wants a message), so ours does not make it flow earlier. A
  // chunk seen here is one grpc-js holds until the message is complete,
  // and the handler then holds the message until its call ends: counted
  // until the stream closes. (Counted only while arriving, requests that had
  // arrived and waited, for the engine, a checkpoint or reply budget, took
  // 20x the budgets: a review, 2026-12-02.)
  // A chunk is charged the whole socket read it is a slice of (node hands
  // DATA out as views of its read buffer, at most 64 KiB), once per run of
  // chunks from the same read: a stream that holds any byte of a read holds
  // all of it, the bytes of streams refused meanwhile included. Charged by
  // their own length, 64 connections x 4 requests of 30 MiB never finished
  // held 1.3 GB of such reads beyond --recv-mb 1024, the refused streams'
  // share pinned by slices of the same reads that the survivors kept.
  private countIncoming(stream: http2.ServerHttp2Stream): void {
    const session = stream.session;
    if (!session || session.destroyed || stream.destroyed) return;
    const rc = this.recvConns.get(session) ?? this.newRecvConn(session);
    const inc: Incoming = { stream, conn: rc, bytes: 0, lastRead: null, arrived: false };
    rc.incoming.add(inc);
    const onData = (chunk: Buffer): void => {
      if (!inc.conn.incoming.has(inc)) return;
      const read = chunk.buffer;
      if (read === inc.lastRead) return;
      inc.lastRead = read;
      inc.bytes += read.byteLength;
      inc.conn.bytes += read.byteLength;
      this.recvTotal += read.byteLength;
      if (inc.conn.bytes > this.recvPerConnBytes || this.recvTotal > this.recvTotalBytes) this.enforceRecv(inc.conn);
    };
    stream.on('data', onData);
    const done = (): void => {
      stream.off('data', onData);
      this.releaseIncoming(inc);
    };
    stream.once('end', () => {
      stream.off('data', onData);
      inc.arrived = true;
    });
    stream.once('close', done);
  }

  // A method of its own so that the session's close listener, which lives
  // as long as the connection, closes over the session alone: created in
  // countIncoming it shared that scope's context with the first stream, and
  // so kept that stream, its grpc-js call and every chunk of a request that
  // was refused or timed out until the connection closed (64 connections
  // each sending 4 requests of 30 MiB that never finished held 1.3 GB with
  // --recv-mb 1024; found by a review, 2026-12-03).
  private newRecvConn(session: http2.Http2Session): RecvConn {
    const conn: RecvConn = { session, incoming: new Set(), bytes: 0 };
    this.recvConns.set(session, conn);
    session.once('close', () => {
      for (const inc of conn.incoming) this.releaseIncoming(inc);
      this.recvConns.delete(session);
    });
    return conn;
  }

  private releaseIncoming(inc: Incoming): void {
    if (!inc.conn.incoming.delete(inc)) return;
    inc.conn.bytes -= inc.bytes;
    this.recvTotal -= inc.bytes;
    inc.bytes = 0;
    inc.lastRead = null;
  }

  // Newest first: on a connection those are the streams that pushed it over
  // and have the least sent (cheapest to send again); older ones complete.
  private enforceRecv(rc: RecvConn): void {
    // Only requests still arriving are refused: one being handled has been
    // taken; it gives its bytes back when its call ends.
    for (let inc = newestArriving(rc.incoming); inc && rc.bytes > this.recvPerConnBytes; inc = newestArriving(rc.incoming))
      this.refuseIncoming(inc, 'connection');
    while (this.recvTotal > this.recvTotalBytes) {
      let top: RecvConn | null = null;
      for (const c of this.recvConns.values()) if (newestArriving(c.incoming) && (!top || c.bytes > top.bytes)) top = c;
      if (!top) break;
      this.refuseIncoming(newestArriving(top.incoming)!, 'server');
    }
  }

  // Refused as UNAVAILABLE, which gRPC clients (the SDK among them) retry:
  // the request was never processed (its body had not arrived), and a
  // client that merely sent much at once gets through once its older
  // requests complete. REFUSED_STREAM says the same at the HTTP/2 level.
  private refuseIncoming(inc: Incoming, which: 'connection' | 'server'): void {
    const { stream, conn } = inc;
    const mib = (b: number) => (b / MB).toFixed(1);
    const message =
      which === 'connection'
        ? `this connection has ${mib(conn.bytes)} MiB of requests arriving or waiting to be answered (server limit --recv-mb-per-connection ${this.limits.recvMbPerConnection}); the server refused this one unprocessed: retry it, or send less at once`
        : `the server holds ${mib(this.recvTotal)} MiB of requests arriving or waiting to be answered (server limit --recv-mb ${this.limits.recvMb}; this connection ${mib(conn.bytes)} MiB, the most); the server refused this one unprocessed: retry it later`;
    this.warn.warn(
      `recv-${which}`,
      {
        remote: conn.session.socket?.remoteAddress,
        connectionMiB: +mib(conn.bytes),
        totalMiB: +mib(this.recvTotal),
        recvMbPerConnection: this.limits.recvMbPerConnection,
        recvMb: this.limits.recvMb,
      },
      which === 'connection'
        ? 'refusing requests of a connection over --recv-mb-per-connection of requests held (REFUSED_STREAM)'
        : 'refusing requests of the connection holding the most of --recv-mb of requests held (REFUSED_STREAM)',
    );
    this.releaseIncoming(inc);
    // Closing the stream drops what grpc-js buffered of it (its call ends
    // through onCancel; the handler never ran).
    this.refuseStream(stream, grpc.status.UNAVAILABLE, message, http2.constants.NGHTTP2_REFUSED_STREAM);
  }
}

function newestArriving(s: Set<Incoming>): Incoming | undefined {
  let last: Incoming | undefined;
  for (const x of s) if (!x.arrived) last = x;
  return last;
}

// Sees when each reply message has been written out (the write callback),
// which a Responder cannot: that is when its budget comes back.
class TrackedCall extends grpc.ServerInterceptingCall {
  constructor(
    next: grpc.ServerInterceptingCallInterface,
    private readonly guard: TransportGuard,
    private readonly state: CallState,
    responder: grpc.Responder,
  ) {
    super(next, responder);
  }

  override sendMessage(message: unknown, callback: () => void): void {
    const bytes = this.guard.messageQueued(this.state, message);
    super.sendMessage(message, () => {
      this.guard.messageSent(this.state, bytes);
      callback();
    });
  }
}

/**
 * grpc-message's percent-encoding (the gRPC HTTP/2 spec): only bytes outside
 * printable ASCII, and '%', are encoded; clients decode no more than that
 * (encodeURIComponent's "%3A" for ':' reached users as it was).
 */
function grpcMessage(m: string): string {
  return m.replace(/[^\x20-\x24\x26-\x7e]/gu, (ch) => encodeURIComponent(ch));
}
