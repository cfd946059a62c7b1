// One serial port in a guest process, shared by every client on it. A round
// trip takes the in-process mutex (async-mutex), then the device lock that
// other processes on the port respect, and reads the port only while holding
// both. A response is accepted only for the exact request waited on;
// anything else (late answers meant for a process that died, echoes, noise)
// is dropped.
import { Mutex } from 'async-mutex';
import { Deframer } from '../protocol/deframer.js';
import { FrameType, isResponseType, type Frame } from '../protocol/frame.js';
import { CKR, Pkcs11Error } from '../protocol/errors.js';
import { parseAddress, type GuestLink } from '../transport/link.js';
import { TtyGuestLink } from '../transport/tty-link.js';
import { UnixGuestLink } from '../transport/unix-link.js';

export interface Expect {
  /** undefined: any connection id (the answer to HELLO carries the new one). */
  conn: number | undefined;
  req: number;
  method: string;
  /** The call fails after this long without a sign of life from the server (an answer or BUSY), whatever the attempts. */
  timeoutMs: number;
  /** Retry policy: how long one attempt waits and how often the request is sent. */
  retry: RetryPolicy;
  /** Bytes the request and its answer take on the line (for the attempt timeout on a slow UART). */
  lineBytes?: number;
  /** A last check of a frame that matches conn and req (HELLO_OK: its nonce). */
  accept?: (f: Frame) => boolean;
}

export interface RetryPolicy {
  /** Silence after which the request is sent again (before the line time is added). */
  attemptTimeoutMs: number;
  /** Times the request is sent at most (1: never again). */
  maxAttempts: number;
  /** Pause before the 2nd sending; doubles for each further one, up to MAX_BACKOFF_MS. */
  backoffMs: number;
  /** The line's speed in bits/s (10 bits a byte on an 8N1 UART). */
  baudRate: number;
}

/** The same as libp11bridge.so's defaults (attempt_ms 1000, retries 4: five sendings). */
export const DEFAULT_RETRY: RetryPolicy = { attemptTimeoutMs: 1000, maxAttempts: 5, backoffMs: 50, baudRate: 115200 };
export const MAX_BACKOFF_MS = 1000;

/** How long one attempt waits in silence: the base plus the time the bytes need on the line. */
export function attemptTimeout(policy: RetryPolicy, lineBytes: number): number {
  return Math.ceil(policy.attemptTimeoutMs + (lineBytes * 10 * 1000) / policy.baudRate);
}

/** The pause before sending attempt `n` (2, 3, ...). */
export function backoff(policy: RetryPolicy, n: number): number {
  return Math.min(policy.backoffMs * 2 ** Math.max(0, n - 2), MAX_BACKOFF_MS);
}

export interface LineStats {
  /** Damaged pieces dropped (CRC, COBS, short, oversize). */
  dropped: number;
  /** Well-formed responses to other requests (late answers, duplicates) dropped. */
  stray: number;
  /** Requests sent again because no answer came in time. */
  retries: number;
  /** Round trips that ran out of attempts or time. */
  failed: number;
}

export class PortChannel {
  private static readonly open = new Map<string, Promise<PortChannel>>();
  readonly mutex = new Mutex();
  private refs = 0;
  readonly stats: LineStats = { dropped: 0, stray: 0, retries: 0, failed: 0 };

  private constructor(private readonly port: GuestLink, private readonly maxPayload: number) {}

  get path(): string {
    return this.port.address;
  }

  /** The channel for an address, shared by the clients of this process: a device path, or unix:/path. */
  static async acquire(path: string, maxPayload: number, baudRate?: number, link?: GuestLink): Promise<PortChannel> {
    let p = PortChannel.open.get(path);
    if (!p) {
      p = Promise.resolve().then(() => {
        const a = parseAddress(path);
        let port = link;
        if (!port && a.kind === 'unix') port = new UnixGuestLink(path, a.path);
        if (!port) {
          const tty = new TtyGuestLink(path, baudRate);
          tty.open(); // fails early on a wrong path
          port = tty;
        }
        return new PortChannel(port, maxPayload);
      });
      PortChannel.open.set(path, p);
      p.catch(() => PortChannel.open.delete(path));
    }
    const ch = await p;
    ch.refs++;
    return ch;
  }

  async release(): Promise<void> {
    if (--this.refs > 0) return;
    PortChannel.open.delete(this.port.address);
    await this.port.close();
  }

  /**
   * Sends a request and waits for its response, sending the same frame (same
   * connection and request id) again when an attempt meets silence; the
   * server answers a repeat from its copy and never runs a call twice.
   * Call with the mutex held; the device lock is held across all attempts.
   */
  async roundTrip(frame: Buffer, expect: Expect): Promise<Frame> {
    try {
      await this.port.lock(Date.now() + expect.timeoutMs);
    } catch (e) {
      throw new Pkcs11Error(CKR.DEVICE_ERROR, expect.method, (e as Error).message);
    }
    try {
      return await this.exchange(frame, expect);
    } finally {
      this.port.unlock();
    }
  }

  private exchange(frame: Buffer, expect: Expect): Promise<Frame> {
    const path = this.port.address;
    const policy = expect.retry;
    const maxAttempts = Math.max(1, Math.floor(policy.maxAttempts));
    const perAttempt = attemptTimeout(policy, expect.lineBytes ?? frame.length + 64);
    return new Promise<Frame>((resolve, reject) => {
      let done = false;
      let timer: NodeJS.Timeout | undefined;
      let busySeen = false;
      let attempt = 0; // sendings since the last sign of life
      let sent = 0; // sendings in all
      const started = Date.now();
      let deadline = started + expect.timeoutMs; // silence budget: BUSY moves it
      const finish = (err: Error | undefined, f?: Frame) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.port.setListener(undefined);
        if (err) reject(err);
        else resolve(f!);
      };
      const giveUp = () => {
        this.stats.failed++;
        const ms = Date.now() - started;
        const tries = `${sent} attempt${sent === 1 ? '' : 's'}`;
        finish(new Pkcs11Error(CKR.DEVICE_ERROR, expect.method, busySeen
          ? `the p11bridge server on ${path} stopped answering (silent after ${tries}; ${ms} ms in all)`
          : `no answer from the p11bridge server on ${path} within ${ms} ms (${tries}; is the daemon running on the other end?)`));
        // Re-synchronise: a read still waiting must not take the next lock
        // holder's bytes, and the next round trip starts on a fresh port.
        void this.port.close();
      };
      // Waits for an answer to the current attempt; silence sends again.
      const arm = () => {
        clearTimeout(timer);
        const left = deadline - Date.now();
        if (left <= 0) return giveUp();
        timer = setTimeout(() => {
          if (done) return;
          if (attempt >= maxAttempts || Date.now() >= deadline) return giveUp();
          const pause = Math.min(backoff(policy, attempt + 1), Math.max(0, deadline - Date.now()));
          // Keep reading during the pause: a late answer is still the answer.
          timer = setTimeout(() => {
            if (done) return;
            this.stats.retries++;
            send();
          }, pause);
        }, Math.min(perAttempt, left));
      };
      let writing: Promise<void> = Promise.resolve();
      const send = () => {
        attempt++;
        sent++;
        arm();
        // One sending after the other, never interleaved.
        writing = writing.then(() => this.port.write(frame)).catch((e: Error) =>
          finish(new Pkcs11Error(CKR.DEVICE_ERROR, expect.method, `cannot write to ${path}: ${e.message}`)));
      };
      const deframer = new Deframer(this.maxPayload, {
        frame: (f) => {
          if (!isResponseType(f.type)) return; // a request echoed by a tty still in cooked mode
          if (f.req !== expect.req || (expect.conn !== undefined && f.conn !== expect.conn) || (expect.accept && !expect.accept(f))) {
            this.stats.stray++;
            return;
          }
          if (f.type === FrameType.Busy) {
            // The request arrived and runs: restart the silence budget and
            // the attempt count (what can still be lost is the answer).
            busySeen = true;
            deadline = Date.now() + expect.timeoutMs;
            attempt = 1;
            return arm();
          }
          finish(undefined, f);
        },
        drop: () => this.stats.dropped++,
        oversize: () => this.stats.dropped++,
      });
      // Read while writing: a pty holds only a few KiB each way. Data comes
      // while the link is locked, until the round trip ends.
      this.port.setListener((chunk) => {
        if (!done) deframer.push(chunk);
      });
      send();
    });
  }
}
