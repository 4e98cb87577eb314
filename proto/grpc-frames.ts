// How pmemps uses grpc-js's framing, on both sides:
//
//  * Messages framed without a copy. grpc-js copies every serialized message
//    into a new buffer to put the 5-byte gRPC frame header before it: for a
//    pull reply or a push of 4,096 x 64 floats a megabyte allocated and
//    copied on the event loop per call, and garbage for V8 to collect. The
//    fast codecs leave room before the messages that matter (the engine's
//    PULL_REPLY_HEADROOM for pull replies, the encoder's for requests), so
//    the header is written there instead (fast-codec.ts frameInPlace); every
//    other message goes through grpc-js's own path unchanged.
//  * Larger HTTP/2 DATA frames (MAX_FRAME_SIZE) advertised by the SDK's
//    sessions, as the server advertises them on its own.
//
// grpc-js has no hook for either: each installer replaces one function when
// it has the shape this was written against (grpc-js 1.14), and otherwise
// leaves grpc-js alone and returns false, the caller logging that the wire
// is slower, not wrong. Installing twice is a no-op.
// The module object itself, not an import-star copy of it: the copy's
// properties are getters, and grpc-js calls connect on the real one.
// eslint-disable-next-line @typescript-eslint/no-require-imports
import http2 = require('node:http2');
import { frameInPlace } from './fast-codec';
import { FLOW_CONTROL_WINDOW, MAX_FRAME_SIZE } from './load';

const PATCHED = Symbol.for('pmemps.grpcFrames');

type Proto = Record<string | symbol, unknown>;

function internal(file: string, cls: string): Proto | undefined {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(`@grpc/grpc-js/build/src/${file}`)[cls]?.prototype;
  } catch {
    return undefined;
  }
}

/** Server: pull replies (and the small Push replies) framed in place. */
export function installServerFrameInPlace(): boolean {
  const proto = internal('server-interceptors', 'BaseServerInterceptingCall');
  if (!proto || typeof proto.serializeMessage !== 'function') return false;
  if (proto[PATCHED]) return true;
  const copying = proto.serializeMessage as (this: unknown, value: unknown) => Buffer;
  // The service's serializers hand an encoded Buffer through unchanged (fast-codec.ts passEncoded).
  proto.serializeMessage = function (this: unknown, value: unknown): Buffer {
    return (Buffer.isBuffer(value) && frameInPlace(value)) || copying.call(this, value);
  };
  proto[PATCHED] = true;
  return true;
}

/** Client: requests the fast codecs encoded (Pull, Push) framed in place, when the channel does not compress. */
export function installClientFrameInPlace(): boolean {
  const proto = internal('compression-filter', 'CompressionFilter');
  if (!proto || typeof proto.sendMessage !== 'function') return false;
  if (proto[PATCHED]) return true;
  type Msg = { message: Buffer; flags?: number };
  const framing = proto.sendMessage as (this: unknown, m: Promise<Msg>) => Promise<Msg>;
  proto.sendMessage = async function (this: { sendCompression?: object; maxSendMessageLength?: number }, m: Promise<Msg>): Promise<Msg> {
    const r = await m;
    // Only the identity encoding is framed here, within the send limit (grpc-js's own path refuses a larger one).
    const plain = this.sendCompression?.constructor?.name === 'IdentityHandler';
    const limit = this.maxSendMessageLength ?? -1;
    if (plain && Buffer.isBuffer(r.message) && (limit === -1 || r.message.length <= limit)) {
      const f = frameInPlace(r.message);
      if (f) return { message: f, flags: r.flags };
    }
    return framing.call(this, Promise.resolve(r));
  };
  proto[PATCHED] = true;
  return true;
}

/**
 * Client: grpc-js opens its HTTP/2 sessions with http2.connect and passes
 * only the receive window as a setting, so a server may send a pull reply in
 * frames of 16 KiB only. The SDK's channels are recognised by their window
 * (grpc-node.flow_control_window = FLOW_CONTROL_WINDOW) and also advertise
 * MAX_FRAME_SIZE; any other session is opened as asked. A larger frame size
 * is a receiver's offer that any HTTP/2 peer may use or not.
 */
export function advertiseWideFrames(): boolean {
  const h = http2 as unknown as Proto;
  if (h[PATCHED]) return true;
  const connect = http2.connect;
  try {
    h.connect = function (authority: unknown, options?: http2.ClientSessionOptions, listener?: unknown) {
      const settings = options?.settings;
      if (settings && settings.initialWindowSize === FLOW_CONTROL_WINDOW && settings.maxFrameSize === undefined)
        options = { ...options, settings: { ...settings, maxFrameSize: MAX_FRAME_SIZE } };
      return (connect as (...a: unknown[]) => http2.ClientHttp2Session)(authority, options, listener);
    };
    h[PATCHED] = true;
    return true;
  } catch {
    return false; // a frozen module object
  }
}
