/* frame.h: the line and frame layers of PROTOCOL.md sections 2-3 (COBS
 * between 0x00 delimiters; 12-byte header, payload, CRC-32), and a
 * deframer that splits a hostile byte stream into frames without ever
 * buffering more than the size limit. */
#ifndef P11BRIDGE_FRAME_H
#define P11BRIDGE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define PB_FRAME_VERSION 1
#define PB_HEADER_SIZE 12
#define PB_CRC_SIZE 4
#define PB_MIN_FRAME (PB_HEADER_SIZE + PB_CRC_SIZE)

enum {
  PB_T_HELLO = 0x01, PB_T_CALL = 0x02, PB_T_BYE = 0x03, PB_T_PING = 0x04,
  PB_T_HELLO_OK = 0x81, PB_T_RESULT = 0x82, PB_T_BYE_OK = 0x83, PB_T_PONG = 0x84,
  PB_T_BUSY = 0x85, PB_T_ERROR = 0xFF
};

typedef struct {
  unsigned version, type, flags;
  uint32_t conn, req;
  const unsigned char *payload; /* points into the decoded piece */
  size_t len;
} pb_frame;

/* Largest COBS piece (without delimiters) a frame with max_payload bytes of payload takes. */
size_t pb_max_encoded_size(size_t max_payload);

/* 0x00 | COBS(header | payload | CRC) | 0x00 in a malloc'd buffer; NULL on ENOMEM. */
unsigned char *pb_frame_encode(unsigned type, uint32_t conn, uint32_t req, const void *payload,
                               size_t len, size_t *outlen);

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
