// The payload codec and the pkcs11js shape conversions, driven by the table.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeCall, decodeResult, encodeCall, encodeResult, expectedResultBytes, ProtocolError } from '../../src/protocol/codec.js';
import { checkStructure, pack, peekFirstUint, unpack } from '../../src/protocol/msgpack.js';
import { callByName, CALLS, RV } from '../../src/protocol/table.js';
import { argToWire, attrValueToHost, mechanismToWire, resultFromWire, templateToWire } from '../../src/client/shapes.js';
import { Pkcs11Client } from '../../src/client/client.js';
import {
  CKA_ALLOWED_MECHANISMS, CKA_CLASS, CKA_ENCRYPT, CKA_ID, CKA_LABEL, CKA_START_DATE, CKA_TOKEN, CKA_VALUE, CKA_WRAP_TEMPLATE,
  CKM_AES_CBC, CKM_AES_CTR, CKM_AES_GCM, CKM_SHA256_HMAC_GENERAL, CKO_SECRET_KEY,
} from '../helpers/pkcs11.js';

const sign = callByName('C_Sign');

describe('call codec', () => {
  it('round-trips a call and names the argument a bad value is in', () => {
    const payload = encodeCall(sign, [3, Buffer.from('abc'), null]);
    expect(decodeCall(payload)).toMatchObject({ spec: { name: 'C_Sign' }, args: [3, Buffer.from('abc'), null] });
    expect(() => encodeCall(sign, [3, 'abc', null])).toThrow('C_Sign argument 2 (data): expected bin or nil, got string');
    expect(() => decodeCall(pack([sign.id, -1, null, null]))).toThrow('argument 1 (session): expected int, got negative int');
    expect(() => decodeCall(pack([sign.id, 1]))).toThrow('C_Sign takes 3 arguments, got 1');
    expect(() => decodeCall(pack([250]))).toThrow('unknown call id 250');
    expect(() => decodeCall(Buffer.from([0xc1]))).toThrow(ProtocolError);
  });

  it('refuses oversized and too deeply nested templates', () => {
    const create = callByName('C_CreateObject');
    const big = Array.from({ length: 1025 }, (_, i) => [i, true]);
    expect(() => encodeCall(create, [1, big])).toThrow('exceeds 1024');
    expect(() => encodeCall(create, [1, [[CKA_WRAP_TEMPLATE, [[CKA_WRAP_TEMPLATE, [[CKA_TOKEN, true]]]]]]])).toThrow('1 level deep');
  });

  it('sends results only with CKR_OK or the call\'s partial codes', () => {
    expect(decodeResult(sign, encodeResult(sign, RV.CKR_OK!, [Buffer.from('sig')]))).toEqual({ rv: 0, results: [Buffer.from('sig')] });
    expect(decodeResult(sign, encodeResult(sign, RV.CKR_BUFFER_TOO_SMALL!, [256]))).toEqual({ rv: RV.CKR_BUFFER_TOO_SMALL, results: [256] });
    expect(decodeResult(sign, encodeResult(sign, RV.CKR_KEY_HANDLE_INVALID!, [1]))).toEqual({ rv: RV.CKR_KEY_HANDLE_INVALID, results: undefined });
    expect(() => decodeResult(sign, pack([0, 'x']))).toThrow('result 1 (signature)');
  });

  it('never throws anything but ProtocolError on hostile payloads', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      try {
        decodeCall(bytes);
      } catch (e) {
        expect(e).toBeInstanceOf(ProtocolError);
      }
      for (const spec of [sign, callByName('C_GetTokenInfo'), callByName('C_GetAttributeValue')]) {
        try {
          decodeResult(spec, bytes);
        } catch (e) {
          expect(e).toBeInstanceOf(ProtocolError);
        }
      }
    }));
  });

  it('checks the structure of untrusted MessagePack before decoding it', () => {
    // Whatever the encoder writes passes; whatever passes, msgpackr decodes.
    const value = fc.letrec((tie) => ({
      v: fc.oneof({ depthSize: 'small', withCrossShrink: true },
        fc.constant(null), fc.boolean(), fc.integer(), fc.string(), fc.uint8Array().map((u) => Buffer.from(u)),
        fc.array(tie('v'), { maxLength: 5 }), fc.dictionary(fc.string(), tie('v'), { maxKeys: 4 })),
    })).v;
    fc.assert(fc.property(value, (v) => {
      expect(checkStructure(pack(v), 64)).toBeUndefined();
    }));
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      if (checkStructure(bytes) === undefined) expect(() => unpack(bytes)).not.toThrow();
    }), { numRuns: 20000 });
    expect(checkStructure(Buffer.concat([Buffer.alloc(17, 0x91), Buffer.from([0xc0])]))).toMatch(/deeper than 16/);
    expect(checkStructure(Buffer.concat([Buffer.alloc(15, 0x91), Buffer.from([0xc0])]))).toBeUndefined();
    expect(checkStructure(Buffer.from([0xc6, 0xff, 0xff, 0xff, 0xf0, 1]))).toMatch(/length beyond/);
    expect(checkStructure(Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]))).toMatch(/more elements than bytes/);
    expect(checkStructure(Buffer.from([0xd4, 1, 0]))).toMatch(/extension/);
    // A float 1.0 would decode to the integer 1: floats are refused, as by the C prescan.
    expect(checkStructure(pack(1.5))).toMatch(/floats/);
    expect(checkStructure(Buffer.from([0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]))).toMatch(/floats/);
    expect(checkStructure(Buffer.from([0xc0, 0xc0]))).toMatch(/1 bytes after/);
    expect(checkStructure(Buffer.alloc(0))).toMatch(/truncated/);
  });

  it('estimates the size of an answer from the output capacities, as the C module does', () => {
    const limit = 1 << 20;
    const est = (name: string, args: unknown[]) => expectedResultBytes(callByName(name), args, limit);
    // The estimate covers the real answer, within a few bytes per result.
    const sig = encodeResult(sign, RV.CKR_OK!, [Buffer.alloc(256)]);
    expect(est('C_Sign', [1, Buffer.alloc(32), 256])).toBeGreaterThanOrEqual(sig.length);
    expect(est('C_Sign', [1, Buffer.alloc(32), 256])).toBeLessThan(sig.length + 32);
    const found = encodeResult(callByName('C_FindObjects'), RV.CKR_OK!, [Array.from({ length: 100 }, (_, i) => 0xffff0000 + i)]);
    expect(est('C_FindObjects', [1, 100])).toBeGreaterThanOrEqual(found.length);
    expect(est('C_FindObjects', [1, 65536])).toBe(limit > 65536 * 9 ? 16 + 65536 * 9 + 5 : limit);
    expect(est('C_GetSlotList', [true, true])).toBe(16 + 1024);
    expect(est('C_GetTokenInfo', [1])).toBe(16 + 256);
    expect(est('C_GenerateRandom', [1, 4 << 20])).toBe(limit);
    expect(est('C_GetAttributeValue', [1, 2, [[CKA_LABEL, true], [CKA_VALUE, true]]])).toBe(16 + 5 + 2 * 266);
  });

  it('reads the call id and rv without decoding the payload', () => {
    expect(peekFirstUint(encodeCall(sign, [1, null, null]))).toBe(sign.id);
    expect(peekFirstUint(pack([0x80000001]))).toBe(0x80000001);
  });
});

describe('pkcs11js shapes', () => {
  it('types template values by attribute kind, whatever the host word size', () => {
    const eight = Buffer.alloc(8);
    eight.writeBigUInt64LE(4n);
    expect(templateToWire([
      { type: CKA_CLASS, value: eight }, // as raw host bytes
      { type: CKA_TOKEN, value: Buffer.from([1]) }, // as a raw CK_BBOOL
      { type: CKA_LABEL, value: 'label' },
      { type: CKA_ID, value: Buffer.from([1, 2]) },
      { type: CKA_START_DATE, value: new Date(Date.UTC(2026, 0, 2)) },
      { type: CKA_ALLOWED_MECHANISMS, value: [CKM_AES_CBC] },
      { type: CKA_WRAP_TEMPLATE, value: [{ type: CKA_ENCRYPT, value: true }] },
    ])).toEqual([[CKA_CLASS, CKO_SECRET_KEY], [CKA_TOKEN, true], [CKA_LABEL, Buffer.from('label')], [CKA_ID, Buffer.from([1, 2])],
      [CKA_START_DATE, Buffer.from('20260102')], [CKA_ALLOWED_MECHANISMS, [CKM_AES_CBC]], [CKA_WRAP_TEMPLATE, [[CKA_ENCRYPT, true]]]]);
  });

  it('sends structured mechanism parameters field by field', () => {
    expect(mechanismToWire({ mechanism: CKM_AES_GCM, parameter: { type: 0, iv: Buffer.from('iv'), ivBits: 16, aad: undefined, tagBits: 128 } }))
      .toEqual([CKM_AES_GCM, [Buffer.from('iv'), 16, null, 128]]);
    const ctr = Buffer.alloc(24);
    ctr.writeBigUInt64LE(128n);
    ctr.fill(9, 8);
    expect(mechanismToWire({ mechanism: CKM_AES_CTR, parameter: ctr })).toEqual([CKM_AES_CTR, [128, Buffer.alloc(16, 9)]]);
    expect(mechanismToWire({ mechanism: CKM_AES_CBC, parameter: Buffer.alloc(16) })).toEqual([CKM_AES_CBC, Buffer.alloc(16)]);
    // CKM_SHA256_HMAC_GENERAL: a CK_ULONG parameter, from host bytes or a number.
    expect(mechanismToWire({ mechanism: CKM_SHA256_HMAC_GENERAL, parameter: Buffer.from([16, 0, 0, 0, 0, 0, 0, 0]) })).toEqual([CKM_SHA256_HMAC_GENERAL, 16]);
    expect(mechanismToWire({ mechanism: CKM_SHA256_HMAC_GENERAL, parameter: 16 })).toEqual([CKM_SHA256_HMAC_GENERAL, 16]);
    // (0x9999: no mechanism of the table)
    expect(() => mechanismToWire({ mechanism: 0x9999, parameter: { type: 1, x: 1 } })).toThrow('no parameter structure');
  });

  it('pads token labels to 32 bytes and refuses longer ones', () => {
    expect(argToWire('label', 'tok')).toEqual(Buffer.from('tok'.padEnd(32, ' ')));
    expect(() => argToWire('label', 'x'.repeat(33))).toThrow('at most 32');
  });

  it('returns outputs in the caller\'s buffer, as pkcs11js does', () => {
    const out = Buffer.alloc(8);
    const r = resultFromWire('outbytes', Buffer.from('abc'), out) as Buffer;
    expect(r.buffer).toBe(out.buffer);
    expect(r.toString()).toBe('abc');
    expect(() => resultFromWire('outbytes', Buffer.alloc(9), out)).toThrow('9 bytes for a 8-byte buffer');
    expect(attrValueToHost(CKA_CLASS, CKO_SECRET_KEY).value).toEqual(Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]));
  });

  it('has a client method for every forwarded call in the table', () => {
    for (const c of CALLS) {
      expect(typeof (Pkcs11Client.prototype as unknown as Record<string, unknown>)[c.name]).toBe(c.local ? 'undefined' : 'function');
    }
  });
});
