// Plain MessagePack (no msgpackr extensions), so the C side reads it with
// msgpack-c. Integers above 2^32-1 are packed from BigInt as uint64, never
// as float64, and come back as numbers where they are exact.
import { Packr } from 'msgpackr';

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
export const MAX_DEPTH = 16;

/**
 * Walks the MessagePack structure of untrusted bytes without decoding it:
 * one value, nothing after it, no extension types, nesting at most
 * `maxDepth`, and no declared length (string, bytes, element count) larger
 * than the bytes that remain. Returns what is wrong, or undefined. Runs
 * before msgpackr sees the bytes, so a hostile header never makes it recurse
 * deeply or size anything by a declared length.
 */
export function checkStructure(b: Uint8Array, maxDepth = MAX_DEPTH): string | undefined {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  let i = 0;
  // Values still to read at each open level (a map's keys and values both
  // count); the bottom level holds the one top value.
  const pending: number[] = [1];
  const isMap: boolean[] = [false];
  const need = (n: number): boolean => i + n <= b.length;
  while (pending.length > 0) {
    const top = pending.length - 1;
    if (pending[top] === 0) {
      pending.pop();
      isMap.pop();
      continue;
    }
    const isKey = isMap[top]! && pending[top]! % 2 === 0;
    pending[top]!--;
    if (!need(1)) return 'truncated MessagePack';
    const t = b[i++]!;
    let skip = 0; // payload bytes of a scalar
    let items = -1; // elements of a container
    if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) skip = 0;
    else if (t >= 0xa0 && t <= 0xbf) skip = t & 0x1f;
    else if (t >= 0x90 && t <= 0x9f) items = t & 0x0f;
    else if (t >= 0x80 && t <= 0x8f) items = 2 * (t & 0x0f);
    else {
      const width = ({ 0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8, 0xd0: 1, 0xd1: 2, 0xd2: 4, 0xd3: 8, 0xca: 4, 0xcb: 8 } as Record<number, number>)[t];
      if (width !== undefined) skip = width;
      else {
        const lenWidth = ({ 0xc4: 1, 0xc5: 2, 0xc6: 4, 0xd9: 1, 0xda: 2, 0xdb: 4, 0xdc: 2, 0xdd: 4, 0xde: 2, 0xdf: 4 } as Record<number, number>)[t];
        if (lenWidth === undefined) return t === 0xc1 ? 'MessagePack byte 0xc1 (never used)' : 'MessagePack extension types are not part of the protocol';
        if (!need(lenWidth)) return 'truncated MessagePack';
        const len = lenWidth === 1 ? dv.getUint8(i) : lenWidth === 2 ? dv.getUint16(i) : dv.getUint32(i);
        i += lenWidth;
        if (t >= 0xdc) items = t >= 0xde ? 2 * len : len;
        else skip = len;
      }
    }
    if (items >= 0) {
      if (isKey) return 'a MessagePack map key that is an array or a map';
      // Every element takes at least one byte.
      if (items > b.length - i) return 'truncated MessagePack (a container declares more elements than bytes remain)';
      if (items > 0) {
        if (pending.length >= maxDepth) return `MessagePack nested deeper than ${maxDepth} levels`;
        pending.push(items);
        isMap.push(t >= 0x80 && t <= 0x8f || t >= 0xde);
      }
    } else {
      if (!need(skip)) return 'truncated MessagePack (a length beyond the bytes that remain)';
      i += skip;
    }
  }
  if (i !== b.length) return `${b.length - i} bytes after the MessagePack value`;
  return undefined;
}
