/* transport.c: the serial port (see transport.h). */
#define _GNU_SOURCE
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static int open_dev(const char *path, char *msg, size_t msglen) {
  int fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) snprintf(msg, msglen, "cannot open serial port %s: %s", path, strerror(errno));
  return fd;
}

int pb_port_open(pb_port *p, const char *path, unsigned timeout_ms, size_t max_payload,
                 char *msg, size_t msglen) {
  memset(p, 0, sizeof *p);
  p->fd = -1;
  p->timeout_ms = timeout_ms;
  p->retries = PB_DEFAULT_RETRIES;
  p->baud = PB_DEFAULT_BAUD;
  p->attempt_ms = PB_ATTEMPT_BASE_MS;
  p->path = strdup(path);
  if (!p->path) {
    snprintf(msg, msglen, "out of memory");
    return -1;
  }
  p->fd = open_dev(path, msg, msglen);
  if (p->fd < 0) {
    free(p->path);
    p->path = NULL;
    return -1;
  }
  pb_deframer_init(&p->df, max_payload);
  return 0;
}

/* Raw 8N1, no flow control, then flush: only while holding the lock, since
 * flushing could destroy another process's round trip. */
static int configure(pb_port *p, char *msg, size_t msglen) {
  struct termios t;
  if (tcgetattr(p->fd, &t) == 0) {
    cfmakeraw(&t);
    t.c_cflag |= CLOCAL | CREAD;
    t.c_cflag &= ~(CSTOPB | PARENB | CRTSCTS | HUPCL);
    t.c_cflag = (t.c_cflag & ~CSIZE) | CS8;
    t.c_iflag &= ~(IXON | IXOFF | IXANY);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    cfsetispeed(&t, B115200);
    cfsetospeed(&t, B115200);
    if (tcsetattr(p->fd, TCSANOW, &t) != 0) {
      snprintf(msg, msglen, "cannot configure serial port %s: %s", p->path, strerror(errno));
      return -1;
    }
  } else if (errno != ENOTTY) {
    snprintf(msg, msglen, "cannot configure serial port %s: %s", p->path, strerror(errno));
    return -1;
  }
  /* bytes a cooked tty buffered before it was raw, or left by a process
   * that died mid-call, are stale noise */
  tcflush(p->fd, TCIOFLUSH);
  p->configured = 1;
  return 0;
}

void pb_port_close(pb_port *p) {
  if (p->fd >= 0) close(p->fd);
  p->fd = -1;
  p->configured = 0;
  free(p->path);
  p->path = NULL;
  pb_deframer_free(&p->df);
}

void pb_port_abandon(pb_port *p) {
  /* Our copy of the parent's descriptor shares its open file description
   * and so its flock: closing the copy never releases the parent's lock
   * (only LOCK_UN or the last close would), and we never unlock it. */
  pb_port_close(p);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
  nanosleep(&ts, NULL);
}

/* flock(LOCK_EX), polling (0.25 ms doubling to 16 ms) until deadline. */
static int lock_dev(pb_port *p, long long deadline, char *msg, size_t msglen) {
  for (long wait = 250;; wait = wait < 16000 ? wait * 2 : 16000) {
    if (flock(p->fd, LOCK_EX | LOCK_NB) == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) {
      snprintf(msg, msglen, "cannot lock %s: %s", p->path, strerror(errno));
      return -1;
    }
    if (now_ms() >= deadline) {
      snprintf(msg, msglen, "%s stayed locked by another process for %u ms", p->path, p->timeout_ms);
      return -1;
    }
    sleep_us(wait);
  }
}

static int exchange(pb_port *p, const unsigned char *frame, size_t framelen, size_t resplen,
                    waiter *w, char *msg, size_t msglen);

int pb_port_roundtrip(pb_port *p, const unsigned char *frame, size_t framelen, size_t resplen,
                      int any_conn, uint32_t conn, uint32_t req, pb_response *resp, char *msg,
                      size_t msglen) {
  waiter w = {any_conn, conn, req, 0, 0, 0, resp, 0};
  p->stats.roundtrips++;
  if (p->fd < 0) { /* closed after a timeout */
    p->fd = open_dev(p->path, msg, msglen);
    if (p->fd < 0) return -1;
    p->configured = 0;
  }
  if (lock_dev(p, now_ms() + p->timeout_ms, msg, msglen) != 0) return -1;
  if (!p->configured && configure(p, msg, msglen) != 0) {
    flock(p->fd, LOCK_UN);
    return -1;
  }
  /* whatever piece was cut off at our last unlock belongs to nobody now */
  p->df.len = 0;
  p->df.overflow = 0;
  unsigned long dropped = p->df.dropped;
  int r = exchange(p, frame, framelen, resplen, &w, msg, msglen);
  p->stats.dropped_pieces += p->df.dropped - dropped;
  if (r == 0) {
    flock(p->fd, LOCK_UN);
    return 0;
  }
  p->stats.failures++;
  if (w.got) {
    free(resp->payload);
    resp->payload = NULL;
  }
  /* Gave up: the device is closed, so nothing of ours can read the next
   * holder's bytes, and the partial input is dropped (the next round trip
   * reopens the device, flushes its queues and starts a fresh piece: the
   * stream is re-synchronised). No read of ours is pending here (all I/O is synchronous),
   * so unlocking first is equivalent to PROTOCOL.md's close-then-release, and
   * releases the lock even when a forked child still holds a copy of the
   * descriptor (the close alone would not). */
  flock(p->fd, LOCK_UN);
  close(p->fd);
  p->fd = -1;
  p->configured = 0;
  return -1;
}

static int exchange(pb_port *p, const unsigned char *frame, size_t framelen, size_t resplen,
                    waiter *w, char *msg, size_t msglen) {
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
  long long now = now_ms();
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
    now = now_ms();
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
    struct pollfd pfd = {p->fd, POLLIN | (off < framelen ? POLLOUT : 0), 0};
    int r = poll(&pfd, 1, left > 1000 ? 1000 : (int)left);
    if (r < 0) {
      if (errno == EINTR) continue;
      snprintf(msg, msglen, "poll: %s", strerror(errno));
      return -1;
    }
    if (r == 0) continue;
    if (pfd.revents & POLLNVAL) {
      snprintf(msg, msglen, "serial port descriptor is not open");
      return -1;
    }
    if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = read(p->fd, buf, sizeof buf);
      if (n > 0) {
        if (pb_deframer_push(&p->df, buf, (size_t)n, on_frame, w) != 0) w->nomem = 1;
        /* bytes are arriving (perhaps a long answer): not silence */
        attempt_deadline = now_ms() + (long long)cur;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        /* nothing after all */
      } else if (n < 0 && errno == EIO) {
        /* a pty whose other side is closed: wait for it to come back (or time out) */
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
      } else if (n == 0 || n < 0) {
        snprintf(msg, msglen, "read from serial port: %s", n == 0 ? "end of file" : strerror(errno));
        return -1;
      }
    }
    if (off < framelen && (pfd.revents & POLLOUT)) {
      ssize_t n = write(p->fd, frame + off, framelen - off);
      if (n > 0) {
        off += (size_t)n;
        long long t = now_ms();
        attempt_deadline = t + (long long)cur; /* progress: the silence starts after the request */
        if (attempt == 1) overall = t + (long long)overall_ms;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        if (errno == EIO) {
          struct timespec ts = {0, 50 * 1000000L};
          nanosleep(&ts, NULL);
        } else {
          snprintf(msg, msglen, "write to serial port: %s", strerror(errno));
          return -1;
        }
      }
    }
  }
}
