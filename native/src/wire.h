/* wire.h: p11bridge kind codecs, shared by the executor (p11bridge-exec) and,
 * later, the client-side module (libp11bridge.so).
 *
 * Everything here maps between MessagePack (msgpack-c objects / packer) and
 * PKCS#11 C types, in both directions where both sides need it. Nothing here
 * knows about stdin/stdout, the executor loop or a function list.
 *
 * Return convention of the unpack functions:
 *   PB_OK (0)         decoded;
 *   PB_MALFORMED (-1) the value does not match its kind; err->msg says why
 *                     (the caller prefixes which argument it was);
 *   PB_RV (1)         decoded far enough to know the call must be answered
 *                     with err->rv as a normal result (e.g. an array
 *                     parameter for a mechanism with no known structure ->
 *                     CKR_MECHANISM_PARAM_INVALID, or out of memory).
 */
#ifndef P11BRIDGE_WIRE_H
#define P11BRIDGE_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>
#include "p11.h"
#include "pb_gen.h" /* protocol.json limits: PB_MAX_TEMPLATE, PB_MAX_DEPTH, ... */

#define PB_OK 0
#define PB_MALFORMED (-1)
#define PB_RV 1


/* ---- argument / result kinds of protocol.json "kinds" ---- */
typedef enum {
  PB_K_ULONG, PB_K_BOOL, PB_K_SLOT, PB_K_SESSION, PB_K_OBJECT, PB_K_BYTES,
  PB_K_LABEL, PB_K_MECHANISM, PB_K_TEMPLATE, PB_K_ATTRQUERY, PB_K_ATTRVALUES,
  PB_K_OUTBYTES, PB_K_OUTLIST, PB_K_OBJECTLIST, PB_K_OUTFIXED, PB_K_INFO,
  PB_K_SLOTINFO, PB_K_TOKENINFO, PB_K_SESSIONINFO, PB_K_MECHINFO
} pb_kind;

/* ---- attribute kinds of protocol.json "attributes" (default: bytes) ---- */
typedef enum {
  PB_AK_BYTES = 0, PB_AK_ULONG, PB_AK_BOOL, PB_AK_TEMPLATE, PB_AK_ULONGLIST, PB_AK_DATE
} pb_attr_kind;

/* ---- mechanism parameter forms of protocol.json "mechanisms" (default: none) ---- */
typedef enum {
  PB_PF_NONE = 0, /* no parameter: nil or an empty bin only */
  PB_PF_BYTES,    /* a plain byte string (an IV ...): bin */
  PB_PF_ULONG,    /* one CK_ULONG: an unsigned integer */
  PB_PF_STRUCT    /* a structure of "paramKinds": an array of its fields */
} pb_param_form;

/* ---- structure descriptors (info structs and mechanism parameters) ---- */
typedef enum {
  PB_F_ULONG,   /* CK_ULONG member at off */
  PB_F_BYTES,   /* pointer member at off, CK_ULONG length member at off2 */
  PB_F_FIXED,   /* CK_BYTE[size] member at off: bin of exactly size bytes */
  PB_F_VERSION, /* CK_VERSION member at off: [major, minor] */
  PB_F_CHAR     /* CK_UTF8CHAR[size] member at off: bin of exactly size bytes */
} pb_field_kind;

typedef struct {
  const char *name;
  pb_field_kind kind;
  size_t off;
  size_t off2;
  size_t size;
} pb_field;

typedef struct {
  const char *name;  /* key in "structs" / "paramKinds" */
  const char *ctype;
  size_t size;       /* sizeof(ctype) */
  unsigned nfields;
  const pb_field *fields;
} pb_struct_desc;

/* generated (build/gen/pb_tables.c) */
extern const pb_struct_desc pb_struct_info, pb_struct_slotinfo,
    pb_struct_tokeninfo, pb_struct_sessioninfo, pb_struct_mechinfo;
/* The form of a mechanism's parameter; *desc is set for PB_PF_STRUCT. */
pb_param_form pb_mech_param_form(CK_MECHANISM_TYPE type, const pb_struct_desc **desc);
pb_attr_kind pb_attr_kind_of(CK_ATTRIBUTE_TYPE type);
const char *pb_kind_name(pb_kind k);

/* ---- errors ---- */
typedef struct {
  CK_RV rv;
  char msg[320];
} pb_err;

int pb_fail(pb_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int pb_fail_rv(pb_err *err, CK_RV rv);
const char *pb_type_name(const msgpack_object *o);

/* ---- request-scoped allocator: everything freed at once ---- */
typedef struct pb_arena_blk pb_arena_blk;
typedef struct {
  pb_arena_blk *head;
  size_t total;
} pb_arena;

void pb_arena_init(pb_arena *a);
void *pb_arena_alloc(pb_arena *a, size_t size); /* zeroed; NULL on failure */
void pb_arena_free(pb_arena *a);

/* A non-NULL pointer for zero-length values (never written through): zeroed
 * and large enough that a module reading a structure without checking the
 * length finds NULL pointers and zero lengths, never other memory. */
#define PB_EMPTY_SIZE 256
extern CK_BYTE pb_empty[PB_EMPTY_SIZE];

/* ---- scalar kinds ---- */
int pb_unpack_ulong(const msgpack_object *o, CK_ULONG *out, pb_err *err);
int pb_unpack_bool(const msgpack_object *o, CK_BBOOL *out, pb_err *err);
/* bytes: bin -> pointer into the message buffer (pb_empty if empty); nil -> NULL,0 */
int pb_unpack_bytes(const msgpack_object *o, void **p, CK_ULONG *len, pb_err *err);
/* bin of exactly n bytes -> pointer into the message buffer */
int pb_unpack_fixed(const msgpack_object *o, size_t n, void **p, pb_err *err);

int pb_pack_ulong(msgpack_packer *pk, CK_ULONG v); /* ~0 -> 2^64-1 */
int pb_pack_bytes(msgpack_packer *pk, const void *p, size_t len); /* NULL -> nil */

/* ---- structures ---- */
int pb_unpack_struct(const msgpack_object *o, const pb_struct_desc *d, void *s, pb_err *err);
int pb_pack_struct(msgpack_packer *pk, const pb_struct_desc *d, const void *s);

/* ---- mechanism ---- */
int pb_unpack_mechanism(const msgpack_object *o, CK_MECHANISM *m, pb_arena *ar, pb_err *err);
/* Client direction: a structured parameter whose mechanism and size match the
 * table travels as its fields; any other non-NULL parameter as bin. */
int pb_pack_mechanism(msgpack_packer *pk, const CK_MECHANISM *m);

/* ---- template (attributes with values) ---- */
int pb_unpack_template(const msgpack_object *o, CK_ATTRIBUTE **t, CK_ULONG *n,
                       pb_arena *ar, pb_err *err);
int pb_pack_template(msgpack_packer *pk, const CK_ATTRIBUTE *t, CK_ULONG n);
/* One attribute value typed by the attribute's kind (see kinds.attrvalues).
 * len must not be CK_UNAVAILABLE_INFORMATION. depth 0 allows a nested template. */
int pb_pack_attr_value(msgpack_packer *pk, CK_ATTRIBUTE_TYPE type, const void *p,
                       CK_ULONG len, int depth);

/* ---- client direction (libp11bridge): caller's C values <-> wire ----
 * Output kinds as the caller hands them over; the call-level walk is in
 * src/module/marshal.c, the per-kind conversions are here. */

/* A template / mechanism from the caller, checked before it is packed:
 * CKR_OK, CKR_ARGUMENTS_BAD (NULL with a length, more than PB_MAX_TEMPLATE
 * attributes, a length beyond limit) or CKR_MECHANISM_PARAM_INVALID (a
 * structured parameter whose length is not sizeof its structure). */
CK_RV pb_check_template(const CK_ATTRIBUTE *t, CK_ULONG n, size_t limit);
CK_RV pb_check_mechanism(const CK_MECHANISM *m, size_t limit);

/* C_GetAttributeValue's query: [[type, pValue != NULL], ...] */
int pb_pack_attrquery(msgpack_packer *pk, const CK_ATTRIBUTE *t, CK_ULONG n);

/* Host length of a typed attribute value (bool 1, int sizeof(CK_ULONG), bin
 * n, int array n*sizeof(CK_ULONG), nested template n*sizeof(CK_ATTRIBUTE)). */
int pb_attr_value_host_len(const msgpack_object *v, CK_ULONG *len, int depth, pb_err *err);

/* C_GetAttributeValue's answer into the caller's template (kinds.attrvalues):
 * nil -> CK_UNAVAILABLE_INFORMATION; a length (where pValue is NULL) in kind
 * units -> this host's bytes; a typed value -> host representation, checked
 * against the caller's capacity (too small: CK_UNAVAILABLE_INFORMATION and
 * *too_small = 1). Nested templates fill the caller's CK_ATTRIBUTE array,
 * matched by type. PB_MALFORMED if the answer does not match the query. */
int pb_unpack_attrvalues(const msgpack_object *o, CK_ATTRIBUTE *t, CK_ULONG n, int *too_small,
                         pb_err *err);

/* ---- message-level ---- */
/* Check that buf[0..len) is exactly one well-formed MessagePack value and
 * that no container declares more elements than bytes remain (so msgpack-c
 * never allocates in proportion to a declared, not actually present,
 * length). Returns 0 or -1 with err->msg set. */
int pb_prescan(const unsigned char *buf, size_t len, pb_err *err);

/* Pack an error map {"rv": rv, "message": msg}. */
int pb_pack_error_map(msgpack_packer *pk, CK_RV rv, const char *msg);

#endif
