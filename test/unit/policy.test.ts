// Policy enforcement on CALL payloads, against a fake module instance: which
// calls are refused with which rv, and that filtered lists keep PKCS#11's
// count-query and CKR_BUFFER_TOO_SMALL semantics exactly.
import { describe, expect, it } from 'vitest';
import { decodeCall, decodeResult, encodeCall, encodeResult } from '../../src/protocol/codec.js';
import { pack, unpack } from '../../src/protocol/msgpack.js';
import { callByName } from '../../src/protocol/table.js';
import type { Logger } from '../../src/log.js';
import type { ExecutorReply } from '../../src/server/executor.js';
import { makesTokenObject, PolicyEnforcer, type PortPolicy, type TokenId, type TokenProbe } from '../../src/server/policy.js';
import {
  CKA_ALLOWED_MECHANISMS, CKA_CLASS, CKA_PRIVATE, CKA_TOKEN, CKA_UNWRAP_TEMPLATE, CKA_VALUE, CKA_VALUE_LEN, CKA_VERIFY, CKD_NULL,
  CKF_DONT_BLOCK, CKF_SERIAL_SESSION, CKM_AES_CBC, CKM_AES_GCM, CKM_AES_KEY_GEN, CKM_AES_KEY_WRAP, CKM_EC_KEY_PAIR_GEN,
  CKM_ECDH1_DERIVE, CKM_RSA_PKCS, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_SHA256, CKM_SHA256_RSA_PKCS, CKO_DATA, CKO_SECRET_KEY,
  CKR_ARGUMENTS_BAD, CKR_ATTRIBUTE_VALUE_INVALID, CKR_BUFFER_TOO_SMALL, CKR_FUNCTION_NOT_SUPPORTED, CKR_MECHANISM_INVALID,
  CKR_NO_EVENT, CKR_OK, CKR_SLOT_ID_INVALID, CKR_TOKEN_WRITE_PROTECTED, RW_SESSION,
} from '../helpers/pkcs11.js';

/** Slots 1 (token "first"), 2 (token "second", serial "s2"), 3 (no token). */
const TOKENS = new Map<string, TokenId>([['1', { label: 'first', serial: 's1' }], ['2', { label: 'second', serial: 's2' }]]);
const probe = { lookup: async (slots: readonly unknown[]) => slots.map((s) => TOKENS.get(String(s))) } as unknown as TokenProbe;
const MECHS = [CKM_AES_KEY_GEN, CKM_AES_GCM, CKM_SHA256_RSA_PKCS, CKM_SHA256];

/** A module instance that answers the calls these tests make, and records what reached it. */
function fakeModule() {
  const seen: Array<{ name: string; args: unknown[] }> = [];
  const execute = async (payload: Uint8Array): Promise<ExecutorReply> => {
    const { spec, args } = decodeCall(payload);
    seen.push({ name: spec.name, args });
    const list = (all: number[], cap: unknown): Buffer => {
      if (cap === null) return encodeResult(spec, CKR_OK, [all.length]);
      if (cap === true || Number(cap) >= all.length) return encodeResult(spec, CKR_OK, [all]);
      return encodeResult(spec, CKR_BUFFER_TOO_SMALL, [all.length]);
    };
    switch (spec.name) {
      case 'C_GetSlotList': return { ok: true, payload: list(args[0] ? [1, 2] : [1, 2, 3], args[1]) };
      case 'C_GetMechanismList': return { ok: true, payload: list(MECHS, args[1]) };
      case 'C_WaitForSlotEvent': return { ok: true, payload: encodeResult(spec, CKR_OK, [2]) };
      case 'C_GetSessionInfo': return { ok: true, payload: encodeResult(spec, CKR_OK, [[1, 2, 4, 0]]) };
      default: return { ok: true, payload: encodeResult(spec, CKR_OK, spec.results.map(() => 7)) };
    }
  };
  return { seen, execute };
}

function fakeLog() {
  const records: Array<{ level: string; obj: Record<string, unknown>; msg: string }> = [];
  const at = (level: string) => (obj: Record<string, unknown>, msg: string) => void records.push({ level, obj, msg });
  const log = { warn: at('warn'), debug: at('debug'), info: at('info'), error: at('error') } as unknown as Logger;
  return { log, records };
}

function setup(policy: Partial<PortPolicy>) {
  const mod = fakeModule();
  const { log, records } = fakeLog();
  const gate = new PolicyEnforcer('/dev/ttyS5', { readOnly: false, initToken: true, ...policy }, () => probe, log);
  const call = async (name: string, args: unknown[]): Promise<{ rv: number; results: unknown[] | undefined }> => {
    const spec = callByName(name);
    // Packed unchecked, as a hostile guest may send it: the gate does the checking.
    const reply = await gate.run(pack([spec.id, ...args]), mod.execute, { conn: 9, req: 1 });
    if (!reply.ok) throw new Error(`ERROR ${reply.rv}: ${reply.message}`);
    // The fake answers struct results with a placeholder: check only what the policy wrote.
    if (spec.results.some((r) => !['outlist', 'slot', 'object', 'session', 'ulong'].includes(r.kind))) {
      const [rv, ...results] = unpack(reply.payload) as [number, ...unknown[]];
      return { rv, results: results.length ? results : undefined };
    }
    return decodeResult(spec, reply.payload);
  };
  return { call, seen: mod.seen, records, gate, execute: mod.execute };
}

describe('token visibility', () => {
  const policy = { tokens: [{ label: 'second' }] };

  it('filters the slot list, keeping count-query and capacity semantics', async () => {
    const { call, seen } = setup(policy);
    expect(await call('C_GetSlotList', [true, true])).toEqual({ rv: CKR_OK, results: [[2]] });
    expect(await call('C_GetSlotList', [false, null])).toEqual({ rv: CKR_OK, results: [1] });
    expect(await call('C_GetSlotList', [true, 1])).toEqual({ rv: CKR_OK, results: [[2]] });
    expect(await call('C_GetSlotList', [true, 5])).toEqual({ rv: CKR_OK, results: [[2]] });
    expect(await call('C_GetSlotList', [true, 0])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [1] });
    // The module was always asked for the whole list.
    expect(seen.every((c) => c.args[1] === true)).toBe(true);
  });

  it('a list the module could not fetch whole answers its rv only, never the unfiltered count', async () => {
    const { gate } = setup(policy);
    const spec = callByName('C_GetSlotList');
    const grew = async (): Promise<ExecutorReply> => ({ ok: true, payload: encodeResult(spec, CKR_BUFFER_TOO_SMALL, [3]) });
    const reply = await gate.run(encodeCall(spec, [true, null]), grew, { conn: 9, req: 1 });
    expect(reply.ok && decodeResult(spec, reply.payload)).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: undefined });
  });

  it('matches label and serial together', async () => {
    const { call } = setup({ tokens: [{ label: 'first', serial: 'nope' }, { serial: 's2' }] });
    expect(await call('C_GetSlotList', [false, true])).toEqual({ rv: CKR_OK, results: [[2]] });
  });

  it('answers CKR_SLOT_ID_INVALID for every call on a slot not granted, and logs it without values', async () => {
    const { call, seen, records } = setup(policy);
    for (const [name, args] of [
      ['C_GetSlotInfo', [1]], ['C_GetTokenInfo', [1]], ['C_GetMechanismList', [1, null]], ['C_GetMechanismInfo', [1, CKM_AES_KEY_GEN]],
      ['C_InitToken', [1, Buffer.from('pin'), Buffer.alloc(32, 0x20)]], ['C_OpenSession', [1, CKF_SERIAL_SESSION]], ['C_CloseAllSessions', [1]],
      ['C_GetTokenInfo', [3]], ['C_OpenSession', [99, CKF_SERIAL_SESSION]],
    ] as const) {
      expect(await call(name, [...args]), name).toEqual({ rv: CKR_SLOT_ID_INVALID, results: undefined });
    }
    expect(seen).toEqual([]);
    const denials = records.filter((r) => r.level === 'warn');
    expect(denials).toHaveLength(9);
    expect(denials[0]).toEqual({ level: 'warn', msg: 'call denied by policy',
      obj: { port: '/dev/ttyS5', conn: 9, req: 1, fn: 'C_GetSlotInfo', rv: 'CKR_SLOT_ID_INVALID', reason: 'slot not granted to this port' } });
    expect(JSON.stringify(denials)).not.toContain('pin');
    // The granted slot goes through.
    expect((await call('C_GetTokenInfo', [2])).rv).toBe(CKR_OK);
    expect(seen.map((c) => c.name)).toEqual(['C_GetTokenInfo']);
  });

  it('hides slot events of tokens not granted', async () => {
    expect(await setup({ tokens: [{ label: 'first' }] }).call('C_WaitForSlotEvent', [CKF_DONT_BLOCK])).toEqual({ rv: CKR_NO_EVENT, results: undefined });
    expect(await setup(policy).call('C_WaitForSlotEvent', [CKF_DONT_BLOCK])).toEqual({ rv: CKR_OK, results: [2] });
  });
});

describe('mechanism allow-list', () => {
  // (0x9999: a mechanism the module does not have)
  const policy = { mechanisms: new Set([BigInt(CKM_AES_GCM), BigInt(CKM_SHA256_RSA_PKCS), 0x9999n]) };

  it('filters the mechanism list, keeping count-query and capacity semantics', async () => {
    const { call } = setup(policy);
    expect(await call('C_GetMechanismList', [1, true])).toEqual({ rv: CKR_OK, results: [[CKM_AES_GCM, CKM_SHA256_RSA_PKCS]] });
    expect(await call('C_GetMechanismList', [1, null])).toEqual({ rv: CKR_OK, results: [2] });
    expect(await call('C_GetMechanismList', [1, 2])).toEqual({ rv: CKR_OK, results: [[CKM_AES_GCM, CKM_SHA256_RSA_PKCS]] });
    expect(await call('C_GetMechanismList', [1, 1])).toEqual({ rv: CKR_BUFFER_TOO_SMALL, results: [2] });
  });

  it('refuses denied mechanisms with CKR_MECHANISM_INVALID, lets allowed ones through', async () => {
    const { call, seen } = setup(policy);
    expect(await call('C_GetMechanismInfo', [1, CKM_AES_KEY_GEN])).toEqual({ rv: CKR_MECHANISM_INVALID, results: undefined });
    for (const name of ['C_EncryptInit', 'C_DecryptInit', 'C_SignInit', 'C_VerifyInit', 'C_SignRecoverInit', 'C_VerifyRecoverInit']) {
      expect(await call(name, [5, [CKM_AES_CBC, Buffer.alloc(16)], 6]), name).toEqual({ rv: CKR_MECHANISM_INVALID, results: undefined });
    }
    expect((await call('C_DigestInit', [5, [CKM_SHA256]])).rv).toBe(CKR_MECHANISM_INVALID);
    expect((await call('C_GenerateKey', [5, [CKM_AES_KEY_GEN], []])).rv).toBe(CKR_MECHANISM_INVALID);
    expect((await call('C_GenerateKeyPair', [5, [CKM_RSA_PKCS_KEY_PAIR_GEN], [], []])).rv).toBe(CKR_MECHANISM_INVALID);
    expect((await call('C_WrapKey', [5, [CKM_AES_KEY_WRAP], 6, 7, null])).rv).toBe(CKR_MECHANISM_INVALID);
    expect((await call('C_UnwrapKey', [5, [CKM_AES_KEY_WRAP], 6, Buffer.alloc(24), []])).rv).toBe(CKR_MECHANISM_INVALID);
    expect((await call('C_DeriveKey', [5, [CKM_ECDH1_DERIVE, [CKD_NULL, null, Buffer.alloc(65)]], 6, []])).rv).toBe(CKR_MECHANISM_INVALID);
    expect(seen).toEqual([]);
    expect((await call('C_SignInit', [5, [CKM_SHA256_RSA_PKCS], 6])).rv).toBe(CKR_OK);
    expect((await call('C_GetMechanismInfo', [1, CKM_AES_GCM])).rv).toBe(CKR_OK);
    expect(seen.map((c) => c.name)).toEqual(['C_SignInit', 'C_GetMechanismInfo']);
  });

  it('a denied slot wins over a denied mechanism', async () => {
    const { call } = setup({ ...policy, tokens: [{ label: 'second' }] });
    expect((await call('C_GetMechanismInfo', [1, CKM_AES_KEY_GEN])).rv).toBe(CKR_SLOT_ID_INVALID);
    expect(await call('C_GetMechanismList', [2, null])).toEqual({ rv: CKR_OK, results: [2] });
  });
});

describe('read-only ports', () => {
  const policy = { readOnly: true };

  it('refuses token and PIN initialisation, RW sessions and token objects with CKR_TOKEN_WRITE_PROTECTED', async () => {
    const { call, seen, records } = setup(policy);
    const wp = { rv: CKR_TOKEN_WRITE_PROTECTED, results: undefined };
    expect(await call('C_InitToken', [1, Buffer.from('so'), Buffer.alloc(32, 0x20)])).toEqual(wp);
    expect(await call('C_InitPIN', [5, Buffer.from('pin')])).toEqual(wp);
    expect(await call('C_SetPIN', [5, Buffer.from('old'), Buffer.from('new')])).toEqual(wp);
    expect(await call('C_OpenSession', [1, RW_SESSION])).toEqual(wp);
    expect(await call('C_CreateObject', [5, [[CKA_CLASS, CKO_DATA], [CKA_TOKEN, true]]])).toEqual(wp);
    expect(await call('C_CopyObject', [5, 6, [[CKA_TOKEN, true]]])).toEqual(wp);
    expect(await call('C_GenerateKey', [5, [CKM_AES_KEY_GEN], [[CKA_VALUE_LEN, 32], [CKA_TOKEN, true]]])).toEqual(wp);
    expect(await call('C_GenerateKeyPair', [5, [CKM_EC_KEY_PAIR_GEN], [[CKA_TOKEN, false]], [[CKA_TOKEN, true]]])).toEqual(wp);
    expect(await call('C_UnwrapKey', [5, [CKM_AES_KEY_WRAP], 6, Buffer.alloc(24), [[CKA_TOKEN, true]]])).toEqual(wp);
    expect(await call('C_DeriveKey', [5, [CKM_ECDH1_DERIVE], 6, [[CKA_TOKEN, true]]])).toEqual(wp);
    // A template nested in the new object's template (an unwrap template) counts too.
    expect(await call('C_GenerateKey', [5, [CKM_AES_KEY_GEN], [[CKA_UNWRAP_TEMPLATE, [[CKA_TOKEN, true]]]]])).toEqual(wp);
    expect(seen).toEqual([]);
    expect(records.filter((r) => r.level === 'warn').map((r) => r.obj.reason)).toEqual([
      'read-only port: C_InitToken changes the token', 'read-only port: C_InitPIN changes the token', 'read-only port: C_SetPIN changes the token',
      'read-only port: read/write session', ...Array(7).fill('read-only port: template creates a token object'),
    ]);
  });

  it('lets reading, RO sessions, session objects and searches for token objects through', async () => {
    const { call, seen } = setup(policy);
    expect((await call('C_OpenSession', [1, CKF_SERIAL_SESSION])).rv).toBe(CKR_OK);
    expect((await call('C_GenerateKey', [5, [CKM_AES_KEY_GEN], [[CKA_TOKEN, false], [CKA_VALUE_LEN, 32]]])).rv).toBe(CKR_OK);
    expect((await call('C_CreateObject', [5, [[CKA_CLASS, CKO_DATA], [CKA_VALUE, Buffer.from('x')]]])).rv).toBe(CKR_OK);
    expect((await call('C_GenerateKeyPair', [5, [CKM_EC_KEY_PAIR_GEN], [[CKA_VERIFY, true]], [[CKA_TOKEN, false]]])).rv).toBe(CKR_OK);
    expect((await call('C_FindObjectsInit', [5, [[CKA_TOKEN, true]]])).rv).toBe(CKR_OK);
    expect((await call('C_SignInit', [5, [CKM_SHA256_RSA_PKCS], 6])).rv).toBe(CKR_OK);
    expect(seen.map((c) => c.name)).toEqual(['C_OpenSession', 'C_GenerateKey', 'C_CreateObject', 'C_GenerateKeyPair', 'C_FindObjectsInit', 'C_SignInit']);
  });

  it('CKA_TOKEN in any encoding but a boolean is refused before the policy and the module: CKR_ATTRIBUTE_VALUE_INVALID', async () => {
    const { call, seen } = setup(policy);
    const invalid = { rv: CKR_ATTRIBUTE_VALUE_INVALID, results: undefined };
    for (const value of [1, 1n, 0xffffffffffffffffn, Buffer.from([1]), Buffer.from([0, 1]), [1], [[CKA_TOKEN, true]]]) {
      expect(await call('C_CreateObject', [5, [[CKA_CLASS, CKO_SECRET_KEY], [CKA_TOKEN, value]]])).toEqual(invalid);
      expect(await call('C_GenerateKey', [5, [CKM_AES_KEY_GEN], [[CKA_UNWRAP_TEMPLATE, [[CKA_TOKEN, value]]]]])).toEqual(invalid);
    }
    expect(seen).toEqual([]);
    expect(makesTokenObject([[CKA_TOKEN, true]])).toBe(true);
    expect(makesTokenObject([[CKA_UNWRAP_TEMPLATE, [[CKA_TOKEN, true]]]])).toBe(true);
    expect(makesTokenObject([[CKA_TOKEN, false], [CKA_TOKEN, null], [CKA_PRIVATE, true]])).toBe(false);
    expect(makesTokenObject([[CKA_ALLOWED_MECHANISMS, [CKM_AES_KEY_GEN, CKM_RSA_PKCS]]])).toBe(false); // a CK_ULONG array value
  });
});

describe('token initialisation', () => {
  it('is refused unless the port allows it, with CKR_TOKEN_WRITE_PROTECTED, before any decoding', async () => {
    const { call, seen, records } = setup({ initToken: false });
    expect(await call('C_InitToken', [1, Buffer.from('so'), Buffer.alloc(32, 0x20)])).toEqual({ rv: CKR_TOKEN_WRITE_PROTECTED, results: undefined });
    expect(seen).toEqual([]);
    expect(records.map((r) => r.obj.reason)).toEqual(['token initialisation is off on this port (initToken)']);
    // Everything else of an otherwise unrestricted port passes untouched.
    expect((await call('C_OpenSession', [1, RW_SESSION])).rv).toBe(CKR_OK);
    expect(seen.map((c) => c.name)).toEqual(['C_OpenSession']);
  });
});

describe('payloads the policy cannot read', () => {
  it('are refused, never passed on', async () => {
    const { gate, seen, execute } = setup({ readOnly: true });
    const ctx = { conn: 9, req: 1 };
    expect(await gate.run(pack([callByName('C_OpenSession').id, 1]), execute, ctx)).toMatchObject({ ok: false, rv: CKR_ARGUMENTS_BAD });
    expect(await gate.run(pack([250, 1]), execute, ctx)).toMatchObject({ ok: false, rv: CKR_FUNCTION_NOT_SUPPORTED });
    expect(await gate.run(Buffer.from([0xc1]), execute, ctx)).toMatchObject({ ok: false, rv: CKR_ARGUMENTS_BAD });
    expect(seen).toEqual([]);
  });

  it('calls the policy does not concern pass through as they came', async () => {
    const { gate, execute } = setup({ readOnly: true, tokens: [{ label: 'first' }], mechanisms: new Set([BigInt(CKM_RSA_PKCS)]) });
    let got: Uint8Array | undefined;
    const payload = encodeCall(callByName('C_GetSessionInfo'), [5]);
    const reply = await gate.run(payload, (p) => ((got = p), execute(p)), { conn: 9, req: 1 });
    expect(got).toBe(payload);
    expect(reply.ok).toBe(true);
  });
});
