/* calls.h: the call table of protocol.json "calls", generated into
 * build/gen/pb_tables.c. Shared by the executor and the client module. */
#ifndef P11BRIDGE_CALLS_H
#define P11BRIDGE_CALLS_H

#include "wire.h"
#include "pb_gen.h" /* PB_NCALLS, PB_MAX_SLOTS */

typedef struct {
  const char *name; /* argument/result name from protocol.json */
  pb_kind kind;
  unsigned slot;    /* value slot: arguments use 0..nargs-1, a result shares
                       the slot of the argument with the same name, other
                       results get the following slots */
  int aux;          /* objectlist: slot of the maxObjectCount argument; else -1 */
} pb_param;

typedef struct {
  unsigned id;
  const char *name;
  int local;        /* answered by the client itself (C_GetFunctionList) */
  unsigned nargs;
  const pb_param *args;
  unsigned nres;
  const pb_param *res;
  unsigned nslots;
  unsigned npartial;
  const CK_RV *partial;
} pb_call;

extern const pb_call pb_calls[PB_NCALLS]; /* pb_calls[i].id == i + 1 */
const pb_call *pb_call_by_id(uint64_t id); /* NULL if unknown */
int pb_call_is_partial(const pb_call *c, CK_RV rv);

#endif
