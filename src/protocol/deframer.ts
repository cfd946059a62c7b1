// Splits a byte stream into frames at 0x00 delimiters. Bytes are hostile:
// nothing is buffered past the size limit, and every bad piece is dropped
// and reported, after which the next frame is read normally.
import { cobsDecode } from './cobs.js';
import { decodeFrame, maxEncodedSize, readHeader, KEYED_HEADER_SIZE, type Frame, type FrameHeader } from './frame.js';

export interface DeframerEvents {
  frame(frame: Frame): void;
  /** A piece that was not a valid frame (noise, damage, truncation). */
  drop(reason: 'cobs' | 'short' | 'crc', bytes: number): void;
  /** A piece over the size limit; `header` if its first bytes could be read. */
  oversize(bytes: number, header: FrameHeader | undefined): void;
}

export class Deframer {
  private parts: Buffer[] = [];
  private partLen = 0;
  private overflow = false;
  private overflowPrefix: Buffer | undefined;
  private overflowBytes = 0;
  private readonly limit: number;

  constructor(private readonly maxPayload: number, private readonly on: DeframerEvents) {
    this.limit = maxEncodedSize(maxPayload);
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const zero = chunk.indexOf(0, start);
      const end = zero === -1 ? chunk.length : zero;
      if (end > start) this.append(chunk.subarray(start, end));
      if (zero === -1) return;
      this.finishPiece();
      start = zero + 1;
    }
  }

  private append(bytes: Buffer): void {
    if (this.overflow) {
      this.overflowBytes += bytes.length;
      return;
    }
    if (this.partLen + bytes.length > this.limit) {
      // Keep just enough to read the header, so the sender can be told.
      const all = Buffer.concat([...this.parts, bytes.subarray(0, 64)]);
      this.overflowPrefix = all.subarray(0, 64);
      this.overflowBytes = this.partLen + bytes.length;
      this.overflow = true;
      this.parts = [];
      this.partLen = 0;
      return;
    }
    // Copy: serial chunks are small and the caller may reuse its buffer.
    this.parts.push(bytes);
    this.partLen += bytes.length;
  }

  private finishPiece(): void {
    if (this.overflow) {
      const prefix = this.overflowPrefix ? cobsDecode(this.overflowPrefix, KEYED_HEADER_SIZE) : null;
      const header = prefix ? readHeader(prefix) : undefined;
      const bytes = this.overflowBytes;
      this.overflow = false;
      this.overflowPrefix = undefined;
      this.overflowBytes = 0;
      this.on.oversize(bytes, header);
      return;
    }
    if (this.partLen === 0) return;
    const piece = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.partLen);
    this.parts = [];
    this.partLen = 0;
    const result = decodeFrame(piece);
    if (typeof result === 'string') this.on.drop(result, piece.length);
    // The piece limit allows for COBS's worst case; the payload limit is exact.
    else if (result.payload.length > this.maxPayload) this.on.oversize(result.payload.length, result);
    else this.on.frame(result);
  }
}
