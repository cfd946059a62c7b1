// The guest side of a serial port that several processes share. Each round
// trip holds flock(LOCK_EX) on the device, and the port is read only while
// the lock is held, so bytes never go to a process that is not waiting for
// them. The kernel drops the lock of a process that dies, so a process killed
// in the middle of a call never wedges the port.
import { closeSync, constants, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { LinuxBinding } from '@serialport/bindings-cpp';
import './poller-fix.js';
import { packageRoot } from '../paths.js';

interface FlockAddon { flock(fd: number, op: number): number; LOCK_EX: number; LOCK_UN: number; LOCK_NB: number; EWOULDBLOCK: number }
let addon: FlockAddon | undefined;
function flockAddon(): FlockAddon {
  addon ??= createRequire(import.meta.url)(join(packageRoot(), 'native', 'build', 'p11bridge_flock.node')) as FlockAddon;
  return addon;
}

type PortBinding = Awaited<ReturnType<typeof LinuxBinding.open>>;

export class GuestPort {
  /** Held for the lock only; I/O goes through serialport's binding. */
  private lockFd: number | undefined;
  private binding: PortBinding | undefined;
  private readonly chunk = Buffer.allocUnsafe(65536);

  constructor(readonly path: string, private readonly baudRate = 115200) {}

  /** Opens the device for locking: fails early on a wrong path. */
  open(): void {
    if (this.lockFd !== undefined) return;
    try {
      this.lockFd = openSync(this.path, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
    } catch (e) {
      throw describeOpenError(this.path, e as Error);
    }
  }

  /** Takes the device lock, polling until `deadline` (ms since epoch), and makes sure the port is set up. */
  async lock(deadline: number): Promise<void> {
    this.open();
    const f = flockAddon();
    for (let wait = 0.25; ; wait = Math.min(wait * 2, 16)) {
      const err = f.flock(this.lockFd!, f.LOCK_EX | f.LOCK_NB);
      if (err === 0) break;
      if (err !== f.EWOULDBLOCK) throw new Error(`cannot lock ${this.path}: errno ${err}`);
      if (Date.now() >= deadline) throw new Error(`${this.path} stayed locked by another process`);
      await new Promise((r) => setTimeout(r, wait));
    }
    if (this.binding) return;
    try {
      // Setting the port up flushes its queues, which is harmless only while
      // we hold the lock: no other process is in the middle of a round trip.
      this.binding = await LinuxBinding.open({
        path: this.path, baudRate: this.baudRate, dataBits: 8, parity: 'none', stopBits: 1,
        rtscts: false, xon: false, xoff: false, xany: false, hupcl: false, lock: false,
      });
    } catch (e) {
      this.unlock();
      throw describeOpenError(this.path, e as Error);
    }
  }

  unlock(): void {
    if (this.lockFd !== undefined) flockAddon().flock(this.lockFd, flockAddon().LOCK_UN);
  }

  async write(bytes: Buffer): Promise<void> {
    if (!this.binding) throw new Error('port is not set up (lock it first)');
    await this.binding.write(bytes);
  }

  /** Reads what has arrived (waits for at least one byte). Call only while locked. */
  async read(): Promise<Buffer> {
    if (!this.binding) throw new Error('port is not set up (lock it first)');
    const { bytesRead } = await this.binding.read(this.chunk, 0, this.chunk.length);
    return Buffer.from(this.chunk.subarray(0, bytesRead));
  }

  /**
   * Closes the device: the only way to abandon a read still waiting (after a
   * timeout), so it cannot take the next lock holder's bytes. Drops the lock.
   */
  async close(): Promise<void> {
    // Forget both at once, so the next round trip opens afresh; keep the old
    // lock until the old binding is closed and its pending read cancelled.
    const b = this.binding;
    const fd = this.lockFd;
    this.binding = undefined;
    this.lockFd = undefined;
    if (b?.isOpen) await b.close().catch(() => undefined);
    if (fd !== undefined) closeSync(fd);
  }
}

function describeOpenError(path: string, err: Error): Error {
  const msg = err.message;
  if (/ENOENT|No such file/i.test(msg)) return new Error(`serial port ${path} does not exist`);
  if (/EACCES|Permission/i.test(msg)) return new Error(`no permission to open serial port ${path}`);
  return new Error(`cannot open serial port ${path}: ${msg}`);
}
