// Golden vectors (proto/golden/vectors.json): every frame must decode to its
// meaning and every meaning must encode to exactly those bytes. The C side
// checks the same file.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { decodeCall, decodeResult, expectedResultBytes, ProtocolError } from '../../src/protocol/codec.js';
import { decodeFrame, encodeFrame, FRAME_VERSION } from '../../src/protocol/frame.js';
import { pack, unpack } from '../../src/protocol/msgpack.js';
import { callByName, CALLS, LIMITS, RV } from '../../src/protocol/table.js';
import { fromJson } from './golden-json.js';
import { MEANINGS, REFUSALS } from './golden-meanings.js';

interface Vector { name: string; call?: string; direction?: string; frame: { type: number; conn: number; req: number; key?: number }; payload?: unknown; answerBytes?: number; hex: string }
interface RefusalVector { name: string; expect: string; payload: string }
const file = new URL('../../proto/golden/vectors.json', import.meta.url);
const golden = JSON.parse(readFileSync(file, 'utf8')) as { vectors: Vector[]; refusals: RefusalVector[] };
const vectors = golden.vectors;

describe('golden vectors', () => {
  it('are the ones the meanings produce (regenerate with npm run golden)', () => {
    expect(vectors.map((v) => v.name)).toEqual(MEANINGS.map((m) => m.name));
    expect(golden.refusals.map((v) => v.name)).toEqual(REFUSALS.map((m) => m.name));
  });

  for (const v of vectors) {
    it(`decodes: ${v.name}`, () => {
      const f = decodeFrame(Buffer.from(v.hex, 'hex').subarray(1, -1));
      if (typeof f === 'string') throw new Error(`frame does not decode: ${f}`);
      expect({ type: f.type, conn: f.conn, req: f.req, key: f.key, version: f.version }).toEqual({ key: 0, ...v.frame, version: FRAME_VERSION });
      const payload = v.payload === undefined ? undefined : fromJson(v.payload);
      if (payload === undefined) expect(f.payload.length).toBe(0);
      else expect(unpack(f.payload)).toEqual(payload);
      if (v.call && v.direction === 'request') {
        const { spec, args } = decodeCall(f.payload);
        expect(spec.name).toBe(v.call);
        expect(expectedResultBytes(spec, args, LIMITS.defaultMaxPayload)).toBe(v.answerBytes);
      }
      if (v.call && v.direction === 'response') expect(decodeResult(callByName(v.call), f.payload).rv).toBe((payload as number[])[0]);
    });
    it(`encodes: ${v.name}`, () => {
      const payload = v.payload === undefined ? undefined : pack(fromJson(v.payload));
      expect(encodeFrame(v.frame.type, v.frame.conn, v.frame.req, payload, v.frame.key).toString('hex')).toBe(v.hex);
    });
  }

  for (const r of golden.refusals) {
    it(`refuses: ${r.name}`, () => {
      let err: unknown;
      try {
        decodeCall(Buffer.from(r.payload, 'hex'));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ProtocolError);
      const e = err as ProtocolError;
      const got = e.refusal ? `rv ${e.rv}` : e.rv === RV.CKR_FUNCTION_NOT_SUPPORTED ? 'unknown call' : e.rv === RV.CKR_ARGUMENTS_BAD ? 'malformed' : `error ${e.rv}`;
      const want = r.expect === 'malformed' || r.expect === 'unknown call' ? r.expect : `rv ${RV[r.expect]}`;
      expect(got, e.message).toBe(want);
    });
  }

  it('cover every argument and result kind of the call table', () => {
    const used = new Set<string>();
    for (const v of vectors) {
      if (!v.call) continue;
      const spec = callByName(v.call);
      for (const p of v.direction === 'request' ? spec.args : spec.results) used.add(`${v.direction}:${p.kind}`);
    }
    const all = new Set<string>();
    for (const c of CALLS) {
      if (c.local) continue;
      c.args.forEach((p) => all.add(`request:${p.kind}`));
      c.results.forEach((p) => all.add(`response:${p.kind}`));
    }
    expect([...all].filter((k) => !used.has(k))).toEqual([]);
  });
});
