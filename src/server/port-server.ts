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
import { Semaphore } from 'async-mutex';
import { Deframer } from '../protocol/deframer.js';
import { encodeFrame, FRAME_VERSION, FrameType, isResponseType, type Frame, type FrameHeader } from '../protocol/frame.js';
import { CKR } from '../protocol/errors.js';
import { pack } from '../protocol/msgpack.js';
import type { ByteLink } from '../transport/server-port.js';
import type { Logger } from '../log.js';
import { GuestLog } from './guest-log.js';
import type { Limits } from './limits.js';

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

export class PortServer {
  readonly stats: PortStats = { framesIn: 0, framesOut: 0, bytesIn: 0, bytesOut: 0, dropped: 0, oversize: 0, ignored: 0, outputDropped: 0, paused: 0, badKeys: 0 };
  /** Log lines caused by this port's guests, rate-limited. */
  readonly log: GuestLog;
  /** Calls of this port running at once. */
  readonly calls: Semaphore;
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
    readonly link: ByteLink,
    readonly maxPayload: number,
    private readonly handlers: PortHandlers,
    rootLog: Logger,
    private readonly limits: Limits,
  ) {
    this.log = new GuestLog(rootLog, link.path, limits.logLinesPerSecond);
    this.calls = new Semaphore(limits.runningCallsPerPort);
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
  }

  get path(): string {
    return this.link.path;
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
