/* exec_handle.c: the executor's request interpreter (PROTOCOL.md section 9),
 * split from exec_main.c so that the fuzz harness (fuzz/fuzz_exec.c) runs
 * exactly the code the executor runs.
 *
 * The per-call knowledge is generated (build/gen/): the call table
 * (pb_calls: argument/result kinds and slots, partial rvs) and the
 * invocation stubs (pb_invoke). This file is the generic interpreter:
 * decode each argument by kind into a slot, run the call (with the
 * multi-step procedures of attrquery and outlist=true), encode each result
 * by kind.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"

#define PB_OUTLIST_RETRIES 3

CK_C_INITIALIZE_ARGS pb_exec_init_args = {NULL_PTR, NULL_PTR, NULL_PTR, NULL_PTR, CKF_OS_LOCKING_OK, NULL_PTR};

CK_FUNCTION_LIST_PTR pb_exec_fl;
size_t pb_exec_max_payload = PB_DEFAULT_MAX_PAYLOAD;
int pb_exec_initialized; /* the app's C_Initialize succeeded, no C_Finalize since */
int pb_exec_debug;
char pb_exec_sandbox_report[256];

void pb_exec_dbg(const char *fmt, ...) {
  if (!pb_exec_debug) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("p11bridge-exec: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}
#define dbg pb_exec_dbg

/* ------------------------------------------------------------------ request */

typedef struct {
  const pb_call *call;
  pb_slot a[PB_MAX_SLOTS];
  pb_arena ar;
  pb_err err;
  /* attrquery procedure */
  CK_ULONG *lens1;     /* lengths from the first (NULL) call */
  CK_ATTRIBUTE *t2;    /* second-call template (wanted entries) */
  CK_ULONG *cap2;      /* allocated size of each t2 value */
  int *idx2;           /* query index -> t2 index, or -1 */
} req;

static int prefix_arg_error(req *q, unsigned i, const char *tail) {
  const pb_param *p = &q->call->args[i];
  char buf[sizeof q->err.msg];
  snprintf(buf, sizeof buf, "%.40s argument %u (%.40s): %.200s", q->call->name, i + 1, p->name, tail);
  memcpy(q->err.msg, buf, sizeof buf);
  q->err.rv = CKR_ARGUMENTS_BAD;
  return PB_MALFORMED;
}

static int alloc_fail(req *q) { return pb_fail_rv(&q->err, CKR_HOST_MEMORY); }

/* Decode argument i into its slot. */
static int decode_arg(req *q, unsigned i, const msgpack_object *o) {
  const pb_param *p = &q->call->args[i];
  pb_slot *s = &q->a[p->slot];
  pb_err sub;
  int r = PB_OK;
  switch (p->kind) {
  case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT:
    r = pb_unpack_ulong(o, &s->ul, &sub);
    break;
  case PB_K_BOOL:
    r = pb_unpack_bool(o, &s->b, &sub);
    break;
  case PB_K_BYTES:
    r = pb_unpack_bytes(o, &s->p, &s->len, &sub);
    break;
  case PB_K_LABEL:
    r = pb_unpack_fixed(o, 32, &s->p, &sub);
    break;
  case PB_K_MECHANISM:
    r = pb_unpack_mechanism(o, &s->mech, &q->ar, &sub);
    break;
  case PB_K_TEMPLATE:
    r = pb_unpack_template(o, &s->tmpl, &s->count, &q->ar, &sub);
    break;
  case PB_K_ATTRQUERY: {
    if (o->type == MSGPACK_OBJECT_NIL) { /* a NULL template */
      s->count = 0;
      s->tmpl = NULL;
      s->want = NULL;
      break;
    }
    if (o->type != MSGPACK_OBJECT_ARRAY) {
      r = pb_fail(&sub, "expected nil or an array of [type, want], got %s", pb_type_name(o));
      break;
    }
    uint32_t n = o->via.array.size;
    if (n > PB_MAX_TEMPLATE) {
      r = pb_fail(&sub, "template has %u attributes, limit %lu", (unsigned)n, PB_MAX_TEMPLATE);
      break;
    }
    s->count = n;
    s->tmpl = n ? pb_arena_alloc(&q->ar, (size_t)n * sizeof(CK_ATTRIBUTE)) : (CK_ATTRIBUTE *)(void *)pb_empty;
    s->want = pb_arena_alloc(&q->ar, n);
    if (!s->tmpl || !s->want) return alloc_fail(q);
    for (uint32_t k = 0; k < n && r == PB_OK; k++) {
      const msgpack_object *e = &o->via.array.ptr[k];
      pb_err e2;
      if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2) {
        r = pb_fail(&sub, "attribute %u: expected [type, want], got %s", (unsigned)k + 1,
                    e->type == MSGPACK_OBJECT_ARRAY ? "array of other length" : pb_type_name(e));
      } else if (pb_unpack_ulong(&e->via.array.ptr[0], &s->tmpl[k].type, &e2) != PB_OK) {
        r = pb_fail(&sub, "attribute %u type: %s", (unsigned)k + 1, e2.msg);
      } else if (e->via.array.ptr[1].type != MSGPACK_OBJECT_BOOLEAN) {
        r = pb_fail(&sub, "attribute %u want: expected bool, got %s", (unsigned)k + 1,
                    pb_type_name(&e->via.array.ptr[1]));
      } else {
        s->want[k] = e->via.array.ptr[1].via.boolean ? 1 : 0;
      }
    }
    break;
  }
  case PB_K_OUTBYTES:
    if (o->type == MSGPACK_OBJECT_NIL) {
      s->mode = PB_OUT_QUERY;
      s->p = NULL;
      s->len = 0;
    } else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
      uint64_t cap = o->via.u64;
      s->asked = cap;
      if (cap > pb_exec_max_payload) cap = pb_exec_max_payload; /* served with a buffer of the limit */
      s->mode = PB_OUT_BUFFER;
      s->cap = (CK_ULONG)cap;
      s->len = (CK_ULONG)cap;
      s->p = pb_arena_alloc(&q->ar, cap ? (size_t)cap : 1);
      if (!s->p) return alloc_fail(q);
    } else {
      r = pb_fail(&sub, "expected unsigned int (capacity) or nil, got %s", pb_type_name(o));
    }
    break;
  case PB_K_OUTLIST:
    if (o->type == MSGPACK_OBJECT_NIL) {
      s->mode = PB_OUT_QUERY;
      s->ulp = NULL;
      s->count = 0;
    } else if (o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean) {
      s->mode = PB_OUT_AUTO;
    } else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
      uint64_t cap = o->via.u64, lim = pb_exec_max_payload / 8;
      s->asked = cap;
      if (cap > lim) cap = lim;
      s->mode = PB_OUT_BUFFER;
      s->cap = s->count = (CK_ULONG)cap;
      s->ulp = pb_arena_alloc(&q->ar, (cap ? (size_t)cap : 1) * sizeof(CK_ULONG));
      if (!s->ulp) return alloc_fail(q);
    } else {
      r = pb_fail(&sub, "expected unsigned int (capacity), nil or true, got %s", pb_type_name(o));
    }
    break;
  case PB_K_OUTFIXED: {
    if (o->type == MSGPACK_OBJECT_NIL) { /* a NULL buffer */
      s->p = NULL;
      s->len = 0;
      break;
    }
    CK_ULONG n;
    r = pb_unpack_ulong(o, &n, &sub);
    if (r != PB_OK) break;
    if (n > pb_exec_max_payload) {
      r = pb_fail(&sub, "length %lu exceeds the payload limit %zu", (unsigned long)n, pb_exec_max_payload);
      break;
    }
    s->len = n;
    s->p = pb_arena_alloc(&q->ar, n ? n : 1);
    if (!s->p) return alloc_fail(q);
    break;
  }
  default:
    r = pb_fail(&sub, "kind %s cannot be an argument", pb_kind_name(p->kind));
  }
  if (r == PB_MALFORMED) return prefix_arg_error(q, i, sub.msg);
  if (r == PB_RV) q->err = sub;
  return r;
}

/* Prepare result-only slots (after all arguments are decoded). */
static int prepare_results(req *q) {
  for (unsigned i = 0; i < q->call->nres; i++) {
    const pb_param *p = &q->call->res[i];
    pb_slot *s = &q->a[p->slot];
    if (p->kind == PB_K_OBJECTLIST) {
      /* clamp: at most 65536 handles, and no more than fit the payload
       * limit at 9 bytes (the largest MessagePack uint) per handle */
      CK_ULONG max = q->a[p->aux].ul, lim = (CK_ULONG)((pb_exec_max_payload - 16) / 9);
      if (lim > PB_MAX_FIND) lim = PB_MAX_FIND;
      if (max > lim) max = lim;
      q->a[p->aux].ul = max;
      s->cap = max;
      s->count = 0;
      s->ulp = pb_arena_alloc(&q->ar, (max ? max : 1) * sizeof(CK_ULONG));
      if (!s->ulp) return alloc_fail(q);
    }
  }
  return PB_OK;
}

/* ------------------------------------------------------------------ procedures */

static int rv_attr_ok(CK_RV rv) {
  return rv == CKR_OK || rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID ||
         rv == CKR_BUFFER_TOO_SMALL;
}

/* C_GetAttributeValue: length query, then fetch the wanted values (and for
 * template-valued attributes the nested lengths, then the nested values). */
static CK_RV run_attrquery(req *q, pb_slot *s, int *abort_results) {
  CK_ULONG n = s->count;
  CK_ATTRIBUTE *t1 = s->tmpl;
  for (CK_ULONG i = 0; i < n; i++) {
    t1[i].pValue = NULL;
    t1[i].ulValueLen = 0;
  }
  CK_RV rv1 = pb_invoke(pb_exec_fl, q->call->id, q->a);
  if (!rv_attr_ok(rv1)) {
    *abort_results = 1;
    return rv1;
  }
  q->lens1 = pb_arena_alloc(&q->ar, (n ? n : 1) * sizeof(CK_ULONG));
  q->idx2 = pb_arena_alloc(&q->ar, (n ? n : 1) * sizeof(int));
  q->t2 = pb_arena_alloc(&q->ar, (n ? n : 1) * sizeof(CK_ATTRIBUTE));
  q->cap2 = pb_arena_alloc(&q->ar, (n ? n : 1) * sizeof(CK_ULONG));
  if (!q->lens1 || !q->idx2 || !q->t2 || !q->cap2) {
    *abort_results = 1;
    return CKR_HOST_MEMORY;
  }
  size_t budget = pb_exec_max_payload;
  CK_ULONG m = 0;
  int nested = 0;
  for (CK_ULONG i = 0; i < n; i++) {
    q->lens1[i] = t1[i].ulValueLen;
    q->idx2[i] = -1;
    if (!s->want[i] || t1[i].ulValueLen == CK_UNAVAILABLE_INFORMATION) continue;
    CK_ULONG len = t1[i].ulValueLen;
    CK_ATTRIBUTE *e = &q->t2[m];
    e->type = t1[i].type;
    if (len > budget) {
      *abort_results = 1;
      dbg("C_GetAttributeValue: values exceed the payload limit");
      return CKR_HOST_MEMORY;
    }
    budget -= len;
    if (pb_attr_kind_of(e->type) == PB_AK_TEMPLATE && len % sizeof(CK_ATTRIBUTE) == 0) {
      nested = 1; /* nested attributes with NULL values: the module fills types and lengths */
    }
    e->pValue = pb_arena_alloc(&q->ar, len ? len : 1);
    if (!e->pValue) {
      *abort_results = 1;
      return CKR_HOST_MEMORY;
    }
    e->ulValueLen = len;
    q->cap2[m] = len;
    q->idx2[i] = (int)m;
    m++;
  }
  CK_RV rv2 = CKR_OK;
  if (m > 0) {
    s->tmpl = q->t2;
    s->count = m;
    rv2 = pb_invoke(pb_exec_fl, q->call->id, q->a);
    if (nested && rv_attr_ok(rv2)) {
      /* second round for nested templates: allocate each nested value */
      int again = 0;
      for (CK_ULONG j = 0; j < m; j++) {
        CK_ATTRIBUTE *e = &q->t2[j];
        if (pb_attr_kind_of(e->type) != PB_AK_TEMPLATE || e->ulValueLen == CK_UNAVAILABLE_INFORMATION ||
            e->ulValueLen > q->cap2[j] || e->ulValueLen % sizeof(CK_ATTRIBUTE))
          continue;
        CK_ATTRIBUTE *nt = e->pValue;
        CK_ULONG nn = e->ulValueLen / sizeof(CK_ATTRIBUTE);
        for (CK_ULONG k = 0; k < nn; k++) {
          CK_ULONG l = nt[k].ulValueLen;
          if (l == CK_UNAVAILABLE_INFORMATION || nt[k].pValue) continue;
          if (l > budget) {
            *abort_results = 1;
            return CKR_HOST_MEMORY;
          }
          budget -= l;
          nt[k].pValue = pb_arena_alloc(&q->ar, l ? l : 1);
          if (!nt[k].pValue) {
            *abort_results = 1;
            return CKR_HOST_MEMORY;
          }
          again = 1;
        }
      }
      if (again) rv2 = pb_invoke(pb_exec_fl, q->call->id, q->a);
    }
    if (!rv_attr_ok(rv2)) {
      *abort_results = 1;
      return rv2;
    }
  }
  s->tmpl = t1;
  s->count = n;
  return rv1 != CKR_OK ? rv1 : rv2;
}

/* outlist = true: count query, allocate, fetch; retry if the list grew. */
static CK_RV run_outlist_auto(req *q, pb_slot *s) {
  CK_RV rv = CKR_OK;
  CK_ULONG lim = pb_exec_max_payload / 8;
  for (int attempt = 0; attempt < PB_OUTLIST_RETRIES; attempt++) {
    s->ulp = NULL;
    s->count = 0;
    rv = pb_invoke(pb_exec_fl, q->call->id, q->a);
    if (rv != CKR_OK) return rv;
    CK_ULONG cap = s->count > lim ? lim : s->count;
    s->ulp = pb_arena_alloc(&q->ar, (cap ? cap : 1) * sizeof(CK_ULONG));
    if (!s->ulp) return CKR_HOST_MEMORY;
    s->cap = s->count = cap;
    rv = pb_invoke(pb_exec_fl, q->call->id, q->a);
    if (rv != CKR_BUFFER_TOO_SMALL) break;
  }
  return rv;
}

/* ------------------------------------------------------------------ results */

static int pack_attrvalues(msgpack_packer *pk, req *q, pb_slot *s) {
  int r = msgpack_pack_array(pk, s->count);
  for (CK_ULONG i = 0; r == 0 && i < s->count; i++) {
    CK_ATTRIBUTE_TYPE type = s->tmpl[i].type;
    CK_ULONG len1 = q->lens1[i];
    if (len1 == CK_UNAVAILABLE_INFORMATION) {
      r = msgpack_pack_nil(pk);
    } else if (!s->want[i]) {
      switch (pb_attr_kind_of(type)) {
      case PB_AK_TEMPLATE: len1 /= sizeof(CK_ATTRIBUTE); break;
      case PB_AK_ULONGLIST: len1 /= sizeof(CK_ULONG); break;
      default: break;
      }
      r = pb_pack_ulong(pk, len1);
    } else {
      int j = q->idx2[i];
      CK_ATTRIBUTE *e = j >= 0 ? &q->t2[j] : NULL;
      if (!e || e->ulValueLen == CK_UNAVAILABLE_INFORMATION || e->ulValueLen > q->cap2[j])
        r = msgpack_pack_nil(pk);
      else
        r = pb_pack_attr_value(pk, type, e->pValue, e->ulValueLen, 0);
    }
  }
  return r;
}

/* Check that outputs are within the buffers we gave (a module bug otherwise). */
static int results_sane(req *q, CK_RV rv) {
  for (unsigned i = 0; i < q->call->nres; i++) {
    const pb_param *p = &q->call->res[i];
    pb_slot *s = &q->a[p->slot];
    if (rv != CKR_OK) continue;
    if (p->kind == PB_K_OUTBYTES && s->mode == PB_OUT_BUFFER && s->len > s->cap) return 0;
    if (p->kind == PB_K_OUTLIST && s->mode != PB_OUT_QUERY && s->count > s->cap) return 0;
    if (p->kind == PB_K_OBJECTLIST && s->count > s->cap) return 0;
  }
  return 1;
}

/* An output the module says needs more than the buffer we gave, where that
 * buffer was clamped to the payload limit below the caller's capacity: the
 * caller's buffer was big enough, so CKR_BUFFER_TOO_SMALL would mislead.
 * Returns 1 with msg set (answered as an error map, CKR_DEVICE_MEMORY). */
static int output_over_limit(req *q, CK_RV rv, char *msg, size_t msglen) {
  if (rv != CKR_BUFFER_TOO_SMALL) return 0;
  for (unsigned i = 0; i < q->call->nres; i++) {
    const pb_param *p = &q->call->res[i];
    pb_slot *s = &q->a[p->slot];
    if (s->mode != PB_OUT_BUFFER) continue;
    if (p->kind == PB_K_OUTBYTES && s->len > s->cap && s->asked > s->cap) {
      snprintf(msg, msglen, "%s: output of %lu bytes exceeds the bridge's payload limit %zu", q->call->name,
               (unsigned long)s->len, pb_exec_max_payload);
      return 1;
    }
    if (p->kind == PB_K_OUTLIST && s->count > s->cap && s->asked > s->cap) {
      snprintf(msg, msglen, "%s: output of %lu elements exceeds the bridge's payload limit %zu (%lu elements)",
               q->call->name, (unsigned long)s->count, pb_exec_max_payload, (unsigned long)s->cap);
      return 1;
    }
  }
  return 0;
}

static int pack_result(msgpack_packer *pk, req *q, const pb_param *p, CK_RV rv) {
  pb_slot *s = &q->a[p->slot];
  switch (p->kind) {
  case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT:
    return pb_pack_ulong(pk, s->ul);
  case PB_K_OUTBYTES:
    if (s->mode == PB_OUT_BUFFER && rv == CKR_OK) return pb_pack_bytes(pk, s->p, s->len);
    return pb_pack_ulong(pk, s->len);
  case PB_K_OUTLIST:
    if (s->mode == PB_OUT_QUERY || rv != CKR_OK) return pb_pack_ulong(pk, s->count);
    {
      int r = msgpack_pack_array(pk, s->count);
      for (CK_ULONG i = 0; r == 0 && i < s->count; i++) r = pb_pack_ulong(pk, s->ulp[i]);
      return r;
    }
  case PB_K_OBJECTLIST: {
    int r = msgpack_pack_array(pk, s->count);
    for (CK_ULONG i = 0; r == 0 && i < s->count; i++) r = pb_pack_ulong(pk, s->ulp[i]);
    return r;
  }
  case PB_K_OUTFIXED:
    return pb_pack_bytes(pk, s->p, s->len);
  case PB_K_ATTRVALUES:
    return pack_attrvalues(pk, q, s);
  case PB_K_INFO: return pb_pack_struct(pk, &pb_struct_info, &s->st.info);
  case PB_K_SLOTINFO: return pb_pack_struct(pk, &pb_struct_slotinfo, &s->st.slotinfo);
  case PB_K_TOKENINFO: return pb_pack_struct(pk, &pb_struct_tokeninfo, &s->st.tokeninfo);
  case PB_K_SESSIONINFO: return pb_pack_struct(pk, &pb_struct_sessioninfo, &s->st.sessioninfo);
  case PB_K_MECHINFO: return pb_pack_struct(pk, &pb_struct_mechinfo, &s->st.mechinfo);
  default:
    return -1;
  }
}

static void pack_rv_only(msgpack_packer *pk, CK_RV rv) {
  msgpack_pack_array(pk, 1);
  pb_pack_ulong(pk, rv);
}

/* ------------------------------------------------------------------ dispatch */

void pb_exec_handle(const unsigned char *buf, size_t len, msgpack_sbuffer *sb) {
  msgpack_packer pk;
  msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
  req *q = calloc(1, sizeof *q);
  if (!q) {
    pb_pack_error_map(&pk, CKR_HOST_MEMORY, "out of memory");
    return;
  }
  pb_arena_init(&q->ar);
  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  char msg[sizeof q->err.msg + 64];

  if (pb_prescan(buf, len, &q->err) != 0) {
    snprintf(msg, sizeof msg, "malformed request: %s", q->err.msg);
    pb_pack_error_map(&pk, CKR_ARGUMENTS_BAD, msg);
    goto out;
  }
  size_t off = 0;
  msgpack_unpack_return ur = msgpack_unpack_next(&up, (const char *)buf, len, &off);
  if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
    pb_pack_error_map(&pk, CKR_ARGUMENTS_BAD,
                      ur == MSGPACK_UNPACK_NOMEM_ERROR ? "malformed request: nested too deep or too large"
                                                       : "malformed request: not a MessagePack value");
    goto out;
  }
  const msgpack_object *o = &up.data;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0) {
    snprintf(msg, sizeof msg, "malformed request: expected [id, args...], got %s",
             o->type == MSGPACK_OBJECT_ARRAY ? "empty array" : pb_type_name(o));
    pb_pack_error_map(&pk, CKR_ARGUMENTS_BAD, msg);
    goto out;
  }
  const msgpack_object *args = o->via.array.ptr;
  uint32_t nargs = o->via.array.size - 1;
  if (args[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
    snprintf(msg, sizeof msg, "malformed request: call id must be an unsigned int, got %s", pb_type_name(&args[0]));
    pb_pack_error_map(&pk, CKR_ARGUMENTS_BAD, msg);
    goto out;
  }
  uint64_t id = args[0].via.u64;
  if (id == 0) {
    if (nargs != 0) {
      pb_pack_error_map(&pk, CKR_ARGUMENTS_BAD, "describe ([0]) takes no arguments");
      goto out;
    }
    unsigned n = 0;
    for (unsigned i = 1; i <= PB_NCALLS; i++) n += pb_has_function(pb_exec_fl, i) ? 1 : 0;
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, 0);
    msgpack_pack_array(&pk, n);
    for (unsigned i = 1; i <= PB_NCALLS; i++)
      if (pb_has_function(pb_exec_fl, i)) msgpack_pack_uint64(&pk, i);
    msgpack_pack_str_with_body(&pk, pb_exec_sandbox_report, strlen(pb_exec_sandbox_report));
    goto out;
  }
  const pb_call *c = pb_call_by_id(id);
  if (!c) {
    snprintf(msg, sizeof msg, "unknown call id %llu", (unsigned long long)id);
    pb_pack_error_map(&pk, CKR_FUNCTION_NOT_SUPPORTED, msg);
    goto out;
  }
  if (c->local) {
    snprintf(msg, sizeof msg, "%s is answered by the client and never sent", c->name);
    pb_pack_error_map(&pk, CKR_FUNCTION_NOT_SUPPORTED, msg);
    goto out;
  }
  if (nargs != c->nargs) {
    snprintf(msg, sizeof msg, "%s: expected %u argument%s, got %u", c->name, c->nargs,
             c->nargs == 1 ? "" : "s", (unsigned)nargs);
    pb_pack_error_map(&pk, CKR_ARGUMENTS_BAD, msg);
    goto out;
  }
  q->call = c;
  /* The first problem in argument order decides, as in the daemon's check
   * (src/protocol/codec.ts): malformed -> error map, refused -> [rv]. */
  CK_RV deferred = CKR_OK;
  for (unsigned i = 0; i < c->nargs && deferred == CKR_OK; i++) {
    int r = decode_arg(q, i, &args[i + 1]);
    if (r == PB_MALFORMED) {
      pb_pack_error_map(&pk, q->err.rv, q->err.msg);
      goto out;
    }
    if (r == PB_RV) deferred = q->err.rv;
  }
  if (deferred == CKR_OK && prepare_results(q) == PB_RV) deferred = q->err.rv;
  if (deferred != CKR_OK) {
    dbg("%s: answered 0x%lx without calling the module: %s", c->name, (unsigned long)deferred, q->err.msg);
    pack_rv_only(&pk, deferred);
    goto out;
  }
  if (!pb_has_function(pb_exec_fl, c->id)) {
    pack_rv_only(&pk, CKR_FUNCTION_NOT_SUPPORTED);
    goto out;
  }

  /* run */
  CK_RV rv = CKR_OK;
  int abort_results = 0;
  pb_slot *attr = NULL, *autolist = NULL;
  for (unsigned i = 0; i < c->nargs; i++) {
    if (c->args[i].kind == PB_K_ATTRQUERY) attr = &q->a[c->args[i].slot];
    if (c->args[i].kind == PB_K_OUTLIST && q->a[c->args[i].slot].mode == PB_OUT_AUTO)
      autolist = &q->a[c->args[i].slot];
  }
  if (attr)
    rv = run_attrquery(q, attr, &abort_results);
  else if (autolist)
    rv = run_outlist_auto(q, autolist);
  else
    rv = pb_invoke(pb_exec_fl, c->id, q->a);
  dbg("%s: rv=0x%lx", c->name, (unsigned long)rv);

  if (c->id == 1 && rv == CKR_OK) pb_exec_initialized = 1;
  if (c->id == 2 && rv == CKR_OK) pb_exec_initialized = 0;

  if (!abort_results && output_over_limit(q, rv, msg, sizeof msg)) {
    dbg("%s", msg);
    pb_pack_error_map(&pk, CKR_DEVICE_MEMORY, msg);
    goto out;
  }
  if (abort_results || (rv != CKR_OK && !pb_call_is_partial(c, rv))) {
    pack_rv_only(&pk, rv);
    goto out;
  }
  if (!results_sane(q, rv)) {
    dbg("%s: module returned more output than the buffer it was given", c->name);
    pack_rv_only(&pk, CKR_DEVICE_ERROR);
    goto out;
  }
  msgpack_pack_array(&pk, 1 + c->nres);
  pb_pack_ulong(&pk, rv);
  for (unsigned i = 0; i < c->nres; i++) pack_result(&pk, q, &c->res[i], rv);

out:
  msgpack_unpacked_destroy(&up);
  pb_arena_free(&q->ar);
  free(q);
}

