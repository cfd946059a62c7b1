// One executor process per guest-app connection (PROTOCOL.md section 9): it
// loads the PKCS#11 module, so each app gets a PKCS#11 application of its own
// and a slow or crashing call never blocks the daemon's event loop. It runs
// confined and limited (native/src/exec_sandbox.c); what it prints goes to the
// daemon's log, never to the guest.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { FdStream } from '../transport/fd-stream.js';
import { io } from '../transport/io.js';
import { CKR } from '../protocol/errors.js';
import { errorSchema, parsePayload } from '../protocol/handshake.js';
import { printable } from './guest-log.js';

export interface ExecutorLimits {
  memoryMiB?: number;
  maxFiles?: number;
  nice?: number;
  allowNetwork?: boolean;
}

export interface ExecutorOptions {
  executable: string;
  module: string;
  maxPayload: number;
  env?: NodeJS.ProcessEnv;
  limits?: ExecutorLimits;
  /** A line the executor (or the module in it) printed on stderr. */
  onStderr?: (line: string) => void;
}

/** The executor's answer: a RESULT payload, or an error it raised itself. */
export type ExecutorReply = { ok: true; payload: Buffer } | { ok: false; rv: number; message: string };

interface Pending {
  resolve(reply: ExecutorReply): void;
}

export function executorArgs(opts: ExecutorOptions): string[] {
  const args = ['--module', opts.module, '--max-payload', String(opts.maxPayload)];
  const l = opts.limits;
  if (l?.memoryMiB) args.push('--memory-mib', String(l.memoryMiB));
  if (l?.maxFiles) args.push('--max-files', String(l.maxFiles));
  if (l?.nice) args.push('--nice', String(l.nice));
  if (l?.allowNetwork) args.push('--allow-network');
  return args;
}

export class Executor {
  private readonly proc: ChildProcess | undefined;
  /** To the executor's stdin and from its stdout: our own pipes, read and written without stream machinery. */
  private toExec: FdStream | undefined;
  private fromExec: FdStream | undefined;
  private readonly pending: Pending[] = [];
  private chunks: Buffer[] = [];
  private have = 0;
  private exitInfo: string | undefined;
  /** Why the daemon killed it, if it did. */
  private fatal: string | undefined;
  private exitCode: number | null = null;
  private exitSignal: NodeJS.Signals | null = null;
  readonly exited: Promise<void>;
  /** true once the process runs; false if it could not be started (EMFILE, ENOENT ...). */
  readonly started: Promise<boolean>;

  constructor(private readonly opts: ExecutorOptions) {
    let proc: ChildProcess | undefined;
    let resolveExit!: () => void;
    let resolveStart!: (ok: boolean) => void;
    this.exited = new Promise((resolve) => (resolveExit = resolve));
    this.started = new Promise((resolve) => (resolveStart = resolve));
    const fds: number[] = [];
    try {
      const [childIn, parentOut] = io().pipe();
      fds.push(childIn, parentOut);
      const [parentIn, childOut] = io().pipe();
      fds.push(parentIn, childOut);
      proc = spawn(opts.executable, executorArgs(opts), { stdio: [childIn, childOut, 'pipe'], env: opts.env ?? process.env });
      closeSync(childIn);
      closeSync(childOut);
      fds.length = 0;
      this.toExec = new FdStream(parentOut, { data: () => {}, end: () => {} });
      this.fromExec = new FdStream(parentIn, { data: (chunk) => this.onData(chunk), end: () => settle('stdout') });
      this.fromExec.resume();
    } catch (err) {
      // EMFILE, EAGAIN, ENOMEM: this app gets no executor; the daemon goes on.
      for (const fd of fds) {
        try {
          closeSync(fd);
        } catch {
          /* already closed */
        }
      }
      this.exitInfo = `cannot start executor: ${(err as Error).message}`;
      resolveStart(false);
      resolveExit();
    }
    this.proc = proc;
    if (!proc) return;
    // It has ended once it exited and its last answers are read (its stdout
    // ended): the exit may be seen first.
    let exitedProc = false, stdoutEnded = false, note = '';
    const settle = (what: 'exit' | 'stdout' | 'error') => {
      if (what === 'stdout') stdoutEnded = true;
      else exitedProc = true;
      if (this.exitInfo !== undefined || !exitedProc || (!stdoutEnded && what !== 'error')) {
        if (exitedProc && !stdoutEnded) setTimeout(() => settle('error'), 1000).unref();
        return;
      }
      this.exitInfo = this.fatal ?? note;
      this.failPending();
      resolveExit();
    };
    proc.on('spawn', () => resolveStart(true));
    proc.on('error', (err) => {
      note = `cannot start executor: ${err.message}`;
      resolveStart(false);
      settle('error');
    });
    proc.on('exit', (code, signal) => {
      resolveStart(true);
      this.toExec?.close();
      this.exitCode = code;
      this.exitSignal = signal;
      note = signal ? `executor killed by ${signal}` : `executor exited with code ${code}`;
      settle('exit');
    });
    // A read from an executor that just died must not take the daemon down.
    proc.stderr?.on('error', () => {});
    if (proc.stderr) {
      const lines = createInterface({ input: proc.stderr, crlfDelay: Infinity });
      lines.on('line', (line) => opts.onStderr?.(printable(line, 500)));
      lines.on('error', () => {});
    }
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }
  get alive(): boolean {
    return this.exitInfo === undefined;
  }
  get busy(): boolean {
    return this.pending.length > 0;
  }
  /** How it ended, for the daemon's log (undefined while it runs). */
  get ending(): { info: string; code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.exitInfo === undefined ? undefined : { info: this.exitInfo, code: this.exitCode, signal: this.exitSignal };
  }

  /** Sends one CALL payload; the replies come back in order. */
  call(payload: Uint8Array): Promise<ExecutorReply> {
    const out = this.toExec;
    if (!this.alive || !out) return Promise.resolve(this.deadReply());
    return new Promise((resolve) => {
      this.pending.push({ resolve });
      // one write: a 4-byte big-endian length, then the payload
      const msg = Buffer.allocUnsafe(4 + payload.length);
      msg.writeUInt32BE(payload.length, 0);
      msg.set(payload, 4);
      // a write to an executor that just died fails; its exit answers the call
      out.write(msg).catch(() => {});
    });
  }

  /** Closes stdin: the executor finalizes the module and exits (killed after graceMs). */
  async close(graceMs = 5000): Promise<void> {
    if (this.alive) this.toExec?.close();
    const timer = setTimeout(() => this.proc?.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  kill(): void {
    this.proc?.kill('SIGKILL');
  }

  private onData(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.have += chunk.length;
    while (this.have >= 4) {
      const len = this.peekLength();
      if (len > this.opts.maxPayload + 65536) {
        this.fatal = `executor sent an oversize reply (${len} bytes)`;
        this.proc?.kill('SIGKILL');
        return;
      }
      if (this.have < 4 + len) return;
      const payload = this.take(4 + len).subarray(4);
      const p = this.pending.shift();
      if (p) p.resolve(this.toReply(payload));
    }
  }

  private peekLength(): number {
    const first = this.chunks[0]!;
    if (first.length >= 4) return first.readUInt32BE(0);
    return Buffer.concat(this.chunks, 4).readUInt32BE(0);
  }

  /** The next n bytes: a slice of one chunk where they lie in one, else joined once. */
  private take(n: number): Buffer {
    this.have -= n;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }

  private toReply(payload: Buffer): ExecutorReply {
    const b0 = payload[0] ?? 0;
    const isMap = (b0 >= 0x80 && b0 <= 0x8f) || b0 === 0xde || b0 === 0xdf;
    // FdStream hands over fresh buffers: the payload is ours to keep
    if (!isMap) return { ok: true, payload };
    const parsed = parsePayload(errorSchema, payload);
    return parsed
      ? { ok: false, rv: parsed.rv, message: parsed.message }
      : { ok: false, rv: CKR.DEVICE_ERROR, message: 'executor sent a malformed error reply' };
  }

  /** What the guest is told: how the executor ended, not what it printed. */
  private deadReply(): ExecutorReply {
    return { ok: false, rv: CKR.DEVICE_ERROR, message: this.exitInfo ?? 'executor is gone' };
  }

  private failPending(): void {
    this.fromExec?.close();
    this.toExec?.close();
    for (const p of this.pending.splice(0)) p.resolve(this.deadReply());
  }
}
