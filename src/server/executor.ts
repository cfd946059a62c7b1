// One executor process per guest-app connection (PROTOCOL.md section 9): it
// loads the PKCS#11 module, so each app gets a PKCS#11 application of its own
// and a slow or crashing call never blocks the daemon's event loop. It runs
// confined and limited (native/src/exec_sandbox.c); what it prints goes to the
// daemon's log, never to the guest.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
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
  private readonly pending: Pending[] = [];
  private buf: Buffer = Buffer.alloc(0);
  private exitInfo: string | undefined;
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
    try {
      proc = spawn(opts.executable, executorArgs(opts), { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    } catch (err) {
      // EMFILE, EAGAIN, ENOMEM: this app gets no executor; the daemon goes on.
      this.exitInfo = `cannot start executor: ${(err as Error).message}`;
      resolveStart(false);
      resolveExit();
    }
    this.proc = proc;
    if (!proc) return;
    proc.on('spawn', () => resolveStart(true));
    proc.on('error', (err) => {
      this.exitInfo ??= `cannot start executor: ${err.message}`;
      resolveStart(false);
      this.failPending();
      resolveExit();
    });
    proc.on('exit', (code, signal) => {
      resolveStart(true);
      this.exitCode = code;
      this.exitSignal = signal;
      this.exitInfo ??= signal ? `executor killed by ${signal}` : `executor exited with code ${code}`;
      this.failPending();
      resolveExit();
    });
    // A write to (or read from) an executor that just died must not take the daemon down.
    for (const s of [proc.stdin, proc.stdout, proc.stderr]) s?.on('error', () => {});
    proc.stdout?.on('data', (chunk: Buffer) => this.onData(chunk));
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
    if (!this.alive || !this.proc?.stdin) return Promise.resolve(this.deadReply());
    return new Promise((resolve) => {
      this.pending.push({ resolve });
      const head = Buffer.allocUnsafe(4);
      head.writeUInt32BE(payload.length, 0);
      this.proc!.stdin!.write(head);
      this.proc!.stdin!.write(payload);
    });
  }

  /** Closes stdin: the executor finalizes the module and exits (killed after graceMs). */
  async close(graceMs = 5000): Promise<void> {
    if (this.alive) this.proc?.stdin?.end();
    const timer = setTimeout(() => this.proc?.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  kill(): void {
    this.proc?.kill('SIGKILL');
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len > this.opts.maxPayload + 65536) {
        this.exitInfo = `executor sent an oversize reply (${len} bytes)`;
        this.proc?.kill('SIGKILL');
        return;
      }
      if (this.buf.length < 4 + len) return;
      const payload = this.buf.subarray(4, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      const p = this.pending.shift();
      if (p) p.resolve(this.toReply(payload));
    }
  }

  private toReply(payload: Buffer): ExecutorReply {
    const b0 = payload[0] ?? 0;
    const isMap = (b0 >= 0x80 && b0 <= 0x8f) || b0 === 0xde || b0 === 0xdf;
    if (!isMap) return { ok: true, payload: Buffer.from(payload) };
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
    for (const p of this.pending.splice(0)) p.resolve(this.deadReply());
  }
}
