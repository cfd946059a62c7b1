/* transport.c: framed round trips on a link (see transport.h). The link
 * (link_tty.c, link_unix.c) moves bytes; here are the framing, the device
 * lock's place in a round trip, the retries and the timeouts, once. */
#define _GNU_SOURCE
#include "transport.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

long long pb_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void pb_sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
  nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ links */

int pb_link_init(pb_link *l, const char *address, unsigned timeout_ms, char *msg, size_t msglen) {
  memset(l, 0, sizeof *l);
  l->fd = -1;
  l->timeout_ms = timeout_ms;
  l->address = strdup(address);
  if (!l->address) {
    snprintf(msg, msglen, "out of memory");
    return -1;
  }
  if (!strncmp(address, "unix:", 5)) {
    l->path = l->address + 5;
    if (l->path[0] != '/') {
      snprintf(msg, msglen, "unix socket address %s: expected unix:/absolute/path", address);
      pb_link_free(l);
      return -1;
    }
    l->ops = &pb_link_unix_ops;
  } else {
    l->path = l->address;
    l->ops = &pb_link_tty_ops;
  }
  return 0;
}

void pb_link_free(pb_link *l) {
  free(l->address);
  l->address = NULL;
  l->path = NULL;
}

int pb_link_fd_wait(pb_link *l, int want_write, int timeout_ms, char *msg, size_t msglen) {
  struct pollfd pfd = {l->fd, (short)(POLLIN | (want_write ? POLLOUT : 0)), 0};
  int r = poll(&pfd, 1, timeout_ms);
  if (r < 0) {
    if (errno == EINTR) return 0;
    snprintf(msg, msglen, "poll: %s", strerror(errno));
    return -1;
  }
  if (r == 0) return 0;
  if (pfd.revents & POLLNVAL) {
    snprintf(msg, msglen, "%s descriptor is not open", l->ops->kind);
    return -1;
  }
  /* a hang-up or an error is for read() to report (or wait out) */
  return ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) ? PB_LINK_IN : 0) | ((pfd.revents & POLLOUT) ? PB_LINK_OUT : 0);
}

/* ------------------------------------------------------------------ the port */

int pb_port_open(pb_port *p, const char *path, unsigned timeout_ms, size_t max_payload,
                 char *msg, size_t msglen) {
  memset(p, 0, sizeof *p);
  p->link.fd = -1;
  p->timeout_ms = timeout_ms;
  p->retries = PB_DEFAULT_RETRIES;
  p->baud = PB_DEFAULT_BAUD;
  p->attempt_ms = PB_ATTEMPT_BASE_MS;
  if (pb_link_init(&p->link, path, timeout_ms, msg, msglen) != 0) return -1;
  if (p->link.ops->open(&p->link, msg, msglen) != 0) {
    pb_link_free(&p->link);
    return -1;
  }
  pb_deframer_init(&p->df, max_payload);
  return 0;
}

void pb_port_close(pb_port *p) {
  if (p->link.ops && p->link.fd >= 0) p->link.ops->close(&p->link);
  p->link.fd = -1;
  p->configured = 0;
  pb_link_free(&p->link);
  pb_deframer_free(&p->df);
}

void pb_port_abandon(pb_port *p) {
  /* Our copy of the parent's descriptor shares its open file description:
   * closing the copy never releases the parent's flock (only LOCK_UN or the
   * last close would) nor ends its socket connection (only the last close or
   * a shutdown would), and we never unlock or shut down. */
  pb_port_close(p);
}

unsigned long pb_port_tx_ms(const pb_port *p, size_t n) {
  unsigned long long baud = p->baud ? p->baud : PB_DEFAULT_BAUD;
  return (unsigned long)(((unsigned long long)n * 10ull * 1000ull + baud - 1) / baud);
}

unsigned long pb_port_line_ms(const pb_port *p, size_t reqlen, size_t resplen) {
  /* the response on the line: payload, header and CRC, COBS and delimiters */
  size_t resp_line = resplen + PB_MIN_FRAME + resplen / 254 + 3;
  return pb_port_tx_ms(p, reqlen) + pb_port_tx_ms(p, resp_line);
}

static unsigned long backoff_ms(unsigned resend) { /* resend 1, 2, ... */
  unsigned long b = PB_BACKOFF_MS;
  for (unsigned i = 1; i < resend && b < PB_BACKOFF_MAX_MS; i++) b *= 2;
  return b > PB_BACKOFF_MAX_MS ? PB_BACKOFF_MAX_MS : b;
}

typedef struct {
  int any_conn;
  uint32_t conn, req;
  int got, busy, bad_version;
  pb_response *resp;
  int nomem;
} waiter;

static void on_frame(const pb_frame *f, void *ctx) {
  waiter *w = ctx;
  if (!(f->type & 0x80)) return; /* our own request, echoed by a cooked tty */
  if (f->req != w->req || (!w->any_conn && f->conn != w->conn)) return; /* stray or late */
  if (w->got) return;
  if (f->version != PB_FRAME_VERSION) {
    w->bad_version = (int)f->version;
    return;
  }
  if (f->type == PB_T_BUSY) {
    w->busy = 1;
    return;
  }
  w->resp->type = f->type;
  w->resp->conn = f->conn;
  w->resp->req = f->req;
  w->resp->len = f->len;
  w->resp->payload = NULL;
  if (f->len) {
    w->resp->payload = malloc(f->len);
    if (!w->resp->payload) {
      w->nomem = 1;
      return;
    }
    memcpy(w->resp->payload, f->payload, f->len);
  }
  w->got = 1;
}

static int exchange(pb_port *p, const unsigned char *frame, size_t framelen, size_t resplen,
                    waiter *w, char *msg, size_t msglen);

int pb_port_roundtrip(pb_port *p, const unsigned char *frame, size_t framelen, size_t resplen,
                      int any_conn, uint32_t conn, uint32_t req, pb_response *resp, char *msg,
                      size_t msglen) {
  waiter w = {any_conn, conn, req, 0, 0, 0, resp, 0};
  pb_link *l = &p->link;
  const pb_link_ops *ops = l->ops;
  p->stats.roundtrips++;
  /* a setting the link cannot honour is a configuration error: before any I/O */
  if (!p->configured && ops->check && ops->check(l, p->baud, msg, msglen) != 0) return -1;
  if (l->fd < 0) { /* closed after a failed round trip */
    if (ops->open(l, msg, msglen) != 0) return -1;
    p->configured = 0;
  }
  if (ops->lock(l, pb_now_ms() + p->timeout_ms, msg, msglen) != 0) return -1;
  if (!p->configured) {
    /* set up (which may flush) only while holding the lock: flushing could
     * destroy another process's round trip */
    if (ops->setup(l, p->baud, msg, msglen) != 0) {
      ops->unlock(l);
      return -1;
    }
    /* bytes a cooked tty buffered before it was raw, or left by a process
     * that died mid-call, are stale noise */
    ops->discard(l);
    p->configured = 1;
  }
  /* whatever piece was cut off at our last unlock belongs to nobody now */
  p->df.len = 0;
  p->df.overflow = 0;
  unsigned long dropped = p->df.dropped;
  int r = exchange(p, frame, framelen, resplen, &w, msg, msglen);
  p->stats.dropped_pieces += p->df.dropped - dropped;
  if (r == 0) {
    ops->unlock(l);
    return 0;
  }
  p->stats.failures++;
  if (w.got) {
    free(resp->payload);
    resp->payload = NULL;
  }
  /* Gave up: the link is closed, so nothing of ours can read the next
   * holder's bytes, and the partial input is dropped (the next round trip
   * reopens the link, flushes its queues and starts a fresh piece: the
   * stream is re-synchronised). No read of ours is pending here (all I/O is synchronous),
   * so unlocking first is equivalent to PROTOCOL.md's close-then-release, and
   * releases the lock even when a forked child still holds a copy of the
   * descriptor (the close alone would not). */
  ops->unlock(l);
  ops->close(l);
  p->configured = 0;
  return -1;
}

static int exchange(pb_port *p, const unsigned char *frame, size_t framelen, size_t resplen,
                    waiter *w, char *msg, size_t msglen) {
  pb_link *l = &p->link;
  const pb_link_ops *ops = l->ops;
  size_t off = 0;
  unsigned attempt = 1, resends = 0;
  const unsigned max_attempts = p->retries + 1;
  /* the whole call: timeout_ms of silence plus the transmission time; each
   * attempt: attempt_ms plus the transmission time (never more than the whole) */
  const unsigned long line_ms = pb_port_line_ms(p, framelen, resplen);
  const unsigned long attempt_ms = p->attempt_ms + line_ms;
  const unsigned long overall_ms = p->timeout_ms + line_ms;
  const unsigned long base = attempt_ms < overall_ms ? attempt_ms : overall_ms;
  unsigned long cur = base; /* this attempt's silence timeout */
  long long now = pb_now_ms();
  long long overall = now + (long long)overall_ms;
  long long attempt_deadline = now + (long long)cur;
  unsigned char buf[16384];
  for (;;) {
    if (w->nomem) {
      snprintf(msg, msglen, "out of memory");
      return -1;
    }
    if (w->bad_version) {
      snprintf(msg, msglen, "the server answered with frame version %d; this module speaks version %d",
               w->bad_version, PB_FRAME_VERSION);
      return -1;
    }
    if (w->got) return 0;
    now = pb_now_ms();
    if (w->busy) { /* the call is still running: restart the silence timers */
      w->busy = 0;
      p->stats.busy++;
      attempt = 1; /* the server has the request: earlier resends were not lost calls */
      cur = base;
      overall = now + (long long)overall_ms;
      attempt_deadline = now + (long long)cur;
    }
    if (now >= overall || (now >= attempt_deadline && attempt >= max_attempts)) {
      snprintf(msg, msglen,
               "no answer from the p11bridge server after %u attempt%s (%u resend%s, %lu ms silence timeout%s) "
               "(is the daemon running on the other end?)",
               attempt, attempt == 1 ? "" : "s", resends, resends == 1 ? "" : "s", overall_ms,
               now >= overall ? "" : ", attempts exhausted");
      return -1;
    }
    if (now >= attempt_deadline) {
      /* lost or damaged on the way (request or response): the same bytes
       * again; the frame's leading 0x00 ends whatever partial piece the
       * server holds */
      attempt++;
      resends++;
      p->stats.resends++;
      off = 0;
      cur = base + backoff_ms(attempt - 1);
      attempt_deadline = now + (long long)cur;
      continue;
    }
    long long left = (overall < attempt_deadline ? overall : attempt_deadline) - now;
    int ev = ops->wait(l, off < framelen, left > 1000 ? 1000 : (int)left, msg, msglen);
    if (ev < 0) return -1;
    if (ev == 0) continue;
    if (ev & PB_LINK_IN) {
      long n = ops->read(l, buf, sizeof buf, msg, msglen);
      if (n < 0) return -1;
      if (n > 0) {
        if (pb_deframer_push(&p->df, buf, (size_t)n, on_frame, w) != 0) w->nomem = 1;
        /* bytes are arriving (perhaps a long answer): not silence */
        attempt_deadline = pb_now_ms() + (long long)cur;
        continue;
      }
    }
    if (off < framelen && (ev & PB_LINK_OUT)) {
      long n = ops->write(l, frame + off, framelen - off, msg, msglen);
      if (n < 0) return -1;
      if (n > 0) {
        off += (size_t)n;
        long long t = pb_now_ms();
        attempt_deadline = t + (long long)cur; /* progress: the silence starts after the request */
        if (attempt == 1) overall = t + (long long)overall_ms;
      }
    }
  }
}
