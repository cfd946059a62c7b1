// Serves one serial port: reads frames, hands HELLO/CALL/BYE/PING to the
// daemon's connections and writes their responses. Each port has its own
// reader, so a busy port never stalls another.
//
// What a guest can make the port hold is bounded: output waits in a queue of
// at most `maxQueuedOutputBytes`; above it the port stops reading (the guest's
// own writes then block) until the line drains, and frames that only signal
// (BUSY, PONG, errors about unknown connections) are dropped rather than
// queued. A line that takes nothing for `stuckLineMs` has its queue dropped:
// every answer is kept by its connection, so a client that reads again gets
// it by resending its request. Calls run at most `runningCallsPerPort` at a
// time; the others wait their turn in order.
import { Deframer } from '../protocol/deframer.js';
import { encodeFrame, FRAME_VERSION, FrameType, isResponseType, type Frame, type FrameHeader } from '../protocol/frame.js';
import { CKR } from '../protocol/errors.js';
import { pack } from '../protocol/msgpack.js';
import type { Link } from '../transport/link.js';
import type { Logger } from '../log.js';
import { GuestLog } from './guest-log.js';
import type { Limits } from './limits.js';
import type { Connection } from './connection.js';

export interface PortHandlers {
  hello(port: PortServer, frame: Frame): void;
  call(port: PortServer, frame: Frame): void;
  bye(port: PortServer, frame: Frame): void;
  ping(port: PortServer, frame: Frame): void;
}

export interface PortStats {
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  dropped: number;
  oversize: number;
  ignored: number;
  /** Frames not queued because the line was not draining. */
  outputDropped: number;
  /** Times the port stopped reading because its output was not draining. */
  paused: number;
  /** Requests with a connection key that did not match (or for no connection). */
  badKeys: number;
}

/** How much a frame matters if the line is backed up. */
export type Importance = 'answer' | 'signal';

/** A call of the port that waits its turn or runs. */
export interface RunningCall {
  readonly conn: number;
  readonly req: number;
  /** When BUSY was last sent (or the call came in). */
  signalled: number;
  /** When the call is taken for hung, once it runs. */
  deadline?: number;
  onHung?: () => void;
}

/** While a call runs longer than this, its client gets a BUSY frame this often. */
export const BUSY_INTERVAL_MS = 1000;

export class PortServer {
  readonly stats: PortStats = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0, dropped: 0, oversize: 0, ignored: 0, outputDropped: 0, paused: 0, badKeys: 0 };
  /** Log lines caused by this port's guests, rate-limited. */
  readonly log: GuestLog;
  /** The connections of this link, by connection id (the daemon keeps them). */
  readonly connections = new Map<number, Connection>();
  /** Calls of this port waiting or running, for BUSY frames and the time limit. */
  private readonly calls = new Set<RunningCall>();
  private readonly waiting: Array<() => void> = [];
  private running = 0;
  private readonly ticker: NodeJS.Timeout;
  private readonly deframer: Deframer;
  private readonly queue: Buffer[] = [];
  private queued = 0;
  private writing = false;
  private inputPaused = false;
  private lastProgress = Date.now();
  private readonly watchdog: NodeJS.Timeout;
  private drained: Array<() => void> = [];
  private closed = false;

  constructor(
    readonly link: Link,
    readonly maxPayload: number,
    private readonly handlers: PortHandlers,
    rootLog: Logger,
    private readonly limits: Limits,
    /** The port as configured (a device path, unix:/path): what policy and limits key on. */
    readonly name: string = link.address,
  ) {
    this.log = new GuestLog(rootLog, link.address, limits.logLinesPerSecond);
    this.deframer = new Deframer(maxPayload, {
      frame: (f) => this.onFrame(f),
      drop: (reason, bytes) => {
        this.stats.dropped++;
        this.log.debug({ reason, bytes }, 'dropped damaged frame');
      },
      oversize: (bytes, header) => this.onOversize(bytes, header),
    });
    link.onData((chunk) => {
      this.stats.bytesIn += chunk.length;
      this.deframer.push(chunk);
    });
    this.watchdog = setInterval(() => this.checkStuck(), Math.max(100, Math.min(5000, limits.stuckLineMs / 4)));
    this.watchdog.unref();
    this.ticker = setInterval(() => this.tick(), BUSY_INTERVAL_MS / 5);
    this.ticker.unref();
  }

  /** Registers a call that has come in: BUSY frames go out for it until untrack(). */
  track(conn: number, req: number): RunningCall {
    const c: RunningCall = { conn, req, signalled: Date.now() };
    this.calls.add(c);
    return c;
  }

  untrack(c: RunningCall): void {
    this.calls.delete(c);
  }

  /** Runs fn once the port has a free turn (runningCallsPerPort at a time, in order). */
  async turn<T>(fn: () => Promise<T>): Promise<T> {
    if (this.running < this.limits.runningCallsPerPort) this.running++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve)); // the turn is handed over
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }

  private tick(): void {
    const now = Date.now();
    for (const c of this.calls) {
      if (now - c.signalled >= BUSY_INTERVAL_MS) {
        c.signalled = now;
        this.send(encodeFrame(FrameType.Busy, c.conn, c.req), 'signal');
      }
      if (c.deadline !== undefined && now >= c.deadline && c.onHung) {
        const hung = c.onHung;
        c.onHung = undefined;
        hung();
      }
    }
  }

  /** The port as configured (several links may share it: the connections to a unix socket). */
  get path(): string {
    return this.name;
  }

  /** Bytes waiting for the line. */
  get queuedBytes(): number {
    return this.queued;
  }

  /**
   * Queues a frame for the line; frames are written whole, in order. A
   * signal is dropped when the queue is over its bound; an answer is dropped
   * only when the queue is twice over it (its connection keeps a copy).
   */
  send(frame: Buffer, importance: Importance = 'answer'): void {
    if (this.closed) return;
    const bound = this.limits.maxQueuedOutputBytes;
    if (this.queued + frame.length > (importance === 'answer' ? 2 * bound : bound)) {
      this.stats.outputDropped++;
      this.pauseInput();
      return;
    }
    this.stats.framesOut++;
    this.queue.push(frame);
    this.queued += frame.length;
    if (this.queued > bound) this.pauseInput();
    if (!this.writing) void this.writeLoop();
  }

  sendError(conn: number, req: number, rv: number, message: string, importance: Importance = 'answer'): void {
    this.send(encodeFrame(FrameType.Error, conn, req, pack({ rv, message })), importance);
  }

  /** Resolves when everything queued has been written (or dropped). */
  drain(): Promise<void> {
    if (!this.writing && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.drained.push(resolve));
  }

  close(): void {
    this.closed = true;
    clearInterval(this.watchdog);
    clearInterval(this.ticker);
    this.log.close();
    this.dropQueue();
  }

  private async writeLoop(): Promise<void> {
    this.writing = true;
    this.lastProgress = Date.now();
    while (this.queue.length > 0) {
      const frame = this.queue[0]!;
      try {
        await this.link.write(frame);
        this.stats.bytesOut += frame.length;
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'write failed');
      }
      this.lastProgress = Date.now();
      // dropQueue() may have emptied the queue while the write was pending
      if (this.queue[0] === frame) {
        this.queue.shift();
        this.queued -= frame.length;
      }
      if (this.inputPaused && this.queued <= this.limits.maxQueuedOutputBytes / 2) this.resumeInput();
    }
    this.writing = false;
    for (const d of this.drained.splice(0)) d();
  }

  private pauseInput(): void {
    if (this.inputPaused || this.closed) return;
    this.inputPaused = true;
    this.stats.paused++;
    this.link.pause();
    this.log.warn({ queuedBytes: this.queued }, 'output not draining: port stops reading until it does');
  }

  private resumeInput(): void {
    if (!this.inputPaused || this.closed) return;
    this.inputPaused = false;
    this.link.resume();
    this.log.info({ queuedBytes: this.queued }, 'output draining again: port reads again');
  }

  private dropQueue(): void {
    const n = this.queue.length;
    this.queue.length = 0;
    this.queued = 0;
    this.stats.outputDropped += n;
    if (!this.writing) for (const d of this.drained.splice(0)) d();
  }

  private checkStuck(): void {
    if (!this.writing || Date.now() - this.lastProgress < this.limits.stuckLineMs) return;
    this.log.warn({ frames: this.queue.length, queuedBytes: this.queued, stuckMs: Date.now() - this.lastProgress }, 'line takes nothing: queued output dropped');
    this.dropQueue();
    this.lastProgress = Date.now();
    void this.link.discard();
    this.resumeInput();
  }

  private onFrame(f: Frame): void {
    this.stats.framesIn++;
    if (isResponseType(f.type)) {
      // Our own frames echoed back by a tty that was still in cooked mode.
      this.stats.ignored++;
      return;
    }
    if (f.version !== FRAME_VERSION) {
      this.log.info({ version: f.version }, 'frame of another protocol version');
      this.sendError(f.conn, f.req, CKR.DEVICE_ERROR, `unsupported frame version ${f.version}; this server speaks frame version ${FRAME_VERSION}`, 'signal');
      return;
    }
    switch (f.type) {
      case FrameType.Hello:
        return this.handlers.hello(this, f);
      case FrameType.Call:
        return this.handlers.call(this, f);
      case FrameType.Bye:
        return this.handlers.bye(this, f);
      case FrameType.Ping:
        return this.handlers.ping(this, f);
      default:
        this.log.info({ type: f.type }, 'unknown frame type');
        this.sendError(f.conn, f.req, CKR.DEVICE_ERROR, `unknown frame type 0x${f.type.toString(16)}`, 'signal');
    }
  }

  private onOversize(bytes: number, header: FrameHeader | undefined): void {
    this.stats.oversize++;
    this.log.warn({ bytes, conn: header?.conn, req: header?.req }, 'oversize frame dropped');
    if (header && header.version === FRAME_VERSION && !isResponseType(header.type)) {
      this.sendError(header.conn, header.req, CKR.ARGUMENTS_BAD, `message of about ${bytes} bytes exceeds this server's limit of ${this.maxPayload} bytes of payload`, 'signal');
    }
  }
}
