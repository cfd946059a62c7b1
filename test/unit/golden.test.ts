// Golden vectors (proto/golden/vectors.json): every frame must decode to its
// meaning and every meaning must encode to exactly those bytes. The C side
// checks the same file.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { decodeCall, decodeResult } from '../../src/protocol/codec.js';
import { decodeFrame, encodeFrame, FRAME_VERSION } from '../../src/protocol/frame.js';
import { pack, unpack } from '../../src/protocol/msgpack.js';
import { callByName, CALLS } from '../../src/protocol/table.js';
import { fromJson } from './golden-json.js';
import { MEANINGS } from './golden-meanings.js';

interface Vector { name: string; call?: string; direction?: string; frame: { type: number; conn: number; req: number }; payload?: unknown; hex: string }
const file = new URL('../../proto/golden/vectors.json', import.meta.url);
const vectors: Vector[] = JSON.parse(readFileSync(file, 'utf8')).vectors;

describe('golden vectors', () => {
  it('are the ones the meanings produce (regenerate with npm run golden)', () => {
    expect(vectors.map((v) => v.name)).toEqual(MEANINGS.map((m) => m.name));
  });

  for (const v of vectors) {
    it(`decodes: ${v.name}`, () => {
      const f = decodeFrame(Buffer.from(v.hex, 'hex').subarray(1, -1));
      if (typeof f === 'string') throw new Error(`frame does not decode: ${f}`);
      expect({ type: f.type, conn: f.conn, req: f.req, version: f.version }).toEqual({ ...v.frame, version: FRAME_VERSION });
      const payload = v.payload === undefined ? undefined : fromJson(v.payload);
      if (payload === undefined) expect(f.payload.length).toBe(0);
      else expect(unpack(f.payload)).toEqual(payload);
      if (v.call && v.direction === 'request') expect(decodeCall(f.payload).spec.name).toBe(v.call);
      if (v.call && v.direction === 'response') expect(decodeResult(callByName(v.call), f.payload).rv).toBe((payload as number[])[0]);
    });
    it(`encodes: ${v.name}`, () => {
      const payload = v.payload === undefined ? undefined : pack(fromJson(v.payload));
      expect(encodeFrame(v.frame.type, v.frame.conn, v.frame.req, payload).toString('hex')).toBe(v.hex);
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
