/* module.c: libp11bridge's state: configuration, C_Initialize (open and lock
 * the port, HELLO), C_Finalize (BYE), the port lock that makes each round
 * trip atomic, fork detection, C_WaitForSlotEvent's polling, and the one
 * function every generated entry point calls: pb_client_call().
 *
 * Locks:
 *   g.mu        (pthread, static) guards the state below and counts the
 *               calls in flight; never held during a round trip except by
 *               C_Initialize / C_Finalize themselves.
 *   port lock   one round trip at a time on the port: a pthread mutex, or
 *               the application's mutex callbacks when it gave them without
 *               CKF_OS_LOCKING_OK.
 */
#define _GNU_SOURCE
#include "client.h"
#include "transport.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define PB_DEFAULT_TIMEOUT_MS 5000u
#define PB_WAIT_POLL_MS 250
#define PB_CLIENT_NAME "p11bridge-c/0.1.0"

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int initialized, finalizing;
  pid_t pid;
  unsigned inflight;
  unsigned long generation; /* bumped by C_Finalize: ends C_WaitForSlotEvent polls */
  /* port lock */
  int use_app_mutex;
  CK_C_INITIALIZE_ARGS app;
  void *app_mutex;
  pthread_mutex_t port_mu;
  /* connection */
  pb_port port;
  uint32_t conn, key, next_req; /* key: this connection's secret from HELLO_OK, in every request */
  size_t max_payload;
  unsigned char functions[PB_NCALLS + 1];
  /* keepalive (HELLO_OK leaseMs) */
  int can_thread;
  unsigned long long lease_ms;
  long long last_activity_ms;
  pthread_t keepalive;
  int keepalive_running, keepalive_stop;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int g_debug;

static void dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void dbg(const char *fmt, ...) {
  if (!g_debug) return;
  char line[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "p11bridge: %s\n", line);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ fork */

static void atfork_prepare(void) { pthread_mutex_lock(&g.mu); }
static void atfork_parent(void) { pthread_mutex_unlock(&g.mu); }
static void atfork_child(void) {
  /* The child has no calls in flight and no keepalive thread; its state is
   * the parent's until it calls C_Initialize (every call answers
   * CKR_CRYPTOKI_NOT_INITIALIZED: g.pid is the parent's). */
  g.inflight = 0;
  g.keepalive_running = 0;
  g.finalizing = 0;
  /* Threads of the parent waiting on g.cv (keepalive, C_WaitForSlotEvent)
   * do not exist here, but the condition variable still counts them: a
   * broadcast would wait for them forever. Start both afresh. */
  pthread_cond_init(&g.cv, NULL);
  pthread_mutex_init(&g.mu, NULL);
}

__attribute__((constructor)) static void pb_module_load(void) {
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* ------------------------------------------------------------------ config */

typedef struct {
  char port[1024];
  unsigned long timeout_ms;
  unsigned long max_payload;
  unsigned long retries;
  unsigned long baud;
  unsigned long attempt_ms;
} pb_config;

static int parse_ulong(const char *s, unsigned long lo, unsigned long hi, unsigned long *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) return -1;
  *out = (unsigned long)v;
  return 0;
}

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) s[--n] = 0;
  return s;
}

/* The numeric settings: file key, environment variable, range. */
static const struct {
  const char *key, *env;
  size_t off;
  unsigned long lo, hi;
} pb_settings[] = {
    {"timeout_ms", "P11BRIDGE_TIMEOUT_MS", offsetof(pb_config, timeout_ms), 1, 3600000},
    {"max_payload", "P11BRIDGE_MAX_PAYLOAD", offsetof(pb_config, max_payload), PB_MIN_PAYLOAD, 1ul << 30},
    {"retries", "P11BRIDGE_RETRIES", offsetof(pb_config, retries), 0, 100},
    {"baud", "P11BRIDGE_BAUD", offsetof(pb_config, baud), 50, 100000000},
    {"attempt_ms", "P11BRIDGE_ATTEMPT_MS", offsetof(pb_config, attempt_ms), 10, 3600000},
};

static int set_key(pb_config *c, const char *key, const char *val, const char *where) {
  if (!strcmp(key, "port")) {
    if (!*val || strlen(val) >= sizeof c->port) {
      dbg("%s: port: bad value", where);
      return -1;
    }
    strcpy(c->port, val);
    return 0;
  }
  for (size_t i = 0; i < sizeof pb_settings / sizeof pb_settings[0]; i++) {
    if (strcmp(key, pb_settings[i].key)) continue;
    if (parse_ulong(val, pb_settings[i].lo, pb_settings[i].hi, (unsigned long *)((char *)c + pb_settings[i].off))) {
      dbg("%s: %s must be %lu .. %lu", where, key, pb_settings[i].lo, pb_settings[i].hi);
      return -1;
    }
    return 0;
  }
  dbg("%s: unknown key '%s' ignored", where, key);
  return 0;
}

/* defaults < the file named by P11BRIDGE_CONFIG < environment */
static int load_config(pb_config *c) {
  memset(c, 0, sizeof *c);
  c->timeout_ms = PB_DEFAULT_TIMEOUT_MS;
  c->max_payload = PB_DEFAULT_MAX_PAYLOAD;
  c->retries = PB_DEFAULT_RETRIES;
  c->baud = PB_DEFAULT_BAUD;
  c->attempt_ms = PB_ATTEMPT_BASE_MS;
  const char *file = getenv("P11BRIDGE_CONFIG");
  if (file && *file) {
    FILE *f = fopen(file, "re");
    if (!f) {
      dbg("cannot read config file %s: %s", file, strerror(errno));
      return -1;
    }
    char line[1200];
    unsigned lineno = 0;
    int bad = 0;
    while (fgets(line, sizeof line, f)) {
      lineno++;
      char *s = trim(line);
      if (!*s || *s == '#' || *s == ';') continue;
      char *eq = strchr(s, '=');
      char where[64];
      snprintf(where, sizeof where, "config line %u", lineno);
      if (!eq) {
        dbg("%s: expected key = value", where);
        bad = 1;
        continue;
      }
      *eq = 0;
      if (set_key(c, trim(s), trim(eq + 1), where)) bad = 1;
    }
    fclose(f);
    if (bad) return -1;
  }
  const char *v;
  if ((v = getenv("TEC_COMM_PORT")) && *v && set_key(c, "port", v, "TEC_COMM_PORT")) return -1;
  for (size_t i = 0; i < sizeof pb_settings / sizeof pb_settings[0]; i++)
    if ((v = getenv(pb_settings[i].env)) && *v && set_key(c, pb_settings[i].key, v, pb_settings[i].env)) return -1;
  if (!c->port[0]) {
    dbg("no serial port: set TEC_COMM_PORT (e.g. /dev/ttyS4) or 'port' in the file named by P11BRIDGE_CONFIG");
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------ port lock */

static CK_RV port_lock(void) {
  if (g.use_app_mutex) return g.app.LockMutex(g.app_mutex);
  return pthread_mutex_lock(&g.port_mu) == 0 ? CKR_OK : CKR_CANT_LOCK;
}
static void port_unlock(void) {
  if (g.use_app_mutex)
    g.app.UnlockMutex(g.app_mutex);
  else
    pthread_mutex_unlock(&g.port_mu);
}

/* One request/response on the port (port lock taken here), resent by the
 * transport when its answer does not come (same bytes: same connection,
 * request id or HELLO nonce). any_conn/req for HELLO; otherwise the
 * connection's next request id. resplen: the expected answer's size. */
static CK_RV transact(unsigned type, const void *payload, size_t len, size_t resplen, int hello,
                      uint32_t nonce, pb_response *resp, const char *what) {
  CK_RV rv = port_lock();
  if (rv != CKR_OK) return rv;
  uint32_t req = nonce & PB_MAX_REQ ? nonce & PB_MAX_REQ : 1; /* the header's 16 bits of the nonce */
  if (!hello) {
    req = g.next_req;
    g.next_req = g.next_req >= PB_MAX_REQ ? 1 : g.next_req + 1;
  }
  size_t flen;
  unsigned char *frame = pb_frame_encode(type, hello ? 0 : g.conn, req, hello ? 0 : g.key, payload, len, &flen);
  if (!frame) {
    port_unlock();
    return CKR_HOST_MEMORY;
  }
  char msg[320];
  unsigned long resends = g.port.stats.resends;
  int r = pb_port_roundtrip(&g.port, frame, flen, resplen, hello, g.conn, req, resp, msg, sizeof msg);
  resends = g.port.stats.resends - resends;
  __atomic_store_n(&g.last_activity_ms, now_ms(), __ATOMIC_RELAXED);
  port_unlock();
  free(frame);
  if (r != 0) {
    dbg("%s: request %u: %s", what, (unsigned)req, msg);
    return CKR_DEVICE_ERROR;
  }
  if (resends) dbg("%s: request %u answered after %lu resend%s", what, (unsigned)req, resends, resends == 1 ? "" : "s");
  return CKR_OK;
}

static CK_RV error_frame_rv(const pb_response *resp, const char *what) {
  CK_RV rv;
  char message[512];
  pb_err err;
  if (pb_unpack_error(resp->payload, resp->len, &rv, message, sizeof message, &err) != PB_OK) {
    dbg("%s: malformed ERROR from the server: %s", what, err.msg);
    return CKR_DEVICE_ERROR;
  }
  dbg("%s: server: %s (rv 0x%lx)", what, message, (unsigned long)rv);
  return rv;
}

/* ------------------------------------------------------------------ keepalive */

/* The server may close a connection silent longer than its lease (HELLO_OK
 * leaseMs); an idle application PINGs well within it. */
static void *keepalive_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&g.mu);
  while (!g.keepalive_stop) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long step = g.lease_ms / 3 ? g.lease_ms / 3 : 1;
    if (step > 60000) step = 60000;
    ts.tv_sec += (time_t)(step / 1000);
    ts.tv_nsec += (long)(step % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&g.cv, &g.mu, &ts);
    if (g.keepalive_stop || !g.initialized) break;
    if (now_ms() - __atomic_load_n(&g.last_activity_ms, __ATOMIC_RELAXED) < (long long)(g.lease_ms / 3)) continue;
    g.inflight++;
    pthread_mutex_unlock(&g.mu);
    pb_response resp = {0};
    if (transact(PB_T_PING, NULL, 0, 0, 0, 0, &resp, "PING") == CKR_OK) free(resp.payload);
    pthread_mutex_lock(&g.mu);
    if (--g.inflight == 0) pthread_cond_broadcast(&g.cv);
  }
  pthread_mutex_unlock(&g.mu);
  return NULL;
}

/* ------------------------------------------------------------------ calls */

static CK_RV enter(void) {
  pthread_mutex_lock(&g.mu);
  if (!g.initialized || g.pid != getpid()) {
    pthread_mutex_unlock(&g.mu);
    return CKR_CRYPTOKI_NOT_INITIALIZED;
  }
  g.inflight++;
  pthread_mutex_unlock(&g.mu);
  return CKR_OK;
}

static void leave(void) {
  pthread_mutex_lock(&g.mu);
  if (--g.inflight == 0) pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
}

static CK_RV do_call(unsigned id, pb_cslot *a) {
  const pb_call *c = pb_call_by_id(id);
  if (!c || c->local || !g.functions[id]) return CKR_FUNCTION_NOT_SUPPORTED;
  CK_RV rv = pb_client_check(c, a, g.max_payload);
  if (rv != CKR_OK) return rv;
  pb_lbuf b = {NULL, 0, 0, g.max_payload};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, pb_lbuf_write);
  if (pb_client_encode(&pk, c, a) != 0) {
    dbg("%s: the request exceeds the bridge's payload limit of %zu bytes", c->name, g.max_payload);
    pb_lbuf_free(&b);
    return CKR_ARGUMENTS_BAD;
  }
  pb_response resp = {0};
  rv = transact(PB_T_CALL, b.data, b.size, pb_client_expected_len(c, a, g.max_payload), 0, 0, &resp, c->name);
  pb_lbuf_free(&b);
  if (rv != CKR_OK) return rv;
  if (resp.type == PB_T_RESULT) {
    pb_err err;
    if (pb_client_decode(c, a, resp.payload, resp.len, &rv, &err) != PB_OK) {
      dbg("%s: malformed answer from the server: %s", c->name, err.msg);
      rv = CKR_DEVICE_ERROR;
    }
  } else if (resp.type == PB_T_ERROR) {
    rv = error_frame_rv(&resp, c->name);
  } else {
    dbg("%s: unexpected answer type 0x%02x", c->name, resp.type);
    rv = CKR_DEVICE_ERROR;
  }
  free(resp.payload);
  return rv;
}

CK_RV pb_client_call(unsigned id, pb_cslot *a) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv; /* before touching any argument */
  rv = do_call(id, a);
  leave();
  return rv;
}

CK_RV pb_mod_wait_for_slot_event(pb_cslot *a, CK_VOID_PTR pReserved) {
  CK_RV rv = enter();
  if (rv != CKR_OK) return rv;
  if (pReserved) {
    leave();
    return CKR_ARGUMENTS_BAD;
  }
  CK_FLAGS flags = a[0].ul;
  pb_cslot sa[2] = {a[0], a[1]};
  sa[0].ul = flags | CKF_DONT_BLOCK; /* the server never blocks: we poll */
  pthread_mutex_lock(&g.mu);
  unsigned long gen = g.generation;
  pthread_mutex_unlock(&g.mu);
  for (;;) {
    rv = do_call(68, sa);
    leave();
    if (rv != CKR_NO_EVENT || (flags & CKF_DONT_BLOCK)) return rv;
    /* wait without holding the port (or being counted in flight) */
    pthread_mutex_lock(&g.mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += PB_WAIT_POLL_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    while (g.initialized && g.generation == gen && g.pid == getpid()) {
      if (pthread_cond_timedwait(&g.cv, &g.mu, &ts) == ETIMEDOUT) break;
    }
    if (!g.initialized || g.generation != gen || g.pid != getpid()) {
      pthread_mutex_unlock(&g.mu);
      return CKR_CRYPTOKI_NOT_INITIALIZED;
    }
    g.inflight++;
    pthread_mutex_unlock(&g.mu);
  }
}

/* ------------------------------------------------------------------ initialize / finalize */

static void random_nonce(uint32_t *n) {
  do {
    if (getrandom(n, sizeof *n, GRND_NONBLOCK) != (ssize_t)sizeof *n)
      *n = (uint32_t)(now_ms() * 2654435761u) ^ (uint32_t)getpid();
  } while (*n == 0);
}

static void teardown_port_lock(void) {
  if (g.use_app_mutex) {
    if (g.app_mutex) g.app.DestroyMutex(g.app_mutex);
    g.app_mutex = NULL;
  } else {
    pthread_mutex_destroy(&g.port_mu);
  }
}

static CK_RV do_initialize(const CK_C_INITIALIZE_ARGS *args) {
  g.use_app_mutex = 0;
  g.app_mutex = NULL;
  g.can_thread = 1;
  if (args) {
    int n = (args->CreateMutex != NULL) + (args->DestroyMutex != NULL) + (args->LockMutex != NULL) +
            (args->UnlockMutex != NULL);
    if (args->pReserved || (n != 0 && n != 4)) return CKR_ARGUMENTS_BAD;
    g.app = *args;
    if (n == 4 && !(args->flags & CKF_OS_LOCKING_OK)) g.use_app_mutex = 1;
    if (args->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS) g.can_thread = 0;
  }
  pb_config cfg;
  if (load_config(&cfg) != 0) return CKR_DEVICE_ERROR;
  if (g.use_app_mutex) {
    CK_RV rv = g.app.CreateMutex(&g.app_mutex);
    if (rv != CKR_OK) return rv;
  } else if (pthread_mutex_init(&g.port_mu, NULL) != 0) {
    return CKR_CANT_LOCK;
  }
  char msg[320];
  if (pb_port_open(&g.port, cfg.port, (unsigned)cfg.timeout_ms, cfg.max_payload, msg, sizeof msg) != 0) {
    dbg("C_Initialize: %s", msg);
    teardown_port_lock();
    return CKR_DEVICE_ERROR;
  }
  g.port.retries = (unsigned)cfg.retries;
  g.port.baud = cfg.baud;
  g.port.attempt_ms = cfg.attempt_ms;
  g.conn = 0;
  g.key = 0;
  g.next_req = 1;
  g.max_payload = cfg.max_payload;
  memset(g.functions, 0, sizeof g.functions);

  /* HELLO */
  CK_RV rv = CKR_DEVICE_ERROR;
  pb_lbuf b = {NULL, 0, 0, 4096};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &b, pb_lbuf_write);
  pb_response resp = {0};
  pb_hello_ok *h = calloc(1, sizeof *h);
  uint32_t nonce;
  random_nonce(&nonce);
  if (!h || pb_pack_hello(&pk, PB_PROTOCOL_VERSION, PB_PROTOCOL_VERSION, nonce, cfg.max_payload, PB_CLIENT_NAME) != 0) {
    rv = CKR_HOST_MEMORY;
    goto fail;
  }
  /* a resent HELLO is the same frame, so it keeps its nonce: the daemon
   * answers it from its copy instead of opening a second connection */
  rv = transact(PB_T_HELLO, b.data, b.size, 512, 1, nonce, &resp, "C_Initialize (HELLO)");
  if (rv != CKR_OK) goto fail;
  if (resp.type == PB_T_ERROR) {
    rv = error_frame_rv(&resp, "C_Initialize (HELLO)");
    goto fail;
  }
  pb_err err;
  rv = CKR_DEVICE_ERROR;
  if (resp.type != PB_T_HELLO_OK) {
    dbg("C_Initialize: unexpected answer 0x%02x to HELLO", resp.type);
    goto fail;
  }
  if (pb_unpack_hello_ok(resp.payload, resp.len, h, &err) != PB_OK) {
    dbg("C_Initialize: malformed HELLO_OK: %s", err.msg);
    goto fail;
  }
  if (h->nonce != nonce) {
    dbg("C_Initialize: a HELLO_OK for another HELLO (nonce %u, ours %u)", (unsigned)h->nonce, (unsigned)nonce);
    goto fail;
  }
  if (h->version != PB_PROTOCOL_VERSION) {
    dbg("C_Initialize: the server chose protocol version %llu; this module speaks %d..%d",
        (unsigned long long)h->version, PB_PROTOCOL_VERSION, PB_PROTOCOL_VERSION);
    goto fail;
  }
  if (h->max_payload < PB_MIN_PAYLOAD) {
    dbg("C_Initialize: the server's payload limit %llu is too small", (unsigned long long)h->max_payload);
    goto fail;
  }
  if (h->max_payload < g.max_payload) g.max_payload = (size_t)h->max_payload;
  memcpy(g.functions, h->functions, sizeof g.functions);
  g.conn = resp.conn;
  g.key = h->key;
  g.lease_ms = h->lease_ms;
  dbg("connected to %s on %s: connection %u, payload limit %zu, %u functions%s", h->server, cfg.port,
      (unsigned)g.conn, g.max_payload, (unsigned)h->nfunctions, h->lease_ms ? ", keepalive" : "");
  /* this connection's own C_Initialize of the module on the server */
  pb_cslot none[1];
  memset(none, 0, sizeof none);
  rv = do_call(1, none);
  if (rv != CKR_OK) {
    dbg("C_Initialize: the server's module answered 0x%lx", (unsigned long)rv);
    pb_response bye = {0};
    if (transact(PB_T_BYE, NULL, 0, 0, 0, 0, &bye, "C_Initialize (BYE)") == CKR_OK) free(bye.payload);
  }
fail:
  free(h);
  free(resp.payload);
  pb_lbuf_free(&b);
  if (rv != CKR_OK) {
    pb_port_close(&g.port);
    teardown_port_lock();
  }
  return rv;
}

CK_RV pb_mod_initialize(CK_VOID_PTR pInitArgs) {
  pthread_mutex_lock(&g.mu);
  g_debug = getenv("P11BRIDGE_DEBUG") && *getenv("P11BRIDGE_DEBUG");
  while (g.finalizing && g.pid == getpid()) pthread_cond_wait(&g.cv, &g.mu);
  if (g.initialized && g.pid == getpid()) {
    pthread_mutex_unlock(&g.mu);
    return CKR_CRYPTOKI_ALREADY_INITIALIZED;
  }
  if (g.initialized) {
    /* a forked child: the parent's connection, port and locks stay the
     * parent's; start afresh (our copy of the descriptor is closed, which
     * never releases the parent's lock) */
    dbg("C_Initialize in a forked child: opening a connection of its own");
    pb_port_abandon(&g.port);
    g.initialized = 0;
    g.inflight = 0;
    g.app_mutex = NULL;
  }
  CK_RV rv = do_initialize((const CK_C_INITIALIZE_ARGS *)pInitArgs);
  if (rv == CKR_OK) {
    g.initialized = 1;
    g.pid = getpid();
    g.inflight = 0;
    __atomic_store_n(&g.last_activity_ms, now_ms(), __ATOMIC_RELAXED);
    g.keepalive_stop = 0;
    g.keepalive_running = 0;
    if (g.lease_ms && g.can_thread) {
      pthread_attr_t at;
      pthread_attr_init(&at);
      pthread_attr_setstacksize(&at, 256 * 1024);
      g.keepalive_running = pthread_create(&g.keepalive, &at, keepalive_main, NULL) == 0;
      pthread_attr_destroy(&at);
    }
  }
  pthread_mutex_unlock(&g.mu);
  return rv;
}

CK_RV pb_mod_finalize(CK_VOID_PTR pReserved) {
  pthread_mutex_lock(&g.mu);
  if (!g.initialized || g.pid != getpid()) {
    pthread_mutex_unlock(&g.mu);
    return CKR_CRYPTOKI_NOT_INITIALIZED;
  }
  if (pReserved) {
    pthread_mutex_unlock(&g.mu);
    return CKR_ARGUMENTS_BAD;
  }
  g.initialized = 0; /* new calls answer CKR_CRYPTOKI_NOT_INITIALIZED */
  g.finalizing = 1;
  g.generation++;
  g.keepalive_stop = 1;
  pthread_cond_broadcast(&g.cv);
  while (g.inflight > 0) pthread_cond_wait(&g.cv, &g.mu);
  int join = g.keepalive_running;
  g.keepalive_running = 0;
  pthread_mutex_unlock(&g.mu);
  if (join) pthread_join(g.keepalive, NULL);
  pthread_mutex_lock(&g.mu);
  pb_cslot none[1];
  memset(none, 0, sizeof none);
  CK_RV rv = do_call(2, none);
  if (rv != CKR_OK) dbg("C_Finalize: the server's module answered 0x%lx", (unsigned long)rv);
  /* BYE: the server finalizes what the app left open */
  pb_response resp = {0};
  if (transact(PB_T_BYE, NULL, 0, 0, 0, 0, &resp, "C_Finalize (BYE)") == CKR_OK) free(resp.payload);
  dbg("port statistics: %lu round trips, %lu resends, %lu failed, %lu BUSY, %lu damaged pieces dropped",
      g.port.stats.roundtrips, g.port.stats.resends, g.port.stats.failures, g.port.stats.busy,
      g.port.stats.dropped_pieces);
  pb_port_close(&g.port);
  teardown_port_lock();
  g.finalizing = 0;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  return CKR_OK;
}

CK_RV pb_mod_get_function_list(CK_FUNCTION_LIST_PTR_PTR pp) {
  if (!pp) return CKR_ARGUMENTS_BAD;
  *pp = &pb_function_list;
  return CKR_OK;
}
