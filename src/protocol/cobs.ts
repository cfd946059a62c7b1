// Consistent Overhead Byte Stuffing: removes every 0x00 from a frame so 0x00
// can delimit frames on the line, and any damage ends at the next delimiter.

/** Encodes `src` and writes `0x00 COBS(src) 0x00`. */
export function cobsEncodeDelimited(src: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(src.length + Math.ceil(src.length / 254) + 3);
  out[0] = 0;
  let codeAt = 1;
  let o = 2;
  let code = 1;
  for (let i = 0; i < src.length; i++) {
    const b = src[i]!;
    if (b === 0) {
      out[codeAt] = code;
      codeAt = o++;
      code = 1;
    } else {
      out[o++] = b;
      if (++code === 0xff) {
        out[codeAt] = code;
        codeAt = o++;
        code = 1;
      }
    }
  }
  out[codeAt] = code;
  out[o++] = 0;
  return out.subarray(0, o);
}

/**
 * Decodes one COBS piece (without delimiters). Returns null if it is not
 * valid COBS. With `limit`, decodes at most that many bytes and tolerates a
 * truncated tail (used to read the header of an oversize frame).
 */
export function cobsDecode(src: Uint8Array, limit?: number): Buffer | null {
  const max = limit ?? src.length;
  const out = Buffer.allocUnsafe(Math.min(src.length, max));
  let o = 0;
  let i = 0;
  while (i < src.length && o < max) {
    const code = src[i++]!;
    if (code === 0) return null;
    const end = i + code - 1;
    if (end > src.length) {
      if (limit === undefined) return null;
    }
    while (i < end && i < src.length && o < max) {
      const b = src[i++]!;
      if (b === 0) return null;
      out[o++] = b;
    }
    if (code < 0xff && i < src.length && o < max) out[o++] = 0;
  }
  return out.subarray(0, o);
}
