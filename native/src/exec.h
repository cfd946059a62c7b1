/* exec.h: executor-side value slots and the generated invocation stubs. */
#ifndef P11BRIDGE_EXEC_H
#define P11BRIDGE_EXEC_H

#include "calls.h"

/* modes of output arguments */
enum { PB_OUT_QUERY = 0, PB_OUT_BUFFER = 1, PB_OUT_AUTO = 2 };

/* One decoded argument / result. Which members are used depends on the kind;
 * the generated stubs (build/gen/exec_invoke.c) pass them to the module:
 *   ulong/slot/session/object  ul          (results: &ul)
 *   bool                       b
 *   bytes                      p, len
 *   label                      p
 *   mechanism                  &mech
 *   template, attrquery        tmpl, count
 *   outbytes                   p, &len     (cap, mode)
 *   outlist                    ulp, &count (cap, mode)
 *   objectlist                 ulp, ..., &count
 *   outfixed                   p, len
 *   info kinds                 &st.<kind>
 */
typedef struct {
  CK_ULONG ul;
  CK_BBOOL b;
  void *p;
  CK_ULONG len;
  CK_ULONG *ulp;
  CK_ULONG count;
  CK_ULONG cap;
  uint64_t asked;  /* outbytes/outlist: the capacity the caller asked for (cap may be clamped) */
  int mode;
  CK_ATTRIBUTE *tmpl;
  unsigned char *want;
  CK_MECHANISM mech;
  union {
    CK_INFO info;
    CK_SLOT_INFO slotinfo;
    CK_TOKEN_INFO tokeninfo;
    CK_SESSION_INFO sessioninfo;
    CK_MECHANISM_INFO mechinfo;
  } st;
} pb_slot;

extern CK_C_INITIALIZE_ARGS pb_exec_init_args;

/* exec_handle.c: the request interpreter */
extern CK_FUNCTION_LIST_PTR pb_exec_fl;  /* the module's function list */
extern size_t pb_exec_max_payload;
extern int pb_exec_initialized;          /* the app's C_Initialize succeeded, no C_Finalize since */
extern int pb_exec_debug;                /* diagnostics on stderr */
extern char pb_exec_sandbox_report[256]; /* what exec_sandbox.c put in force, for describe ([0]) */
/* One diagnostic line on stderr, "p11bridge-exec: ...", when pb_exec_debug is set. */
void pb_exec_dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* One request payload [id, args...] in buf[0..len) -> the answer appended to
 * sb: [rv, results...] or an error map {rv, message}. Treats buf as hostile. */
void pb_exec_handle(const unsigned char *buf, size_t len, msgpack_sbuffer *sb);

/* generated */
CK_RV pb_invoke(CK_FUNCTION_LIST_PTR fl, unsigned id, pb_slot *a);
int pb_has_function(CK_FUNCTION_LIST_PTR fl, unsigned id);

#endif
