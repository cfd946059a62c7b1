/* p11bench.c: one PKCS#11 module, loaded with dlopen(), timed the same way
 * whatever it is: SoftHSM2 itself, libp11bridge.so, p11-kit's RPC client.
 * Driven by bench/run.ts (npm run bench), which runs every path in one go.
 *
 *   p11bench ops <module.so> <token label> <user PIN> <ms per op | xN> [op ...]
 *       sets up session objects (RSA-2048, EC P-256, AES-256 keys, a
 *       labelled data object), then runs each op back to back for about the
 *       given time (or exactly N times, without warm-up: xN, for counting the
 *       bytes an op puts on the line) and prints one JSON line per op:
 *       {"op":..., "n":..., "p50_us":..., "p99_us":..., "ops_s":...}
 *   p11bench echo-server <tty>
 *       the floor: echoes length-prefixed messages (4-byte big-endian length)
 *   p11bench echo <tty> <bytes> <ms>
 *       the floor's client: a message of that size, echoed back, timed
 *
 * Ops: session-info random32 sha256-1k rsa2048-sign ecdsa-p256-sign
 *      aes-cbc-pad-64k aes-ecb-64k find-label rsa2048-keygen */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "p11.h"

static CK_FUNCTION_LIST_PTR f;
static CK_SESSION_HANDLE s;
static CK_OBJECT_HANDLE rsa_priv, ec_priv, aes;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* An op that fails (a mechanism the path does not offer) is reported and
 * skipped; a failure while setting up ends the run. */
static jmp_buf op_failed;
static int in_op;
static char failure[160];

static void die(const char *what, CK_RV rv) {
  snprintf(failure, sizeof failure, "%s: rv 0x%lx", what, (unsigned long)rv);
  if (in_op) longjmp(op_failed, 1);
  fprintf(stderr, "p11bench: %s\n", failure);
  exit(1);
}
#define CHECK(what, call)        \
  do {                           \
    CK_RV rv_ = (call);          \
    if (rv_ != CKR_OK) die(what, rv_); \
  } while (0)

/* ---- timing ---- */
static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef void (*op_fn)(void);

static void run(const char *name, op_fn fn, double budget_ms, long count) {
  static double lat[200000];
  in_op = 1;
  if (setjmp(op_failed)) {
    in_op = 0;
    printf("{\"op\":\"%s\",\"error\":\"%s\"}\n", name, failure);
    fflush(stdout);
    return;
  }
  if (count < 0)
    for (int i = 0; i < 3; i++) fn(); /* warm-up */
  size_t n = 0;
  /* slow ops (a key generation varies by the prime search) need more than a
     few samples for a median that means anything: P11BENCH_MIN_SAMPLES */
  const char *min_env = getenv("P11BENCH_MIN_SAMPLES");
  size_t min_n = min_env && atol(min_env) > 0 ? (size_t)atol(min_env) : 5;
  double start = now_us(), end = start + budget_ms * 1000;
  while (n < sizeof lat / sizeof lat[0] && (count < 0 || (long)n < count)) {
    double t = now_us();
    fn();
    double u = now_us();
    lat[n++] = u - t;
    if (count < 0 && u >= end && n >= min_n) break;
  }
  in_op = 0;
  if (n == 0) {
    printf("{\"op\":\"%s\",\"n\":0}\n", name);
    fflush(stdout);
    return;
  }
  in_op = 0;
  double total = now_us() - start;
  qsort(lat, n, sizeof lat[0], cmp);
  printf("{\"op\":\"%s\",\"n\":%zu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"ops_s\":%.1f}\n", name, n, lat[n / 2],
         lat[(size_t)(n * 0.99) < n ? (size_t)(n * 0.99) : n - 1], n / (total / 1e6));
  fflush(stdout);
}

/* ---- the operations ---- */
static CK_BYTE buf64k[65536 + 32], out64k[65536 + 64], iv[16];

static void op_session_info(void) {
  CK_SESSION_INFO si;
  CHECK("C_GetSessionInfo", f->C_GetSessionInfo(s, &si));
}
static void op_random32(void) {
  CK_BYTE r[32];
  CHECK("C_GenerateRandom", f->C_GenerateRandom(s, r, sizeof r));
}
static void op_sha256_1k(void) {
  CK_MECHANISM m = {CKM_SHA256, NULL, 0};
  CK_BYTE d[32];
  CK_ULONG dl = sizeof d;
  CHECK("C_DigestInit", f->C_DigestInit(s, &m));
  CHECK("C_Digest", f->C_Digest(s, buf64k, 1024, d, &dl));
}
static void op_rsa_sign(void) {
  CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
  CK_BYTE sig[256];
  CK_ULONG sl = sizeof sig;
  CHECK("C_SignInit RSA", f->C_SignInit(s, &m, rsa_priv));
  CHECK("C_Sign RSA", f->C_Sign(s, buf64k, 32, sig, &sl));
}
static void op_ecdsa_sign(void) {
  CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
  CK_BYTE sig[64];
  CK_ULONG sl = sizeof sig;
  CHECK("C_SignInit ECDSA", f->C_SignInit(s, &m, ec_priv));
  CHECK("C_Sign ECDSA", f->C_Sign(s, buf64k, 32, sig, &sl));
}
static void op_aes_cbc_pad(void) {
  CK_MECHANISM m = {CKM_AES_CBC_PAD, iv, sizeof iv};
  CK_ULONG ol = sizeof out64k;
  CHECK("C_EncryptInit CBC-PAD", f->C_EncryptInit(s, &m, aes));
  CHECK("C_Encrypt CBC-PAD", f->C_Encrypt(s, buf64k, 65536, out64k, &ol));
}
static void op_aes_ecb(void) {
  CK_MECHANISM m = {CKM_AES_ECB, NULL, 0};
  CK_ULONG ol = sizeof out64k;
  CHECK("C_EncryptInit ECB", f->C_EncryptInit(s, &m, aes));
  CHECK("C_Encrypt ECB", f->C_Encrypt(s, buf64k, 65536, out64k, &ol));
}
static void op_find_label(void) {
  CK_ATTRIBUTE t[] = {{CKA_LABEL, "p11bench-data", 13}};
  CK_OBJECT_HANDLE h[4];
  CK_ULONG n = 0;
  CHECK("C_FindObjectsInit", f->C_FindObjectsInit(s, t, 1));
  CHECK("C_FindObjects", f->C_FindObjects(s, h, 4, &n));
  CHECK("C_FindObjectsFinal", f->C_FindObjectsFinal(s));
  if (n != 1) die("find by label: objects found", n);
}
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
static CK_ULONG bits2048 = 2048;
static CK_BYTE e65537[] = {1, 0, 1};

static void rsa_keygen(CK_OBJECT_HANDLE *priv) {
  CK_MECHANISM m = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
  CK_ATTRIBUTE pub[] = {{CKA_TOKEN, &no, 1}, {CKA_MODULUS_BITS, &bits2048, sizeof bits2048},
                        {CKA_PUBLIC_EXPONENT, e65537, 3}, {CKA_VERIFY, &yes, 1}};
  CK_ATTRIBUTE prv[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}};
  CK_OBJECT_HANDLE h1, h2;
  CHECK("C_GenerateKeyPair RSA", f->C_GenerateKeyPair(s, &m, pub, 4, prv, 3, &h1, priv ? priv : &h2));
  if (!priv) {
    f->C_DestroyObject(s, h1);
    f->C_DestroyObject(s, h2);
  }
}
static void op_rsa_keygen(void) { rsa_keygen(NULL); }

static void setup(void) {
  rsa_keygen(&rsa_priv);
  static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_MECHANISM ecm = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
  CK_ATTRIBUTE epub[] = {{CKA_TOKEN, &no, 1}, {CKA_EC_PARAMS, p256, sizeof p256}, {CKA_VERIFY, &yes, 1}};
  CK_ATTRIBUTE eprv[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_PRIVATE, &yes, 1}};
  CK_OBJECT_HANDLE epubh;
  CHECK("C_GenerateKeyPair EC", f->C_GenerateKeyPair(s, &ecm, epub, 3, eprv, 3, &epubh, &ec_priv));
  CK_ULONG len32 = 32;
  CK_MECHANISM am = {CKM_AES_KEY_GEN, NULL, 0};
  CK_ATTRIBUTE at[] = {{CKA_TOKEN, &no, 1}, {CKA_VALUE_LEN, &len32, sizeof len32}, {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
  CHECK("C_GenerateKey AES", f->C_GenerateKey(s, &am, at, 4, &aes));
  CK_OBJECT_CLASS data = CKO_DATA;
  CK_ATTRIBUTE dt[] = {{CKA_CLASS, &data, sizeof data}, {CKA_TOKEN, &no, 1}, {CKA_LABEL, "p11bench-data", 13},
                       {CKA_VALUE, "data", 4}};
  CK_OBJECT_HANDLE dh;
  CHECK("C_CreateObject data", f->C_CreateObject(s, dt, 4, &dh));
  for (size_t i = 0; i < sizeof buf64k; i++) buf64k[i] = (CK_BYTE)i;
}

static const struct {
  const char *name;
  op_fn fn;
} OPS[] = {
    {"session-info", op_session_info}, {"random32", op_random32},        {"sha256-1k", op_sha256_1k},
    {"rsa2048-sign", op_rsa_sign},     {"ecdsa-p256-sign", op_ecdsa_sign}, {"aes-cbc-pad-64k", op_aes_cbc_pad},
    {"aes-ecb-64k", op_aes_ecb},       {"find-label", op_find_label},    {"rsa2048-keygen", op_rsa_keygen},
};

static int ops_main(int argc, char **argv) {
  void *h = dlopen(argv[2], RTLD_NOW);
  if (!h) {
    fprintf(stderr, "p11bench: %s\n", dlerror());
    return 1;
  }
  CK_C_GetFunctionList gfl;
  *(void **)&gfl = dlsym(h, "C_GetFunctionList");
  if (!gfl) return fprintf(stderr, "p11bench: no C_GetFunctionList\n"), 1;
  CHECK("C_GetFunctionList", gfl(&f));
  CHECK("C_Initialize", f->C_Initialize(NULL));
  /* As for C_Login below: another process's login may be rewriting the
     token's file as this one's C_Initialize reads it, and the token is
     missing from that module instance. */
  CK_SLOT_ID slot = (CK_SLOT_ID)-1;
  size_t ll = strlen(argv[3]);
  for (int tries = 0; slot == (CK_SLOT_ID)-1 && tries <= 20; tries++) {
    if (tries) { /* SoftHSM2 reads its tokens at C_Initialize: read them again */
      f->C_Finalize(NULL);
      usleep(20000 + 10000 * (useconds_t)tries);
      CHECK("C_Initialize", f->C_Initialize(NULL));
    }
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    CHECK("C_GetSlotList", f->C_GetSlotList(CK_TRUE, slots, &n));
    for (CK_ULONG i = 0; i < n; i++) {
      CK_TOKEN_INFO ti;
      if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && ll <= 32 && !memcmp(ti.label, argv[3], ll) &&
          (ll == 32 || ti.label[ll] == ' '))
        slot = slots[i];
    }
  }
  if (slot == (CK_SLOT_ID)-1) return fprintf(stderr, "p11bench: no token %s\n", argv[3]), 1;
  CHECK("C_OpenSession", f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
  /* SoftHSM2 rewrites its token file on a login: apps logging in at the same
     moment (the aggregate runs) can read it half-written and get
     CKR_GENERAL_ERROR. A harness retry, not part of any timing. */
  CK_RV lrv;
  for (int tries = 0;; tries++) {
    lrv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)argv[4], strlen(argv[4]));
    if (lrv != CKR_GENERAL_ERROR || tries == 20) break;
    usleep(20000 + 10000 * (useconds_t)tries);
  }
  CHECK("C_Login", lrv);
  setup();
  double ms = argv[5][0] == 'x' ? 0 : atof(argv[5]);
  long count = argv[5][0] == 'x' ? atol(argv[5] + 1) : -1;
  for (int a = 6; a < argc || a == 6; a++) {
    for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++)
      if (argc == 6 || !strcmp(argv[a], OPS[i].name)) run(OPS[i].name, OPS[i].fn, ms, count);
    if (argc == 6) break;
  }
  f->C_Logout(s);
  f->C_CloseSession(s);
  f->C_Finalize(NULL);
  return 0;
}

/* ---- the floor: a C echo of length-prefixed messages over the tty ---- */
static int open_raw(const char *path) {
  int fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    perror(path);
    exit(1);
  }
  struct termios t;
  if (tcgetattr(fd, &t) == 0) {
    cfmakeraw(&t);
    tcsetattr(fd, TCSANOW, &t);
  }
  tcflush(fd, TCIOFLUSH);
  return fd;
}
/* Reads while it writes, as any peer of a pty must for messages larger than
 * the pty's buffer: socat relays a pair in one thread, so a peer that blocks
 * in write() while the other side also writes deadlocks the pair. The echo
 * server keeps what it read in a buffer and writes it as the line takes it. */
static int echo_server(const char *path) {
  int fd = open_raw(path);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  static unsigned char b[1 << 20];
  size_t head = 0, tail = 0; /* bytes [head, tail) wait to be echoed */
  printf("ready\n");
  fflush(stdout);
  for (;;) {
    if (head == tail) head = tail = 0;
    short ev = (short)((tail < sizeof b ? POLLIN : 0) | (head < tail ? POLLOUT : 0));
    struct pollfd p = {fd, ev, 0};
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (p.revents & (POLLERR | POLLNVAL)) return 0;
    if ((p.revents & POLLOUT) && head < tail) {
      ssize_t w = write(fd, b + head, tail - head);
      if (w > 0) head += (size_t)w;
    }
    if (p.revents & (POLLIN | POLLHUP)) {
      if (head > 0 && tail == sizeof b) { /* make room */
        memmove(b, b + head, tail - head);
        tail -= head, head = 0;
      }
      ssize_t r = read(fd, b + tail, sizeof b - tail);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) return 0;
      if (r > 0) tail += (size_t)r;
    }
  }
}

static int echo_client(const char *path, size_t size, double ms) {
  int fd = open_raw(path);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  unsigned char *msg = malloc(size + 4), *back = malloc(size + 4);
  msg[0] = (unsigned char)(size >> 24), msg[1] = (unsigned char)(size >> 16), msg[2] = (unsigned char)(size >> 8),
  msg[3] = (unsigned char)size;
  for (size_t i = 0; i < size; i++) msg[4 + i] = (unsigned char)(i * 7 + 1);
  static double lat[200000];
  size_t n = 0;
  double start = now_us(), end = start + ms * 1000;
  for (int warm = 3; n < sizeof lat / sizeof lat[0]; warm > 0 ? warm-- : 0) {
    double t = now_us();
    /* write and read together: a 64 KiB message does not fit the pty */
    size_t sent = 0, got = 0;
    while (got < size + 4) {
      struct pollfd p = {fd, (short)(POLLIN | (sent < size + 4 ? POLLOUT : 0)), 0};
      if (poll(&p, 1, -1) < 0 && errno != EINTR) return 1;
      if ((p.revents & POLLOUT) && sent < size + 4) {
        ssize_t w = write(fd, msg + sent, size + 4 - sent);
        if (w > 0) sent += (size_t)w;
      }
      if (p.revents & POLLIN) {
        ssize_t r = read(fd, back + got, size + 4 - got);
        if (r > 0) got += (size_t)r;
      }
    }
    double u = now_us();
    if (warm == 0) lat[n++] = u - t;
    if (u >= end && n >= 5) break;
  }
  if (memcmp(msg, back, size + 4)) return fprintf(stderr, "p11bench: echo returned other bytes\n"), 1;
  double total = now_us() - start;
  qsort(lat, n, sizeof lat[0], cmp);
  printf("{\"op\":\"echo-%zu\",\"n\":%zu,\"p50_us\":%.1f,\"p99_us\":%.1f,\"ops_s\":%.1f}\n", size, n, lat[n / 2],
         lat[(size_t)(n * 0.99) < n ? (size_t)(n * 0.99) : n - 1], n / (total / 1e6));
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 6 && !strcmp(argv[1], "ops")) return ops_main(argc, argv);
  if (argc == 3 && !strcmp(argv[1], "echo-server")) return echo_server(argv[2]);
  if (argc == 5 && !strcmp(argv[1], "echo")) return echo_client(argv[2], (size_t)atol(argv[3]), atof(argv[4]));
  fprintf(stderr, "usage: p11bench ops <module.so> <token> <PIN> <ms> [op ...] | echo-server <tty> | echo <tty> <bytes> <ms>\n");
  return 2;
}
