// One executor process per guest-app connection (PROTOCOL.md section 9): it
// loads the PKCS#11 module, so each app gets a PKCS#11 application of its own
// and a slow or crashing call never blocks the daemon's event loop.
import { spawn, type ChildProcess } from 'node:child_process';
import { CKR } from '../protocol/errors.js';
import { errorSchema, parsePayload } from '../protocol/handshake.js';

export interface ExecutorOptions {
  executable: string;
  module: string;
  maxPayload: number;
  env?: NodeJS.ProcessEnv;
}

/** The executor's answer: a RESULT payload, or an error it raised itself. */
export type ExecutorReply = { ok: true; payload: Buffer } | { ok: false; rv: number; message: string };

interface Pending {
  resolve(reply: ExecutorReply): void;
}

export class Executor {
  private readonly proc: ChildProcess;
  private readonly pending: Pending[] = [];
  private buf: Buffer = Buffer.alloc(0);
  private exitInfo: string | undefined;
  private stderrTail = '';
  readonly exited: Promise<void>;

  constructor(private readonly opts: ExecutorOptions) {
    this.proc = spawn(opts.executable, ['--module', opts.module, '--max-payload', String(opts.maxPayload)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
    });
    this.proc.stdout!.on('data', (chunk: Buffer) => this.onData(chunk));
    this.proc.stderr!.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-2000);
    });
    // A write to an executor that just died must not take the daemon down.
    this.proc.stdin!.on('error', () => {});
    this.exited = new Promise((resolve) => {
      this.proc.on('error', (err) => {
        this.exitInfo = `cannot start executor ${opts.executable}: ${err.message}`;
        this.failPending();
        resolve();
      });
      this.proc.on('exit', (code, signal) => {
        this.exitInfo ??= signal ? `executor killed by ${signal}` : `executor exited with code ${code}`;
        if (this.stderrTail.trim()) this.exitInfo += `: ${this.stderrTail.trim().split('\n').slice(-3).join(' | ')}`;
        this.failPending();
        resolve();
      });
    });
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }
  get alive(): boolean {
    return this.exitInfo === undefined;
  }
  get busy(): boolean {
    return this.pending.length > 0;
  }

  /** Sends one CALL payload; the replies come back in order. */
  call(payload: Uint8Array): Promise<ExecutorReply> {
    if (!this.alive) return Promise.resolve(this.deadReply());
    return new Promise((resolve) => {
      this.pending.push({ resolve });
      const head = Buffer.allocUnsafe(4);
      head.writeUInt32BE(payload.length, 0);
      this.proc.stdin!.write(head);
      this.proc.stdin!.write(payload);
    });
  }

  /** Closes stdin: the executor finalizes the module and exits. */
  async close(graceMs = 5000): Promise<void> {
    if (this.alive) this.proc.stdin!.end();
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  kill(): void {
    this.proc.kill('SIGKILL');
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len > this.opts.maxPayload + 65536) {
        this.exitInfo = `executor sent an oversize reply (${len} bytes)`;
        this.proc.kill('SIGKILL');
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

  private deadReply(): ExecutorReply {
    return { ok: false, rv: CKR.DEVICE_ERROR, message: this.exitInfo ?? 'executor is gone' };
  }

  private failPending(): void {
    for (const p of this.pending.splice(0)) p.resolve(this.deadReply());
  }
}
