// The benchmark's operations for the TypeScript paths, the same ones
// native/bench/p11bench.c runs for the C paths (same names, same objects,
// same sizes), written once against the pkcs11js shapes that both pkcs11js
// (direct) and Pkcs11Client (through the bridge) have.
import pk from 'pkcs11js';

// Both APIs: pkcs11js answers synchronously, Pkcs11Client with promises.
/* eslint-disable @typescript-eslint/no-explicit-any */
type Api = Record<string, (...args: any[]) => any>;

export const OPS = ['session-info', 'random32', 'sha256-1k', 'rsa2048-sign', 'ecdsa-p256-sign',
  'aes-cbc-pad-64k', 'aes-ecb-64k', 'find-label', 'rsa2048-keygen'] as const;
export type OpName = (typeof OPS)[number];

const P256 = Buffer.from('06082a8648ce3d030107', 'hex');
const E65537 = Buffer.from([1, 0, 1]);

export interface Bench {
  run(op: OpName): Promise<void>;
  close(): Promise<void>;
}

/** Opens a session on the token labelled `label`, logs in, creates the session objects p11bench creates. */
export async function prepare(p: Api, label: string, pin: string): Promise<Bench> {
  await p.C_Initialize();
  let slot: unknown;
  for (const s of (await p.C_GetSlotList(true)) as unknown[]) {
    if (((await p.C_GetTokenInfo(s)) as { label: string }).label.trim() === label) slot = s;
  }
  if (slot === undefined) throw new Error(`no token ${label}`);
  const s = await p.C_OpenSession(slot, pk.CKF_SERIAL_SESSION | pk.CKF_RW_SESSION);
  await p.C_Login(s, pk.CKU_USER, pin);
  const rsaPair = async () => p.C_GenerateKeyPair(s, { mechanism: pk.CKM_RSA_PKCS_KEY_PAIR_GEN },
    [{ type: pk.CKA_TOKEN, value: false }, { type: pk.CKA_MODULUS_BITS, value: 2048 }, { type: pk.CKA_PUBLIC_EXPONENT, value: E65537 }, { type: pk.CKA_VERIFY, value: true }],
    [{ type: pk.CKA_TOKEN, value: false }, { type: pk.CKA_SIGN, value: true }, { type: pk.CKA_PRIVATE, value: true }]);
  const rsa = (await rsaPair()).privateKey;
  const ec = (await p.C_GenerateKeyPair(s, { mechanism: pk.CKM_EC_KEY_PAIR_GEN },
    [{ type: pk.CKA_TOKEN, value: false }, { type: pk.CKA_EC_PARAMS, value: P256 }, { type: pk.CKA_VERIFY, value: true }],
    [{ type: pk.CKA_TOKEN, value: false }, { type: pk.CKA_SIGN, value: true }, { type: pk.CKA_PRIVATE, value: true }])).privateKey;
  const aes = await p.C_GenerateKey(s, { mechanism: pk.CKM_AES_KEY_GEN },
    [{ type: pk.CKA_TOKEN, value: false }, { type: pk.CKA_VALUE_LEN, value: 32 }, { type: pk.CKA_ENCRYPT, value: true }, { type: pk.CKA_DECRYPT, value: true }]);
  await p.C_CreateObject(s, [{ type: pk.CKA_CLASS, value: pk.CKO_DATA }, { type: pk.CKA_TOKEN, value: false },
    { type: pk.CKA_LABEL, value: 'p11bench-data' }, { type: pk.CKA_VALUE, value: Buffer.from('data') }]);

  const data = Buffer.alloc(65536 + 32);
  for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
  const block = data.subarray(0, 65536);
  const iv = Buffer.alloc(16);
  const run: Record<OpName, () => Promise<unknown>> = {
    'session-info': async () => p.C_GetSessionInfo(s),
    random32: async () => p.C_GenerateRandom(s, Buffer.alloc(32)),
    'sha256-1k': async () => {
      await p.C_DigestInit(s, { mechanism: pk.CKM_SHA256 });
      return p.C_Digest(s, data.subarray(0, 1024), Buffer.alloc(32));
    },
    'rsa2048-sign': async () => {
      await p.C_SignInit(s, { mechanism: pk.CKM_SHA256_RSA_PKCS }, rsa);
      return p.C_Sign(s, data.subarray(0, 32), Buffer.alloc(256));
    },
    'ecdsa-p256-sign': async () => {
      await p.C_SignInit(s, { mechanism: pk.CKM_ECDSA }, ec);
      return p.C_Sign(s, data.subarray(0, 32), Buffer.alloc(64));
    },
    'aes-cbc-pad-64k': async () => {
      await p.C_EncryptInit(s, { mechanism: pk.CKM_AES_CBC_PAD, parameter: iv }, aes);
      return p.C_Encrypt(s, block, Buffer.alloc(65536 + 16));
    },
    'aes-ecb-64k': async () => {
      await p.C_EncryptInit(s, { mechanism: pk.CKM_AES_ECB }, aes);
      return p.C_Encrypt(s, block, Buffer.alloc(65536));
    },
    'find-label': async () => {
      await p.C_FindObjectsInit(s, [{ type: pk.CKA_LABEL, value: 'p11bench-data' }]);
      const found = (await p.C_FindObjects(s, 4)) as unknown[];
      await p.C_FindObjectsFinal(s);
      if (found.length !== 1) throw new Error(`find by label: ${found.length} objects`);
    },
    'rsa2048-keygen': async () => {
      const k = await rsaPair();
      await p.C_DestroyObject(s, k.publicKey);
      await p.C_DestroyObject(s, k.privateKey);
    },
  };
  return {
    run: async (op) => {
      await run[op]();
    },
    close: async () => {
      await p.C_Logout(s);
      await p.C_CloseSession(s);
      await p.C_Finalize();
    },
  };
}

export interface OpResult {
  op: string;
  n?: number;
  p50_us?: number;
  p99_us?: number;
  ops_s?: number;
  error?: string;
}

/** Times one op like p11bench's run(): warm-up, then back to back for about `ms`, at least `min` times. */
export async function timeOp(b: Bench, op: OpName, ms: number, min = 5): Promise<OpResult> {
  try {
    for (let i = 0; i < 3; i++) await b.run(op);
    const lat: number[] = [];
    const start = performance.now();
    for (;;) {
      const t0 = performance.now();
      await b.run(op);
      const t = performance.now();
      lat.push((t - t0) * 1000);
      if (t - start >= ms && lat.length >= min) break;
    }
    const total = (performance.now() - start) / 1000;
    lat.sort((a, b) => a - b);
    return { op, n: lat.length, p50_us: lat[lat.length >> 1]!, p99_us: lat[Math.min(lat.length - 1, Math.floor(lat.length * 0.99))]!, ops_s: lat.length / total };
  } catch (err) {
    return { op, error: (err as Error).message };
  }
}
