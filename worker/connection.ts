// One gRPC channel to one shard, with the SDK's call discipline: a deadline
// on every call, and retries with exponential backoff for the calls that are
// safe to repeat (all of them are, when the caller says so: pushes carry
// (worker_id, seq), checkpoint phases are idempotent per id).
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_MAX_MESSAGE_MB, FLOW_CONTROL_WINDOW, parameterServerService } from '../proto/load';
import { PsError } from './errors';
import type { StallMeter } from './stall';

/** Codes after which the same call may succeed: the server was down, restarting, or slow. */
const TRANSIENT = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.CANCELLED]);

export interface CallOptions {
  /** Retry transient failures until `retryForMs` has passed (default: the connection's). 0: no retry. */
  retryForMs?: number;
  deadlineMs?: number;
  /** Called when an attempt failed in a way that may have reached the server (its outcome is unknown). */
  onUncertain?: () => void;
}

export class ShardConnection {
  private readonly client: grpc.Client & Record<string, any>;
  /** Incarnation and lineage of the server as this worker last saw them. */
  incarnation = 0;
  lineage = 0;

  constructor(
    readonly index: number,
    readonly endpoint: string,
    private readonly defaults: { deadlineMs: number; retryForMs: number; maxMessageMb?: number },
    private readonly stall: StallMeter,
  ) {
    const Ctor = parameterServerService();
    const maxBytes = (defaults.maxMessageMb ?? DEFAULT_MAX_MESSAGE_MB) * 2 ** 20;
    this.client = new Ctor(endpoint, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': maxBytes,
      'grpc.max_send_message_length': maxBytes,
      'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW,
      // Reconnect quickly after a server restart.
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
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
      this.client[method](req, { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: T) => {
        this.stall.leave();
        if (err) {
          const reason = err.metadata?.get('pmemps-reason')?.[0];
          const pe = new PsError(`${method} on shard ${this.index} (${this.endpoint}): ${err.details || err.message}`, err.code, this.index, reason ? String(reason) : undefined);
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
