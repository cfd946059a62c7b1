/* test_refusals.c: the refusals of proto/golden/vectors.json through the
 * executor's request path (exec_handle.c, driven by test/golden.mjs): each
 * must be refused exactly as the TypeScript decoder refuses it, and the
 * module must never be called.
 *
 * stdin, one payload per line (hex); stdout, one line per payload:
 *   malformed | unknown call | rv <n> | answered   (then " called" if the module was called)
 *
 * The module is a fake that only counts calls (pb_invoke, pb_has_function). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"

static unsigned g_calls;

CK_RV pb_invoke(CK_FUNCTION_LIST_PTR fl, unsigned id, pb_slot *a) {
  (void)fl, (void)id, (void)a;
  g_calls++;
  return CKR_OK;
}
int pb_has_function(CK_FUNCTION_LIST_PTR fl, unsigned id) {
  (void)fl;
  return id != 4;
}

int main(void) {
  static char line[1 << 21];
  while (fgets(line, sizeof line, stdin)) {
    size_t l = strcspn(line, "\r\n");
    line[l] = 0;
    unsigned char *buf = malloc(l / 2 + 1);
    for (size_t i = 0; i + 1 < l; i += 2) {
      unsigned v;
      sscanf(line + i, "%2x", &v);
      buf[i / 2] = (unsigned char)v;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    g_calls = 0;
    pb_exec_handle(buf, l / 2, &sb);
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    const char *what = "answered";
    char rv[64];
    if (msgpack_unpack_next(&up, sb.data, sb.size, &off) == MSGPACK_UNPACK_SUCCESS) {
      const msgpack_object *o = &up.data;
      if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
          const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
          if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == 2 && !memcmp(k->via.str.ptr, "rv", 2))
            what = v->via.u64 == CKR_FUNCTION_NOT_SUPPORTED ? "unknown call" : v->via.u64 == CKR_ARGUMENTS_BAD ? "malformed" : "error";
        }
      } else if (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 1) {
        snprintf(rv, sizeof rv, "rv %llu", (unsigned long long)o->via.array.ptr[0].via.u64);
        what = rv;
      }
    }
    printf("%s%s\n", what, g_calls ? " called" : "");
    fflush(stdout);
    msgpack_unpacked_destroy(&up);
    msgpack_sbuffer_destroy(&sb);
    free(buf);
  }
  return 0;
}
