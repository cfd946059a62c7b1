/* exec_sandbox.c: what the executor may do, set before the module is loaded.
 *
 * The executor runs one guest app's calls with the token's module in its
 * address space; a module bug reached by a hostile guest must not give the
 * guest more than that. So, before dlopen():
 *   - resource limits: data segment (the guest can make the module allocate),
 *     open files, no core dumps (a core holds keys and PINs);
 *   - not dumpable, so no other process of the same user can ptrace it or
 *     read its memory through /proc;
 *   - lower CPU priority than the daemon, whose one event loop serves every
 *     port;
 *   - no new privileges, and no capabilities if it runs as root;
 *   - a seccomp filter: no exec, no new processes (threads only), no
 *     network sockets (unix sockets stay: TPM resource managers, tabrmd),
 *     no ptrace or process_vm_*, and none of the system-administration
 *     calls. A deny list, not an allow list: the executor loads modules we
 *     do not write (SoftHSM2, tpm2-pkcs11 with its TSS and SQLite, vendor
 *     modules), and what they need differs.
 * Each step that cannot be taken is reported; the daemon logs the report. */
#define _GNU_SOURCE
#include "exec_sandbox.h"

#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void note(char *report, size_t n, const char *what) {
  size_t used = strlen(report);
  if (used + strlen(what) + 2 >= n) return;
  if (used) strcat(report, " ");
  strcat(report, what);
}

static int set_limit(int res, rlim_t v) {
  struct rlimit rl = {v, v};
  struct rlimit cur;
  if (getrlimit(res, &cur) == 0 && cur.rlim_max != RLIM_INFINITY && cur.rlim_max < v) rl.rlim_cur = rl.rlim_max = cur.rlim_max;
  return setrlimit(res, &rl);
}

static int drop_capabilities(void) {
  if (geteuid() != 0) return 0;
  for (int cap = 0; cap <= CAP_LAST_CAP; cap++) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
  struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
  memset(data, 0, sizeof data);
  return (int)syscall(SYS_capset, &hdr, data);
}

static int install_seccomp(int allow_network) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) return -1;
  int r = 0;
  static const int denied[] = {
      SCMP_SYS(execve), SCMP_SYS(execveat), SCMP_SYS(fork), SCMP_SYS(vfork),
      SCMP_SYS(ptrace), SCMP_SYS(process_vm_readv), SCMP_SYS(process_vm_writev),
      SCMP_SYS(mount), SCMP_SYS(umount2), SCMP_SYS(pivot_root), SCMP_SYS(chroot),
      SCMP_SYS(setns), SCMP_SYS(unshare), SCMP_SYS(bpf), SCMP_SYS(perf_event_open),
      SCMP_SYS(kexec_load), SCMP_SYS(kexec_file_load), SCMP_SYS(init_module),
      SCMP_SYS(finit_module), SCMP_SYS(delete_module), SCMP_SYS(reboot), SCMP_SYS(swapon),
      SCMP_SYS(swapoff), SCMP_SYS(iopl), SCMP_SYS(ioperm), SCMP_SYS(keyctl), SCMP_SYS(add_key),
      SCMP_SYS(request_key), SCMP_SYS(userfaultfd), SCMP_SYS(open_by_handle_at),
      SCMP_SYS(name_to_handle_at), SCMP_SYS(acct), SCMP_SYS(settimeofday), SCMP_SYS(clock_settime),
      SCMP_SYS(adjtimex), SCMP_SYS(sethostname), SCMP_SYS(setdomainname), SCMP_SYS(quotactl),
      SCMP_SYS(lookup_dcookie), SCMP_SYS(syslog), SCMP_SYS(vhangup), SCMP_SYS(mknod),
      SCMP_SYS(mknodat), SCMP_SYS(setuid), SCMP_SYS(setgid), SCMP_SYS(setreuid),
      SCMP_SYS(setregid), SCMP_SYS(setresuid), SCMP_SYS(setresgid), SCMP_SYS(setgroups),
  };
  for (size_t i = 0; r == 0 && i < sizeof denied / sizeof denied[0]; i++)
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), denied[i], 0);
  /* clone: threads only (CLONE_THREAD set); clone3 keeps its flags in
   * memory a filter cannot read, so it answers ENOSYS and glibc falls back
   * to clone. */
  if (r == 0) r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                                   SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
  if (r == 0) r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  if (r == 0 && !allow_network) {
    /* sockets: AF_UNIX only (a TPM resource manager, a local daemon) */
    r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_NE, AF_UNIX, 0));
    if (r == 0) r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(socketpair), 1, SCMP_A0(SCMP_CMP_NE, AF_UNIX, 0));
  }
  if (r == 0) r = seccomp_load(ctx);
  seccomp_release(ctx);
  return r;
}

void pb_exec_sandbox(const pb_sandbox_opts *o, char *report, size_t n) {
  report[0] = 0;
  if (set_limit(RLIMIT_CORE, 0) == 0) note(report, n, "no-core");
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0) note(report, n, "not-dumpable");
  if (o->memory_bytes && set_limit(RLIMIT_DATA, (rlim_t)o->memory_bytes) == 0) note(report, n, "memory-limit");
  if (o->max_files && set_limit(RLIMIT_NOFILE, (rlim_t)o->max_files) == 0) note(report, n, "file-limit");
  if (o->nice) {
    errno = 0;
    if (setpriority(PRIO_PROCESS, 0, o->nice) == 0) note(report, n, "lower-priority");
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0) note(report, n, "no-new-privileges");
  if (drop_capabilities() == 0) note(report, n, "no-capabilities");
  if (!o->no_seccomp && install_seccomp(o->allow_network) == 0)
    note(report, n, o->allow_network ? "seccomp(network allowed)" : "seccomp");
}
