// libp11bridge.so's links (native/src/module/transport.h): the port string
// selects a unix socket (`unix:/absolute/path`) or a serial device (anything
// else). Real parts only: the daemon (dist/src/cli/main.js serve) serving
// SoftHSM2 on `--port unix:<tmp>/p11bridge.sock` or on a socat pty pair,
// and real PKCS#11 programs loading the module: OpenSC pkcs11-tool, pkcs11js
// (test/fixtures/native/hold-session.mjs) and the C test program
// native/build/test_module (also under valgrind). The guests get
// SOFTHSM2_CONF=/nonexistent/... so they cannot reach the token store
// themselves; answers are compared with pkcs11-tool run directly on SoftHSM2
// where that is meaningful.
//
// The serial link sets the configured speed (P11BRIDGE_BAUD / `baud`) on the
// guest's tty, checked with `stty -F <guest pty> speed` while a session holds
// the port; a speed termios has no code for is refused at C_Initialize.
import { execFile, spawn } from 'node:child_process';
import { createCipheriv, createHash, createPublicKey, verify as cryptoVerify } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { trackChild } from '../helpers/children.js';
import { REPO_ROOT, startDaemon, type Daemon } from '../helpers/daemon.js';
import { GUEST_SOFTHSM2_CONF } from '../helpers/guest.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import { createToken, SOFTHSM_MODULE, type SoftHsmToken } from '../helpers/softhsm.js';
import { P256_SPKI_PREFIX } from '../helpers/templates.js';

const BRIDGE_MODULE = path.join(REPO_ROOT, 'native/build/libp11bridge.so');
const TEST_MODULE = path.join(REPO_ROOT, 'native/build/test_module');
const HOLD_SESSION = path.join(REPO_ROOT, 'test/fixtures/native/hold-session.mjs');
const VALGRIND_SUPP = path.join(REPO_ROOT, 'native/test/valgrind.supp');
const PIN = 'Us3r-PIN-4711';
const SO_PIN = 'S0-PIN-4711';
const INIT_FAILED = /C_Initialize failed: rv = CKR_DEVICE_ERROR \(0x30\)/;

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  cmd: string;
  ms: number;
}

/** Runs a program to completion; never throws (the result says what happened). */
function run(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<RunResult> {
  const cmd = [file, ...args].join(' ');
  const t0 = Date.now();
  return new Promise((resolve) => {
    execFile(file, args, { env, cwd: REPO_ROOT, timeout: timeoutMs, maxBuffer: 32 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals | null }) | null;
      resolve({
        code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
        signal: e?.signal ?? null,
        stdout: String(stdout ?? ''),
        stderr: String(stderr ?? '') + (e && typeof e.code !== 'number' && !e.signal ? `\n[spawn error: ${e.message}]` : ''),
        cmd,
        ms: Date.now() - t0,
      });
    });
  });
}

const show = (r: RunResult) =>
  `$ ${r.cmd}\n[exit code ${r.code}${r.signal ? `, signal ${r.signal}` : ''}, ${r.ms} ms]\n--- stdout ---\n${r.stdout}--- stderr ---\n${r.stderr}`;

/** A guest environment: the port and settings given, no token store, no other p11bridge settings. */
function guestEnv(port: string | undefined, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, SOFTHSM2_CONF: GUEST_SOFTHSM2_CONF };
  for (const k of Object.keys(env)) if (k.startsWith('P11BRIDGE_') || k === 'TEC_COMM_PORT') delete env[k];
  if (port !== undefined) env.TEC_COMM_PORT = port;
  return { ...env, ...extra };
}

const pkcs11Tool = (module: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs?: number) =>
  run('pkcs11-tool', ['--module', module, ...args], env, timeoutMs);

function requireBuilt(): void {
  if (!existsSync(BRIDGE_MODULE)) throw new Error(`${BRIDGE_MODULE} does not exist: build it with \`make -C native\``);
}

/** The daemon's per-call log since a mark, one call a line. */
function callTrace(d: Daemon, since = 0): string {
  return d
    .logs()
    .slice(since)
    .filter((r) => r.msg === 'call' || r.msg === 'connection opened' || r.level !== 20)
    .map((r) => (r.msg === 'call' ? `${String(r.port)} conn ${String(r.conn)} ${String(r.fn)} -> ${String(r.rv)}` : `[${String(r.msg)}] ${JSON.stringify(r)}`))
    .join('\n');
}

/** A pkcs11js process (hold-session.mjs) that keeps the module initialized with a session until told to go on. */
interface Holder {
  /** Resolves once C_Initialize, C_OpenSession and a first call worked. */
  ready: Promise<void>;
  /** Lets it make its last calls and finalize; resolves with its last JSON line and exit code. */
  finish(): Promise<{ last: Record<string, unknown>; code: number | null; stderr: string; ms: number }>;
  kill(): void;
}

function holdSession(label: string, env: NodeJS.ProcessEnv): Holder {
  const p = spawn(process.execPath, [HOLD_SESSION, BRIDGE_MODULE, label], { cwd: REPO_ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
  trackChild(p);
  let stderr = '';
  p.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  p.stdin!.on('error', () => {});
  const lines: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) => p.once('close', (code) => resolve(code)));
  const ready = new Promise<void>((resolve, reject) => {
    createInterface({ input: p.stdout! }).on('line', (line) => {
      const o = JSON.parse(line) as Record<string, unknown>;
      lines.push(o);
      if (o.ready) resolve();
      else if (o.ok === false) reject(new Error(`holder failed: ${line}\n${stderr}`));
    });
    void exited.then((code) => reject(new Error(`holder exited (${code}) before it was ready; stderr:\n${stderr}`)));
    setTimeout(() => reject(new Error(`holder not ready within 30 s; stderr:\n${stderr}`)), 30_000).unref();
  });
  ready.catch(() => {});
  return {
    ready,
    finish: async () => {
      const t0 = Date.now();
      p.stdin!.end('go\n');
      const code = await exited;
      return { last: lines.at(-1) ?? {}, code, stderr, ms: Date.now() - t0 };
    },
    kill: () => {
      if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    },
  };
}

// ===========================================================================

describe('libp11bridge.so over a unix socket: pkcs11-tool with TEC_COMM_PORT=unix:/path', () => {
  let token: SoftHsmToken;
  let dir: string;
  let sock: string;
  let daemon: Daemon;
  const tool = (args: string[], extra: Record<string, string> = {}, timeoutMs?: number) =>
    pkcs11Tool(BRIDGE_MODULE, args, guestEnv(`unix:${sock}`, extra), timeoutMs);
  const direct = (args: string[], timeoutMs?: number) => pkcs11Tool(SOFTHSM_MODULE, args, { ...process.env, ...token.env }, timeoutMs);
  const login = () => ['--token-label', token.label, '--login', '--pin', PIN];
  const why = (bridged: RunResult, mark: number, directRun?: RunResult) =>
    `BRIDGED:\n${show(bridged)}\n` + (directRun ? `DIRECT:\n${show(directRun)}\n` : '') + `DAEMON:\n${callTrace(daemon, mark)}`;

  beforeAll(async () => {
    requireBuilt();
    token = await createToken({ label: 'link-unix', pin: PIN, soPin: SO_PIN });
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'p11b-unix-'));
    sock = path.join(dir, 'p11bridge.sock');
    daemon = await startDaemon({ module: token.module, ports: [`unix:${sock}`], env: token.env });
  });
  afterAll(async () => {
    await daemon?.stop().catch(() => {});
    await token?.cleanup();
    if (dir) await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
  });

  it('-L lists the slots, the same as SoftHSM2 directly; the daemon saw the C module connect over the socket', async () => {
    const m = daemon.logs().length;
    const [bridged, directRun] = [await tool(['-L']), await direct(['-L'])];
    expect(directRun.code, show(directRun)).toBe(0);
    expect(bridged.code, why(bridged, m, directRun)).toBe(0);
    expect(bridged.stdout, why(bridged, m, directRun)).toMatch(new RegExp(`token label\\s*:\\s*${token.label}\\s*$`, 'm'));
    expect(bridged.stdout, why(bridged, m, directRun)).toBe(directRun.stdout);
    const opened = daemon.logs().slice(m).find((r) => r.msg === 'connection opened');
    expect(opened, why(bridged, m)).toMatchObject({ client: expect.stringMatching(/^p11bridge-c\//) });
    expect(String(opened!.port), why(bridged, m)).toMatch(new RegExp(`^unix:${sock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}#\\d+$`));
  });

  it('--login, --keypairgen EC:prime256v1: the object list is the same as SoftHSM2 directly', async () => {
    let m = daemon.logs().length;
    const g = await tool([...login(), '--keypairgen', '--key-type', 'EC:prime256v1', '--id', '02', '--label', 'ec1']);
    expect(g.code, why(g, m)).toBe(0);
    expect(g.stdout, why(g, m)).toMatch(/Public Key Object; EC\s+EC_POINT 256 bits/);
    m = daemon.logs().length;
    const [bridged, directRun] = [await tool([...login(), '-O']), await direct([...login(), '-O'])];
    expect(bridged.code, why(bridged, m, directRun)).toBe(0);
    expect(bridged.stdout.match(/^(Public|Private) Key Object; EC/gm)?.length, why(bridged, m, directRun)).toBe(2);
    const blocks = (s: string) => s.split(/\n(?=\S)/).map((b) => b.trimEnd()).filter(Boolean).sort();
    expect(blocks(bridged.stdout), why(bridged, m, directRun)).toEqual(blocks(directRun.stdout));
  });

  it('ECDSA P-256 sign through the socket: SoftHSM2 directly and node:crypto verify it', async () => {
    const message = Buffer.from(`ECDSA over unix:${sock} ${Date.now()}`);
    const digest = path.join(dir, 'digest.bin');
    const sig = path.join(dir, 'ec.sig');
    const pub = path.join(dir, 'ec-pub.der');
    await fs.writeFile(digest, createHash('sha256').update(message).digest());
    let m = daemon.logs().length;
    const s = await tool([...login(), '-s', '-m', 'ECDSA', '--id', '02', '-i', digest, '-o', sig]);
    expect(s.code, why(s, m)).toBe(0);
    const raw = await fs.readFile(sig);
    expect(raw.length, why(s, m)).toBe(64);
    expect(callTrace(daemon, m), why(s, m)).toMatch(/C_Sign -> CKR_OK/);
    // the same signature verified directly on SoftHSM2 ...
    const v = await direct([...login(), '--verify', '-m', 'ECDSA', '--id', '02', '-i', digest, '--signature-file', sig]);
    expect(v.code, show(v)).toBe(0);
    expect(v.stdout, show(v)).toContain('Signature is valid');
    // ... and by node:crypto with the public key read through the socket
    m = daemon.logs().length;
    const rd = await tool(['--token-label', token.label, '--read-object', '--type', 'pubkey', '--id', '02', '-o', pub]);
    expect(rd.code, why(rd, m)).toBe(0);
    const der = await fs.readFile(pub);
    expect(der.subarray(0, P256_SPKI_PREFIX.length).toString('hex')).toBe(P256_SPKI_PREFIX.toString('hex'));
    const key = createPublicKey({ key: der, format: 'der', type: 'spki' });
    expect(cryptoVerify('sha256', message, { key, dsaEncoding: 'ieee-p1363' }, raw)).toBe(true);
    expect(cryptoVerify('sha256', Buffer.concat([message, Buffer.from('!')]), { key, dsaEncoding: 'ieee-p1363' }, raw)).toBe(false);
  });

  it('AES-256 --keygen through the socket; AES-CBC-PAD of 300 KB: the same ciphertext as SoftHSM2 directly and node:crypto, and back', { timeout: 120_000 }, async () => {
    const data = Buffer.from(Array.from({ length: 300 * 1024 + 7 }, (_, i) => (i * 31 + 7) & 0xff));
    const input = path.join(dir, 'plain.bin');
    const ctBridged = path.join(dir, 'bridged.ct');
    const ctDirect = path.join(dir, 'direct.ct');
    const back = path.join(dir, 'back.bin');
    await fs.writeFile(input, data);
    let m = daemon.logs().length;
    const k = await tool([...login(), '--keygen', '--key-type', 'AES:32', '--id', '03', '--label', 'aes1', '--extractable']);
    expect(k.code, why(k, m)).toBe(0);
    const value = /VALUE:\s+([0-9a-f]{64})/.exec(k.stdout)?.[1];
    expect(value, why(k, m)).toBeDefined();
    const iv = '0f0e0d0c0b0a09080706050403020100';
    m = daemon.logs().length;
    const e = await tool([...login(), '--encrypt', '-m', 'AES-CBC-PAD', '--id', '03', '--iv', iv, '-i', input, '-o', ctBridged], {}, 100_000);
    expect(e.code, why(e, m)).toBe(0);
    const d = await direct([...login(), '--encrypt', '-m', 'AES-CBC-PAD', '--id', '03', '--iv', iv, '-i', input, '-o', ctDirect], 100_000);
    expect(d.code, show(d)).toBe(0);
    const got = await fs.readFile(ctBridged);
    expect(got.equals(await fs.readFile(ctDirect)), 'bridged and direct ciphertexts differ').toBe(true);
    const c = createCipheriv('aes-256-cbc', Buffer.from(value!, 'hex'), Buffer.from(iv, 'hex'));
    expect(got.equals(Buffer.concat([c.update(data), c.final()])), 'ciphertext differs from node:crypto aes-256-cbc').toBe(true);
    m = daemon.logs().length;
    const dec = await tool([...login(), '--decrypt', '-m', 'AES-CBC-PAD', '--id', '03', '--iv', iv, '-i', ctBridged, '-o', back], {}, 100_000);
    expect(dec.code, why(dec, m)).toBe(0);
    expect((await fs.readFile(back)).equals(data), 'decrypted data differs').toBe(true);
  });

  it('two processes at once: pkcs11-tool works while a pkcs11js process keeps its own connection open', { timeout: 60_000 }, async () => {
    const m = daemon.logs().length;
    const holder = holdSession(token.label, guestEnv(`unix:${sock}`));
    try {
      await holder.ready;
      const r = await tool(['-L']);
      expect(r.code, why(r, m)).toBe(0);
      expect(r.stdout, why(r, m)).toMatch(new RegExp(`token label\\s*:\\s*${token.label}\\s*$`, 'm'));
      const end = await holder.finish();
      expect(end.code, `${JSON.stringify(end.last)}\n${end.stderr}\n${callTrace(daemon, m)}`).toBe(0);
      expect(end.last).toMatchObject({ ok: true, before: 16, after: 16 });
      // each process its own connection to the socket, hence its own link (#n) on the daemon
      const links = new Set(daemon.logs().slice(m).filter((r) => r.msg === 'connection opened').map((r) => String(r.port)));
      expect(links.size, callTrace(daemon, m)).toBe(2);
    } finally {
      holder.kill();
    }
  });

  it('baud is only a timing hint on a socket: P11BRIDGE_BAUD=12345 (no serial speed) works', async () => {
    const m = daemon.logs().length;
    const r = await tool(['-I'], { P11BRIDGE_BAUD: '12345' });
    expect(r.code, why(r, m)).toBe(0);
    expect(r.stdout).toMatch(/Manufacturer\s+SoftHSM/);
  });

  it('a config file may name the socket (port = unix:/path)', async () => {
    const conf = path.join(dir, 'unix.conf');
    await fs.writeFile(conf, `# p11bridge over a unix socket\nport = unix:${sock}\ntimeout_ms = 8000\n`);
    const r = await pkcs11Tool(BRIDGE_MODULE, ['-I'], guestEnv(undefined, { P11BRIDGE_CONFIG: conf }));
    expect(r.code, show(r)).toBe(0);
    expect(r.stdout).toMatch(/Manufacturer\s+SoftHSM/);
  });

  for (const [what, port, message] of [
    ['a socket nobody serves', () => `unix:${path.join(dir, 'nobody.sock')}`, /cannot connect to unix socket \S+nobody\.sock: No such file or directory \(is the p11bridge daemon serving it\?\)/],
    ['a relative socket path', () => 'unix:p11bridge.sock', /unix socket address unix:p11bridge\.sock: expected unix:\/absolute\/path/],
  ] as const) {
    it(`${what}: C_Initialize fails at once with CKR_DEVICE_ERROR, and says why with P11BRIDGE_DEBUG`, async () => {
      const quiet = await pkcs11Tool(BRIDGE_MODULE, ['-I'], guestEnv(port()));
      expect(quiet.code, show(quiet)).not.toBe(0);
      expect(quiet.stdout + quiet.stderr, show(quiet)).toMatch(INIT_FAILED);
      expect(quiet.stderr, show(quiet)).not.toMatch(/p11bridge:/);
      expect(quiet.ms, show(quiet)).toBeLessThan(3000); // no wait for a timeout
      const loud = await pkcs11Tool(BRIDGE_MODULE, ['-I'], guestEnv(port(), { P11BRIDGE_DEBUG: '1' }));
      expect(loud.stderr, show(loud)).toMatch(message);
    });
  }
});

// ===========================================================================

describe('libp11bridge.so over a unix socket: the C test program (threads, fork, application mutexes), also under valgrind', () => {
  let token: SoftHsmToken;
  let dir: string;
  let sock: string;
  let daemon: Daemon;
  let testEnv: NodeJS.ProcessEnv;

  beforeAll(async () => {
    requireBuilt();
    const mk = await run('make', ['-s', '-C', path.join(REPO_ROOT, 'native'), 'build/test_module'], process.env, 120_000);
    if (mk.code !== 0) throw new Error(`cannot build test_module:\n${show(mk)}`);
    token = await createToken({ label: 'link-unix-c', pin: PIN, soPin: SO_PIN });
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'p11b-unix-c-'));
    sock = path.join(dir, 'p11bridge.sock');
    daemon = await startDaemon({ module: token.module, ports: [`unix:${sock}`], env: token.env, args: ['--log-level', 'info'] });
    const info = await run('pkcs11-tool', ['--module', SOFTHSM_MODULE, '-I'], { ...process.env, ...token.env });
    const manuf = /^Manufacturer\s+(.*?)\s*$/m.exec(info.stdout)?.[1];
    const lib = /^Library\s+(.*?) \(ver (\d+\.\d+)\)\s*$/m.exec(info.stdout);
    if (!manuf || !lib) throw new Error(`cannot read SoftHSM2's C_GetInfo:\n${show(info)}`);
    const digests = Array.from({ length: 8 }, (_, i) => createHash('sha256').update(`p11bridge thread ${i}`).digest('hex')).join(',');
    testEnv = guestEnv(`unix:${sock}`, {
      P11BRIDGE_TEST_PIN: PIN, P11BRIDGE_TEST_LABEL: token.label, P11BRIDGE_TEST_INFO: `${manuf}|${lib[1]}|${lib[2]}`, P11BRIDGE_TEST_DIGESTS: digests,
    });
  });
  afterAll(async () => {
    await daemon?.stop().catch(() => {});
    await token?.cleanup();
    if (dir) await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
  });

  it('test_module passes every check over the socket', { timeout: 120_000 }, async () => {
    const r = await run(TEST_MODULE, [BRIDGE_MODULE], testEnv, 110_000);
    expect(r.code, `${show(r)}\nDAEMON:\n${daemon.output().slice(-4000)}`).toBe(0);
    expect(r.stdout, show(r)).toMatch(/test_module: \d+ checks passed/);
  });

  it('test_module under valgrind: no memory errors on the socket link', { timeout: 600_000 }, async () => {
    const r = await run('valgrind', [
      '--leak-check=full', '--errors-for-leak-kinds=definite', '--show-leak-kinds=definite', '--error-exitcode=1',
      '--trace-children=no', `--suppressions=${VALGRIND_SUPP}`, TEST_MODULE, BRIDGE_MODULE,
    ], { ...testEnv, P11BRIDGE_TIMEOUT_MS: '30000', P11BRIDGE_ATTEMPT_MS: '10000' }, 590_000);
    expect(r.code, `${show(r)}\nDAEMON:\n${daemon.output().slice(-4000)}`).toBe(0);
    expect(r.stdout, show(r)).toMatch(/test_module: \d+ checks passed/);
    expect(r.stderr, show(r)).toMatch(/ERROR SUMMARY: 0 errors/);
  });
});

// ===========================================================================

describe('libp11bridge.so over a unix socket: the daemon goes away and comes back', () => {
  let token: SoftHsmToken;
  let dir: string;
  let sock: string;
  let daemon: Daemon | undefined;

  beforeAll(async () => {
    requireBuilt();
    token = await createToken({ label: 'link-unix-restart', pin: PIN, soPin: SO_PIN });
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'p11b-unix-r-'));
    sock = path.join(dir, 'p11bridge.sock');
  });
  afterAll(async () => {
    await daemon?.stop().catch(() => {});
    await token?.cleanup();
    if (dir) await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
  });

  it('a call after the daemon stopped fails at once (CKR_DEVICE_ERROR, no timeout); a killed daemon\'s socket is refused; a new daemon serves new sessions', { timeout: 90_000 }, async () => {
    daemon = await startDaemon({ module: token.module, ports: [`unix:${sock}`], env: token.env });
    const holder = holdSession(token.label, guestEnv(`unix:${sock}`, { P11BRIDGE_TIMEOUT_MS: '10000' }));
    try {
      await holder.ready;
      await daemon.stop('SIGTERM');
      daemon = undefined;
      const end = await holder.finish();
      const msg = `holder: ${JSON.stringify(end.last)} after ${end.ms} ms\n${end.stderr}`;
      expect(end.code, msg).not.toBe(0);
      expect(end.last, msg).toMatchObject({ ok: false, stage: 'C_GenerateRandom (after)' });
      expect(String(end.last.error), msg).toMatch(/CKR_DEVICE_ERROR/);
      expect(end.ms, msg).toBeLessThan(5000); // the closed connection is seen, not waited out (10 s budget)
    } finally {
      holder.kill();
    }

    // SIGKILL leaves the socket file behind: connecting is refused, at once
    daemon = await startDaemon({ module: token.module, ports: [`unix:${sock}`], env: token.env });
    await daemon.stop('SIGKILL');
    daemon = undefined;
    expect(existsSync(sock)).toBe(true);
    const refused = await pkcs11Tool(BRIDGE_MODULE, ['-I'], guestEnv(`unix:${sock}`, { P11BRIDGE_DEBUG: '1' }));
    expect(refused.stdout + refused.stderr, show(refused)).toMatch(INIT_FAILED);
    expect(refused.stderr, show(refused)).toMatch(/cannot connect to unix socket \S+: Connection refused/);
    expect(refused.ms, show(refused)).toBeLessThan(3000);

    // a new daemon on the same path: new sessions work
    daemon = await startDaemon({ module: token.module, ports: [`unix:${sock}`], env: token.env });
    const r = await pkcs11Tool(BRIDGE_MODULE, ['-L'], guestEnv(`unix:${sock}`));
    expect(r.code, show(r)).toBe(0);
    expect(r.stdout, show(r)).toMatch(new RegExp(`token label\\s*:\\s*${token.label}\\s*$`, 'm'));
  });
});

// ===========================================================================

describe('libp11bridge.so on a serial port: P11BRIDGE_BAUD / baud sets the guest tty\'s speed', () => {
  let token: SoftHsmToken;
  let pty: PtyPair;
  let daemon: Daemon;
  let dir: string;
  const speed = async (p: string) => (await run('stty', ['-F', p, 'speed'], process.env, 5000)).stdout.trim();

  beforeAll(async () => {
    requireBuilt();
    token = await createToken({ label: 'link-tty', pin: PIN, soPin: SO_PIN });
    pty = await createPtyPair();
    daemon = await startDaemon({ module: token.module, ports: [pty.serverPath], env: token.env });
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'p11b-tty-'));
  });
  afterAll(async () => {
    await daemon?.stop().catch(() => {});
    await pty?.kill();
    await token?.cleanup();
    if (dir) await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
  });

  /** The guest pty's speed while a pkcs11js session holds the port with these settings; the session then ends well. */
  async function speedWhileHeld(extra: Record<string, string>): Promise<string> {
    const holder = holdSession(token.label, guestEnv(pty.guestPath, extra));
    try {
      await holder.ready;
      const s = await speed(pty.guestPath);
      const end = await holder.finish();
      expect(end.code, `${JSON.stringify(end.last)}\n${end.stderr}`).toBe(0);
      expect(end.last).toMatchObject({ ok: true });
      return s;
    } finally {
      holder.kill();
    }
  }

  it('P11BRIDGE_BAUD=57600: stty -F <guest pty> speed says 57600 while a session holds the port', async () => {
    const before = await speed(pty.guestPath);
    expect(before).toMatch(/^\d+$/);
    expect(before).not.toBe('57600'); // the pty starts elsewhere (38400): the module changed it
    expect(await speedWhileHeld({ P11BRIDGE_BAUD: '57600' })).toBe('57600');
  });

  it('no setting: the default 115200; baud = 921600 in the config file: 921600', async () => {
    expect(await speedWhileHeld({})).toBe('115200');
    const conf = path.join(dir, 'fast.conf');
    await fs.writeFile(conf, `port = ${pty.guestPath}\nbaud = 921600\n`);
    const holder = holdSession(token.label, guestEnv(undefined, { P11BRIDGE_CONFIG: conf }));
    try {
      await holder.ready;
      expect(await speed(pty.guestPath)).toBe('921600');
      expect((await holder.finish()).code).toBe(0);
    } finally {
      holder.kill();
    }
  });

  it('the server side keeps its own speed (the daemon set its pty to 115200)', async () => {
    await speedWhileHeld({ P11BRIDGE_BAUD: '9600' });
    expect(await speed(pty.serverPath)).toBe('115200');
  });

  for (const [what, extra, message] of [
    ['P11BRIDGE_BAUD=12345, a number termios has no speed for', { P11BRIDGE_BAUD: '12345' },
      /serial port \S+ cannot be set to baud 12345 \(P11BRIDGE_BAUD or 'baud'\); use 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, .*, 4000000$/m],
    ['P11BRIDGE_BAUD=600, below the supported speeds', { P11BRIDGE_BAUD: '600' }, /cannot be set to baud 600 /],
    ['P11BRIDGE_BAUD=fast, not a number', { P11BRIDGE_BAUD: 'fast' }, /P11BRIDGE_BAUD: baud must be 50 \.\. 100000000/],
  ] as const) {
    it(`${what}: C_Initialize fails with CKR_DEVICE_ERROR (the message with P11BRIDGE_DEBUG), the tty is left as it was, the daemon sees nothing`, async () => {
      await speedWhileHeld({ P11BRIDGE_BAUD: '230400' });
      const m = daemon.logs().length;
      const quiet = await pkcs11Tool(BRIDGE_MODULE, ['-I'], guestEnv(pty.guestPath, extra));
      expect(quiet.code, show(quiet)).not.toBe(0);
      expect(quiet.stdout + quiet.stderr, show(quiet)).toMatch(INIT_FAILED);
      expect(quiet.stderr, show(quiet)).not.toMatch(/p11bridge:/);
      const loud = await pkcs11Tool(BRIDGE_MODULE, ['-I'], guestEnv(pty.guestPath, { ...extra, P11BRIDGE_DEBUG: '1' }));
      expect(loud.stdout + loud.stderr, show(loud)).toMatch(INIT_FAILED);
      expect(loud.stderr, show(loud)).toMatch(message);
      expect(loud.ms, show(loud)).toBeLessThan(3000);
      expect(await speed(pty.guestPath)).toBe('230400');
      expect(daemon.logs().slice(m).filter((r) => r.msg === 'connection opened'), callTrace(daemon, m)).toEqual([]);
    });
  }

  it('a bad baud in the config file is refused the same way', async () => {
    const conf = path.join(dir, 'slow.conf');
    await fs.writeFile(conf, `port = ${pty.guestPath}\nbaud = 100\n`);
    const r = await pkcs11Tool(BRIDGE_MODULE, ['-I'], guestEnv(undefined, { P11BRIDGE_CONFIG: conf, P11BRIDGE_DEBUG: '1' }));
    expect(r.stdout + r.stderr, show(r)).toMatch(INIT_FAILED);
    expect(r.stderr, show(r)).toMatch(/cannot be set to baud 100 /);
  });
});
