// One guest app's connection: its executor (its own PKCS#11 application),
// its key, the copy of its last response for repeated requests, BUSY signals
// while a call waits or runs, and a limit on how long a call may run before
// the module instance is presumed hung and terminated. One call at a time:
// a client waits for each answer, so a second request while one is in
// flight is refused rather than queued.
import { encodeFrame, FrameType, isBefore } from '../protocol/frame.js';
import { pack, peekFirstUint } from '../protocol/msgpack.js';
import { callById, rvName } from '../protocol/table.js';
import { CKR } from '../protocol/errors.js';
import type { Executor } from './executor.js';
import type { CallGate } from './policy.js';
import type { PortServer } from './port-server.js';

export class Connection {
  private lastReq = 0;
  private lastResponse: Buffer | undefined;
  private inflight: number | undefined;
  /** The call in flight, for close() to let it finish first. */
  private current: Promise<void> | undefined;
  private closed = false;
  lastSeen = Date.now();
  calls = 0;
  /** Whether a request with the right key has come: a HELLO repeated after that never replaces it. */
  proven = false;
  /** Requests that named this connection with a wrong key. */
  wrongKeys = 0;

  constructor(
    readonly id: number,
    /** The secret every request of this connection carries (HELLO_OK gave it to the app only). */
    readonly key: number,
    readonly port: PortServer,
    readonly executor: Executor,
    readonly maxPayload: number,
    private readonly maxCallMs: number = 10 * 60_000,
    /** The port's policy, if it has one: sees every CALL before the executor does. */
    private readonly gate?: CallGate,
  ) {}

  get portPath(): string {
    return this.port.path;
  }

  /** Keeps an idle connection from expiring (PING, or any call). */
  touch(): void {
    this.lastSeen = Date.now();
  }

  get idle(): boolean {
    return this.inflight === undefined;
  }

  /** Repeats of requests answered from the copy or ignored (never run twice), stale requests dropped, parallel ones refused. */
  readonly retryStats = { replayed: 0, runningRepeats: 0, stale: 0, parallel: 0 };

  async handleCall(req: number, payload: Buffer): Promise<void> {
    this.lastSeen = Date.now();
    const log = this.port.log;
    if (req === this.lastReq && this.lastResponse) {
      // A retry of a request that was answered: answer again, never rerun.
      this.retryStats.replayed++;
      log.debug({ conn: this.id, req }, 'repeated request answered from the copy');
      this.port.send(this.lastResponse);
      return;
    }
    if (this.inflight === req) {
      // A retry of one still running: its answer comes when the run ends.
      this.retryStats.runningRepeats++;
      return;
    }
    if (this.lastReq !== 0 && isBefore(req, this.lastReq)) {
      // An older request (a copy the line duplicated and delayed, or a retry
      // the client has given up on): its answer was superseded; never run it.
      this.retryStats.stale++;
      log.debug({ conn: this.id, req, lastReq: this.lastReq }, 'stale request dropped');
      return;
    }
    if (this.closed) {
      this.port.sendError(this.id, req, CKR.DEVICE_REMOVED, `connection ${this.id} is closing`, 'signal');
      return;
    }
    if (this.inflight !== undefined) {
      // A client that gave up on a call (or ignores the protocol) while it
      // still runs: one call at a time per connection.
      this.retryStats.parallel++;
      log.info({ conn: this.id, req, running: this.inflight }, 'request refused: another call of the connection is running');
      this.port.sendError(this.id, req, CKR.DEVICE_ERROR,
        `request ${req} refused: request ${this.inflight} of this connection is still running (one call at a time per connection)`, 'signal');
      return;
    }
    this.inflight = req;
    this.current = this.run(req, payload);
    await this.current;
  }

  /**
   * Ends the connection: a call already in flight runs to its end (its
   * request reached the executor before the BYE did), then the executor
   * finalizes the module and exits. Until it has, it counts against the
   * port's limit (the daemon counts executors, not connections).
   */
  async close(): Promise<void> {
    this.closed = true;
    await this.current;
    await this.executor.close();
  }

  private async run(req: number, payload: Buffer): Promise<void> {
    const log = this.port.log;
    const id = peekFirstUint(payload);
    const started = process.hrtime.bigint();
    // The port's ticker sends BUSY while the call waits or runs, and ends a
    // call that runs past the limit (no timers per call on the hot path).
    const running = this.port.track(this.id, req);
    try {
      // The port's calls take turns (runningCallsPerPort).
      const reply = await this.port.turn(() => {
        running.deadline = Date.now() + this.maxCallMs;
        running.onHung = () => {
          log.error({ conn: this.id, req, fn: callName(id), limitMs: this.maxCallMs }, 'call exceeded the time limit; terminating the module instance');
          this.executor.kill();
        };
        return this.gate
          ? this.gate.run(payload, (p) => this.executor.call(p), { conn: this.id, req, log })
          : this.executor.call(payload);
      });
      let frame: Buffer;
      if (reply.ok) {
        frame = encodeFrame(FrameType.Result, this.id, req, reply.payload);
        if (log.debugEnabled) {
          const rv = peekFirstUint(reply.payload);
          log.debug({ conn: this.id, req, fn: callName(id), rv: rv === undefined ? undefined : rvName(rv), ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'call');
        }
      } else {
        frame = encodeFrame(FrameType.Error, this.id, req, pack({ rv: reply.rv, message: reply.message }));
        log.warn({ conn: this.id, req, fn: callName(id), rv: rvName(reply.rv), err: reply.message, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'call refused');
      }
      this.calls++;
      this.lastReq = req;
      this.lastResponse = frame;
      this.port.send(frame);
    } finally {
      this.port.untrack(running);
      this.inflight = undefined;
      this.lastSeen = Date.now();
    }
  }
}

const callName = (id: number | undefined): string => (id !== undefined && callById(id)?.name) || `call ${id}`;
