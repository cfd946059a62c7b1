/* wire.c: p11bridge kind codecs (see wire.h). */
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Alignas(max_align_t) CK_BYTE pb_empty[PB_EMPTY_SIZE];

/* ------------------------------------------------------------------ errors */

int pb_fail(pb_err *err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof err->msg, fmt, ap);
  va_end(ap);
  err->rv = CKR_ARGUMENTS_BAD;
  return PB_MALFORMED;
}

int pb_fail_rv(pb_err *err, CK_RV rv) {
  err->rv = rv;
  err->msg[0] = 0;
  return PB_RV;
}

const char *pb_type_name(const msgpack_object *o) {
  switch (o->type) {
  case MSGPACK_OBJECT_NIL: return "nil";
  case MSGPACK_OBJECT_BOOLEAN: return "bool";
  case MSGPACK_OBJECT_POSITIVE_INTEGER: return "int";
  case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "negative int";
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64: return "float";
  case MSGPACK_OBJECT_STR: return "str";
  case MSGPACK_OBJECT_ARRAY: return "array";
  case MSGPACK_OBJECT_MAP: return "map";
  case MSGPACK_OBJECT_BIN: return "bin";
  case MSGPACK_OBJECT_EXT: return "ext";
  }
  return "unknown";
}

/* ------------------------------------------------------------------ arena */

struct pb_arena_blk {
  pb_arena_blk *next;
  max_align_t data[];
};

void pb_arena_init(pb_arena *a) {
  a->head = NULL;
  a->total = 0;
}

void *pb_arena_alloc(pb_arena *a, size_t size) {
  if (size > SIZE_MAX - sizeof(pb_arena_blk) - 16) return NULL;
  pb_arena_blk *b = calloc(1, sizeof(pb_arena_blk) + (size ? size : 1));
  if (!b) return NULL;
  b->next = a->head;
  a->head = b;
  a->total += size;
  return b->data;
}

void pb_arena_free(pb_arena *a) {
  pb_arena_blk *b = a->head;
  while (b) {
    pb_arena_blk *n = b->next;
    free(b);
    b = n;
  }
  a->head = NULL;
  a->total = 0;
}

/* ------------------------------------------------------------------ scalars */

int pb_unpack_ulong(const msgpack_object *o, CK_ULONG *out, pb_err *err) {
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
    return pb_fail(err, "expected unsigned int, got %s", pb_type_name(o));
  uint64_t v = o->via.u64;
  if (v == UINT64_MAX) {
    *out = CK_UNAVAILABLE_INFORMATION; /* all-ones travels as 2^64-1 */
  } else if (v > (uint64_t)(CK_ULONG)~(CK_ULONG)0) {
    return pb_fail(err, "unsigned int %llu does not fit a CK_ULONG", (unsigned long long)v);
  } else {
    *out = (CK_ULONG)v;
  }
  return PB_OK;
}

int pb_unpack_bool(const msgpack_object *o, CK_BBOOL *out, pb_err *err) {
  if (o->type != MSGPACK_OBJECT_BOOLEAN)
    return pb_fail(err, "expected bool, got %s", pb_type_name(o));
  *out = o->via.boolean ? CK_TRUE : CK_FALSE;
  return PB_OK;
}

int pb_unpack_bytes(const msgpack_object *o, void **p, CK_ULONG *len, pb_err *err) {
  if (o->type == MSGPACK_OBJECT_NIL) {
    *p = NULL;
    *len = 0;
    return PB_OK;
  }
  if (o->type != MSGPACK_OBJECT_BIN)
    return pb_fail(err, "expected bin or nil, got %s", pb_type_name(o));
  *len = o->via.bin.size;
  *p = o->via.bin.size ? (void *)o->via.bin.ptr : (void *)pb_empty;
  return PB_OK;
}

int pb_unpack_fixed(const msgpack_object *o, size_t n, void **p, pb_err *err) {
  if (o->type != MSGPACK_OBJECT_BIN)
    return pb_fail(err, "expected bin of %zu bytes, got %s", n, pb_type_name(o));
  if (o->via.bin.size != n)
    return pb_fail(err, "expected bin of %zu bytes, got %u bytes", n, (unsigned)o->via.bin.size);
  *p = n ? (void *)o->via.bin.ptr : (void *)pb_empty;
  return PB_OK;
}

int pb_pack_ulong(msgpack_packer *pk, CK_ULONG v) {
  if (v == CK_UNAVAILABLE_INFORMATION) return msgpack_pack_uint64(pk, UINT64_MAX);
  return msgpack_pack_uint64(pk, (uint64_t)v);
}

int pb_pack_bytes(msgpack_packer *pk, const void *p, size_t len) {
  if (!p) return msgpack_pack_nil(pk);
  int r = msgpack_pack_bin(pk, len);
  if (r == 0 && len) r = msgpack_pack_bin_body(pk, p, len);
  return r;
}

/* ------------------------------------------------------------------ structs */

static CK_ULONG get_ul(const void *s, size_t off) {
  CK_ULONG v;
  memcpy(&v, (const char *)s + off, sizeof v);
  return v;
}
static void set_ul(void *s, size_t off, CK_ULONG v) { memcpy((char *)s + off, &v, sizeof v); }
static void *get_ptr(const void *s, size_t off) {
  void *p;
  memcpy(&p, (const char *)s + off, sizeof p);
  return p;
}
static void set_ptr(void *s, size_t off, void *p) { memcpy((char *)s + off, &p, sizeof p); }

int pb_unpack_struct(const msgpack_object *o, const pb_struct_desc *d, void *s, pb_err *err) {
  if (o->type != MSGPACK_OBJECT_ARRAY)
    return pb_fail(err, "%s: expected array of %u fields, got %s", d->name, d->nfields, pb_type_name(o));
  if (o->via.array.size != d->nfields)
    return pb_fail(err, "%s: expected %u fields, got %u", d->name, d->nfields, (unsigned)o->via.array.size);
  for (unsigned i = 0; i < d->nfields; i++) {
    const pb_field *f = &d->fields[i];
    const msgpack_object *v = &o->via.array.ptr[i];
    pb_err sub;
    int r = PB_OK;
    switch (f->kind) {
    case PB_F_ULONG: {
      CK_ULONG ul = 0;
      r = pb_unpack_ulong(v, &ul, &sub);
      if (r == PB_OK) set_ul(s, f->off, ul);
      break;
    }
    case PB_F_BYTES: {
      void *p = NULL;
      CK_ULONG len = 0;
      r = pb_unpack_bytes(v, &p, &len, &sub);
      if (r == PB_OK) {
        set_ptr(s, f->off, p);
        set_ul(s, f->off2, len);
      }
      break;
    }
    case PB_F_FIXED:
    case PB_F_CHAR: {
      void *p;
      r = pb_unpack_fixed(v, f->size, &p, &sub);
      if (r == PB_OK) memcpy((char *)s + f->off, p, f->size);
      break;
    }
    case PB_F_VERSION: {
      if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size != 2 ||
          v->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
          v->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
          v->via.array.ptr[0].via.u64 > 255 || v->via.array.ptr[1].via.u64 > 255) {
        r = pb_fail(&sub, "expected [major, minor] (0..255)");
        break;
      }
      CK_VERSION ver = {(CK_BYTE)v->via.array.ptr[0].via.u64, (CK_BYTE)v->via.array.ptr[1].via.u64};
      memcpy((char *)s + f->off, &ver, sizeof ver);
      break;
    }
    }
    if (r != PB_OK) return pb_fail(err, "%s field %u (%s): %s", d->name, i + 1, f->name, sub.msg);
  }
  return PB_OK;
}

int pb_pack_struct(msgpack_packer *pk, const pb_struct_desc *d, const void *s) {
  int r = msgpack_pack_array(pk, d->nfields);
  for (unsigned i = 0; r == 0 && i < d->nfields; i++) {
    const pb_field *f = &d->fields[i];
    switch (f->kind) {
    case PB_F_ULONG: r = pb_pack_ulong(pk, get_ul(s, f->off)); break;
    case PB_F_BYTES: r = pb_pack_bytes(pk, get_ptr(s, f->off), get_ul(s, f->off2)); break;
    case PB_F_FIXED:
    case PB_F_CHAR: r = pb_pack_bytes(pk, (const char *)s + f->off, f->size); break;
    case PB_F_VERSION: {
      CK_VERSION ver;
      memcpy(&ver, (const char *)s + f->off, sizeof ver);
      r = msgpack_pack_array(pk, 2);
      if (r == 0) r = msgpack_pack_uint8(pk, ver.major);
      if (r == 0) r = msgpack_pack_uint8(pk, ver.minor);
      break;
    }
    }
  }
  return r;
}

/* ------------------------------------------------------------------ mechanism */

/* A guest's mechanism: [type] or [type, parameter], the parameter in the form
 * the table gives the mechanism (protocol.json paramKindsDoc). Nothing the
 * guest sends becomes a pointer: a structure is rebuilt here from its fields
 * with pointers into the message and the arena; a parameter in another form
 * is CKR_MECHANISM_PARAM_INVALID (PB_RV) and the module is never called. */
int pb_unpack_mechanism(const msgpack_object *o, CK_MECHANISM *m, pb_arena *ar, pb_err *err) {
  if (o->type != MSGPACK_OBJECT_ARRAY)
    return pb_fail(err, "expected [type] or [type, parameter], got %s", pb_type_name(o));
  uint32_t n = o->via.array.size;
  if (n < 1 || n > 2)
    return pb_fail(err, "expected [type] or [type, parameter], got array of %u", (unsigned)n);
  pb_err sub;
  if (pb_unpack_ulong(&o->via.array.ptr[0], &m->mechanism, &sub) != PB_OK)
    return pb_fail(err, "expected [type] or [type, parameter]: mechanism type: %s", sub.msg);
  m->pParameter = NULL;
  m->ulParameterLen = 0;
  if (n == 1) return PB_OK;
  const msgpack_object *p = &o->via.array.ptr[1];
  if (p->type == MSGPACK_OBJECT_NIL) return PB_OK;
  if (p->type != MSGPACK_OBJECT_BIN && p->type != MSGPACK_OBJECT_POSITIVE_INTEGER && p->type != MSGPACK_OBJECT_ARRAY)
    return pb_fail(err, "parameter: expected nil, bin, int or array, got %s", pb_type_name(p));
  if (p->type == MSGPACK_OBJECT_BIN && p->via.bin.size == 0) {
    m->pParameter = pb_empty; /* a non-NULL pointer, length 0: no parameter */
    return PB_OK;
  }
  const pb_struct_desc *d = NULL;
  pb_param_form form = pb_mech_param_form(m->mechanism, &d);
  err->rv = CKR_MECHANISM_PARAM_INVALID;
  switch (form) {
  case PB_PF_BYTES:
    if (p->type != MSGPACK_OBJECT_BIN) break;
    m->pParameter = (void *)p->via.bin.ptr;
    m->ulParameterLen = p->via.bin.size;
    return PB_OK;
  case PB_PF_ULONG: {
    if (p->type != MSGPACK_OBJECT_POSITIVE_INTEGER) break;
    CK_ULONG *v = pb_arena_alloc(ar, sizeof(CK_ULONG));
    if (!v) return pb_fail_rv(err, CKR_HOST_MEMORY);
    if (pb_unpack_ulong(p, v, &sub) != PB_OK) break;
    m->pParameter = v;
    m->ulParameterLen = sizeof(CK_ULONG);
    return PB_OK;
  }
  case PB_PF_STRUCT: {
    if (p->type != MSGPACK_OBJECT_ARRAY) break;
    void *s = pb_arena_alloc(ar, d->size);
    if (!s) return pb_fail_rv(err, CKR_HOST_MEMORY);
    if (pb_unpack_struct(p, d, s, &sub) != PB_OK) {
      snprintf(err->msg, sizeof err->msg, "%.300s", sub.msg);
      err->rv = CKR_MECHANISM_PARAM_INVALID;
      return PB_RV;
    }
    m->pParameter = s;
    m->ulParameterLen = d->size;
    return PB_OK;
  }
  case PB_PF_NONE:
    break;
  }
  snprintf(err->msg, sizeof err->msg, "mechanism 0x%lx takes %s, got %s", (unsigned long)m->mechanism,
           form == PB_PF_NONE ? "no parameter" : form == PB_PF_BYTES ? "a byte string"
           : form == PB_PF_ULONG ? "an unsigned integer" : "a structure as an array of its fields",
           pb_type_name(p));
  err->rv = CKR_MECHANISM_PARAM_INVALID;
  return PB_RV;
}

int pb_pack_mechanism(msgpack_packer *pk, const CK_MECHANISM *m) {
  int r;
  if (!m->pParameter && m->ulParameterLen == 0) {
    r = msgpack_pack_array(pk, 1);
    if (r == 0) r = pb_pack_ulong(pk, m->mechanism);
    return r;
  }
  r = msgpack_pack_array(pk, 2);
  if (r == 0) r = pb_pack_ulong(pk, m->mechanism);
  if (r != 0) return r;
  const pb_struct_desc *d = NULL;
  pb_param_form form = pb_mech_param_form(m->mechanism, &d);
  if (form == PB_PF_STRUCT && m->pParameter && m->ulParameterLen == d->size) return pb_pack_struct(pk, d, m->pParameter);
  if (form == PB_PF_ULONG && m->pParameter && m->ulParameterLen == sizeof(CK_ULONG)) { /* an integer, never host bytes */
    CK_ULONG v;
    memcpy(&v, m->pParameter, sizeof v);
    return pb_pack_ulong(pk, v);
  }
  /* bytes; anything else the server refuses (CKR_MECHANISM_PARAM_INVALID) */
  return pb_pack_bytes(pk, m->pParameter ? m->pParameter : pb_empty, m->ulParameterLen);
}

CK_RV pb_check_mechanism(const CK_MECHANISM *m, size_t limit) {
  if (!m) return CKR_ARGUMENTS_BAD;
  if (!m->pParameter) return m->ulParameterLen ? CKR_ARGUMENTS_BAD : CKR_OK;
  if (m->ulParameterLen > limit) return CKR_ARGUMENTS_BAD;
  const pb_struct_desc *d = NULL;
  if (pb_mech_param_form(m->mechanism, &d) != PB_PF_STRUCT) return CKR_OK; /* the server judges the form */
  if (m->ulParameterLen != d->size) return CKR_MECHANISM_PARAM_INVALID;
  for (unsigned i = 0; i < d->nfields; i++) {
    const pb_field *f = &d->fields[i];
    if (f->kind != PB_F_BYTES) continue;
    void *p = get_ptr(m->pParameter, f->off);
    CK_ULONG len = get_ul(m->pParameter, f->off2);
    if (!p && len) return CKR_MECHANISM_PARAM_INVALID;
    if (len > limit) return CKR_ARGUMENTS_BAD;
  }
  return CKR_OK;
}

/* ------------------------------------------------------------------ template */

static int unpack_attrs(const msgpack_object *o, CK_ATTRIBUTE **t, CK_ULONG *n, pb_arena *ar,
                        pb_err *err, int depth);

static const char *attr_kind_name(pb_attr_kind k) {
  switch (k) {
  case PB_AK_BYTES: return "bytes";
  case PB_AK_ULONG: return "ulong";
  case PB_AK_BOOL: return "bool";
  case PB_AK_TEMPLATE: return "template";
  case PB_AK_ULONGLIST: return "ulonglist";
  case PB_AK_DATE: return "date";
  }
  return "?";
}

/* A guest's attribute value, typed by its attribute's kind (protocol.json
 * attributesDoc); the same rules, in the same order, as src/protocol/kinds.ts
 * checkAttrValue. A value of the wrong form is CKR_ATTRIBUTE_VALUE_INVALID
 * (PB_RV): the module never sees it. */
static int unpack_value(const msgpack_object *v, CK_ATTRIBUTE *a, pb_arena *ar, pb_err *err, int depth) {
  pb_err sub;
  a->pValue = NULL;
  a->ulValueLen = 0;
  switch (v->type) {
  case MSGPACK_OBJECT_NIL: return PB_OK; /* NULL, length 0: for the module to judge */
  case MSGPACK_OBJECT_BOOLEAN: case MSGPACK_OBJECT_POSITIVE_INTEGER: case MSGPACK_OBJECT_BIN:
  case MSGPACK_OBJECT_ARRAY:
    break;
  default:
    return pb_fail(err, "expected an attribute value, got %s", pb_type_name(v));
  }
  pb_attr_kind kind = pb_attr_kind_of(a->type);
  const char *want = NULL;
  switch (kind) {
  case PB_AK_BOOL: {
    if (v->type != MSGPACK_OBJECT_BOOLEAN) { want = "a boolean"; break; }
    CK_BBOOL *b = pb_arena_alloc(ar, sizeof(CK_BBOOL));
    if (!b) return pb_fail_rv(err, CKR_HOST_MEMORY);
    *b = v->via.boolean ? CK_TRUE : CK_FALSE;
    a->pValue = b;
    a->ulValueLen = sizeof(CK_BBOOL);
    return PB_OK;
  }
  case PB_AK_ULONG: {
    CK_ULONG u;
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || pb_unpack_ulong(v, &u, &sub) != PB_OK) { want = "an unsigned integer"; break; }
    CK_ULONG *p = pb_arena_alloc(ar, sizeof(CK_ULONG));
    if (!p) return pb_fail_rv(err, CKR_HOST_MEMORY);
    *p = u;
    a->pValue = p;
    a->ulValueLen = sizeof(CK_ULONG);
    return PB_OK;
  }
  case PB_AK_DATE:
    if (v->type != MSGPACK_OBJECT_BIN || (v->via.bin.size != 0 && v->via.bin.size != sizeof(CK_DATE))) {
      want = "bin of 8 bytes (YYYYMMDD) or empty";
      break;
    }
    return pb_unpack_bytes(v, &a->pValue, &a->ulValueLen, err);
  case PB_AK_BYTES:
    if (v->type != MSGPACK_OBJECT_BIN) { want = "bin"; break; }
    return pb_unpack_bytes(v, &a->pValue, &a->ulValueLen, err);
  case PB_AK_ULONGLIST: {
    if (v->type != MSGPACK_OBJECT_ARRAY) { want = "an array of unsigned integers"; break; }
    uint32_t m = v->via.array.size;
    if (m > PB_MAX_TEMPLATE)
      return pb_fail(err, "CK_ULONG array of %u elements exceeds %lu", (unsigned)m, PB_MAX_TEMPLATE);
    for (uint32_t i = 0; i < m && !want; i++)
      if (v->via.array.ptr[i].type != MSGPACK_OBJECT_POSITIVE_INTEGER) want = "an array of unsigned integers";
    if (want) break;
    CK_ULONG *u = m ? pb_arena_alloc(ar, (size_t)m * sizeof(CK_ULONG)) : (CK_ULONG *)(void *)pb_empty;
    if (!u) return pb_fail_rv(err, CKR_HOST_MEMORY);
    for (uint32_t i = 0; i < m; i++)
      if (pb_unpack_ulong(&v->via.array.ptr[i], &u[i], &sub) != PB_OK) return pb_fail(err, "%s", sub.msg);
    a->pValue = u;
    a->ulValueLen = m * sizeof(CK_ULONG);
    return PB_OK;
  }
  case PB_AK_TEMPLATE: {
    if (v->type != MSGPACK_OBJECT_ARRAY) { want = "a template"; break; }
    if (depth >= (int)PB_MAX_NESTING) { want = "a template no more than one level deep"; break; }
    CK_ATTRIBUTE *nt;
    CK_ULONG nn;
    int r = unpack_attrs(v, &nt, &nn, ar, err, depth + 1);
    if (r != PB_OK) return r;
    a->pValue = nt;
    a->ulValueLen = nn * sizeof(CK_ATTRIBUTE);
    return PB_OK;
  }
  }
  snprintf(err->msg, sizeof err->msg, "attribute 0x%lx (%s) must be %s, got %s", (unsigned long)a->type,
           attr_kind_name(kind), want ? want : "?", pb_type_name(v));
  err->rv = CKR_ATTRIBUTE_VALUE_INVALID;
  return PB_RV;
}

/* [[type, value], ...] -> a CK_ATTRIBUTE array in the arena; [] is a
 * non-NULL pointer with count 0 (nil, a NULL template, is the caller's). */
static int unpack_attrs(const msgpack_object *o, CK_ATTRIBUTE **t, CK_ULONG *n, pb_arena *ar,
                        pb_err *err, int depth) {
  const char *what = depth ? "nested template" : "template";
  if (o->type != MSGPACK_OBJECT_ARRAY) return pb_fail(err, "expected %s, got %s", what, pb_type_name(o));
  uint32_t cnt = o->via.array.size;
  if (cnt > PB_MAX_TEMPLATE)
    return pb_fail(err, "%s of %u attributes exceeds %lu", what, (unsigned)cnt, PB_MAX_TEMPLATE);
  *t = (CK_ATTRIBUTE *)(void *)pb_empty;
  *n = 0;
  if (cnt == 0) return PB_OK;
  CK_ATTRIBUTE *attrs = pb_arena_alloc(ar, (size_t)cnt * sizeof(CK_ATTRIBUTE));
  if (!attrs) return pb_fail_rv(err, CKR_HOST_MEMORY);
  for (uint32_t i = 0; i < cnt; i++) {
    const msgpack_object *e = &o->via.array.ptr[i];
    pb_err sub;
    if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
        pb_unpack_ulong(&e->via.array.ptr[0], &attrs[i].type, &sub) != PB_OK)
      return pb_fail(err, "%s attribute %u: expected [type, value], got %s", what, (unsigned)i + 1,
                     e->type == MSGPACK_OBJECT_ARRAY ? "another array" : pb_type_name(e));
    int r = unpack_value(&e->via.array.ptr[1], &attrs[i], ar, &sub, depth);
    if (r == PB_RV) {
      err->rv = sub.rv;
      snprintf(err->msg, sizeof err->msg, "%s attribute %u: %.260s", what, (unsigned)i + 1, sub.msg);
      return r;
    }
    if (r != PB_OK)
      return pb_fail(err, "%s attribute %u (type 0x%lx): %.250s", what, (unsigned)i + 1,
                     (unsigned long)attrs[i].type, sub.msg);
  }
  *t = attrs;
  *n = cnt;
  return PB_OK;
}

int pb_unpack_template(const msgpack_object *o, CK_ATTRIBUTE **t, CK_ULONG *n, pb_arena *ar,
                       pb_err *err) {
  if (o->type == MSGPACK_OBJECT_NIL) { /* a NULL template */
    *t = NULL;
    *n = 0;
    return PB_OK;
  }
  return unpack_attrs(o, t, n, ar, err, 0);
}

int pb_pack_attr_value(msgpack_packer *pk, CK_ATTRIBUTE_TYPE type, const void *p, CK_ULONG len, int depth) {
  if (!p) return msgpack_pack_nil(pk);
  switch (pb_attr_kind_of(type)) {
  case PB_AK_ULONG:
    if (len == sizeof(CK_ULONG)) {
      CK_ULONG v;
      memcpy(&v, p, sizeof v);
      return pb_pack_ulong(pk, v);
    }
    break;
  case PB_AK_BOOL:
    if (len == sizeof(CK_BBOOL)) return *(const CK_BBOOL *)p ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    break;
  case PB_AK_ULONGLIST:
    if (len % sizeof(CK_ULONG) == 0) {
      size_t m = len / sizeof(CK_ULONG);
      int r = msgpack_pack_array(pk, m);
      for (size_t i = 0; r == 0 && i < m; i++) {
        CK_ULONG v;
        memcpy(&v, (const char *)p + i * sizeof v, sizeof v);
        r = pb_pack_ulong(pk, v);
      }
      return r;
    }
    break;
  case PB_AK_TEMPLATE:
    if (depth == 0 && len % sizeof(CK_ATTRIBUTE) == 0) {
      size_t m = len / sizeof(CK_ATTRIBUTE);
      const CK_ATTRIBUTE *t = p;
      int r = msgpack_pack_array(pk, m);
      for (size_t i = 0; r == 0 && i < m; i++) {
        r = msgpack_pack_array(pk, 2);
        if (r == 0) r = pb_pack_ulong(pk, t[i].type);
        if (r != 0) break;
        if (t[i].ulValueLen == CK_UNAVAILABLE_INFORMATION || !t[i].pValue)
          r = msgpack_pack_nil(pk);
        else
          r = pb_pack_attr_value(pk, t[i].type, t[i].pValue, t[i].ulValueLen, depth + 1);
      }
      return r;
    }
    break;
  case PB_AK_BYTES:
  case PB_AK_DATE:
    break;
  }
  return pb_pack_bytes(pk, p, len);
}

int pb_pack_template(msgpack_packer *pk, const CK_ATTRIBUTE *t, CK_ULONG n) {
  if (!t) return msgpack_pack_nil(pk); /* NULL travels as nil, an empty array as [] */
  int r = msgpack_pack_array(pk, n);
  for (CK_ULONG i = 0; r == 0 && i < n; i++) {
    r = msgpack_pack_array(pk, 2);
    if (r == 0) r = pb_pack_ulong(pk, t[i].type);
    if (r == 0) r = pb_pack_attr_value(pk, t[i].type, t[i].pValue, t[i].ulValueLen, 0);
  }
  return r;
}

static CK_RV check_attrs(const CK_ATTRIBUTE *t, CK_ULONG n, size_t limit, int depth) {
  if (n > PB_MAX_TEMPLATE) return CKR_ARGUMENTS_BAD;
  if (!t && n) return CKR_ARGUMENTS_BAD;
  for (CK_ULONG i = 0; i < n; i++) {
    const CK_ATTRIBUTE *a = &t[i];
    if (!a->pValue) {
      if (a->ulValueLen && a->ulValueLen != CK_UNAVAILABLE_INFORMATION) return CKR_ARGUMENTS_BAD;
      continue;
    }
    if (a->ulValueLen > limit) return CKR_ARGUMENTS_BAD;
    if (depth == 0 && pb_attr_kind_of(a->type) == PB_AK_TEMPLATE && a->ulValueLen % sizeof(CK_ATTRIBUTE) == 0) {
      CK_RV rv = check_attrs(a->pValue, a->ulValueLen / sizeof(CK_ATTRIBUTE), limit, 1);
      if (rv != CKR_OK) return rv;
    }
  }
  return CKR_OK;
}

CK_RV pb_check_template(const CK_ATTRIBUTE *t, CK_ULONG n, size_t limit) {
  return check_attrs(t, n, limit, 0);
}

int pb_pack_attrquery(msgpack_packer *pk, const CK_ATTRIBUTE *t, CK_ULONG n) {
  if (!t) return msgpack_pack_nil(pk);
  int r = msgpack_pack_array(pk, n);
  for (CK_ULONG i = 0; r == 0 && i < n; i++) {
    r = msgpack_pack_array(pk, 2);
    if (r == 0) r = pb_pack_ulong(pk, t[i].type);
    if (r == 0) r = t[i].pValue ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
  }
  return r;
}

/* an array whose first element is an array: a nested template */
static int is_nested(const msgpack_object *v) {
  return v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size > 0 &&
         v->via.array.ptr[0].type == MSGPACK_OBJECT_ARRAY;
}

int pb_attr_value_host_len(const msgpack_object *v, CK_ULONG *len, int depth, pb_err *err) {
  switch (v->type) {
  case MSGPACK_OBJECT_BOOLEAN: *len = sizeof(CK_BBOOL); return PB_OK;
  case MSGPACK_OBJECT_POSITIVE_INTEGER: {
    CK_ULONG u;
    if (pb_unpack_ulong(v, &u, err) != PB_OK) return PB_MALFORMED;
    *len = sizeof(CK_ULONG);
    return PB_OK;
  }
  case MSGPACK_OBJECT_BIN: *len = v->via.bin.size; return PB_OK;
  case MSGPACK_OBJECT_ARRAY: {
    uint32_t n = v->via.array.size;
    if (n > PB_MAX_TEMPLATE) return pb_fail(err, "array of %u elements, limit %lu", (unsigned)n, PB_MAX_TEMPLATE);
    if (is_nested(v)) {
      if (depth > 0) return pb_fail(err, "templates nest only one level deep");
      for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        CK_ULONG t, l;
        if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 2 ||
            pb_unpack_ulong(&e->via.array.ptr[0], &t, err) != PB_OK)
          return pb_fail(err, "nested attribute %u: expected [type, value]", (unsigned)i + 1);
        if (e->via.array.ptr[1].type != MSGPACK_OBJECT_NIL &&
            pb_attr_value_host_len(&e->via.array.ptr[1], &l, depth + 1, err) != PB_OK)
          return PB_MALFORMED;
      }
      *len = (CK_ULONG)n * sizeof(CK_ATTRIBUTE);
      return PB_OK;
    }
    for (uint32_t i = 0; i < n; i++) {
      CK_ULONG u;
      if (pb_unpack_ulong(&v->via.array.ptr[i], &u, err) != PB_OK) return PB_MALFORMED;
    }
    *len = (CK_ULONG)n * sizeof(CK_ULONG);
    return PB_OK;
  }
  default:
    return pb_fail(err, "expected an attribute value, got %s", pb_type_name(v));
  }
}

/* Typed value v into the caller's attribute a (pValue non-NULL, capacity
 * ulValueLen). Validated by pb_attr_value_host_len first. */
static int attr_value_to_host(const msgpack_object *v, CK_ATTRIBUTE *a, int depth, int *too_small,
                              pb_err *err) {
  CK_ULONG need;
  if (pb_attr_value_host_len(v, &need, depth, err) != PB_OK) return PB_MALFORMED;
  if (is_nested(v)) {
    /* depth 0 only (checked above): fill the caller's CK_ATTRIBUTE array */
    CK_ULONG cap = a->ulValueLen / sizeof(CK_ATTRIBUTE), n = v->via.array.size;
    if (n > cap) {
      a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      *too_small = 1;
      return PB_OK;
    }
    CK_ATTRIBUTE *ct = a->pValue;
    int positional = 1; /* a caller array of NULL values: give it types and lengths */
    for (CK_ULONG k = 0; k < cap; k++)
      if (ct[k].pValue) positional = 0;
    for (CK_ULONG j = 0; j < n; j++) {
      const msgpack_object *e = &v->via.array.ptr[j];
      CK_ULONG type = 0;
      pb_unpack_ulong(&e->via.array.ptr[0], &type, err);
      const msgpack_object *ev = &e->via.array.ptr[1];
      CK_ATTRIBUTE *dst = NULL;
      if (positional) {
        dst = &ct[j];
        dst->type = type;
      } else {
        for (CK_ULONG k = 0; k < cap && !dst; k++)
          if (ct[k].type == type) dst = &ct[k];
        if (!dst) continue; /* best effort: the caller did not ask for it */
      }
      if (ev->type == MSGPACK_OBJECT_NIL) {
        dst->ulValueLen = CK_UNAVAILABLE_INFORMATION;
      } else if (!dst->pValue) {
        pb_attr_value_host_len(ev, &dst->ulValueLen, 1, err);
      } else if (attr_value_to_host(ev, dst, 1, too_small, err) != PB_OK) {
        return PB_MALFORMED;
      }
    }
    a->ulValueLen = n * sizeof(CK_ATTRIBUTE);
    return PB_OK;
  }
  if (need > a->ulValueLen) {
    a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
    *too_small = 1;
    return PB_OK;
  }
  unsigned char *dst = a->pValue;
  switch (v->type) {
  case MSGPACK_OBJECT_BOOLEAN: *dst = v->via.boolean ? CK_TRUE : CK_FALSE; break;
  case MSGPACK_OBJECT_POSITIVE_INTEGER: {
    CK_ULONG u = 0;
    pb_unpack_ulong(v, &u, err);
    memcpy(dst, &u, sizeof u);
    break;
  }
  case MSGPACK_OBJECT_BIN:
    if (need) memcpy(dst, v->via.bin.ptr, need);
    break;
  case MSGPACK_OBJECT_ARRAY:
    for (uint32_t i = 0; i < v->via.array.size; i++) {
      CK_ULONG u = 0;
      pb_unpack_ulong(&v->via.array.ptr[i], &u, err);
      memcpy(dst + i * sizeof u, &u, sizeof u);
    }
    break;
  default:
    return pb_fail(err, "unexpected value type %s", pb_type_name(v));
  }
  a->ulValueLen = need;
  return PB_OK;
}

int pb_unpack_attrvalues(const msgpack_object *o, CK_ATTRIBUTE *t, CK_ULONG n, int *too_small,
                         pb_err *err) {
  if (o->type != MSGPACK_OBJECT_ARRAY) return pb_fail(err, "expected array, got %s", pb_type_name(o));
  if (o->via.array.size != n)
    return pb_fail(err, "%u values for %lu attributes", (unsigned)o->via.array.size, (unsigned long)n);
  /* validate everything before writing anything */
  for (CK_ULONG i = 0; i < n; i++) {
    const msgpack_object *v = &o->via.array.ptr[i];
    CK_ULONG l;
    if (v->type == MSGPACK_OBJECT_NIL) continue;
    if (!t[i].pValue) {
      if (pb_unpack_ulong(v, &l, err) != PB_OK)
        return pb_fail(err, "attribute %lu: expected a length", (unsigned long)i + 1);
    } else if (pb_attr_value_host_len(v, &l, 0, err) != PB_OK) {
      return pb_fail(err, "attribute %lu: %.200s", (unsigned long)i + 1, err->msg);
    }
  }
  for (CK_ULONG i = 0; i < n; i++) {
    const msgpack_object *v = &o->via.array.ptr[i];
    CK_ATTRIBUTE *a = &t[i];
    if (v->type == MSGPACK_OBJECT_NIL) {
      a->ulValueLen = CK_UNAVAILABLE_INFORMATION;
    } else if (!a->pValue) {
      CK_ULONG l = 0;
      pb_unpack_ulong(v, &l, err);
      size_t unit = 1;
      switch (pb_attr_kind_of(a->type)) {
      case PB_AK_ULONG: l = 1; unit = sizeof(CK_ULONG); break; /* this host's sizes */
      case PB_AK_BOOL: l = 1; unit = sizeof(CK_BBOOL); break;
      case PB_AK_ULONGLIST: unit = sizeof(CK_ULONG); break;
      case PB_AK_TEMPLATE: unit = sizeof(CK_ATTRIBUTE); break;
      case PB_AK_BYTES: case PB_AK_DATE: break;
      }
      if (l == CK_UNAVAILABLE_INFORMATION) {
        a->ulValueLen = l;
      } else {
        if (unit > 1 && l > (CK_UNAVAILABLE_INFORMATION - 1) / unit)
          return pb_fail(err, "attribute %lu: length %lu out of range", (unsigned long)i + 1, (unsigned long)l);
        a->ulValueLen = l * unit;
      }
    } else if (attr_value_to_host(v, a, 0, too_small, err) != PB_OK) {
      return PB_MALFORMED;
    }
  }
  return PB_OK;
}

/* ------------------------------------------------------------------ message level */

/* The same walk as src/protocol/msgpack.ts checkStructure, so both decoders
 * refuse the same bytes: one value and nothing after it; no extension
 * types, floats or 0xc1; map keys that are not containers; nesting at most
 * PB_MAX_DEPTH; no declared length or element count beyond the bytes that
 * remain. Nothing is allocated. */
int pb_prescan(const unsigned char *buf, size_t len, pb_err *err) {
  uint64_t pending[PB_MAX_DEPTH + 1]; /* values still to read per open level (a map counts keys and values) */
  unsigned char is_map[PB_MAX_DEPTH + 1];
  int top = 0;
  size_t pos = 0;
  pending[0] = 1;
  is_map[0] = 0;
  for (;;) {
    while (pending[top] == 0)
      if (--top < 0) return pos == len ? 0 : pb_fail(err, "%zu bytes after the MessagePack value", len - pos);
    int is_key = is_map[top] && pending[top] % 2 == 0;
    pending[top]--;
    if (pos >= len) return pb_fail(err, "truncated MessagePack");
    unsigned char b = buf[pos++];
    uint64_t skip = 0, items = 0;
    int container = 0, map = 0;
    size_t lenbytes = 0;
    int kind = 0; /* 1: bytes follow the length; 3: array; 4: map */
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
      /* fixint, nil, bool */
    } else if (b >= 0x80 && b <= 0x8f) {
      container = map = 1;
      items = 2u * (b & 0x0f);
    } else if (b >= 0x90 && b <= 0x9f) {
      container = 1;
      items = b & 0x0f;
    } else if (b >= 0xa0 && b <= 0xbf) {
      skip = b & 0x1f;
    } else {
      switch (b) {
      case 0xc4: case 0xd9: kind = 1; lenbytes = 1; break;
      case 0xc5: case 0xda: kind = 1; lenbytes = 2; break;
      case 0xc6: case 0xdb: kind = 1; lenbytes = 4; break;
      case 0xcc: case 0xd0: skip = 1; break;
      case 0xcd: case 0xd1: skip = 2; break;
      case 0xce: case 0xd2: skip = 4; break;
      case 0xcf: case 0xd3: skip = 8; break;
      case 0xdc: kind = 3; lenbytes = 2; break;
      case 0xdd: kind = 3; lenbytes = 4; break;
      case 0xde: kind = 4; lenbytes = 2; break;
      case 0xdf: kind = 4; lenbytes = 4; break;
      case 0xc1: return pb_fail(err, "MessagePack byte 0xc1 (never used) at offset %zu", pos - 1);
      case 0xca: case 0xcb: return pb_fail(err, "MessagePack floats are not part of the protocol (offset %zu)", pos - 1);
      default: return pb_fail(err, "MessagePack extension types are not part of the protocol (offset %zu)", pos - 1);
      }
    }
    if (lenbytes) {
      if (len - pos < lenbytes) return pb_fail(err, "truncated MessagePack");
      uint64_t v = 0;
      for (size_t i = 0; i < lenbytes; i++) v = (v << 8) | buf[pos + i];
      pos += lenbytes;
      if (kind == 1) skip = v;
      else if (kind == 3) container = 1, items = v;
      else container = map = 1, items = 2 * v;
    }
    if (skip > len - pos) return pb_fail(err, "truncated MessagePack (a length beyond the bytes that remain)");
    pos += (size_t)skip;
    if (!container) continue;
    if (is_key) return pb_fail(err, "a MessagePack map key that is an array or a map");
    if (items > len - pos)
      return pb_fail(err, "truncated MessagePack (a container declares more elements than bytes remain)");
    if (items == 0) continue;
    if (top + 1 >= (int)PB_MAX_DEPTH) return pb_fail(err, "MessagePack nested deeper than %lu levels", PB_MAX_DEPTH);
    top++;
    pending[top] = items;
    is_map[top] = (unsigned char)map;
  }
}

int pb_pack_error_map(msgpack_packer *pk, CK_RV rv, const char *msg) {
  size_t ml = strlen(msg);
  int r = msgpack_pack_map(pk, 2);
  if (r == 0) r = msgpack_pack_str_with_body(pk, "rv", 2);
  if (r == 0) r = pb_pack_ulong(pk, rv);
  if (r == 0) r = msgpack_pack_str_with_body(pk, "message", 7);
  if (r == 0) r = msgpack_pack_str_with_body(pk, msg, ml);
  return r;
}
