// The raw loopback ceiling of the service benchmark (bench/service.ts): the
// same bytes as a pmemps step, over a plain TCP socket between two Node
// processes, with nothing else done on either side.
//
//   server:  node dist/bench/tcp-ceiling.js --serve [--dim 64]
//            listens on 127.0.0.1:0, prints `@@LISTEN {"port":N}` and exits
//            when its stdin closes (its parent went away)
//   client:  TcpPeer (used by bench/service-worker.ts)
//
// Framing, every integer little-endian:
//   request  = u32 body length | u8 op | u32 n | n x 8 key bytes [| n x dim x 4 grad bytes if op = PUSH]
//   response = u32 body length | body  (PULL: n x dim x 4 value bytes; PUSH: a 4-byte ack)
// The server answers a pull from one preallocated buffer and throws a push's
// bytes away. The client does no per-key work at all: with several servers
// it cuts the batch into contiguous equal ranges (as if the keys arrived
// already partitioned), sends them in parallel, and each answer lands in
// place in the output. So this is the raw transport bound: pmemps (and
// Redis) must also hash every key to its shard and put rows back in the
// caller's order, which costs about 0.5 ms per 4,096 rows in JS here.

import * as net from 'node:net';
import { childServerArgs, peerGcHeadroom } from './lib';

/** Row ranges [from, to) of a batch of n keys over S servers: contiguous, as equal as they come. */
export function contiguousRanges(n: number, S: number): Array<[number, number]> {
  return Array.from({ length: S }, (_, s) => [Math.floor((s * n) / S), Math.floor(((s + 1) * n) / S)]);
}

export const OP_PULL = 1;
export const OP_PUSH = 2;
const REQ_HEADER = 4 + 1 + 4;
const ACK = 4;

// ---------------------------------------------------------------- client

interface Pending {
  /** Where the response body goes (length known in advance). */
  dest: Buffer;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** One connection; requests are answered in order. */
class Conn {
  private readonly queue: Pending[] = [];
  private readonly hdr = Buffer.alloc(4);
  private hdrGot = 0;
  private bodyLeft = -1;
  private destOff = 0;
  private dead: Error | null = null;

  constructor(private readonly sock: net.Socket) {
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => this.onData(d));
    const fail = (e: Error): void => {
      this.dead ??= e;
      for (const p of this.queue.splice(0)) p.reject(e);
    };
    sock.on('error', fail);
    sock.on('close', () => fail(new Error('tcp-ceiling: connection closed')));
  }

  static open(endpoint: string): Promise<Conn> {
    const i = endpoint.lastIndexOf(':');
    const host = endpoint.slice(0, i);
    const port = Number(endpoint.slice(i + 1));
    return new Promise((resolve, reject) => {
      const s = net.connect({ host, port }, () => {
        s.off('error', reject);
        resolve(new Conn(s));
      });
      s.once('error', reject);
    });
  }

  request(parts: Buffer[], dest: Buffer): Promise<void> {
    if (this.dead) return Promise.reject(this.dead);
    return new Promise((resolve, reject) => {
      this.queue.push({ dest, resolve, reject });
      this.sock.cork();
      for (const p of parts) this.sock.write(p);
      this.sock.uncork();
    });
  }

  private onData(d: Buffer): void {
    let off = 0;
    while (off < d.length) {
      if (this.bodyLeft < 0) {
        const n = Math.min(4 - this.hdrGot, d.length - off);
        d.copy(this.hdr, this.hdrGot, off, off + n);
        this.hdrGot += n;
        off += n;
        if (this.hdrGot < 4) return;
        this.hdrGot = 0;
        this.bodyLeft = this.hdr.readUInt32LE(0);
        this.destOff = 0;
        const p = this.queue[0];
        if (!p || p.dest.length !== this.bodyLeft) {
          this.sock.destroy(new Error(`tcp-ceiling: unexpected response of ${this.bodyLeft} bytes`));
          return;
        }
      }
      const p = this.queue[0];
      const n = Math.min(this.bodyLeft, d.length - off);
      d.copy(p.dest, this.destOff, off, off + n);
      this.destOff += n;
      this.bodyLeft -= n;
      off += n;
      if (this.bodyLeft === 0) {
        this.bodyLeft = -1;
        this.queue.shift();
        p.resolve();
      }
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

function header(op: number, n: number, bodyBytes: number): Buffer {
  const h = Buffer.allocUnsafe(REQ_HEADER);
  h.writeUInt32LE(1 + 4 + bodyBytes, 0);
  h.writeUInt8(op, 4);
  h.writeUInt32LE(n, 5);
  return h;
}

/** The ceiling's client over one or more TcpCeiling servers: the same calls as the SDK's pull and push. */
export class TcpPeer {
  private constructor(
    private readonly conns: Conn[],
    private readonly dim: number,
  ) {}

  static async connect(endpoints: string[], dim: number): Promise<TcpPeer> {
    return new TcpPeer(await Promise.all(endpoints.map((e) => Conn.open(e))), dim);
  }

  private ranges(n: number): Array<[number, number]> {
    return contiguousRanges(n, this.conns.length);
  }

  /** keys: packed LE uint64. Returns keys x dim float32 (server s's answer lands in place in its range). */
  async pull(keys: Buffer): Promise<Float32Array> {
    const n = keys.length / 8;
    const rowBytes = this.dim * 4;
    const out = Buffer.allocUnsafe(n * rowBytes);
    await Promise.all(
      this.ranges(n).map(([from, to], s) =>
        to > from
          ? this.conns[s].request([header(OP_PULL, to - from, (to - from) * 8), keys.subarray(from * 8, to * 8)], out.subarray(from * rowBytes, to * rowBytes))
          : undefined,
      ),
    );
    return new Float32Array(out.buffer, out.byteOffset, n * this.dim);
  }

  /** keys: packed LE uint64; grads: keys x dim float32. Resolves on the servers' acks. */
  async push(keys: Buffer, grads: Float32Array): Promise<void> {
    const n = keys.length / 8;
    const rowBytes = this.dim * 4;
    const g = Buffer.from(grads.buffer, grads.byteOffset, grads.byteLength);
    if (g.length !== n * rowBytes) throw new Error(`tcp-ceiling: ${g.length} grad bytes for ${n} keys of dim ${this.dim}`);
    await Promise.all(
      this.ranges(n).map(([from, to], s) =>
        to > from
          ? this.conns[s].request(
              [header(OP_PUSH, to - from, (to - from) * (8 + rowBytes)), keys.subarray(from * 8, to * 8), g.subarray(from * rowBytes, to * rowBytes)],
              Buffer.allocUnsafe(ACK),
            )
          : undefined,
      ),
    );
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.close();
  }
}

// ---------------------------------------------------------------- server

/** Serves pulls from one preallocated value buffer and acknowledges pushes; answers in order per connection. */
export function serve(dim: number, maxKeys: number): net.Server {
  const rowBytes = dim * 4;
  const values = Buffer.alloc(maxKeys * rowBytes);
  const vf = new Float32Array(values.buffer, values.byteOffset, values.length / 4);
  for (let i = 0; i < vf.length; i++) vf[i] = ((i * 2654435761) % 1000) / 1e5 - 0.005;
  const ack = Buffer.from([0, 0, 0, 0]);
  const ackFrame = Buffer.concat([Buffer.from([ACK, 0, 0, 0]), ack]);
  return net.createServer((sock) => {
    sock.setNoDelay(true);
    const hdr = Buffer.alloc(REQ_HEADER);
    let hdrGot = 0;
    let bodyLeft = -1; // bytes of keys/grads still to skip
    let op = 0;
    let n = 0;
    const answer = (): void => {
      if (op === OP_PULL) {
        const len = n * rowBytes;
        const h = Buffer.allocUnsafe(4);
        h.writeUInt32LE(len, 0);
        sock.cork();
        sock.write(h);
        sock.write(values.subarray(0, len));
        sock.uncork();
      } else {
        sock.write(ackFrame);
      }
    };
    sock.on('data', (d: Buffer) => {
      let off = 0;
      while (off < d.length) {
        if (bodyLeft < 0) {
          const k = Math.min(REQ_HEADER - hdrGot, d.length - off);
          d.copy(hdr, hdrGot, off, off + k);
          hdrGot += k;
          off += k;
          if (hdrGot < REQ_HEADER) return;
          hdrGot = 0;
          const len = hdr.readUInt32LE(0);
          op = hdr.readUInt8(4);
          n = hdr.readUInt32LE(5);
          const expect = n * 8 + (op === OP_PUSH ? n * rowBytes : 0);
          if ((op !== OP_PULL && op !== OP_PUSH) || n > maxKeys || len !== 5 + expect) {
            sock.destroy();
            return;
          }
          bodyLeft = expect;
        }
        const k = Math.min(bodyLeft, d.length - off);
        bodyLeft -= k;
        off += k;
        if (bodyLeft === 0) {
          bodyLeft = -1;
          answer();
        }
      }
    });
    sock.on('error', () => sock.destroy());
  });
}

if (require.main === module) {
  peerGcHeadroom();
  const { dim, maxKeys } = childServerArgs('tcp-ceiling.js');
  const server = serve(dim, maxKeys);
  server.listen(0, '127.0.0.1', () => {
    const addr = server.address() as net.AddressInfo;
    process.stdout.write(`@@LISTEN ${JSON.stringify({ port: addr.port })}\n`);
  });
}
