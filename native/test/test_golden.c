/* test_golden.c: proto/golden/vectors.json through libp11bridge's C codecs,
 * byte for byte (driven by test/golden.mjs).
 *
 * stdin, one vector per line:  <kind> <hex> [<paired request hex> | -]
 *   kind: frame (empty payload) | hello | hello_ok | error | request | response
 * stdout, one line per vector: ok <type> <conn> <req> <key> <re-encoded hex> [<answer bytes>] | err <message>
 *   (answer bytes, for requests: pb_client_expected_len, which must agree with the
 *   TypeScript client's estimate stored in the vector)
 *
 * Each vector is deframed (COBS, header, CRC) with the module's deframer,
 * its payload decoded into the C representation libp11bridge works with
 * (the caller's arguments for a request, the caller's output memory for a
 * response, set up from the paired request where the vector set has one),
 * re-encoded with the same shared codecs and re-framed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "frame.h"

static unsigned char pool[1 << 20]; /* scratch for caller buffers */
static size_t pool_used;
static void *palloc(size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (pool_used + n > sizeof pool) {
    fprintf(stderr, "pool exhausted\n");
    exit(2);
  }
  void *p = pool + pool_used;
  pool_used += n;
  memset(p, 0, n);
  return p;
}

static int unhex(const char *s, unsigned char **out, size_t *n) {
  size_t l = strlen(s);
  if (l % 2) return -1;
  *out = malloc(l / 2 + 1);
  for (size_t i = 0; i < l / 2; i++) {
    unsigned v;
    if (sscanf(s + 2 * i, "%2x", &v) != 1) return -1;
    (*out)[i] = (unsigned char)v;
  }
  *n = l / 2;
  return 0;
}

typedef struct {
  int got;
  pb_frame f;
  unsigned char *payload;
} one_frame;

static void grab(const pb_frame *f, void *ctx) {
  one_frame *o = ctx;
  o->got++;
  o->f = *f;
  o->payload = malloc(f->len + 1);
  memcpy(o->payload, f->payload, f->len);
  o->f.payload = o->payload;
}

static int deframe(const char *hex, one_frame *o) {
  unsigned char *b;
  size_t n;
  memset(o, 0, sizeof *o);
  if (unhex(hex, &b, &n)) return -1;
  pb_deframer d;
  pb_deframer_init(&d, 1 << 20);
  pb_deframer_push(&d, b, n, grab, o);
  pb_deframer_free(&d);
  free(b);
  return o->got == 1 ? 0 : -1;
}

static int unpack(const pb_frame *f, msgpack_unpacked *up) {
  pb_err err;
  if (pb_prescan(f->payload, f->len, &err)) return -1;
  size_t off = 0;
  return msgpack_unpack_next(up, (const char *)f->payload, f->len, &off) == MSGPACK_UNPACK_SUCCESS ? 0 : -1;
}

/* ---- a request's arguments as the caller of libp11bridge would pass them ---- */
static int args_from_wire(const msgpack_object *o, const pb_call **cp, pb_cslot *a, pb_arena *ar,
                          int real_buffers, char *msg) {
  pb_err err;
  if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 1) return sprintf(msg, "not [id, args]"), -1;
  const pb_call *c = pb_call_by_id(o->via.array.ptr[0].via.u64);
  if (!c || o->via.array.size != 1 + c->nargs) return sprintf(msg, "bad call"), -1;
  *cp = c;
  for (unsigned i = 0; i < c->nargs; i++) {
    const msgpack_object *v = &o->via.array.ptr[i + 1];
    pb_cslot *s = &a[c->args[i].slot];
    int r = PB_OK;
    switch (c->args[i].kind) {
    case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT: r = pb_unpack_ulong(v, &s->ul, &err); break;
    case PB_K_BOOL: r = pb_unpack_bool(v, &s->b, &err); break;
    case PB_K_BYTES: r = pb_unpack_bytes(v, &s->p, &s->len, &err); break;
    case PB_K_LABEL: r = pb_unpack_fixed(v, 32, &s->p, &err); break;
    case PB_K_MECHANISM:
      s->mech = palloc(sizeof *s->mech);
      r = pb_unpack_mechanism(v, s->mech, ar, &err);
      break;
    case PB_K_TEMPLATE: r = pb_unpack_template(v, &s->tmpl, &s->count, ar, &err); break;
    case PB_K_ATTRQUERY:
      if (v->type == MSGPACK_OBJECT_NIL) break; /* a NULL template */
      s->count = v->via.array.size;
      s->tmpl = palloc(s->count * sizeof(CK_ATTRIBUTE) + 1);
      for (CK_ULONG k = 0; k < s->count; k++) {
        const msgpack_object *e = &v->via.array.ptr[k];
        pb_unpack_ulong(&e->via.array.ptr[0], &s->tmpl[k].type, &err);
        if (e->via.array.ptr[1].via.boolean) {
          s->tmpl[k].ulValueLen = real_buffers ? 4096 : 1;
          s->tmpl[k].pValue = palloc(s->tmpl[k].ulValueLen);
        }
      }
      break;
    case PB_K_OUTBYTES:
      s->lenp = palloc(sizeof(CK_ULONG));
      if (v->type != MSGPACK_OBJECT_NIL) {
        r = pb_unpack_ulong(v, s->lenp, &err);
        s->p = palloc(real_buffers ? *s->lenp : 1);
      }
      break;
    case PB_K_OUTLIST:
      s->lenp = palloc(sizeof(CK_ULONG));
      if (v->type == MSGPACK_OBJECT_BOOLEAN) {
        s->mode = PB_CS_AUTO;
        *s->lenp = 1024;
        s->ulp = palloc(1024 * sizeof(CK_ULONG));
      } else if (v->type != MSGPACK_OBJECT_NIL) {
        r = pb_unpack_ulong(v, s->lenp, &err);
        s->ulp = palloc((real_buffers ? *s->lenp : 1) * sizeof(CK_ULONG));
      }
      break;
    case PB_K_OUTFIXED:
      if (v->type == MSGPACK_OBJECT_NIL) { /* a NULL buffer */
        s->mode = 2;
        break;
      }
      r = pb_unpack_ulong(v, &s->len, &err);
      s->p = palloc(s->len + 1);
      break;
    default: r = PB_MALFORMED; break;
    }
    if (r != PB_OK) return sprintf(msg, "argument %u: %s", i + 1, err.msg), -1;
  }
  return 0;
}

/* caller memory for results with no argument of their own */
static void result_storage(const pb_call *c, pb_cslot *a) {
  for (unsigned i = 0; i < c->nres; i++) {
    const pb_param *p = &c->res[i];
    pb_cslot *s = &a[p->slot];
    switch (p->kind) {
    case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT:
      if (!s->ulp) s->ulp = palloc(sizeof(CK_ULONG));
      break;
    case PB_K_INFO: case PB_K_SLOTINFO: case PB_K_TOKENINFO: case PB_K_SESSIONINFO: case PB_K_MECHINFO:
      if (!s->out) s->out = palloc(sizeof(CK_TOKEN_INFO));
      break;
    case PB_K_OBJECTLIST:
      if (!a[p->aux].ul) a[p->aux].ul = 1024;
      s->ulp = palloc(a[p->aux].ul * sizeof(CK_ULONG));
      s->lenp = palloc(sizeof(CK_ULONG));
      break;
    case PB_K_OUTFIXED:
      if (!s->p && s->mode != 2) { s->len = 4; s->p = palloc(4); }
      break;
    case PB_K_OUTBYTES: case PB_K_OUTLIST:
      if (!s->lenp) s->lenp = palloc(sizeof(CK_ULONG));
      break;
    default: break;
    }
  }
}

/* ---- re-encoding a decoded result (the server's direction, from C values) ---- */
static int pack_results(msgpack_packer *pk, const pb_call *c, pb_cslot *a, CK_RV rv) {
  if (rv != CKR_OK && !pb_call_is_partial(c, rv)) {
    msgpack_pack_array(pk, 1);
    return pb_pack_ulong(pk, rv);
  }
  msgpack_pack_array(pk, 1 + c->nres);
  pb_pack_ulong(pk, rv);
  for (unsigned i = 0; i < c->nres; i++) {
    const pb_param *p = &c->res[i];
    pb_cslot *s = &a[p->slot];
    switch (p->kind) {
    case PB_K_ULONG: case PB_K_SLOT: case PB_K_SESSION: case PB_K_OBJECT: pb_pack_ulong(pk, *s->ulp); break;
    case PB_K_INFO: pb_pack_struct(pk, &pb_struct_info, s->out); break;
    case PB_K_SLOTINFO: pb_pack_struct(pk, &pb_struct_slotinfo, s->out); break;
    case PB_K_TOKENINFO: pb_pack_struct(pk, &pb_struct_tokeninfo, s->out); break;
    case PB_K_SESSIONINFO: pb_pack_struct(pk, &pb_struct_sessioninfo, s->out); break;
    case PB_K_MECHINFO: pb_pack_struct(pk, &pb_struct_mechinfo, s->out); break;
    case PB_K_OUTBYTES:
      if (s->p && rv == CKR_OK) pb_pack_bytes(pk, s->p, *s->lenp);
      else pb_pack_ulong(pk, *s->lenp);
      break;
    case PB_K_OUTLIST: case PB_K_OBJECTLIST:
      if (p->kind == PB_K_OBJECTLIST || (s->ulp && rv == CKR_OK)) {
        msgpack_pack_array(pk, *s->lenp);
        for (CK_ULONG k = 0; k < *s->lenp; k++) pb_pack_ulong(pk, s->ulp[k]);
      } else {
        pb_pack_ulong(pk, *s->lenp);
      }
      break;
    case PB_K_OUTFIXED: pb_pack_bytes(pk, s->p, s->len); break;
    case PB_K_ATTRVALUES:
      msgpack_pack_array(pk, s->count);
      for (CK_ULONG k = 0; k < s->count; k++) {
        CK_ATTRIBUTE *t = &s->tmpl[k];
        if (t->ulValueLen == CK_UNAVAILABLE_INFORMATION) {
          msgpack_pack_nil(pk);
        } else if (!t->pValue) {
          CK_ULONG l = t->ulValueLen;
          if (pb_attr_kind_of(t->type) == PB_AK_ULONGLIST) l /= sizeof(CK_ULONG);
          if (pb_attr_kind_of(t->type) == PB_AK_TEMPLATE) l /= sizeof(CK_ATTRIBUTE);
          pb_pack_ulong(pk, l);
        } else {
          pb_pack_attr_value(pk, t->type, t->pValue, t->ulValueLen, 0);
        }
      }
      break;
    default: return -1;
    }
  }
  return 0;
}

static void print_frame(unsigned type, const one_frame *o, const void *payload, size_t len, long answer) {
  size_t n;
  unsigned char *out = pb_frame_encode(type, o->f.conn, o->f.req, o->f.key, payload, len, &n);
  printf("ok %u %u %u %u ", type, (unsigned)o->f.conn, (unsigned)o->f.req, (unsigned)o->f.key);
  for (size_t i = 0; i < n; i++) printf("%02x", out[i]);
  if (answer >= 0) printf(" %ld", answer);
  printf("\n");
  free(out);
}

static int key_is(const msgpack_object *k, const char *s) {
  return k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(s) && !memcmp(k->via.str.ptr, s, k->via.str.size);
}

static int one(const char *kind, const char *hex, const char *pair, char *msg) {
  one_frame o, po;
  if (deframe(hex, &o)) return sprintf(msg, "deframe: %s", o.got ? "several frames" : "no valid frame (COBS/CRC)"), -1;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_unpacked up, pup;
  msgpack_unpacked_init(&up);
  msgpack_unpacked_init(&pup);
  pb_arena ar;
  pb_arena_init(&ar);
  pb_err err;
  int rc = -1;
  long answer = -1;
  memset(&po, 0, sizeof po);
  if (!strcmp(kind, "frame")) {
    if (o.f.len) { sprintf(msg, "payload not empty"); goto out; }
  } else if (!strcmp(kind, "hello")) {
    if (unpack(&o.f, &up) || up.data.type != MSGPACK_OBJECT_MAP) { sprintf(msg, "HELLO: not a map"); goto out; }
    uint64_t lo = 0, hi = 0, maxp = 0, nonce = 0;
    char client[256] = "";
    for (uint32_t i = 0; i < up.data.via.map.size; i++) {
      const msgpack_object *k = &up.data.via.map.ptr[i].key, *v = &up.data.via.map.ptr[i].val;
      if (key_is(k, "versions")) { lo = v->via.array.ptr[0].via.u64; hi = v->via.array.ptr[1].via.u64; }
      if (key_is(k, "maxPayload")) maxp = v->via.u64;
      if (key_is(k, "nonce")) nonce = v->via.u64;
      if (key_is(k, "client")) snprintf(client, sizeof client, "%.*s", (int)v->via.str.size, v->via.str.ptr);
    }
    pb_pack_hello(&pk, (unsigned)lo, (unsigned)hi, (uint32_t)nonce, maxp, client);
  } else if (!strcmp(kind, "hello_ok")) {
    pb_hello_ok h;
    if (pb_unpack_hello_ok(o.f.payload, o.f.len, &h, &err)) { sprintf(msg, "HELLO_OK: %s", err.msg); goto out; }
    msgpack_pack_map(&pk, 6 + (h.lease_ms ? 1 : 0));
    msgpack_pack_str_with_body(&pk, "version", 7);
    msgpack_pack_uint64(&pk, h.version);
    msgpack_pack_str_with_body(&pk, "maxPayload", 10);
    msgpack_pack_uint64(&pk, h.max_payload);
    if (h.lease_ms) {
      msgpack_pack_str_with_body(&pk, "leaseMs", 7);
      msgpack_pack_uint64(&pk, h.lease_ms);
    }
    msgpack_pack_str_with_body(&pk, "server", 6);
    msgpack_pack_str_with_body(&pk, h.server, strlen(h.server));
    msgpack_pack_str_with_body(&pk, "nonce", 5);
    msgpack_pack_uint64(&pk, h.nonce);
    msgpack_pack_str_with_body(&pk, "key", 3);
    msgpack_pack_uint64(&pk, h.key);
    msgpack_pack_str_with_body(&pk, "module", 6);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "info", 4);
    pb_pack_struct(&pk, &pb_struct_info, &h.info);
    msgpack_pack_str_with_body(&pk, "functions", 9);
    msgpack_pack_array(&pk, h.nfunctions);
    for (uint32_t i = 0; i < h.nfunctions; i++) msgpack_pack_uint64(&pk, h.function_ids[i]);
  } else if (!strcmp(kind, "error")) {
    CK_RV rv;
    char m[4096];
    if (pb_unpack_error(o.f.payload, o.f.len, &rv, m, sizeof m, &err)) { sprintf(msg, "ERROR: %s", err.msg); goto out; }
    pb_pack_error_map(&pk, rv, m);
  } else if (!strcmp(kind, "request")) {
    pb_cslot a[PB_MAX_SLOTS];
    memset(a, 0, sizeof a);
    const pb_call *c;
    if (unpack(&o.f, &up) || args_from_wire(&up.data, &c, a, &ar, 0, msg)) goto out;
    result_storage(c, a);
    CK_RV rv = pb_client_check(c, a, 1 << 20);
    if (rv != CKR_OK) { sprintf(msg, "%s: arguments refused: 0x%lx", c->name, (unsigned long)rv); goto out; }
    if (pb_client_encode(&pk, c, a)) { sprintf(msg, "encode failed"); goto out; }
    answer = (long)pb_client_expected_len(c, a, 1 << 20);
  } else if (!strcmp(kind, "response")) {
    pb_cslot a[PB_MAX_SLOTS];
    memset(a, 0, sizeof a);
    const pb_call *c = NULL;
    int callid = atoi(pair);
    const char *phex = strchr(pair, ':') + 1;
    if (strcmp(phex, "-")) {
      if (deframe(phex, &po) || unpack(&po.f, &pup) || args_from_wire(&pup.data, &c, a, &ar, 1, msg)) goto out;
    } else {
      c = pb_call_by_id((unsigned)callid);
    }
    if (!c) { sprintf(msg, "unknown call"); goto out; }
    result_storage(c, a);
    CK_RV rv;
    if (pb_client_decode(c, a, o.f.payload, o.f.len, &rv, &err)) { sprintf(msg, "%s: decode: %s", c->name, err.msg); goto out; }
    pack_results(&pk, c, a, rv);
  } else {
    sprintf(msg, "unknown kind %s", kind);
    goto out;
  }
  print_frame(o.f.type, &o, sb.data, sb.size, answer);
  rc = 0;
out:
  free(o.payload);
  free(po.payload);
  msgpack_unpacked_destroy(&up);
  msgpack_unpacked_destroy(&pup);
  pb_arena_free(&ar);
  msgpack_sbuffer_destroy(&sb);
  pool_used = 0;
  return rc;
}

int main(void) {
  static char line[1 << 20];
  while (fgets(line, sizeof line, stdin)) {
    char kind[32], *hex = malloc(sizeof line), *pair = malloc(sizeof line), msg[512] = "";
    pair[0] = 0;
    if (sscanf(line, "%31s %s %s", kind, hex, pair) < 2) {
      printf("err unparsable input line\n");
    } else if (one(kind, hex, pair, msg)) {
      printf("err %s\n", msg);
    }
    free(hex);
    free(pair);
    fflush(stdout);
  }
  return 0;
}
