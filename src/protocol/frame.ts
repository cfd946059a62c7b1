// Frame layout (PROTOCOL.md section 3): a 12-byte header, a MessagePack
// payload and a CRC-32, COBS-encoded between 0x00 delimiters.
import { crc32 } from 'node:zlib';
import { cobsDecode, cobsEncodeDelimited } from './cobs.js';

export const FRAME_VERSION = 1;
export const HEADER_SIZE = 12;
export const CRC_SIZE = 4;
export const MIN_FRAME = HEADER_SIZE + CRC_SIZE;
export const DEFAULT_MAX_PAYLOAD = 1024 * 1024;

export const FrameType = {
  Hello: 0x01,
  Call: 0x02,
  Bye: 0x03,
  Ping: 0x04,
  HelloOk: 0x81,
  Result: 0x82,
  ByeOk: 0x83,
  Pong: 0x84,
  Busy: 0x85,
  Error: 0xff,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];

/** Frames from the trusted VM have the high bit of the type set. */
export const isResponseType = (type: number): boolean => (type & 0x80) !== 0;

export interface FrameHeader {
  version: number;
  type: number;
  flags: number;
  conn: number;
  req: number;
}
export interface Frame extends FrameHeader {
  payload: Buffer;
}

export function encodeFrame(type: number, conn: number, req: number, payload: Uint8Array = EMPTY): Buffer {
  const raw = Buffer.allocUnsafe(HEADER_SIZE + payload.length + CRC_SIZE);
  raw[0] = FRAME_VERSION;
  raw[1] = type;
  raw.writeUInt16BE(0, 2);
  raw.writeUInt32BE(conn >>> 0, 4);
  raw.writeUInt32BE(req >>> 0, 8);
  raw.set(payload, HEADER_SIZE);
  const end = HEADER_SIZE + payload.length;
  raw.writeUInt32BE(crc32(raw.subarray(0, end)), end);
  return cobsEncodeDelimited(raw);
}
const EMPTY = Buffer.alloc(0);

export function readHeader(raw: Buffer): FrameHeader {
  return {
    version: raw[0]!,
    type: raw[1]!,
    flags: raw.readUInt16BE(2),
    conn: raw.readUInt32BE(4),
    req: raw.readUInt32BE(8),
  };
}

export type DecodeFailure = 'cobs' | 'short' | 'crc';

/** Decodes one piece found between delimiters. */
export function decodeFrame(piece: Buffer): Frame | DecodeFailure {
  const raw = cobsDecode(piece);
  if (!raw) return 'cobs';
  if (raw.length < MIN_FRAME) return 'short';
  const end = raw.length - CRC_SIZE;
  if (crc32(raw.subarray(0, end)) !== raw.readUInt32BE(end)) return 'crc';
  return { ...readHeader(raw), payload: raw.subarray(HEADER_SIZE, end) };
}

/** Largest COBS piece a frame with `maxPayload` bytes of payload can take. */
export function maxEncodedSize(maxPayload: number): number {
  const raw = maxPayload + MIN_FRAME;
  return raw + Math.ceil(raw / 254) + 1;
}
