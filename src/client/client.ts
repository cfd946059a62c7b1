// Pkcs11Client: every PKCS#11 function as an async method with pkcs11js's
// names and shapes, forwarded to the trusted VM. The methods are installed
// from the call table; only the spots where pkcs11js's API departs from the
// C signature are adapted here (see `adapt`).
import { randomInt } from 'node:crypto';
import { decodeResult, encodeCall, expectedResultBytes, ProtocolError } from '../protocol/codec.js';
import { CKR, Pkcs11Error } from '../protocol/errors.js';
import { encodeFrame, DEFAULT_MAX_PAYLOAD, FrameType, MAX_REQ, nextReq, type Frame } from '../protocol/frame.js';
import { errorSchema, helloOkSchema, parsePayload, SUPPORTED_VERSIONS } from '../protocol/handshake.js';
import { pack } from '../protocol/msgpack.js';
import { CALLS, callByName, STRUCTS, type CallSpec } from '../protocol/table.js';
import { checkStruct } from '../protocol/kinds.js';
import { VERSION } from '../version.js';
import { DEFAULT_RETRY, PortChannel, type LineStats, type RetryPolicy } from './channel.js';
import { argToWire, attrValueToHost, resultFromWire } from './shapes.js';
import type { Attribute, ModuleInfo, Pkcs11Api } from './types.js';

export interface ConnectOptions {
  /** Serial device; defaults to $TEC_COMM_PORT (e.g. /dev/ttyS4). */
  port?: string;
  /**
   * A call fails with CKR_DEVICE_ERROR after this long without a sign of life
   * from the server (an answer, or a BUSY frame while the call runs), across
   * all its attempts. Default 5000.
   */
  timeoutMs?: number;
  /**
   * Silence after which a request is sent again (same connection and request
   * id; the server never runs it twice), plus the time the request and the
   * expected answer take at `baudRate`. Default 1000.
   */
  attemptTimeoutMs?: number;
  /** Times a request is sent at most (the first sending and the resends). Default 5. */
  maxAttempts?: number;
  /** Pause before the first resend in ms, doubling for each further one (at most 1000). Default 50. */
  retryBackoffMs?: number;
  /** The line's speed in bits/s, for the attempt timeout (a UART at 115200 moves about 11.5 KB/s). Default 115200. */
  baudRate?: number;
  /** Largest payload this client accepts; the handshake takes the smaller of both sides. */
  maxPayload?: number;
}

export interface ServerInfo {
  server: string;
  protocolVersion: number;
  maxPayload: number;
  /** The server closes this connection after this long without a call or PING. */
  leaseMs: number | undefined;
  connection: number;
  module: ModuleInfo;
  functions: string[];
}

/** A raw answer: the module's rv and, where the call carries them, the results as wire values. */
export interface RawResult { rv: number; results: unknown[] | undefined }

const CKR_OK = CKR.OK;
const CKF_DONT_BLOCK = 1;

// Merged with the interface Pkcs11Client at the end of this file, whose
// methods the loop there defines on the prototype from the call table.
// eslint-disable-next-line @typescript-eslint/no-unsafe-declaration-merging
export class Pkcs11Client {
  private nextReq = 1;
  private closed = false;
  private readonly supported: ReadonlySet<number>;
  private lastActivity = Date.now();
  private readonly keepAlive: NodeJS.Timeout | undefined;

  private constructor(
    private readonly channel: PortChannel,
    readonly serverInfo: ServerInfo,
    /** The connection's key from HELLO_OK: every request of the connection carries it. Never shown. */
    private readonly key: number,
    supported: number[],
    private readonly timeoutMs: number,
    private readonly retry: RetryPolicy,
  ) {
    this.supported = new Set(supported);
    // An idle app PINGs well within the server's lease, so only apps that
    // vanished (killed, VM rebooted) lose their connection.
    const lease = serverInfo.leaseMs;
    if (lease) {
      this.keepAlive = setInterval(() => void this.ping(lease / 3), Math.max(50, lease / 3));
      this.keepAlive.unref();
    }
  }

  private async ping(idleMs: number): Promise<void> {
    if (this.closed || Date.now() - this.lastActivity < idleMs) return;
    const conn = this.serverInfo.connection;
    try {
      await this.channel.mutex.runExclusive(() => {
        const req = this.takeReq();
        return this.channel.roundTrip(encodeFrame(FrameType.Ping, conn, req, undefined, this.key), { conn, req, method: 'ping', timeoutMs: this.timeoutMs, retry: this.retry });
      });
      this.lastActivity = Date.now();
    } catch {
      // The next call reports what is wrong.
    }
  }

  static async connect(opts: ConnectOptions = {}): Promise<Pkcs11Client> {
    const port = opts.port ?? process.env.TEC_COMM_PORT;
    if (!port) throw new Pkcs11Error(CKR.DEVICE_ERROR, 'connect', 'no serial port given and TEC_COMM_PORT is not set');
    const timeoutMs = opts.timeoutMs ?? 5000;
    const maxPayload = opts.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    const retry: RetryPolicy = {
      attemptTimeoutMs: opts.attemptTimeoutMs ?? DEFAULT_RETRY.attemptTimeoutMs,
      maxAttempts: opts.maxAttempts ?? DEFAULT_RETRY.maxAttempts,
      backoffMs: opts.retryBackoffMs ?? DEFAULT_RETRY.backoffMs,
      baudRate: opts.baudRate ?? DEFAULT_RETRY.baudRate,
    };
    if (!(retry.attemptTimeoutMs > 0 && retry.maxAttempts >= 1 && retry.backoffMs >= 0 && retry.baudRate > 0)) {
      throw new Pkcs11Error(CKR.ARGUMENTS_BAD, 'connect', 'attemptTimeoutMs and baudRate must be positive, maxAttempts at least 1, retryBackoffMs not negative');
    }
    let channel: PortChannel;
    try {
      channel = await PortChannel.acquire(port, maxPayload, opts.baudRate);
    } catch (e) {
      throw new Pkcs11Error(CKR.DEVICE_ERROR, 'connect', (e as Error).message);
    }
    try {
      const nonce = randomInt(1, 0x100000000);
      const req = randomInt(1, MAX_REQ + 1);
      const hello = pack({ versions: SUPPORTED_VERSIONS, nonce, maxPayload, client: `p11bridge-ts/${VERSION}` });
      // The answer is the HELLO_OK (or ERROR) with this request id; a HELLO_OK
      // for another process's HELLO with the same 16-bit id shows another nonce.
      const ours = (f: Frame) => f.type !== FrameType.HelloOk || parsePayload(helloOkSchema, f.payload)?.nonce === nonce;
      const reply = await channel.mutex.runExclusive(() =>
        channel.roundTrip(encodeFrame(FrameType.Hello, 0, req, hello), { conn: undefined, req, method: 'connect', timeoutMs, retry, lineBytes: hello.length + 600, accept: ours }));
      if (reply.type === FrameType.Error) throw errorFrame(reply, 'connect');
      if (reply.type !== FrameType.HelloOk) throw new Pkcs11Error(CKR.DEVICE_ERROR, 'connect', `unexpected answer 0x${reply.type.toString(16)} to HELLO`);
      const h = parsePayload(helloOkSchema, reply.payload);
      if (!h || checkStruct(STRUCTS.info, h.module.info)) {
        throw new Pkcs11Error(CKR.DEVICE_ERROR, 'connect', 'malformed HELLO_OK from the server');
      }
      const info = resultFromWire('info', h.module.info) as ModuleInfo;
      const functions = h.module.functions;
      const serverInfo: ServerInfo = {
        server: h.server,
        protocolVersion: h.version,
        maxPayload: h.maxPayload,
        leaseMs: h.leaseMs,
        connection: reply.conn,
        module: info,
        functions: CALLS.filter((c) => functions.includes(c.id)).map((c) => c.name),
      };
      return new Pkcs11Client(channel, serverInfo, h.key, functions, timeoutMs, retry);
    } catch (e) {
      await channel.release();
      throw e;
    }
  }

  /** What the line did to this client's port so far (shared by the clients of one port in this process). */
  get lineStats(): Readonly<LineStats> {
    return this.channel.stats;
  }

  /** The serial device this client talks through. */
  get port(): string {
    return this.channel.path;
  }

  /** Ends this app's connection: the server finalizes what was left open. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keepAlive);
    const req = this.takeReq();
    try {
      await this.channel.mutex.runExclusive(() =>
        this.channel.roundTrip(encodeFrame(FrameType.Bye, this.serverInfo.connection, req, undefined, this.key), {
          conn: this.serverInfo.connection, req, method: 'close', timeoutMs: this.timeoutMs, retry: this.retry,
        }));
    } catch {
      // The server forgets idle connections on its own; closing must not fail.
    } finally {
      await this.channel.release();
    }
  }

  /**
   * Sends one call with wire-level arguments and returns the module's rv and
   * results untouched: PKCS#11's exact semantics (NULL-buffer length
   * queries, CKR_BUFFER_TOO_SMALL with the needed length).
   */
  async call(name: string, args: readonly unknown[]): Promise<RawResult> {
    const spec = callByName(name);
    if (this.closed) throw new Pkcs11Error(CKR.CRYPTOKI_NOT_INITIALIZED, name, 'this client was closed');
    if (spec.local || !this.supported.has(spec.id)) return { rv: CKR.FUNCTION_NOT_SUPPORTED, results: undefined };
    let payload: Buffer;
    try {
      payload = encodeCall(spec, args);
    } catch (e) {
      // A value the server would refuse unseen by the module (a mechanism
      // parameter or attribute in the wrong form) gets the same rv here.
      if (e instanceof ProtocolError) throw e.refusal ? new Pkcs11Error(e.rv, name, e.message) : new TypeError(e.message);
      throw e;
    }
    if (payload.length > this.serverInfo.maxPayload) {
      throw new Pkcs11Error(CKR.ARGUMENTS_BAD, name, `request of ${payload.length} bytes exceeds the bridge's limit of ${this.serverInfo.maxPayload} bytes`);
    }
    const conn = this.serverInfo.connection;
    this.lastActivity = Date.now();
    const reply = await this.channel.mutex.runExclusive(() => {
      const req = this.takeReq();
      return this.channel.roundTrip(encodeFrame(FrameType.Call, conn, req, payload, this.key), {
        conn, req, method: name, timeoutMs: this.timeoutMs, retry: this.retry,
        lineBytes: payload.length + expectedResultBytes(spec, args, this.serverInfo.maxPayload) + 64,
      });
    });
    if (reply.type === FrameType.Error) throw errorFrame(reply, name);
    if (reply.type !== FrameType.Result) throw new Pkcs11Error(CKR.DEVICE_ERROR, name, `unexpected answer 0x${reply.type.toString(16)}`);
    try {
      return decodeResult(spec, reply.payload);
    } catch (e) {
      throw new Pkcs11Error(CKR.DEVICE_ERROR, name, `malformed answer from the server: ${(e as Error).message}`);
    }
  }

  /** A pkcs11js-shaped call: converts arguments, throws on rv != CKR_OK, shapes the results. */
  async invoke(spec: CallSpec, jsArgs: unknown[]): Promise<unknown> {
    const adapted = adapt[spec.name];
    if (adapted) return adapted(this, spec, jsArgs);
    const results = await this.invokeWire(spec, jsArgs);
    return shapeResults(spec, results, jsArgs);
  }

  /** Converts pkcs11js arguments, calls, and returns the wire results or throws the module's rv. */
  async invokeWire(spec: CallSpec, jsArgs: unknown[]): Promise<unknown[]> {
    const wire = spec.args.map((p, i) => {
      try {
        return argToWire(p.kind, jsArgs[i]);
      } catch (e) {
        throw new TypeError(`${spec.name} argument ${i + 1} (${p.name}): ${(e as Error).message}`);
      }
    });
    const { rv, results } = await this.call(spec.name, wire);
    if (rv !== CKR_OK) throw new Pkcs11Error(rv, spec.name);
    return results ?? [];
  }

  private takeReq(): number {
    const r = this.nextReq;
    this.nextReq = nextReq(r);
    return r;
  }
}

function shapeResults(spec: CallSpec, results: unknown[], jsArgs: unknown[]): unknown {
  const shaped = spec.results.map((p, i) => {
    const argIndex = spec.args.findIndex((a) => a.name === p.name);
    return resultFromWire(p.kind, results[i], argIndex === -1 ? undefined : jsArgs[argIndex]);
  });
  if (shaped.length === 0) return undefined;
  if (shaped.length === 1) return shaped[0];
  return Object.fromEntries(spec.results.map((p, i) => [p.name, shaped[i]]));
}

function errorFrame(f: Frame, method: string): Pkcs11Error {
  const parsed = parsePayload(errorSchema, f.payload);
  if (!parsed) return new Pkcs11Error(CKR.DEVICE_ERROR, method, 'malformed ERROR from the server');
  return new Pkcs11Error(parsed.rv, method, `server: ${parsed.message}`);
}

type Adapter = (c: Pkcs11Client, spec: CallSpec, args: unknown[]) => Promise<unknown>;

/** Where pkcs11js's JavaScript API differs from the C signature. */
const adapt: Record<string, Adapter> = {
  // Options (mutex callbacks, NSS parameters) concern the local process; the
  // server initializes its module instance with CKF_OS_LOCKING_OK.
  C_Initialize: async (c, spec) => void (await c.invokeWire(spec, [])),
  C_GetSlotList: async (c, spec, args) => {
    const [slots] = await c.invokeWire(spec, [args[0] ?? false]);
    return resultFromWire('objectlist', slots);
  },
  C_FindObjects: async (c, spec, args) => {
    const single = args[1] === undefined;
    const [found] = await c.invokeWire(spec, [args[0], single ? 1 : args[1]]);
    const handles = resultFromWire('objectlist', found) as Buffer[];
    return single ? (handles[0] ?? null) : handles;
  },
  C_GetAttributeValue: async (c, spec, args) => {
    const template = args[2] as Attribute[];
    const [values] = await c.invokeWire(spec, args);
    // Like pkcs11js: the caller's template, each entry given its raw value.
    (values as unknown[]).forEach((v, i) => {
      const a = template[i] as unknown as Record<string, unknown>;
      const host = v === null ? undefined : attrValueToHost(template[i]!.type, v);
      a.value = host?.value;
      if (host?.template) a.template = host.template;
    });
    return template;
  },
  C_GetOperationState: async (c, spec, args) => {
    const q = await c.call(spec.name, [argToWire('session', args[0]), null]);
    if (q.rv !== CKR_OK) throw new Pkcs11Error(q.rv, spec.name);
    const [state] = await c.invokeWire(spec, [args[0], Buffer.alloc(Number(q.results![0]))]);
    return state as Buffer;
  },
  C_Verify: async (c, spec, args) => (await c.invokeWire(spec, args), true),
  C_VerifyFinal: async (c, spec, args) => (await c.invokeWire(spec, args), true),
  C_WaitForSlotEvent: async (c, spec, args) => {
    const flags = Number(args[0] ?? 0);
    // A blocking wait would hold the port; poll without blocking instead.
    for (;;) {
      const r = await c.call(spec.name, [flags | CKF_DONT_BLOCK]);
      if (r.rv === CKR_OK) return resultFromWire('slot', r.results![0]);
      if (r.rv !== CKR.NO_EVENT) throw new Pkcs11Error(r.rv, spec.name);
      if (flags & CKF_DONT_BLOCK) return null;
      await new Promise((res) => setTimeout(res, 250));
    }
  },
};

for (const spec of CALLS) {
  if (spec.local) continue;
  Object.defineProperty(Pkcs11Client.prototype, spec.name, {
    value: function (this: Pkcs11Client, ...args: unknown[]) {
      return this.invoke(spec, args);
    },
    writable: true,
    configurable: true,
  });
}

// The generated methods, typed as pkcs11js types them (defined on the
// prototype by the loop above, so the merge declares nothing left unset).
// eslint-disable-next-line @typescript-eslint/no-empty-object-type, @typescript-eslint/no-unsafe-declaration-merging
export interface Pkcs11Client extends Pkcs11Api {}

