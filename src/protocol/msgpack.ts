// Plain MessagePack (no msgpackr extensions), so the C side reads it with
// msgpack-c. Integers above 2^32-1 are packed from BigInt as uint64, never
// as float64, and come back as numbers where they are exact.
import { Packr } from 'msgpackr';
import { LIMITS } from './table.js';

// int64AsType 'auto' (numbers where exact, BigInt beyond) exists at run time
// but not in msgpackr's typings.
const packr = new Packr({
  useRecords: false,
  moreTypes: false,
  structuredClone: false,
  variableMapSize: true,
  encodeUndefinedAsNil: true,
  int64AsType: 'auto' as 'bigint',
  mapsAsObjects: true,
});

export const pack = (value: unknown): Buffer => packr.pack(value);
export const unpack = (payload: Uint8Array): unknown => packr.unpack(payload);

/** A CK_ULONG for the wire: BigInt where a JS number would be packed as a float. */
export function wireUlong(v: number | bigint): number | bigint {
  if (typeof v === 'bigint') return v <= 0xffffffffn ? Number(v) : v;
  return v > 0xffffffff ? BigInt(v) : v;
}

/** Reads a CK_ULONG off the wire; undefined if it is not a non-negative integer. */
export function ulongFromWire(v: unknown): number | bigint | undefined {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 ? v : undefined;
  if (typeof v === 'bigint') return v >= 0n && v <= 0xffffffffffffffffn ? v : undefined;
  return undefined;
}

/**
 * The call id of a CALL payload or the rv of a RESULT payload, read without
 * decoding the rest (the daemon logs these for every call).
 */
export function peekFirstUint(payload: Uint8Array): number | undefined {
  const b0 = payload[0];
  if (b0 === undefined) return undefined;
  let i: number;
  if (b0 >= 0x90 && b0 <= 0x9f) i = 1;
  else if (b0 === 0xdc) i = 3;
  else if (b0 === 0xdd) i = 5;
  else return undefined;
  const t = payload[i];
  if (t === undefined) return undefined;
  if (t < 0x80) return t;
  const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  if (t === 0xcc && i + 1 < payload.length) return dv.getUint8(i + 1);
  if (t === 0xcd && i + 2 < payload.length) return dv.getUint16(i + 1);
  if (t === 0xce && i + 4 < payload.length) return dv.getUint32(i + 1);
  return undefined;
}

/** Deepest nesting a PKCS#11 payload needs: call, template, nested template, attribute, value, with room to spare. */
export const MAX_DEPTH = LIMITS.maxDepth;

// Per MessagePack type byte: bytes of a fixed-size payload (FIXED), or the
// width of a length field (LEN_*), or NOT_PROTOCOL (ext types, 0xc1).
const FIXED = 0, NOT_PROTOCOL = -1;
const LEN_BYTES = 10, LEN_ITEMS = 20, LEN_PAIRS = 30; // + width of the length field
const TYPE = new Int8Array(256).fill(NOT_PROTOCOL);
{
  const set = (from: number, to: number, v: number) => TYPE.fill(v, from, to + 1);
  set(0x00, 0x7f, FIXED); set(0xe0, 0xff, FIXED); // fixints
  set(0xc0, 0xc0, FIXED); set(0xc2, 0xc3, FIXED); // nil, false, true
  // Floats (0xca, 0xcb) stay NOT_PROTOCOL: no value of the protocol is one,
  // and a float 1.0 must not pass where an integer is wanted.
  [[0xcc, 1], [0xcd, 2], [0xce, 4], [0xcf, 8], [0xd0, 1], [0xd1, 2], [0xd2, 4], [0xd3, 8]]
    .forEach(([t, w]) => (TYPE[t!] = w!));
  [[0xc4, 1], [0xc5, 2], [0xc6, 4], [0xd9, 1], [0xda, 2], [0xdb, 4]].forEach(([t, w]) => (TYPE[t!] = LEN_BYTES + w!));
  [[0xdc, 2], [0xdd, 4]].forEach(([t, w]) => (TYPE[t!] = LEN_ITEMS + w!));
  [[0xde, 2], [0xdf, 4]].forEach(([t, w]) => (TYPE[t!] = LEN_PAIRS + w!));
}

/**
 * Walks the MessagePack structure of untrusted bytes without decoding it:
 * one value, nothing after it, no extension types, nesting at most
 * `maxDepth`, map keys that are not containers, and no declared length
 * (string, bytes, element count) beyond the bytes that remain. Returns what
 * is wrong, or undefined. Runs before msgpackr sees the bytes, so a hostile
 * header never makes it recurse deeply or size anything by a declared length.
 */
export function checkStructure(b: Uint8Array, maxDepth = MAX_DEPTH): string | undefined {
  const n = b.length;
  // Values still to read at each open level (a map counts keys and values);
  // the bottom level holds the one top value.
  const pending = new Array<number>(maxDepth + 1);
  const isMap = new Array<boolean>(maxDepth + 1);
  let top = 0;
  pending[0] = 1;
  isMap[0] = false;
  let i = 0;
  for (;;) {
    while (pending[top] === 0) if (--top < 0) return i === n ? undefined : `${n - i} bytes after the MessagePack value`;
    const isKey = isMap[top]! && pending[top]! % 2 === 0;
    pending[top]!--;
    if (i >= n) return 'truncated MessagePack';
    const t = b[i++]!;
    let items = -1, pairs = false; // items >= 0: a container
    if (t >= 0xa0 && t <= 0xbf) i += t & 0x1f; // fixstr
    else if (t >= 0x90 && t <= 0x9f) items = t & 0x0f;
    else if (t >= 0x80 && t <= 0x8f) {
      items = 2 * (t & 0x0f);
      pairs = true;
    } else {
      const k = TYPE[t]!;
      if (k === NOT_PROTOCOL) {
        return t === 0xc1 ? 'MessagePack byte 0xc1 (never used)'
          : t === 0xca || t === 0xcb ? 'MessagePack floats are not part of the protocol'
          : 'MessagePack extension types are not part of the protocol';
      }
      if (k < LEN_BYTES) i += k;
      else {
        const w = k % 10;
        if (i + w > n) return 'truncated MessagePack';
        const len = w === 1 ? b[i]! : w === 2 ? (b[i]! << 8) | b[i + 1]! : ((b[i]! << 24) >>> 0) + (b[i + 1]! << 16) + (b[i + 2]! << 8) + b[i + 3]!;
        i += w;
        if (k < LEN_ITEMS) i += len;
        else {
          items = k < LEN_PAIRS ? len : 2 * len;
          pairs = k >= LEN_PAIRS;
        }
      }
    }
    if (i > n) return 'truncated MessagePack (a length beyond the bytes that remain)';
    if (items < 0) continue;
    if (isKey) return 'a MessagePack map key that is an array or a map';
    // Every element takes at least one byte.
    if (items > n - i) return 'truncated MessagePack (a container declares more elements than bytes remain)';
    if (items === 0) continue;
    if (top + 1 >= maxDepth) return `MessagePack nested deeper than ${maxDepth} levels`;
    pending[++top] = items;
    isMap[top] = pairs;
  }
}

/** Decodes bytes from the line (or any peer): the structure is checked first; throws an Error saying what is wrong. */
export function unpackUntrusted(payload: Uint8Array): unknown {
  const bad = checkStructure(payload);
  if (bad) throw new Error(`malformed payload: ${bad}`);
  return unpack(payload);
}
