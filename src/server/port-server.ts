// Serves one serial port: reads frames, hands HELLO/CALL/BYE/PING to the
// daemon's connections and writes their responses. Each port has its own
// reader, so a busy port never stalls another.
import { Deframer } from '../protocol/deframer.js';
import { encodeFrame, FRAME_VERSION, FrameType, isResponseType, type Frame, type FrameHeader } from '../protocol/frame.js';
import { CKR } from '../protocol/errors.js';
import { pack } from '../protocol/msgpack.js';
import type { ByteLink } from '../transport/server-port.js';
import type { Logger } from '../log.js';

export interface PortHandlers {
  hello(port: PortServer, frame: Frame): void;
  call(port: PortServer, frame: Frame): void;
  bye(port: PortServer, frame: Frame): void;
  ping(port: PortServer, frame: Frame): void;
}

export interface PortStats {
  framesIn: number;
  framesOut: number;
  dropped: number;
  oversize: number;
  ignored: number;
}

export class PortServer {
  readonly stats: PortStats = { framesIn: 0, framesOut: 0, dropped: 0, oversize: 0, ignored: 0 };
  private readonly deframer: Deframer;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    readonly link: ByteLink,
    readonly maxPayload: number,
    private readonly handlers: PortHandlers,
    private readonly log: Logger,
  ) {
    this.deframer = new Deframer(maxPayload, {
      frame: (f) => this.onFrame(f),
      drop: (reason, bytes) => {
        this.stats.dropped++;
        this.log.debug({ port: link.path, reason, bytes }, 'dropped damaged frame');
      },
      oversize: (bytes, header) => this.onOversize(bytes, header),
    });
    link.onData((chunk) => this.deframer.push(chunk));
  }

  get path(): string {
    return this.link.path;
  }

  /** Queues a frame for the line; frames are written whole, in order. */
  send(frame: Buffer): void {
    this.stats.framesOut++;
    this.writing = this.writing
      .then(() => this.link.write(frame))
      .catch((err: Error) => this.log.error({ port: this.path, err: err.message }, 'write failed'));
  }

  sendError(conn: number, req: number, rv: number, message: string): void {
    this.send(encodeFrame(FrameType.Error, conn, req, pack({ rv, message })));
  }

  async drain(): Promise<void> {
    await this.writing;
  }

  private onFrame(f: Frame): void {
    this.stats.framesIn++;
    if (isResponseType(f.type)) {
      // Our own frames echoed back by a tty that was still in cooked mode.
      this.stats.ignored++;
      return;
    }
    if (f.version !== FRAME_VERSION) {
      this.sendError(f.conn, f.req, CKR.DEVICE_ERROR, `unsupported frame version ${f.version}; this server speaks frame version ${FRAME_VERSION}`);
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
        this.sendError(f.conn, f.req, CKR.DEVICE_ERROR, `unknown frame type 0x${f.type.toString(16)}`);
    }
  }

  private onOversize(bytes: number, header: FrameHeader | undefined): void {
    this.stats.oversize++;
    this.log.warn({ port: this.path, bytes, conn: header?.conn, req: header?.req }, 'oversize frame dropped');
    if (header && header.version === FRAME_VERSION && !isResponseType(header.type)) {
      this.sendError(header.conn, header.req, CKR.ARGUMENTS_BAD, `message of about ${bytes} bytes exceeds this server's limit of ${this.maxPayload} bytes of payload`);
    }
  }
}
