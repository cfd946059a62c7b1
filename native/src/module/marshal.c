/* marshal.c: libp11bridge's generic marshaller. Walks a call descriptor of
 * pb_calls (generated from protocol.json) and converts the caller's C
 * parameters to a CALL payload and a RESULT payload back into the caller's
 * memory, kind by kind, through the shared codecs of wire.c. No per-call
 * code: the generated entry points (module_stubs.c) only fill the slots. */
#include "client.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ bounded buffer */

int pb_lbuf_write(void *data, const char *buf, size_t len) {
  pb_lbuf *b = data;
  if (len > b->limit - b->size) return -1; /* beyond the payload limit: refuse, never read further */
  if (b->size + len > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->size + len) cap *= 2;
    if (cap > b->limit) cap = b->limit;
    char *d = realloc(b->data, cap);
    if (!d) return -1;
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->size, buf, len);
  b->size += len;
  return 0;
}

void pb_lbuf_free(pb_lbuf *b) {
  free(b->data);
  b->data = NULL;
  b->size = b->cap = 0;
}

/* ------------------------------------------------------------------ arguments */

static int is_ulong_kind(pb_kind k) {
  return k == PB_K_ULONG || k == PB_K_SLOT || k == PB_K_SESSION || k == PB_K_OBJECT;
}
static int is_struct_kind(pb_kind k) {
  return k == PB_K_INFO || k == PB_K_SLOTINFO || k == PB_K_TOKENINFO || k == PB_K_SESSIONINFO ||
         k == PB_K_MECHINFO;
}
static const pb_struct_desc *struct_desc(pb_kind k) {
  switch (k) {
  case PB_K_INFO: return &pb_struct_info;
  case PB_K_SLOTINFO: return &pb_struct_slotinfo;
  case PB_K_TOKENINFO: return &pb_struct_tokeninfo;
  case PB_K_SESSIONINFO: return &pb_struct_sessioninfo;
  case PB_K_MECHINFO: return &pb_struct_mechinfo;
  default: return NULL;
  }
}

CK_RV pb_client_check(const pb_call *c, const pb_cslot *a, size_t limit) {
  for (unsigned i = 0; i < c->nargs; i++) {
    const pb_cslot *s = &a[c->args[i].slot];
    CK_RV rv = CKR_OK;
    switch (c->args[i].kind) {
    case PB_K_BYTES:
    case PB_K_OUTFIXED:
      if ((!s->p && s->len) || s->len > limit) rv = CKR_ARGUMENTS_BAD;
      break;
    case PB_K_LABEL:
      if (!s->p) rv = CKR_ARGUMENTS_BAD;
      break;
    case PB_K_MECHANISM:
      rv = pb_check_mechanism(s->mech, limit);
      break;
    case PB_K_TEMPLATE:
      rv = pb_check_template(s->tmpl, s->count, limit);
      break;
    case PB_K_ATTRQUERY:
      if ((!s->tmpl && s->count) || s->count > PB_MAX_TEMPLATE) rv = CKR_ARGUMENTS_BAD;
      break;
    case PB_K_OUTBYTES:
      if (!s->lenp) rv = CKR_ARGUMENTS_BAD;
      break;
    case PB_K_OUTLIST:
      if (!s->lenp && s->mode != PB_CS_AUTO) rv = CKR_ARGUMENTS_BAD;
      break;
    default:
      break;
    }
    if (rv != CKR_OK) return rv;
  }
  for (unsigned i = 0; i < c->nres; i++) {
    const pb_param *p = &c->res[i];
    if (p->slot < c->nargs) continue; /* the output half of an argument, checked above */
    const pb_cslot *s = &a[p->slot];
    if (is_ulong_kind(p->kind) && !s->ulp) return CKR_ARGUMENTS_BAD;
    if (is_struct_kind(p->kind) && !s->out) return CKR_ARGUMENTS_BAD;
    if (p->kind == PB_K_OBJECTLIST && (!s->lenp || (!s->ulp && a[p->aux].ul))) return CKR_ARGUMENTS_BAD;
  }
  return CKR_OK;
}

/* The same rules, from the same information (what travels on the wire), as
 * src/protocol/codec.ts expectedResultBytes: the golden vectors hold the
 * answer size both must compute for each request. */
size_t pb_client_expected_len(const pb_call *c, const pb_cslot *a, size_t limit) {
  size_t n = 16; /* [rv, ...] */
#define PB_MIN(x, y) ((x) < (y) ? (x) : (y))
  for (unsigned i = 0; i < c->nres; i++) {
    const pb_param *p = &c->res[i];
    const pb_cslot *s = &a[p->slot];
    size_t k = 9;
    switch (p->kind) {
    case PB_K_OUTBYTES:
      if (s->p && s->lenp) k = PB_MIN((size_t)*s->lenp, limit) + 5;
      break;
    case PB_K_OUTLIST:
      if (s->mode == PB_CS_AUTO) k = 1024;
      else if (s->ulp && s->lenp) k = (*s->lenp > limit / 9 ? limit : (size_t)*s->lenp * 9) + 5;
      break;
    case PB_K_OBJECTLIST:
      k = (a[p->aux].ul > limit / 9 ? limit : (size_t)a[p->aux].ul * 9) + 5;
      break;
    case PB_K_OUTFIXED:
      if (s->p) k = PB_MIN((size_t)s->len, limit) + 5;
      break;
    case PB_K_ATTRVALUES:
      k = 5 + (s->tmpl ? (size_t)s->count * (10 + 256) : 0);
      break;
    case PB_K_INFO: case PB_K_SLOTINFO: case PB_K_TOKENINFO: case PB_K_SESSIONINFO: case PB_K_MECHINFO:
      k = 256;
      break;
    default:
      break;
    }
    n += k;
    if (n >= limit) return limit;
  }
#undef PB_MIN
  return n;
}

int pb_client_encode(msgpack_packer *pk, const pb_call *c, const pb_cslot *a) {
  int r = msgpack_pack_array(pk, 1 + c->nargs);
  if (r == 0) r = msgpack_pack_uint64(pk, c->id);
  for (unsigned i = 0; r == 0 && i < c->nargs; i++) {
    const pb_cslot *s = &a[c->args[i].slot];
    switch (c->args[i].kind) {
    case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT:
      r = pb_pack_ulong(pk, s->ul);
      break;
    case PB_K_BOOL: r = s->b ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
    case PB_K_BYTES: r = pb_pack_bytes(pk, s->p, s->len); break;
    case PB_K_LABEL: r = pb_pack_bytes(pk, s->p, 32); break;
    case PB_K_MECHANISM: r = pb_pack_mechanism(pk, s->mech); break;
    case PB_K_TEMPLATE: r = pb_pack_template(pk, s->tmpl, s->count); break;
    case PB_K_ATTRQUERY: r = pb_pack_attrquery(pk, s->tmpl, s->count); break;
    case PB_K_OUTBYTES: r = s->p ? pb_pack_ulong(pk, *s->lenp) : msgpack_pack_nil(pk); break;
    case PB_K_OUTLIST:
      if (s->mode == PB_CS_AUTO) r = msgpack_pack_true(pk);
      else r = s->ulp ? pb_pack_ulong(pk, *s->lenp) : msgpack_pack_nil(pk);
      break;
    case PB_K_OUTFIXED: r = s->p ? pb_pack_ulong(pk, s->len) : msgpack_pack_nil(pk); break;
    default: r = -1; break;
    }
  }
  return r;
}

/* ------------------------------------------------------------------ results */

static int ulong_array_into(const msgpack_object *o, CK_ULONG *dst, CK_ULONG cap, CK_ULONG *n,
                            pb_err *err) {
  uint32_t m = o->via.array.size;
  if (m > cap) return pb_fail(err, "%u elements for a capacity of %lu", (unsigned)m, (unsigned long)cap);
  for (uint32_t i = 0; i < m; i++) {
    CK_ULONG u;
    if (pb_unpack_ulong(&o->via.array.ptr[i], &u, err) != PB_OK) return PB_MALFORMED;
    dst[i] = u;
  }
  *n = m;
  return PB_OK;
}

static int decode_result(const pb_call *c, const pb_param *p, pb_cslot *a, const msgpack_object *o,
                         CK_RV rv, int *too_small, pb_err *err) {
  pb_cslot *s = &a[p->slot];
  CK_ULONG u;
  switch (p->kind) {
  case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT:
    if (pb_unpack_ulong(o, &u, err) != PB_OK) return PB_MALFORMED;
    *s->ulp = u;
    return PB_OK;
  case PB_K_INFO: case PB_K_SLOTINFO: case PB_K_TOKENINFO: case PB_K_SESSIONINFO: case PB_K_MECHINFO: {
    const pb_struct_desc *d = struct_desc(p->kind);
    union {
      CK_INFO info;
      CK_SLOT_INFO slotinfo;
      CK_TOKEN_INFO tokeninfo;
      CK_SESSION_INFO sessioninfo;
      CK_MECHANISM_INFO mechinfo;
    } tmp;
    memset(&tmp, 0, sizeof tmp);
    if (pb_unpack_struct(o, d, &tmp, err) != PB_OK) return PB_MALFORMED;
    memcpy(s->out, &tmp, d->size);
    return PB_OK;
  }
  case PB_K_OUTBYTES:
    if (o->type == MSGPACK_OBJECT_BIN) {
      if (!s->p || rv != CKR_OK) return pb_fail(err, "data where a length was expected");
      if (o->via.bin.size > *s->lenp)
        return pb_fail(err, "%u bytes for a buffer of %lu", (unsigned)o->via.bin.size, (unsigned long)*s->lenp);
      if (o->via.bin.size) memcpy(s->p, o->via.bin.ptr, o->via.bin.size);
      *s->lenp = o->via.bin.size;
      return PB_OK;
    }
    if (pb_unpack_ulong(o, &u, err) != PB_OK) return PB_MALFORMED;
    if (s->p && rv == CKR_OK) return pb_fail(err, "a length where data was expected");
    *s->lenp = u;
    return PB_OK;
  case PB_K_OUTLIST:
    if (o->type == MSGPACK_OBJECT_ARRAY) {
      if (!s->ulp || rv != CKR_OK) return pb_fail(err, "a list where a count was expected");
      return ulong_array_into(o, s->ulp, *s->lenp, s->lenp, err);
    }
    if (pb_unpack_ulong(o, &u, err) != PB_OK) return PB_MALFORMED;
    if (s->ulp && rv == CKR_OK && s->mode != PB_CS_AUTO) return pb_fail(err, "a count where a list was expected");
    *s->lenp = u;
    return PB_OK;
  case PB_K_OBJECTLIST:
    if (o->type != MSGPACK_OBJECT_ARRAY) return pb_fail(err, "expected array, got %s", pb_type_name(o));
    return ulong_array_into(o, s->ulp, a[p->aux].ul, s->lenp, err);
  case PB_K_OUTFIXED:
    if (!s->p && o->type == MSGPACK_OBJECT_NIL) return PB_OK; /* a NULL buffer */
    if (o->type != MSGPACK_OBJECT_BIN || o->via.bin.size != s->len)
      return pb_fail(err, "expected bin of %lu bytes", (unsigned long)s->len);
    if (s->len) memcpy(s->p, o->via.bin.ptr, s->len);
    return PB_OK;
  case PB_K_ATTRVALUES:
    return pb_unpack_attrvalues(o, s->tmpl, s->count, too_small, err);
  default:
    return pb_fail(err, "%s: kind %s cannot be a result", c->name, pb_kind_name(p->kind));
  }
}

int pb_client_decode(const pb_call *c, pb_cslot *a, const unsigned char *payload, size_t len,
                     CK_RV *rvp, pb_err *err) {
  if (pb_prescan(payload, len, err) != 0) return PB_MALFORMED;
  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  size_t off = 0;
  int ret = PB_MALFORMED;
  if (msgpack_unpack_next(&up, (const char *)payload, len, &off) != MSGPACK_UNPACK_SUCCESS) {
    pb_fail(err, "not a MessagePack value");
    goto out;
  }
  const msgpack_object *o = &up.data;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size == 0) {
    pb_fail(err, "RESULT payload is not [rv, results...]");
    goto out;
  }
  CK_RV rv;
  if (pb_unpack_ulong(&o->via.array.ptr[0], &rv, err) != PB_OK) {
    pb_fail(err, "rv is not an unsigned int");
    goto out;
  }
  uint32_t n = o->via.array.size;
  if (n == 1) {
    if (rv == CKR_OK && c->nres > 0) {
      pb_fail(err, "CKR_OK without results");
      goto out;
    }
    *rvp = rv;
    ret = PB_OK;
    goto out;
  }
  if (rv != CKR_OK && !pb_call_is_partial(c, rv)) {
    pb_fail(err, "results with rv 0x%lx", (unsigned long)rv);
    goto out;
  }
  if (n != 1 + c->nres) {
    pb_fail(err, "%u results, the call has %u", (unsigned)n - 1, c->nres);
    goto out;
  }
  int too_small = 0;
  for (unsigned i = 0; i < c->nres; i++) {
    pb_err sub;
    if (decode_result(c, &c->res[i], a, &o->via.array.ptr[i + 1], rv, &too_small, &sub) != PB_OK) {
      pb_fail(err, "result %u (%s): %.250s", i + 1, c->res[i].name, sub.msg);
      goto out;
    }
  }
  if (too_small && rv == CKR_OK) rv = CKR_BUFFER_TOO_SMALL;
  *rvp = rv;
  ret = PB_OK;
out:
  msgpack_unpacked_destroy(&up);
  return ret;
}

/* ------------------------------------------------------------------ handshake */

static int pack_str(msgpack_packer *pk, const char *s) {
  return msgpack_pack_str_with_body(pk, s, strlen(s));
}

int pb_pack_hello(msgpack_packer *pk, unsigned vmin, unsigned vmax, uint32_t nonce, uint64_t max_payload,
                  const char *client) {
  int r = msgpack_pack_map(pk, 4);
  if (r == 0) r = pack_str(pk, "versions");
  if (r == 0) r = msgpack_pack_array(pk, 2);
  if (r == 0) r = msgpack_pack_uint64(pk, vmin);
  if (r == 0) r = msgpack_pack_uint64(pk, vmax);
  if (r == 0) r = pack_str(pk, "nonce");
  if (r == 0) r = msgpack_pack_uint64(pk, nonce);
  if (r == 0) r = pack_str(pk, "maxPayload");
  if (r == 0) r = msgpack_pack_uint64(pk, max_payload);
  if (r == 0) r = pack_str(pk, "client");
  if (r == 0) r = pack_str(pk, client);
  return r;
}

static int key_is(const msgpack_object *k, const char *s) {
  size_t n = strlen(s);
  return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, s, n) == 0;
}

static int unpack_map(const unsigned char *payload, size_t len, msgpack_unpacked *up, pb_err *err) {
  if (pb_prescan(payload, len, err) != 0) return PB_MALFORMED;
  size_t off = 0;
  if (msgpack_unpack_next(up, (const char *)payload, len, &off) != MSGPACK_UNPACK_SUCCESS)
    return pb_fail(err, "not a MessagePack value");
  if (up->data.type != MSGPACK_OBJECT_MAP) return pb_fail(err, "expected a map, got %s", pb_type_name(&up->data));
  return PB_OK;
}

static int u64_of(const msgpack_object *o, uint64_t *v) {
  if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return -1;
  *v = o->via.u64;
  return 0;
}

int pb_unpack_hello_ok(const unsigned char *payload, size_t len, pb_hello_ok *h, pb_err *err) {
  memset(h, 0, sizeof *h);
  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  int ret = unpack_map(payload, len, &up, err);
  int have_version = 0, have_max = 0, have_info = 0, have_functions = 0, have_key = 0, have_nonce = 0;
  if (ret != PB_OK) goto out;
  ret = PB_MALFORMED;
  const msgpack_object_map *m = &up.data.via.map;
  for (uint32_t i = 0; i < m->size; i++) {
    const msgpack_object *k = &m->ptr[i].key, *v = &m->ptr[i].val;
    if (key_is(k, "version")) {
      if (u64_of(v, &h->version)) { pb_fail(err, "version: expected int"); goto out; }
      have_version = 1;
    } else if (key_is(k, "maxPayload")) {
      if (u64_of(v, &h->max_payload) || h->max_payload == 0) { pb_fail(err, "maxPayload: expected positive int"); goto out; }
      have_max = 1;
    } else if (key_is(k, "nonce")) {
      uint64_t nv;
      if (u64_of(v, &nv) || nv == 0 || nv > UINT32_MAX) { pb_fail(err, "nonce: expected an int of 1 .. 2^32-1"); goto out; }
      h->nonce = (uint32_t)nv;
      have_nonce = 1;
    } else if (key_is(k, "key")) {
      uint64_t kv;
      if (u64_of(v, &kv) || kv == 0 || kv > UINT32_MAX) { pb_fail(err, "key: expected an int of 1 .. 2^32-1"); goto out; }
      h->key = (uint32_t)kv;
      have_key = 1;
    } else if (key_is(k, "leaseMs")) {
      if (u64_of(v, &h->lease_ms)) { pb_fail(err, "leaseMs: expected int"); goto out; }
    } else if (key_is(k, "server")) {
      if (v->type != MSGPACK_OBJECT_STR || v->via.str.size > 200) { pb_fail(err, "server: expected a string"); goto out; }
      memcpy(h->server, v->via.str.ptr, v->via.str.size);
      h->server[v->via.str.size] = 0;
    } else if (key_is(k, "module")) {
      if (v->type != MSGPACK_OBJECT_MAP) { pb_fail(err, "module: expected a map"); goto out; }
      for (uint32_t j = 0; j < v->via.map.size; j++) {
        const msgpack_object *k2 = &v->via.map.ptr[j].key, *v2 = &v->via.map.ptr[j].val;
        if (key_is(k2, "info")) {
          pb_err sub;
          if (pb_unpack_struct(v2, &pb_struct_info, &h->info, &sub) != PB_OK) {
            pb_fail(err, "module.info: %.250s", sub.msg);
            goto out;
          }
          have_info = 1;
        } else if (key_is(k2, "functions")) {
          if (v2->type != MSGPACK_OBJECT_ARRAY) { pb_fail(err, "module.functions: expected an array"); goto out; }
          for (uint32_t f = 0; f < v2->via.array.size; f++) {
            uint64_t id;
            if (u64_of(&v2->via.array.ptr[f], &id) || id > UINT32_MAX) { pb_fail(err, "module.functions: expected ints"); goto out; }
            if (id >= 1 && id <= PB_NCALLS) h->functions[id] = 1;
            if (h->nfunctions < sizeof h->function_ids / sizeof h->function_ids[0])
              h->function_ids[h->nfunctions++] = (uint32_t)id;
          }
          have_functions = 1;
        }
      }
    }
  }
  if (!have_version || !have_max || !have_info || !have_functions || !have_key || !have_nonce) {
    pb_fail(err, "HELLO_OK lacks %s", !have_version ? "version" : !have_max ? "maxPayload" : !have_key ? "key" : !have_nonce ? "nonce"
                                     : !have_info ? "module.info" : "module.functions");
    goto out;
  }
  ret = PB_OK;
out:
  msgpack_unpacked_destroy(&up);
  return ret;
}

int pb_unpack_error(const unsigned char *payload, size_t len, CK_RV *rv, char *message,
                    size_t msglen, pb_err *err) {
  msgpack_unpacked up;
  msgpack_unpacked_init(&up);
  int ret = unpack_map(payload, len, &up, err);
  int have_rv = 0, have_msg = 0;
  if (ret != PB_OK) goto out;
  ret = PB_MALFORMED;
  for (uint32_t i = 0; i < up.data.via.map.size; i++) {
    const msgpack_object *k = &up.data.via.map.ptr[i].key, *v = &up.data.via.map.ptr[i].val;
    if (key_is(k, "rv")) {
      if (pb_unpack_ulong(v, rv, err) != PB_OK) goto out;
      have_rv = 1;
    } else if (key_is(k, "message")) {
      if (v->type != MSGPACK_OBJECT_STR) { pb_fail(err, "message: expected a string"); goto out; }
      size_t n = v->via.str.size < msglen - 1 ? v->via.str.size : msglen - 1;
      memcpy(message, v->via.str.ptr, n);
      message[n] = 0;
      have_msg = 1;
    }
  }
  if (!have_rv || !have_msg) {
    pb_fail(err, "ERROR payload lacks %s", have_rv ? "message" : "rv");
    goto out;
  }
  ret = PB_OK;
out:
  msgpack_unpacked_destroy(&up);
  return ret;
}
