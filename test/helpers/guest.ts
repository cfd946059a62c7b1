// A guest application in a separate process (test/fixtures/guest-process.mjs)
// using the p11bridge client, driven over newline-delimited JSON.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { trackChild } from './children.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The guest fixture script. */
export const GUEST_SCRIPT = path.join(REPO_ROOT, 'test/fixtures/guest-process.mjs');
/** SOFTHSM2_CONF given to guests: the guest cannot reach any token store. */
export const GUEST_SOFTHSM2_CONF = '/nonexistent/softhsm2.conf';
const MARK = '@@p11b-guest@@ ';

export interface StartGuestOptions {
  /** Serial port (pty path) for the guest, passed as TEC_COMM_PORT. '' leaves TEC_COMM_PORT unset. */
  port: string;
  /** Per-command answer limit in ms (default 55000); startup limit is 15000. */
  timeoutMs?: number;
  /** Extra environment (over process.env and TEC_COMM_PORT; undefined deletes a variable).
   *  SOFTHSM2_CONF is always /nonexistent/softhsm2.conf. */
  env?: Record<string, string | undefined>;
  /** Extra node arguments, e.g. ['--inspect']. */
  nodeArgs?: string[];
}

/** Error thrown for a failed guest command; fields copied from the guest-side error. */
export class GuestError extends Error {
  /** The client error's code (a CK_RV number for PKCS#11 errors). */
  code?: number | string;
  method?: string;
  /** The guest-side error name (e.g. the client's error class). */
  guestName?: string;
  /** Every field the guest reported (incl. stack). */
  details: Record<string, unknown>;
  constructor(info: Record<string, unknown>) {
    super(typeof info.message === 'string' ? info.message : JSON.stringify(info));
    this.name = typeof info.name === 'string' ? info.name : 'GuestError';
    this.guestName = this.name;
    if (info.code !== undefined && info.code !== null) this.code = info.code as number | string;
    if (typeof info.method === 'string') this.method = info.method;
    this.details = info;
  }
}

export interface GuestExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Guest {
  pid: number;
  proc: ChildProcess;
  /** Pkcs11Client.connect(opts) in the guest; opts may omit port (TEC_COMM_PORT is used). */
  connect(opts?: Record<string, unknown>): Promise<void>;
  /** client[method](...args) in the guest. Rejects with GuestError {code, message, method}. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- decoded from the guest's JSON; tests use it as a pkcs11js result
  call(method: string, ...args: unknown[]): Promise<any>;
  /** Run an async function body in the guest with c (client), Buffer, Pkcs11Client, state (persists), lib in scope. */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- decoded from the guest's JSON, whatever the code returns
  eval(code: string): Promise<any>;
  /** client.close() in the guest (the process keeps running). */
  close(): Promise<void>;
  /** End the guest process gracefully (stdin EOF; running commands finish). SIGKILL after 10 s. */
  exit(): Promise<GuestExit>;
  /** Kill the guest process (default SIGKILL: a crashing app / rebooting VM) and wait for it. */
  kill(signal?: NodeJS.Signals): Promise<GuestExit>;
  /** stderr of the guest so far. */
  stderr(): string;
  /** Non-protocol stdout of the guest so far (e.g. library logs). */
  stdout(): string;
  /** Set once the process exited. */
  exited(): GuestExit | undefined;
  exitPromise: Promise<GuestExit>;
}

/** JSON-safe encoding: Buffer/Uint8Array -> {$buf: hex}, bigint -> {$big: dec}, recursively. */
export function encodeValue(v: unknown): unknown {
  if (typeof v === 'bigint') return { $big: v.toString() };
  if (v instanceof Uint8Array) return { $buf: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex') };
  if (v instanceof ArrayBuffer) return { $buf: Buffer.from(v).toString('hex') };
  if (Array.isArray(v)) return v.map(encodeValue);
  if (v instanceof Map) return Object.fromEntries([...v].map(([k, x]) => [String(k), encodeValue(x)]));
  if (v && typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = encodeValue(x);
    return o;
  }
  return v;
}

/** Inverse of encodeValue: {$buf} -> Buffer, {$big} -> bigint, recursively. */
export function decodeValue(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(decodeValue);
  if (v && typeof v === 'object') {
    const r = v as Record<string, unknown>;
    const keys = Object.keys(r);
    if (keys.length === 1 && keys[0] === '$buf' && typeof r.$buf === 'string') return Buffer.from(r.$buf, 'hex');
    if (keys.length === 1 && keys[0] === '$big' && typeof r.$big === 'string') return BigInt(r.$big);
    const o: Record<string, unknown> = {};
    for (const k of keys) o[k] = decodeValue(r[k]);
    return o;
  }
  return v;
}


export async function startGuest(opts: StartGuestOptions): Promise<Guest> {
  const timeoutMs = opts.timeoutMs ?? 55_000;
  const env: Record<string, string | undefined> = { ...process.env };
  if (opts.port) env.TEC_COMM_PORT = opts.port;
  else delete env.TEC_COMM_PORT;
  for (const [k, x] of Object.entries(opts.env ?? {})) {
    if (x === undefined) delete env[k];
    else env[k] = x;
  }
  env.SOFTHSM2_CONF = GUEST_SOFTHSM2_CONF;

  const proc = spawn(process.execPath, [...(opts.nodeArgs ?? []), GUEST_SCRIPT], {
    cwd: REPO_ROOT,
    env,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  trackChild(proc);

  let stderr = '';
  let stdout = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => {
    stderr += d;
  });
  // EPIPE when the child died: reported through the pending calls instead.
  proc.stdin!.on('error', () => {});

  type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout; what: string };
  const pending = new Map<number, Pending>();
  let nextId = 1;
  let exitInfo: GuestExit | undefined;
  let spawnError: Error | undefined;
  let readyResolve!: () => void;
  const ready = new Promise<void>((r) => (readyResolve = r));

  const deathMessage = (): string =>
    `guest process exited (code ${exitInfo?.code ?? null}, signal ${exitInfo?.signal ?? null})` +
    (spawnError ? ` (${spawnError.message})` : '') +
    `; stderr:\n${stderr}`;

  createInterface({ input: proc.stdout! }).on('line', (line) => {
    if (!line.startsWith(MARK)) {
      stdout += line + '\n';
      return;
    }
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line.slice(MARK.length)) as Record<string, unknown>;
    } catch {
      stdout += line + '\n';
      return;
    }
    if (msg.ready === true) {
      readyResolve();
      return;
    }
    const p = pending.get(msg.id as number);
    if (!p) return;
    pending.delete(msg.id as number);
    clearTimeout(p.timer);
    if (msg.ok) p.resolve(decodeValue(msg.result));
    else p.reject(new GuestError(decodeValue(msg.error ?? {}) as Record<string, unknown>));
  });

  const exitPromise = new Promise<GuestExit>((resolve) => {
    const finish = (info: GuestExit) => {
      if (exitInfo && exitInfo !== info) return;
      exitInfo = info;
      // let stdout/stderr drain before failing pending calls
      setTimeout(() => {
        for (const [id, p] of pending) {
          pending.delete(id);
          clearTimeout(p.timer);
          p.reject(new Error(`${p.what}: ${deathMessage()}`));
        }
        resolve(info);
      }, 20);
    };
    proc.once('close', (code, signal) => finish({ code, signal }));
    proc.once('error', (err) => {
      spawnError = err;
      if (proc.pid === undefined) finish({ code: null, signal: null });
    });
  });

  const send = (cmd: Record<string, unknown>, what: string): Promise<unknown> => {
    if (exitInfo) return Promise.reject(new Error(`${what}: ${deathMessage()}`));
    const id = nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`${what}: no answer from the guest within ${timeoutMs} ms; stderr:\n${stderr}`));
      }, timeoutMs);
      pending.set(id, { resolve, reject, timer, what });
      proc.stdin!.write(JSON.stringify(encodeValue({ id, ...cmd })) + '\n');
    });
  };

  const kill = async (signal: NodeJS.Signals = 'SIGKILL'): Promise<GuestExit> => {
    if (!exitInfo) proc.kill(signal);
    return exitPromise;
  };

  const exit = async (): Promise<GuestExit> => {
    if (!exitInfo) proc.stdin!.end();
    const timer = setTimeout(() => {
      if (!exitInfo) proc.kill('SIGKILL');
    }, 10_000);
    try {
      return await exitPromise;
    } finally {
      clearTimeout(timer);
    }
  };

  // Wait for the fixture to load the client library.
  let startTimer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      ready,
      exitPromise.then(() => {
        throw new Error(`guest did not start: ${deathMessage()}`);
      }),
      new Promise<never>((_, reject) => {
        startTimer = setTimeout(
          () => reject(new Error(`guest did not start within 15 s; stderr:\n${stderr}`)),
          15_000,
        );
      }),
    ]);
  } catch (err) {
    await kill();
    throw err;
  } finally {
    clearTimeout(startTimer);
  }

  return {
    pid: proc.pid!,
    proc,
    connect: async (connectOpts?: Record<string, unknown>) => {
      await send({ op: 'connect', opts: connectOpts ?? {} }, 'connect');
    },
    call: (method: string, ...args: unknown[]) => send({ op: 'call', method, args }, method),
    eval: (code: string) => send({ op: 'eval', code }, 'eval'),
    close: async () => {
      await send({ op: 'close' }, 'close');
    },
    exit,
    kill,
    stderr: () => stderr,
    stdout: () => stdout,
    exited: () => exitInfo,
    exitPromise,
  };
}
