/* link_unix.c: a unix socket as a link (transport.h). `p11bridge serve
 * --port unix:/path` serves every connection to the socket as a port of its
 * own, so the stream is this process's alone: no device lock (threads queue
 * on the module's port lock), no speed, and a fresh connection holds no stale
 * bytes. A fork child never uses the parent's connection (pb_port_abandon)
 * and connects afresh. */
#define _GNU_SOURCE
#include "transport.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* Connects (non-blocking; a listener whose backlog is full is waited for up
 * to the timeout). */
static int unix_open(pb_link *l, char *msg, size_t msglen) {
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t len = strlen(l->path);
  if (len >= sizeof sa.sun_path) {
    snprintf(msg, msglen, "unix socket path %s is too long (at most %zu bytes)", l->path, sizeof sa.sun_path - 1);
    return -1;
  }
  memcpy(sa.sun_path, l->path, len + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(msg, msglen, "cannot create a unix socket: %s", strerror(errno));
    return -1;
  }
  long long deadline = pb_now_ms() + l->timeout_ms;
  for (long wait = 250;; wait = wait < 16000 ? wait * 2 : 16000) {
    if (connect(fd, (const struct sockaddr *)&sa, sizeof sa) == 0) break;
    int err = errno;
    if (err == EINPROGRESS || err == EINTR) { /* (not for AF_UNIX on Linux, but allowed) */
      struct pollfd pfd = {fd, POLLOUT, 0};
      long long left = deadline - pb_now_ms();
      int r = poll(&pfd, 1, left > 0 ? (int)left : 0);
      socklen_t sl = sizeof err;
      if (r > 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) == 0 && err == 0) break;
      if (r == 0) err = ETIMEDOUT;
    } else if (err == EAGAIN && pb_now_ms() < deadline) { /* the listener's backlog is full */
      pb_sleep_us(wait);
      continue;
    }
    snprintf(msg, msglen, "cannot connect to unix socket %s: %s%s", l->path, strerror(err),
             err == ECONNREFUSED || err == ENOENT ? " (is the p11bridge daemon serving it?)" : "");
    close(fd);
    return -1;
  }
  l->fd = fd;
  return 0;
}

static int unix_lock(pb_link *l, long long deadline, char *msg, size_t msglen) {
  (void)l, (void)deadline, (void)msg, (void)msglen;
  return 0;
}

static void unix_unlock(pb_link *l) { (void)l; }

static int unix_setup(pb_link *l, unsigned long baud, char *msg, size_t msglen) {
  (void)l, (void)baud, (void)msg, (void)msglen; /* baud stays a timing hint only */
  return 0;
}

/* Whatever is readable now (a bounded amount: the daemon sends nothing unasked). */
static void unix_discard(pb_link *l) {
  unsigned char buf[4096];
  for (int i = 0; i < 256; i++)
    if (recv(l->fd, buf, sizeof buf, MSG_DONTWAIT) <= 0) break;
}

static long unix_read(pb_link *l, unsigned char *buf, size_t n, char *msg, size_t msglen) {
  ssize_t r = recv(l->fd, buf, n, MSG_DONTWAIT);
  if (r > 0) return (long)r;
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
  if (r == 0 || errno == ECONNRESET)
    snprintf(msg, msglen, "the p11bridge daemon closed the connection on unix socket %s", l->path);
  else
    snprintf(msg, msglen, "read from unix socket %s: %s", l->path, strerror(errno));
  return -1;
}

static long unix_write(pb_link *l, const unsigned char *buf, size_t n, char *msg, size_t msglen) {
  /* MSG_NOSIGNAL: a daemon that went away is an error here, not SIGPIPE for the application */
  ssize_t r = send(l->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (r >= 0) return (long)r;
  if (errno == EAGAIN || errno == EINTR) return 0;
  if (errno == EPIPE || errno == ECONNRESET)
    snprintf(msg, msglen, "the p11bridge daemon closed the connection on unix socket %s", l->path);
  else
    snprintf(msg, msglen, "write to unix socket %s: %s", l->path, strerror(errno));
  return -1;
}

static void unix_close(pb_link *l) {
  close(l->fd); /* never shutdown(): a fork child's copy must leave the parent's connection alone */
  l->fd = -1;
}

const pb_link_ops pb_link_unix_ops = {
    .kind = "unix socket",
    .check = NULL, /* any baud: it only stretches the timeouts */
    .open = unix_open,
    .lock = unix_lock,
    .unlock = unix_unlock,
    .setup = unix_setup,
    .discard = unix_discard,
    .wait = pb_link_fd_wait,
    .read = unix_read,
    .write = unix_write,
    .close = unix_close,
};
