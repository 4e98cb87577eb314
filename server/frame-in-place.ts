// Pull replies framed without a copy. grpc-js's server copies every
// serialized response into a new buffer to put the 5-byte gRPC frame header
// before it: for a pull of 4,096 x 64 rows a megabyte allocated and copied
// on the event loop per call, and garbage for V8 to collect. The engine
// leaves room before the rows (PULL_REPLY_HEADROOM), so the header is
// written there instead (proto/fast-codec.ts frameInPlace); every other
// response goes through grpc-js's own path unchanged.
//
// grpc-js has no hook for this: the framing is a method of its internal
// BaseServerInterceptingCall, replaced here when it has the shape this was
// written against, and left alone (with a warning) when it does not.
import { frameInPlace } from '../proto/fast-codec';

const PATCHED = Symbol.for('pmemps.frameInPlace');

/** Installs in-place framing of pull replies; false when this grpc-js version has no method to wrap. */
export function installFrameInPlace(): boolean {
  let proto: Record<string | symbol, unknown> | undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    proto = require('@grpc/grpc-js/build/src/server-interceptors').BaseServerInterceptingCall?.prototype;
  } catch {
    return false;
  }
  if (!proto || typeof proto.serializeMessage !== 'function') return false;
  if (proto[PATCHED]) return true;
  const copying = proto.serializeMessage as (this: unknown, value: unknown) => Buffer;
  proto.serializeMessage = function (this: unknown, value: unknown): Buffer {
    return (Buffer.isBuffer(value) && frameInPlace(value)) || copying.call(this, value);
  };
  proto[PATCHED] = true;
  return true;
}
