// Every forwarded PKCS#11 call of proto/protocol.json, through the real
// daemon (SoftHSM2) over a real socat pty pair, from a guest process.
// Deterministic answers are compared with the same call made directly on the
// module through pkcs11js in this process (and/or with node:crypto).
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { openDirect, type DirectModule } from '../helpers/direct.js';
import { startGuest, type Guest } from '../helpers/guest.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import {
  CKA_ALLOWED_MECHANISMS, CKA_CLASS, CKA_EC_PARAMS, CKA_EC_POINT, CKA_EXTRACTABLE, CKA_ID, CKA_KEY_TYPE, CKA_LABEL, CKA_LOCAL,
  CKA_MODULUS, CKA_MODULUS_BITS, CKA_PRIVATE, CKA_PUBLIC_EXPONENT, CKA_SENSITIVE, CKA_TOKEN, CKA_VALUE, CKA_VALUE_LEN,
  CKA_WRAP_TEMPLATE, CKD_NULL, CKF_DONT_BLOCK, CKF_SERIAL_SESSION, CKF_TOKEN_INITIALIZED, CKF_USER_PIN_INITIALIZED, CKG_MGF1_SHA1,
  CKG_MGF1_SHA256, CKK_AES, CKK_EC, CKK_GENERIC_SECRET, CKK_RSA, CKM_AES_CBC, CKM_AES_CBC_ENCRYPT_DATA, CKM_AES_CBC_PAD, CKM_AES_CTR,
  CKM_AES_ECB, CKM_AES_ECB_ENCRYPT_DATA, CKM_AES_GCM, CKM_AES_KEY_GEN, CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD, CKM_EC_KEY_PAIR_GEN,
  CKM_ECDH1_DERIVE, CKM_ECDSA, CKM_GENERIC_SECRET_KEY_GEN, CKM_RSA_PKCS, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS_OAEP, CKM_SHA256,
  CKM_SHA256_HMAC, CKM_SHA256_RSA_PKCS, CKM_SHA256_RSA_PKCS_PSS, CKM_SHA_1, CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKR_ATTRIBUTE_SENSITIVE,
  CKR_ATTRIBUTE_TYPE_INVALID, CKR_BUFFER_TOO_SMALL, CKR_CRYPTOKI_ALREADY_INITIALIZED, CKR_CRYPTOKI_NOT_INITIALIZED, CKR_NO_EVENT,
  CKR_OBJECT_HANDLE_INVALID, CKR_OK, CKR_OPERATION_NOT_INITIALIZED, CKR_PIN_INCORRECT, CKR_SESSION_HANDLE_INVALID,
  CKR_SIGNATURE_INVALID, CKS_RO_USER_FUNCTIONS, CKS_RW_PUBLIC_SESSION, CKS_RW_SO_FUNCTIONS, CKS_RW_USER_FUNCTIONS, CKU_SO, CKU_USER,
  CKZ_DATA_SPECIFIED, RW_SESSION,
} from '../helpers/pkcs11.js';
import { createToken, type SoftHsmToken } from '../helpers/softhsm.js';
import {
  aesKey, aesKeyGen, dataObject, ecKeyPair, hmacKey, newSecretKey, P256, P384, READABLE, rsaKeyPair, SYMMETRIC_USES, wire,
} from '../helpers/templates.js';

const execFileP = promisify(execFile);

interface CallEntry { id: number; name: string; local?: boolean }
const PROTO = JSON.parse(readFileSync(new URL('../../proto/protocol.json', import.meta.url), 'utf8')) as { calls: CallEntry[] };

/** Every call name that went through the bridge (pkcs11js-shaped or raw). */
const covered = new Set<string>();


// Known key material.
const AES_KEY = Buffer.from('000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f', 'hex');
const HMAC_KEY = Buffer.from('hmac-key-for-p11bridge-calls-test', 'utf8');
const IV = Buffer.from('f0e1d2c3b4a5968778695a4b3c2d1e0f', 'hex');
const DATA32 = Buffer.from('The quick brown fox jumps over t', 'utf8'); // 32 bytes
const DATA40 = Buffer.from('The quick brown fox jumps over the lazy.', 'utf8'); // 40 bytes

// ---------------------------------------------------------------- helpers
type Handle = Buffer;
/** pkcs11js has these at run time, but not in its typings. */
interface OpStateApi {
  C_GetOperationState(session: Buffer): Buffer;
  C_SetOperationState(session: Buffer, state: Buffer, encryptionKey: Buffer, authenticationKey: Buffer): void;
}
interface Raw { rv: number; results?: unknown[] }

/** Number of a handle Buffer (host CK_ULONG, little-endian on x64). */
const h2n = (h: Buffer): number => Number(h.readBigUInt64LE(0));
const n2h = (n: number | bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};
const b64u = (b: Buffer): string => b.toString('base64url');

/** The rv of a pkcs11js call in this process (0 when it succeeded). */
function drv(f: () => unknown): number {
  try {
    f();
    return CKR_OK;
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'number') return code;
    // pkcs11js's C_FindObjects wrapper throws a plain Error "CKR_...:<rv>"
    const m = /CKR_[^:]+:(\d+)/.exec(String((e as Error).message));
    if (m) return Number(m[1]);
    throw e;
  }
}

/** The rv of a bridge call (0 when it succeeded); a non-PKCS#11 failure fails the test. */
async function brv(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return CKR_OK;
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'number') return code;
    throw e;
  }
}

/** Blank-padded 32-byte label as pkcs11js and the bridge report it. */
const pad32 = (s: string): string => s.padEnd(32, ' ');

interface Env {
  token: SoftHsmToken;
  pty: PtyPair;
  daemon: Daemon;
  guest: Guest;
  direct: DirectModule;
  /** pkcs11js on the same token, in this process. */
  p: pkcs11js.PKCS11;
  /** The token's slot (handle Buffer) and id. */
  slot: Handle;
  slotId: number;
  /** pkcs11js-shaped call through the bridge (client[name](...args) in the guest). */
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- Guest.call's result, decoded from the guest's JSON
  b(name: string, ...args: unknown[]): Promise<any>;
  /** Raw wire-level call through the bridge: client.call(name, wireArgs). */
  raw(name: string, wire: unknown[]): Promise<Raw>;
  cleanups: Array<() => Promise<unknown> | unknown>;
}

async function startEnv(e: Env, label: string): Promise<void> {
  e.cleanups = [];
  e.token = await createToken({ label });
  e.cleanups.push(() => e.token.cleanup());
  e.pty = await createPtyPair();
  e.cleanups.push(() => e.pty.kill());
  // --init-token: the token administration tests initialize SoftHSM2's spare slot.
  e.daemon = await startDaemon({ module: e.token.module, ports: [e.pty.serverPath], env: e.token.env, args: ['--init-token'] });
  e.cleanups.push(() => e.daemon.stop());
  e.guest = await startGuest({ port: e.pty.guestPath });
  e.cleanups.push(async () => {
    await e.guest.close().catch(() => {});
    await e.guest.kill();
  });
  e.b = (name, ...args) => {
    covered.add(name);
    return e.guest.call(name, ...args);
  };
  e.raw = (name, wire) => {
    covered.add(name);
    return e.guest.call('call', name, wire) as Promise<Raw>;
  };
  await e.guest.connect({ timeoutMs: 20_000 });
  await e.b('C_Initialize');
  e.direct = await openDirect(e.token);
  e.cleanups.push(() => e.direct.close());
  e.p = e.direct.pkcs11;
  const slots = e.p.C_GetSlotList(true);
  const found = slots.find((s) => e.p.C_GetTokenInfo(s).label.trim() === label);
  if (!found) throw new Error(`no slot with token ${label}`);
  e.slot = found;
  e.slotId = h2n(found);
}

async function stopEnv(e: Env): Promise<void> {
  const errors: unknown[] = [];
  while (e.cleanups?.length) {
    try {
      await e.cleanups.pop()!();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length) throw errors[0];
}

function useEnv(label: string): Env {
  const e = {} as Env;
  beforeAll(() => startEnv(e, label), 120_000);
  afterAll(() => stopEnv(e), 60_000);
  return e;
}

/** A user-logged-in R/W session through the bridge and one directly. */
async function userSessions(e: Env): Promise<{ s: Handle; ds: Handle }> {
  const s: Handle = await e.b('C_OpenSession', e.slot, RW_SESSION);
  await e.b('C_Login', s, CKU_USER, e.token.pin);
  const ds = e.p.C_OpenSession(e.slot, RW_SESSION);
  e.p.C_Login(ds, CKU_USER, e.token.pin);
  return { s, ds };
}

/** The AES keys of these tests: for every symmetric use, the value readable back. */
const ANY_USE = { uses: SYMMETRIC_USES, ...READABLE };

function nodeCipher(alg: string, key: Buffer, iv: Buffer | null, data: Buffer, pad = false): Buffer {
  const c = crypto.createCipheriv(alg, key, iv);
  c.setAutoPadding(pad);
  return Buffer.concat([c.update(data), c.final()]);
}

/** Python/ctypes call of functions pkcs11js does not expose, straight on the module. */
const PY_DIRECT = `
import ctypes, sys, json
lib = ctypes.CDLL(sys.argv[1])
fl = ctypes.c_void_p()
assert lib.C_GetFunctionList(ctypes.byref(fl)) == 0
base = fl.value
U = ctypes.c_ulong
def fn(id, *argtypes):
    ptr = ctypes.c_void_p.from_address(base + 8 + (id - 1) * 8).value
    return ctypes.CFUNCTYPE(U, *argtypes)(ptr)
out = {}
out['C_Initialize'] = fn(1, ctypes.c_void_p)(None)
h = U(0)
out['C_OpenSession'] = fn(13, U, U, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(U))(int(sys.argv[2]), ${RW_SESSION}, None, None, ctypes.byref(h))
for name, id in (('C_GetFunctionStatus', 66), ('C_CancelFunction', 67)):
    out[name] = fn(id, U)(h.value)
    out[name + ':invalid'] = fn(id, U)(int(sys.argv[3]))
fn(2, ctypes.c_void_p)(None)
print(json.dumps(out))
`;

// =================================================================== tests

describe('general purpose, slot and token information, sessions', () => {
  const e = useEnv('calls-info');

  it('C_GetInfo equals the module\'s own answer', async () => {
    const info = await e.b('C_GetInfo');
    expect(info).toEqual(e.p.C_GetInfo());
  });

  it('the server announces every function of SoftHSM2 (so no call below is answered locally)', async () => {
    const functions: string[] = await e.guest.eval('return c.serverInfo.functions');
    for (const c of PROTO.calls) if (!c.local) expect(functions).toContain(c.name);
    expect(await e.guest.eval('return c.serverInfo.module')).toEqual(e.p.C_GetInfo());
  });

  it('C_Initialize twice answers CKR_CRYPTOKI_ALREADY_INITIALIZED like the module', async () => {
    const direct = drv(() => e.p.C_Initialize());
    expect(direct).toBe(CKR_CRYPTOKI_ALREADY_INITIALIZED);
    expect(await brv(e.b('C_Initialize'))).toBe(direct);
  });

  it('C_GetSlotList: same slots, count query and CKR_BUFFER_TOO_SMALL', async () => {
    for (const present of [true, false]) {
      const direct = e.p.C_GetSlotList(present);
      const slots = await e.b('C_GetSlotList', present);
      expect(slots).toEqual(direct);
      expect(slots.length).toBeGreaterThanOrEqual(2); // the token plus SoftHSM2's spare slot
      const ids = direct.map(h2n);
      // count query (NULL list)
      expect(await e.raw('C_GetSlotList', [present, null])).toEqual({ rv: CKR_OK, results: [ids.length] });
      // too small: the count comes back
      expect(await e.raw('C_GetSlotList', [present, ids.length - 1])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [ids.length] });
      // exact capacity and server-sized
      expect(await e.raw('C_GetSlotList', [present, ids.length])).toEqual({ rv: CKR_OK, results: [ids] });
      expect(await e.raw('C_GetSlotList', [present, true])).toEqual({ rv: CKR_OK, results: [ids] });
    }
  });

  it('C_GetSlotInfo equals the module\'s answer for every slot', async () => {
    for (const slot of e.p.C_GetSlotList(false)) {
      expect(await e.b('C_GetSlotInfo', slot)).toEqual(e.p.C_GetSlotInfo(slot));
    }
    const bad = n2h(0x7fff1234);
    expect(await brv(e.b('C_GetSlotInfo', bad))).toBe(drv(() => e.p.C_GetSlotInfo(bad)));
  });

  it('C_GetTokenInfo equals the module\'s answer (but the clock and session counts)', async () => {
    const strip = (t: Record<string, unknown>) => {
      const { utcTime: _u, sessionCount: _s, rwSessionCount: _r, ...rest } = t;
      return rest;
    };
    for (const slot of e.p.C_GetSlotList(true)) {
      const bridge = await e.b('C_GetTokenInfo', slot);
      const direct = e.p.C_GetTokenInfo(slot) as unknown as Record<string, unknown>;
      expect.soft(strip(bridge)).toEqual(strip(direct));
      expect(typeof bridge.utcTime).toBe('string');
    }
    const info = await e.b('C_GetTokenInfo', e.slot);
    expect(info.label).toBe(pad32('calls-info'));
    // on the wire the CK_ULONG fields are exact (CK_UNAVAILABLE_INFORMATION as 2^64-1)
    const direct = e.p.C_GetTokenInfo(e.slot);
    const raw = await e.raw('C_GetTokenInfo', [e.slotId]);
    expect(raw.rv).toBe(CKR_OK);
    const fields = raw.results![0] as unknown[];
    expect(fields.slice(0, 4)).toEqual([direct.label, direct.manufacturerID, direct.model, direct.serialNumber].map((x) => Buffer.from(x)));
    expect(fields[4]).toBe(direct.flags);
    expect(fields.slice(11, 15).map((x) => BigInt(x as number | bigint))).toEqual([
      direct.totalPublicMemory,
      direct.freePublicMemory,
      direct.totalPrivateMemory,
      direct.freePrivateMemory,
    ].map((x) => BigInt(x)));
  });

  it('C_GetMechanismList is exactly the module\'s list; C_GetMechanismInfo matches for each', async () => {
    const direct = e.p.C_GetMechanismList(e.slot);
    const list = await e.b('C_GetMechanismList', e.slot);
    expect(list).toEqual(direct);
    expect(list.length).toBeGreaterThan(20);
    expect(await e.raw('C_GetMechanismList', [e.slotId, null])).toEqual({ rv: CKR_OK, results: [direct.length] });
    expect(await e.raw('C_GetMechanismList', [e.slotId, 1])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [direct.length] });
    expect(await e.raw('C_GetMechanismList', [e.slotId, direct.length])).toEqual({ rv: CKR_OK, results: [direct] });
    for (const m of direct) {
      expect({ m, info: await e.b('C_GetMechanismInfo', e.slot, m) }).toEqual({ m, info: e.p.C_GetMechanismInfo(e.slot, m) });
    }
    // an unknown mechanism: same error
    expect(await brv(e.b('C_GetMechanismInfo', e.slot, 0x7ffffff0))).toBe(drv(() => e.p.C_GetMechanismInfo(e.slot, 0x7ffffff0)));
  });

  it('C_OpenSession / C_GetSessionInfo / C_Login / C_Logout: states as on the module', async () => {
    const s: Handle = await e.b('C_OpenSession', e.slot, RW_SESSION);
    const ds = e.p.C_OpenSession(e.slot, RW_SESSION);
    const same = async () => {
      const bi = await e.b('C_GetSessionInfo', s);
      const di = e.p.C_GetSessionInfo(ds);
      expect(bi).toEqual(di);
      expect(bi.slotID).toEqual(e.slot);
      return bi.state as number;
    };
    expect(await same()).toBe(CKS_RW_PUBLIC_SESSION);

    // wrong PIN: same code
    expect(await brv(e.b('C_Login', s, CKU_USER, 'wrong-pin'))).toBe(drv(() => e.p.C_Login(ds, CKU_USER, 'wrong-pin')));
    expect(await brv(e.b('C_Login', s, CKU_USER, 'wrong-pin'))).toBe(CKR_PIN_INCORRECT);

    await e.b('C_Login', s, CKU_USER, e.token.pin);
    e.p.C_Login(ds, CKU_USER, e.token.pin);
    expect(await same()).toBe(CKS_RW_USER_FUNCTIONS);

    await e.b('C_Logout', s);
    e.p.C_Logout(ds);
    expect(await same()).toBe(CKS_RW_PUBLIC_SESSION);
    // logout when not logged in: same code
    expect(await brv(e.b('C_Logout', s))).toBe(drv(() => e.p.C_Logout(ds)));

    await e.b('C_Login', s, CKU_SO, e.token.soPin);
    e.p.C_Login(ds, CKU_SO, e.token.soPin);
    expect(await same()).toBe(CKS_RW_SO_FUNCTIONS);
    await e.b('C_Logout', s);
    e.p.C_Logout(ds);

    // raw form
    const r = await e.raw('C_GetSessionInfo', [h2n(s)]);
    expect(r).toEqual({ rv: CKR_OK, results: [[e.slotId, CKS_RW_PUBLIC_SESSION, RW_SESSION, 0]] });

    await e.b('C_CloseSession', s);
    e.p.C_CloseSession(ds);
    expect(await brv(e.b('C_GetSessionInfo', s))).toBe(CKR_SESSION_HANDLE_INVALID);
    expect(await brv(e.b('C_CloseSession', s))).toBe(drv(() => e.p.C_CloseSession(ds)));
  });

  it('C_GenerateRandom and C_SeedRandom', async () => {
    const s: Handle = await e.b('C_OpenSession', e.slot, RW_SESSION);
    const ds = e.p.C_OpenSession(e.slot, RW_SESSION);
    const r1: Buffer = await e.b('C_GenerateRandom', s, Buffer.alloc(64));
    const r2: Buffer = await e.b('C_GenerateRandom', s, Buffer.alloc(64));
    expect(r1.length).toBe(64);
    expect(r2.length).toBe(64);
    expect(r1.equals(r2)).toBe(false);
    const raw = await e.raw('C_GenerateRandom', [h2n(s), 17]);
    expect(raw.rv).toBe(CKR_OK);
    expect((raw.results![0] as Buffer).length).toBe(17);

    const seed = Buffer.from('some seed material');
    expect(await brv(e.b('C_SeedRandom', s, seed))).toBe(drv(() => e.p.C_SeedRandom(ds, seed)));
    expect(await e.raw('C_SeedRandom', [h2n(s), seed])).toEqual({ rv: drv(() => e.p.C_SeedRandom(ds, seed)), results: drv(() => e.p.C_SeedRandom(ds, seed)) === CKR_OK ? [] : undefined });
    await e.b('C_CloseSession', s);
    e.p.C_CloseSession(ds);
  });

  it('C_WaitForSlotEvent (CKF_DONT_BLOCK): the module\'s answer passes through', async () => {
    let direct: { rv: number; slot?: Buffer | null };
    try {
      direct = { rv: CKR_OK, slot: e.p.C_WaitForSlotEvent(CKF_DONT_BLOCK) };
    } catch (err) {
      direct = { rv: (err as { code: number }).code };
    }
    const raw = await e.raw('C_WaitForSlotEvent', [CKF_DONT_BLOCK]);
    // pkcs11js reports CKR_NO_EVENT as null
    if (direct.rv === CKR_OK && direct.slot === null) expect(raw.rv).toBe(CKR_NO_EVENT);
    else expect(raw.rv).toBe(direct.rv);
    if (direct.rv === CKR_OK && direct.slot) expect(raw.results).toEqual([h2n(direct.slot)]);
    // pkcs11js-shaped
    const shaped = await e.b('C_WaitForSlotEvent', CKF_DONT_BLOCK).then(
      (v) => ({ rv: CKR_OK, slot: v }),
      (err) => ({ rv: err.code }),
    );
    expect(shaped).toEqual(direct);
  });

  it('C_GetFunctionStatus / C_CancelFunction: the module\'s answer passes through', async () => {
    const s: Handle = await e.b('C_OpenSession', e.slot, RW_SESSION);
    const bogus = 0xdead;
    // pkcs11js has neither function: call them straight on the module (ctypes).
    const { stdout } = await execFileP('python3', ['-c', PY_DIRECT, e.token.module, String(e.slotId), String(bogus)], {
      env: { ...process.env, ...e.token.env },
      timeout: 30_000,
    });
    const direct = JSON.parse(stdout) as Record<string, number>;
    expect(direct.C_Initialize).toBe(CKR_OK);
    expect(direct.C_OpenSession).toBe(CKR_OK);
    for (const name of ['C_GetFunctionStatus', 'C_CancelFunction']) {
      expect({ name, raw: await e.raw(name, [h2n(s)]) }).toEqual({ name, raw: { rv: direct[name], ...(direct[name] === CKR_OK ? { results: [] } : {}) } });
      expect({ name, rv: await brv(e.b(name, s)) }).toEqual({ name, rv: direct[name] });
      expect({ name, rv: (await e.raw(name, [bogus])).rv }).toEqual({ name, rv: direct[`${name}:invalid`] });
    }
    await e.b('C_CloseSession', s);
  });
});

describe('objects', () => {
  const e = useEnv('calls-objects');
  let s: Handle;
  let ds: Handle;
  beforeAll(async () => {
    ({ s, ds } = await userSessions(e));
  });

  it('C_CreateObject / C_GetAttributeValue / C_SetAttributeValue / C_CopyObject / C_DestroyObject', async () => {
    const tmpl = dataObject({ label: 'data-1', value: Buffer.from('payload bytes') });
    const o: Handle = await e.b('C_CreateObject', s, tmpl);
    const dobj = e.p.C_CreateObject(ds, tmpl);
    const q = () => [{ type: CKA_CLASS }, { type: CKA_TOKEN }, { type: CKA_LABEL }, { type: CKA_VALUE }, { type: CKA_PRIVATE }];
    const got = await e.b('C_GetAttributeValue', s, o, q());
    expect(got).toEqual(e.p.C_GetAttributeValue(ds, dobj, q()));
    expect(got[2].value).toEqual(Buffer.from('data-1'));

    await e.b('C_SetAttributeValue', s, o, [{ type: CKA_LABEL, value: 'data-1-renamed' }]);
    expect((await e.b('C_GetAttributeValue', s, o, [{ type: CKA_LABEL }]))[0].value).toEqual(Buffer.from('data-1-renamed'));

    const copy: Handle = await e.b('C_CopyObject', s, o, [{ type: CKA_LABEL, value: 'data-1-copy' }]);
    expect(copy.equals(o)).toBe(false);
    const cv = await e.b('C_GetAttributeValue', s, copy, [{ type: CKA_LABEL }, { type: CKA_VALUE }]);
    expect(cv.map((a: { value: Buffer }) => a.value)).toEqual([Buffer.from('data-1-copy'), Buffer.from('payload bytes')]);

    // C_GetObjectSize: same answer as the module for the same kind of object
    // (SoftHSM2: CK_UNAVAILABLE_INFORMATION; exact on the wire, pkcs11js gives its low 32 bits)
    const rawSize = await e.raw('C_GetObjectSize', [h2n(s), h2n(o)]);
    expect(rawSize.rv).toBe(CKR_OK);
    expect(BigInt.asUintN(32, BigInt(rawSize.results![0] as number | bigint))).toBe(BigInt(e.p.C_GetObjectSize(ds, dobj)));
    expect.soft(await e.b('C_GetObjectSize', s, o)).toBe(e.p.C_GetObjectSize(ds, dobj));

    await e.b('C_DestroyObject', s, copy);
    expect(await brv(e.b('C_GetAttributeValue', s, copy, [{ type: CKA_LABEL }]))).toBe(CKR_OBJECT_HANDLE_INVALID);
    expect(await brv(e.b('C_DestroyObject', s, copy))).toBe(drv(() => e.p.C_DestroyObject(ds, n2h(h2n(copy) + 100000))));
    expect(await brv(e.b('C_GetObjectSize', s, copy))).toBe(CKR_OBJECT_HANDLE_INVALID);
    await e.b('C_DestroyObject', s, o);
    e.p.C_DestroyObject(ds, dobj);
  });

  it('token objects are shared with the module in this process (C_SetAttributeValue seen directly)', async () => {
    const o: Handle = await e.b('C_CreateObject', s, dataObject({ token: true, private: true, label: 'shared-data', value: Buffer.from('shared value') }));
    const findDirect = (label: string) => {
      e.p.C_FindObjectsInit(ds, [{ type: CKA_LABEL, value: label }]);
      const hs = e.p.C_FindObjects(ds, 10);
      e.p.C_FindObjectsFinal(ds);
      return hs;
    };
    const [dobj] = findDirect('shared-data');
    expect(dobj).toBeDefined();
    const q = () => [{ type: CKA_VALUE }, { type: CKA_LABEL }, { type: CKA_TOKEN }, { type: CKA_PRIVATE }, { type: CKA_CLASS }];
    expect(await e.b('C_GetAttributeValue', s, o, q())).toEqual(e.p.C_GetAttributeValue(ds, dobj!, q()));
    expect.soft(await e.b('C_GetObjectSize', s, o)).toBe(e.p.C_GetObjectSize(ds, dobj!));

    await e.b('C_SetAttributeValue', s, o, [{ type: CKA_LABEL, value: 'shared-renamed' }]);
    expect(e.p.C_GetAttributeValue(ds, dobj!, [{ type: CKA_LABEL }])[0]!.value).toEqual(Buffer.from('shared-renamed'));
    await e.b('C_DestroyObject', s, o);
    expect(findDirect('shared-renamed')).toEqual([]);
  });

  it('C_GetAttributeValue: lengths (want=false), sensitive and invalid attributes', async () => {
    const key: Handle = await e.b('C_CreateObject', s, aesKey(AES_KEY, { ...ANY_USE, label: 'len-key' }));
    const sensitive = aesKey(AES_KEY, { uses: SYMMETRIC_USES, sensitive: true, extractable: false, label: 'sensitive-key' });
    const sens: Handle = await e.b('C_CreateObject', s, sensitive);
    const dsens = e.p.C_CreateObject(ds, sensitive);

    // lengths only
    expect(await e.raw('C_GetAttributeValue', [h2n(s), h2n(key), [[CKA_VALUE, false], [CKA_LABEL, false]]])).toEqual({
      rv: CKR_OK,
      results: [[32, 7]],
    });
    // values, typed
    expect(await e.raw('C_GetAttributeValue', [h2n(s), h2n(key), [[CKA_VALUE, true], [CKA_KEY_TYPE, true], [CKA_SENSITIVE, true]]])).toEqual({
      rv: CKR_OK,
      results: [[AES_KEY, CKK_AES, false]],
    });

    // sensitive: CKR_ATTRIBUTE_SENSITIVE, the other attributes still answered
    expect(await e.raw('C_GetAttributeValue', [h2n(s), h2n(sens), [[CKA_VALUE, true], [CKA_LABEL, true]]])).toEqual({
      rv: CKR_ATTRIBUTE_SENSITIVE,
      results: [[null, Buffer.from('sensitive-key')]],
    });
    expect(await e.raw('C_GetAttributeValue', [h2n(s), h2n(sens), [[CKA_VALUE, false], [CKA_LABEL, false]]])).toEqual({
      rv: CKR_ATTRIBUTE_SENSITIVE,
      results: [[null, 13]],
    });
    const direct = drv(() => e.p.C_GetAttributeValue(ds, dsens, [{ type: CKA_VALUE }]));
    expect(direct).toBe(CKR_ATTRIBUTE_SENSITIVE);
    expect(await brv(e.b('C_GetAttributeValue', s, sens, [{ type: CKA_VALUE }]))).toBe(direct);

    // an attribute the object does not have
    const bogusType = 0x7ff00001;
    const dInvalid = drv(() => e.p.C_GetAttributeValue(ds, dsens, [{ type: bogusType }]));
    expect(dInvalid).toBe(CKR_ATTRIBUTE_TYPE_INVALID);
    expect(await brv(e.b('C_GetAttributeValue', s, sens, [{ type: bogusType }]))).toBe(dInvalid);
    expect(await e.raw('C_GetAttributeValue', [h2n(s), h2n(key), [[bogusType, true], [CKA_LABEL, true]]])).toEqual({
      rv: CKR_ATTRIBUTE_TYPE_INVALID,
      results: [[null, Buffer.from('len-key')]],
    });
    e.p.C_DestroyObject(ds, dsens);
  });

  it('templates with a CK_ULONG array (CKA_ALLOWED_MECHANISMS) and a nested template (CKA_WRAP_TEMPLATE)', async () => {
    const o: Handle = await e.b('C_CreateObject', s, [
      ...aesKey(AES_KEY, { ...ANY_USE, token: true, label: 'allowed-mechs' }),
      // (SoftHSM2 keeps the list as a sorted set)
      { type: CKA_ALLOWED_MECHANISMS, value: [CKM_AES_ECB, CKM_AES_CBC] },
      { type: CKA_WRAP_TEMPLATE, value: [{ type: CKA_KEY_TYPE, value: CKK_AES }, { type: CKA_EXTRACTABLE, value: true }] },
    ]);
    expect(await e.raw('C_GetAttributeValue', [h2n(s), h2n(o), [[CKA_ALLOWED_MECHANISMS, true], [CKA_WRAP_TEMPLATE, true]]])).toEqual({
      rv: CKR_OK,
      results: [[[CKM_AES_ECB, CKM_AES_CBC], [[CKA_KEY_TYPE, CKK_AES], [CKA_EXTRACTABLE, true]]]],
    });
    expect(await e.raw('C_GetAttributeValue', [h2n(s), h2n(o), [[CKA_ALLOWED_MECHANISMS, false], [CKA_WRAP_TEMPLATE, false]]])).toEqual({
      rv: CKR_OK,
      results: [[2, 2]],
    });
    // pkcs11js shape: the raw CK_ULONG array, as the module gives it to pkcs11js here
    e.p.C_FindObjectsInit(ds, [{ type: CKA_LABEL, value: 'allowed-mechs' }]);
    const [dobj] = e.p.C_FindObjects(ds, 1);
    e.p.C_FindObjectsFinal(ds);
    const q = () => [{ type: CKA_ALLOWED_MECHANISMS }];
    expect(await e.b('C_GetAttributeValue', s, o, q())).toEqual(e.p.C_GetAttributeValue(ds, dobj!, q()));
    // a mechanism outside the list: the module's code
    const ctr = { mechanism: CKM_AES_CTR, parameter: { counterBits: 128, cb: IV } };
    const d = drv(() => e.p.C_EncryptInit(ds, { mechanism: CKM_AES_CTR, parameter: Buffer.concat([n2h(128), IV]) }, dobj!));
    expect(d).not.toBe(CKR_OK);
    expect(await brv(e.b('C_EncryptInit', s, ctr, o))).toBe(d);
    await e.b('C_EncryptInit', s, { mechanism: CKM_AES_ECB }, o);
    expect(await e.b('C_Encrypt', s, DATA32, Buffer.alloc(32))).toEqual(nodeCipher('aes-256-ecb', AES_KEY, null, DATA32));
    await e.b('C_DestroyObject', s, o);
  });

  it('C_FindObjectsInit / C_FindObjects (maxObjectCount and single-handle forms) / C_FindObjectsFinal', async () => {
    const made: Handle[] = [];
    for (let i = 0; i < 3; i++) {
      made.push(
        await e.b('C_CreateObject', s, dataObject({ label: 'find-me', value: Buffer.from([i]) })),
      );
    }
    const sortHex = (hs: Handle[]) => hs.map((h) => h.toString('hex')).sort();

    await e.b('C_FindObjectsInit', s, [{ type: CKA_LABEL, value: 'find-me' }]);
    const first: Handle[] = await e.b('C_FindObjects', s, 2);
    expect(first.length).toBe(2);
    const one: Handle | null = await e.b('C_FindObjects', s);
    expect(Buffer.isBuffer(one)).toBe(true);
    const none: Handle | null = await e.b('C_FindObjects', s);
    expect(none).toBeNull();
    expect(await e.b('C_FindObjects', s, 5)).toEqual([]);
    await e.b('C_FindObjectsFinal', s);
    expect(sortHex([...first, one!])).toEqual(sortHex(made));

    // raw form
    await e.b('C_FindObjectsInit', s, [{ type: CKA_LABEL, value: 'find-me' }, { type: CKA_VALUE, value: Buffer.from([1]) }]);
    expect(await e.raw('C_FindObjects', [h2n(s), 10])).toEqual({ rv: CKR_OK, results: [[h2n(made[1]!)]] });
    expect(await e.raw('C_FindObjectsFinal', [h2n(s)])).toEqual({ rv: CKR_OK, results: [] });

    // not initialized: same code as the module
    const d = drv(() => e.p.C_FindObjects(ds, 1));
    expect(d).toBe(CKR_OPERATION_NOT_INITIALIZED);
    expect(await brv(e.b('C_FindObjects', s, 1))).toBe(d);
    expect(await brv(e.b('C_FindObjectsFinal', s))).toBe(drv(() => e.p.C_FindObjectsFinal(ds)));

    // token objects: the same set as the module sees
    await e.b('C_FindObjectsInit', s, [{ type: CKA_TOKEN, value: true }]);
    const bt: Handle[] = await e.b('C_FindObjects', s, 100);
    await e.b('C_FindObjectsFinal', s);
    e.p.C_FindObjectsInit(ds, [{ type: CKA_TOKEN, value: true }]);
    const dt = e.p.C_FindObjects(ds, 100);
    e.p.C_FindObjectsFinal(ds);
    expect(bt.length).toBe(dt.length);

    for (const h of made) await e.b('C_DestroyObject', s, h);
  });

  it('C_GenerateKey: AES and generic secret', async () => {
    const aes: Handle = await e.b('C_GenerateKey', s, { mechanism: CKM_AES_KEY_GEN }, aesKeyGen(READABLE));
    const a = await e.raw('C_GetAttributeValue', [h2n(s), h2n(aes), [[CKA_KEY_TYPE, true], [CKA_VALUE_LEN, true], [CKA_VALUE, false], [CKA_LOCAL, true]]]);
    expect(a).toEqual({ rv: CKR_OK, results: [[CKK_AES, 32, 32, true]] });

    // SoftHSM2's HMAC-SHA256 wants at least 32 bytes
    const gen: Handle = await e.b('C_GenerateKey', s, { mechanism: CKM_GENERIC_SECRET_KEY_GEN },
      newSecretKey(CKK_GENERIC_SECRET, { valueLen: 32, uses: ['sign', 'verify'], ...READABLE }));
    const [value] = (await e.raw('C_GetAttributeValue', [h2n(s), h2n(gen), [[CKA_VALUE, true]]])).results![0] as Buffer[];
    expect(value!.length).toBe(32);
    // the generated key works and is what it says it is
    await e.b('C_SignInit', s, { mechanism: CKM_SHA256_HMAC }, gen);
    const mac: Buffer = await e.b('C_Sign', s, DATA40, Buffer.alloc(32));
    expect(mac).toEqual(crypto.createHmac('sha256', value!).update(DATA40).digest());
    // the module rejects a bad template the same way
    const badT = newSecretKey(CKK_AES, { valueLen: 7 }); // no AES key has 7 bytes
    expect(await brv(e.b('C_GenerateKey', s, { mechanism: CKM_AES_KEY_GEN }, badT))).toBe(
      drv(() => e.p.C_GenerateKey(ds, { mechanism: CKM_AES_KEY_GEN }, badT)),
    );
  });
});

describe('symmetric crypto, digests, MACs, wrapping and derivation', () => {
  const e = useEnv('calls-sym');
  let s: Handle;
  let ds: Handle;
  let key: Handle; // AES_KEY through the bridge
  let dkey: Handle; // AES_KEY directly
  beforeAll(async () => {
    ({ s, ds } = await userSessions(e));
    key = await e.b('C_CreateObject', s, aesKey(AES_KEY, ANY_USE));
    dkey = e.p.C_CreateObject(ds, aesKey(AES_KEY, ANY_USE));
  });

  const ctrParamsHost = (cb: Buffer): Buffer => {
    const b = Buffer.alloc(24);
    b.writeBigUInt64LE(128n, 0);
    cb.copy(b, 8);
    return b;
  };

  const cases = () => [
    { name: 'AES-ECB', mech: { mechanism: CKM_AES_ECB }, dmech: { mechanism: CKM_AES_ECB }, data: DATA32, expected: nodeCipher('aes-256-ecb', AES_KEY, null, DATA32) },
    { name: 'AES-CBC', mech: { mechanism: CKM_AES_CBC, parameter: IV }, dmech: { mechanism: CKM_AES_CBC, parameter: IV }, data: DATA32, expected: nodeCipher('aes-256-cbc', AES_KEY, IV, DATA32) },
    { name: 'AES-CBC-PAD', mech: { mechanism: CKM_AES_CBC_PAD, parameter: IV }, dmech: { mechanism: CKM_AES_CBC_PAD, parameter: IV }, data: DATA40, expected: nodeCipher('aes-256-cbc', AES_KEY, IV, DATA40, true) },
    { name: 'AES-CTR (struct)', mech: { mechanism: CKM_AES_CTR, parameter: { counterBits: 128, cb: IV } }, dmech: { mechanism: CKM_AES_CTR, parameter: ctrParamsHost(IV) }, data: DATA40, expected: nodeCipher('aes-256-ctr', AES_KEY, IV, DATA40) },
    { name: 'AES-CTR (host bytes)', mech: { mechanism: CKM_AES_CTR, parameter: ctrParamsHost(IV) }, dmech: { mechanism: CKM_AES_CTR, parameter: ctrParamsHost(IV) }, data: DATA40, expected: nodeCipher('aes-256-ctr', AES_KEY, IV, DATA40) },
    (() => {
      const iv = IV.subarray(0, 12);
      const aad = Buffer.from('additional data');
      const c = crypto.createCipheriv('aes-256-gcm', AES_KEY, iv);
      c.setAAD(aad);
      const ct = Buffer.concat([c.update(DATA40), c.final(), c.getAuthTag()]);
      return {
        name: 'AES-GCM',
        mech: { mechanism: CKM_AES_GCM, parameter: { iv, ivBits: 96, aad, tagBits: 128 } },
        dmech: { mechanism: CKM_AES_GCM, parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv, ivBits: 96, aad, tagBits: 128 } },
        data: DATA40,
        expected: ct,
      };
    })(),
  ];

  it('C_EncryptInit / C_Encrypt and C_DecryptInit / C_Decrypt: node:crypto\'s and the module\'s output', async () => {
    for (const c of cases()) {
      await e.b('C_EncryptInit', s, c.mech, key);
      const ct: Buffer = await e.b('C_Encrypt', s, c.data, Buffer.alloc(c.data.length + 32));
      expect({ name: c.name, ct: ct.toString('hex') }).toEqual({ name: c.name, ct: c.expected.toString('hex') });
      e.p.C_EncryptInit(ds, c.dmech as pkcs11js.Mechanism, dkey);
      const dct = e.p.C_Encrypt(ds, c.data, Buffer.alloc(c.data.length + 32));
      expect({ name: c.name, ct: ct.toString('hex') }).toEqual({ name: c.name, ct: dct.toString('hex') });

      await e.b('C_DecryptInit', s, c.mech, key);
      const pt: Buffer = await e.b('C_Decrypt', s, c.expected, Buffer.alloc(c.expected.length + 16));
      expect({ name: c.name, pt }).toEqual({ name: c.name, pt: c.data });
    }
  });

  it('C_EncryptUpdate / C_EncryptFinal and C_DecryptUpdate / C_DecryptFinal', async () => {
    for (const c of cases().filter((x) => x.name !== 'AES-GCM')) {
      await e.b('C_EncryptInit', s, c.mech, key);
      const parts: Buffer[] = [];
      parts.push(await e.b('C_EncryptUpdate', s, c.data.subarray(0, 20), Buffer.alloc(64)));
      parts.push(await e.b('C_EncryptUpdate', s, c.data.subarray(20), Buffer.alloc(64)));
      parts.push(await e.b('C_EncryptFinal', s, Buffer.alloc(64)));
      expect({ name: c.name, ct: Buffer.concat(parts).toString('hex') }).toEqual({ name: c.name, ct: c.expected.toString('hex') });

      await e.b('C_DecryptInit', s, c.mech, key);
      const out: Buffer[] = [];
      out.push(await e.b('C_DecryptUpdate', s, c.expected.subarray(0, 17), Buffer.alloc(64)));
      out.push(await e.b('C_DecryptUpdate', s, c.expected.subarray(17), Buffer.alloc(64)));
      out.push(await e.b('C_DecryptFinal', s, Buffer.alloc(64)));
      expect({ name: c.name, pt: Buffer.concat(out) }).toEqual({ name: c.name, pt: c.data });
    }
  });

  it('raw C_Encrypt / C_Decrypt: NULL-buffer length query and CKR_BUFFER_TOO_SMALL keep the operation', async () => {
    const expected = nodeCipher('aes-256-cbc', AES_KEY, IV, DATA40, true);
    const sn = h2n(s);
    await e.b('C_EncryptInit', s, { mechanism: CKM_AES_CBC_PAD, parameter: IV }, key);
    const q = await e.raw('C_Encrypt', [sn, DATA40, null]);
    expect(q).toEqual({ rv: CKR_OK, results: [48] });
    expect(await e.raw('C_Encrypt', [sn, DATA40, 16])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [48] });
    expect(await e.raw('C_Encrypt', [sn, DATA40, 48])).toEqual({ rv: CKR_OK, results: [expected] });
    // the operation has ended now
    expect((await e.raw('C_Encrypt', [sn, DATA40, 48])).rv).toBe(CKR_OPERATION_NOT_INITIALIZED);

    // raw mechanism form [type, iv]
    expect(await e.raw('C_EncryptInit', [sn, [CKM_AES_CBC_PAD, IV], h2n(key)])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_EncryptUpdate', [sn, DATA40, null])).toMatchObject({ rv: CKR_OK });
    const u = await e.raw('C_EncryptUpdate', [sn, DATA40, 64]);
    expect(u).toEqual({ rv: CKR_OK, results: [expected.subarray(0, 32)] });
    const fq = await e.raw('C_EncryptFinal', [sn, null]);
    expect(fq.rv).toBe(CKR_OK);
    expect(fq.results![0]).toBeGreaterThanOrEqual(16);
    expect(await e.raw('C_EncryptFinal', [sn, 0])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [16] });
    expect(await e.raw('C_EncryptFinal', [sn, 16])).toEqual({ rv: CKR_OK, results: [expected.subarray(32)] });

    expect(await e.raw('C_DecryptInit', [sn, [CKM_AES_CBC_PAD, IV], h2n(key)])).toEqual({ rv: CKR_OK, results: [] });
    const dq = await e.raw('C_Decrypt', [sn, expected, null]);
    expect(dq.rv).toBe(CKR_OK);
    expect(dq.results![0]).toBeGreaterThanOrEqual(40);
    const small = await e.raw('C_Decrypt', [sn, expected, 8]);
    expect(small.rv).toBe(CKR_BUFFER_TOO_SMALL);
    expect(await e.raw('C_Decrypt', [sn, expected, 48])).toEqual({ rv: CKR_OK, results: [DATA40] });

    expect(await e.raw('C_DecryptInit', [sn, [CKM_AES_ECB], h2n(key)])).toEqual({ rv: CKR_OK, results: [] });
    const ecb = nodeCipher('aes-256-ecb', AES_KEY, null, DATA32);
    expect(await e.raw('C_DecryptUpdate', [sn, ecb, 32])).toEqual({ rv: CKR_OK, results: [DATA32] });
    expect(await e.raw('C_DecryptFinal', [sn, null])).toEqual({ rv: CKR_OK, results: [0] });
    expect(await e.raw('C_DecryptFinal', [sn, 16])).toEqual({ rv: CKR_OK, results: [Buffer.alloc(0)] });
  });

  it('C_DigestInit / C_Digest / C_DigestUpdate / C_DigestKey / C_DigestFinal (SHA-256)', async () => {
    const sha = (...b: Buffer[]) => crypto.createHash('sha256').update(Buffer.concat(b)).digest();
    await e.b('C_DigestInit', s, { mechanism: CKM_SHA256 });
    const d: Buffer = await e.b('C_Digest', s, DATA40, Buffer.alloc(32));
    expect(d).toEqual(sha(DATA40));
    e.p.C_DigestInit(ds, { mechanism: CKM_SHA256 });
    expect(d).toEqual(e.p.C_Digest(ds, DATA40, Buffer.alloc(32)));

    await e.b('C_DigestInit', s, { mechanism: CKM_SHA256 });
    await e.b('C_DigestUpdate', s, DATA40.subarray(0, 10));
    await e.b('C_DigestUpdate', s, DATA40.subarray(10));
    expect(await e.b('C_DigestFinal', s, Buffer.alloc(32))).toEqual(sha(DATA40));

    // C_DigestKey digests the key's value
    await e.b('C_DigestInit', s, { mechanism: CKM_SHA256 });
    await e.b('C_DigestUpdate', s, DATA32);
    await e.b('C_DigestKey', s, key);
    const dk: Buffer = await e.b('C_DigestFinal', s, Buffer.alloc(32));
    e.p.C_DigestInit(ds, { mechanism: CKM_SHA256 });
    e.p.C_DigestUpdate(ds, DATA32);
    e.p.C_DigestKey(ds, dkey);
    expect(dk).toEqual(e.p.C_DigestFinal(ds, Buffer.alloc(32)));
    expect(dk).toEqual(sha(DATA32, AES_KEY));

    // raw length semantics
    const sn = h2n(s);
    expect(await e.raw('C_DigestInit', [sn, [CKM_SHA256]])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_Digest', [sn, DATA32, null])).toEqual({ rv: CKR_OK, results: [32] });
    expect(await e.raw('C_Digest', [sn, DATA32, 31])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [32] });
    expect(await e.raw('C_Digest', [sn, DATA32, 64])).toEqual({ rv: CKR_OK, results: [sha(DATA32)] });
    expect(await e.raw('C_DigestInit', [sn, [CKM_SHA256]])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_DigestUpdate', [sn, DATA32])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_DigestFinal', [sn, null])).toEqual({ rv: CKR_OK, results: [32] });
    expect(await e.raw('C_DigestFinal', [sn, 1])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [32] });
    expect(await e.raw('C_DigestFinal', [sn, 32])).toEqual({ rv: CKR_OK, results: [sha(DATA32)] });
    // not initialized: same code as the module
    expect((await e.raw('C_DigestFinal', [sn, 32])).rv).toBe(drv(() => e.p.C_DigestFinal(ds, Buffer.alloc(32))));
  });

  it('HMAC-SHA256: C_Sign*/C_Verify* single and multi-part, as node:crypto and the module', async () => {
    const hk: Handle = await e.b('C_CreateObject', s, hmacKey(HMAC_KEY, READABLE));
    const dhk = e.p.C_CreateObject(ds, hmacKey(HMAC_KEY, READABLE));
    const expected = crypto.createHmac('sha256', HMAC_KEY).update(DATA40).digest();
    const m = { mechanism: CKM_SHA256_HMAC };

    await e.b('C_SignInit', s, m, hk);
    expect(await e.b('C_Sign', s, DATA40, Buffer.alloc(64))).toEqual(expected);
    e.p.C_SignInit(ds, m, dhk);
    expect(e.p.C_Sign(ds, DATA40, Buffer.alloc(64))).toEqual(expected);

    await e.b('C_SignInit', s, m, hk);
    await e.b('C_SignUpdate', s, DATA40.subarray(0, 5));
    await e.b('C_SignUpdate', s, DATA40.subarray(5));
    expect(await e.b('C_SignFinal', s, Buffer.alloc(64))).toEqual(expected);

    await e.b('C_VerifyInit', s, m, hk);
    expect(await e.b('C_Verify', s, DATA40, expected)).toBe(true);
    await e.b('C_VerifyInit', s, m, hk);
    await e.b('C_VerifyUpdate', s, DATA40.subarray(0, 33));
    await e.b('C_VerifyUpdate', s, DATA40.subarray(33));
    expect(await e.b('C_VerifyFinal', s, expected)).toBe(true);

    // a wrong MAC: the module's code
    const bad = Buffer.from(expected);
    bad[0] ^= 1;
    e.p.C_VerifyInit(ds, m, dhk);
    const dBad = drv(() => e.p.C_Verify(ds, DATA40, bad));
    expect(dBad).toBe(CKR_SIGNATURE_INVALID);
    await e.b('C_VerifyInit', s, m, hk);
    expect(await brv(e.b('C_Verify', s, DATA40, bad))).toBe(dBad);
    await e.b('C_VerifyInit', s, m, hk);
    await e.b('C_VerifyUpdate', s, DATA40);
    expect(await e.raw('C_VerifyFinal', [h2n(s), bad])).toEqual({ rv: CKR_SIGNATURE_INVALID });

    // raw C_Sign length semantics: the operation stays active
    const sn = h2n(s);
    await e.b('C_SignInit', s, m, hk);
    expect(await e.raw('C_Sign', [sn, DATA40, null])).toEqual({ rv: CKR_OK, results: [32] });
    expect(await e.raw('C_Sign', [sn, DATA40, 31])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [32] });
    expect(await e.raw('C_Sign', [sn, DATA40, 32])).toEqual({ rv: CKR_OK, results: [expected] });
    await e.b('C_SignInit', s, m, hk);
    expect(await e.raw('C_SignUpdate', [sn, DATA40])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_SignFinal', [sn, null])).toEqual({ rv: CKR_OK, results: [32] });
    expect(await e.raw('C_SignFinal', [sn, 2])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [32] });
    expect(await e.raw('C_SignFinal', [sn, 32])).toEqual({ rv: CKR_OK, results: [expected] });
    e.p.C_DestroyObject(ds, dhk);
  });

  it('C_WrapKey / C_UnwrapKey: AES key wrap (RFC 3394) and AES-CBC-PAD', async () => {
    const inner = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
    const target: Handle = await e.b('C_CreateObject', s, aesKey(inner, ANY_USE));
    const dtarget = e.p.C_CreateObject(ds, aesKey(inner, ANY_USE));
    const unwrapT = newSecretKey(CKK_AES, { uses: ['encrypt'], ...READABLE, label: 'unwrapped' });

    // RFC 3394
    const kw = nodeCipher('id-aes256-wrap', AES_KEY, Buffer.from('a6a6a6a6a6a6a6a6', 'hex'), inner);
    const wrapped: Buffer = await e.b('C_WrapKey', s, { mechanism: CKM_AES_KEY_WRAP }, key, target, Buffer.alloc(64));
    expect(wrapped).toEqual(kw);
    expect(wrapped).toEqual(e.p.C_WrapKey(ds, { mechanism: CKM_AES_KEY_WRAP }, dkey, dtarget, Buffer.alloc(64)));
    const sn = h2n(s);
    expect(await e.raw('C_WrapKey', [sn, [CKM_AES_KEY_WRAP], h2n(key), h2n(target), null])).toEqual({ rv: CKR_OK, results: [24] });
    expect(await e.raw('C_WrapKey', [sn, [CKM_AES_KEY_WRAP], h2n(key), h2n(target), 8])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [24] });
    expect(await e.raw('C_WrapKey', [sn, [CKM_AES_KEY_WRAP], h2n(key), h2n(target), 24])).toEqual({ rv: CKR_OK, results: [kw] });

    const u: Handle = await e.b('C_UnwrapKey', s, { mechanism: CKM_AES_KEY_WRAP }, key, kw, unwrapT);
    expect((await e.raw('C_GetAttributeValue', [sn, h2n(u), [[CKA_VALUE, true], [CKA_LABEL, true]]])).results).toEqual([[inner, Buffer.from('unwrapped')]]);

    // CKM_AES_KEY_WRAP_PAD, 20-byte key: the module's own output (SoftHSM2's
    // padding variant is not node's id-aes256-wrap-pad), and a round trip
    const inner20 = Buffer.from('0123456789abcdef0123', 'utf8');
    const target20: Handle = await e.b('C_CreateObject', s, hmacKey(inner20, READABLE));
    const dtarget20 = e.p.C_CreateObject(ds, hmacKey(inner20, READABLE));
    const kwp = e.p.C_WrapKey(ds, { mechanism: CKM_AES_KEY_WRAP_PAD }, dkey, dtarget20, Buffer.alloc(64));
    const wrapped2: Buffer = await e.b('C_WrapKey', s, { mechanism: CKM_AES_KEY_WRAP_PAD }, key, target20, Buffer.alloc(64));
    expect(wrapped2).toEqual(kwp);
    const unwrap20 = newSecretKey(CKK_GENERIC_SECRET, READABLE);
    const u2: Handle = await e.b('C_UnwrapKey', s, { mechanism: CKM_AES_KEY_WRAP_PAD }, key, kwp, unwrap20);
    const du2 = e.p.C_UnwrapKey(ds, { mechanism: CKM_AES_KEY_WRAP_PAD }, dkey, kwp, unwrap20);
    const unwrapped20 = ((await e.raw('C_GetAttributeValue', [sn, h2n(u2), [[CKA_VALUE, true]]])).results![0] as Buffer[])[0]!;
    expect(unwrapped20).toEqual(e.p.C_GetAttributeValue(ds, du2, [{ type: CKA_VALUE }])[0]!.value);
    expect(unwrapped20.subarray(0, 20)).toEqual(inner20);

    // AES-CBC-PAD as a wrapping mechanism: whatever the module answers (SoftHSM2 2.6: not for wrapping)
    const cbc = nodeCipher('aes-256-cbc', AES_KEY, IV, inner, true);
    const dWrapCbc = drv(() => e.p.C_WrapKey(ds, { mechanism: CKM_AES_CBC_PAD, parameter: IV }, dkey, dtarget, Buffer.alloc(64)));
    const bWrapCbc = await e.b('C_WrapKey', s, { mechanism: CKM_AES_CBC_PAD, parameter: IV }, key, target, Buffer.alloc(64)).then(
      (w: Buffer) => (expect(w).toEqual(cbc), CKR_OK),
      (err: { code: number }) => err.code,
    );
    expect(bWrapCbc).toBe(dWrapCbc);
    expect(await brv(e.b('C_UnwrapKey', s, { mechanism: CKM_AES_CBC_PAD, parameter: IV }, key, cbc, unwrapT))).toBe(
      drv(() => e.p.C_UnwrapKey(ds, { mechanism: CKM_AES_CBC_PAD, parameter: IV }, dkey, cbc, unwrapT)),
    );

    // a corrupted wrapped key: the module's code
    const badKw = Buffer.from(kw);
    badKw[3] ^= 0xff;
    const dcode = drv(() => e.p.C_UnwrapKey(ds, { mechanism: CKM_AES_KEY_WRAP }, dkey, badKw, unwrapT));
    expect(dcode).not.toBe(CKR_OK);
    expect(await brv(e.b('C_UnwrapKey', s, { mechanism: CKM_AES_KEY_WRAP }, key, badKw, unwrapT))).toBe(dcode);
  });

  it('C_DeriveKey: AES-ECB/CBC ENCRYPT_DATA, as node:crypto and the module', async () => {
    const data = Buffer.from('derivation data, 32 bytes long!!');
    const deriveT = newSecretKey(CKK_AES, { valueLen: 32, ...READABLE });
    const valueOf = async (h: Handle) => ((await e.raw('C_GetAttributeValue', [h2n(s), h2n(h), [[CKA_VALUE, true]]])).results![0] as Buffer[])[0];

    const k1: Handle = await e.b('C_DeriveKey', s, { mechanism: CKM_AES_ECB_ENCRYPT_DATA, parameter: { data } }, key, deriveT);
    expect(await valueOf(k1)).toEqual(nodeCipher('aes-256-ecb', AES_KEY, null, data));

    const k2: Handle = await e.b('C_DeriveKey', s, { mechanism: CKM_AES_CBC_ENCRYPT_DATA, parameter: { iv: IV, data } }, key, deriveT);
    expect(await valueOf(k2)).toEqual(nodeCipher('aes-256-cbc', AES_KEY, IV, data));
    const dk2 = e.p.C_DeriveKey(ds, { mechanism: CKM_AES_CBC_ENCRYPT_DATA, parameter: { type: pkcs11js.CK_PARAMS_AES_CBC, iv: IV, data } as pkcs11js.AesCBC }, dkey, deriveT);
    expect(await valueOf(k2)).toEqual(e.p.C_GetAttributeValue(ds, dk2, [{ type: CKA_VALUE }])[0]!.value);

    // raw: [type, [data]]
    const r = await e.raw('C_DeriveKey', [h2n(s), [CKM_AES_ECB_ENCRYPT_DATA, [data]], h2n(key), wire(deriveT)]);
    expect(r.rv).toBe(CKR_OK);
    expect(await valueOf(n2h(r.results![0] as number))).toEqual(nodeCipher('aes-256-ecb', AES_KEY, null, data));
  });
});

describe('asymmetric crypto: RSA and EC', () => {
  const e = useEnv('calls-asym');
  let s: Handle;
  let ds: Handle;
  let rsaPub: Handle;
  let rsaPriv: Handle;
  let nodeRsaPub: crypto.KeyObject;
  const findDirect = (label: string, cls: number): Handle => {
    e.p.C_FindObjectsInit(ds, [{ type: CKA_LABEL, value: label }, { type: CKA_CLASS, value: cls }]);
    const hs = e.p.C_FindObjects(ds, 10);
    e.p.C_FindObjectsFinal(ds);
    expect(hs.length).toBe(1);
    return hs[0]!;
  };

  beforeAll(async () => {
    ({ s, ds } = await userSessions(e));
    const kp = await e.b('C_GenerateKeyPair', s, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, ...rsaKeyPair({
      token: true, label: 'rsa-bridge', id: Buffer.from([1, 2, 3]), publicUses: ['verify', 'encrypt'],
      private: true, privateUses: ['sign', 'decrypt'], sensitive: true, extractable: false,
    }));
    rsaPub = kp.publicKey;
    rsaPriv = kp.privateKey;
    const [n, ex] = (await e.b('C_GetAttributeValue', s, rsaPub, [{ type: CKA_MODULUS }, { type: CKA_PUBLIC_EXPONENT }])).map(
      (a: { value: Buffer }) => a.value,
    );
    nodeRsaPub = crypto.createPublicKey({ key: { kty: 'RSA', n: b64u(n), e: b64u(ex) }, format: 'jwk' });
  }, 60_000);

  it('C_GenerateKeyPair RSA-2048: the key pair as the module sees it', async () => {
    const q = () => [{ type: CKA_MODULUS }, { type: CKA_PUBLIC_EXPONENT }, { type: CKA_MODULUS_BITS }, { type: CKA_KEY_TYPE }, { type: CKA_TOKEN }, { type: CKA_LABEL }, { type: CKA_ID }];
    const bridge = await e.b('C_GetAttributeValue', s, rsaPub, q());
    expect(bridge).toEqual(e.p.C_GetAttributeValue(ds, findDirect('rsa-bridge', CKO_PUBLIC_KEY), q()));
    expect(bridge[0].value.length).toBe(256);
    expect(bridge[3].value.readBigUInt64LE(0)).toBe(BigInt(CKK_RSA));
    const raw = await e.raw('C_GetAttributeValue', [h2n(s), h2n(rsaPriv), [[CKA_MODULUS, false], [CKA_LABEL, false], [CKA_SENSITIVE, true], [CKA_CLASS, true]]]);
    expect(raw).toEqual({ rv: CKR_OK, results: [[256, 10, true, CKO_PRIVATE_KEY]] });
    expect.soft(await e.b('C_GetObjectSize', s, rsaPriv)).toBe(e.p.C_GetObjectSize(ds, findDirect('rsa-bridge', CKO_PRIVATE_KEY)));
  });

  it('RSA PKCS#1 v1.5 (SHA256_RSA_PKCS): single and multi-part, verified by node:crypto, equal to the module\'s signature', async () => {
    const m = { mechanism: CKM_SHA256_RSA_PKCS };
    await e.b('C_SignInit', s, m, rsaPriv);
    const sig: Buffer = await e.b('C_Sign', s, DATA40, Buffer.alloc(256));
    expect(sig.length).toBe(256);
    expect(crypto.verify('sha256', DATA40, nodeRsaPub, sig)).toBe(true);

    const dpriv = findDirect('rsa-bridge', CKO_PRIVATE_KEY);
    e.p.C_SignInit(ds, m, dpriv);
    expect(sig).toEqual(e.p.C_Sign(ds, DATA40, Buffer.alloc(256)));

    await e.b('C_SignInit', s, m, rsaPriv);
    await e.b('C_SignUpdate', s, DATA40.subarray(0, 7));
    await e.b('C_SignUpdate', s, DATA40.subarray(7));
    expect(await e.b('C_SignFinal', s, Buffer.alloc(256))).toEqual(sig);

    await e.b('C_VerifyInit', s, m, rsaPub);
    expect(await e.b('C_Verify', s, DATA40, sig)).toBe(true);
    await e.b('C_VerifyInit', s, m, rsaPub);
    await e.b('C_VerifyUpdate', s, DATA40.subarray(0, 1));
    await e.b('C_VerifyUpdate', s, DATA40.subarray(1));
    expect(await e.b('C_VerifyFinal', s, sig)).toBe(true);

    // raw: NULL-buffer length query, too small, then the signature
    const sn = h2n(s);
    expect(await e.raw('C_SignInit', [sn, [CKM_SHA256_RSA_PKCS], h2n(rsaPriv)])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_Sign', [sn, DATA40, null])).toEqual({ rv: CKR_OK, results: [256] });
    expect(await e.raw('C_Sign', [sn, DATA40, 100])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [256] });
    expect(await e.raw('C_Sign', [sn, DATA40, 256])).toEqual({ rv: CKR_OK, results: [sig] });
    expect(await e.raw('C_VerifyInit', [sn, [CKM_SHA256_RSA_PKCS], h2n(rsaPub)])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_Verify', [sn, DATA40, sig])).toEqual({ rv: CKR_OK, results: [] });

    // a bad signature: the module's code
    const bad = Buffer.from(sig);
    bad[10] ^= 0x40;
    e.p.C_VerifyInit(ds, m, findDirect('rsa-bridge', CKO_PUBLIC_KEY));
    const d = drv(() => e.p.C_Verify(ds, DATA40, bad));
    expect(d).toBe(CKR_SIGNATURE_INVALID);
    await e.b('C_VerifyInit', s, m, rsaPub);
    expect(await brv(e.b('C_Verify', s, DATA40, bad))).toBe(d);
  });

  it('RSA-PSS (struct parameter): verified by node:crypto and by C_Verify', async () => {
    const m = { mechanism: CKM_SHA256_RSA_PKCS_PSS, parameter: { hashAlg: CKM_SHA256, mgf: CKG_MGF1_SHA256, saltLen: 32 } };
    await e.b('C_SignInit', s, m, rsaPriv);
    const sig: Buffer = await e.b('C_Sign', s, DATA40, Buffer.alloc(256));
    expect(
      crypto.verify('sha256', DATA40, { key: nodeRsaPub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, sig),
    ).toBe(true);
    await e.b('C_VerifyInit', s, m, rsaPub);
    expect(await e.b('C_Verify', s, DATA40, sig)).toBe(true);
    // the module's own PSS signature verifies through the bridge
    e.p.C_SignInit(ds, { mechanism: CKM_SHA256_RSA_PKCS_PSS, parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: CKM_SHA256, mgf: CKG_MGF1_SHA256, saltLen: 32 } as pkcs11js.RsaPSS }, findDirect('rsa-bridge', CKO_PRIVATE_KEY));
    const dsig = e.p.C_Sign(ds, DATA40, Buffer.alloc(256));
    await e.b('C_VerifyInit', s, m, rsaPub);
    expect(await e.b('C_Verify', s, DATA40, dsig)).toBe(true);
  });

  it('RSA-OAEP (struct parameter) and RSA PKCS#1 v1.5 encryption', async () => {
    // SoftHSM2 2.6 does OAEP with SHA-1 only; with SHA-256 its answer must pass through unchanged.
    const m256 = { mechanism: CKM_RSA_PKCS_OAEP, parameter: { hashAlg: CKM_SHA256, mgf: CKG_MGF1_SHA256, source: CKZ_DATA_SPECIFIED } };
    const dm256 = { mechanism: CKM_RSA_PKCS_OAEP, parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: CKM_SHA256, mgf: CKG_MGF1_SHA256, source: CKZ_DATA_SPECIFIED } as pkcs11js.RsaOAEP };
    expect(await brv(e.b('C_EncryptInit', s, m256, rsaPub))).toBe(drv(() => e.p.C_EncryptInit(ds, dm256, findDirect('rsa-bridge', CKO_PUBLIC_KEY))));

    const m = { mechanism: CKM_RSA_PKCS_OAEP, parameter: { hashAlg: CKM_SHA_1, mgf: CKG_MGF1_SHA1, source: CKZ_DATA_SPECIFIED } };
    const ct = crypto.publicEncrypt({ key: nodeRsaPub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, DATA40);
    await e.b('C_DecryptInit', s, m, rsaPriv);
    expect(await e.b('C_Decrypt', s, ct, Buffer.alloc(256))).toEqual(DATA40);

    await e.b('C_EncryptInit', s, m, rsaPub);
    const bct: Buffer = await e.b('C_Encrypt', s, DATA32, Buffer.alloc(256));
    expect(bct.length).toBe(256);
    const dm = { mechanism: CKM_RSA_PKCS_OAEP, parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: CKM_SHA_1, mgf: CKG_MGF1_SHA1, source: CKZ_DATA_SPECIFIED } as pkcs11js.RsaOAEP };
    e.p.C_DecryptInit(ds, dm, findDirect('rsa-bridge', CKO_PRIVATE_KEY));
    expect(e.p.C_Decrypt(ds, bct, Buffer.alloc(256))).toEqual(DATA32);

    // PKCS#1 v1.5: node encrypts, the bridge decrypts; raw length semantics on C_Decrypt
    const ct15 = crypto.publicEncrypt({ key: nodeRsaPub, padding: crypto.constants.RSA_PKCS1_PADDING }, DATA32);
    const sn = h2n(s);
    expect(await e.raw('C_DecryptInit', [sn, [CKM_RSA_PKCS], h2n(rsaPriv)])).toEqual({ rv: CKR_OK, results: [] });
    const q = await e.raw('C_Decrypt', [sn, ct15, null]);
    expect(q.rv).toBe(CKR_OK);
    expect(q.results![0]).toBeGreaterThanOrEqual(32);
    expect(await e.raw('C_Decrypt', [sn, ct15, 256])).toEqual({ rv: CKR_OK, results: [DATA32] });
  });

  const ecCases = [
    { curve: 'P-256', oid: P256, nodeCurve: 'prime256v1', size: 32, hash: 'sha256' },
    { curve: 'P-384', oid: P384, nodeCurve: 'secp384r1', size: 48, hash: 'sha384' },
  ];
  for (const c of ecCases) {
    it(`EC ${c.curve}: C_GenerateKeyPair, ECDSA verified by node:crypto, ECDH1 derive equal to node:crypto and the module`, async () => {
      const label = `ec-${c.curve}`;
      const kp = await e.b('C_GenerateKeyPair', s, { mechanism: CKM_EC_KEY_PAIR_GEN },
        ...ecKeyPair({ params: c.oid, token: true, label, private: true, privateUses: ['sign', 'derive'], sensitive: true }));
      const q = () => [{ type: CKA_EC_PARAMS }, { type: CKA_EC_POINT }, { type: CKA_KEY_TYPE }, { type: CKA_LABEL }];
      const attrs = await e.b('C_GetAttributeValue', s, kp.publicKey, q());
      expect(attrs).toEqual(e.p.C_GetAttributeValue(ds, findDirect(label, CKO_PUBLIC_KEY), q()));
      expect(attrs[0].value).toEqual(c.oid);
      expect(attrs[2].value.readBigUInt64LE(0)).toBe(BigInt(CKK_EC));
      const der: Buffer = attrs[1].value; // DER OCTET STRING holding 04 || X || Y
      const point = der.subarray(der.length - (1 + 2 * c.size));
      expect(point[0]).toBe(4);
      const nodePub = crypto.createPublicKey({
        key: { kty: 'EC', crv: c.curve, x: b64u(point.subarray(1, 1 + c.size)), y: b64u(point.subarray(1 + c.size)) },
        format: 'jwk',
      });

      // ECDSA over a hash: r || s, checked by node
      const hash = crypto.createHash(c.hash).update(DATA40).digest();
      await e.b('C_SignInit', s, { mechanism: CKM_ECDSA }, kp.privateKey);
      const sig: Buffer = await e.b('C_Sign', s, hash, Buffer.alloc(2 * c.size + 8));
      expect(sig.length).toBe(2 * c.size);
      expect(crypto.verify(c.hash, DATA40, { key: nodePub, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
      await e.b('C_VerifyInit', s, { mechanism: CKM_ECDSA }, kp.publicKey);
      expect(await e.b('C_Verify', s, hash, sig)).toBe(true);
      const sn = h2n(s);
      expect(await e.raw('C_SignInit', [sn, [CKM_ECDSA], h2n(kp.privateKey)])).toEqual({ rv: CKR_OK, results: [] });
      expect(await e.raw('C_Sign', [sn, hash, null])).toEqual({ rv: CKR_OK, results: [2 * c.size] });
      expect(await e.raw('C_Sign', [sn, hash, 2])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [2 * c.size] });
      const rs = await e.raw('C_Sign', [sn, hash, 2 * c.size]);
      expect(rs.rv).toBe(CKR_OK);
      expect(crypto.verify(c.hash, DATA40, { key: nodePub, dsaEncoding: 'ieee-p1363' }, rs.results![0] as Buffer)).toBe(true);

      // ECDH1 with CKD_NULL against a node key pair
      const peer = crypto.createECDH(c.nodeCurve);
      peer.generateKeys();
      const secret = peer.computeSecret(point);
      const deriveT = newSecretKey(CKK_GENERIC_SECRET, { valueLen: c.size, ...READABLE });
      const derived: Handle = await e.b(
        'C_DeriveKey',
        s,
        { mechanism: CKM_ECDH1_DERIVE, parameter: { kdf: CKD_NULL, publicData: peer.getPublicKey() } },
        kp.privateKey,
        deriveT,
      );
      const [value] = (await e.b('C_GetAttributeValue', s, derived, [{ type: CKA_VALUE }])).map((a: { value: Buffer }) => a.value);
      expect(value).toEqual(secret);
      const dd = e.p.C_DeriveKey(
        ds,
        { mechanism: CKM_ECDH1_DERIVE, parameter: { type: pkcs11js.CK_PARAMS_EC_DH, kdf: CKD_NULL, publicData: peer.getPublicKey() } as pkcs11js.ECDH1 },
        findDirect(label, CKO_PRIVATE_KEY),
        deriveT,
      );
      expect(value).toEqual(e.p.C_GetAttributeValue(ds, dd, [{ type: CKA_VALUE }])[0]!.value);
    });
  }
});

describe('functions SoftHSM2 does not implement: the module\'s answer passes through unchanged', () => {
  const e = useEnv('calls-unsupported');
  let s: Handle;
  let ds: Handle;
  let key: Handle;
  let dkey: Handle;
  let rsaPriv: Handle;
  let rsaPub: Handle;
  let drsaPriv: Handle;
  let drsaPub: Handle;

  /** The rv and results of a pkcs11js call, for comparison with a raw bridge answer. */
  const direct = (f: () => unknown): { rv: number; value?: unknown } => {
    try {
      return { rv: CKR_OK, value: f() };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code !== 'number') throw err;
      return { rv: code };
    }
  };

  beforeAll(async () => {
    ({ s, ds } = await userSessions(e));
    key = await e.b('C_CreateObject', s, aesKey(AES_KEY, ANY_USE));
    dkey = e.p.C_CreateObject(ds, aesKey(AES_KEY, ANY_USE));
    const pair = rsaKeyPair({ bits: 1024, publicUses: ['verify', 'verifyRecover'], privateUses: ['sign', 'signRecover'] });
    ({ publicKey: rsaPub, privateKey: rsaPriv } = await e.b('C_GenerateKeyPair', s, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, ...pair));
    ({ publicKey: drsaPub, privateKey: drsaPriv } = e.p.C_GenerateKeyPair(ds, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, ...pair));
  }, 60_000);

  it('C_GetOperationState / C_SetOperationState', async () => {
    const sn = h2n(s);
    // with an active digest, as an application would
    await e.b('C_DigestInit', s, { mechanism: CKM_SHA256 });
    e.p.C_DigestInit(ds, { mechanism: CKM_SHA256 });
    const d = direct(() => (e.p as unknown as OpStateApi).C_GetOperationState(ds));
    const r = await e.raw('C_GetOperationState', [sn, null]);
    expect(r.rv).toBe(d.rv);
    if (d.rv === CKR_OK) expect(r.results).toEqual([(d.value as Buffer).length]);
    expect(await brv(e.b('C_GetOperationState', s))).toBe(d.rv);
    expect((await e.raw('C_GetOperationState', [sn, 1024])).rv).toBe(d.rv);
    await e.b('C_DigestFinal', s, Buffer.alloc(32));
    e.p.C_DigestFinal(ds, Buffer.alloc(32));

    const state = Buffer.from('not a saved state');
    const ds2 = direct(() => (e.p as unknown as OpStateApi).C_SetOperationState(ds, state, n2h(0), n2h(0)));
    expect(await e.raw('C_SetOperationState', [sn, state, 0, 0])).toEqual(ds2.rv === CKR_OK ? { rv: CKR_OK, results: [] } : { rv: ds2.rv });
    expect(await brv(e.b('C_SetOperationState', s, state, n2h(0), n2h(0)))).toBe(ds2.rv);
    const ds3 = direct(() => (e.p as unknown as OpStateApi).C_SetOperationState(ds, state, dkey, n2h(0)));
    expect((await e.raw('C_SetOperationState', [sn, state, h2n(key), 0])).rv).toBe(ds3.rv);
  });

  it('C_SignRecoverInit / C_SignRecover / C_VerifyRecoverInit / C_VerifyRecover', async () => {
    const sn = h2n(s);
    const m = { mechanism: CKM_RSA_PKCS };
    const di = direct(() => e.p.C_SignRecoverInit(ds, m, drsaPriv));
    expect(await e.raw('C_SignRecoverInit', [sn, [CKM_RSA_PKCS], h2n(rsaPriv)])).toEqual(di.rv === CKR_OK ? { rv: CKR_OK, results: [] } : { rv: di.rv });
    const dr = direct(() => e.p.C_SignRecover(ds, DATA32, Buffer.alloc(128)));
    const br = await e.raw('C_SignRecover', [sn, DATA32, 128]);
    expect(br.rv).toBe(dr.rv);
    if (dr.rv === CKR_OK) expect(br.results).toEqual([dr.value]);
    // pkcs11js-shaped, too
    expect(await brv(e.b('C_SignRecoverInit', s, m, rsaPriv))).toBe(direct(() => e.p.C_SignRecoverInit(ds, m, drsaPriv)).rv);
    expect(await brv(e.b('C_SignRecover', s, DATA32, Buffer.alloc(128)))).toBe(direct(() => e.p.C_SignRecover(ds, DATA32, Buffer.alloc(128))).rv);

    const sig = Buffer.alloc(128, 1);
    const vi = direct(() => e.p.C_VerifyRecoverInit(ds, m, drsaPub));
    expect(await e.raw('C_VerifyRecoverInit', [sn, [CKM_RSA_PKCS], h2n(rsaPub)])).toEqual(vi.rv === CKR_OK ? { rv: CKR_OK, results: [] } : { rv: vi.rv });
    const vr = direct(() => e.p.C_VerifyRecover(ds, sig, Buffer.alloc(128)));
    const bvr = await e.raw('C_VerifyRecover', [sn, sig, 128]);
    expect(bvr.rv).toBe(vr.rv);
    expect(await brv(e.b('C_VerifyRecoverInit', s, m, rsaPub))).toBe(direct(() => e.p.C_VerifyRecoverInit(ds, m, drsaPub)).rv);
    expect(await brv(e.b('C_VerifyRecover', s, sig, Buffer.alloc(128)))).toBe(direct(() => e.p.C_VerifyRecover(ds, sig, Buffer.alloc(128))).rv);
  });

  it('the dual-function updates: C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate, C_DecryptVerifyUpdate', async () => {
    const sn = h2n(s);
    const fns = ['C_DigestEncryptUpdate', 'C_DecryptDigestUpdate', 'C_SignEncryptUpdate', 'C_DecryptVerifyUpdate'] as const;
    // no operation active
    for (const name of fns) {
      const d = direct(() => (e.p[name] as (s: Buffer, a: Buffer, b: Buffer) => Buffer)(ds, DATA32, Buffer.alloc(64)));
      const r = await e.raw(name, [sn, DATA32, 64]);
      expect({ name, rv: r.rv }).toEqual({ name, rv: d.rv });
      if (d.rv === CKR_OK) expect(r.results).toEqual([d.value]);
      expect({ name, rv: await brv(e.b(name, s, DATA32, Buffer.alloc(64))) }).toEqual({ name, rv: d.rv });
      expect({ name, rv: (await e.raw(name, [sn, DATA32, null])).rv }).toEqual({ name, rv: d.rv });
    }
    // with an encryption active (what C_DigestEncryptUpdate needs besides a digest)
    await e.b('C_EncryptInit', s, { mechanism: CKM_AES_ECB }, key);
    e.p.C_EncryptInit(ds, { mechanism: CKM_AES_ECB }, dkey);
    for (const name of fns) {
      const d = direct(() => (e.p[name] as (s: Buffer, a: Buffer, b: Buffer) => Buffer)(ds, DATA32, Buffer.alloc(64)));
      const r = await e.raw(name, [sn, DATA32, 64]);
      expect({ name, rv: r.rv }).toEqual({ name, rv: d.rv });
    }
  });

  it('on an invalid session the module itself answers (proving the calls reach it)', async () => {
    const bogus = 0x7ffff00d;
    const hb = n2h(bogus);
    const wire: Record<string, [unknown[], () => unknown]> = {
      C_GetOperationState: [[bogus, null], () => (e.p as unknown as OpStateApi).C_GetOperationState(hb)],
      C_SetOperationState: [[bogus, Buffer.from('x'), 0, 0], () => (e.p as unknown as OpStateApi).C_SetOperationState(hb, Buffer.from('x'), n2h(0), n2h(0))],
      C_SignRecoverInit: [[bogus, [CKM_RSA_PKCS], h2n(rsaPriv)], () => e.p.C_SignRecoverInit(hb, { mechanism: CKM_RSA_PKCS }, drsaPriv)],
      C_SignRecover: [[bogus, DATA32, 128], () => e.p.C_SignRecover(hb, DATA32, Buffer.alloc(128))],
      C_VerifyRecoverInit: [[bogus, [CKM_RSA_PKCS], h2n(rsaPub)], () => e.p.C_VerifyRecoverInit(hb, { mechanism: CKM_RSA_PKCS }, drsaPub)],
      C_VerifyRecover: [[bogus, DATA32, 128], () => e.p.C_VerifyRecover(hb, DATA32, Buffer.alloc(128))],
      C_DigestEncryptUpdate: [[bogus, DATA32, 64], () => e.p.C_DigestEncryptUpdate(hb, DATA32, Buffer.alloc(64))],
      C_DecryptDigestUpdate: [[bogus, DATA32, 64], () => e.p.C_DecryptDigestUpdate(hb, DATA32, Buffer.alloc(64))],
      C_SignEncryptUpdate: [[bogus, DATA32, 64], () => e.p.C_SignEncryptUpdate(hb, DATA32, Buffer.alloc(64))],
      C_DecryptVerifyUpdate: [[bogus, DATA32, 64], () => e.p.C_DecryptVerifyUpdate(hb, DATA32, Buffer.alloc(64))],
      C_SeedRandom: [[bogus, Buffer.from('seed')], () => e.p.C_SeedRandom(hb, Buffer.from('seed'))],
      C_DigestKey: [[bogus, h2n(key)], () => e.p.C_DigestKey(hb, dkey)],
    };
    const got: Record<string, number> = {};
    const want: Record<string, number> = {};
    for (const [name, [args, d]] of Object.entries(wire)) {
      got[name] = (await e.raw(name, args)).rv;
      want[name] = drv(d);
    }
    expect(got).toEqual(want);
  });

  it('C_DigestKey, C_SeedRandom and errors on a closed session: same codes as the module', async () => {
    const s2: Handle = await e.b('C_OpenSession', e.slot, RW_SESSION);
    const ds2 = e.p.C_OpenSession(e.slot, RW_SESSION);
    await e.b('C_CloseSession', s2);
    e.p.C_CloseSession(ds2);
    expect(await brv(e.b('C_DigestInit', s2, { mechanism: CKM_SHA256 }))).toBe(drv(() => e.p.C_DigestInit(ds2, { mechanism: CKM_SHA256 })));
    expect(await brv(e.b('C_DigestKey', s2, key))).toBe(drv(() => e.p.C_DigestKey(ds2, dkey)));
    expect(await brv(e.b('C_GenerateRandom', s2, Buffer.alloc(8)))).toBe(drv(() => e.p.C_GenerateRandom(ds2, Buffer.alloc(8))));
    // C_DigestKey without a digest operation
    expect(await brv(e.b('C_DigestKey', s, key))).toBe(drv(() => e.p.C_DigestKey(ds, dkey)));
  });
});

describe('token administration: C_InitToken, C_InitPIN, C_SetPIN, C_CloseAllSessions, C_Finalize', () => {
  const e = useEnv('calls-admin');
  const SPARE_LABEL = 'spare-token';
  const SPARE_SO = 'spare-so-1';
  const SPARE_SO2 = 'spare-so-2';
  const USER1 = 'user-pin-1';
  const USER2 = 'user-pin-2';

  it('C_InitToken on SoftHSM2\'s spare slot: the new token appears with its label', async () => {
    const before: Handle[] = await e.b('C_GetSlotList', true);
    const infos = await Promise.all(before.map((sl) => e.b('C_GetTokenInfo', sl)));
    const spareIdx = infos.findIndex((t: { flags: number }) => (t.flags & CKF_TOKEN_INITIALIZED) === 0);
    expect(spareIdx).toBeGreaterThanOrEqual(0);
    const spare = before[spareIdx]!;
    await e.b('C_InitToken', spare, SPARE_SO, SPARE_LABEL);

    const after: Handle[] = await e.b('C_GetSlotList', true);
    const labels = await Promise.all(after.map(async (sl) => (await e.b('C_GetTokenInfo', sl)).label));
    expect(labels).toContain(pad32(SPARE_LABEL));
    expect(labels).toContain(pad32('calls-admin'));

    // the module (re-initialized in this process to rescan the token directory) sees the same
    e.direct.close();
    e.direct = await openDirect(e.token);
    e.p = e.direct.pkcs11;
    // (SoftHSM2 numbers a token initialized in a running process by its old
    // slot, a freshly started one by its serial: compare by label, not slot id)
    const dslots = e.p.C_GetSlotList(true);
    expect(dslots.length).toBe(after.length);
    const dlabels = dslots.map((sl) => e.p.C_GetTokenInfo(sl).label);
    expect(dlabels.sort()).toEqual([...labels].sort());
    const spareNow = after[labels.indexOf(pad32(SPARE_LABEL))]!;
    const dspare = dslots.find((sl) => e.p.C_GetTokenInfo(sl).label === pad32(SPARE_LABEL))!;
    const strip = (t: Record<string, unknown>) => {
      const { utcTime: _u, sessionCount: _s, rwSessionCount: _r, ...rest } = t;
      return rest;
    };
    expect.soft(strip(await e.b('C_GetTokenInfo', spareNow))).toEqual(strip(e.p.C_GetTokenInfo(dspare) as unknown as Record<string, unknown>));

    // a wrong SO PIN on re-initialization: the module's code
    const dcode = drv(() => e.p.C_InitToken(dspare, 'wrong-so', SPARE_LABEL));
    expect(dcode).toBe(CKR_PIN_INCORRECT);
    expect(await brv(e.b('C_InitToken', spareNow, 'wrong-so', SPARE_LABEL))).toBe(dcode);
    // raw: the label is 32 bytes
    expect(await e.raw('C_InitToken', [h2n(spareNow), Buffer.from('wrong-so'), Buffer.from(pad32(SPARE_LABEL))])).toEqual({ rv: CKR_PIN_INCORRECT });
  });

  it('C_InitPIN (as SO) and C_SetPIN (as SO and as user)', async () => {
    const slots: Handle[] = await e.b('C_GetSlotList', true);
    let spare: Handle | undefined;
    for (const sl of slots) if ((await e.b('C_GetTokenInfo', sl)).label === pad32(SPARE_LABEL)) spare = sl;
    expect(spare).toBeDefined();
    const s: Handle = await e.b('C_OpenSession', spare, RW_SESSION);
    // user PIN not initialized yet
    expect((await e.b('C_GetTokenInfo', spare)).flags & CKF_USER_PIN_INITIALIZED).toBe(0);
    await e.b('C_Login', s, CKU_SO, SPARE_SO);
    await e.b('C_InitPIN', s, USER1);
    expect((await e.b('C_GetTokenInfo', spare)).flags & CKF_USER_PIN_INITIALIZED).toBe(CKF_USER_PIN_INITIALIZED);
    await e.b('C_SetPIN', s, SPARE_SO, SPARE_SO2);
    await e.b('C_Logout', s);
    expect(await brv(e.b('C_Login', s, CKU_SO, SPARE_SO))).toBe(CKR_PIN_INCORRECT);
    await e.b('C_Login', s, CKU_SO, SPARE_SO2);
    await e.b('C_Logout', s);

    await e.b('C_Login', s, CKU_USER, USER1);
    expect(await brv(e.b('C_SetPIN', s, 'not-the-pin', USER2))).toBe(CKR_PIN_INCORRECT);
    expect(await e.raw('C_SetPIN', [h2n(s), Buffer.from(USER1), Buffer.from(USER2)])).toEqual({ rv: CKR_OK, results: [] });
    await e.b('C_Logout', s);
    expect(await brv(e.b('C_Login', s, CKU_USER, USER1))).toBe(CKR_PIN_INCORRECT);
    await e.b('C_Login', s, CKU_USER, USER2);
    expect((await e.b('C_GetSessionInfo', s)).state).toBe(CKS_RW_USER_FUNCTIONS);
    await e.b('C_Logout', s);
    expect(await e.raw('C_Login', [h2n(s), CKU_SO, Buffer.from(SPARE_SO2)])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_InitPIN', [h2n(s), Buffer.from(USER1)])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.raw('C_Logout', [h2n(s)])).toEqual({ rv: CKR_OK, results: [] });
    await e.b('C_CloseSession', s);

    // the module in this process (re-initialized: SoftHSM2 caches the token's PINs): the new PINs work, the flags agree
    e.direct.close();
    e.direct = await openDirect(e.token);
    e.p = e.direct.pkcs11;
    const dspare = e.p.C_GetSlotList(true).find((sl) => e.p.C_GetTokenInfo(sl).label === pad32(SPARE_LABEL))!;
    const ds = e.p.C_OpenSession(dspare, RW_SESSION);
    expect(drv(() => e.p.C_Login(ds, CKU_USER, USER2))).toBe(CKR_PIN_INCORRECT);
    e.p.C_Login(ds, CKU_USER, USER1);
    e.p.C_Logout(ds);
    e.p.C_Login(ds, CKU_SO, SPARE_SO2);
    e.p.C_Logout(ds);
    e.p.C_CloseSession(ds);
    expect((await e.b('C_GetTokenInfo', spare)).flags).toBe(e.p.C_GetTokenInfo(dspare).flags);

    // C_InitPIN outside an SO session: the module's code
    const s2: Handle = await e.b('C_OpenSession', spare, RW_SESSION);
    const ds2 = e.p.C_OpenSession(dspare, RW_SESSION);
    expect(await brv(e.b('C_InitPIN', s2, USER1))).toBe(drv(() => e.p.C_InitPIN(ds2, USER1)));
    await e.b('C_CloseSession', s2);
    e.p.C_CloseSession(ds2);
  });

  it('C_CloseAllSessions closes every session of the slot (and only of this app)', async () => {
    const a: Handle = await e.b('C_OpenSession', e.slot, RW_SESSION);
    const b: Handle = await e.b('C_OpenSession', e.slot, CKF_SERIAL_SESSION); // read-only
    const ds = e.p.C_OpenSession(e.slot, RW_SESSION);
    expect((await e.b('C_GetSessionInfo', b)).flags).toBe(CKF_SERIAL_SESSION);
    await e.b('C_Login', a, CKU_USER, e.token.pin);
    expect((await e.b('C_GetSessionInfo', b)).state).toBe(CKS_RO_USER_FUNCTIONS);
    expect(await e.raw('C_CloseAllSessions', [e.slotId])).toEqual({ rv: CKR_OK, results: [] });
    expect(await brv(e.b('C_GetSessionInfo', a))).toBe(CKR_SESSION_HANDLE_INVALID);
    expect(await brv(e.b('C_GetSessionInfo', b))).toBe(CKR_SESSION_HANDLE_INVALID);
    // the direct application's session is untouched
    expect(e.p.C_GetSessionInfo(ds).state).toBe(CKS_RW_PUBLIC_SESSION);
    await e.b('C_CloseAllSessions', e.slot);
    const bad = n2h(0x7fff1234);
    expect(await brv(e.b('C_CloseAllSessions', bad))).toBe(drv(() => e.p.C_CloseAllSessions(bad)));
    e.p.C_CloseAllSessions(e.slot);
    expect(drv(() => e.p.C_GetSessionInfo(ds))).toBe(CKR_SESSION_HANDLE_INVALID);
  });

  it('C_Finalize, then calls fail with CKR_CRYPTOKI_NOT_INITIALIZED until C_Initialize', async () => {
    expect(await e.raw('C_Finalize', [])).toEqual({ rv: CKR_OK, results: [] });
    expect(await brv(e.b('C_GetInfo'))).toBe(CKR_CRYPTOKI_NOT_INITIALIZED);
    expect(await brv(e.b('C_Finalize'))).toBe(CKR_CRYPTOKI_NOT_INITIALIZED);
    expect(await e.raw('C_Initialize', [])).toEqual({ rv: CKR_OK, results: [] });
    expect(await e.b('C_GetInfo')).toEqual(e.p.C_GetInfo());
    await e.b('C_Finalize');
    await e.b('C_Initialize');
    expect(await e.b('C_GetSlotList', true)).toEqual(e.p.C_GetSlotList(true));
  });

  it('a malformed raw call never reaches the module', async () => {
    // wrong arity is refused by the client before sending
    await expect(e.guest.call('call', 'C_GetSlotInfo', [])).rejects.toMatchObject({ name: 'TypeError' });
    // the module answers an invalid session handle itself
    expect(await e.raw('C_GetSessionInfo', [0x7fffffff])).toEqual({ rv: drv(() => e.p.C_GetSessionInfo(n2h(0x7fffffff))) });
  });
});

describe('coverage', () => {
  it('every non-local call of proto/protocol.json was exercised through the bridge', () => {
    const nonLocal = PROTO.calls.filter((c) => !c.local).map((c) => c.name);
    expect(nonLocal.length).toBe(67);
    const missing = nonLocal.filter((n) => !covered.has(n));
    expect(missing).toEqual([]);
    // and nothing outside the table was called
    expect([...covered].filter((n) => !nonLocal.includes(n))).toEqual([]);
  });
});
