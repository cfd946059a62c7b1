// The test process as a guest speaking raw frames on a pty: for what no
// well-behaved client sends (hostile payloads, replayed HELLOs, wrong keys,
// a reader that stops reading).
import { execFile } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { promisify } from 'node:util';
import { Deframer } from '../../src/protocol/deframer.js';
import { encodeFrame, FrameType, isResponseType, nextReq, type Frame } from '../../src/protocol/frame.js';
import { SUPPORTED_VERSIONS } from '../../src/protocol/handshake.js';
import { pack, unpack } from '../../src/protocol/msgpack.js';
import type { Link } from '../../src/transport/link.js';
import { openTty } from '../../src/transport/tty-link.js';

const execFileP = promisify(execFile);

export interface Session {
  conn: number;
  key: number;
  nonce: number;
  /** The next request id of the connection. */
  req: number;
}

/** A connection's next request id, advancing it (1 .. 65535, wrapping). */
export function takeReq(s: Session): number {
  const req = s.req;
  s.req = nextReq(req);
  return req;
}

export class RawLine {
  private queue: Frame[] = [];
  private waiters: Array<() => void> = [];
  readonly seen: Frame[] = [];
  private constructor(readonly link: Link) {
    const deframer = new Deframer(8 * 1024 * 1024, {
      frame: (f) => {
        if (!isResponseType(f.type)) return; // our own frames, if anything echoes
        this.seen.push(f);
        this.queue.push(f);
        for (const w of this.waiters.splice(0)) w();
      },
      drop: () => {},
      oversize: () => {},
    });
    link.onData((chunk) => deframer.push(Buffer.from(chunk)));
  }

  static async open(path: string): Promise<RawLine> {
    await execFileP('stty', ['-F', path, 'raw', '-echo']);
    // no flock: other clients may take the port after this closes
    return new RawLine(await openTty(path, { lock: false }));
  }

  write(bytes: Buffer): Promise<void> {
    return this.link.write(bytes);
  }

  /** Frames answered so far that nobody took. */
  get pending(): number {
    return this.queue.length;
  }

  /** Drops every frame received so far. */
  clear(): void {
    this.queue.length = 0;
  }

  /** The next response frame for (conn, req), BUSY frames skipped. */
  async next(req: number, conn?: number, timeoutMs = 15_000): Promise<Frame> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.queue.findIndex((f) => f.req === req && (conn === undefined || f.conn === conn) && f.type !== FrameType.Busy);
      if (i !== -1) return this.queue.splice(i, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`no answer for req ${req} within ${timeoutMs} ms; seen: ${JSON.stringify(this.seen.slice(-20).map((f) => [f.type, f.conn, f.req, f.type === FrameType.Error ? unpack(f.payload) : f.payload.length]))}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** HELLO with a fresh (or the given) nonce: the connection and its key. */
  async hello(opts: { nonce?: number; maxPayload?: number; client?: string } = {}): Promise<Session> {
    const nonce = opts.nonce ?? randomInt(1, 0x100000000);
    const req = randomInt(1, 0x10000);
    await this.write(encodeFrame(FrameType.Hello, 0, req, pack({ versions: SUPPORTED_VERSIONS, nonce, maxPayload: opts.maxPayload ?? 1024 * 1024, client: opts.client ?? 'raw-line/1' })));
    const f = await this.next(req);
    if (f.type !== FrameType.HelloOk) throw new Error(`HELLO refused: ${JSON.stringify(unpack(f.payload))}`);
    return { conn: f.conn, key: (unpack(f.payload) as { key: number }).key, nonce, req: 1 };
  }

  /** One CALL on a connection (payload packed unchecked): the RESULT as a value, or the ERROR as { error }. */
  async call(s: Session, payload: unknown[] | Buffer, timeoutMs?: number): Promise<unknown[] | { error: { rv: number; message: string } }> {
    const req = takeReq(s);
    await this.write(encodeFrame(FrameType.Call, s.conn, req, Buffer.isBuffer(payload) ? payload : pack(payload), s.key));
    const f = await this.next(req, s.conn, timeoutMs);
    if (f.type === FrameType.Error) return { error: unpack(f.payload) as { rv: number; message: string } };
    if (f.type !== FrameType.Result) throw new Error(`unexpected frame type 0x${f.type.toString(16)}`);
    return unpack(f.payload) as unknown[];
  }

  /** The rv of a CALL: the RESULT's, or the ERROR's. */
  async rv(s: Session, payload: unknown[] | Buffer, timeoutMs?: number): Promise<number> {
    const r = await this.call(s, payload, timeoutMs);
    return Array.isArray(r) ? (r[0] as number) : r.error.rv;
  }

  async bye(s: Session, timeoutMs?: number): Promise<Frame> {
    const req = takeReq(s);
    await this.write(encodeFrame(FrameType.Bye, s.conn, req, undefined, s.key));
    return this.next(req, s.conn, timeoutMs);
  }

  close(): Promise<void> {
    return this.link.close();
  }
}
