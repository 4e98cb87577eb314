// One gRPC channel to one shard, with the SDK's call discipline: a deadline
// on every call, and retries with exponential backoff for the calls that are
// safe to repeat (all of them are, when the caller says so: pushes carry
// (worker_id, seq), checkpoint phases are idempotent per id).
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_MAX_MESSAGE_MB, FLOW_CONTROL_WINDOW, parameterServerService } from '../proto/load';
import { advertiseWideFrames, installClientFrameInPlace } from '../proto/grpc-frames';
import { AccessDeniedError, PsError, TlsError } from './errors';
import type { StallMeter } from './stall';

/** Codes after which the same call may succeed: the server was down, restarting, or slow. */
const TRANSIENT = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.CANCELLED]);

// What Node's TLS says (inside an UNAVAILABLE) when a handshake fails on a
// certificate: retrying cannot fix it. A connection cut during a handshake
// ("...before secure TLS connection was established", a server restarting)
// names no certificate and stays transient. A client certificate the
// server refuses reads only "Failed to connect" and cannot be told apart.
const TLS_REFUSAL = /certificate|altnames|alert (?:unknown ca|bad certificate|certificate required|handshake failure|decrypt error)/i;

export interface CallOptions {
  /** Retry transient failures until `retryForMs` has passed (default: the connection's). 0: no retry. */
  retryForMs?: number;
  deadlineMs?: number;
  /** Called when an attempt failed in a way that may have reached the server (its outcome is unknown). */
  onUncertain?: () => void;
}

/** TLS of the channels: the CA that signed the servers' certificates; a client certificate and key for mutual TLS. */
export interface TlsOptions {
  ca: Buffer | string;
  cert?: Buffer | string;
  key?: Buffer | string;
  /**
   * The name to check the servers' certificates against, when the endpoints
   * are IP addresses (Node deprecates IPs as TLS server names: DEP0123).
   */
  serverName?: string;
}

/** How a connection proves who it is: TLS (optional) and a bearer token (optional). */
export interface Access {
  tls?: TlsOptions;
  token?: string;
}

const pem = (v: Buffer | string): Buffer => (Buffer.isBuffer(v) ? v : Buffer.from(v));

/** The channel credentials of `access`; throws PsError on a client certificate without its key (or the reverse). */
export function channelCredentials(access: Access): grpc.ChannelCredentials {
  const t = access.tls;
  if (!t) return grpc.credentials.createInsecure();
  if (!t.ca) throw new PsError("tls.ca is required: the PEM of the CA that signed the servers' certificates");
  if (!t.cert !== !t.key) throw new PsError('tls.cert and tls.key go together (mutual TLS): give both or neither');
  return grpc.credentials.createSsl(pem(t.ca), t.key ? pem(t.key) : null, t.cert ? pem(t.cert) : null);
}

/** The authorization metadata of a token, checked once (not on every call). */
function bearer(token: string | undefined): grpc.Metadata | null {
  if (token === undefined) return null;
  if (typeof token !== 'string' || !/^[\x21-\x7e]{1,1024}$/.test(token)) throw new PsError('token must be 1..1024 printable ASCII characters without spaces');
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}

export class ShardConnection {
  private readonly client: grpc.Client & Record<string, any>;
  private readonly auth: grpc.Metadata | null;
  /** Incarnation and lineage of the server as this worker last saw them. */
  incarnation = 0;
  lineage = 0;

  constructor(
    readonly index: number,
    readonly endpoint: string,
    private readonly defaults: { deadlineMs: number; retryForMs: number; maxMessageMb?: number },
    private readonly stall: StallMeter,
    access: Access = {},
  ) {
    // Fewer copies and frames per call (proto/grpc-frames.ts); without them the wire is slower, not wrong.
    advertiseWideFrames();
    installClientFrameInPlace();
    const Ctor = parameterServerService();
    const maxBytes = (defaults.maxMessageMb ?? DEFAULT_MAX_MESSAGE_MB) * 2 ** 20;
    // Metadata on each call rather than call credentials: grpc-js composes
    // those only with TLS, and a token over plaintext loopback is allowed.
    this.auth = bearer(access.token);
    this.client = new Ctor(endpoint, channelCredentials(access), {
      'grpc.max_receive_message_length': maxBytes,
      'grpc.max_send_message_length': maxBytes,
      'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW,
      // Reconnect quickly after a server restart.
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
      ...(access.tls?.serverName ? { 'grpc.ssl_target_name_override': access.tls.serverName } : {}),
    }) as grpc.Client & Record<string, any>;
  }

  async call<T = any>(method: string, req: unknown, o: CallOptions = {}): Promise<T> {
    const retryFor = o.retryForMs ?? this.defaults.retryForMs;
    const until = Date.now() + retryFor;
    let backoff = 50;
    for (;;) {
      try {
        return await this.once<T>(method, req, o.deadlineMs ?? this.defaults.deadlineMs);
      } catch (e) {
        const err = e as PsError;
        if (err instanceof TlsError) throw err; // the handshake failed: the call never reached the server
        if (TRANSIENT.has(err.code as grpc.status)) o.onUncertain?.();
        if (!TRANSIENT.has(err.code as grpc.status) || Date.now() + backoff > until) throw err;
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 1000);
      }
    }
  }

  private once<T>(method: string, req: unknown, deadlineMs: number): Promise<T> {
    this.stall.enter();
    return new Promise<T>((resolve, reject) => {
      const md = this.auth ? this.auth.clone() : new grpc.Metadata();
      this.client[method](req, md, { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: T) => {
        this.stall.leave();
        if (err) {
          const reason = err.metadata?.get('pmemps-reason')?.[0];
          const msg = `${method} on shard ${this.index} (${this.endpoint}): ${err.details || err.message}`;
          const pe =
            err.code === grpc.status.UNAUTHENTICATED || err.code === grpc.status.PERMISSION_DENIED
              ? new AccessDeniedError(msg, err.code, this.index)
              : err.code === grpc.status.UNAVAILABLE && TLS_REFUSAL.test(err.details ?? '')
                ? new TlsError(`${msg}; check the tls options (ca, cert, key, serverName)`, this.index)
                : new PsError(msg, err.code, this.index, reason ? String(reason) : undefined);
          const next = err.metadata?.get('pmemps-next-seq')?.[0];
          if (next !== undefined) pe.nextSeq = Number(next);
          reject(pe);
        } else resolve(res);
      });
    });
  }

  close(): void {
    this.client.close();
  }
}
