// The trusted VM's daemon: loads nothing itself; it probes the module once,
// then serves every port at once and gives each guest app (connection) an
// executor process of its own. Every connection has a key that only the app
// that opened it learned (in HELLO_OK); a request without it is treated as
// one for a connection that does not exist, so no process on a guest port
// can act in another's connection by guessing or reading its id.
import { randomInt } from 'node:crypto';
import { encodeFrame, FrameType, type Frame } from '../protocol/frame.js';
import { CKR } from '../protocol/errors.js';
import { helloSchema, negotiateVersion, SUPPORTED_VERSIONS, type HelloOk } from '../protocol/handshake.js';
import { pack, unpack, unpackUntrusted } from '../protocol/msgpack.js';
import { callByName, LIMITS, rvName, PROTOCOL_VERSION } from '../protocol/table.js';
import { parseAddress, type Link } from '../transport/link.js';
import { openTty } from '../transport/tty-link.js';
import { listenUnix, type UnixListener } from '../transport/unix-link.js';
import { defaultExecutorPath } from '../paths.js';
import type { Logger } from '../log.js';
import { Connection } from './connection.js';
import { Executor, type ExecutorLimits } from './executor.js';
import { printable } from './guest-log.js';
import { withDefaults, type Limits } from './limits.js';
import { PortServer } from './port-server.js';
import { describePolicy, isRestrictive, PolicyEnforcer, TokenProbe, type PortPolicy } from './policy.js';
import { VERSION } from '../version.js';

export interface DaemonOptions {
  module: string;
  ports: string[];
  log: Logger;
  maxPayload?: number;
  executor?: string;
  /** Bounds on what guests can make the daemon hold (limits.ts); the rest take their defaults. */
  limits?: Partial<Limits>;
  /** A connection silent for this long (no call, no PING) is closed. Default 10 minutes. */
  leaseMs?: number;
  /** A call running longer is presumed hung: its module instance is terminated. Default 10 minutes. */
  maxCallMs?: number;
  /** Policy per port path (from the config file); a port without one is unrestricted but for token initialisation. */
  policies?: ReadonlyMap<string, PortPolicy>;
  /** Opens a serial port; tests may pass their own (an in-memory link, a faulty line). */
  open?: (path: string) => Promise<Link>;
}

export interface ModuleDescription {
  info: unknown[];
  functions: number[];
  /** What the executor's confinement put in force (exec_sandbox.c), e.g. "no-core ... seccomp". */
  sandbox: string;
}

const HELLO_REPLAY_MS = 60_000;
export const DEFAULT_LEASE_MS = 10 * 60_000;
const NO_POLICY: PortPolicy = { readOnly: false };

interface HelloSeen {
  conn: Connection;
  at: number;
}

/** Requests with a wrong key a connection takes before it is closed: guessing a key costs its owner the connection, never more. */
const MAX_WRONG_KEYS = 16;

export class Daemon {
  private readonly ports = new Set<PortServer>();
  private readonly listeners: UnixListener[] = [];
  private readonly reopening = new Map<string, NodeJS.Timeout>();
  /** Every connection; each port also keeps its own by connection id. */
  private readonly conns = new Set<Connection>();
  /** HELLO nonces of the last minute per port, with the connection each one opened. */
  private readonly hellos = new Map<string, HelloSeen>();
  /** Executors per port and in all, counted from spawn until they have exited. */
  private readonly executorsByPort = new Map<string, number>();
  private executorsInAll = 0;
  /** Answers to requests with a wrong key or unknown connection this second, per port. */
  private readonly badKeyBudget = new Map<string, { second: number; answered: number }>();
  private stopping = false;
  private readonly maxPayload: number;
  private readonly executable: string;
  private readonly leaseMs: number;
  readonly limits: Limits;
  private readonly sweeper: NodeJS.Timeout;
  /** Policy enforcement by port path. */
  private readonly gates = new Map<string, PolicyEnforcer>();
  /** Which token is in which slot, for token grants; its executor starts on first need. */
  private readonly probe: TokenProbe;

  private constructor(private readonly opts: DaemonOptions, readonly module: ModuleDescription, limits: Limits) {
    this.limits = limits;
    this.maxPayload = opts.maxPayload ?? LIMITS.defaultMaxPayload;
    this.executable = opts.executor ?? defaultExecutorPath();
    this.leaseMs = opts.leaseMs ?? DEFAULT_LEASE_MS;
    this.sweeper = setInterval(() => this.expireIdle(), Math.min(5000, Math.max(100, this.leaseMs / 4)));
    this.sweeper.unref();
    this.probe = new TokenProbe({ executable: this.executable, module: opts.module, maxPayload: this.maxPayload, log: opts.log, limits: executorLimits(limits) });
    for (const path of opts.ports) {
      const policy = opts.policies?.get(path) ?? NO_POLICY;
      this.gates.set(path, new PolicyEnforcer(path, policy, () => this.probe, opts.log));
      if (policy.initToken === true || isRestrictive(policy)) opts.log.info({ port: path, ...describePolicy(policy) }, 'port policy');
    }
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    if (opts.ports.length === 0) throw new Error('no serial ports to serve (none of /dev/ttyS4../dev/ttyS9 exists; name them with --port)');
    const limits = withDefaults(opts.limits);
    const executable = opts.executor ?? defaultExecutorPath();
    const module = await probeModule(executable, opts.module, opts.maxPayload ?? LIMITS.defaultMaxPayload, executorLimits(limits));
    const daemon = new Daemon(opts, module, limits);
    opts.log.info({ sandbox: module.sandbox, ...limits }, 'executor confinement and limits');
    try {
      for (const address of opts.ports) await daemon.openPort(address);
    } catch (e) {
      await daemon.closePorts();
      throw e;
    }
    return daemon;
  }

  /** Serves an address: a serial line, or every connection to a unix socket. */
  private async openPort(address: string): Promise<void> {
    const a = parseAddress(address);
    if (a.kind === 'unix') {
      this.listeners.push(await listenUnix(a.path, (link) => this.addLink(link, address)));
      return;
    }
    this.addLink(await (this.opts.open ?? ((p: string) => openTty(p)))(address), address);
  }

  private addLink(link: Link, name: string): void {
    const port = new PortServer(link, this.maxPayload, this.handlers, this.opts.log, this.limits, name);
    this.ports.add(port);
    link.onClose((err) => this.onLinkClosed(port, err));
  }

  /**
   * A link ended under us: a serial line whose other end hung up (a guest
   * VM powered off, a pty closed), or a client of a unix socket that left.
   * Its connections end; a serial line is opened again once it is back.
   */
  private onLinkClosed(port: PortServer, err?: Error): void {
    if (!this.ports.delete(port)) return;
    for (const conn of [...port.connections.values()]) this.closeConnection(conn, 'closed: its link ended');
    port.close();
    void port.link.close();
    if (parseAddress(port.name).kind === 'unix') {
      port.log.info({}, 'client of the socket left');
      return;
    }
    this.opts.log.warn({ port: port.name, err: err?.message }, 'port hung up; opening it again once it is back');
    this.reopen(port.name);
  }

  private reopen(address: string): void {
    if (this.stopping || this.reopening.has(address)) return;
    const attempt = () => {
      this.reopening.delete(address);
      if (this.stopping) return;
      this.openPort(address).then(
        () => this.opts.log.info({ port: address }, 'port open again'),
        () => this.reopening.set(address, setTimeout(attempt, 1000).unref()),
      );
    };
    this.reopening.set(address, setTimeout(attempt, 1000).unref());
  }

  private async closePorts(): Promise<void> {
    for (const t of this.reopening.values()) clearTimeout(t);
    this.reopening.clear();
    await Promise.all(this.listeners.splice(0).map((l) => l.close()));
    const ports = [...this.ports];
    this.ports.clear();
    await Promise.all(ports.map(async (p) => {
      await Promise.race([p.drain(), new Promise((r) => setTimeout(r, 2000))]);
      p.close();
      await p.link.close();
    }));
  }

  get connectionCount(): number {
    return this.conns.size;
  }

  /** Executors running or still finishing, in all. */
  get executorCount(): number {
    return this.executorsInAll;
  }

  stats(): Array<{ port: string; connections: number; executors: number; queuedBytes: number } & PortServer['stats']> {
    return [...this.ports].map((p) => ({
      port: p.path,
      connections: p.connections.size,
      executors: this.executorsByPort.get(p.path) ?? 0,
      queuedBytes: p.queuedBytes,
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
    const closing = [...this.conns.values()];
    this.conns.clear();
    await Promise.all(closing.map((c) => c.executor.close()));
    await this.probe.close();
    await this.closePorts();
  }

  private readonly handlers = {
    hello: (port: PortServer, f: Frame) => void this.onHello(port, f),
    call: (port: PortServer, f: Frame) => this.onCall(port, f),
    bye: (port: PortServer, f: Frame) => void this.onBye(port, f),
    ping: (port: PortServer, f: Frame) => this.onPing(port, f),
  };

  /**
   * The connection a request is for, if its key is right. A request for no
   * connection and one with a wrong key get the same answer (or, over the
   * port's budget, none), so an answer tells a guesser nothing.
   */
  private authenticate(port: PortServer, f: Frame, what: string): Connection | undefined {
    const conn = port.connections.get(f.conn);
    if (conn && conn.key === f.key) {
      conn.proven = true;
      return conn;
    }
    if (conn) {
      port.stats.badKeys++;
      port.log.warn({ conn: f.conn, req: f.req, frame: what }, 'request with a wrong connection key refused');
      if (++conn.wrongKeys >= MAX_WRONG_KEYS) this.closeConnection(conn, `closed: ${MAX_WRONG_KEYS} requests with a wrong key`);
    } else {
      port.log.info({ conn: f.conn, req: f.req, frame: what }, 'request for an unknown connection');
    }
    return undefined;
  }

  /** Whether a refusal may still be answered this second on this port. */
  private mayAnswerRefusal(port: PortServer): boolean {
    const second = Math.floor(Date.now() / 1000);
    let b = this.badKeyBudget.get(port.path);
    if (!b || b.second !== second) this.badKeyBudget.set(port.path, (b = { second, answered: 0 }));
    return b.answered++ < this.limits.badKeyAnswersPerSecond;
  }

  private unknownConnection(port: PortServer, f: Frame): void {
    if (!this.mayAnswerRefusal(port)) return;
    port.sendError(f.conn, f.req, CKR.DEVICE_REMOVED,
      `unknown connection ${f.conn} (the server restarted or the connection was closed or expired); start a new connection`, 'signal');
  }

  private onPing(port: PortServer, f: Frame): void {
    // PING on connection 0 only asks whether the server is there.
    if (f.conn !== 0) {
      const conn = this.authenticate(port, f, 'PING');
      if (!conn) return this.unknownConnection(port, f);
      conn.touch();
    }
    port.send(encodeFrame(FrameType.Pong, f.conn, f.req), 'signal');
  }

  /** Closes connections whose app went quiet past the lease (killed, VM rebooted). */
  private expireIdle(): void {
    const now = Date.now();
    for (const conn of this.conns) {
      if (!conn.idle || now - conn.lastSeen <= this.leaseMs) continue;
      this.conns.delete(conn);
      conn.port.connections.delete(conn.id);
      this.opts.log.info({ port: conn.portPath, conn: conn.id, idleMs: now - conn.lastSeen, calls: conn.calls }, 'connection expired');
      void conn.executor.close();
    }
    for (const [k, v] of this.hellos) if (now - v.at > HELLO_REPLAY_MS) this.hellos.delete(k);
  }

  private async onHello(port: PortServer, f: Frame): Promise<void> {
    if (this.stopping) return port.sendError(0, f.req, CKR.DEVICE_ERROR, 'server is shutting down', 'signal');
    let hello;
    try {
      hello = helloSchema.parse(unpackUntrusted(f.payload));
    } catch (e) {
      port.log.info({ req: f.req }, 'malformed HELLO');
      const issue = (e as { issues?: Array<{ message: string; path: PropertyKey[] }> }).issues?.[0];
      const why = issue ? `${issue.path.join('.') || 'payload'}: ${issue.message}` : (e as Error).message;
      return port.sendError(0, f.req, CKR.DEVICE_ERROR, `malformed HELLO: ${why.slice(0, 300)}`, 'signal');
    }
    const client = printable(hello.client ?? '', 100);
    const version = negotiateVersion(SUPPORTED_VERSIONS, hello.versions);
    if (version === undefined) {
      port.log.warn({ client, versions: hello.versions }, 'protocol version mismatch');
      return port.sendError(0, f.req, CKR.DEVICE_ERROR,
        `protocol version mismatch: this server speaks ${SUPPORTED_VERSIONS.join('..')}, the client offered ${hello.versions.join('..')}`, 'signal');
    }

    // A repeated HELLO (the answer was lost, so the app sends it again) gets a
    // new connection with a new key; the earlier one is closed if its app
    // never used it. A nonce whose connection is in use is never served again.
    const nonceKey = `${port.path}:${hello.nonce}`;
    const seen = this.hellos.get(nonceKey);
    if (seen && Date.now() - seen.at <= HELLO_REPLAY_MS && this.conns.has(seen.conn)) {
      if (seen.conn.proven) {
        port.log.warn({ req: f.req, conn: seen.conn.id, client }, 'HELLO repeats the nonce of a connection in use: refused');
        return port.sendError(0, f.req, CKR.DEVICE_ERROR, 'this HELLO nonce opened a connection that is in use; send a HELLO with a new nonce', 'signal');
      }
      this.closeConnection(seen.conn, 'replaced by a repeated HELLO');
    }

    const perPort = this.executorsByPort.get(port.path) ?? 0;
    if (perPort >= this.limits.maxConnectionsPerPort || this.executorsInAll >= this.limits.maxExecutors) {
      const where = perPort >= this.limits.maxConnectionsPerPort ? `on ${port.path} (${perPort} of ${this.limits.maxConnectionsPerPort})` : `on this server (${this.executorsInAll} of ${this.limits.maxExecutors})`;
      port.log.warn({ client, perPort, inAll: this.executorsInAll }, 'connection refused: too many connections');
      return port.sendError(0, f.req, CKR.DEVICE_ERROR, `too many connections ${where}; close unused ones (C_Finalize) and try again`, 'signal');
    }

    const key = randomInt(1, 0x100000000);
    const maxPayload = Math.min(this.maxPayload, hello.maxPayload);
    let id = 0;
    const executor = new Executor({
      executable: this.executable, module: this.opts.module, maxPayload, limits: executorLimits(this.limits),
      onStderr: (line) => port.log.warn({ conn: id, line }, 'executor stderr'),
    });
    this.countExecutor(port.path, executor);
    if (!(await executor.started)) {
      // EMFILE, EAGAIN, a missing executor: this app is refused; the daemon and its other apps go on.
      const why = executor.ending?.info ?? 'cannot start executor';
      port.log.error({ client, err: why }, 'connection refused: cannot start an executor');
      return port.sendError(0, f.req, CKR.DEVICE_ERROR, `the server cannot start a module instance for this app now (${why}); try again later`, 'signal');
    }
    id = this.newConnectionId(port);
    if (id === 0 || this.stopping) {
      void executor.close();
      return port.sendError(0, f.req, CKR.DEVICE_ERROR, `no free connection on ${port.path}; try again later`, 'signal');
    }
    const conn = new Connection(id, key, port, executor, maxPayload, this.opts.maxCallMs, this.gates.get(port.path));
    this.conns.add(conn);
    port.connections.set(id, conn);
    this.hellos.set(nonceKey, { conn, at: Date.now() });
    void executor.exited.then(() => {
      if (!this.conns.delete(conn)) return;
      port.connections.delete(id);
      const e = executor.ending;
      port.log.warn({ conn: id, exit: e?.info, code: e?.code, signal: e?.signal }, 'executor ended unexpectedly; connection closed');
    });
    const ok: HelloOk = {
      version,
      maxPayload,
      leaseMs: this.leaseMs,
      server: `p11bridge/${VERSION}`,
      nonce: hello.nonce,
      key,
      module: { info: this.module.info, functions: this.module.functions },
    };
    port.log.info({ conn: id, client, version, maxPayload, executorPid: executor.pid }, 'connection opened');
    port.send(encodeFrame(FrameType.HelloOk, id, f.req, pack(ok)));
  }

  private onCall(port: PortServer, f: Frame): void {
    const conn = this.authenticate(port, f, 'CALL');
    if (!conn) return this.unknownConnection(port, f);
    void conn.handleCall(f.req, f.payload);
  }

  private async onBye(port: PortServer, f: Frame): Promise<void> {
    const conn = this.authenticate(port, f, 'BYE');
    if (conn) {
      this.closeConnection(conn, 'closed');
      await conn.close();
    } else if (!this.mayAnswerRefusal(port)) {
      return;
    }
    // BYE_OK whether or not the connection existed: a repeated BYE is harmless.
    port.send(encodeFrame(FrameType.ByeOk, f.conn, f.req), 'signal');
  }

  private closeConnection(conn: Connection, why: string): void {
    if (!this.conns.delete(conn)) return;
    conn.port.connections.delete(conn.id);
    conn.port.log.info({ conn: conn.id, calls: conn.calls, ...conn.retryStats }, `connection ${why}`);
    void conn.close();
  }

  /** Counts an executor against its port and the daemon until it has exited (not just until its connection ended). */
  private countExecutor(path: string, executor: Executor): void {
    this.executorsByPort.set(path, (this.executorsByPort.get(path) ?? 0) + 1);
    this.executorsInAll++;
    void executor.exited.then(() => {
      this.executorsByPort.set(path, (this.executorsByPort.get(path) ?? 1) - 1);
      this.executorsInAll--;
    });
  }

  /** A connection id free on the port (1 .. 255, chosen at random), or 0 if none is. */
  private newConnectionId(port: PortServer): number {
    const free: number[] = [];
    for (let id = 1; id <= LIMITS.maxConnectionsPerPort; id++) if (!port.connections.has(id)) free.push(id);
    return free.length ? free[randomInt(free.length)]! : 0;
  }
}

export const executorLimits = (l: Limits): ExecutorLimits => ({
  memoryMiB: l.executorMemoryMiB,
  maxFiles: l.executorMaxFiles,
  nice: l.executorNice,
  allowNetwork: l.executorNetwork,
});

/** Loads the module once in a throw-away executor: its C_GetInfo, function list and the executor's confinement. */
export async function probeModule(executable: string, module: string, maxPayload: number, limits?: ExecutorLimits): Promise<ModuleDescription> {
  const stderr: string[] = [];
  const ex = new Executor({ executable, module, maxPayload, limits, onStderr: (l) => stderr.length < 20 && stderr.push(l) });
  try {
    const ask = async (payload: unknown[]): Promise<unknown[]> => {
      const reply = await ex.call(pack(payload));
      if (!reply.ok) throw new Error(`cannot load PKCS#11 module ${module}: ${reply.message}${stderr.length ? `: ${stderr.join(' | ')}` : ''}`);
      const v = unpack(reply.payload) as unknown[];
      if (v[0] !== CKR.OK) throw new Error(`PKCS#11 module ${module}: ${rvName(v[0] as number)} while probing`);
      return v;
    };
    const [, functions, sandbox] = await ask([0]);
    await ask([callByName('C_Initialize').id]);
    const [, info] = await ask([callByName('C_GetInfo').id]);
    await ask([callByName('C_Finalize').id]);
    return { info: info as unknown[], functions: functions as number[], sandbox: typeof sandbox === 'string' ? sandbox : '' };
  } finally {
    await ex.close();
  }
}

export { PROTOCOL_VERSION };
