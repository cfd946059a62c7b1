/* fuzz_structured.c: a structure-aware libFuzzer harness for the executor's
 * request path, aimed at one property: nothing a guest sends ever reaches
 * the module as a pointer.
 *
 * The input is not a message but a stream of choices from which a
 * well-formed CALL payload is built with the call table: a call, then for
 * each argument a value of its kind, where mechanisms are drawn from the
 * table (and beyond it) with parameters in every form (none, nil, raw bytes,
 * an integer, a structure's fields right or wrong), and templates hold
 * attributes of every kind (including the CK_ATTRIBUTE-array ones) with
 * values in every form, nested. So the fuzzer spends its time on the forms
 * a hostile guest would try, not on MessagePack syntax.
 *
 * The fake module (pb_invoke) then does what a real module does with what
 * the executor hands it: it reads every mechanism parameter as the C
 * structure the mechanism takes, follows every pointer in it for its length,
 * and walks every template, following nested CK_ATTRIBUTE arrays. Under
 * AddressSanitizer any pointer that did not come from the executor's own
 * buffers (a guest's byte image of CK_GCM_PARAMS, say) is a crash.
 *
 * make fuzz runs it (FUZZ_TARGETS); built with clang -fsanitize=fuzzer,address,undefined. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"

/* ---- choices from the input ---- */
typedef struct {
  const uint8_t *p;
  size_t n;
} src;

static unsigned pick(src *s, unsigned n) { /* 0 .. n-1 */
  if (n <= 1) return 0;
  unsigned v = 0;
  for (int i = 0; i < 2 && s->n; i++, s->p++, s->n--) v = (v << 8) | *s->p;
  return v % n;
}
static uint64_t pick64(src *s) {
  uint64_t v = 0;
  for (int i = 0; i < 8 && s->n; i++, s->p++, s->n--) v = (v << 8) | *s->p;
  return v;
}
static void pack_random_bin(src *s, msgpack_packer *pk, unsigned max) {
  unsigned n = pick(s, max + 1);
  msgpack_pack_bin(pk, n);
  for (unsigned i = 0; i < n; i++) {
    unsigned char b = (unsigned char)pick(s, 256);
    msgpack_pack_bin_body(pk, &b, 1);
  }
}

/* mechanisms worth trying: those with structured parameters, plain-bytes and
 * CK_ULONG ones, some without, and one no table lists */
static const CK_MECHANISM_TYPE MECHS[] = {
    CKM_AES_GCM, CKM_AES_CCM, CKM_AES_CTR, CKM_RSA_PKCS_OAEP, CKM_RSA_PKCS_PSS, CKM_ECDH1_DERIVE,
    CKM_ECDH1_COFACTOR_DERIVE, CKM_AES_ECB_ENCRYPT_DATA, CKM_AES_CBC_ENCRYPT_DATA, CKM_DES_CBC_ENCRYPT_DATA,
    CKM_CONCATENATE_BASE_AND_DATA, CKM_RC5_CBC, CKM_ECDH_AES_KEY_WRAP, CKM_DSA_PROBABLISTIC_PARAMETER_GEN,
    CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_KEY_WRAP, CKM_SHA256_HMAC_GENERAL, CKM_CONCATENATE_BASE_AND_KEY,
    CKM_SHA256, CKM_ECDSA, CKM_RSA_PKCS, CKM_SSL3_MASTER_KEY_DERIVE, CKM_TLS12_KEY_AND_MAC_DERIVE,
    CKM_PKCS5_PBKD2, CKM_X9_42_DH_DERIVE, CKM_KEY_WRAP_SET_OAEP, CKM_RSA_AES_KEY_WRAP, 0x80001234UL,
};
static const CK_ATTRIBUTE_TYPE ATTRS[] = {
    CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_LABEL, CKA_VALUE, CKA_KEY_TYPE, CKA_VALUE_LEN, CKA_START_DATE,
    CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE, CKA_DERIVE_TEMPLATE, CKA_ALLOWED_MECHANISMS, CKA_EC_PARAMS,
    0x80000001UL,
};
#define N(a) (sizeof(a) / sizeof((a)[0]))

static void pack_struct_fields(src *s, msgpack_packer *pk, const pb_struct_desc *d, int right) {
  unsigned n = right ? d->nfields : pick(s, 6);
  msgpack_pack_array(pk, n);
  for (unsigned i = 0; i < n; i++) {
    pb_field_kind k = right && i < d->nfields ? d->fields[i].kind : (pb_field_kind)pick(s, 5);
    switch (k) {
    case PB_F_ULONG: msgpack_pack_uint64(pk, pick(s, 3) ? pick(s, 300) : pick64(s)); break;
    case PB_F_BYTES: if (pick(s, 4)) pack_random_bin(s, pk, 48); else msgpack_pack_nil(pk); break;
    case PB_F_FIXED:
    case PB_F_CHAR: {
      unsigned size = right && i < d->nfields ? (unsigned)d->fields[i].size : pick(s, 20);
      msgpack_pack_bin(pk, size);
      for (unsigned j = 0; j < size; j++) msgpack_pack_bin_body(pk, "\x11", 1);
      break;
    }
    case PB_F_VERSION: msgpack_pack_array(pk, 2); msgpack_pack_uint8(pk, 1); msgpack_pack_uint8(pk, 2); break;
    }
  }
}

static void pack_mechanism(src *s, msgpack_packer *pk) {
  CK_MECHANISM_TYPE type = pick(s, 8) ? MECHS[pick(s, N(MECHS))] : pick64(s);
  unsigned form = pick(s, 7);
  if (form == 0) { msgpack_pack_array(pk, 1); msgpack_pack_uint64(pk, type); return; }
  msgpack_pack_array(pk, 2);
  msgpack_pack_uint64(pk, type);
  const pb_struct_desc *d = NULL;
  pb_param_form f = pb_mech_param_form(type, &d);
  switch (form) {
  case 1: msgpack_pack_nil(pk); break;
  case 2: pack_random_bin(s, pk, 96); break; /* a raw image, e.g. of a structure with pointers */
  case 3: msgpack_pack_uint64(pk, pick64(s)); break;
  case 4: if (f == PB_PF_STRUCT) pack_struct_fields(s, pk, d, 1); else pack_random_bin(s, pk, 16); break;
  case 5: pack_struct_fields(s, pk, d ? d : &pb_struct_mechinfo, 0); break;
  default: msgpack_pack_bin(pk, 0); break;
  }
}

static void pack_template(src *s, msgpack_packer *pk, int depth) {
  if (depth == 0 && !pick(s, 10)) { msgpack_pack_nil(pk); return; }
  unsigned n = pick(s, 6);
  msgpack_pack_array(pk, n);
  for (unsigned i = 0; i < n; i++) {
    msgpack_pack_array(pk, 2);
    msgpack_pack_uint64(pk, pick(s, 10) ? ATTRS[pick(s, N(ATTRS))] : pick64(s));
    switch (pick(s, 7)) {
    case 0: msgpack_pack_nil(pk); break;
    case 1: pick(s, 2) ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
    case 2: msgpack_pack_uint64(pk, pick64(s)); break;
    case 3: pack_random_bin(s, pk, 80); break; /* e.g. a raw CK_ATTRIBUTE array */
    case 4: {
      unsigned m = pick(s, 4);
      msgpack_pack_array(pk, m);
      for (unsigned j = 0; j < m; j++) msgpack_pack_uint64(pk, pick(s, 5000));
      break;
    }
    default:
      if (depth < 2) pack_template(s, pk, depth + 1);
      else msgpack_pack_nil(pk);
      break;
    }
  }
}

static void pack_arg(src *s, msgpack_packer *pk, pb_kind k) {
  switch (k) {
  case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT: msgpack_pack_uint64(pk, pick(s, 8)); break;
  case PB_K_BOOL: msgpack_pack_true(pk); break;
  case PB_K_BYTES: if (pick(s, 5)) pack_random_bin(s, pk, 32); else msgpack_pack_nil(pk); break;
  case PB_K_LABEL: msgpack_pack_bin(pk, 32); msgpack_pack_bin_body(pk, "                                ", 32); break;
  case PB_K_MECHANISM: pack_mechanism(s, pk); break;
  case PB_K_TEMPLATE: pack_template(s, pk, 0); break;
  case PB_K_ATTRQUERY: {
    unsigned n = pick(s, 4);
    msgpack_pack_array(pk, n);
    for (unsigned i = 0; i < n; i++) {
      msgpack_pack_array(pk, 2);
      msgpack_pack_uint64(pk, ATTRS[pick(s, N(ATTRS))]);
      pick(s, 2) ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    }
    break;
  }
  case PB_K_OUTBYTES: if (pick(s, 3)) msgpack_pack_uint64(pk, pick(s, 300)); else msgpack_pack_nil(pk); break;
  case PB_K_OUTLIST: if (pick(s, 2)) msgpack_pack_true(pk); else msgpack_pack_uint64(pk, pick(s, 8)); break;
  case PB_K_OUTFIXED: if (pick(s, 4)) msgpack_pack_uint64(pk, pick(s, 64)); else msgpack_pack_nil(pk); break;
  default: msgpack_pack_nil(pk); break;
  }
}

/* ---- the fake module: follows what it is given, as a module would ---- */
static volatile unsigned char sink;

static void touch(const void *p, CK_ULONG n) {
  if (!p) return;
  const volatile unsigned char *b = p;
  for (CK_ULONG i = 0; i < n; i++) sink ^= b[i];
}

static void follow_template(const CK_ATTRIBUTE *t, CK_ULONG n, int depth) {
  if (!t) return;
  for (CK_ULONG i = 0; i < n; i++) {
    const CK_ATTRIBUTE *a = &t[i];
    if (!a->pValue || a->ulValueLen == CK_UNAVAILABLE_INFORMATION) continue;
    touch(a->pValue, a->ulValueLen);
    /* a module reads a CK_ATTRIBUTE-array attribute as an array of attributes */
    if (depth < 2 && pb_attr_kind_of(a->type) == PB_AK_TEMPLATE && a->ulValueLen % sizeof(CK_ATTRIBUTE) == 0)
      follow_template(a->pValue, a->ulValueLen / sizeof(CK_ATTRIBUTE), depth + 1);
  }
}

static void follow_mechanism(const CK_MECHANISM *m) {
  if (!m->pParameter) return;
  touch(m->pParameter, m->ulParameterLen);
  const pb_struct_desc *d = NULL;
  /* a module takes the parameter for the structure its mechanism uses when
   * the length fits, and follows the pointers in it */
  if (pb_mech_param_form(m->mechanism, &d) != PB_PF_STRUCT || m->ulParameterLen != d->size) return;
  for (unsigned i = 0; i < d->nfields; i++) {
    const pb_field *f = &d->fields[i];
    if (f->kind != PB_F_BYTES) continue;
    void *p;
    CK_ULONG len;
    memcpy(&p, (const char *)m->pParameter + f->off, sizeof p);
    memcpy(&len, (const char *)m->pParameter + f->off2, sizeof len);
    touch(p, len);
  }
}

static unsigned g_call_id;

CK_RV pb_invoke(CK_FUNCTION_LIST_PTR fl, unsigned id, pb_slot *a) {
  (void)fl;
  const pb_call *c = pb_call_by_id(id);
  if (!c) return CKR_FUNCTION_NOT_SUPPORTED;
  g_call_id = id;
  for (unsigned i = 0; i < c->nargs; i++) {
    pb_slot *s = &a[c->args[i].slot];
    switch (c->args[i].kind) {
    case PB_K_MECHANISM: follow_mechanism(&s->mech); break;
    case PB_K_TEMPLATE: follow_template(s->tmpl, s->count, 0); break;
    case PB_K_BYTES: touch(s->p, s->len); break;
    default: break;
    }
  }
  return CKR_OK;
}

int pb_has_function(CK_FUNCTION_LIST_PTR fl, unsigned id) {
  (void)fl;
  return id != 4;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  src s = {data, size};
  const pb_call *c = pb_call_by_id(1 + pick(&s, PB_NCALLS));
  msgpack_sbuffer in;
  msgpack_sbuffer_init(&in);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &in, msgpack_sbuffer_write);
  msgpack_pack_array(&pk, 1 + c->nargs);
  msgpack_pack_uint64(&pk, c->id);
  for (unsigned i = 0; i < c->nargs; i++) pack_arg(&s, &pk, c->args[i].kind);
  msgpack_sbuffer out;
  msgpack_sbuffer_init(&out);
  pb_exec_handle((const unsigned char *)in.data, in.size, &out);
  msgpack_sbuffer_destroy(&out);
  msgpack_sbuffer_destroy(&in);
  return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  return 0;
}
