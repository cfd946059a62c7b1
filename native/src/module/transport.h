/* transport.h: the port of libp11bridge, a link (below) carrying framed
 * round trips. A serial port is shared with other processes under the
 * convention of PROTOCOL.md section 7: flock(LOCK_EX) on the device for each
 * round trip, read only while locked, set up (raw 8N1 at the configured
 * speed, queues flushed) only while locked, closed on a timeout before the
 * lock is released. A unix socket is a stream of this process's own (the
 * daemon serves every connection as a port of its own): no device lock.
 * One request/response at a time with a silence timeout (BUSY frames
 * restart it). */
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
 * the attempts are exhausted: then the link is closed and the partial
 * input dropped (the next round trip reopens and flushes it), so the stream
 * is re-synchronised. Damaged pieces are dropped by the deframer and simply
 * lead to a resend on timeout. */
#define PB_ATTEMPT_BASE_MS 1000u  /* default of attempt_ms */
#define PB_BACKOFF_MS 50u         /* added before resend k: 50, 100, 200, ... ms (as the TS client) */
#define PB_BACKOFF_MAX_MS 1000u
#define PB_DEFAULT_RETRIES 4u
#define PB_DEFAULT_BAUD 115200u

/* ------------------------------------------------------------------ links
 *
 * The seam under the framing (as p11-kit's rpc transport vtable): what
 * carries the bytes. The port string selects the implementation:
 *   unix:/absolute/path   a unix socket (AF_UNIX, SOCK_STREAM), link_unix.c
 *   anything else         a serial device path (termios, flock), link_tty.c
 * transport.c keeps the framing, retries and timeouts once, on top. All
 * functions but close take msg/msglen for a message on failure. */
typedef struct pb_link pb_link;

#define PB_LINK_IN 1  /* wait(): input (or a hang-up / error that read() reports) */
#define PB_LINK_OUT 2 /* wait(): room to write */

typedef struct {
  const char *kind; /* "serial port", "unix socket": for messages */
  /* Settings this link cannot honour, before any I/O (a serial port: a
   * speed termios has no code for). 0, or -1. NULL: nothing to check. */
  int (*check)(const pb_link *l, unsigned long baud, char *msg, size_t msglen);
  /* Opens the device or connects: fails early on a wrong path. 0, or -1. */
  int (*open)(pb_link *l, char *msg, size_t msglen);
  /* Takes the link for one round trip, waiting until deadline_ms (pb_now_ms
   * clock): a serial port's flock. 0, or -1. */
  int (*lock)(pb_link *l, long long deadline_ms, char *msg, size_t msglen);
  void (*unlock)(pb_link *l);
  /* Once after each open, while locked: raw 8N1 at baud for a serial port;
   * nothing for a socket. 0, or -1. */
  int (*setup)(pb_link *l, unsigned long baud, char *msg, size_t msglen);
  /* Drops input that is pending (and output not yet sent, where the link
   * can): stale bytes of an earlier process or round trip. While locked. */
  void (*discard)(pb_link *l);
  /* Waits up to timeout_ms for input, and for room to write when
   * want_write: PB_LINK_IN | PB_LINK_OUT bits, 0 on timeout, -1. */
  int (*wait)(pb_link *l, int want_write, int timeout_ms, char *msg, size_t msglen);
  /* Never block: bytes read / written (> 0), 0 for none right now (a pty
   * whose other side is away: after a short pause), -1 when the link is
   * unusable (end of file, an I/O error). */
  long (*read)(pb_link *l, unsigned char *buf, size_t n, char *msg, size_t msglen);
  long (*write)(pb_link *l, const unsigned char *buf, size_t n, char *msg, size_t msglen);
  /* Closes the descriptor (never unlocking first: see pb_port_abandon). */
  void (*close)(pb_link *l);
} pb_link_ops;

struct pb_link {
  const pb_link_ops *ops;
  int fd;             /* -1 while closed */
  char *address;      /* as configured: /dev/ttyS4, unix:/run/p11bridge.sock (malloc'd) */
  const char *path;   /* the device or socket path within address */
  unsigned timeout_ms; /* the lock / connect budget (for messages too) */
};

extern const pb_link_ops pb_link_tty_ops, pb_link_unix_ops;

/* The link for a port string (not opened yet). 0, or -1 with a message. */
int pb_link_init(pb_link *l, const char *address, unsigned timeout_ms, char *msg, size_t msglen);
/* Frees what pb_link_init allocated (the link must be closed). */
void pb_link_free(pb_link *l);
/* For descriptor links: poll(2) as the wait operation. */
int pb_link_fd_wait(pb_link *l, int want_write, int timeout_ms, char *msg, size_t msglen);
/* CLOCK_MONOTONIC in ms; a pause. */
long long pb_now_ms(void);
void pb_sleep_us(long us);

/* ------------------------------------------------------------------ the port */

typedef struct {
  unsigned long roundtrips, resends, failures, busy, dropped_pieces;
} pb_port_stats;

typedef struct {
  pb_link link;    /* link.fd -1 after a failed round trip: reopened by the next one */
  int configured;  /* link set up since the last open */
  unsigned timeout_ms;
  unsigned retries;      /* resends after the first attempt */
  unsigned long baud;    /* line speed: set on a serial port; the hint for the attempt timeout */
  unsigned long attempt_ms; /* silence before a resend, before the line time */
  pb_deframer df;
  pb_port_stats stats;
} pb_port;

/* Opens the link for the port string (no lock yet: fails early on a wrong
 * path or a socket nobody listens on). 0, or -1 with a message in msg. */
int pb_port_open(pb_port *p, const char *path, unsigned timeout_ms, size_t max_payload,
                 char *msg, size_t msglen);
/* Transmission time of n bytes at the port's baud hint (10 bits a byte), in ms, rounded up. */
unsigned long pb_port_tx_ms(const pb_port *p, size_t n);
/* The time a request of reqlen bytes on the line and an expected response of
 * about resplen bytes of payload take at the baud hint (added to each
 * attempt's silence timeout and to the whole call's). */
unsigned long pb_port_line_ms(const pb_port *p, size_t reqlen, size_t resplen);
/* Closes the link and frees the buffers. */
void pb_port_close(pb_port *p);
/* In a forked child: forget the parent's port (our copy of its descriptor
 * shares the parent's lock, or its socket, so it must never be used,
 * unlocked or shut down: only closed). */
void pb_port_abandon(pb_port *p);

typedef struct {
  unsigned type;
  uint32_t conn, req;
  unsigned char *payload; /* malloc'd (NULL when empty) */
  size_t len;
} pb_response;

/* Takes the link (a device's lock, polling up to the timeout), sets it up
 * once after each open (a speed the link cannot set fails here, before any
 * I/O), writes the encoded frame and waits for the response frame with
 * request id req (and connection id conn unless any_conn), resending it as
 * described above. resplen: the expected response payload size (for the
 * attempt timeout). Frames of the request direction (echo), other ids and
 * damaged pieces are dropped; BUSY restarts the silence timers. 0 with
 * *resp filled (caller frees payload), or -1 with a message (no answer
 * after all attempts, I/O error, unknown frame version). */
int pb_port_roundtrip(pb_port *p, const unsigned char *frame, size_t framelen, size_t resplen,
                      int any_conn, uint32_t conn, uint32_t req, pb_response *resp, char *msg,
                      size_t msglen);

#endif
