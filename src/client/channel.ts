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
import { GuestPort } from '../transport/guest-port.js';

export interface Expect {
  /** undefined: any connection id (the answer to HELLO carries the new one). */
  conn: number | undefined;
  req: number;
  method: string;
  timeoutMs: number;
}

export class PortChannel {
  private static readonly open = new Map<string, Promise<PortChannel>>();
  readonly mutex = new Mutex();
  private refs = 0;
  readonly stats = { dropped: 0, stray: 0 };

  private constructor(private readonly port: GuestPort, private readonly maxPayload: number) {}

  get path(): string {
    return this.port.path;
  }

  static async acquire(path: string, maxPayload: number): Promise<PortChannel> {
    let p = PortChannel.open.get(path);
    if (!p) {
      const port = new GuestPort(path);
      p = Promise.resolve().then(() => {
        port.open();
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
    PortChannel.open.delete(this.port.path);
    await this.port.close();
  }

  /** Sends a request and waits for its response. Call with the mutex held. */
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
    const path = this.port.path;
    return new Promise<Frame>((resolve, reject) => {
      let done = false;
      let timer: NodeJS.Timeout | undefined;
      let busySeen = false;
      const finish = (err: Error | undefined, f?: Frame) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(f!);
      };
      // A silence timer: BUSY frames from the server restart it.
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          finish(new Pkcs11Error(CKR.DEVICE_ERROR, expect.method, busySeen
            ? `the p11bridge server on ${path} stopped answering (silent for ${expect.timeoutMs} ms)`
            : `no answer from the p11bridge server on ${path} within ${expect.timeoutMs} ms (is the daemon running on the other end?)`));
          // A read still waiting must not take the next lock holder's bytes.
          void this.port.close();
        }, expect.timeoutMs);
      };
      const deframer = new Deframer(this.maxPayload, {
        frame: (f) => {
          if (!isResponseType(f.type)) return; // a request echoed by a tty still in cooked mode
          if (f.req !== expect.req || (expect.conn !== undefined && f.conn !== expect.conn)) {
            this.stats.stray++;
            return;
          }
          if (f.type === FrameType.Busy) {
            busySeen = true;
            return arm();
          }
          finish(undefined, f);
        },
        drop: () => this.stats.dropped++,
        oversize: () => this.stats.dropped++,
      });
      arm();
      // Read while writing: a pty holds only a few KiB each way.
      void (async () => {
        try {
          while (!done) {
            const chunk = await this.port.read();
            if (!done) deframer.push(chunk);
          }
        } catch (e) {
          finish(new Pkcs11Error(CKR.DEVICE_ERROR, expect.method, `cannot read ${path}: ${(e as Error).message}`));
        }
      })();
      this.port.write(frame).catch((e: Error) =>
        finish(new Pkcs11Error(CKR.DEVICE_ERROR, expect.method, `cannot write to ${path}: ${e.message}`)));
    });
  }
}
