// Error paths a user of the bridge hits, each through the real daemon over a
// real socat pty pair against a real SoftHSM2 token. Every PKCS#11 error is
// checked for its exact CK_RV (numeric `code`, CKR name at the start of
// `message`, like pkcs11js's Pkcs11Error), and the bridge is checked to keep
// working afterwards.
import { createCipheriv } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { openDirect } from '../helpers/direct.js';
import { startGuest, type Guest, type GuestError } from '../helpers/guest.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import {
  CKA_CLASS, CKA_LABEL, CKA_VALUE, CKM_AES_CBC_PAD, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_SHA256, CKM_SHA256_RSA_PKCS, CKO_DATA,
  CKR_BUFFER_TOO_SMALL, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_FUNCTION_NOT_PARALLEL,
  CKR_FUNCTION_NOT_SUPPORTED, CKR_OBJECT_HANDLE_INVALID, CKR_OK, CKR_OPERATION_ACTIVE, CKR_OPERATION_NOT_INITIALIZED, CKR_PIN_INCORRECT,
  CKR_SESSION_HANDLE_INVALID, CKS_RW_PUBLIC_SESSION, CKS_RW_USER_FUNCTIONS, CKU_USER, RW_SESSION,
} from '../helpers/pkcs11.js';
import { createToken, type SoftHsmToken } from '../helpers/softhsm.js';
import { aesKey, READABLE, rsaKeyPair } from '../helpers/templates.js';

const WRONG_PIN = 'wr0ng-PIN-5309';
const USER_PIN = 'Us3r-PIN-8675';
// Known secrets that must never appear in the daemon's logs.
const AES_KEY = Buffer.from('5be1f3a09c7d2e4b6a8f01d3c5e7b9a2', 'hex');
const AES_IV = Buffer.from('0f1e2d3c4b5a69788796a5b4c3d2e1f0', 'hex');
const PLAINTEXT = Buffer.from('p11bridge top-secret plaintext 0123456789 !!', 'utf8');

/** A handle Buffer as pkcs11js gives it (host CK_ULONG, little-endian). */
const handle = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};

/** Awaits a rejection and returns the error (fails if p resolves). */
async function rejection(p: Promise<unknown>): Promise<GuestError> {
  let value: unknown;
  try {
    value = await p;
  } catch (e) {
    return e as GuestError;
  }
  throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
}

/** Asserts a PKCS#11 error: numeric code and the CKR name at the start of the message. */
async function expectRv(p: Promise<unknown>, code: number, name: string): Promise<GuestError> {
  const err = await rejection(p);
  expect(err, String(err?.message)).toMatchObject({ code });
  expect(String(err.message)).toMatch(new RegExp(`^${name}(:|$)`));
  return err;
}

const cleanups: Array<() => Promise<unknown> | unknown> = [];
async function runCleanups(): Promise<void> {
  while (cleanups.length) {
    try {
      await cleanups.pop()!();
    } catch {
      /* keep cleaning */
    }
  }
}

let token: SoftHsmToken;
let pty: PtyPair;
let daemon: Daemon;
let guest: Guest;
let slot: Buffer;
let session: Buffer;

/** The bridge still answers a call correctly on the main guest. */
async function stillWorks(g: Guest = guest, s: Buffer = session): Promise<void> {
  const r: Buffer = await g.call('C_GenerateRandom', s, Buffer.alloc(24));
  expect(Buffer.isBuffer(r)).toBe(true);
  expect(r.length).toBe(24);
  const info = await g.call('C_GetSessionInfo', s);
  expect(info.slotID).toEqual(slot);
}

async function findSlot(g: Guest, label: string): Promise<Buffer> {
  const slots: Buffer[] = await g.call('C_GetSlotList', true);
  for (const sl of slots) {
    const ti = await g.call('C_GetTokenInfo', sl);
    if (String(ti.label).trim() === label) return sl;
  }
  throw new Error(`no slot with token ${label}`);
}

beforeAll(async () => {
  token = await createToken({ label: 'errors-token', pin: USER_PIN });
  cleanups.push(() => token.cleanup());
  pty = await createPtyPair();
  cleanups.push(() => pty.kill());
  daemon = await startDaemon({ module: token.module, ports: [pty.serverPath], env: token.env });
  cleanups.push(() => daemon.stop());
  // TEC_COMM_PORT is set by the helper; connect() without a port uses it.
  guest = await startGuest({ port: pty.guestPath });
  cleanups.push(() => guest.kill());
  await guest.connect();
  await guest.call('C_Initialize');
  slot = await findSlot(guest, token.label);
  session = await guest.call('C_OpenSession', slot, RW_SESSION);
});

afterAll(async () => {
  await guest?.close().catch(() => {});
  await runCleanups();
});

describe('error paths through the bridge', () => {
  it('uses TEC_COMM_PORT when no port option is given', async () => {
    const r = await guest.eval('return { env: process.env.TEC_COMM_PORT, path: c.port }');
    expect(r.env).toBe(pty.guestPath);
    expect(r.path).toBe(pty.guestPath);
    await stillWorks();
  });

  it('wrong PIN: CKR_PIN_INCORRECT, the same as pkcs11js directly', async () => {
    const s: Buffer = await guest.call('C_OpenSession', slot, RW_SESSION);
    const bridged = await expectRv(guest.call('C_Login', s, CKU_USER, WRONG_PIN), CKR_PIN_INCORRECT, 'CKR_PIN_INCORRECT');
    expect(bridged.name).toBe('Pkcs11Error');
    expect(bridged.method).toBe('C_Login');

    const direct = await openDirect(token);
    try {
      const p = direct.pkcs11;
      const dslot = p.C_GetSlotList(true).find((sl) => p.C_GetTokenInfo(sl).label.trim() === token.label)!;
      const ds = p.C_OpenSession(dslot, RW_SESSION);
      // eslint-disable-next-line @typescript-eslint/no-explicit-any -- what pkcs11js throws, checked below
      let directErr: any;
      try {
        p.C_Login(ds, CKU_USER, WRONG_PIN);
      } catch (e) {
        directErr = e;
      }
      p.C_CloseSession(ds);
      expect(directErr).toBeDefined();
      expect(bridged.code).toBe(directErr.code);
      expect(bridged.message.split(':')[0]).toBe(String(directErr.message).split(':')[0]);
    } finally {
      direct.close();
    }

    // The right PIN still works afterwards.
    await guest.call('C_Login', s, CKU_USER, USER_PIN);
    expect((await guest.call('C_GetSessionInfo', s)).state).toBe(CKS_RW_USER_FUNCTIONS);
    await guest.call('C_Logout', s);
    await guest.call('C_CloseSession', s);
    await stillWorks();
  });

  it('invalid session handle: CKR_SESSION_HANDLE_INVALID', async () => {
    const never = handle(0x7ffe1234);
    await expectRv(guest.call('C_GetSessionInfo', never), CKR_SESSION_HANDLE_INVALID, 'CKR_SESSION_HANDLE_INVALID');
    await expectRv(guest.call('C_GenerateRandom', never, Buffer.alloc(8)), CKR_SESSION_HANDLE_INVALID, 'CKR_SESSION_HANDLE_INVALID');
    await stillWorks();
  });

  it('invalid object handle: CKR_OBJECT_HANDLE_INVALID', async () => {
    const never = handle(0x7ffe4321);
    await expectRv(guest.call('C_GetAttributeValue', session, never, [{ type: CKA_LABEL }]), CKR_OBJECT_HANDLE_INVALID, 'CKR_OBJECT_HANDLE_INVALID');
    await expectRv(guest.call('C_DestroyObject', session, never), CKR_OBJECT_HANDLE_INVALID, 'CKR_OBJECT_HANDLE_INVALID');
    await stillWorks();
  });

  describe('buffer too small', () => {
    let s: Buffer;
    let pub: Buffer;
    let priv: Buffer;
    let aes: Buffer;
    beforeAll(async () => {
      s = await guest.call('C_OpenSession', slot, RW_SESSION);
      const kp = await guest.call('C_GenerateKeyPair', s, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, ...rsaKeyPair({ private: false }));
      pub = kp.publicKey;
      priv = kp.privateKey;
      aes = await guest.call('C_CreateObject', s, aesKey(Buffer.from('00112233445566778899aabbccddeeff', 'hex'), { private: false }));
    });

    it('C_Sign with a too-small Buffer: CKR_BUFFER_TOO_SMALL, the operation stays active', async () => {
      const data = Buffer.from('sign me, please');
      await guest.call('C_SignInit', s, { mechanism: CKM_SHA256_RSA_PKCS }, priv);
      await expectRv(guest.call('C_Sign', s, data, Buffer.alloc(16)), CKR_BUFFER_TOO_SMALL, 'CKR_BUFFER_TOO_SMALL');
      const sig: Buffer = await guest.call('C_Sign', s, data, Buffer.alloc(512));
      expect(sig.length).toBe(256);
      await guest.call('C_VerifyInit', s, { mechanism: CKM_SHA256_RSA_PKCS }, pub);
      expect(await guest.call('C_Verify', s, data, sig)).toBe(true);
      await stillWorks();
    });

    it('C_Encrypt with a too-small Buffer: CKR_BUFFER_TOO_SMALL, the operation stays active', async () => {
      const key = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
      const iv = Buffer.alloc(16, 7);
      const pt = Buffer.from('thirty-three bytes of plaintext!!');
      await guest.call('C_EncryptInit', s, { mechanism: CKM_AES_CBC_PAD, parameter: iv }, aes);
      await expectRv(guest.call('C_Encrypt', s, pt, Buffer.alloc(8)), CKR_BUFFER_TOO_SMALL, 'CKR_BUFFER_TOO_SMALL');
      const ct: Buffer = await guest.call('C_Encrypt', s, pt, Buffer.alloc(64));
      const c = createCipheriv('aes-128-cbc', key, iv);
      expect(ct).toEqual(Buffer.concat([c.update(pt), c.final()]));
      await stillWorks();
    });

    it('raw client.call C_Sign with a NULL buffer is a length query; a short capacity gives the length', async () => {
      const r = await guest.eval(`
        const s = Buffer.from('${s.toString('hex')}', 'hex');
        const priv = Buffer.from('${priv.toString('hex')}', 'hex');
        const sw = Number(s.readBigUInt64LE(0));
        const data = Buffer.from('raw length query');
        await c.C_SignInit(s, { mechanism: ${CKM_SHA256_RSA_PKCS} }, priv);
        const q = await c.call('C_Sign', [sw, data, null]);
        const small = await c.call('C_Sign', [sw, data, 10]);
        const sig = await c.C_Sign(s, data, Buffer.alloc(Number(q.results[0])));
        return { q, small, sigLen: sig.length };
      `);
      expect(r.q).toEqual({ rv: CKR_OK, results: [256] });
      expect(r.small).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [256] });
      expect(r.sigLen).toBe(256);
      await stillWorks();
    });
  });

  it('function the module does not support: same code as pkcs11js directly', async () => {
    const bridged = await rejection(guest.call('C_SignEncryptUpdate', session, Buffer.from('part'), Buffer.alloc(64)));
    const direct = await openDirect(token);
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- what pkcs11js throws, checked below
    let directErr: any;
    try {
      const p = direct.pkcs11;
      const dslot = p.C_GetSlotList(true).find((sl) => p.C_GetTokenInfo(sl).label.trim() === token.label)!;
      const ds = p.C_OpenSession(dslot, RW_SESSION);
      try {
        p.C_SignEncryptUpdate(ds, Buffer.from('part'), Buffer.alloc(64));
      } catch (e) {
        directErr = e;
      }
      p.C_CloseSession(ds);
    } finally {
      direct.close();
    }
    expect(directErr).toBeDefined();
    expect(directErr.code).toBe(CKR_FUNCTION_NOT_SUPPORTED);
    expect(bridged.code).toBe(directErr.code);
    expect(bridged.message).toMatch(/^CKR_FUNCTION_NOT_SUPPORTED(:|$)/);

    // pkcs11js has no C_GetFunctionStatus; SoftHSM2 answers the legacy call with CKR_FUNCTION_NOT_PARALLEL.
    await expectRv(guest.call('C_GetFunctionStatus', session), CKR_FUNCTION_NOT_PARALLEL, 'CKR_FUNCTION_NOT_PARALLEL');
    await stillWorks();
  });

  it('operation not initialized / operation active', async () => {
    const s: Buffer = await guest.call('C_OpenSession', slot, RW_SESSION);
    await expectRv(guest.call('C_Sign', s, Buffer.from('x'), Buffer.alloc(256)), CKR_OPERATION_NOT_INITIALIZED, 'CKR_OPERATION_NOT_INITIALIZED');
    await expectRv(guest.call('C_DigestUpdate', s, Buffer.from('x')), CKR_OPERATION_NOT_INITIALIZED, 'CKR_OPERATION_NOT_INITIALIZED');

    await guest.call('C_DigestInit', s, { mechanism: CKM_SHA256 });
    await expectRv(guest.call('C_DigestInit', s, { mechanism: CKM_SHA256 }), CKR_OPERATION_ACTIVE, 'CKR_OPERATION_ACTIVE');
    // the first operation is still usable
    const d: Buffer = await guest.call('C_Digest', s, Buffer.from('abc'), Buffer.alloc(32));
    expect(d.toString('hex')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');

    await guest.call('C_FindObjectsInit', s, [{ type: CKA_CLASS, value: CKO_DATA }]);
    await expectRv(guest.call('C_FindObjectsInit', s, []), CKR_OPERATION_ACTIVE, 'CKR_OPERATION_ACTIVE');
    await guest.call('C_FindObjectsFinal', s);
    await guest.call('C_CloseSession', s);
    await stillWorks();
  });

  it('wrong argument types from JS: TypeError naming the function and argument', async () => {
    const e1 = await rejection(guest.call('C_GetSessionInfo', 'not-a-handle'));
    expect(e1.name).toBe('TypeError');
    expect(e1.message).toMatch(/C_GetSessionInfo/);
    expect(e1.message).toMatch(/argument 1 \(session\)/);

    const e2 = await rejection(guest.call('C_GenerateRandom', session, 'sixteen'));
    expect(e2.name).toBe('TypeError');
    expect(e2.message).toMatch(/C_GenerateRandom/);
    expect(e2.message).toMatch(/argument 2 \(randomData\)/);

    const e3 = await rejection(guest.call('C_OpenSession', slot, 'rw'));
    expect(e3.name).toBe('TypeError');
    expect(e3.message).toMatch(/C_OpenSession argument 2 \(flags\)/);

    await stillWorks();
  });

  it('a call after close(): CKR_CRYPTOKI_NOT_INITIALIZED saying the client was closed', async () => {
    const r = await guest.eval(`
      const x = await Pkcs11Client.connect({});
      await x.C_Initialize();
      const info = await x.C_GetInfo();
      await x.close();
      try {
        await x.C_GetInfo();
        return { info, ok: true };
      } catch (e) {
        return { info, name: e.name, code: e.code, message: e.message };
      }
    `);
    expect(r.ok).toBeUndefined();
    expect(r.name).toBe('Pkcs11Error');
    expect(r.code).toBe(CKR_CRYPTOKI_NOT_INITIALIZED);
    expect(r.message).toMatch(/^CKR_CRYPTOKI_NOT_INITIALIZED:/);
    expect(r.message).toMatch(/closed/);
    // the other client on the same port (and process) is unaffected
    await stillWorks();
  });

  it('the daemon logs never contain PINs, key values or plaintext', async () => {
    const s: Buffer = await guest.call('C_OpenSession', slot, RW_SESSION);
    await expectRv(guest.call('C_Login', s, CKU_USER, WRONG_PIN), CKR_PIN_INCORRECT, 'CKR_PIN_INCORRECT');
    await guest.call('C_Login', s, CKU_USER, USER_PIN);
    const key: Buffer = await guest.call('C_CreateObject', s, aesKey(AES_KEY, { ...READABLE, label: 'log-check-key' }));
    await guest.call('C_EncryptInit', s, { mechanism: CKM_AES_CBC_PAD, parameter: AES_IV }, key);
    const ct: Buffer = await guest.call('C_Encrypt', s, PLAINTEXT, Buffer.alloc(PLAINTEXT.length + 16));
    const c = createCipheriv('aes-128-cbc', AES_KEY, AES_IV);
    expect(ct).toEqual(Buffer.concat([c.update(PLAINTEXT), c.final()]));
    await guest.call('C_DecryptInit', s, { mechanism: CKM_AES_CBC_PAD, parameter: AES_IV }, key);
    expect(await guest.call('C_Decrypt', s, ct, Buffer.alloc(ct.length))).toEqual(PLAINTEXT);
    // reading the key value back makes it cross the daemon too
    const [attr] = await guest.call('C_GetAttributeValue', s, key, [{ type: CKA_VALUE }]);
    expect(attr.value).toEqual(AES_KEY);
    await guest.call('C_Logout', s);
    await guest.call('C_CloseSession', s);

    // give the daemon a moment to flush its log lines
    await new Promise((r) => setTimeout(r, 200));
    const out = daemon.output();
    // the check is not vacuous: the daemon logged these calls (debug level)
    expect(daemon.logs().some((r) => r.msg === 'call' && r.fn === 'C_Encrypt')).toBe(true);
    for (const secret of [
      USER_PIN,
      WRONG_PIN,
      token.soPin,
      Buffer.from(USER_PIN).toString('hex'),
      AES_KEY.toString('hex'),
      AES_KEY.toString('hex').toUpperCase(),
      AES_KEY.toString('base64'),
      PLAINTEXT.toString('hex'),
      PLAINTEXT.toString('hex').toUpperCase(),
      PLAINTEXT.toString('base64'),
      PLAINTEXT.toString('utf8'),
      ct.toString('hex'),
    ]) {
      expect(out.includes(secret), `daemon output contains ${secret}`).toBe(false);
    }
  });
});

describe('when the server is missing or the port is wrong', () => {
  let lone: PtyPair;
  let g: Guest;
  beforeAll(async () => {
    lone = await createPtyPair(); // nobody serves its other end
    cleanups.push(() => lone.kill());
    g = await startGuest({ port: lone.guestPath });
    cleanups.push(() => g.kill());
  });

  it('no daemon on the other end: CKR_DEVICE_ERROR saying there is no answer on the port', { timeout: 15_000 }, async () => {
    const err = await expectRv(g.connect({ port: lone.guestPath, timeoutMs: 1500 }), CKR_DEVICE_ERROR, 'CKR_DEVICE_ERROR');
    expect(err.message).toMatch(/no answer/);
    expect(err.message).toContain(lone.guestPath);
  });

  it('a port that does not exist: a clear error naming the path', { timeout: 15_000 }, async () => {
    const path = '/nonexistent/p11b-no-such-tty';
    const err = await expectRv(g.connect({ port: path, timeoutMs: 1500 }), CKR_DEVICE_ERROR, 'CKR_DEVICE_ERROR');
    expect(err.message).toContain(path);
    expect(err.message).toMatch(/does not exist/);
  });

  it('no TEC_COMM_PORT and no port option: a clear error', { timeout: 15_000 }, async () => {
    const g2 = await startGuest({ port: '', env: { TEC_COMM_PORT: undefined } });
    cleanups.push(() => g2.kill());
    expect(await g2.eval('return process.env.TEC_COMM_PORT ?? null')).toBeNull();
    const err = await expectRv(g2.connect(), CKR_DEVICE_ERROR, 'CKR_DEVICE_ERROR');
    expect(err.message).toMatch(/TEC_COMM_PORT/);
    expect(err.message).toMatch(/port/);
  });
});

describe('daemon restart', () => {
  let p: PtyPair;
  let g: Guest;
  let d1: Daemon;
  let d2: Daemon | undefined;
  beforeAll(async () => {
    p = await createPtyPair();
    cleanups.push(() => p.kill());
    d1 = await startDaemon({ module: token.module, ports: [p.serverPath], env: token.env });
    cleanups.push(() => d1.stop());
    g = await startGuest({ port: p.guestPath });
    cleanups.push(() => g.kill());
  });

  it('the old connection gets CKR_DEVICE_REMOVED; a new connection works', async () => {
    await g.connect();
    await g.call('C_Initialize');
    const sl = await findSlot(g, token.label);
    const s: Buffer = await g.call('C_OpenSession', sl, RW_SESSION);
    expect((await g.call('C_GenerateRandom', s, Buffer.alloc(8))).length).toBe(8);

    expect(await d1.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    d2 = await startDaemon({ module: token.module, ports: [p.serverPath], env: token.env });
    cleanups.push(() => d2!.stop());

    const err = await expectRv(g.call('C_GetSessionInfo', s), CKR_DEVICE_REMOVED, 'CKR_DEVICE_REMOVED');
    expect(err.message).toMatch(/unknown connection/);

    // a new connection (same guest process, same port) works
    await g.connect();
    await g.call('C_Initialize');
    const sl2 = await findSlot(g, token.label);
    const s2: Buffer = await g.call('C_OpenSession', sl2, RW_SESSION);
    expect((await g.call('C_GenerateRandom', s2, Buffer.alloc(16))).length).toBe(16);
    expect((await g.call('C_GetSessionInfo', s2)).state).toBe(CKS_RW_PUBLIC_SESSION);
    await g.close();
  });
});
