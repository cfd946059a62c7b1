/* transport.h: the serial port of libp11bridge: opened raw 8N1, locked with
 * flock for the module's life, and one request/response round trip at a
 * time with a silence timeout (BUSY frames restart it). */
#ifndef P11BRIDGE_TRANSPORT_H
#define P11BRIDGE_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include "frame.h"

typedef struct {
  int fd;
  unsigned timeout_ms;
  pb_deframer df;
} pb_port;

/* Opens and locks path. 0, or -1 with a message in msg. */
int pb_port_open(pb_port *p, const char *path, unsigned timeout_ms, size_t max_payload,
                 char *msg, size_t msglen);
/* Closes the fd (releasing the lock) and frees the buffers. */
void pb_port_close(pb_port *p);
/* In a forked child: forget the parent's port without touching its lock. */
void pb_port_abandon(pb_port *p);

typedef struct {
  unsigned type;
  uint32_t conn, req;
  unsigned char *payload; /* malloc'd (NULL when empty) */
  size_t len;
} pb_response;

/* Writes the encoded frame and waits for the response frame with request id
 * req (and connection id conn unless any_conn). Frames of the request
 * direction (echo), other ids and damaged pieces are dropped; BUSY restarts
 * the silence timer. 0 with *resp filled (caller frees payload), or -1 with
 * a message (timeout, I/O error, unknown frame version). */
int pb_port_roundtrip(pb_port *p, const unsigned char *frame, size_t framelen, int any_conn,
                      uint32_t conn, uint32_t req, pb_response *resp, char *msg, size_t msglen);

#endif
