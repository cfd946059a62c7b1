/* frame.c: COBS, frame header and CRC, deframer (see frame.h). */
#include "frame.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

size_t pb_max_encoded_size(size_t max_payload) {
  size_t raw = max_payload + PB_KEYED_HEADER_SIZE + PB_CRC_SIZE;
  return raw + (raw + 253) / 254 + 1;
}

static void put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}
static uint32_t get32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t crc(const unsigned char *p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  while (n > 0) { /* zlib takes uInt lengths */
    uInt k = n > 0x40000000u ? 0x40000000u : (uInt)n;
    c = crc32(c, p, k);
    p += k;
    n -= k;
  }
  return (uint32_t)c;
}

unsigned char *pb_frame_encode(unsigned type, uint32_t conn, uint32_t req, uint32_t key,
                               const void *payload, size_t len, size_t *outlen) {
  size_t head = PB_IS_KEYED(type, conn) ? PB_KEYED_HEADER_SIZE : PB_BASE_HEADER_SIZE;
  size_t rawlen = head + len + PB_CRC_SIZE;
  unsigned char *raw = malloc(rawlen);
  unsigned char *out = malloc(rawlen + rawlen / 254 + 3);
  if (!raw || !out) {
    free(raw);
    free(out);
    return NULL;
  }
  raw[0] = (unsigned char)type;
  raw[1] = (unsigned char)conn;
  raw[2] = (unsigned char)(req >> 8);
  raw[3] = (unsigned char)req;
  if (head == PB_KEYED_HEADER_SIZE) put32(raw + 4, key);
  if (len) memcpy(raw + head, payload, len);
  put32(raw + head + len, crc(raw, head + len));
  /* 0x00 COBS(raw) 0x00 */
  size_t o = 0, code_at;
  unsigned char code = 1;
  out[o++] = 0;
  code_at = o++;
  for (size_t i = 0; i < rawlen; i++) {
    unsigned char b = raw[i];
    if (b == 0) {
      out[code_at] = code;
      code_at = o++;
      code = 1;
    } else {
      out[o++] = b;
      if (++code == 0xFF) {
        out[code_at] = code;
        code_at = o++;
        code = 1;
      }
    }
  }
  out[code_at] = code;
  out[o++] = 0;
  free(raw);
  *outlen = o;
  return out;
}

long pb_cobs_decode_inplace(unsigned char *buf, size_t n) {
  size_t i = 0, o = 0;
  while (i < n) {
    unsigned code = buf[i++];
    if (code == 0) return -1;
    size_t end = i + code - 1;
    if (end > n) return -1;
    while (i < end) {
      unsigned char b = buf[i++];
      if (b == 0) return -1;
      buf[o++] = b; /* o < i always: safe in place */
    }
    if (code < 0xFF && i < n) buf[o++] = 0;
  }
  return (long)o;
}

int pb_frame_decode(unsigned char *piece, size_t n, pb_frame *f) {
  long m = pb_cobs_decode_inplace(piece, n);
  if (m < 0) return -1;
  if ((size_t)m < PB_MIN_FRAME) return -2;
  size_t end = (size_t)m - PB_CRC_SIZE;
#ifndef PB_FUZZING
  if (crc(piece, end) != get32(piece + end)) return -3;
#else
  /* fuzz builds only (make fuzz): a CRC is a wall no mutation gets past, so
   * the decoders behind it would never see a mutated payload */
  (void)crc(piece, end);
#endif
  f->type = piece[0];
  f->version = PB_VERSION_OF(f->type);
  f->conn = piece[1];
  f->req = ((uint32_t)piece[2] << 8) | piece[3];
  size_t head = PB_BASE_HEADER_SIZE;
  f->key = 0;
  if (f->version == PB_FRAME_VERSION && PB_IS_KEYED(f->type, f->conn)) {
    if (end < PB_KEYED_HEADER_SIZE) return -2;
    f->key = get32(piece + 4);
    head = PB_KEYED_HEADER_SIZE;
  }
  f->payload = piece + head;
  f->len = end - head;
  return 0;
}

void pb_deframer_init(pb_deframer *d, size_t max_payload) {
  memset(d, 0, sizeof *d);
  d->limit = pb_max_encoded_size(max_payload);
}

void pb_deframer_free(pb_deframer *d) {
  free(d->buf);
  d->buf = NULL;
  d->len = d->cap = 0;
  d->overflow = 0;
}

static int append(pb_deframer *d, const unsigned char *p, size_t n) {
  if (d->overflow) return 0;
  if (n > d->limit - d->len) { /* too long: drop up to the next 0x00 */
    d->overflow = 1;
    d->len = 0;
    return 0;
  }
  if (d->len + n > d->cap) {
    size_t cap = d->cap ? d->cap : 4096;
    while (cap < d->len + n) cap *= 2;
    if (cap > d->limit) cap = d->limit;
    unsigned char *b = realloc(d->buf, cap);
    if (!b) return -1;
    d->buf = b;
    d->cap = cap;
  }
  memcpy(d->buf + d->len, p, n);
  d->len += n;
  return 0;
}

int pb_deframer_push(pb_deframer *d, const unsigned char *p, size_t n, pb_frame_cb cb, void *ctx) {
  size_t start = 0;
  while (start < n) {
    const unsigned char *z = memchr(p + start, 0, n - start);
    size_t end = z ? (size_t)(z - p) : n;
    if (end > start && append(d, p + start, end - start) != 0) return -1;
    if (!z) return 0;
    /* a piece ends */
    if (d->overflow) {
      d->overflow = 0;
      d->dropped++;
    } else if (d->len > 0) {
      pb_frame f;
      if (pb_frame_decode(d->buf, d->len, &f) == 0)
        cb(&f, ctx);
      else
        d->dropped++;
    }
    d->len = 0;
    start = end + 1;
  }
  return 0;
}
