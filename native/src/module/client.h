/* client.h: libp11bridge's call interpreter. The generated entry points
 * (build/gen/module_stubs.c) put their C parameters into slots and hand
 * them to pb_client_call(), which walks the call descriptor of
 * protocol.json (pb_calls) -- the executor's generated invoke lines in
 * reverse. */
#ifndef P11BRIDGE_CLIENT_H
#define P11BRIDGE_CLIENT_H

#include "calls.h"

/* One C parameter group of a call, as the caller gave it. Which members are
 * used depends on the kind (slot numbering as in pb_calls):
 *   ulong/slot/session/object  ul            results: ulp (where to store)
 *   bool                       b
 *   bytes, outfixed            p, len
 *   label                      p
 *   mechanism                  mech
 *   template, attrquery        tmpl, count
 *   outbytes                   p, lenp       (capacity in, length out)
 *   outlist                    ulp, lenp     (mode PB_CS_AUTO: send true; tests only)
 *   objectlist                 ulp, lenp     (capacity: the maxObjectCount slot)
 *   info kinds                 out
 */
typedef struct {
  CK_ULONG ul;
  CK_BBOOL b;
  void *p;
  CK_ULONG len;
  CK_ULONG *lenp;
  CK_ULONG *ulp;
  CK_MECHANISM *mech;
  CK_ATTRIBUTE *tmpl;
  CK_ULONG count;
  void *out;
  int mode;
} pb_cslot;

#define PB_CS_AUTO 1

/* ---- marshal.c: a call's payload from/to slots (no I/O) ---- */
/* CKR_OK if the caller's arguments can be sent, else the rv to answer. */
CK_RV pb_client_check(const pb_call *c, const pb_cslot *a, size_t limit);
/* About how many bytes the RESULT payload takes (from the caller's output
 * capacities; at most limit): sizes the attempt timeout of the round trip. */
size_t pb_client_expected_len(const pb_call *c, const pb_cslot *a, size_t limit);
/* Packs [id, args...]. 0, or -1 when the packer failed (payload limit). */
int pb_client_encode(msgpack_packer *pk, const pb_call *c, const pb_cslot *a);
/* Decodes a RESULT payload [rv, results...] into the caller's memory.
 * Returns PB_OK with *rv set (the module's rv, or CKR_BUFFER_TOO_SMALL where
 * a caller buffer was too small for an attribute value), or PB_MALFORMED with
 * err->msg (the caller answers CKR_DEVICE_ERROR). */
int pb_client_decode(const pb_call *c, pb_cslot *a, const unsigned char *payload, size_t len,
                     CK_RV *rv, pb_err *err);

/* A msgpack write callback into a buffer that refuses to grow past a limit. */
typedef struct {
  char *data;
  size_t size, cap, limit;
} pb_lbuf;
int pb_lbuf_write(void *data, const char *buf, size_t len);
void pb_lbuf_free(pb_lbuf *b);

/* HELLO / HELLO_OK / ERROR payloads (PROTOCOL.md section 4) */
int pb_pack_hello(msgpack_packer *pk, unsigned vmin, unsigned vmax, uint32_t nonce, uint64_t max_payload,
                  const char *client);
typedef struct {
  uint64_t version, max_payload, lease_ms;
  uint32_t key;   /* the connection's key (PROTOCOL.md section 4) */
  uint32_t nonce; /* the HELLO's nonce, echoed */
  char server[201];
  CK_INFO info;
  unsigned char functions[PB_NCALLS + 1]; /* by call id */
  uint32_t nfunctions;
  uint32_t function_ids[PB_NCALLS + 64]; /* as listed (ids the table does not know are kept, up to the bound) */
} pb_hello_ok;
int pb_unpack_hello_ok(const unsigned char *payload, size_t len, pb_hello_ok *h, pb_err *err);
/* ERROR payload {rv, message}: PB_OK with rv and message (truncated to msglen). */
int pb_unpack_error(const unsigned char *payload, size_t len, CK_RV *rv, char *message,
                    size_t msglen, pb_err *err);

/* ---- module.c: state, locking, transport ---- */
CK_RV pb_client_call(unsigned id, pb_cslot *a);
CK_RV pb_mod_initialize(CK_VOID_PTR pInitArgs);
CK_RV pb_mod_finalize(CK_VOID_PTR pReserved);
CK_RV pb_mod_get_function_list(CK_FUNCTION_LIST_PTR_PTR pp);
CK_RV pb_mod_wait_for_slot_event(pb_cslot *a, CK_VOID_PTR pReserved);

/* generated (module_stubs.c) */
extern CK_FUNCTION_LIST pb_function_list;

#endif
