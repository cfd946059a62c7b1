/* link_tty.c: a serial device as a link (transport.h), shared with other
 * processes under PROTOCOL.md section 7: flock(LOCK_EX) for each round trip,
 * set up raw 8N1 at the configured speed (queues flushed) only while locked. */
#define _GNU_SOURCE
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <termios.h>
#include <unistd.h>

/* The speeds termios has a code for, from 1200 bit/s (what the baud setting
 * may name on a serial port; the TypeScript client takes the same). */
static const struct {
  unsigned long bps;
  speed_t code;
} tty_speeds[] = {
    {1200, B1200},       {2400, B2400},       {4800, B4800},
    {9600, B9600},       {19200, B19200},     {38400, B38400},     {57600, B57600},     {115200, B115200},
    {230400, B230400},   {460800, B460800},   {500000, B500000},   {576000, B576000},   {921600, B921600},
    {1000000, B1000000}, {1152000, B1152000}, {1500000, B1500000}, {2000000, B2000000}, {2500000, B2500000},
    {3000000, B3000000}, {3500000, B3500000}, {4000000, B4000000},
};
#define N_SPEEDS (sizeof tty_speeds / sizeof tty_speeds[0])

static int speed_code(unsigned long bps, speed_t *code) {
  for (size_t i = 0; i < N_SPEEDS; i++)
    if (tty_speeds[i].bps == bps) {
      *code = tty_speeds[i].code;
      return 0;
    }
  return -1;
}

static int tty_check(const pb_link *l, unsigned long baud, char *msg, size_t msglen) {
  speed_t code;
  if (speed_code(baud, &code) == 0) return 0;
  size_t n = (size_t)snprintf(msg, msglen, "serial port %s cannot be set to baud %lu (P11BRIDGE_BAUD or 'baud'); use",
                              l->path, baud);
  for (size_t i = 0; i < N_SPEEDS && n < msglen; i++)
    n += (size_t)snprintf(msg + n, msglen - n, "%s %lu", i ? "," : "", tty_speeds[i].bps);
  return -1;
}

static int tty_open(pb_link *l, char *msg, size_t msglen) {
  l->fd = open(l->path, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  if (l->fd < 0) {
    snprintf(msg, msglen, "cannot open serial port %s: %s", l->path, strerror(errno));
    return -1;
  }
  return 0;
}

/* flock(LOCK_EX), polling (0.25 ms doubling to 16 ms) until deadline. */
static int tty_lock(pb_link *l, long long deadline, char *msg, size_t msglen) {
  for (long wait = 250;; wait = wait < 16000 ? wait * 2 : 16000) {
    if (flock(l->fd, LOCK_EX | LOCK_NB) == 0) return 0;
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) {
      snprintf(msg, msglen, "cannot lock %s: %s", l->path, strerror(errno));
      return -1;
    }
    if (pb_now_ms() >= deadline) {
      snprintf(msg, msglen, "%s stayed locked by another process for %u ms", l->path, l->timeout_ms);
      return -1;
    }
    pb_sleep_us(wait);
  }
}

static void tty_unlock(pb_link *l) { flock(l->fd, LOCK_UN); }

/* Raw 8N1 at baud, no flow control (a descriptor that is no tty is left as it is). */
static int tty_setup(pb_link *l, unsigned long baud, char *msg, size_t msglen) {
  speed_t code;
  if (speed_code(baud, &code) != 0) return tty_check(l, baud, msg, msglen);
  struct termios t;
  if (tcgetattr(l->fd, &t) == 0) {
    cfmakeraw(&t);
    t.c_cflag |= CLOCAL | CREAD;
    t.c_cflag &= ~(CSTOPB | PARENB | CRTSCTS | HUPCL);
    t.c_cflag = (t.c_cflag & ~(tcflag_t)CSIZE) | CS8;
    t.c_iflag &= ~(tcflag_t)(IXON | IXOFF | IXANY);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (cfsetispeed(&t, code) != 0 || cfsetospeed(&t, code) != 0 || tcsetattr(l->fd, TCSANOW, &t) != 0) {
      snprintf(msg, msglen, "cannot configure serial port %s (raw 8N1 at %lu bit/s): %s", l->path, baud,
               strerror(errno));
      return -1;
    }
  } else if (errno != ENOTTY) {
    snprintf(msg, msglen, "cannot configure serial port %s: %s", l->path, strerror(errno));
    return -1;
  }
  return 0;
}

static void tty_discard(pb_link *l) { tcflush(l->fd, TCIOFLUSH); }

static long tty_read(pb_link *l, unsigned char *buf, size_t n, char *msg, size_t msglen) {
  ssize_t r = read(l->fd, buf, n);
  if (r > 0) return (long)r;
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (r < 0 && errno == EIO) {
    /* a pty whose other side is closed: wait for it to come back (or time out) */
    pb_sleep_us(50000);
    return 0;
  }
  snprintf(msg, msglen, "read from serial port %s: %s", l->path, r == 0 ? "end of file" : strerror(errno));
  return -1;
}

static long tty_write(pb_link *l, const unsigned char *buf, size_t n, char *msg, size_t msglen) {
  ssize_t r = write(l->fd, buf, n);
  if (r >= 0) return (long)r;
  if (errno == EAGAIN || errno == EINTR) return 0;
  if (errno == EIO) { /* as in tty_read */
    pb_sleep_us(50000);
    return 0;
  }
  snprintf(msg, msglen, "write to serial port %s: %s", l->path, strerror(errno));
  return -1;
}

static void tty_close(pb_link *l) {
  close(l->fd);
  l->fd = -1;
}

const pb_link_ops pb_link_tty_ops = {
    .kind = "serial port",
    .check = tty_check,
    .open = tty_open,
    .lock = tty_lock,
    .unlock = tty_unlock,
    .setup = tty_setup,
    .discard = tty_discard,
    .wait = pb_link_fd_wait,
    .read = tty_read,
    .write = tty_write,
    .close = tty_close,
};
