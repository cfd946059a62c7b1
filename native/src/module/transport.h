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

typedef struct {
  int fd;          /* -1 after a timeout: reopened by the next round trip */
  int configured;  /* termios set up since the last open */
  char *path;
  unsigned timeout_ms;
  pb_deframer df;
} pb_port;

/* Opens path (no lock yet: fails early on a wrong path). 0, or -1 with a message in msg. */
int pb_port_open(pb_port *p, const char *path, unsigned timeout_ms, size_t max_payload,
                 char *msg, size_t msglen);
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
 * frame and waits for the response frame with request id
 * req (and connection id conn unless any_conn). Frames of the request
 * direction (echo), other ids and damaged pieces are dropped; BUSY restarts
 * the silence timer. 0 with *resp filled (caller frees payload), or -1 with
 * a message (timeout, I/O error, unknown frame version). */
int pb_port_roundtrip(pb_port *p, const unsigned char *frame, size_t framelen, int any_conn,
                      uint32_t conn, uint32_t req, pb_response *resp, char *msg, size_t msglen);

#endif
