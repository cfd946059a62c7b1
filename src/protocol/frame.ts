// Frame layout (PROTOCOL.md section 3): a header of 4 bytes (8 in requests
// on a connection, which carry its key), a MessagePack payload and a CRC-32,
// COBS-encoded between 0x00 delimiters: 11 bytes of framing for a small
// answer, 15 for a small request.
import { crc32 } from 'node:zlib';
import { cobsDecode, cobsEncodeDelimited } from './cobs.js';
import { FRAME, LIMITS } from './table.js';

export const FRAME_VERSION = FRAME.version;
/** type, connection, request id */
export const BASE_HEADER_SIZE = 4;
/** ... and the key, in a request on a connection (conn != 0) */
export const KEYED_HEADER_SIZE = 8;
export const CRC_SIZE = 4;
export const MIN_FRAME = BASE_HEADER_SIZE + CRC_SIZE;
export const DEFAULT_MAX_PAYLOAD = LIMITS.defaultMaxPayload;
/** Request ids (and HELLO nonces in the header) are 16 bits: 1 .. 65535, wrapping to 1. */
export const MAX_REQ = 0xffff;

export const FrameType = {
  Hello: FRAME.types.HELLO,
  Call: FRAME.types.CALL,
  Bye: FRAME.types.BYE,
  Ping: FRAME.types.PING,
  HelloOk: FRAME.types.HELLO_OK,
  Result: FRAME.types.RESULT,
  ByeOk: FRAME.types.BYE_OK,
  Pong: FRAME.types.PONG,
  Busy: FRAME.types.BUSY,
  Error: FRAME.types.ERROR,
} as const;

/** Frames from the trusted VM have the high bit of the type set. */
export const isResponseType = (type: number): boolean => (type & 0x80) !== 0;
/** The frame version in a type byte (bits 6-4). */
export const versionOf = (type: number): number => (type >> 4) & 7;
/** Whether a frame of this type and connection carries the connection's key. */
export const isKeyed = (type: number, conn: number): boolean => !isResponseType(type) && conn !== 0;

export interface FrameHeader {
  version: number;
  type: number;
  conn: number;
  req: number;
  /** The connection's key (requests on a connection), else 0. */
  key: number;
}
export interface Frame extends FrameHeader {
  payload: Buffer;
}

/** Encodes a frame; `key` goes where the header has room for it (requests on a connection). */
export function encodeFrame(type: number, conn: number, req: number, payload: Uint8Array = EMPTY, key = 0): Buffer {
  if (conn < 0 || conn > 0xff || req < 0 || req > MAX_REQ) throw new RangeError(`frame header out of range: connection ${conn}, request ${req}`);
  const head = isKeyed(type, conn) ? KEYED_HEADER_SIZE : BASE_HEADER_SIZE;
  const raw = Buffer.allocUnsafe(head + payload.length + CRC_SIZE);
  raw[0] = type;
  raw[1] = conn;
  raw.writeUInt16BE(req, 2);
  if (head === KEYED_HEADER_SIZE) raw.writeUInt32BE(key >>> 0, 4);
  raw.set(payload, head);
  const end = head + payload.length;
  raw.writeUInt32BE(crc32(raw.subarray(0, end)), end);
  return cobsEncodeDelimited(raw);
}
const EMPTY = Buffer.alloc(0);

/** The header of a decoded frame (undefined if it is too short for its own layout). */
export function readHeader(raw: Buffer): (FrameHeader & { size: number }) | undefined {
  if (raw.length < BASE_HEADER_SIZE) return undefined;
  const type = raw[0]!;
  const conn = raw[1]!;
  const version = versionOf(type);
  // a frame of another version: only the bytes every version shares
  const keyed = version === FRAME_VERSION && isKeyed(type, conn);
  if (keyed && raw.length < KEYED_HEADER_SIZE) return undefined;
  return { version, type, conn, req: raw.readUInt16BE(2), key: keyed ? raw.readUInt32BE(4) : 0, size: keyed ? KEYED_HEADER_SIZE : BASE_HEADER_SIZE };
}

export type DecodeFailure = 'cobs' | 'short' | 'crc';

/** Decodes one piece found between delimiters. */
export function decodeFrame(piece: Buffer): Frame | DecodeFailure {
  const raw = cobsDecode(piece);
  if (!raw) return 'cobs';
  if (raw.length < MIN_FRAME) return 'short';
  const end = raw.length - CRC_SIZE;
  if (crc32(raw.subarray(0, end)) !== raw.readUInt32BE(end)) return 'crc';
  const h = readHeader(raw.subarray(0, end));
  if (!h) return 'short';
  return { version: h.version, type: h.type, conn: h.conn, req: h.req, key: h.key, payload: raw.subarray(h.size, end) };
}

/** Largest COBS piece a frame with `maxPayload` bytes of payload can take. */
export function maxEncodedSize(maxPayload: number): number {
  const raw = maxPayload + KEYED_HEADER_SIZE + CRC_SIZE;
  return raw + Math.ceil(raw / 254) + 1;
}

/** The request id after `req` (1 .. 65535, then 1 again). */
export const nextReq = (req: number): number => (req >= MAX_REQ ? 1 : req + 1);

/**
 * Whether request id `a` comes before `b` on a connection: ids increase by one
 * per request and wrap from 65535 to 1, so "before" means at most 32768 back.
 */
export function isBefore(a: number, b: number): boolean {
  const d = (b - a) & 0xffff;
  return d !== 0 && d < 0x8000;
}
