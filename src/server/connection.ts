// One guest app's connection: its executor (its own PKCS#11 application),
// the copy of its last response for repeated requests, BUSY signals while a
// call runs long, and a limit on how long a call may run before the module
// instance is presumed hung and terminated.
import { encodeFrame, FrameType } from '../protocol/frame.js';
import { pack, peekFirstUint } from '../protocol/msgpack.js';
import { callById, rvName } from '../protocol/table.js';
import type { Logger } from '../log.js';
import type { Executor } from './executor.js';
import type { CallGate } from './policy.js';

export const BUSY_INTERVAL_MS = 1000;

export class Connection {
  private lastReq = 0;
  private lastResponse: Buffer | undefined;
  private readonly inflight = new Set<number>();
  lastSeen = Date.now();
  calls = 0;

  constructor(
    readonly id: number,
    readonly portPath: string,
    readonly executor: Executor,
    readonly maxPayload: number,
    private readonly send: (frame: Buffer) => void,
    private readonly log: Logger,
    private readonly maxCallMs: number = 10 * 60_000,
    /** The port's policy, if it has one: sees every CALL before the executor does. */
    private readonly gate?: CallGate,
  ) {}

  /** Keeps an idle connection from expiring (PING, or any call). */
  touch(): void {
    this.lastSeen = Date.now();
  }

  get idle(): boolean {
    return this.inflight.size === 0;
  }

  /** Repeats of requests answered from the copy or ignored (never run twice), and stale requests dropped. */
  readonly retryStats = { replayed: 0, runningRepeats: 0, stale: 0 };

  async handleCall(req: number, payload: Buffer): Promise<void> {
    this.lastSeen = Date.now();
    if (req === this.lastReq && this.lastResponse) {
      // A retry of a request that was answered: answer again, never rerun.
      this.retryStats.replayed++;
      this.log.debug({ conn: this.id, req }, 'repeated request answered from the copy');
      this.send(this.lastResponse);
      return;
    }
    if (this.inflight.has(req)) {
      // A retry of one still running: its answer comes when the run ends.
      this.retryStats.runningRepeats++;
      return;
    }
    if (this.lastReq !== 0 && isBefore(req, this.lastReq)) {
      // An older request (a copy the line duplicated and delayed, or a retry
      // the client has given up on): its answer was superseded; never run it.
      this.retryStats.stale++;
      this.log.debug({ conn: this.id, req, lastReq: this.lastReq }, 'stale request dropped');
      return;
    }
    this.inflight.add(req);
    const id = peekFirstUint(payload);
    const name = (id !== undefined && callById(id)?.name) || `call ${id}`;
    const started = process.hrtime.bigint();
    const busy = setInterval(() => this.send(encodeFrame(FrameType.Busy, this.id, req)), BUSY_INTERVAL_MS);
    const hung = setTimeout(() => {
      this.log.error({ conn: this.id, req, fn: name, limitMs: this.maxCallMs }, 'call exceeded the time limit; terminating the module instance');
      this.executor.kill();
    }, this.maxCallMs);
    try {
      const reply = this.gate
        ? await this.gate.run(payload, (p) => this.executor.call(p), { conn: this.id, req })
        : await this.executor.call(payload);
      let frame: Buffer;
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      if (reply.ok) {
        frame = encodeFrame(FrameType.Result, this.id, req, reply.payload);
        const rv = peekFirstUint(reply.payload);
        this.log.debug({ conn: this.id, req, fn: name, rv: rv === undefined ? undefined : rvName(rv), ms }, 'call');
      } else {
        frame = encodeFrame(FrameType.Error, this.id, req, pack({ rv: reply.rv, message: reply.message }));
        this.log.warn({ conn: this.id, req, fn: name, rv: rvName(reply.rv), err: reply.message, ms }, 'call refused');
      }
      this.calls++;
      // Keep the copy until a later request has been answered (a slow run
      // finishing after a newer one must not take the copy back).
      if (this.lastReq === 0 || !isBefore(req, this.lastReq)) {
        this.lastReq = req;
        this.lastResponse = frame;
      }
      this.send(frame);
    } finally {
      clearInterval(busy);
      clearTimeout(hung);
      this.inflight.delete(req);
      this.lastSeen = Date.now();
    }
  }
}

/**
 * Whether request id `a` comes before `b` on a connection: ids increase by one
 * per request and wrap from 2^32-1 to 1, so "before" means at most 2^31 back.
 */
export function isBefore(a: number, b: number): boolean {
  const d = (b - a) >>> 0;
  return d !== 0 && d < 0x80000000;
}
