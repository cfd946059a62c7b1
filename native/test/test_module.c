/* test_module.c: libp11bridge.so end to end, driven by module_smoke.mjs
 * (SoftHSM2 <- p11bridge daemon <- socat pty pair <- this program).
 *
 *   test_module /path/to/libp11bridge.so
 * env: TEC_COMM_PORT, P11BRIDGE_TEST_PIN, P11BRIDGE_TEST_LABEL,
 *      P11BRIDGE_TEST_INFO ("manufacturer|libraryDescription|major.minor"),
 *      P11BRIDGE_TEST_DIGESTS (8 comma-separated SHA-256 hex digests of
 *      "p11bridge thread <i>").
 * Prints "test_module: N checks passed" and exits 0, or FAIL lines and 1. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "p11.h"

static CK_FUNCTION_LIST_PTR f;
static int checks, failures;
static pthread_mutex_t check_mu = PTHREAD_MUTEX_INITIALIZER;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  pthread_mutex_lock(&check_mu);
  checks++;
  if (!ok) {
    failures++;
    va_list ap;
    va_start(ap, fmt);
    fputs("FAIL: ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    fflush(stdout);
  }
  pthread_mutex_unlock(&check_mu);
}
#define RV(expr, want) do { CK_RV _r = (expr); check(_r == (CK_RV)(want), "%s: rv 0x%lx, want 0x%lx (line %d)", #expr, (unsigned long)_r, (unsigned long)(want), __LINE__); } while (0)

static const char *env(const char *k) {
  const char *v = getenv(k);
  if (!v) {
    fprintf(stderr, "test_module: %s not set\n", k);
    exit(2);
  }
  return v;
}

static void hex(const unsigned char *p, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", p[i]);
}

static int padded_eq(const CK_UTF8CHAR *field, size_t n, const char *s) {
  size_t l = strlen(s);
  if (l > n || memcmp(field, s, l)) return 0;
  for (size_t i = l; i < n; i++)
    if (field[i] != ' ') return 0;
  return 1;
}

/* ---- application mutex callbacks ---- */
static int n_create, n_destroy, n_lock, n_unlock;
static CK_RV app_create(CK_VOID_PTR_PTR pp) {
  pthread_mutex_t *m = malloc(sizeof *m);
  pthread_mutex_init(m, NULL);
  *pp = m;
  __atomic_add_fetch(&n_create, 1, __ATOMIC_SEQ_CST);
  return CKR_OK;
}
static CK_RV app_destroy(CK_VOID_PTR p) {
  pthread_mutex_destroy(p);
  free(p);
  __atomic_add_fetch(&n_destroy, 1, __ATOMIC_SEQ_CST);
  return CKR_OK;
}
static CK_RV app_lock(CK_VOID_PTR p) {
  __atomic_add_fetch(&n_lock, 1, __ATOMIC_SEQ_CST);
  return pthread_mutex_lock(p) ? CKR_MUTEX_BAD : CKR_OK;
}
static CK_RV app_unlock(CK_VOID_PTR p) {
  __atomic_add_fetch(&n_unlock, 1, __ATOMIC_SEQ_CST);
  return pthread_mutex_unlock(p) ? CKR_MUTEX_NOT_LOCKED : CKR_OK;
}

/* ---- threads ---- */
typedef struct {
  int idx;
  CK_SLOT_ID slot;
  char want[65];
  int ok_random, ok_digest;
} thread_arg;

static void *worker(void *p) {
  thread_arg *t = p;
  CK_SESSION_HANDLE s;
  CK_RV rv = f->C_OpenSession(t->slot, CKF_SERIAL_SESSION, NULL, NULL, &s);
  check(rv == CKR_OK, "thread %d: C_OpenSession rv 0x%lx", t->idx, (unsigned long)rv);
  if (rv != CKR_OK) return NULL;
  char msg[64];
  snprintf(msg, sizeof msg, "p11bridge thread %d", t->idx);
  unsigned char prev[32] = {0};
  for (int i = 0; i < 200; i++) {
    unsigned char r[32];
    if (i % 2 == 0) {
      rv = f->C_GenerateRandom(s, r, sizeof r);
      if (rv == CKR_OK && memcmp(r, prev, sizeof r)) t->ok_random++;
      memcpy(prev, r, sizeof r);
    } else {
      CK_MECHANISM m = {CKM_SHA256, NULL, 0};
      unsigned char d[64];
      CK_ULONG dl = sizeof d;
      char h[129];
      rv = f->C_DigestInit(s, &m);
      if (rv == CKR_OK) rv = f->C_Digest(s, (CK_BYTE_PTR)msg, strlen(msg), d, &dl);
      if (rv == CKR_OK && dl == 32) {
        hex(d, 32, h);
        if (!strcmp(h, t->want)) t->ok_digest++;
      }
    }
  }
  f->C_CloseSession(s);
  return NULL;
}

static CK_RV wait_rv;
static void *waiter(void *p) {
  (void)p;
  CK_SLOT_ID slot;
  wait_rv = f->C_WaitForSlotEvent(0, &slot, NULL);
  return NULL;
}

/* Against test/module_smoke.mjs's hostile server: every malformed answer is
 * CKR_DEVICE_ERROR (or the rv an ERROR frame carries), never a crash, an
 * over-read or a write past the caller's buffer. */
static int hostile(void) {
  CK_INFO info;
  RV(f->C_Initialize(NULL), CKR_OK);
  RV(f->C_GetInfo(&info), CKR_DEVICE_ERROR);  /* payload is not MessagePack */
  RV(f->C_GetInfo(&info), CKR_DEVICE_ERROR);  /* info of the wrong shape */
  RV(f->C_GetInfo(&info), CKR_DEVICE_ERROR);  /* bad CRC, then silence: timeout */
  unsigned char buf[32];
  memset(buf, 0xEE, sizeof buf);
  CK_ULONG bl = 16;
  RV(f->C_Sign(1, (CK_BYTE_PTR) "x", 1, buf, &bl), CKR_DEVICE_ERROR); /* 32 bytes for 16 */
  check(buf[16] == 0xEE && buf[31] == 0xEE, "nothing written past the caller's buffer");
  CK_SLOT_ID sl[2];
  CK_ULONG n = 2;
  RV(f->C_GetSlotList(CK_FALSE, sl, &n), CKR_DEVICE_ERROR); /* 3 slots for 2 */
  n = 2;
  RV(f->C_GetSlotList(CK_FALSE, sl, &n), CKR_DEVICE_ERROR); /* array declaring 2^32-1 elements */
  RV(f->C_GenerateRandom(1, buf, 4), CKR_DEVICE_ERROR);     /* 5 bytes for 4 */
  unsigned char lab[4];
  CK_ATTRIBUTE q[] = {{CKA_LABEL, lab, sizeof lab}};
  RV(f->C_GetAttributeValue(1, 2, q, 1), CKR_BUFFER_TOO_SMALL); /* 100 bytes for 4: checked here */
  check(q[0].ulValueLen == CK_UNAVAILABLE_INFORMATION, "too small -> CK_UNAVAILABLE_INFORMATION");
  q[0].ulValueLen = sizeof lab;
  RV(f->C_GetAttributeValue(1, 2, q, 1), CKR_DEVICE_ERROR); /* two values for one attribute */
  CK_OBJECT_HANDLE objs[2];
  RV(f->C_FindObjects(1, objs, 2, &n), CKR_DEVICE_ERROR);   /* 3 handles for 2 */
  RV(f->C_GetInfo(&info), CKR_DEVICE_REMOVED);              /* ERROR frame */
  RV(f->C_GetInfo(&info), CKR_OK);                          /* noise, an echo, then the answer */
  RV(f->C_GetInfo(&info), CKR_DEVICE_ERROR);                /* negative rv */
  RV(f->C_GetInfo(&info), CKR_OK);                          /* wrong connection id first */
  RV(f->C_GetInfo(&info), CKR_OK);                          /* an oversize piece first */
  RV(f->C_GetInfo(&info), CKR_OK);                          /* BUSY past the silence timeout */
  /* C_WaitForSlotEvent polls (the server always answers CKR_NO_EVENT) until
   * C_Finalize from another thread ends it; other calls go on meanwhile */
  pthread_t w;
  wait_rv = 0;
  pthread_create(&w, NULL, waiter, NULL);
  usleep(400000);
  RV(f->C_GetInfo(&info), CKR_OK);
  usleep(300000);
  RV(f->C_Finalize(NULL), CKR_OK);
  pthread_join(w, NULL);
  check(wait_rv == CKR_CRYPTOKI_NOT_INITIALIZED, "C_WaitForSlotEvent ended by C_Finalize: 0x%lx", (unsigned long)wait_rv);
  if (failures) {
    printf("test_module: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("test_module: %d checks passed (hostile server)\n", checks);
  return 0;
}

/* A mixed workload through a fault-injecting relay
 * (test/integration/faults.test.ts): frames dropped, corrupted, duplicated in
 * both directions, and every call must still run exactly once. Each check
 * would fail if a call ran twice: a second C_CreateObject leaves an extra
 * object (the session objects are counted here, the token objects by the
 * caller through the module directly); a second C_DestroyObject answers
 * CKR_OBJECT_HANDLE_INVALID; a second C_EncryptUpdate, C_DecryptUpdate,
 * C_DigestUpdate or C_SignUpdate changes the chained result, which is
 * compared with the one-shot call; a second C_Login answers
 * CKR_USER_ALREADY_LOGGED_IN, a second C_Logout CKR_USER_NOT_LOGGED_IN.
 * env: P11BRIDGE_TEST_CALLS (at least this many calls), P11BRIDGE_TEST_PIN,
 *      P11BRIDGE_TEST_SEED, P11BRIDGE_TEST_APP (CKA_APPLICATION of the objects).
 * Prints "faults: ... token_objects=N session_objects=M calls=C". */
static uint32_t fz_state;
static double fz_rnd(void) { /* mulberry32, as test/helpers/fault-link.ts */
  uint32_t t = (fz_state += 0x6d2b79f5u);
  t = (t ^ (t >> 15)) * (t | 1u);
  t ^= t + (t ^ (t >> 7)) * (t | 61u);
  return (double)(t ^ (t >> 14)) / 4294967296.0;
}
static void fz_bytes(unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(fz_rnd() * 256);
}

typedef struct { CK_OBJECT_HANDLE h; char label[48]; } fz_obj;
typedef struct { fz_obj *v; size_t n, cap; } fz_list;
static void fz_push(fz_list *l, CK_OBJECT_HANDLE h, const char *label) {
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    l->v = realloc(l->v, l->cap * sizeof *l->v);
    if (!l->v) abort();
  }
  l->v[l->n].h = h;
  snprintf(l->v[l->n].label, sizeof l->v[l->n].label, "%s", label);
  l->n++;
}

static long fz_calls;
static int fz_bad;
/* one call: counted, its rv checked; a wrong rv ends the workload */
#define FZ(expr, want)                                                                                        \
  do {                                                                                                        \
    CK_RV _r = (expr);                                                                                        \
    fz_calls++;                                                                                               \
    check(_r == (CK_RV)(want), "after %ld calls: %s: rv 0x%lx, want 0x%lx", fz_calls, #expr, (unsigned long)_r, \
          (unsigned long)(want));                                                                             \
    if (_r != (CK_RV)(want)) fz_bad = 1;                                                                      \
  } while (0)
#define FZ_TRUE(cond, ...)              \
  do {                                  \
    check((cond), __VA_ARGS__);         \
    if (!(cond)) fz_bad = 1;            \
  } while (0)

static int faults(void) {
  long target = atol(env("P11BRIDGE_TEST_CALLS"));
  const char *pin = env("P11BRIDGE_TEST_PIN");
  const char *seed = getenv("P11BRIDGE_TEST_SEED");
  const char *app = getenv("P11BRIDGE_TEST_APP");
  if (!app || !*app) app = "p11bridge-faults";
  fz_state = seed ? (uint32_t)strtoul(seed, NULL, 10) : 5u;
  FZ(f->C_Initialize(NULL), CKR_OK);
  CK_SLOT_ID slots[4];
  CK_ULONG ns = 4;
  FZ(f->C_GetSlotList(CK_TRUE, slots, &ns), CKR_OK);
  CK_SESSION_HANDLE s = 0;
  FZ(f->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
  FZ(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
  if (fz_bad) return 1;

  /* public session keys: they stay usable across C_Logout */
  CK_OBJECT_CLASS secret = CKO_SECRET_KEY, data = CKO_DATA;
  CK_KEY_TYPE aes_t = CKK_AES, gen_t = CKK_GENERIC_SECRET;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  unsigned char aes_v[32], mac_v[32];
  fz_bytes(aes_v, sizeof aes_v);
  fz_bytes(mac_v, sizeof mac_v);
  CK_ATTRIBUTE aes_t_[] = {{CKA_CLASS, &secret, sizeof secret}, {CKA_KEY_TYPE, &aes_t, sizeof aes_t}, {CKA_TOKEN, &no, 1},
                           {CKA_PRIVATE, &no, 1}, {CKA_VALUE, aes_v, sizeof aes_v}, {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}};
  CK_ATTRIBUTE mac_t_[] = {{CKA_CLASS, &secret, sizeof secret}, {CKA_KEY_TYPE, &gen_t, sizeof gen_t}, {CKA_TOKEN, &no, 1},
                           {CKA_PRIVATE, &no, 1}, {CKA_VALUE, mac_v, sizeof mac_v}, {CKA_SIGN, &yes, 1}, {CKA_VERIFY, &yes, 1}};
  CK_OBJECT_HANDLE aes = 0, mac = 0, rsa_pub = 0, rsa_priv = 0;
  FZ(f->C_CreateObject(s, aes_t_, 7, &aes), CKR_OK);
  FZ(f->C_CreateObject(s, mac_t_, 7, &mac), CKR_OK);
  CK_MECHANISM kpg = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
  CK_ULONG bits = 2048;
  CK_BYTE e[] = {1, 0, 1};
  CK_ATTRIBUTE pubt[] = {{CKA_TOKEN, &no, 1}, {CKA_MODULUS_BITS, &bits, sizeof bits}, {CKA_PUBLIC_EXPONENT, e, 3}, {CKA_VERIFY, &yes, 1}};
  CK_ATTRIBUTE privt[] = {{CKA_TOKEN, &no, 1}, {CKA_PRIVATE, &no, 1}, {CKA_SIGN, &yes, 1}};
  FZ(f->C_GenerateKeyPair(s, &kpg, pubt, 4, privt, 3, &rsa_pub, &rsa_priv), CKR_OK);
  if (fz_bad) return 1;

  fz_list objs[2] = {{0}, {0}}; /* [0] session, [1] token */
  long serial = 0;
  int ops[8] = {0};
  while (fz_calls < target && !fz_bad) {
    double r = fz_rnd() * 12;
    if (r < 3) { /* multi-part AES-CBC, against the one-shot call and back */
      ops[0]++;
      unsigned char iv[16], pt[3 * 64], ct[3 * 64 + 16], one[3 * 64 + 16], back[3 * 64 + 16];
      size_t len[3], total = 0, off = 0;
      fz_bytes(iv, 16);
      for (int i = 0; i < 3; i++) total += len[i] = 16 * (1 + (size_t)(fz_rnd() * 4));
      fz_bytes(pt, total);
      CK_MECHANISM m = {CKM_AES_CBC, iv, 16};
      FZ(f->C_EncryptInit(s, &m, aes), CKR_OK);
      for (int i = 0; i < 3 && !fz_bad; i++) {
        CK_ULONG l = sizeof ct - off;
        FZ(f->C_EncryptUpdate(s, pt + off, len[i], ct + off, &l), CKR_OK);
        FZ_TRUE(l == len[i], "C_EncryptUpdate gave %lu bytes for %zu", (unsigned long)l, len[i]);
        off += len[i];
      }
      CK_ULONG l = 16;
      FZ(f->C_EncryptFinal(s, ct + off, &l), CKR_OK);
      FZ_TRUE(l == 0, "C_EncryptFinal gave %lu bytes for whole blocks", (unsigned long)l);
      CK_ULONG ol = sizeof one;
      FZ(f->C_EncryptInit(s, &m, aes), CKR_OK);
      FZ(f->C_Encrypt(s, pt, total, one, &ol), CKR_OK);
      FZ_TRUE(ol == total && !memcmp(one, ct, total), "multi-part AES-CBC differs from the one-shot (after %ld calls)", fz_calls);
      FZ(f->C_DecryptInit(s, &m, aes), CKR_OK);
      off = 0;
      for (int i = 0; i < 3 && !fz_bad; i++) {
        CK_ULONG bl = sizeof back - off;
        FZ(f->C_DecryptUpdate(s, ct + off, len[i], back + off, &bl), CKR_OK);
        off += len[i];
      }
      l = 16;
      FZ(f->C_DecryptFinal(s, back + off, &l), CKR_OK);
      FZ_TRUE(!memcmp(back, pt, total), "AES-CBC decrypts to other plaintext (after %ld calls)", fz_calls);
    } else if (r < 5) { /* multi-part HMAC against the one-shot, then verified */
      ops[1]++;
      unsigned char a[100], b[100], m1[32], m2[32];
      size_t la = 1 + (size_t)(fz_rnd() * 99), lb = 1 + (size_t)(fz_rnd() * 99);
      unsigned char ab[200];
      fz_bytes(a, la);
      fz_bytes(b, lb);
      memcpy(ab, a, la);
      memcpy(ab + la, b, lb);
      CK_MECHANISM m = {CKM_SHA256_HMAC, NULL, 0};
      CK_ULONG l1 = 32, l2 = 32;
      FZ(f->C_SignInit(s, &m, mac), CKR_OK);
      FZ(f->C_SignUpdate(s, a, la), CKR_OK);
      FZ(f->C_SignUpdate(s, b, lb), CKR_OK);
      FZ(f->C_SignFinal(s, m1, &l1), CKR_OK);
      FZ(f->C_SignInit(s, &m, mac), CKR_OK);
      FZ(f->C_Sign(s, ab, la + lb, m2, &l2), CKR_OK);
      FZ_TRUE(l1 == 32 && l2 == 32 && !memcmp(m1, m2, 32), "multi-part HMAC differs from the one-shot (after %ld calls)", fz_calls);
      FZ(f->C_VerifyInit(s, &m, mac), CKR_OK);
      FZ(f->C_Verify(s, ab, la + lb, m1, 32), CKR_OK);
    } else if (r < 6) { /* RSA signature, verified by the token */
      ops[2]++;
      unsigned char d[64], sig[256];
      CK_ULONG sl = sizeof sig;
      fz_bytes(d, sizeof d);
      CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
      FZ(f->C_SignInit(s, &m, rsa_priv), CKR_OK);
      FZ(f->C_Sign(s, d, sizeof d, sig, &sl), CKR_OK);
      FZ(f->C_VerifyInit(s, &m, rsa_pub), CKR_OK);
      FZ(f->C_Verify(s, d, sizeof d, sig, sl), CKR_OK);
    } else if (r < 8) { /* multi-part digest against the one-shot */
      ops[3]++;
      unsigned char dat[300], d1[32], d2[32];
      size_t n1 = 1 + (size_t)(fz_rnd() * 99), n2 = 1 + (size_t)(fz_rnd() * 99), n3 = 1 + (size_t)(fz_rnd() * 99);
      fz_bytes(dat, n1 + n2 + n3);
      CK_MECHANISM m = {CKM_SHA256, NULL, 0};
      CK_ULONG l1 = 32, l2 = 32;
      FZ(f->C_DigestInit(s, &m), CKR_OK);
      FZ(f->C_DigestUpdate(s, dat, n1), CKR_OK);
      FZ(f->C_DigestUpdate(s, dat + n1, n2), CKR_OK);
      FZ(f->C_DigestUpdate(s, dat + n1 + n2, n3), CKR_OK);
      FZ(f->C_DigestFinal(s, d1, &l1), CKR_OK);
      FZ(f->C_DigestInit(s, &m), CKR_OK);
      FZ(f->C_Digest(s, dat, n1 + n2 + n3, d2, &l2), CKR_OK);
      FZ_TRUE(l1 == 32 && !memcmp(d1, d2, 32), "multi-part digest differs from the one-shot (after %ld calls)", fz_calls);
    } else if (r < 11) { /* create or destroy a data object, on the token or in the session */
      ops[4]++;
      int tok = r < 9.5;
      fz_list *l = &objs[tok];
      if (l->n > 0 && fz_rnd() < 0.45) {
        size_t i = (size_t)(fz_rnd() * (double)l->n);
        FZ(f->C_DestroyObject(s, l->v[i].h), CKR_OK);
        l->v[i] = l->v[--l->n];
        continue;
      }
      char label[48];
      unsigned char val[20];
      fz_bytes(val, sizeof val);
      snprintf(label, sizeof label, "%s-%c-%ld", app, tok ? 't' : 's', serial++);
      CK_ATTRIBUTE t[] = {{CKA_CLASS, &data, sizeof data}, {CKA_TOKEN, tok ? &yes : &no, 1}, {CKA_PRIVATE, &no, 1},
                          {CKA_LABEL, label, strlen(label)}, {CKA_APPLICATION, (void *)app, strlen(app)},
                          {CKA_VALUE, val, sizeof val}};
      CK_OBJECT_HANDLE h = 0;
      FZ(f->C_CreateObject(s, t, 6, &h), CKR_OK);
      if (!fz_bad) fz_push(l, h, label);
    } else if (r < 11.5) { /* the label of a live object, through its handle */
      ops[5]++;
      fz_list *l = &objs[fz_rnd() < 0.5];
      if (l->n == 0) continue;
      fz_obj *o = &l->v[(size_t)(fz_rnd() * (double)l->n)];
      char got[64] = {0};
      CK_ATTRIBUTE a = {CKA_LABEL, got, sizeof got - 1};
      FZ(f->C_GetAttributeValue(s, o->h, &a, 1), CKR_OK);
      FZ_TRUE(a.ulValueLen == strlen(o->label) && !memcmp(got, o->label, a.ulValueLen), "label '%s' read back for '%s'", got, o->label);
    } else { /* log out and in again */
      ops[6]++;
      CK_SESSION_INFO si;
      FZ(f->C_Logout(s), CKR_OK);
      FZ(f->C_GetSessionInfo(s, &si), CKR_OK);
      FZ_TRUE(si.state == CKS_RW_PUBLIC_SESSION, "state %lu after C_Logout", (unsigned long)si.state);
      FZ(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
      FZ(f->C_GetSessionInfo(s, &si), CKR_OK);
      FZ_TRUE(si.state == CKS_RW_USER_FUNCTIONS, "state %lu after C_Login", (unsigned long)si.state);
    }
  }
  /* the session objects left, found in batches (a C_FindObjects run twice
   * would skip a batch) */
  CK_ATTRIBUTE ft[] = {{CKA_APPLICATION, (void *)app, strlen(app)}, {CKA_TOKEN, &no, 1}};
  CK_ULONG found = 0;
  if (!fz_bad) {
    FZ(f->C_FindObjectsInit(s, ft, 2), CKR_OK);
    for (;;) {
      CK_OBJECT_HANDLE batch[7];
      CK_ULONG nb = 0;
      FZ(f->C_FindObjects(s, batch, 7, &nb), CKR_OK);
      if (fz_bad || nb == 0) break;
      found += nb;
    }
    FZ(f->C_FindObjectsFinal(s), CKR_OK);
    FZ_TRUE(found == objs[0].n, "found %lu session objects, expected %zu", (unsigned long)found, objs[0].n);
    FZ(f->C_Logout(s), CKR_OK);
    FZ(f->C_CloseSession(s), CKR_OK);
  }
  FZ(f->C_Finalize(NULL), CKR_OK);
  printf("faults: AES-CBC %d, HMAC %d, RSA %d, digest %d, create/destroy %d, read-back %d, logout/login %d; "
         "token_objects=%zu session_objects=%zu calls=%ld\n",
         ops[0], ops[1], ops[2], ops[3], ops[4], ops[5], ops[6], objs[1].n, objs[0].n, fz_calls);
  free(objs[0].v);
  free(objs[1].v);
  if (failures) {
    printf("test_module: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("test_module: %d checks passed (faults)\n", checks);
  return 0;
}
#undef FZ
#undef FZ_TRUE

/* The daemon killed and restarted under a running workload (driven by
 * test/integration/faults.test.ts): digests until a call fails, then the old
 * session again, then C_Finalize / C_Initialize and a fresh session that must
 * work. Prints "restart: running" once calls succeed, and
 * "restart: first_error=0x.. then=0x.. calls_before=N calls_after=M". */
static int restart(void) {
  const char *pin = env("P11BRIDGE_TEST_PIN");
  CK_SLOT_ID slots[4];
  CK_ULONG ns = 4;
  CK_SESSION_HANDLE s = 0;
  RV(f->C_Initialize(NULL), CKR_OK);
  RV(f->C_GetSlotList(CK_TRUE, slots, &ns), CKR_OK);
  RV(f->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  if (failures) return 1;
  CK_MECHANISM m = {CKM_SHA256, NULL, 0};
  long before = 0;
  CK_RV first = CKR_OK;
  for (;;) {
    unsigned char d[32];
    CK_ULONG dl = sizeof d;
    CK_RV rv = f->C_DigestInit(s, &m);
    if (rv == CKR_OK) rv = f->C_Digest(s, (CK_BYTE_PTR) "restart", 7, d, &dl);
    if (rv != CKR_OK) {
      first = rv;
      break;
    }
    if ((before += 2) == 200) {
      printf("restart: running\n");
      fflush(stdout);
    }
  }
  /* the old session: gone with the old daemon (retry until the new one answers) */
  CK_SESSION_INFO si;
  CK_RV then = CKR_DEVICE_ERROR;
  for (int i = 0; i < 50 && then == CKR_DEVICE_ERROR; i++) then = f->C_GetSessionInfo(s, &si);
  RV(f->C_Finalize(NULL), CKR_OK);
  RV(f->C_Initialize(NULL), CKR_OK);
  ns = 4;
  RV(f->C_GetSlotList(CK_TRUE, slots, &ns), CKR_OK);
  RV(f->C_OpenSession(slots[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
  RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
  long after = 0;
  for (int i = 0; i < 100 && !failures; i++) {
    unsigned char d[32];
    CK_ULONG dl = sizeof d;
    RV(f->C_DigestInit(s, &m), CKR_OK);
    RV(f->C_Digest(s, (CK_BYTE_PTR) "restart", 7, d, &dl), CKR_OK);
    after += 2;
  }
  RV(f->C_Logout(s), CKR_OK);
  RV(f->C_Finalize(NULL), CKR_OK);
  printf("restart: first_error=0x%lx then=0x%lx calls_before=%ld calls_after=%ld\n", (unsigned long)first,
         (unsigned long)then, before, after);
  if (failures) {
    printf("test_module: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("test_module: %d checks passed (restart)\n", checks);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && (!strcmp(argv[2], "faults") || !strcmp(argv[2], "restart"))) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList gfl;
    if (!h || !(*(void **)&gfl = dlsym(h, "C_GetFunctionList")) || gfl(&f) != CKR_OK) return 2;
    int r = !strcmp(argv[2], "faults") ? faults() : restart();
    dlclose(h);
    return r;
  }
  if (argc >= 3 && !strcmp(argv[2], "hostile")) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList gfl;
    if (!h || !(*(void **)&gfl = dlsym(h, "C_GetFunctionList")) || gfl(&f) != CKR_OK) return 2;
    int r = hostile();
    dlclose(h);
    return r;
  }
  if (argc < 2) {
    fprintf(stderr, "usage: test_module libp11bridge.so\n");
    return 2;
  }
  const char *pin = env("P11BRIDGE_TEST_PIN"), *label = env("P11BRIDGE_TEST_LABEL");
  char info_env[512];
  snprintf(info_env, sizeof info_env, "%s", env("P11BRIDGE_TEST_INFO"));
  char *want_manuf = strtok(info_env, "|"), *want_desc = strtok(NULL, "|"), *want_ver = strtok(NULL, "|");
  char digests[1024];
  snprintf(digests, sizeof digests, "%s", env("P11BRIDGE_TEST_DIGESTS"));

  void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 2;
  }
  CK_C_GetFunctionList gfl;
  *(void **)&gfl = dlsym(h, "C_GetFunctionList");
  check(gfl != NULL, "C_GetFunctionList exported");
  RV(gfl(&f), CKR_OK);
  check(f->version.major == 2 && f->version.minor == 40, "function list version %d.%d", f->version.major, f->version.minor);
  void **entries = (void **)&f->C_Initialize;
  int nonnull = 0;
  for (int i = 0; i < 68; i++) nonnull += entries[i] != NULL;
  check(nonnull == 68, "68 entries, %d non-NULL", nonnull);
  check(dlsym(h, "pb_client_call") == NULL, "internal symbols are hidden");

  /* ---- before C_Initialize: garbage arguments are never touched ---- */
  RV(f->C_GetInfo((CK_INFO_PTR)1), CKR_CRYPTOKI_NOT_INITIALIZED);
  RV(f->C_GetSlotList(CK_TRUE, (CK_SLOT_ID_PTR)1, (CK_ULONG_PTR)1), CKR_CRYPTOKI_NOT_INITIALIZED);
  RV(f->C_Sign(1, (CK_BYTE_PTR)1, 99, (CK_BYTE_PTR)1, (CK_ULONG_PTR)1), CKR_CRYPTOKI_NOT_INITIALIZED);
  RV(f->C_WaitForSlotEvent(0, (CK_SLOT_ID_PTR)1, NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
  RV(f->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);

  /* ---- C_Initialize variants ---- */
  CK_C_INITIALIZE_ARGS bad = {NULL, NULL, NULL, NULL, 0, (CK_VOID_PTR)1};
  RV(f->C_Initialize(&bad), CKR_ARGUMENTS_BAD);
  CK_C_INITIALIZE_ARGS partial = {app_create, NULL, NULL, NULL, 0, NULL};
  RV(f->C_Initialize(&partial), CKR_ARGUMENTS_BAD);
  RV(f->C_Initialize(NULL), CKR_OK);
  RV(f->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
  RV(f->C_Finalize((CK_VOID_PTR)1), CKR_ARGUMENTS_BAD);
  RV(f->C_Finalize(NULL), CKR_OK);
  RV(f->C_GetInfo((CK_INFO_PTR)1), CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_C_INITIALIZE_ARGS cbs = {app_create, app_destroy, app_lock, app_unlock, 0, NULL};
  RV(f->C_Initialize(&cbs), CKR_OK);
  CK_INFO info;
  RV(f->C_GetInfo(&info), CKR_OK);
  RV(f->C_Finalize(NULL), CKR_OK);
  check(n_create == 1 && n_destroy == 1, "application mutex created %d / destroyed %d", n_create, n_destroy);
  check(n_lock >= 2 && n_lock == n_unlock, "application mutex locked %d / unlocked %d", n_lock, n_unlock);
  CK_C_INITIALIZE_ARGS os = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
  RV(f->C_Initialize(&os), CKR_OK);

  /* ---- info, slots, token ---- */
  memset(&info, 0, sizeof info);
  RV(f->C_GetInfo(&info), CKR_OK);
  char ver[16];
  snprintf(ver, sizeof ver, "%u.%u", info.libraryVersion.major, info.libraryVersion.minor);
  check(padded_eq(info.manufacturerID, 32, want_manuf) && padded_eq(info.libraryDescription, 32, want_desc) &&
            !strcmp(ver, want_ver) && info.cryptokiVersion.major == 2,
        "C_GetInfo equals the module's (%.32s / %.32s / %s)", info.manufacturerID, info.libraryDescription, ver);
  CK_ULONG n = 0;
  RV(f->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK);
  check(n == 2, "slot count %lu (an initialized token and a free slot)", (unsigned long)n);
  CK_SLOT_ID slots[8];
  CK_ULONG n1 = 1;
  RV(f->C_GetSlotList(CK_FALSE, slots, &n1), CKR_BUFFER_TOO_SMALL);
  check(n1 == 2, "BUFFER_TOO_SMALL gives the count (%lu)", (unsigned long)n1);
  n = 8;
  RV(f->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK);
  check(n >= 1, "slots with a token: %lu", (unsigned long)n);
  CK_SLOT_ID slot = slots[0];
  CK_SLOT_INFO si;
  RV(f->C_GetSlotInfo(slot, &si), CKR_OK);
  check(si.flags & CKF_TOKEN_PRESENT, "slot has a token");
  CK_TOKEN_INFO ti;
  RV(f->C_GetTokenInfo(slot, &ti), CKR_OK);
  check(padded_eq(ti.label, 32, label), "token label '%.32s'", ti.label);
  RV(f->C_GetTokenInfo(0xdeadbeef, &ti), CKR_SLOT_ID_INVALID);

  /* ---- mechanisms ---- */
  n = 0;
  RV(f->C_GetMechanismList(slot, NULL, &n), CKR_OK);
  check(n > 10, "mechanism count %lu", (unsigned long)n);
  CK_MECHANISM_TYPE *mechs = calloc(n, sizeof *mechs);
  CK_ULONG n2 = n;
  RV(f->C_GetMechanismList(slot, mechs, &n2), CKR_OK);
  int has_cbc_pad = 0;
  for (CK_ULONG i = 0; i < n2; i++) has_cbc_pad |= mechs[i] == CKM_AES_CBC_PAD;
  check(n2 == n && has_cbc_pad, "mechanism list fetched (%lu) with CKM_AES_CBC_PAD", (unsigned long)n2);
  free(mechs);
  CK_MECHANISM_INFO mi;
  RV(f->C_GetMechanismInfo(slot, CKM_RSA_PKCS_KEY_PAIR_GEN, &mi), CKR_OK);
  check(mi.ulMaxKeySize >= 2048 && (mi.flags & CKF_GENERATE_KEY_PAIR), "RSA keygen mechanism info");

  /* ---- session, login ---- */
  CK_SESSION_HANDLE s;
  RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
  CK_SESSION_INFO sinfo;
  RV(f->C_GetSessionInfo(s, &sinfo), CKR_OK);
  check(sinfo.slotID == slot && sinfo.state == CKS_RW_PUBLIC_SESSION, "session info");
  RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR) "wrong-pin", 9), CKR_PIN_INCORRECT);
  RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
  RV(f->C_GetSessionInfo(s, &sinfo), CKR_OK);
  check(sinfo.state == CKS_RW_USER_FUNCTIONS, "logged in");

  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_OBJECT_CLASS secret = CKO_SECRET_KEY;
  CK_KEY_TYPE aes = CKK_AES;
  CK_ULONG len32 = 32;

  /* ---- AES key, CBC-PAD: length query, BUFFER_TOO_SMALL, success ---- */
  CK_ATTRIBUTE aes_t[] = {{CKA_CLASS, &secret, sizeof secret}, {CKA_KEY_TYPE, &aes, sizeof aes},
                          {CKA_VALUE_LEN, &len32, sizeof len32}, {CKA_TOKEN, &no, 1},
                          {CKA_ENCRYPT, &yes, 1}, {CKA_DECRYPT, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                          {CKA_LABEL, "aes-test", 8}};
  CK_MECHANISM kg = {CKM_AES_KEY_GEN, NULL, 0};
  CK_OBJECT_HANDLE aes_key = 0;
  RV(f->C_GenerateKey(s, &kg, aes_t, 8, &aes_key), CKR_OK);
  unsigned char iv[16] = "0123456789abcdef", data[40], ct[64], pt[64];
  memset(data, 'x', sizeof data);
  CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
  RV(f->C_EncryptInit(s, &cbc, aes_key), CKR_OK);
  CK_ULONG ctl = 0;
  RV(f->C_Encrypt(s, data, sizeof data, NULL, &ctl), CKR_OK);
  check(ctl == 48, "CBC-PAD length query: %lu", (unsigned long)ctl);
  ctl = 8;
  RV(f->C_Encrypt(s, data, sizeof data, ct, &ctl), CKR_BUFFER_TOO_SMALL);
  check(ctl == 48, "BUFFER_TOO_SMALL gives the length: %lu", (unsigned long)ctl);
  ctl = sizeof ct;
  RV(f->C_Encrypt(s, data, sizeof data, ct, &ctl), CKR_OK); /* the operation stayed active */
  check(ctl == 48, "ciphertext length %lu", (unsigned long)ctl);
  RV(f->C_Encrypt(s, data, sizeof data, ct, &ctl), CKR_OPERATION_NOT_INITIALIZED);
  RV(f->C_DecryptInit(s, &cbc, aes_key), CKR_OK);
  CK_ULONG ptl = sizeof pt;
  RV(f->C_Decrypt(s, ct, 48, pt, &ptl), CKR_OK);
  check(ptl == sizeof data && !memcmp(pt, data, sizeof data), "CBC-PAD round trip");

  /* ---- AES-GCM: a structured parameter; a wrong size is refused locally ---- */
  CK_GCM_PARAMS gcm = {iv, 12, 96, (CK_BYTE_PTR) "aad", 3, 128};
  CK_MECHANISM gm = {CKM_AES_GCM, &gcm, sizeof gcm - 1};
  RV(f->C_EncryptInit(s, &gm, aes_key), CKR_MECHANISM_PARAM_INVALID);
  gm.ulParameterLen = sizeof gcm;
  RV(f->C_EncryptInit(s, &gm, aes_key), CKR_OK);
  ctl = sizeof ct;
  RV(f->C_Encrypt(s, data, 16, ct, &ctl), CKR_OK);
  check(ctl == 32, "GCM ciphertext+tag %lu", (unsigned long)ctl);
  RV(f->C_DecryptInit(s, &gm, aes_key), CKR_OK);
  ptl = sizeof pt;
  RV(f->C_Decrypt(s, ct, ctl, pt, &ptl), CKR_OK);
  check(ptl == 16 && !memcmp(pt, data, 16), "GCM round trip");

  /* ---- RSA-2048 key pair, SHA256-RSA-PKCS ---- */
  CK_ULONG bits = 2048;
  CK_BYTE e[] = {1, 0, 1};
  CK_ATTRIBUTE pub_t[] = {{CKA_TOKEN, &no, 1}, {CKA_VERIFY, &yes, 1}, {CKA_MODULUS_BITS, &bits, sizeof bits},
                          {CKA_PUBLIC_EXPONENT, e, 3}, {CKA_LABEL, "rsa-test", 8}};
  CK_ATTRIBUTE priv_t[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                           {CKA_PRIVATE, &yes, 1}, {CKA_LABEL, "rsa-test", 8}};
  CK_MECHANISM rkg = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
  CK_OBJECT_HANDLE rpub = 0, rpriv = 0;
  RV(f->C_GenerateKeyPair(s, &rkg, pub_t, 5, priv_t, 5, &rpub, &rpriv), CKR_OK);
  CK_MECHANISM rs = {CKM_SHA256_RSA_PKCS, NULL, 0};
  unsigned char sig[512];
  CK_ULONG sl = 0;
  RV(f->C_SignInit(s, &rs, rpriv), CKR_OK);
  RV(f->C_Sign(s, (CK_BYTE_PTR) "hello", 5, NULL, &sl), CKR_OK);
  check(sl == 256, "RSA signature length query %lu", (unsigned long)sl);
  RV(f->C_Sign(s, (CK_BYTE_PTR) "hello", 5, sig, &sl), CKR_OK);
  RV(f->C_VerifyInit(s, &rs, rpub), CKR_OK);
  RV(f->C_Verify(s, (CK_BYTE_PTR) "hello", 5, sig, sl), CKR_OK);
  sig[10] ^= 1;
  RV(f->C_VerifyInit(s, &rs, rpub), CKR_OK);
  RV(f->C_Verify(s, (CK_BYTE_PTR) "hello", 5, sig, sl), CKR_SIGNATURE_INVALID);

  /* ---- EC P-256 key pair, ECDSA ---- */
  CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  CK_ATTRIBUTE ecpub_t[] = {{CKA_TOKEN, &no, 1}, {CKA_VERIFY, &yes, 1}, {CKA_EC_PARAMS, p256, sizeof p256},
                            {CKA_LABEL, "ec-test", 7}};
  CK_ATTRIBUTE ecpriv_t[] = {{CKA_TOKEN, &no, 1}, {CKA_SIGN, &yes, 1}, {CKA_SENSITIVE, &yes, 1},
                             {CKA_LABEL, "ec-test", 7}};
  CK_MECHANISM ekg = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
  CK_OBJECT_HANDLE epub = 0, epriv = 0;
  RV(f->C_GenerateKeyPair(s, &ekg, ecpub_t, 4, ecpriv_t, 4, &epub, &epriv), CKR_OK);
  CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
  unsigned char hash[32];
  memset(hash, 0x5a, sizeof hash);
  sl = sizeof sig;
  RV(f->C_SignInit(s, &ecdsa, epriv), CKR_OK);
  RV(f->C_Sign(s, hash, 32, sig, &sl), CKR_OK);
  check(sl == 64, "ECDSA P-256 signature length %lu", (unsigned long)sl);
  RV(f->C_VerifyInit(s, &ecdsa, epub), CKR_OK);
  RV(f->C_Verify(s, hash, 32, sig, sl), CKR_OK);

  /* ---- C_GetAttributeValue: lengths, values, sensitive, too small ---- */
  {
    CK_OBJECT_CLASS cls = 0;
    CK_BBOOL sign = 0;
    unsigned char small[10];
    CK_ATTRIBUTE q[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_MODULUS, NULL, 0}, {CKA_PRIVATE_EXPONENT, small, sizeof small},
                        {CKA_SIGN, &sign, 1}, {CKA_KEY_TYPE, NULL, 0}, {CKA_LABEL, NULL, 0}};
    RV(f->C_GetAttributeValue(s, rpriv, q, 6), CKR_ATTRIBUTE_SENSITIVE);
    check(q[0].ulValueLen == sizeof cls && cls == CKO_PRIVATE_KEY, "CKA_CLASS value");
    check(q[1].ulValueLen == 256, "CKA_MODULUS length %lu", (unsigned long)q[1].ulValueLen);
    check(q[2].ulValueLen == CK_UNAVAILABLE_INFORMATION, "CKA_PRIVATE_EXPONENT sensitive");
    check(q[3].ulValueLen == 1 && sign == CK_TRUE, "CKA_SIGN value");
    check(q[4].ulValueLen == sizeof(CK_ULONG), "CKA_KEY_TYPE length in host units %lu", (unsigned long)q[4].ulValueLen);
    check(q[5].ulValueLen == 8, "CKA_LABEL length %lu", (unsigned long)q[5].ulValueLen);
    unsigned char mod[256];
    CK_ATTRIBUTE q2[] = {{CKA_MODULUS, small, sizeof small}, {CKA_LABEL, mod, sizeof mod}};
    RV(f->C_GetAttributeValue(s, rpub, q2, 2), CKR_BUFFER_TOO_SMALL);
    check(q2[0].ulValueLen == CK_UNAVAILABLE_INFORMATION, "too small buffer -> CK_UNAVAILABLE_INFORMATION");
    check(q2[1].ulValueLen == 8 && !memcmp(mod, "rsa-test", 8), "the other attribute still delivered");
    CK_ATTRIBUTE q3[] = {{CKA_MODULUS, mod, sizeof mod}, {0x80001234UL, small, sizeof small}};
    RV(f->C_GetAttributeValue(s, rpub, q3, 2), CKR_ATTRIBUTE_TYPE_INVALID);
    check(q3[0].ulValueLen == 256 && q3[1].ulValueLen == CK_UNAVAILABLE_INFORMATION, "type invalid");
  }

  /* ---- find, destroy ---- */
  {
    CK_ATTRIBUTE ft[] = {{CKA_LABEL, "rsa-test", 8}};
    CK_OBJECT_HANDLE found[10];
    CK_ULONG nf = 0;
    RV(f->C_FindObjectsInit(s, ft, 1), CKR_OK);
    RV(f->C_FindObjects(s, found, 10, &nf), CKR_OK);
    RV(f->C_FindObjectsFinal(s), CKR_OK);
    check(nf == 2, "found %lu rsa-test objects", (unsigned long)nf);
    RV(f->C_DestroyObject(s, epub), CKR_OK);
    RV(f->C_DestroyObject(s, epriv), CKR_OK);
    CK_ATTRIBUTE ft2[] = {{CKA_LABEL, "ec-test", 7}};
    RV(f->C_FindObjectsInit(s, ft2, 1), CKR_OK);
    nf = 99;
    RV(f->C_FindObjects(s, found, 10, &nf), CKR_OK);
    RV(f->C_FindObjectsFinal(s), CKR_OK);
    check(nf == 0, "destroyed objects are gone (%lu)", (unsigned long)nf);
    CK_ULONG size = 0;
    RV(f->C_GetObjectSize(s, epub, &size), CKR_OBJECT_HANDLE_INVALID);
  }

  /* ---- local argument checks ---- */
  {
    CK_ATTRIBUTE *big = calloc(1025, sizeof *big);
    CK_OBJECT_HANDLE o;
    RV(f->C_CreateObject(s, big, 1025, &o), CKR_ARGUMENTS_BAD);
    free(big);
    RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, NULL), CKR_ARGUMENTS_BAD);
    RV(f->C_Encrypt(s, NULL, 5, ct, &ctl), CKR_ARGUMENTS_BAD);
    unsigned char r[16];
    RV(f->C_GenerateRandom(s, r, 2u << 20), CKR_ARGUMENTS_BAD);
  }

  /* ---- passed through ---- */
  {
    CK_SLOT_ID ev;
    CK_RV rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &ev, NULL);
    check(rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_NO_EVENT, "C_WaitForSlotEvent passes the module's rv (0x%lx)", (unsigned long)rv);
    rv = f->C_GetFunctionStatus(s);
    check(rv == CKR_FUNCTION_NOT_PARALLEL, "C_GetFunctionStatus passes the module's rv (0x%lx)", (unsigned long)rv);
  }

  /* ---- 8 threads x 200 calls ---- */
  {
    pthread_t th[8];
    thread_arg ta[8];
    char *save = NULL, *tok = strtok_r(digests, ",", &save);
    for (int i = 0; i < 8; i++) {
      memset(&ta[i], 0, sizeof ta[i]);
      ta[i].idx = i;
      ta[i].slot = slot;
      snprintf(ta[i].want, sizeof ta[i].want, "%s", tok ? tok : "");
      tok = strtok_r(NULL, ",", &save);
      pthread_create(&th[i], NULL, worker, &ta[i]);
    }
    for (int i = 0; i < 8; i++) {
      pthread_join(th[i], NULL);
      check(ta[i].ok_random == 100 && ta[i].ok_digest == 100, "thread %d: %d/100 random, %d/100 digests right", i,
            ta[i].ok_random, ta[i].ok_digest);
    }
  }

  /* ---- fork: the child is not initialized until its own C_Initialize, which
   * opens a connection of its own; then both processes share the port, each
   * round trip under the device's flock ---- */
  {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      int bad = 0;
      CK_INFO ci;
      if (f->C_GetInfo(&ci) != CKR_CRYPTOKI_NOT_INITIALIZED) bad |= 1;
      if (f->C_Finalize(NULL) != CKR_CRYPTOKI_NOT_INITIALIZED) bad |= 2;
      if (f->C_Initialize(NULL) != CKR_OK) bad |= 4;
      CK_SESSION_HANDLE cs;
      if (f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &cs) != CKR_OK) bad |= 8;
      for (int i = 0; i < 100; i++) {
        unsigned char r[16];
        if (f->C_GenerateRandom(cs, r, sizeof r) != CKR_OK) bad |= 16;
      }
      if (f->C_Finalize(NULL) != CKR_OK) bad |= 32;
      _exit(bad);
    }
    int ok = 0;
    for (int i = 0; i < 100; i++) ok += f->C_GetInfo(&info) == CKR_OK; /* meanwhile, in the parent */
    check(ok == 100, "parent calls while the child uses the port: %d/100", ok);
    int st = 0;
    waitpid(pid, &st, 0);
    check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "fork child: status 0x%x", st);
    RV(f->C_GetInfo(&info), CKR_OK); /* the parent's connection is undisturbed */
    CK_SESSION_INFO si2;
    RV(f->C_GetSessionInfo(s, &si2), CKR_OK);
  }

  /* ---- finalize ---- */
  RV(f->C_Logout(s), CKR_OK);
  RV(f->C_CloseSession(s), CKR_OK);
  RV(f->C_Finalize(NULL), CKR_OK);
  RV(f->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
  RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_CRYPTOKI_NOT_INITIALIZED);
  RV(f->C_Initialize(NULL), CKR_OK); /* and again */
  RV(f->C_GetInfo(&info), CKR_OK);
  RV(f->C_Finalize(NULL), CKR_OK);
  dlclose(h);

  if (failures) {
    printf("test_module: %d of %d checks failed\n", failures, checks);
    return 1;
  }
  printf("test_module: %d checks passed\n", checks);
  return 0;
}
