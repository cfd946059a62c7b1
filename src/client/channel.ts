// One open serial port in a guest process, shared by every client on it:
// the frame reader, and the async-mutex that makes each round trip atomic on
// the line. A response is accepted only for the exact request waited on;
// anything else (late answers, echoes, noise) is dropped.
import { Mutex } from 'async-mutex';
import { Deframer } from '../protocol/deframer.js';
import { FrameType, isResponseType, type Frame } from '../protocol/frame.js';
import { CKR, Pkcs11Error } from '../protocol/errors.js';
import { openSerial, type ByteLink } from '../transport/serial.js';

export interface Expect {
  /** undefined: any connection id (the answer to HELLO carries the new one). */
  conn: number | undefined;
  req: number;
  method: string;
  timeoutMs: number;
}

interface Waiter extends Expect {
  resolve(f: Frame): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export class PortChannel {
  private static readonly open = new Map<string, Promise<PortChannel>>();
  readonly mutex = new Mutex();
  private refs = 0;
  private waiter: Waiter | undefined;
  private closedError: Error | undefined;
  readonly stats = { dropped: 0, stray: 0 };

  private constructor(readonly link: ByteLink, maxPayload: number) {
    const deframer = new Deframer(maxPayload, {
      frame: (f) => this.onFrame(f),
      drop: () => this.stats.dropped++,
      oversize: () => this.stats.dropped++,
    });
    link.onData((chunk) => deframer.push(chunk));
    link.onClose((err) => {
      this.closedError = new Pkcs11Error(CKR.DEVICE_ERROR, '', `serial port ${link.path} closed${err ? `: ${err.message}` : ''}`);
      this.waiter?.reject(this.closedError);
    });
  }

  static async acquire(path: string, maxPayload: number): Promise<PortChannel> {
    let p = PortChannel.open.get(path);
    if (!p) {
      p = openSerial(path).then((link) => new PortChannel(link, maxPayload));
      PortChannel.open.set(path, p);
      p.catch(() => PortChannel.open.delete(path));
    }
    const ch = await p;
    ch.refs++;
    return ch;
  }

  async release(): Promise<void> {
    if (--this.refs > 0) return;
    PortChannel.open.delete(this.link.path);
    await this.link.close();
  }

  /** Sends a request and waits for its response. Call with the mutex held. */
  roundTrip(frame: Buffer, expect: Expect): Promise<Frame> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<Frame>((resolve, reject) => {
      const timeout = () =>
        new Pkcs11Error(CKR.DEVICE_ERROR, expect.method,
          `no answer from the p11bridge server on ${this.link.path} within ${expect.timeoutMs} ms (is the daemon running on the other end?)`);
      const w: Waiter = {
        ...expect,
        resolve: (f) => { clearTimeout(w.timer); this.waiter = undefined; resolve(f); },
        reject: (e) => { clearTimeout(w.timer); this.waiter = undefined; reject(e); },
        timer: setTimeout(() => w.reject(timeout()), expect.timeoutMs),
      };
      this.waiter = w;
      this.link.write(frame).catch((err: Error) =>
        w.reject(new Pkcs11Error(CKR.DEVICE_ERROR, expect.method, `cannot write to ${this.link.path}: ${err.message}`)));
    });
  }

  private onFrame(f: Frame): void {
    const w = this.waiter;
    if (!isResponseType(f.type)) return; // our own request echoed by a cooked tty
    if (!w || f.req !== w.req || (w.conn !== undefined && f.conn !== w.conn)) {
      this.stats.stray++;
      return;
    }
    if (f.type === FrameType.Busy) {
      clearTimeout(w.timer);
      w.timer = setTimeout(() => w.reject(new Pkcs11Error(CKR.DEVICE_ERROR, w.method,
        `the p11bridge server on ${this.link.path} stopped answering (silent for ${w.timeoutMs} ms)`)), w.timeoutMs);
      return;
    }
    w.resolve(f);
  }
}
