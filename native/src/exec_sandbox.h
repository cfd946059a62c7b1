/* exec_sandbox.h: the executor's own limits and confinement (exec_sandbox.c). */
#ifndef P11BRIDGE_EXEC_SANDBOX_H
#define P11BRIDGE_EXEC_SANDBOX_H

#include <stddef.h>

typedef struct {
  size_t memory_bytes; /* RLIMIT_DATA; 0: unchanged */
  unsigned max_files;  /* RLIMIT_NOFILE; 0: unchanged */
  int nice;            /* added to the priority; 0: unchanged */
  int allow_network;   /* sockets other than AF_UNIX */
  int no_seccomp;      /* no syscall filter (debugging under tools that need ptrace) */
} pb_sandbox_opts;

/* Applies what it can; report (n bytes) lists what is in force, e.g.
 * "no-core not-dumpable memory-limit ... seccomp". */
void pb_exec_sandbox(const pb_sandbox_opts *o, char *report, size_t n);

#endif
