// The hand-written Pull/Push codecs (proto/fast-codec.ts) against protobufjs
// (proto-loader's codecs for the same .proto): each decodes what the other
// encodes, unknown fields are skipped, and bytes come out unchanged.
import { describe, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { GRPC_FRAME_HEADER, PULL_PAD_FIELD, PULL_REPLY_HEADROOM, frameInPlace, pullReplyAround, pushRoom, withRoomBefore } from '../proto/fast-codec';
import * as http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { advertiseWideFrames, installClientFrameInPlace, installServerFrameInPlace } from '../proto/grpc-frames';
import { FLOW_CONTROL_WINDOW, MAX_FRAME_SIZE, parameterServerService } from '../proto/load';
import { prng } from './helpers';

const fast = parameterServerService(true).service as any;
const slow = parameterServerService(false).service as any;

function randBytes(r: () => number, n: number): Buffer {
  return Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)));
}

describe('fast Pull/Push codecs', () => {
  test('interoperate with protobufjs in both directions', () => {
    const r = prng(42);
    for (let i = 0; i < 200; i++) {
      const push = {
        table: i % 5 ? `t${i}é` : '',
        keys: randBytes(r, Math.floor(r() * 64) * 8),
        grads: randBytes(r, Math.floor(r() * 300) * 4),
        worker_id: i % 3 ? `w-${i}` : '',
        seq: i % 4 ? Math.floor(r() * 2 ** 53) : 0,
        incarnation: Math.floor(r() * 2 ** 52),
      };
      for (const [enc, dec] of [
        [fast, slow],
        [slow, fast],
      ]) {
        const got = dec.Push.requestDeserialize(enc.Push.requestSerialize(push));
        assert.equal(got.table, push.table);
        assert.ok(Buffer.from(got.keys).equals(push.keys));
        assert.ok(Buffer.from(got.grads).equals(push.grads));
        assert.equal(got.worker_id, push.worker_id);
        assert.equal(Number(got.seq), push.seq);
        assert.equal(Number(got.incarnation), push.incarnation);
        const pull = { table: push.table, keys: push.keys };
        const gp = dec.Pull.requestDeserialize(enc.Pull.requestSerialize(pull));
        assert.equal(gp.table, pull.table);
        assert.ok(Buffer.from(gp.keys).equals(pull.keys));
        const vals = { values: push.grads };
        assert.ok(Buffer.from(dec.Pull.responseDeserialize(enc.Pull.responseSerialize(vals)).values).equals(vals.values));
        for (const duplicate of [true, false]) assert.equal(dec.Push.responseDeserialize(enc.Push.responseSerialize({ duplicate })).duplicate, duplicate);
      }
    }
  });

  test('a Push whose grads have room before them is encoded around them in place, and decodes as any other', () => {
    const r = prng(9);
    for (let i = 0; i < 50; i++) {
      const table = i % 5 ? `t${i}é` : '';
      const worker_id = i % 3 ? `w-${i}`.repeat(i % 7) : '';
      const keys = randBytes(r, (1 + Math.floor(r() * 64)) * 8);
      const values = randBytes(r, (1 + Math.floor(r() * 300)) * 4);
      const grads = withRoomBefore(values.length, pushRoom(table, keys.length, worker_id));
      assert.equal(grads.byteOffset % 8, 0);
      values.copy(grads);
      const push = { table, keys, grads, worker_id, seq: i % 4 ? Math.floor(r() * 2 ** 53) : 0, incarnation: Math.floor(r() * 2 ** 52) };
      const msg = fast.Push.requestSerialize(push) as Buffer;
      assert.equal(msg.buffer, grads.buffer, 'no copy of the grads');
      assert.equal(msg.byteOffset + msg.length, grads.byteOffset + grads.length, 'grads last');
      for (const got of [slow.Push.requestDeserialize(msg), fast.Push.requestDeserialize(msg)]) {
        assert.equal(got.table, table);
        assert.ok(Buffer.from(got.keys).equals(keys));
        assert.ok(Buffer.from(got.grads).equals(values));
        assert.equal(got.worker_id, worker_id);
        assert.equal(Number(got.seq), push.seq);
        assert.equal(Number(got.incarnation), push.incarnation);
      }
      const frame = frameInPlace(msg)!;
      assert.equal(frame.buffer, grads.buffer);
      assert.ok(frame.subarray(GRPC_FRAME_HEADER).equals(msg));
      // A second encoding (a retry) copies: the first message may still be on its way.
      const again = fast.Push.requestSerialize({ ...push, seq: 7 }) as Buffer;
      const apart = again.buffer !== frame.buffer || again.byteOffset >= frame.byteOffset + frame.length || again.byteOffset + again.length <= frame.byteOffset;
      assert.ok(apart, 'the retry is encoded elsewhere');
      assert.ok(Buffer.from(slow.Push.requestDeserialize(again).grads).equals(values));
      assert.ok(msg.equals(frame.subarray(GRPC_FRAME_HEADER)), 'the first message is unchanged');
    }
  });

  test('a Pull reply encoded around the rows in place is protobufjs encoding of the same values, with a padding field that aligns the rows', () => {
    const r = prng(7);
    // Lengths across every varint size the header can take (1 to 4 bytes here), and 0.
    for (const len of [0, 4, 124, 128, 16380, 16384, 2 ** 21 - 4, 2 ** 21, 4 * 1024 * 64]) {
      const values = randBytes(r, Math.min(len, 4096));
      const rows = Buffer.alloc(len);
      for (let o = 0; o < len; o += values.length || 1) values.copy(rows, o);
      const buf = Buffer.alloc(PULL_REPLY_HEADROOM + len, 0xee);
      rows.copy(buf, PULL_REPLY_HEADROOM);
      const framed = pullReplyAround(buf, PULL_REPLY_HEADROOM);
      // The serializer passes an encoded reply through unchanged, without a copy.
      assert.equal(fast.Pull.responseSerialize(framed), framed);
      // Every decoder skips the padding field: protobufjs (plain grpc-js clients) and the SDK's.
      assert.ok(Buffer.from(slow.Pull.responseDeserialize(framed).values).equals(rows), `length ${len}`);
      assert.ok(Buffer.from(fast.Pull.responseDeserialize(framed).values).equals(rows), `length ${len}`);
      if (len === 0) {
        assert.equal(framed.length, 0); // proto3 leaves an empty bytes field out
        continue;
      }
      assert.equal(framed.buffer, buf.buffer);
      // Rows at a multiple of 8 from the start of the gRPC frame (where grpc-js's receiver puts them).
      const before = PULL_REPLY_HEADROOM - (framed.byteOffset - buf.byteOffset);
      assert.equal((GRPC_FRAME_HEADER + before) % 8, 0, `length ${len}`);
      // Without the padding field the bytes are protobufjs's encoding.
      const pad = framed[0] === PULL_PAD_FIELD * 8 + 2 ? 2 + framed[1] : 0;
      assert.ok(framed.subarray(pad).equals(slow.Pull.responseSerialize({ values: rows })), `length ${len}`);
      // The gRPC frame is written into the bytes before the message, once.
      const frame = frameInPlace(framed)!;
      assert.equal(frame.buffer, buf.buffer);
      assert.equal(frame.readUInt32BE(1), framed.length);
      assert.equal(frame[0], 0);
      assert.ok(frame.subarray(GRPC_FRAME_HEADER).equals(framed));
      assert.equal(frameInPlace(framed), null);
    }
    assert.equal(frameInPlace(Buffer.alloc(64)), null); // any other message is framed by grpc-js
    assert.throws(() => pullReplyAround(Buffer.alloc(2 + 200), 2), /header needs 3 bytes/);
  });

  test('unknown fields are skipped; truncated or oversized input is refused', () => {
    const body = fast.Pull.requestSerialize({ table: 'emb', keys: Buffer.alloc(16, 7) });
    // field 9 (varint 300), field 10 (bytes "xyz"), field 11 (fixed64), field 12 (fixed32)
    const extra = Buffer.from([0x48, 0xac, 0x02, 0x52, 3, 120, 121, 122, 0x59, 1, 2, 3, 4, 5, 6, 7, 8, 0x65, 1, 2, 3, 4]);
    const got = fast.Pull.requestDeserialize(Buffer.concat([extra, body]));
    assert.equal(got.table, 'emb');
    assert.ok(got.keys.equals(Buffer.alloc(16, 7)));
    assert.throws(() => fast.Pull.requestDeserialize(body.subarray(0, body.length - 3)), /truncated/);
    assert.throws(() => fast.Pull.requestDeserialize(Buffer.concat([body, Buffer.from([0x59, 1, 2])])), /truncated/);
    assert.throws(() => fast.Pull.requestDeserialize(Buffer.from([0x00, 0x01])), /field number 0/);
    // seq above 2^53 decodes as NaN (the server refuses it)
    const big = Buffer.from([0x28, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert.ok(Number.isNaN(fast.Push.requestDeserialize(big).seq));
  });
});

describe('grpc-js framing hooks (proto/grpc-frames.ts)', () => {
  test('install on this grpc-js version', () => {
    // false means a grpc-js upgrade moved what they wrap: the wire would be slower, not wrong.
    assert.ok(installServerFrameInPlace());
    assert.ok(installClientFrameInPlace());
    assert.ok(advertiseWideFrames());
  });

  test("the SDK's HTTP/2 sessions advertise MAX_FRAME_SIZE; others are opened as asked", async () => {
    advertiseWideFrames();
    const server = http2.createServer();
    const seen: number[] = [];
    server.on('session', (s) => s.on('remoteSettings', (r) => seen.push(r.maxFrameSize ?? 0)));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      for (const settings of [{ initialWindowSize: FLOW_CONTROL_WINDOW }, { initialWindowSize: 65535 }]) {
        const c = http2.connect(url, { settings });
        await new Promise<void>((r) => c.once('remoteSettings', () => r()));
        await new Promise((r) => setTimeout(r, 50));
        c.close();
      }
      assert.deepEqual(seen, [MAX_FRAME_SIZE, 16384]);
    } finally {
      server.close();
    }
  });
});
