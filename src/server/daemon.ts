// The trusted VM's daemon: loads nothing itself; it probes the module once,
// then serves every port at once and gives each guest app (connection) an
// executor process of its own.
import { randomInt } from 'node:crypto';
import { encodeFrame, DEFAULT_MAX_PAYLOAD, FrameType, type Frame } from '../protocol/frame.js';
import { CKR } from '../protocol/errors.js';
import { helloSchema, negotiateVersion, SUPPORTED_VERSIONS, type HelloOk } from '../protocol/handshake.js';
import { pack, unpack, unpackUntrusted } from '../protocol/msgpack.js';
import { callByName, rvName, PROTOCOL_VERSION } from '../protocol/table.js';
import { openSerial, type ByteLink } from '../transport/server-port.js';
import { defaultExecutorPath } from '../paths.js';
import type { Logger } from '../log.js';
import { Connection } from './connection.js';
import { Executor } from './executor.js';
import { PortServer } from './port-server.js';
import { describePolicy, isRestrictive, PolicyEnforcer, TokenProbe, type PortPolicy } from './policy.js';
import { VERSION } from '../version.js';

export interface DaemonOptions {
  module: string;
  ports: string[];
  log: Logger;
  maxPayload?: number;
  executor?: string;
  maxConnectionsPerPort?: number;
  /** A connection silent for this long (no call, no PING) is closed. Default 10 minutes. */
  leaseMs?: number;
  /** A call running longer is presumed hung: its module instance is terminated. Default 10 minutes. */
  maxCallMs?: number;
  /** Policy per port path (from the config file); a port without one is unrestricted. */
  policies?: ReadonlyMap<string, PortPolicy>;
  /** Opens a port; tests may pass their own. */
  open?: (path: string) => Promise<ByteLink>;
}

export interface ModuleDescription {
  info: unknown[];
  functions: number[];
}

const HELLO_REPLAY_MS = 60_000;
export const DEFAULT_LEASE_MS = 10 * 60_000;

export class Daemon {
  private readonly ports: PortServer[] = [];
  private readonly conns = new Map<number, Connection>();
  private readonly helloReplies = new Map<string, { frame: Buffer; at: number }>();
  private stopping = false;
  private readonly maxPayload: number;
  private readonly executable: string;
  private readonly leaseMs: number;
  private readonly sweeper: NodeJS.Timeout;
  /** Policy enforcement by port path, for ports whose policy restricts something. */
  private readonly gates = new Map<string, PolicyEnforcer>();
  /** Which token is in which slot, for token grants; its executor starts on first need. */
  private readonly probe: TokenProbe;

  private constructor(private readonly opts: DaemonOptions, readonly module: ModuleDescription) {
    this.maxPayload = opts.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    this.executable = opts.executor ?? defaultExecutorPath();
    this.leaseMs = opts.leaseMs ?? DEFAULT_LEASE_MS;
    this.sweeper = setInterval(() => this.expireIdle(), Math.min(5000, Math.max(100, this.leaseMs / 4)));
    this.sweeper.unref();
    this.probe = new TokenProbe({ executable: this.executable, module: opts.module, maxPayload: this.maxPayload, log: opts.log });
    for (const path of opts.ports) {
      const policy = opts.policies?.get(path);
      if (!isRestrictive(policy)) continue;
      this.gates.set(path, new PolicyEnforcer(path, policy, () => this.probe, opts.log));
      opts.log.info({ port: path, ...describePolicy(policy) }, 'port policy');
    }
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    if (opts.ports.length === 0) throw new Error('no serial ports to serve (none of /dev/ttyS4../dev/ttyS9 exists; name them with --port)');
    const executable = opts.executor ?? defaultExecutorPath();
    const module = await probeModule(executable, opts.module, opts.maxPayload ?? DEFAULT_MAX_PAYLOAD);
    const daemon = new Daemon(opts, module);
    const open = opts.open ?? ((p: string) => openSerial(p));
    try {
      for (const path of opts.ports) {
        const link = await open(path);
        daemon.ports.push(new PortServer(link, daemon.maxPayload, daemon.handlers, opts.log));
      }
    } catch (e) {
      await Promise.all(daemon.ports.map((p) => p.link.close()));
      throw e;
    }
    return daemon;
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  stats(): Array<{ port: string; connections: number } & PortServer['stats']> {
    return this.ports.map((p) => ({
      port: p.path,
      connections: [...this.conns.values()].filter((c) => c.portPath === p.path).length,
      ...p.stats,
    }));
  }

  /** Finishes in-flight calls, finalizes every app's module instance, closes the ports. */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopping = true;
    clearInterval(this.sweeper);
    const deadline = Date.now() + graceMs;
    while ([...this.conns.values()].some((c) => !c.idle) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await Promise.all([...this.conns.values()].map((c) => c.executor.close()));
    this.conns.clear();
    await this.probe.close();
    await Promise.all(this.ports.map(async (p) => {
      await p.drain();
      await p.link.close();
    }));
  }

  private readonly handlers = {
    hello: (port: PortServer, f: Frame) => void this.onHello(port, f),
    call: (port: PortServer, f: Frame) => this.onCall(port, f),
    bye: (port: PortServer, f: Frame) => void this.onBye(port, f),
    ping: (port: PortServer, f: Frame) => this.onPing(port, f),
  };

  private onPing(port: PortServer, f: Frame): void {
    // PING on connection 0 only asks whether the server is there.
    if (f.conn !== 0) {
      const conn = this.conns.get(f.conn);
      if (!conn || conn.portPath !== port.path) return this.unknownConnection(port, f);
      conn.touch();
    }
    port.send(encodeFrame(FrameType.Pong, f.conn, f.req));
  }

  /** Closes connections whose app went quiet past the lease (killed, VM rebooted). */
  private expireIdle(): void {
    const now = Date.now();
    for (const [id, conn] of this.conns) {
      if (!conn.idle || now - conn.lastSeen <= this.leaseMs) continue;
      this.conns.delete(id);
      this.opts.log.info({ port: conn.portPath, conn: id, idleMs: now - conn.lastSeen, calls: conn.calls }, 'connection expired');
      void conn.executor.close();
    }
  }

  private unknownConnection(port: PortServer, f: Frame): void {
    port.sendError(f.conn, f.req, CKR.DEVICE_REMOVED,
      `unknown connection ${f.conn} (the server restarted or the connection was closed or expired); start a new connection`);
  }

  private async onHello(port: PortServer, f: Frame): Promise<void> {
    const log = this.opts.log;
    const key = `${port.path}:${f.req}`;
    this.expireHelloReplies();
    const replay = this.helloReplies.get(key);
    if (replay) return port.send(replay.frame);
    if (this.stopping) return port.sendError(0, f.req, CKR.DEVICE_ERROR, 'server is shutting down');

    let hello;
    try {
      hello = helloSchema.parse(unpackUntrusted(f.payload));
    } catch (e) {
      return port.sendError(0, f.req, CKR.DEVICE_ERROR, `malformed HELLO: ${(e as Error).message.slice(0, 300)}`);
    }
    const version = negotiateVersion(SUPPORTED_VERSIONS, hello.versions);
    if (version === undefined) {
      log.warn({ port: port.path, client: hello.client, versions: hello.versions }, 'protocol version mismatch');
      return port.sendError(0, f.req, CKR.DEVICE_ERROR,
        `protocol version mismatch: this server speaks ${SUPPORTED_VERSIONS.join('..')}, the client offered ${hello.versions.join('..')}`);
    }
    const perPort = [...this.conns.values()].filter((c) => c.portPath === port.path).length;
    if (perPort >= (this.opts.maxConnectionsPerPort ?? 32)) {
      return port.sendError(0, f.req, CKR.DEVICE_ERROR, `too many connections on ${port.path} (${perPort})`);
    }

    const id = this.newConnectionId();
    const maxPayload = Math.min(this.maxPayload, hello.maxPayload);
    const executor = new Executor({ executable: this.executable, module: this.opts.module, maxPayload });
    const conn = new Connection(id, port.path, executor, maxPayload, (frame) => port.send(frame), log, this.opts.maxCallMs, this.gates.get(port.path));
    this.conns.set(id, conn);
    void executor.exited.then(() => {
      if (this.conns.get(id) === conn) {
        this.conns.delete(id);
        log.warn({ port: port.path, conn: id }, 'executor ended unexpectedly; connection closed');
      }
    });
    const ok: HelloOk = {
      version,
      maxPayload,
      leaseMs: this.leaseMs,
      server: `p11bridge/${VERSION}`,
      module: { info: this.module.info, functions: this.module.functions },
    };
    const frame = encodeFrame(FrameType.HelloOk, id, f.req, pack(ok));
    this.helloReplies.set(key, { frame, at: Date.now() });
    log.info({ port: port.path, conn: id, client: hello.client, version, maxPayload, executorPid: executor.pid }, 'connection opened');
    port.send(frame);
  }

  private onCall(port: PortServer, f: Frame): void {
    const conn = this.conns.get(f.conn);
    if (!conn || conn.portPath !== port.path) return this.unknownConnection(port, f);
    void conn.handleCall(f.req, f.payload);
  }

  private async onBye(port: PortServer, f: Frame): Promise<void> {
    const conn = this.conns.get(f.conn);
    if (conn && conn.portPath === port.path) {
      this.conns.delete(f.conn);
      await conn.executor.close();
      this.opts.log.info({ port: port.path, conn: f.conn, calls: conn.calls, ...conn.retryStats }, 'connection closed');
    }
    port.send(encodeFrame(FrameType.ByeOk, f.conn, f.req));
  }

  private newConnectionId(): number {
    for (;;) {
      const id = randomInt(1, 0xffffffff);
      if (!this.conns.has(id)) return id;
    }
  }

  private expireHelloReplies(): void {
    const now = Date.now();
    for (const [k, v] of this.helloReplies) if (now - v.at > HELLO_REPLAY_MS) this.helloReplies.delete(k);
  }
}

/** Loads the module once in a throw-away executor: its C_GetInfo and function list. */
export async function probeModule(executable: string, module: string, maxPayload: number): Promise<ModuleDescription> {
  const ex = new Executor({ executable, module, maxPayload });
  try {
    const ask = async (payload: unknown[]): Promise<unknown[]> => {
      const reply = await ex.call(pack(payload));
      if (!reply.ok) throw new Error(`cannot load PKCS#11 module ${module}: ${reply.message}`);
      const v = unpack(reply.payload) as unknown[];
      if (v[0] !== CKR.OK) throw new Error(`PKCS#11 module ${module}: ${rvName(v[0] as number)} while probing`);
      return v;
    };
    const [, functions] = await ask([0]);
    await ask([callByName('C_Initialize').id]);
    const [, info] = await ask([callByName('C_GetInfo').id]);
    await ask([callByName('C_Finalize').id]);
    return { info: info as unknown[], functions: functions as number[] };
  } finally {
    await ex.close();
  }
}

export { PROTOCOL_VERSION };
