/* transport.h: the serial port of libp11bridge, shared with other processes
 * under the convention of PROTOCOL.md section 7: flock(LOCK_EX) on the
 * device for each round trip, read only while locked, set up (raw 8N1,
 * queues flushed) only while locked, closed on a timeout before the lock is
 * released. One request/response at a time with a silence timeout (BUSY
 * frames restart it). */
#ifndef P11BRIDGE_TRANSPORT_H
#define P11BRIDGE_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include "frame.h"

/* Retries (PROTOCOL.md sections 3 and 7): a request whose answer does not
 * come within the attempt's silence timeout is sent again, the same bytes
 * (same connection and request id: the server answers a repeat from its copy
 * of the last response and never runs a call twice; a repeated HELLO keeps
 * its nonce), still under the device lock, up to `retries` times with a
 * growing wait. Attempt timeout: `attempt_ms` (default PB_ATTEMPT_BASE_MS) plus the time the
 * request and the expected response take at the `baud` hint, plus the
 * back-off. The whole call gives up when `timeout_ms` passes without a sign
 * of life from the server (BUSY restarts it, and the attempt timer) or when
 * the attempts are exhausted: then the device is closed and the partial
 * input dropped (the next round trip reopens and flushes it), so the stream
 * is re-synchronised. Damaged pieces are dropped by the deframer and simply
 * lead to a resend on timeout. */
#define PB_ATTEMPT_BASE_MS 1000u  /* default of attempt_ms */
#define PB_BACKOFF_MS 50u         /* added before resend k: 50, 100, 200, ... ms (as the TS client) */
#define PB_BACKOFF_MAX_MS 1000u
#define PB_DEFAULT_RETRIES 4u
#define PB_DEFAULT_BAUD 115200u

typedef struct {
  unsigned long roundtrips, resends, failures, busy, dropped_pieces;
} pb_port_stats;

typedef struct {
  int fd;          /* -1 after a timeout: reopened by the next round trip */
  int configured;  /* termios set up since the last open */
  char *path;
  unsigned timeout_ms;
  unsigned retries;      /* resends after the first attempt */
  unsigned long baud;    /* line speed hint for the attempt timeout */
  unsigned long attempt_ms; /* silence before a resend, before the line time */
  pb_deframer df;
  pb_port_stats stats;
} pb_port;

/* Opens path (no lock yet: fails early on a wrong path). 0, or -1 with a message in msg. */
int pb_port_open(pb_port *p, const char *path, unsigned timeout_ms, size_t max_payload,
                 char *msg, size_t msglen);
/* Transmission time of n bytes at the port's baud hint (10 bits a byte), in ms, rounded up. */
unsigned long pb_port_tx_ms(const pb_port *p, size_t n);
/* The time a request of reqlen bytes on the line and an expected response of
 * about resplen bytes of payload take at the baud hint (added to each
 * attempt's silence timeout and to the whole call's). */
unsigned long pb_port_line_ms(const pb_port *p, size_t reqlen, size_t resplen);
/* Closes the fd and frees the buffers. */
void pb_port_close(pb_port *p);
/* In a forked child: forget the parent's port (our copy of its descriptor
 * shares the parent's lock, so it must never be used or unlocked). */
void pb_port_abandon(pb_port *p);

typedef struct {
  unsigned type;
  uint32_t conn, req;
  unsigned char *payload; /* malloc'd (NULL when empty) */
  size_t len;
} pb_response;

/* Takes the device lock (polling up to the timeout), writes the encoded
 * frame and waits for the response frame with request id req (and
 * connection id conn unless any_conn), resending it as described above.
 * resplen: the expected response payload size (for the attempt timeout).
 * Frames of the request direction (echo), other ids and damaged pieces are
 * dropped; BUSY restarts the silence timers. 0 with *resp filled (caller
 * frees payload), or -1 with a message (no answer after all attempts, I/O
 * error, unknown frame version). */
int pb_port_roundtrip(pb_port *p, const unsigned char *frame, size_t framelen, size_t resplen,
                      int any_conn, uint32_t conn, uint32_t req, pb_response *resp, char *msg,
                      size_t msglen);

#endif
