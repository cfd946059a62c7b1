// A faulty line: the real daemon and a real SoftHSM2 token behind a relay
// that damages frames (test/helpers/fault-link.ts), the TypeScript client on
// the far side. Every call is exactly-once: a retried C_CreateObject creates
// one object, a retried C_EncryptUpdate does not advance the cipher twice, a
// retried C_Login is not a second login. Also: the daemon killed and
// restarted under load, and a port fed 100 MB of garbage next to a port
// serving calls. The same workload and restart run from C through
// libp11bridge.so (native/test/test_module.c, modes "faults" and "restart").
import { createCipheriv, createDecipheriv, createHash, createHmac, createPublicKey, randomBytes, verify } from 'node:crypto';
import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pkcs11Client } from '../../src/index.js';
import { encodeFrame, FrameType } from '../../src/protocol/frame.js';
import { openTty } from '../../src/transport/tty-link.js';
import { REPO_ROOT, startDaemon, type Daemon } from '../helpers/daemon.js';
import { trackChild } from '../helpers/children.js';
import { GUEST_SOFTHSM2_CONF } from '../helpers/guest.js';
import { openDirect } from '../helpers/direct.js';
import { FaultLink, mulberry32, type DirectionStats } from '../helpers/fault-link.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import {
  CKA_APPLICATION, CKA_CLASS, CKA_LABEL, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_TOKEN, CKF_SERIAL_SESSION, CKM_AES_CBC,
  CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_SHA256, CKM_SHA256_HMAC, CKM_SHA256_RSA_PKCS, CKO_DATA, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
  CKS_RW_PUBLIC_SESSION, CKS_RW_USER_FUNCTIONS, CKU_USER, RW_SESSION,
} from '../helpers/pkcs11.js';
import { createToken, type SoftHsmToken } from '../helpers/softhsm.js';
import { aesKey, dataObject, hmacKey, rsaKeyPair } from '../helpers/templates.js';

const execFileP = promisify(execFile);

/** Retry settings for a pty (no UART delay): a lost frame costs about 110 ms. */
const FAST_RETRY = { timeoutMs: 5000, attemptTimeoutMs: 100, maxAttempts: 8, retryBackoffMs: 10 };

let token: SoftHsmToken;
let daemonPair: PtyPair;
let appPair: PtyPair;
let link: FaultLink;
let daemon: Daemon;
const cleanups: Array<() => Promise<unknown>> = [];
const figures: string[] = [];
/** A figure for the closing note: printed now and again at the end. */
const report = (line: string): void => {
  figures.push(line);
  console.log(line);
};

beforeAll(async () => {
  // The C test program is not part of the default build.
  await execFileP('make', ['-s', '-C', path.join(REPO_ROOT, 'native'), 'build/test_module', 'build/libp11bridge.so']);
  token = await createToken();
  daemonPair = await createPtyPair();
  appPair = await createPtyPair();
  link = await FaultLink.start(daemonPair.guestPath, appPair.serverPath, { seed: 20240605 });
  daemon = await startDaemon({ module: token.module, ports: [daemonPair.serverPath], env: token.env, args: ['--log-level', 'info'] });
});

afterAll(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => undefined);
  await daemon?.stop();
  await link?.close();
  await appPair?.kill();
  await daemonPair?.kill();
  await token?.cleanup();
  if (figures.length) console.log(`\nfault figures:\n${figures.join('\n')}`);
});

async function findSlot(c: Pkcs11Client): Promise<Buffer> {
  for (const s of await c.C_GetSlotList(true)) if ((await c.C_GetTokenInfo(s)).label.trim() === token.label) return s;
  throw new Error('token not found');
}

interface Keys {
  session: Buffer;
  aes: Buffer;
  aesKey: Buffer;
  hmac: Buffer;
  hmacKey: Buffer;
  rsaPriv: Buffer;
  rsaPub: ReturnType<typeof createPublicKey>;
}

/** A session logged in as the user, with session keys whose secrets the test knows (public objects: they survive C_Logout). */
async function setUp(c: Pkcs11Client): Promise<Keys> {
  await c.C_Initialize();
  const slot = await findSlot(c);
  const session = await c.C_OpenSession(slot, RW_SESSION);
  await c.C_Login(session, CKU_USER, token.pin);
  const aesValue = randomBytes(32), hmacValue = randomBytes(32);
  const aes = await c.C_CreateObject(session, aesKey(aesValue, { private: false }));
  const hmac = await c.C_CreateObject(session, hmacKey(hmacValue, { private: false }));
  const kp = await c.C_GenerateKeyPair(session, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, ...rsaKeyPair({ private: false }));
  const [n, e] = await c.C_GetAttributeValue(session, kp.publicKey, [{ type: CKA_MODULUS }, { type: CKA_PUBLIC_EXPONENT }]);
  const rsaPub = createPublicKey({ key: { kty: 'RSA', n: (n!.value as Buffer).toString('base64url'), e: (e!.value as Buffer).toString('base64url') }, format: 'jwk' });
  return { session, aes, aesKey: aesValue, hmac, hmacKey: hmacValue, rsaPriv: kp.privateKey, rsaPub };
}

interface WorkloadResult {
  calls: number;
  ms: number;
  tokenObjects: number;
  sessionObjects: number;
  app: string;
}

/**
 * A mixed workload of about `target` calls, every result checked: multi-part
 * AES-CBC against node:crypto, HMAC and RSA signatures, digests, creates and
 * destroys of token and session objects (their labels read back), logout and
 * login cycles. Throws at the first wrong result or error.
 */
async function workload(c: Pkcs11Client, k: Keys, target: number, seed: number): Promise<WorkloadResult> {
  const rnd = mulberry32(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const app = `faults-${seed}`;
  const s = k.session;
  let calls = 0;
  const call = async <T>(p: Promise<T>): Promise<T> => {
    const r = await p;
    calls++;
    return r;
  };
  const tokenObjs: Array<{ h: Buffer; label: string }> = [];
  const sessionObjs: Array<{ h: Buffer; label: string }> = [];
  let serial = 0;
  const started = Date.now();
  const ops: Array<[number, () => Promise<void>]> = [
    [3, async () => {
      // Multi-part AES-CBC: parts of whole blocks, so each update gives its own length back.
      const iv = randomBytes(16);
      const parts = [1, 2, 3].map(() => randomBytes(16 * (1 + Math.floor(rnd() * 4))));
      const expected = createCipheriv('aes-256-cbc', k.aesKey, iv).setAutoPadding(false);
      await call(c.C_EncryptInit(s, { mechanism: CKM_AES_CBC, parameter: iv }, k.aes));
      const enc: Buffer[] = [];
      for (const p of parts) {
        const got = await call(c.C_EncryptUpdate(s, p, Buffer.alloc(p.length + 16)));
        const want = expected.update(p);
        if (!got.equals(want)) throw new Error(`C_EncryptUpdate: wrong ciphertext after ${calls} calls`);
        enc.push(got);
      }
      const fin = await call(c.C_EncryptFinal(s, Buffer.alloc(16)));
      if (fin.length !== 0) throw new Error('C_EncryptFinal returned data for whole blocks');
      const dec = createDecipheriv('aes-256-cbc', k.aesKey, iv).setAutoPadding(false);
      await call(c.C_DecryptInit(s, { mechanism: CKM_AES_CBC, parameter: iv }, k.aes));
      for (let i = 0; i < enc.length; i++) {
        const got = await call(c.C_DecryptUpdate(s, enc[i]!, Buffer.alloc(enc[i]!.length + 16)));
        if (!got.equals(parts[i]!) || !got.equals(dec.update(enc[i]!))) throw new Error(`C_DecryptUpdate: wrong plaintext after ${calls} calls`);
      }
      await call(c.C_DecryptFinal(s, Buffer.alloc(16)));
    }],
    [2, async () => {
      const a = randomBytes(1 + Math.floor(rnd() * 100)), b = randomBytes(1 + Math.floor(rnd() * 100));
      await call(c.C_SignInit(s, { mechanism: CKM_SHA256_HMAC }, k.hmac));
      await call(c.C_SignUpdate(s, a));
      await call(c.C_SignUpdate(s, b));
      const mac = await call(c.C_SignFinal(s, Buffer.alloc(32)));
      if (!mac.equals(createHmac('sha256', k.hmacKey).update(a).update(b).digest())) throw new Error('wrong HMAC');
    }],
    [1, async () => {
      const data = randomBytes(64);
      await call(c.C_SignInit(s, { mechanism: CKM_SHA256_RSA_PKCS }, k.rsaPriv));
      const sig = await call(c.C_Sign(s, data, Buffer.alloc(256)));
      if (!verify('sha256', data, k.rsaPub, sig)) throw new Error('RSA signature does not verify');
    }],
    [2, async () => {
      const data = randomBytes(1 + Math.floor(rnd() * 200));
      await call(c.C_DigestInit(s, { mechanism: CKM_SHA256 }));
      const d = await call(c.C_Digest(s, data, Buffer.alloc(32)));
      if (!d.equals(createHash('sha256').update(data).digest())) throw new Error('wrong digest');
    }],
    ...([true, false] as const).map((onToken): [number, () => Promise<void>] => [2, async () => {
      const list = onToken ? tokenObjs : sessionObjs;
      if (list.length > 0 && rnd() < 0.45) {
        const [gone] = list.splice(Math.floor(rnd() * list.length), 1);
        await call(c.C_DestroyObject(s, gone!.h));
        return;
      }
      const label = `${app}-${onToken ? 't' : 's'}-${serial++}`;
      const h = await call(c.C_CreateObject(s, dataObject({ token: onToken, private: false, label, application: Buffer.from(app), value: randomBytes(20) })));
      list.push({ h, label });
    }]),
    [1, async () => {
      // The label of a live object, read back through its handle.
      const all = [...tokenObjs, ...sessionObjs];
      if (all.length === 0) return;
      const o = pick(all);
      const [a] = await call(c.C_GetAttributeValue(s, o.h, [{ type: CKA_LABEL }]));
      if ((a!.value as Buffer).toString() !== o.label) throw new Error(`wrong label ${String(a!.value)} for ${o.label}`);
    }],
    [1, async () => {
      // A second C_Login run would fail with CKR_USER_ALREADY_LOGGED_IN, a second C_Logout with CKR_USER_NOT_LOGGED_IN.
      await call(c.C_Logout(s));
      if ((await call(c.C_GetSessionInfo(s))).state !== CKS_RW_PUBLIC_SESSION) throw new Error('not logged out');
      await call(c.C_Login(s, CKU_USER, token.pin));
      if ((await call(c.C_GetSessionInfo(s))).state !== CKS_RW_USER_FUNCTIONS) throw new Error('not logged in');
    }],
  ];
  const total = ops.reduce((n, [w]) => n + w, 0);
  while (calls < target) {
    let x = rnd() * total;
    const op = ops.find(([w]) => (x -= w) < 0)![1];
    await op();
  }
  // The session objects the workload left, found through the faulty line (a
  // C_FindObjects run twice would return the next batch instead).
  await call(c.C_FindObjectsInit(s, [{ type: CKA_APPLICATION, value: Buffer.from(app) }, { type: CKA_TOKEN, value: false }]));
  const found: Buffer[] = [];
  for (;;) {
    const batch = await call(c.C_FindObjects(s, 7));
    if (batch.length === 0) break;
    found.push(...batch);
  }
  await call(c.C_FindObjectsFinal(s));
  expect(found.length).toBe(sessionObjs.length);
  return { calls, ms: Date.now() - started, tokenObjects: tokenObjs.length, sessionObjects: sessionObjs.length, app };
}

/** Token objects of a workload, counted by loading the module directly. */
async function countTokenObjects(app: string): Promise<number> {
  const direct = await openDirect(token);
  try {
    const p = direct.pkcs11;
    const slot = p.C_GetSlotList(true).find((sl) => p.C_GetTokenInfo(sl).label.trim() === token.label)!;
    const s = p.C_OpenSession(slot, CKF_SERIAL_SESSION);
    p.C_FindObjectsInit(s, [{ type: CKA_CLASS, value: CKO_DATA }, { type: CKA_APPLICATION, value: Buffer.from(app) }]);
    const n = p.C_FindObjects(s, 100_000).length;
    p.C_FindObjectsFinal(s);
    p.C_CloseSession(s);
    return n;
  } finally {
    direct.close();
  }
}

const diff = (a: DirectionStats, b: DirectionStats) =>
  Object.fromEntries(Object.keys(a).map((k) => [k, a[k as keyof DirectionStats] - b[k as keyof DirectionStats]])) as unknown as DirectionStats;
const fmt = (d: DirectionStats) =>
  `${d.damaged}/${d.frames} frames damaged (drop ${d.dropped}, corrupt ${d.corrupted}, dup ${d.duplicated}, trunc ${d.truncated})`;

async function runAtRate(rate: number, target: number, seed: number): Promise<void> {
  link.setFaults({ frameRate: rate });
  const before = link.stats();
  const c = await Pkcs11Client.connect({ port: appPair.guestPath, ...FAST_RETRY });
  try {
    const keys = await setUp(c);
    const line0 = { ...c.lineStats };
    const r = await workload(c, keys, target, seed);
    const line = c.lineStats;
    const after = link.stats();
    expect(await countTokenObjects(r.app)).toBe(r.tokenObjects);
    await c.C_Logout(keys.session);
    await c.C_Finalize();
    const up = diff(after.toServer, before.toServer), down = diff(after.toGuest, before.toGuest);
    const line2 = `rate ${(rate * 100).toFixed(1)}%: ${r.calls} calls in ${(r.ms / 1000).toFixed(1)} s (${(r.calls / (r.ms / 1000)).toFixed(0)}/s), ` +
      `${line.retries - line0.retries} retries, ${line.failed - line0.failed} calls failed, 0 wrong results; ` +
      `token objects ${r.tokenObjects} as expected, session objects ${r.sessionObjects}; ` +
      `guest->daemon ${fmt(up)}; daemon->guest ${fmt(down)}; client dropped ${line.dropped - line0.dropped} damaged pieces and ${line.stray - line0.stray} stray answers`;
    report(line2);
    // Damage the client could not miss means retries (a duplicate costs none).
    if (up.dropped + down.dropped > 0) expect(line.retries - line0.retries).toBeGreaterThan(0);
  } finally {
    await c.close();
  }
  // The server's side of it: repeats answered from its copy, never run again.
  const closed = await daemon.waitForLog((l) => l.msg === 'connection closed' && l.conn === c.serverInfo.connection, 5000);
  const server = `  server: ${String(closed.calls)} calls run, ${String(closed.replayed)} repeats answered from the copy, ` +
    `${String(closed.runningRepeats)} repeats of a running call ignored, ${String(closed.stale)} stale requests dropped`;
  report(server);
}

describe('through a faulty line, every call runs exactly once and every result is right', () => {
  it('0.1% of frames damaged each way: 5,000 calls', { timeout: 120_000 }, () => runAtRate(0.001, 5000, 11));
  it('1% of frames damaged each way: 10,000 calls', { timeout: 240_000 }, () => runAtRate(0.01, 10_000, 12));
  it('5% of frames damaged each way: 2,000 calls', { timeout: 180_000 }, () => runAtRate(0.05, 2000, 13));
});

describe('retries exhausted', () => {
  it('every answer lost: CKR_DEVICE_ERROR after the bounded attempts, then the same client carries on with the right answers', { timeout: 60_000 }, async () => {
    link.setFaults({ frameRate: 0 });
    const c = await Pkcs11Client.connect({ port: appPair.guestPath, timeoutMs: 5000, attemptTimeoutMs: 100, maxAttempts: 3, retryBackoffMs: 10 });
    try {
      await c.C_Initialize();
      const s = await c.C_OpenSession(await findSlot(c), RW_SESSION);
      const retries0 = c.lineStats.retries;
      // The daemon's answers no longer reach the guest; its requests still arrive.
      link.setFaults({ frameRate: 0 }, { frameRate: 1, kinds: ['drop'] });
      const label = `exhausted-${Date.now()}`;
      const t0 = Date.now();
      const err = await c.C_CreateObject(s, dataObject({ private: false, label })).then(() => undefined, (e: unknown) => e as { code?: number; message: string });
      const ms = Date.now() - t0;
      expect(err).toMatchObject({ code: CKR_DEVICE_ERROR, message: expect.stringMatching(/3 attempts/) });
      // Bounded by maxAttempts, not by the 5 s budget: three sendings, then the error.
      expect(c.lineStats.retries - retries0).toBe(2);
      link.setFaults({ frameRate: 0 });
      // The server ran the request once (the answers were what got lost): one object, whatever was resent.
      await c.C_FindObjectsInit(s, [{ type: CKA_LABEL, value: label }]);
      expect((await c.C_FindObjects(s, 10)).length).toBe(1);
      await c.C_FindObjectsFinal(s);
      // Re-synchronised: later calls get their own answers, never a late copy of the lost one.
      for (let i = 0; i < 20; i++) {
        const data = Buffer.from(`after ${i}`);
        await c.C_DigestInit(s, { mechanism: CKM_SHA256 });
        expect(await c.C_Digest(s, data, Buffer.alloc(32))).toEqual(createHash('sha256').update(data).digest());
      }
      await c.C_Finalize();
      const line = `retries exhausted (all answers dropped): CKR_DEVICE_ERROR after 3 sendings in ${ms} ms; the call ran once on the server; the next 40 calls right`;
      report(line);
    } finally {
      link.setFaults({ frameRate: 0 });
      await c.close();
    }
  });
});

describe('the daemon killed (SIGKILL) and restarted in the middle of a workload', () => {
  it('the app sees CKR_DEVICE_ERROR or CKR_DEVICE_REMOVED, then CKR_DEVICE_REMOVED on its old connection, and a new connection works', { timeout: 60_000 }, async () => {
    link.setFaults({ frameRate: 0.01 });
    const c = await Pkcs11Client.connect({ port: appPair.guestPath, ...FAST_RETRY });
    const keys = await setUp(c);
    let calls = 0;
    const errors: Array<{ code: unknown; message: string; atMs: number }> = [];
    const run = (async () => {
      for (;;) {
        try {
          await c.C_DigestInit(keys.session, { mechanism: CKM_SHA256 });
          await c.C_Digest(keys.session, Buffer.from(`call ${calls}`), Buffer.alloc(32));
          calls += 2;
        } catch (e) {
          errors.push({ code: (e as { code?: unknown }).code, message: (e as Error).message, atMs: Date.now() });
          return;
        }
      }
    })();
    await new Promise((r) => setTimeout(r, 1000));
    expect(errors).toEqual([]);
    const callsBefore = calls;
    const killedAt = Date.now();
    process.kill(daemon.pid, 'SIGKILL');
    await daemon.exitPromise;
    daemon = await startDaemon({ module: token.module, ports: [daemonPair.serverPath], env: token.env, args: ['--log-level', 'info'] });
    const restartedMs = Date.now() - killedAt;
    await run; // the loop ends at its first error; it must not hang
    expect(callsBefore).toBeGreaterThan(0);
    expect([CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED]).toContain(errors[0]!.code);
    // Once the new daemon serves, the old connection is unknown to it: CKR_DEVICE_REMOVED, promptly.
    const t0 = Date.now();
    await expect(c.C_GetSessionInfo(keys.session)).rejects.toMatchObject({ code: CKR_DEVICE_REMOVED, message: expect.stringMatching(/unknown connection/) });
    const removedMs = Date.now() - t0;
    await c.close();
    // A new connection (same process, same port) carries on.
    const c2 = await Pkcs11Client.connect({ port: appPair.guestPath, ...FAST_RETRY });
    try {
      const k2 = await setUp(c2);
      const r = await workload(c2, k2, 300, 99);
      expect(await countTokenObjects(r.app)).toBe(r.tokenObjects);
      await c2.C_Finalize();
    } finally {
      await c2.close();
    }
    const line = `daemon SIGKILL after ${callsBefore} calls: restarted in ${restartedMs} ms; the call in flight failed with ` +
      `0x${Number(errors[0]!.code).toString(16)} (${errors[0]!.message}) ${errors[0]!.atMs - killedAt} ms after the kill; ` +
      `the old connection then got CKR_DEVICE_REMOVED in ${removedMs} ms; a new connection ran 300 calls`;
    report(line);
  });
});

// ---- the same from C, through libp11bridge.so ----

const LIB = path.join(REPO_ROOT, 'native/build/libp11bridge.so');
const TEST_MODULE = path.join(REPO_ROOT, 'native/build/test_module');

interface NativeRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs native/build/test_module in `mode` as a guest program (no token store of its own), with the module's retries tuned for a pty. */
function runTestModule(mode: string, env: Record<string, string>, onLine?: (line: string) => void, valgrind = false): Promise<NativeRun> {
  const [cmd, argv] = valgrind
    ? ['valgrind', ['--leak-check=full', '--errors-for-leak-kinds=definite', '--show-leak-kinds=definite', '--error-exitcode=1',
      `--suppressions=${path.join(REPO_ROOT, 'native/test/valgrind.supp')}`, TEST_MODULE, LIB, mode]]
    : [TEST_MODULE, [LIB, mode]];
  const child = spawn(cmd, argv, {
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin', SOFTHSM2_CONF: GUEST_SOFTHSM2_CONF, TEC_COMM_PORT: appPair.guestPath,
      P11BRIDGE_TEST_PIN: token.pin, P11BRIDGE_ATTEMPT_MS: '100', P11BRIDGE_RETRIES: '7', P11BRIDGE_TIMEOUT_MS: '5000',
      P11BRIDGE_DEBUG: '1', ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(child);
  let stdout = '', stderr = '', partial = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d;
    partial += d;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const l of lines) onLine?.(l);
  });
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  return new Promise((resolve, reject) => {
    child.on('error', (e) => reject(new Error(`cannot run ${cmd}: ${e.message}`)));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The module's own counts, printed at C_Finalize with P11BRIDGE_DEBUG=1. */
function portStatistics(stderr: string): string {
  const all = [...stderr.matchAll(/port statistics: (.*)/g)];
  return all.length ? all[all.length - 1]![1]! : '(none)';
}

async function runNativeAtRate(rate: number, target: number, seed: number, valgrind = false): Promise<void> {
  link.setFaults({ frameRate: rate });
  const before = link.stats();
  const app = `faults-c-${seed}`;
  const t0 = Date.now();
  // Under valgrind the program runs ~20x slower: attempts wait longer, so that slowness is not taken for loss.
  const r = await runTestModule('faults', {
    P11BRIDGE_TEST_CALLS: String(target), P11BRIDGE_TEST_SEED: String(seed), P11BRIDGE_TEST_APP: app,
    ...(valgrind ? { P11BRIDGE_ATTEMPT_MS: '1000', P11BRIDGE_TIMEOUT_MS: '20000' } : {}),
  }, undefined, valgrind);
  const ms = Date.now() - t0;
  const after = link.stats();
  if (r.code !== 0) throw new Error(`test_module faults exited ${r.code}:\n${r.stdout}\n${r.stderr.split('\n').slice(-30).join('\n')}`);
  expect(r.stdout).toMatch(/checks passed \(faults\)/);
  const m = /token_objects=(\d+) session_objects=(\d+) calls=(\d+)/.exec(r.stdout)!;
  const [tokenObjects, sessionObjects, calls] = [Number(m[1]), Number(m[2]), Number(m[3])];
  expect(calls).toBeGreaterThanOrEqual(target);
  // The token objects the program believes it left, counted on the module directly.
  expect(await countTokenObjects(app)).toBe(tokenObjects);
  const up = diff(after.toServer, before.toServer), down = diff(after.toGuest, before.toGuest);
  const stats = portStatistics(r.stderr);
  const resends = Number(/(\d+) resends/.exec(stats)?.[1] ?? NaN);
  if (up.dropped + down.dropped > 0) expect(resends).toBeGreaterThan(0);
  if (valgrind) {
    expect(r.stderr).toMatch(/ERROR SUMMARY: 0 errors/);
    expect(r.stderr).not.toMatch(/definitely lost: [1-9]/);
  }
  const line = `libp11bridge.so${valgrind ? ' under valgrind (0 errors)' : ''}, rate ${(rate * 100).toFixed(1)}%: ${calls} calls in ${(ms / 1000).toFixed(1)} s (${(calls / (ms / 1000)).toFixed(0)}/s), ` +
    `0 wrong results; token objects ${tokenObjects} as expected, session objects ${sessionObjects}; ` +
    `guest->daemon ${fmt(up)}; daemon->guest ${fmt(down)}; module: ${stats}`;
  report(line);
}

describe('libp11bridge.so through the same faulty line: every call exactly once', () => {
  it('0.1% of frames damaged each way: 3,000 calls', { timeout: 120_000 }, () => runNativeAtRate(0.001, 3000, 21));
  it('1% of frames damaged each way: 10,000 calls', { timeout: 300_000 }, () => runNativeAtRate(0.01, 10_000, 22));
  it('5% of frames damaged each way: 2,000 calls', { timeout: 180_000 }, () => runNativeAtRate(0.05, 2000, 23));
  it('5% of frames damaged each way under valgrind: 300 calls, no memory errors on the retry paths', { timeout: 300_000 }, () => runNativeAtRate(0.05, 300, 24, true));

  it('the daemon killed (SIGKILL) and restarted under it: a documented error, then a new C_Initialize works', { timeout: 60_000 }, async () => {
    link.setFaults({ frameRate: 0.01 });
    let killedAt = 0;
    let restarted: Promise<void> | undefined;
    const r = await runTestModule('restart', {}, (line) => {
      if (line !== 'restart: running' || restarted) return;
      killedAt = Date.now();
      process.kill(daemon.pid, 'SIGKILL');
      restarted = (async () => {
        await daemon.exitPromise;
        daemon = await startDaemon({ module: token.module, ports: [daemonPair.serverPath], env: token.env, args: ['--log-level', 'info'] });
      })();
    });
    await restarted;
    if (r.code !== 0) throw new Error(`test_module restart exited ${r.code}:\n${r.stdout}\n${r.stderr.split('\n').slice(-30).join('\n')}`);
    expect(killedAt).toBeGreaterThan(0);
    const m = /first_error=0x([0-9a-f]+) then=0x([0-9a-f]+) calls_before=(\d+) calls_after=(\d+)/.exec(r.stdout)!;
    const [first, then] = [parseInt(m[1]!, 16), parseInt(m[2]!, 16)];
    expect([CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED]).toContain(first);
    expect(then).toBe(CKR_DEVICE_REMOVED);
    expect(Number(m[4])).toBe(200);
    const line = `libp11bridge.so, daemon SIGKILL after ${m[3]} calls: the call in flight got 0x${first.toString(16)}, ` +
      `the old session then 0x${then.toString(16)} (CKR_DEVICE_REMOVED); after C_Finalize/C_Initialize ${m[4]} calls succeeded`;
    report(line);
  });
});

function vmRssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]);
}

describe('a port fed garbage', () => {
  it('100 MB of random bytes on one port: the other port keeps serving and the daemon\'s memory stays flat', { timeout: 180_000 }, async () => {
    const garbage = await createPtyPair();
    const normal = await createPtyPair();
    cleanups.push(() => garbage.kill(), () => normal.kill());
    const d = await startDaemon({ module: token.module, ports: [garbage.serverPath, normal.serverPath], env: token.env, args: ['--log-level', 'info'] });
    cleanups.push(() => d.stop());
    const c = await Pkcs11Client.connect({ port: normal.guestPath, timeoutMs: 5000 });
    cleanups.push(() => c.close());
    await c.C_Initialize();
    const s = await c.C_OpenSession(await findSlot(c), CKF_SERIAL_SESSION);
    const digest = async (i: number) => {
      const data = Buffer.from(`normal call ${i}`);
      await c.C_DigestInit(s, { mechanism: CKM_SHA256 });
      const t = Date.now();
      const got = await c.C_Digest(s, data, Buffer.alloc(32));
      if (!got.equals(createHash('sha256').update(data).digest())) throw new Error(`wrong digest at ${i}`);
      return Date.now() - t;
    };
    for (let i = 0; i < 200; i++) await digest(i); // warm up before the baseline
    const baseline = vmRssKiB(d.pid);
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, vmRssKiB(d.pid))), 100);
    cleanups.push(async () => clearInterval(sampler));

    // Calls on the normal port all the while.
    let feeding = true;
    let normalCalls = 0;
    let slowest = 0;
    const calls = (async () => {
      while (feeding) {
        slowest = Math.max(slowest, await digest(normalCalls));
        normalCalls += 2;
      }
    })();
    calls.catch(() => undefined); // awaited below

    // The garbage, written while the daemon's answers are read (both
    // directions busy at once): random bytes, long runs without a 0x00
    // (oversize pieces), and well-formed frames for connections that do not exist.
    const TOTAL = 100 * 1024 * 1024, CHUNK = 64 * 1024;
    const out = await openTty(garbage.guestPath, { lock: false });
    let answered = 0;
    out.onData((b) => (answered += b.length)); // keep reading what the daemon says back
    const rnd = mulberry32(7);
    const t0 = Date.now();
    let sent = 0, n = 0;
    while (sent < TOTAL) {
      let chunk = randomBytes(CHUNK);
      const phase = n++ % 64;
      if (phase >= 40) {
        // 24 chunks (1.5 MiB) without a single 0x00: longer than any frame may be.
        for (let i = 0; i < chunk.length; i++) if (chunk[i] === 0) chunk[i] = 1;
      } else if (phase === 0) {
        const frames: Buffer[] = [];
        for (let i = 0; i < 100; i++) {
          frames.push(encodeFrame(FrameType.Call, Math.floor(rnd() * 0x100), (i % 0xffff) + 1, randomBytes(Math.floor(rnd() * 64))));
        }
        chunk = Buffer.concat([chunk.subarray(0, CHUNK / 2), ...frames]);
      }
      await out.write(chunk);
      sent += chunk.length;
    }
    await out.write(Buffer.from([0]));
    const feedMs = Date.now() - t0;
    feeding = false;
    await calls;
    await new Promise((r) => setTimeout(r, 500));
    const end = vmRssKiB(d.pid);
    peak = Math.max(peak, end);
    clearInterval(sampler);
    await out.close();

    // The daemon saw the garbage as damaged and oversize pieces, and kept serving.
    expect(normalCalls).toBeGreaterThan(100);
    await digest(-1); // and still serves once the garbage has passed
    const line = `garbage: ${(sent / 1048576).toFixed(0)} MiB fed in ${(feedMs / 1000).toFixed(1)} s (${(sent / 1048576 / (feedMs / 1000)).toFixed(1)} MiB/s); ` +
      `${normalCalls} normal calls on the other port meanwhile, all right, slowest ${slowest} ms; ` +
      `daemon VmRSS ${(baseline / 1024).toFixed(1)} MiB before, peak ${(peak / 1024).toFixed(1)} MiB (+${((peak - baseline) / 1024).toFixed(1)}), ` +
      `${(end / 1024).toFixed(1)} MiB after; ${answered} bytes of answers to the well-formed frames`;
    report(line);
    // The bound: a frame's worth of buffering (1 MiB payload) and the V8 heap's slack, nothing in proportion to the 100 MB.
    expect(peak - baseline).toBeLessThan(64 * 1024);
  });
});
