// Serial lines (a UART, or a pty in tests), both ends. The daemon opens its
// end raw 8N1 with echo off, so a freshly booted tty in cooked mode with echo
// on is put right at open, and holds it, locked, for its whole life. A guest
// process takes the lock for each round trip (PROTOCOL.md section 7). Bytes
// move through FdStream: system calls on the main thread, no pool hops.
import { closeSync, constants, openSync } from 'node:fs';
import { FdStream } from './fd-stream.js';
import { errnoMessage, io } from './io.js';
import type { GuestLink, Link } from './link.js';

export interface TtyOptions {
  baudRate?: number;
  /** flock(LOCK_EX) the device while open, so two daemons cannot share a port. Default true. */
  lock?: boolean;
}

function openDevice(path: string): number {
  try {
    return openSync(path, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
  } catch (e) {
    const msg = (e as Error).message;
    if (/ENOENT/.test(msg)) throw new Error(`serial port ${path} does not exist`);
    if (/EACCES|EPERM/.test(msg)) throw new Error(`no permission to open serial port ${path}`);
    throw new Error(`cannot open serial port ${path}: ${msg}`);
  }
}

/** Raw 8N1 at the speed, then drop what a cooked tty buffered before. */
function setUp(fd: number, path: string, baud: number): void {
  const err = io().configureTty(fd, baud);
  if (err !== 0 && errnoMessage(err) !== 'ENOTTY') throw new Error(`cannot configure serial port ${path}: ${errnoMessage(err)}`);
  io().discardTty(fd);
}

/** The daemon's end of a serial line. */
export async function openTty(path: string, opts: TtyOptions = {}): Promise<Link> {
  const fd = openDevice(path);
  try {
    if (opts.lock ?? true) {
      const a = io();
      const err = a.flock(fd, a.LOCK_EX | a.LOCK_NB);
      if (err !== 0) throw new Error(`serial port ${path} is in use by another process (${err === a.EWOULDBLOCK ? 'locked' : errnoMessage(err)})`);
    }
    setUp(fd, path, opts.baudRate ?? 115200);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  const dataListeners: Array<(chunk: Buffer) => void> = [];
  const closeListeners: Array<(err?: Error) => void> = [];
  let closing = false;
  const stream = new FdStream(fd, {
    data: (chunk) => { for (const l of dataListeners) l(chunk); },
    end: (err) => { if (!closing) for (const l of closeListeners) l(err); },
  });
  let paused = false;
  return {
    address: path,
    write: (bytes) => stream.write(bytes),
    onData: (listener) => {
      dataListeners.push(listener);
      if (!paused) stream.resume();
    },
    onClose: (listener) => void closeListeners.push(listener),
    pause: () => {
      paused = true;
      stream.pause();
    },
    resume: () => {
      paused = false;
      if (dataListeners.length) stream.resume();
    },
    discard: async () => void io().discardTty(fd),
    close: async () => {
      closing = true;
      stream.close();
    },
  };
}

/** A guest process's end of a serial line that other processes may share. */
export class TtyGuestLink implements GuestLink {
  private fd: number | undefined;
  private stream: FdStream | undefined;
  private configured = false;
  private listener: ((chunk: Buffer) => void) | undefined;

  constructor(readonly address: string, private readonly baudRate = 115200) {}

  /** Opens the device: fails early on a wrong path. */
  open(): void {
    if (this.fd !== undefined) return;
    this.fd = openDevice(this.address);
    this.configured = false;
    this.stream = new FdStream(this.fd, {
      data: (chunk) => this.listener?.(chunk),
      end: () => void this.close(),
    });
  }

  async lock(deadline: number): Promise<void> {
    this.open();
    const a = io();
    for (let wait = 0.25; ; wait = Math.min(wait * 2, 16)) {
      const err = a.flock(this.fd!, a.LOCK_EX | a.LOCK_NB);
      if (err === 0) break;
      if (err !== a.EWOULDBLOCK) throw new Error(`cannot lock ${this.address}: ${errnoMessage(err)}`);
      if (Date.now() >= deadline) throw new Error(`${this.address} stayed locked by another process`);
      await new Promise((r) => setTimeout(r, wait));
    }
    if (!this.configured) {
      // Setting the port up flushes its queues, which is harmless only while
      // we hold the lock: no other process is in the middle of a round trip.
      try {
        setUp(this.fd!, this.address, this.baudRate);
      } catch (e) {
        this.unlock();
        throw e;
      }
      this.configured = true;
    }
    this.stream!.resume();
  }

  unlock(): void {
    this.stream?.pause();
    if (this.fd !== undefined) io().flock(this.fd, io().LOCK_UN);
  }

  write(bytes: Buffer): Promise<void> {
    if (!this.stream) return Promise.reject(new Error(`${this.address} is not open`));
    return this.stream.write(bytes);
  }

  setListener(listener: ((chunk: Buffer) => void) | undefined): void {
    this.listener = listener;
  }

  /** Closes the device (dropping the lock): the next round trip opens it afresh. */
  async close(): Promise<void> {
    const s = this.stream;
    this.stream = undefined;
    this.fd = undefined;
    this.listener = undefined;
    s?.close();
  }
}
