// Bare grpc-js for the service benchmark (bench/service.ts): the Pull and
// Push messages of proto/pmemps.proto between a plain grpc-js client and a
// plain grpc-js server with no engine behind it, so that the benchmark
// shows what pmemps's server, engine and SDK add to the transport they run on.
//
//   server:  node dist/bench/grpc-bare.js --serve [--dim 64]
//            listens on 127.0.0.1:0, prints `@@LISTEN {"port":N}` and exits
//            when its stdin closes (its parent went away)
//   client:  GrpcBarePeer (used by bench/service-worker.ts)
//
// Both sides are what a user builds from proto/ alone: proto-loader with
// its protobufjs codecs (not the SDK's hand-written ones), and the same
// message size limits and 16 MiB HTTP/2 windows as pmemps (without the
// server's window a 1 MiB push waits on 16 round trips). The server answers
// a Pull with a preallocated buffer of the size asked and a Push with an
// empty reply. The client does no per-key work: with several servers it
// cuts the batch into contiguous ranges (as bench/tcp-ceiling.ts does) and
// copies each answer into place.

import * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { DEFAULT_MAX_MESSAGE_MB, FLOW_CONTROL_WINDOW, parameterServerService } from '../proto/load';
import { http2ServersOf } from '../server/transport-limits';
import { childServerArgs, peerGcHeadroom } from './lib';
import { contiguousRanges } from './tcp-ceiling';

const MAX_BYTES = DEFAULT_MAX_MESSAGE_MB * 2 ** 20;

/** The bare client over one or more bare servers: the same calls as the SDK's pull and push. */
export class GrpcBarePeer {
  private seq = Date.now() * 1000;
  private constructor(
    private readonly clients: (grpc.Client & Record<string, any>)[],
    private readonly dim: number,
  ) {}

  static async connect(endpoints: string[], dim: number): Promise<GrpcBarePeer> {
    const Ctor = parameterServerService(false);
    const clients = endpoints.map(
      (e) =>
        new Ctor(e, grpc.credentials.createInsecure(), {
          'grpc.max_receive_message_length': MAX_BYTES,
          'grpc.max_send_message_length': MAX_BYTES,
          'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW,
        }) as grpc.Client & Record<string, any>,
    );
    await Promise.all(clients.map((c) => new Promise<void>((res, rej) => c.waitForReady(Date.now() + 20_000, (e) => (e ? rej(e) : res())))));
    return new GrpcBarePeer(clients, dim);
  }

  private call<T>(s: number, method: string, req: unknown): Promise<T> {
    return new Promise((resolve, reject) => this.clients[s][method](req, (e: grpc.ServiceError | null, r: T) => (e ? reject(e) : resolve(r))));
  }

  private ranges(n: number): Array<[number, number]> {
    return contiguousRanges(n, this.clients.length);
  }

  async pull(keys: Buffer): Promise<Float32Array> {
    const n = keys.length / 8;
    const rowBytes = this.dim * 4;
    const parts = await Promise.all(
      this.ranges(n).map(([from, to], s) =>
        to > from ? this.call<{ values: Buffer }>(s, 'Pull', { table: 'bench_emb', keys: keys.subarray(from * 8, to * 8) }) : null,
      ),
    );
    if (parts.length === 1) {
      const v = parts[0]!.values;
      if (v.length !== n * rowBytes) throw new Error(`grpc-bare: ${v.length} bytes for ${n} keys`);
      // A Float32Array needs 4-byte alignment; protobufjs's bytes may sit anywhere.
      return v.byteOffset % 4 === 0 ? new Float32Array(v.buffer, v.byteOffset, v.length / 4) : new Float32Array(new Uint8Array(v).buffer);
    }
    const out = Buffer.allocUnsafe(n * rowBytes);
    this.ranges(n).forEach(([from], s) => parts[s]?.values.copy(out, from * rowBytes));
    return new Float32Array(out.buffer, out.byteOffset, n * this.dim);
  }

  async push(keys: Buffer, grads: Float32Array): Promise<void> {
    const n = keys.length / 8;
    const rowBytes = this.dim * 4;
    const g = Buffer.from(grads.buffer, grads.byteOffset, grads.byteLength);
    await Promise.all(
      this.ranges(n).map(([from, to], s) =>
        to > from
          ? this.call(s, 'Push', {
              table: 'bench_emb',
              keys: keys.subarray(from * 8, to * 8),
              grads: g.subarray(from * rowBytes, to * rowBytes),
              worker_id: 'bare',
              seq: ++this.seq,
            })
          : undefined,
      ),
    );
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.close();
  }
}

/** Answers Pull from one preallocated buffer and Push with an empty reply; every other method is unimplemented. */
export async function serve(dim: number, maxKeys: number): Promise<{ port: number; server: grpc.Server }> {
  const rowBytes = dim * 4;
  const values = Buffer.alloc(maxKeys * rowBytes);
  const vf = new Float32Array(values.buffer, values.byteOffset, values.length / 4);
  for (let i = 0; i < vf.length; i++) vf[i] = ((i * 2654435761) % 1000) / 1e5 - 0.005;
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_BYTES,
    'grpc.max_send_message_length': MAX_BYTES,
    'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW,
  } as grpc.ServerOptions);
  server.addService(parameterServerService(false).service, {
    Pull: (call: grpc.ServerUnaryCall<{ keys: Buffer }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const n = call.request.keys.length / 8;
      if (n > maxKeys) return cb({ code: grpc.status.INVALID_ARGUMENT, details: 'too many keys' });
      cb(null, { values: values.subarray(0, n * rowBytes) });
    },
    Push: (_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(null, { duplicate: false }),
  });
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  // The server's receive window, as pserver sets it (grpc-js has no option for it).
  for (const h of http2ServersOf(server) ?? [])
    h.on('session', (session: http2.ServerHttp2Session) => {
      session.setLocalWindowSize(FLOW_CONTROL_WINDOW);
      session.settings({ initialWindowSize: FLOW_CONTROL_WINDOW });
    });
  return { port, server };
}

if (require.main === module) {
  peerGcHeadroom();
  const { dim, maxKeys } = childServerArgs('grpc-bare.js');
  serve(dim, maxKeys).then(
    ({ port }) => process.stdout.write(`@@LISTEN ${JSON.stringify({ port })}\n`),
    (e) => {
      process.stderr.write(`grpc-bare: ${(e as Error)?.stack ?? e}\n`);
      process.exit(1);
    },
  );
}
