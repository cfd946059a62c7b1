// Per-port policy from the daemon's config file, through the real daemon over
// real socat ptys against real SoftHSM2 tokens, each port's app in a process
// of its own: which tokens a port sees, read-only ports, mechanism
// allow-lists, the denials in the log, and bad configs refused at start-up.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { trackChild } from '../helpers/children.js';
import { CLI_MAIN, REPO_ROOT, startDaemon, type Daemon } from '../helpers/daemon.js';
import { startGuest, type Guest } from '../helpers/guest.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import {
  CKA_CLASS, CKA_LABEL, CKA_TOKEN, CKF_SERIAL_SESSION, CKM_AES_CBC_PAD, CKM_AES_GCM, CKM_AES_KEY_GEN, CKM_RSA_PKCS_KEY_PAIR_GEN,
  CKM_SHA1_RSA_PKCS, CKM_SHA256, CKM_SHA256_RSA_PKCS, CKM_SHA_1, CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKR_BUFFER_TOO_SMALL,
  CKR_MECHANISM_INVALID, CKR_OK, CKR_SESSION_READ_ONLY, CKR_SLOT_ID_INVALID, CKR_TOKEN_WRITE_PROTECTED, CKU_USER, RW_SESSION,
} from '../helpers/pkcs11.js';
import { createToken, type SoftHsmToken } from '../helpers/softhsm.js';
import { aesKeyGen, dataObject, rsaKeyPair } from '../helpers/templates.js';

const execFileP = promisify(execFile);

const SO_PIN = 'so-PIN-4711';
const PIN = 'Us3r-PIN-0815';
const NEW_PIN = 'n3w-PIN-secret-2024';
const SIGNER = 'ro-signer';
/** The mechanisms port D may use: names and a number, as an operator writes them. */
const ALLOWED = ['CKM_SHA256_RSA_PKCS', 'CKM_SHA256', 'CKM_AES_KEY_GEN', CKM_AES_GCM];
const ALLOWED_VALUES = new Set([CKM_SHA256_RSA_PKCS, CKM_SHA256, CKM_AES_KEY_GEN, CKM_AES_GCM]);

type Handle = Buffer;
const h2n = (h: Handle): number => Number(h.readBigUInt64LE(0));

/** Awaits a rejection and returns its PKCS#11 code. */
async function rvOf(p: Promise<unknown>): Promise<number> {
  try {
    const v = await p;
    throw new Error(`expected a PKCS#11 error, got ${JSON.stringify(v)}`);
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code !== 'number') throw e;
    return code;
  }
}

const cleanups: Array<() => Promise<unknown> | unknown> = [];
const tmp = mkdtempSync(path.join(os.tmpdir(), 'p11b-policy-'));
cleanups.push(() => rmSync(tmp, { recursive: true, force: true }));

let token: SoftHsmToken;
let daemon: Daemon;
let configFile: string;
/** A: unrestricted. B: sees token "second" (and "late"). C: read-only, sees "first". D: mechanism allow-list. */
const pty: Record<'A' | 'B' | 'C' | 'D', PtyPair> = {} as never;
const guest: Record<'A' | 'B' | 'C' | 'D', Guest> = {} as never;
let firstSlot: Handle;
let secondSlot: Handle;

async function initToken(label: string): Promise<void> {
  await execFileP('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', SO_PIN, '--pin', PIN], {
    env: { ...process.env, ...token.env }, timeout: 30_000,
  });
}

async function slotsByLabel(g: Guest): Promise<Map<string, Handle>> {
  const out = new Map<string, Handle>();
  for (const sl of (await g.call('C_GetSlotList', true)) as Handle[]) {
    out.set(String((await g.call('C_GetTokenInfo', sl)).label).trim(), sl);
  }
  return out;
}

async function findOne(g: Guest, s: Handle, cls: number, label: string): Promise<Handle> {
  await g.call('C_FindObjectsInit', s, [{ type: CKA_CLASS, value: cls }, { type: CKA_LABEL, value: label }]);
  const found: Handle[] = await g.call('C_FindObjects', s, 2);
  await g.call('C_FindObjectsFinal', s);
  expect(found).toHaveLength(1);
  return found[0]!;
}

/** Runs the CLI directly (startDaemon always adds --module and --port). */
function runCli(args: string[]): { done: Promise<{ code: number | null; stdout: string; stderr: string }>; stdout(): string; kill(): void } {
  const proc = spawn(process.execPath, [CLI_MAIN, 'serve', ...args], {
    cwd: REPO_ROOT, env: { ...process.env, ...token.env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(proc);
  let stdout = '';
  let stderr = '';
  proc.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    proc.on('close', (code) => resolve({ code, stdout, stderr })));
  return { done, stdout: () => stdout, kill: () => proc.kill('SIGTERM') };
}

beforeAll(async () => {
  token = await createToken({ label: 'first', soPin: SO_PIN, pin: PIN });
  cleanups.push(() => token.cleanup());
  await initToken('second');
  for (const k of ['A', 'B', 'C', 'D'] as const) {
    pty[k] = await createPtyPair();
    cleanups.push(() => pty[k].kill());
  }
  configFile = path.join(tmp, 'config.json');
  writeFileSync(configFile, JSON.stringify({
    module: '/nonexistent/overridden-by-the-command-line.so',
    ports: [
      { path: pty.A.serverPath },
      { path: pty.B.serverPath, tokens: [{ label: 'second' }, { label: 'late' }] },
      { path: pty.C.serverPath, tokens: [{ label: 'first' }], readOnly: true },
      { path: pty.D.serverPath, mechanisms: ALLOWED },
    ],
    // --log-level debug on the command line (startDaemon) overrides this.
    logLevel: 'warn',
    leaseSeconds: 300,
  }, null, 2));
  daemon = await startDaemon({
    module: token.module,
    ports: [pty.A.serverPath, pty.B.serverPath, pty.C.serverPath, pty.D.serverPath],
    env: token.env,
    args: ['--config', configFile],
  });
  cleanups.push(() => daemon.stop());
  for (const k of ['A', 'B', 'C', 'D'] as const) {
    guest[k] = await startGuest({ port: pty[k].guestPath });
    cleanups.push(() => guest[k].kill());
    await guest[k].connect();
    await guest[k].call('C_Initialize');
  }

  // Through the unrestricted port: both tokens, and a signing key on "first".
  const slots = await slotsByLabel(guest.A);
  firstSlot = slots.get('first')!;
  secondSlot = slots.get('second')!;
  expect(firstSlot).toBeDefined();
  expect(secondSlot).toBeDefined();
  const s: Handle = await guest.A.call('C_OpenSession', firstSlot, RW_SESSION);
  await guest.A.call('C_Login', s, CKU_USER, PIN);
  await guest.A.call('C_GenerateKeyPair', s, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, ...rsaKeyPair({ token: true, label: SIGNER }));
  await guest.A.call('C_CloseSession', s);
});

afterAll(async () => {
  for (const g of Object.values(guest)) await g?.close().catch(() => {});
  while (cleanups.length) {
    try {
      await cleanups.pop()!();
    } catch {
      /* keep cleaning */
    }
  }
});

describe('config file and command line together', () => {
  it('the command line overrides the config (module, log level); the config gives each port its policy', () => {
    const serving = daemon.logs().find((l) => l.msg === 'serving')!;
    expect(serving.module).toBe(token.module);
    expect(serving.config).toBe(configFile);
    // logged at info although the config says warn: --log-level debug won
    const policies = daemon.logs().filter((l) => l.msg === 'port policy');
    expect(policies.map((l) => l.port)).toEqual([pty.B.serverPath, pty.C.serverPath, pty.D.serverPath]);
    expect(policies[1]).toMatchObject({ tokens: ['label=first'], readOnly: true, mechanisms: 'all' });
    expect(policies[2]).toMatchObject({ tokens: 'all', readOnly: false, mechanisms: 4 });
  });
});

describe('token visibility', () => {
  it('a port sees only the tokens granted to it', async () => {
    const b = guest.B;
    expect(await b.call('C_GetSlotList', true)).toEqual([secondSlot]);
    // without tokenPresent: SoftHSM2's spare (uninitialized) slot is not granted either
    expect(await b.call('C_GetSlotList', false)).toEqual([secondSlot]);
    // (the unrestricted port sees both, and SoftHSM2's spare slot with its blank label)
    expect([...(await slotsByLabel(guest.A)).keys()].sort()).toEqual(['', 'first', 'second']);
    // and works on it
    const s: Handle = await b.call('C_OpenSession', secondSlot, RW_SESSION);
    await b.call('C_Login', s, CKU_USER, PIN);
    expect((await b.call('C_GenerateRandom', s, Buffer.alloc(16))).length).toBe(16);
    await b.call('C_CloseSession', s);
  });

  it('the filtered slot list keeps count-query and CKR_BUFFER_TOO_SMALL semantics', async () => {
    const raw = (args: unknown[]) => guest.B.eval(`return await c.call('C_GetSlotList', ${JSON.stringify(args)})`);
    expect(await raw([true, null])).toEqual({ rv: CKR_OK, results: [1] });
    expect(await raw([false, null])).toEqual({ rv: CKR_OK, results: [1] });
    expect(await raw([true, 0])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [1] });
    expect(await raw([true, 1])).toEqual({ rv: CKR_OK, results: [[h2n(secondSlot)]] });
    expect(await raw([true, 8])).toEqual({ rv: CKR_OK, results: [[h2n(secondSlot)]] });
    expect(await raw([true, true])).toEqual({ rv: CKR_OK, results: [[h2n(secondSlot)]] });
    // the unrestricted port counts both tokens and the spare slot
    expect(await guest.A.eval(`return await c.call('C_GetSlotList', [true, null])`)).toEqual({ rv: CKR_OK, results: [3] });
  });

  it('a slot id learnt from another port answers CKR_SLOT_ID_INVALID for every call taking a slot', async () => {
    const b = guest.B;
    expect(await rvOf(b.call('C_GetSlotInfo', firstSlot))).toBe(CKR_SLOT_ID_INVALID);
    expect(await rvOf(b.call('C_GetTokenInfo', firstSlot))).toBe(CKR_SLOT_ID_INVALID);
    expect(await rvOf(b.call('C_GetMechanismList', firstSlot))).toBe(CKR_SLOT_ID_INVALID);
    expect(await rvOf(b.call('C_GetMechanismInfo', firstSlot, CKM_SHA256))).toBe(CKR_SLOT_ID_INVALID);
    expect(await rvOf(b.call('C_OpenSession', firstSlot, CKF_SERIAL_SESSION))).toBe(CKR_SLOT_ID_INVALID);
    expect(await rvOf(b.call('C_CloseAllSessions', firstSlot))).toBe(CKR_SLOT_ID_INVALID);
    // token initialisation is off on this port (no initToken): the same answer for every slot
    expect(await rvOf(b.call('C_InitToken', firstSlot, SO_PIN, 'first'))).toBe(CKR_TOKEN_WRITE_PROTECTED);
    // a normal RESULT: the raw answer is [rv]
    expect(await b.eval(`return await c.call('C_GetTokenInfo', [${h2n(firstSlot)}])`)).toEqual({ rv: CKR_SLOT_ID_INVALID });
    // the token itself is untouched and still works elsewhere
    expect(String((await guest.A.call('C_GetTokenInfo', firstSlot)).label).trim()).toBe('first');
  });

  it('a token initialized at run time becomes visible to the port it is granted to', async () => {
    await initToken('late');
    // The app's own module instance finds new tokens when it initializes again;
    // the daemon's view of the tokens is at most about 2 s old.
    await guest.B.call('C_Finalize');
    await guest.B.call('C_Initialize');
    let seen = await slotsByLabel(guest.B);
    for (let i = 0; i < 40 && !seen.has('late'); i++) {
      await new Promise((r) => setTimeout(r, 100));
      seen = await slotsByLabel(guest.B);
    }
    expect([...seen.keys()].sort()).toEqual(['late', 'second']);
    expect(seen.get('second')).toEqual(secondSlot);
    expect(await rvOf(guest.B.call('C_GetTokenInfo', firstSlot))).toBe(CKR_SLOT_ID_INVALID);
  });
});

describe('read-only port', () => {
  it('refuses read/write sessions, PIN and token initialisation, and token objects', async () => {
    const c = guest.C;
    expect(await c.call('C_GetSlotList', true)).toEqual([firstSlot]);
    expect(await rvOf(c.call('C_OpenSession', firstSlot, RW_SESSION))).toBe(CKR_TOKEN_WRITE_PROTECTED);
    expect(await rvOf(c.call('C_InitToken', firstSlot, SO_PIN, 'first'))).toBe(CKR_TOKEN_WRITE_PROTECTED);
    const s: Handle = await c.call('C_OpenSession', firstSlot, CKF_SERIAL_SESSION);
    await c.call('C_Login', s, CKU_USER, PIN);
    expect(await rvOf(c.call('C_SetPIN', s, PIN, NEW_PIN))).toBe(CKR_TOKEN_WRITE_PROTECTED);
    expect(await rvOf(c.call('C_InitPIN', s, NEW_PIN))).toBe(CKR_TOKEN_WRITE_PROTECTED);
    expect(await rvOf(c.call('C_CreateObject', s, dataObject({ token: true, value: Buffer.from('x') })))).toBe(CKR_TOKEN_WRITE_PROTECTED);
    expect(await rvOf(c.call('C_GenerateKey', s, { mechanism: CKM_AES_KEY_GEN }, aesKeyGen({ token: true, uses: [] })))).toBe(CKR_TOKEN_WRITE_PROTECTED);
    const priv = await findOne(c, s, CKO_PRIVATE_KEY, SIGNER);
    expect(await rvOf(c.call('C_CopyObject', s, priv, [{ type: CKA_TOKEN, value: true }]))).toBe(CKR_TOKEN_WRITE_PROTECTED);
    // SoftHSM2 itself refuses changes to token objects in a read-only session.
    expect(await rvOf(c.call('C_DestroyObject', s, priv))).toBe(CKR_SESSION_READ_ONLY);
    expect(await rvOf(c.call('C_SetAttributeValue', s, priv, [{ type: CKA_LABEL, value: 'renamed' }]))).toBe(CKR_SESSION_READ_ONLY);
    await c.call('C_CloseSession', s);

    // Nothing changed: the PIN and the key are as they were.
    const a: Handle = await guest.A.call('C_OpenSession', firstSlot, CKF_SERIAL_SESSION);
    await guest.A.call('C_Login', a, CKU_USER, PIN);
    await findOne(guest.A, a, CKO_PRIVATE_KEY, SIGNER);
    await guest.A.call('C_CloseSession', a);
  });

  it('signs with an existing key in a read-only session; session objects are allowed', async () => {
    const c = guest.C;
    const s: Handle = await c.call('C_OpenSession', firstSlot, CKF_SERIAL_SESSION);
    await c.call('C_Login', s, CKU_USER, PIN);
    const priv = await findOne(c, s, CKO_PRIVATE_KEY, SIGNER);
    const pub = await findOne(c, s, CKO_PUBLIC_KEY, SIGNER);
    const data = Buffer.from('signed through a read-only port');
    await c.call('C_SignInit', s, { mechanism: CKM_SHA256_RSA_PKCS }, priv);
    const sig: Buffer = await c.call('C_Sign', s, data, Buffer.alloc(256));
    expect(sig.length).toBe(256);
    await c.call('C_VerifyInit', s, { mechanism: CKM_SHA256_RSA_PKCS }, pub);
    await c.call('C_Verify', s, data, sig); // throws CKR_SIGNATURE_INVALID otherwise
    const key: Handle = await c.call('C_GenerateKey', s, { mechanism: CKM_AES_KEY_GEN }, aesKeyGen({ valueLen: 16, uses: ['encrypt'] }));
    expect(key.length).toBe(8);
    await c.call('C_CloseSession', s);
  });
});

describe('mechanism allow-list', () => {
  it('lists exactly the allowed mechanisms the module has, with count-query semantics', async () => {
    const all: number[] = await guest.A.call('C_GetMechanismList', firstSlot);
    const listed: number[] = await guest.D.call('C_GetMechanismList', firstSlot);
    expect(listed).toEqual(all.filter((m) => ALLOWED_VALUES.has(m)));
    expect([...listed].sort()).toEqual([...ALLOWED_VALUES].sort());
    const raw = (cap: unknown) => guest.D.eval(`return await c.call('C_GetMechanismList', [${h2n(firstSlot)}, ${JSON.stringify(cap)}])`);
    expect(await raw(null)).toEqual({ rv: CKR_OK, results: [4] });
    expect(await raw(3)).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [4] });
    expect(await raw(4)).toEqual({ rv: CKR_OK, results: [listed] });
    expect(await raw(true)).toEqual({ rv: CKR_OK, results: [listed] });
  });

  it('a denied mechanism is CKR_MECHANISM_INVALID; allowed ones work', async () => {
    const d = guest.D;
    expect(await rvOf(d.call('C_GetMechanismInfo', firstSlot, CKM_SHA1_RSA_PKCS))).toBe(CKR_MECHANISM_INVALID);
    expect((await d.call('C_GetMechanismInfo', firstSlot, CKM_SHA256_RSA_PKCS)).maxKeySize).toBeGreaterThanOrEqual(2048);
    const s: Handle = await d.call('C_OpenSession', firstSlot, RW_SESSION);
    await d.call('C_Login', s, CKU_USER, PIN);

    expect(await rvOf(d.call('C_DigestInit', s, { mechanism: CKM_SHA_1 }))).toBe(CKR_MECHANISM_INVALID);
    const data = Buffer.from('allowed digest');
    await d.call('C_DigestInit', s, { mechanism: CKM_SHA256 });
    expect(await d.call('C_Digest', s, data, Buffer.alloc(32))).toEqual(createHash('sha256').update(data).digest());

    const priv = await findOne(d, s, CKO_PRIVATE_KEY, SIGNER);
    expect(await rvOf(d.call('C_SignInit', s, { mechanism: CKM_SHA1_RSA_PKCS }, priv))).toBe(CKR_MECHANISM_INVALID);
    await d.call('C_SignInit', s, { mechanism: CKM_SHA256_RSA_PKCS }, priv);
    expect((await d.call('C_Sign', s, data, Buffer.alloc(256))).length).toBe(256);

    expect(await rvOf(d.call('C_GenerateKeyPair', s, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, ...rsaKeyPair({ bits: 1024 })))).toBe(CKR_MECHANISM_INVALID);
    const aes: Handle = await d.call('C_GenerateKey', s, { mechanism: CKM_AES_KEY_GEN }, aesKeyGen());
    const iv = Buffer.alloc(16, 7);
    expect(await rvOf(d.call('C_EncryptInit', s, { mechanism: CKM_AES_CBC_PAD, parameter: iv }, aes))).toBe(CKR_MECHANISM_INVALID);
    await d.call('C_EncryptInit', s, { mechanism: CKM_AES_GCM, parameter: { iv: iv.subarray(0, 12), ivBits: 96, aad: Buffer.alloc(0), tagBits: 128 } }, aes);
    expect((await d.call('C_Encrypt', s, data, Buffer.alloc(64))).length).toBe(data.length + 16);
    await d.call('C_CloseSession', s);
  });
});

describe('denials in the log', () => {
  it('every denial is a warning with port, connection, function and reason, never argument values', async () => {
    const denials = daemon.logs().filter((l) => l.msg === 'call denied by policy');
    const conn = async (k: 'B' | 'C' | 'D') => (await guest[k].eval('return c.serverInfo.connection')) as number;
    for (const l of denials) {
      expect(l.level).toBe(40);
      expect(Object.keys(l).sort()).toEqual(['conn', 'fn', 'level', 'msg', 'name', 'pid', 'port', 'reason', 'req', 'rv', 'time']);
    }
    expect(denials).toContainEqual(expect.objectContaining({
      port: pty.B.serverPath, conn: await conn('B'), fn: 'C_GetTokenInfo', rv: 'CKR_SLOT_ID_INVALID', reason: 'slot not granted to this port',
    }));
    expect(denials).toContainEqual(expect.objectContaining({
      port: pty.C.serverPath, conn: await conn('C'), fn: 'C_OpenSession', rv: 'CKR_TOKEN_WRITE_PROTECTED', reason: 'read-only port: read/write session',
    }));
    expect(denials).toContainEqual(expect.objectContaining({
      port: pty.C.serverPath, fn: 'C_SetPIN', reason: 'read-only port: C_SetPIN changes the token',
    }));
    expect(denials).toContainEqual(expect.objectContaining({
      port: pty.C.serverPath, fn: 'C_CreateObject', reason: 'read-only port: template creates a token object',
    }));
    expect(denials).toContainEqual(expect.objectContaining({
      port: pty.D.serverPath, conn: await conn('D'), fn: 'C_SignInit', rv: 'CKR_MECHANISM_INVALID', reason: 'mechanism not allowed on this port',
    }));
    expect(denials.filter((l) => l.port === pty.A.serverPath)).toEqual([]);
    const out = daemon.output();
    for (const secret of [PIN, NEW_PIN, SO_PIN]) expect(out).not.toContain(secret);
  });
});

describe('config refused at start-up', () => {
  async function refused(config: unknown, expected: string | RegExp): Promise<void> {
    const file = path.join(tmp, `bad-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, typeof config === 'string' ? config : JSON.stringify(config));
    const r = await runCli(['--config', file, '--module', token.module, '--port', '/dev/null']).done;
    expect(r.code).toBe(1);
    if (typeof expected === 'string') expect(r.stderr).toContain(`p11bridge: config ${file}: ${expected}\n`);
    else expect(r.stderr).toMatch(new RegExp(`^p11bridge: config ${file}: ${expected.source}`));
    expect(r.stdout).not.toContain('"msg":"serving"');
  }

  it('a bad value, naming its key', async () => {
    await refused({ ports: [{ path: '/dev/ttyS4' }, { path: '/dev/ttyS5', readOnly: 'yes' }] }, 'ports[1].readOnly: expected boolean, received string');
  });

  it('an unknown key', async () => {
    await refused({ ports: [{ path: '/dev/ttyS4', readonly: true }] }, 'ports[0].readonly: unknown key (known keys: path, tokens, readOnly, initToken, mechanisms)');
  });

  it('an unknown mechanism name', async () => {
    await refused({ ports: [{ path: '/dev/ttyS4', mechanisms: ['CKM_SHA256', 'CKM_AES_GMC'] }] }, 'ports[0].mechanisms[1]: unknown mechanism "CKM_AES_GMC"');
  });

  it('a file that is not JSON, or a module that does not exist', async () => {
    await refused('{ "ports": [ }', /not valid JSON: .+\n$/);
    const file = path.join(tmp, 'no-module.json');
    writeFileSync(file, JSON.stringify({ module: '/nonexistent/libnothing.so' }));
    const r = await runCli(['--config', file, '--port', '/dev/null']).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`p11bridge: config ${file}: module: /nonexistent/libnothing.so does not exist\n`);
  });

  it('a config alone (module and ports, no command-line options) serves its ports', async () => {
    const e = await createPtyPair();
    cleanups.push(() => e.kill());
    const file = path.join(tmp, 'alone.json');
    writeFileSync(file, JSON.stringify({ module: token.module, ports: [{ path: e.serverPath, readOnly: true }], logLevel: 'info' }));
    const cli = runCli(['--config', file]);
    const deadline = Date.now() + 15_000;
    while (!cli.stdout().includes('"msg":"serving"') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const lines = cli.stdout().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => l.msg === 'serving')).toMatchObject({ ports: [e.serverPath], module: token.module, config: file });
    expect(lines.find((l) => l.msg === 'port policy')).toMatchObject({ port: e.serverPath, readOnly: true, tokens: 'all' });
    cli.kill();
    expect((await cli.done).code).toBe(0);
  });
});
