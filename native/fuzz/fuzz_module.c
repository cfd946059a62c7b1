/* fuzz_module.c: libFuzzer harness for libp11bridge's receive path.
 *
 * Input: byte 0 chooses the call (id = byte % 68 + 1), byte 1 the shape of
 * the caller's arguments (length query or buffer, capacities, payload
 * limit); the rest is the line input, fed in chunks through the module's
 * deframer (COBS, header, CRC, size limit). Every frame that comes out is
 * decoded as the module would: RESULT with pb_client_decode() into freshly
 * set-up caller memory of exact sizes (so ASan sees any write past a
 * caller's buffer), ERROR with pb_unpack_error(), HELLO_OK with
 * pb_unpack_hello_ok().
 *
 * Built with clang -fsanitize=fuzzer,address,undefined (make fuzz), or with
 * fuzz/replay_main.c as a plain program (make check-fuzz-regressions). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "frame.h"

typedef struct {
  const pb_call *c;
  unsigned shape;
} ctx_t;

static CK_MECHANISM g_mech = {CKM_SHA256, NULL, 0};
static unsigned char g_label[32];

#define NQ 6
static const CK_ATTRIBUTE_TYPE qtypes[NQ] = {CKA_LABEL, CKA_CLASS, CKA_TOKEN, CKA_WRAP_TEMPLATE,
                                             CKA_ALLOWED_MECHANISMS, CKA_MODULUS};

typedef struct {
  pb_cslot a[PB_MAX_SLOTS];
  CK_ULONG lens[PB_MAX_SLOTS];
  CK_ULONG uls[PB_MAX_SLOTS];
  void *allocs[64];
  unsigned nalloc;
} caller_t;

static void *xalloc(caller_t *k, size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  memset(p, 0, n ? n : 1);
  if (k->nalloc < sizeof k->allocs / sizeof k->allocs[0]) k->allocs[k->nalloc++] = p;
  else abort();
  return p;
}

static size_t struct_size(pb_kind kind) {
  switch (kind) {
  case PB_K_INFO: return sizeof(CK_INFO);
  case PB_K_SLOTINFO: return sizeof(CK_SLOT_INFO);
  case PB_K_TOKENINFO: return sizeof(CK_TOKEN_INFO);
  case PB_K_SESSIONINFO: return sizeof(CK_SESSION_INFO);
  case PB_K_MECHINFO: return sizeof(CK_MECHANISM_INFO);
  default: return 0;
  }
}

/* The caller's arguments and output memory, as a PKCS#11 application would
 * pass them; sizes chosen by the shape byte. */
static void setup(caller_t *k, const pb_call *c, unsigned shape) {
  memset(k, 0, sizeof *k);
  CK_ULONG cap = (shape & 0x0c) >> 2;      /* 0..3 */
  cap = cap == 3 ? 300 : cap * 8;          /* 0, 8, 16, 300 */
  for (unsigned i = 0; i < c->nargs; i++) {
    pb_cslot *s = &k->a[c->args[i].slot];
    switch (c->args[i].kind) {
    case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT:
      s->ul = (shape >> 4) & 7; /* also C_FindObjects' maxObjectCount */
      break;
    case PB_K_BOOL: s->b = CK_TRUE; break;
    case PB_K_BYTES: s->p = (void *)"abc"; s->len = 3; break;
    case PB_K_LABEL: s->p = g_label; break;
    case PB_K_MECHANISM: s->mech = &g_mech; break;
    case PB_K_TEMPLATE: s->tmpl = NULL; s->count = 0; break;
    case PB_K_ATTRQUERY: {
      s->count = NQ;
      s->tmpl = xalloc(k, NQ * sizeof(CK_ATTRIBUTE));
      for (unsigned q = 0; q < NQ; q++) {
        CK_ATTRIBUTE *e = &s->tmpl[q];
        e->type = qtypes[q];
        if ((shape >> q) & 1) continue; /* length query */
        if (e->type == CKA_WRAP_TEMPLATE) {
          CK_ATTRIBUTE *nt = xalloc(k, 2 * sizeof(CK_ATTRIBUTE));
          nt[0].type = CKA_CLASS;
          nt[0].pValue = xalloc(k, sizeof(CK_ULONG));
          nt[0].ulValueLen = sizeof(CK_ULONG);
          nt[1].type = CKA_LABEL;
          nt[1].pValue = xalloc(k, 8);
          nt[1].ulValueLen = 8;
          e->pValue = nt;
          e->ulValueLen = 2 * sizeof(CK_ATTRIBUTE);
        } else {
          CK_ULONG n = e->type == CKA_TOKEN ? 1 : e->type == CKA_CLASS ? sizeof(CK_ULONG) : cap;
          e->pValue = xalloc(k, n);
          e->ulValueLen = n;
        }
      }
      break;
    }
    case PB_K_OUTBYTES:
      s->lenp = &k->lens[c->args[i].slot];
      *s->lenp = cap;
      if (!(shape & 1)) s->p = xalloc(k, cap);
      break;
    case PB_K_OUTLIST:
      s->lenp = &k->lens[c->args[i].slot];
      *s->lenp = cap;
      if (shape & 0x80) {
        s->mode = PB_CS_AUTO;
        s->ulp = xalloc(k, cap * sizeof(CK_ULONG));
      } else if (!(shape & 2)) {
        s->ulp = xalloc(k, cap * sizeof(CK_ULONG));
      }
      break;
    case PB_K_OUTFIXED:
      s->len = cap;
      s->p = xalloc(k, cap);
      break;
    default:
      break;
    }
  }
  for (unsigned i = 0; i < c->nres; i++) {
    const pb_param *p = &c->res[i];
    pb_cslot *s = &k->a[p->slot];
    if (p->slot < c->nargs) continue;
    switch (p->kind) {
    case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT:
      s->ulp = &k->uls[p->slot];
      break;
    case PB_K_OBJECTLIST:
      s->lenp = &k->lens[p->slot];
      s->ulp = xalloc(k, k->a[p->aux].ul * sizeof(CK_ULONG));
      break;
    default:
      if (struct_size(p->kind)) s->out = xalloc(k, struct_size(p->kind));
      break;
    }
  }
}

static void teardown(caller_t *k) {
  for (unsigned i = 0; i < k->nalloc; i++) free(k->allocs[i]);
}

static void on_frame(const pb_frame *f, void *vctx) {
  ctx_t *x = vctx;
  pb_err err;
  if (f->type == PB_T_RESULT) {
    caller_t *k = malloc(sizeof *k);
    if (!k) abort();
    setup(k, x->c, x->shape);
    /* the module checks the caller's arguments before sending */
    if (pb_client_check(x->c, k->a, 1u << 20) == CKR_OK) {
      CK_RV rv;
      pb_client_decode(x->c, k->a, f->payload, f->len, &rv, &err);
    }
    teardown(k);
    free(k);
  } else if (f->type == PB_T_ERROR) {
    CK_RV rv;
    char msg[64];
    pb_unpack_error(f->payload, f->len, &rv, msg, sizeof msg, &err);
  } else if (f->type == PB_T_HELLO_OK) {
    pb_hello_ok *h = malloc(sizeof *h);
    if (!h) abort();
    pb_unpack_hello_ok(f->payload, f->len, h, &err);
    free(h);
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  ctx_t x = {pb_call_by_id(data[0] % PB_NCALLS + 1u), data[1]};
  if (!x.c) return 0;
  pb_deframer d;
  pb_deframer_init(&d, (data[1] & 0x40) ? 64 : 4096);
  /* in chunks, as reads deliver them */
  size_t off = 2, chunk = 1 + data[0] % 97;
  while (off < size) {
    size_t n = size - off < chunk ? size - off : chunk;
    if (pb_deframer_push(&d, data + off, n, on_frame, &x) != 0) abort();
    off += n;
  }
  pb_deframer_free(&d);
  return 0;
}
