// A byte stream over a non-blocking descriptor (a tty, a pipe): read and
// written with plain system calls on the main thread, woken by a uv_poll
// (io.ts). No thread-pool hop and no stream machinery on the hot path: one
// read per wake-up (the poll is level-triggered, so what is left wakes it
// again), and a write that the kernel takes at once resolves at once. Reads
// go on while writes wait, so two peers writing large messages at each
// other through a small pty never block each other.
import { closeSync, readSync, writeSync } from 'node:fs';
import { io, type WatchHandle } from './io.js';

export interface FdStreamEvents {
  /** Bytes that arrived (the buffer is the listener's to keep). */
  data(chunk: Buffer): void;
  /** The peer went away (end of file, hang-up) or the descriptor failed; no more events follow. */
  end(err?: Error): void;
}

interface PendingWrite {
  buf: Buffer;
  off: number;
  resolve(): void;
  reject(err: Error): void;
}

const READ_CHUNK = 64 * 1024;

export class FdStream {
  private readonly watch: WatchHandle;
  private readonly queue: PendingWrite[] = [];
  private readonly scratch = Buffer.allocUnsafe(READ_CHUNK);
  private reading = false;
  private armed = -1;
  private ended = false;

  constructor(
    readonly fd: number,
    private readonly on: FdStreamEvents,
    /** Close the descriptor when the stream closes. */
    private readonly ownsFd = true,
  ) {
    const a = io();
    if (a.setNonBlocking(fd, true) !== 0) throw new Error(`cannot make descriptor ${fd} non-blocking`);
    this.watch = a.watch(fd, (errno, events) => this.onEvent(errno, events));
  }

  /** Starts (or resumes) delivering data. */
  resume(): void {
    this.reading = true;
    this.arm();
  }

  /** Stops reading: what arrives stays in the kernel (a peer's writes block once it is full). */
  pause(): void {
    this.reading = false;
    this.arm();
  }

  /** Bytes queued for the descriptor and not yet taken by the kernel. */
  get pendingBytes(): number {
    let n = 0;
    for (const w of this.queue) n += w.buf.length - w.off;
    return n;
  }

  /** Writes all of `buf` (in order after earlier writes); resolves once the kernel has it. */
  write(buf: Buffer): Promise<void> {
    if (this.ended) return Promise.reject(new Error('the descriptor is closed'));
    if (this.queue.length === 0) {
      const off = this.writeNow(buf, 0);
      if (off < 0) return Promise.reject(this.failure);
      if (off === buf.length) return Promise.resolve();
      return new Promise((resolve, reject) => {
        this.queue.push({ buf, off, resolve, reject });
        this.arm();
      });
    }
    return new Promise((resolve, reject) => this.queue.push({ buf, off: 0, resolve, reject }));
  }

  /** Stops everything; pending writes fail. Idempotent. */
  close(): void {
    if (this.ended && this.armed === -2) return;
    this.finish(new Error('the descriptor is closed'), false);
  }

  private failure = new Error('write failed');

  /** Writes what the kernel takes now: the new offset, or -1 on an error (the stream ends). */
  private writeNow(buf: Buffer, off: number): number {
    while (off < buf.length) {
      try {
        off += writeSync(this.fd, buf, off, buf.length - off);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return off;
        if (code === 'EINTR') continue;
        this.failure = e as Error;
        this.finish(e as Error, true);
        return -1;
      }
    }
    return off;
  }

  private onEvent(errno: number, events: number): void {
    if (this.ended) return;
    const a = io();
    if (errno !== 0) {
      // a hang-up shows as an error on some descriptors: reading tells what it is
      if (this.reading) this.readOnce();
      if (!this.ended) this.finish(new Error(`poll failed: errno ${errno}`), true);
      return;
    }
    if (events & a.WRITABLE) this.flush();
    if (!this.ended && (events & (a.READABLE | a.DISCONNECT)) && this.reading) this.readOnce();
    if (!this.ended) this.arm();
  }

  private flush(): void {
    while (this.queue.length > 0) {
      const w = this.queue[0]!;
      const off = this.writeNow(w.buf, w.off);
      if (off < 0) return;
      w.off = off;
      if (off < w.buf.length) return;
      this.queue.shift();
      w.resolve();
    }
  }

  private readOnce(): void {
    let n: number;
    try {
      n = readSync(this.fd, this.scratch, 0, READ_CHUNK, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR') return;
      // EIO on a tty whose other end closed: the peer is gone
      this.finish(e as Error, true);
      return;
    }
    if (n === 0) {
      this.finish(undefined, true);
      return;
    }
    const chunk = Buffer.allocUnsafe(n);
    this.scratch.copy(chunk, 0, 0, n);
    this.on.data(chunk);
  }

  private arm(): void {
    if (this.ended) return;
    const a = io();
    const want = (this.reading ? a.READABLE | a.DISCONNECT : 0) | (this.queue.length > 0 ? a.WRITABLE : 0);
    if (want === this.armed) return;
    this.armed = want;
    if (want === 0) a.watchStop(this.watch);
    else a.watchStart(this.watch, want);
  }

  private finish(err: Error | undefined, tell: boolean): void {
    if (this.ended) return;
    this.ended = true;
    this.armed = -2;
    io().watchClose(this.watch);
    for (const w of this.queue.splice(0)) w.reject(err ?? new Error('the descriptor is closed'));
    if (this.ownsFd) {
      try {
        closeSync(this.fd);
      } catch {
        /* already closed */
      }
    }
    if (tell) this.on.end(err);
  }
}
