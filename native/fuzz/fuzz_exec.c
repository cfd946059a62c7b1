/* fuzz_exec.c: libFuzzer harness for the executor's request path.
 *
 * Each input is one message payload of the executor link (PROTOCOL.md
 * section 9), fed to pb_exec_handle() -- the function p11bridge-exec runs for
 * every message -- with the prescan, msgpack-c, the kind decoders, the
 * procedures (attrquery, outlist=true), and the result packers. Instead of a
 * real module, pb_invoke() (normally generated: build/gen/exec_invoke.c) is a
 * fake that returns CKR_OK, or a partial code where the caller's buffer is too
 * small, and fills every output as a module would.
 *
 * Built with clang -fsanitize=fuzzer,address,undefined (make fuzz), or with
 * fuzz/replay_main.c as a plain program that replays files (make
 * check-fuzz-regressions). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"

static unsigned g_variant; /* from the input: how the fake module answers */

int pb_has_function(CK_FUNCTION_LIST_PTR fl, unsigned id) {
  (void)fl;
  return id != 4 && (g_variant % 17) != (id % 17);
}

static CK_ULONG want_len(CK_ATTRIBUTE_TYPE type) {
  switch (pb_attr_kind_of(type)) {
  case PB_AK_BOOL: return 1;
  case PB_AK_ULONG: return sizeof(CK_ULONG);
  case PB_AK_ULONGLIST: return 3 * sizeof(CK_ULONG);
  case PB_AK_TEMPLATE: return 2 * sizeof(CK_ATTRIBUTE);
  default: return (CK_ULONG)(type % 37);
  }
}

static void fill(void *p, CK_ULONG n, unsigned char b) {
  if (p && n) memset(p, b, n);
}

static CK_RV fake_attrs(CK_ATTRIBUTE *t, CK_ULONG n) {
  CK_RV rv = CKR_OK;
  for (CK_ULONG i = 0; i < n; i++) {
    CK_ATTRIBUTE *e = &t[i];
    if ((e->type + g_variant) % 11 == 0) { /* sensitive */
      e->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_ATTRIBUTE_SENSITIVE;
      continue;
    }
    CK_ULONG need = want_len(e->type);
    if (!e->pValue) {
      e->ulValueLen = need;
      continue;
    }
    if (e->ulValueLen < need) {
      e->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      if (rv == CKR_OK) rv = CKR_BUFFER_TOO_SMALL;
      continue;
    }
    switch (pb_attr_kind_of(e->type)) {
    case PB_AK_BOOL: *(CK_BBOOL *)e->pValue = CK_TRUE; break;
    case PB_AK_ULONG: { CK_ULONG v = g_variant; memcpy(e->pValue, &v, sizeof v); break; }
    case PB_AK_ULONGLIST: { CK_ULONG v[3] = {1, 2, ~(CK_ULONG)0}; memcpy(e->pValue, v, sizeof v); break; }
    case PB_AK_TEMPLATE: {
      CK_ATTRIBUTE *nt = e->pValue;
      static const CK_ATTRIBUTE_TYPE types[2] = {CKA_CLASS, CKA_LABEL};
      for (int k = 0; k < 2; k++) {
        nt[k].type = types[k];
        CK_ULONG nl = k == 0 ? sizeof(CK_ULONG) : 5;
        if (nt[k].pValue && nt[k].ulValueLen >= nl) fill(nt[k].pValue, nl, 0x4c);
        nt[k].ulValueLen = nl;
      }
      break;
    }
    default: fill(e->pValue, need, 0x42); break;
    }
    e->ulValueLen = need;
  }
  return rv;
}

CK_RV pb_invoke(CK_FUNCTION_LIST_PTR fl, unsigned id, pb_slot *a) {
  (void)fl;
  const pb_call *c = pb_call_by_id(id);
  if (!c) return CKR_GENERAL_ERROR;
  CK_RV rv = CKR_OK;
  /* how much output the fake produces: small, or (variant) beyond any limit */
  CK_ULONG need = (g_variant & 8) ? (CK_ULONG)pb_exec_max_payload + 100 : 24 + g_variant % 40;
  for (unsigned i = 0; i < c->nargs; i++)
    if (c->args[i].kind == PB_K_ATTRQUERY) rv = fake_attrs(a[c->args[i].slot].tmpl, a[c->args[i].slot].count);
  for (unsigned i = 0; i < c->nres; i++) {
    const pb_param *p = &c->res[i];
    pb_slot *s = &a[p->slot];
    switch (p->kind) {
    case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT:
      s->ul = 0x1000 + i;
      break;
    case PB_K_OUTBYTES:
      if (s->p && s->len >= need) fill(s->p, need, 0x5a);
      else if (s->p) rv = CKR_BUFFER_TOO_SMALL;
      s->len = need;
      break;
    case PB_K_OUTLIST: {
      CK_ULONG n = need / 8;
      if (s->ulp && s->count >= n) {
        for (CK_ULONG k = 0; k < n; k++) s->ulp[k] = k;
      } else if (s->ulp) {
        rv = CKR_BUFFER_TOO_SMALL;
      }
      s->count = n;
      break;
    }
    case PB_K_OBJECTLIST: {
      CK_ULONG n = s->cap < 3 ? s->cap : 3;
      for (CK_ULONG k = 0; k < n; k++) s->ulp[k] = 100 + k;
      s->count = n;
      break;
    }
    case PB_K_OUTFIXED:
      fill(s->p, s->len, 0x33);
      break;
    case PB_K_INFO: case PB_K_SLOTINFO: case PB_K_TOKENINFO: case PB_K_SESSIONINFO: case PB_K_MECHINFO:
      memset(&s->st, 0x20, sizeof s->st);
      break;
    default:
      break;
    }
  }
  if (rv == CKR_OK && (g_variant & 0x30) == 0x30) rv = CKR_FUNCTION_FAILED;
  return rv;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  static CK_FUNCTION_LIST fake; /* all entries NULL: the generated invokers are replaced here */
  fake.version.major = 2;
  fake.version.minor = 40;
  pb_exec_fl = &fake;
  pb_exec_max_payload = 65536; /* the same code paths as 1 MiB, with smaller buffers */
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!pb_exec_fl) LLVMFuzzerInitialize(NULL, NULL);
  g_variant = 0;
  for (size_t i = 0; i < size; i++) g_variant = g_variant * 31 + data[i];
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  pb_exec_handle(data, size, &sb);
  /* the answer is always one MessagePack value */
  pb_err err;
  if (sb.size == 0 || pb_prescan((const unsigned char *)sb.data, sb.size, &err) != 0) abort();
  msgpack_sbuffer_destroy(&sb);
  return 0;
}
