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
