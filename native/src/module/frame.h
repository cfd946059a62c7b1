/* frame.h: the line and frame layers of PROTOCOL.md sections 2-3 (COBS
 * between 0x00 delimiters; header, payload, CRC-32), and a deframer that
 * splits a hostile byte stream into frames without ever buffering more than
 * the size limit. The version and frame types come from protocol.json
 * (pb_gen.h: PB_FRAME_VERSION, PB_T_*). */
#ifndef P11BRIDGE_FRAME_H
#define P11BRIDGE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "pb_gen.h"

/* type (direction, version, kind), connection (1 byte), request id (2
 * bytes); a request on a connection (conn != 0) adds the connection's key */
#define PB_BASE_HEADER_SIZE 4
#define PB_KEYED_HEADER_SIZE 8
#define PB_CRC_SIZE 4
#define PB_MIN_FRAME (PB_BASE_HEADER_SIZE + PB_CRC_SIZE)
#define PB_MAX_REQ 0xFFFFu

/* the frame version in a type byte, and whether a frame carries the key */
#define PB_VERSION_OF(type) (((type) >> 4) & 7u)
#define PB_IS_KEYED(type, conn) (((type) & 0x80) == 0 && (conn) != 0)

typedef struct {
  unsigned version, type;
  uint32_t conn, req, key;
  const unsigned char *payload; /* points into the decoded piece */
  size_t len;
} pb_frame;

/* Largest COBS piece (without delimiters) a frame with max_payload bytes of payload takes. */
size_t pb_max_encoded_size(size_t max_payload);

/* 0x00 | COBS(header | payload | CRC) | 0x00 in a malloc'd buffer; NULL on
 * ENOMEM. key goes into the header of keyed frames (PB_IS_KEYED). */
unsigned char *pb_frame_encode(unsigned type, uint32_t conn, uint32_t req, uint32_t key,
                               const void *payload, size_t len, size_t *outlen);

/* COBS-decodes buf[0..n) in place; returns the decoded length or -1. */
long pb_cobs_decode_inplace(unsigned char *buf, size_t n);

/* Decodes one piece (in place): 0 ok, -1 COBS, -2 short, -3 CRC. */
int pb_frame_decode(unsigned char *piece, size_t n, pb_frame *f);

typedef void (*pb_frame_cb)(const pb_frame *f, void *ctx);

typedef struct {
  unsigned char *buf;
  size_t len, cap, limit;
  int overflow;
  unsigned long dropped;
} pb_deframer;

void pb_deframer_init(pb_deframer *d, size_t max_payload);
void pb_deframer_free(pb_deframer *d);
/* Feeds bytes; calls cb for every well-formed frame. Returns -1 only on ENOMEM. */
int pb_deframer_push(pb_deframer *d, const unsigned char *p, size_t n, pb_frame_cb cb, void *ctx);

#endif
