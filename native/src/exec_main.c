/* exec_main.c: p11bridge-exec, the server-side executor (PROTOCOL.md section 9).
 *
 *   p11bridge-exec --module /path/to/pkcs11.so [--max-payload N] [--memory-mib N]
 *                  [--max-files N] [--nice N] [--allow-network] [--no-seccomp]
 *
 * One process per guest application. Reads [id, args...] messages (4-byte
 * big-endian length + MessagePack) from stdin, runs them against the module,
 * writes [rv, results...] or {rv, message} to stdout.
 *
 * This file is the process: arguments, the module, the message loop on
 * stdin/stdout. Each message is interpreted by pb_exec_handle()
 * (exec_handle.c).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "exec.h"
#include "exec_sandbox.h"

#define PB_SLACK 65536UL          /* tolerated beyond max payload on the link */

static int g_in = -1, g_out = -1;

#define dbg pb_exec_dbg

/* ------------------------------------------------------------------ I/O */

/* 1 = got n bytes, 0 = clean EOF before the first byte, -1 = error / short */
static int read_all(int fd, void *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, (char *)buf + got, n - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) return got == 0 ? 0 : -1;
    got += (size_t)r;
  }
  return 1;
}

static int write_all(int fd, const void *buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = write(fd, (const char *)buf + done, n - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    done += (size_t)r;
  }
  return 0;
}

/* Length and payload in one system call: two writes would wake the daemon
 * twice (it reads the length, finds the payload missing, sleeps again). */
static int send_message(const msgpack_sbuffer *sb) {
  unsigned char hdr[4] = {(unsigned char)(sb->size >> 24), (unsigned char)(sb->size >> 16),
                          (unsigned char)(sb->size >> 8), (unsigned char)sb->size};
  struct iovec iov[2] = {{hdr, 4}, {sb->data, sb->size}};
  size_t total = 4 + sb->size, done = 0;
  while (done < total) {
    ssize_t r = writev(g_out, iov, 2);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    done += (size_t)r;
    /* a partial write (a large answer through a full pipe): the rest plainly */
    if (done < total) {
      if (done < 4) return write_all(g_out, hdr + done, 4 - done) || write_all(g_out, sb->data, sb->size) ? -1 : 0;
      return write_all(g_out, (const char *)sb->data + (done - 4), total - done);
    }
  }
  return 0;
}

static void finalize_if_needed(void) {
  if (pb_exec_initialized && pb_exec_fl && pb_exec_fl->C_Finalize) {
    CK_RV rv = pb_exec_fl->C_Finalize(NULL_PTR);
    dbg("C_Finalize at exit: rv=0x%lx", (unsigned long)rv);
  }
  pb_exec_initialized = 0;
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
  fprintf(stderr, "usage: p11bridge-exec --module /path/to/pkcs11.so [--max-payload N] [--memory-mib N]\n"
                  "                      [--max-files N] [--nice N] [--allow-network] [--no-seccomp]\n");
  exit(1);
}

static unsigned long num_arg(const char *name, const char *v, unsigned long lo, unsigned long hi) {
  char *end;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 10);
  if (errno || *end || !*v || v[0] == '-' || n < lo || n > hi) {
    fprintf(stderr, "p11bridge-exec: %s must be %lu .. %lu\n", name, lo, hi);
    exit(1);
  }
  return (unsigned long)n;
}

int main(int argc, char **argv) {
  const char *module = NULL;
  pb_sandbox_opts sandbox = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--module") && v) {
      module = v;
    } else if (!strcmp(a, "--max-payload") && v) {
      pb_exec_max_payload = (size_t)num_arg(a, v, PB_MIN_PAYLOAD, 1ul << 30);
    } else if (!strcmp(a, "--memory-mib") && v) {
      sandbox.memory_bytes = (size_t)num_arg(a, v, 16, 1ul << 20) << 20;
    } else if (!strcmp(a, "--max-files") && v) {
      sandbox.max_files = (unsigned)num_arg(a, v, 16, 1ul << 20);
    } else if (!strcmp(a, "--nice") && v) {
      sandbox.nice = (int)num_arg(a, v, 0, 19);
    } else if (!strcmp(a, "--allow-network")) {
      sandbox.allow_network = 1;
      continue;
    } else if (!strcmp(a, "--no-seccomp")) {
      sandbox.no_seccomp = 1;
      continue;
    } else {
      usage();
    }
    i++;
  }
  if (!module) usage();
  pb_exec_debug = getenv("P11BRIDGE_DEBUG") && *getenv("P11BRIDGE_DEBUG");
  signal(SIGPIPE, SIG_IGN);

  /* Keep the link to ourselves: the module gets /dev/null as stdin and
   * stderr as stdout, so nothing it prints can corrupt the stream. */
  g_in = fcntl(0, F_DUPFD_CLOEXEC, 3);
  g_out = fcntl(1, F_DUPFD_CLOEXEC, 3);
  if (g_in < 0 || g_out < 0) {
    fprintf(stderr, "p11bridge-exec: cannot set up stdin/stdout: %s\n", strerror(errno));
    return 1;
  }
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull >= 0) {
    dup2(devnull, 0);
    close(devnull);
  }
  dup2(2, 1);

  /* before the module is loaded: its constructors run confined too */
  pb_exec_sandbox(&sandbox, pb_exec_sandbox_report, sizeof pb_exec_sandbox_report);
  dbg("sandbox: %s", pb_exec_sandbox_report);

  void *h = dlopen(module, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "p11bridge-exec: cannot load module %s: %s\n", module, dlerror());
    return 1;
  }
  CK_C_GetFunctionList gfl;
  *(void **)&gfl = dlsym(h, "C_GetFunctionList");
  if (!gfl) {
    fprintf(stderr, "p11bridge-exec: %s has no C_GetFunctionList\n", module);
    return 1;
  }
  CK_RV rv = gfl(&pb_exec_fl);
  if (rv != CKR_OK || !pb_exec_fl) {
    fprintf(stderr, "p11bridge-exec: C_GetFunctionList failed: rv=0x%lx\n", (unsigned long)rv);
    return 1;
  }
  dbg("loaded %s (cryptoki %u.%u), max payload %zu", module, pb_exec_fl->version.major, pb_exec_fl->version.minor,
      pb_exec_max_payload);

  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  int status = 0;
  for (;;) {
    unsigned char hdr[4];
    int r = read_all(g_in, hdr, 4);
    if (r == 0) break; /* EOF: the daemon is done with this app */
    if (r < 0) {
      dbg("stdin: short read");
      status = 2;
      break;
    }
    size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3];
    msgpack_sbuffer_clear(&sb);
    if (len > pb_exec_max_payload + PB_SLACK) {
      char m[128];
      snprintf(m, sizeof m, "message of %zu bytes exceeds the payload limit %zu", len, pb_exec_max_payload);
      msgpack_packer pk;
      msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
      pb_pack_error_map(&pk, CKR_ARGUMENTS_BAD, m);
      send_message(&sb);
      fprintf(stderr, "p11bridge-exec: %s; cannot resynchronize, exiting\n", m);
      status = 2;
      break;
    }
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
      status = 2;
      break;
    }
    r = read_all(g_in, buf, len);
    if (r != 1 && len > 0) {
      free(buf);
      dbg("stdin: truncated message");
      status = 2;
      break;
    }
    pb_exec_handle(buf, len, &sb);
    free(buf);
    if (sb.size > pb_exec_max_payload + PB_SLACK) {
      msgpack_sbuffer_clear(&sb);
      msgpack_packer pk;
      msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
      pb_pack_error_map(&pk, CKR_DEVICE_ERROR, "response exceeds the payload limit");
    }
    if (send_message(&sb) != 0) {
      dbg("stdout: write failed");
      status = 2;
      break;
    }
  }
  msgpack_sbuffer_destroy(&sb);
  finalize_if_needed();
  /* the module stays loaded: unloading it at exit gains nothing and hides
   * its symbols from leak checkers */
  return status;
}
