// Framing: COBS, CRC, resynchronisation after damage, size limits.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cobsDecode, cobsEncodeDelimited } from '../../src/protocol/cobs.js';
import { Deframer } from '../../src/protocol/deframer.js';
import { decodeFrame, encodeFrame, FRAME_VERSION, FrameType, isKeyed, type Frame, type FrameHeader } from '../../src/protocol/frame.js';

function collect(maxPayload = 1024) {
  const frames: Frame[] = [];
  const drops: string[] = [];
  const oversize: Array<{ bytes: number; header: FrameHeader | undefined }> = [];
  const d = new Deframer(maxPayload, {
    frame: (f) => frames.push(f),
    drop: (reason) => drops.push(reason),
    oversize: (bytes, header) => oversize.push({ bytes, header }),
  });
  return { d, frames, drops, oversize };
}

const payloadArb = fc.uint8Array({ maxLength: 700 });

describe('COBS', () => {
  it('round-trips any bytes and never emits 0x00 inside a frame', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2000 }), (data) => {
      const enc = cobsEncodeDelimited(data);
      expect(enc[0]).toBe(0);
      expect(enc[enc.length - 1]).toBe(0);
      expect(enc.subarray(1, -1).includes(0)).toBe(false);
      expect(cobsDecode(enc.subarray(1, -1))).toEqual(Buffer.from(data));
    }));
  });

  it('handles the 254-byte block boundaries', () => {
    for (const n of [253, 254, 255, 508, 509]) {
      const data = Buffer.alloc(n, 7);
      expect(cobsDecode(cobsEncodeDelimited(data).subarray(1, -1))).toEqual(data);
    }
  });

  it('rejects a piece whose code runs past its end', () => {
    expect(cobsDecode(Buffer.from([5, 1, 2]))).toBeNull();
  });
});

describe('frames', () => {
  it('carry type, connection id, request id and payload', () => {
    fc.assert(fc.property(fc.constantFrom(...Object.values(FrameType)), fc.nat({ max: 0xff }), fc.nat({ max: 0xffff }), fc.integer({ min: 1, max: 0xffffffff }), payloadArb, (type, conn, req, key, payload) => {
      const f = decodeFrame(encodeFrame(type, conn, req, payload, key).subarray(1, -1));
      // Only requests on a connection carry the key.
      expect(f).toEqual({ version: FRAME_VERSION, type, conn, req, key: isKeyed(type, conn) ? key : 0, payload: Buffer.from(payload) });
    }));
  });

  it('detect any single corrupted byte (CRC-32)', () => {
    fc.assert(fc.property(payloadArb, fc.nat(), fc.integer({ min: 1, max: 255 }), (payload, pos, xor) => {
      const wire = encodeFrame(FrameType.Call, 1, 2, payload);
      const inner = Buffer.from(wire.subarray(1, -1));
      const i = pos % inner.length;
      inner[i] = inner[i]! ^ xor;
      // A zero byte would split the piece: that is a delimiter, not corruption.
      fc.pre(inner[i] !== 0);
      expect(typeof decodeFrame(inner)).toBe('string');
    }));
  });
});

describe('Deframer', () => {
  it('reads frames however the stream is split into chunks', () => {
    fc.assert(fc.property(fc.array(payloadArb, { minLength: 1, maxLength: 5 }), fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1 }), (payloads, cuts) => {
      const wire = Buffer.concat(payloads.map((p, i) => encodeFrame(FrameType.Result, 9, i + 1, p)));
      const { d, frames, drops } = collect();
      let at = 0;
      for (let k = 0; at < wire.length; k++) {
        const n = cuts[k % cuts.length]!;
        d.push(wire.subarray(at, at + n));
        at += n;
      }
      expect(drops).toEqual([]);
      expect(frames.map((f) => f.req)).toEqual(payloads.map((_, i) => i + 1));
      expect(frames.map((f) => Buffer.from(f.payload))).toEqual(payloads.map((p) => Buffer.from(p)));
    }));
  });

  it('resynchronises after garbage, truncation and dropped bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), payloadArb, fc.nat(), (garbage, payload, cut) => {
      const damaged = encodeFrame(FrameType.Call, 1, 1, payload);
      const dropAt = 1 + (cut % (damaged.length - 2));
      // A byte lost from the middle of one frame, garbage after it, then a good frame.
      const stream = Buffer.concat([
        Buffer.from(garbage),
        Buffer.concat([damaged.subarray(0, dropAt), damaged.subarray(dropAt + 1)]),
        Buffer.from(garbage),
        encodeFrame(FrameType.Call, 1, 2, payload),
      ]);
      const { d, frames } = collect();
      d.push(stream);
      const good = frames.filter((f) => f.req === 2);
      expect(good).toHaveLength(1);
      expect(Buffer.from(good[0]!.payload)).toEqual(Buffer.from(payload));
      // Random garbage never passes as the damaged frame (CRC-32).
      expect(frames.filter((f) => f.req === 1)).toHaveLength(0);
    }));
  });

  it('drops an oversize frame, reports its header, and reads the next one', () => {
    const { d, frames, oversize } = collect(1024);
    d.push(encodeFrame(FrameType.Call, 0xab, 77, Buffer.alloc(5000, 1)));
    d.push(encodeFrame(FrameType.Call, 0xab, 78, Buffer.from('ok')));
    expect(oversize).toHaveLength(1);
    expect(oversize[0]!.header).toMatchObject({ conn: 0xab, req: 77, type: FrameType.Call });
    expect(frames.map((f) => f.req)).toEqual([78]);
  });

  it('bounds memory on an endless run without delimiters', () => {
    const { d, frames, oversize } = collect(1024);
    const junk = Buffer.alloc(64 * 1024, 0x55);
    for (let i = 0; i < 100; i++) d.push(junk);
    expect((d as unknown as { partLen: number }).partLen).toBe(0);
    d.push(encodeFrame(FrameType.Ping, 1, 1));
    expect(oversize).toHaveLength(1);
    expect(frames).toHaveLength(1);
  });
});
