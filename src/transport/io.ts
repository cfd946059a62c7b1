// The native addon (native/addon/io.c) that gives Node the few system calls
// the transports need: flock, pipes, tty set-up, and a uv_poll watch.
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';

/** An opaque uv_poll handle. */
export type WatchHandle = { readonly __watch: unique symbol };

export interface IoAddon {
  flock(fd: number, op: number): number;
  pipe(): [number, number];
  setNonBlocking(fd: number, on: boolean): number;
  configureTty(fd: number, baud: number): number;
  discardTty(fd: number): number;
  watch(fd: number, cb: (errno: number, events: number) => void): WatchHandle;
  watchStart(h: WatchHandle, events: number): number;
  watchStop(h: WatchHandle): void;
  watchClose(h: WatchHandle): void;
  readonly LOCK_EX: number;
  readonly LOCK_UN: number;
  readonly LOCK_NB: number;
  readonly EWOULDBLOCK: number;
  readonly READABLE: number;
  readonly WRITABLE: number;
  readonly DISCONNECT: number;
}

let addon: IoAddon | undefined;

export function io(): IoAddon {
  addon ??= createRequire(import.meta.url)(join(packageRoot(), 'native', 'build', 'p11bridge_io.node')) as IoAddon;
  return addon;
}

/** An errno as the message Node gives it. */
export function errnoMessage(errno: number): string {
  const names: Record<number, string> = { 1: 'EPERM', 2: 'ENOENT', 5: 'EIO', 6: 'ENXIO', 9: 'EBADF', 11: 'EAGAIN', 13: 'EACCES', 16: 'EBUSY', 22: 'EINVAL', 25: 'ENOTTY' };
  return names[errno] ?? `errno ${errno}`;
}
