// A guest VM application: uses the trusted VM's token through p11bridge as if
// the PKCS#11 module were local. Run it where the serial line ends:
//   TEC_COMM_PORT=/dev/ttyS1 P11_PIN=... node dist/examples/guest-app.js [token-label]
import { createHash, createPublicKey, createVerify } from 'node:crypto';
import { Pkcs11Client, type Handle } from '../src/index.js';

const CKF_RW_SESSION = 2, CKF_SERIAL_SESSION = 4, CKU_USER = 1;
const CKO_SECRET_KEY = 4, CKO_PUBLIC_KEY = 2, CKO_PRIVATE_KEY = 3, CKK_AES = 0x1f;
const CKA = { CLASS: 0x0, TOKEN: 0x1, LABEL: 0x3, KEY_TYPE: 0x100, ENCRYPT: 0x104, DECRYPT: 0x105, SIGN: 0x108, VERIFY: 0x10a,
  MODULUS: 0x120, MODULUS_BITS: 0x121, PUBLIC_EXPONENT: 0x122, VALUE_LEN: 0x161, EC_PARAMS: 0x180, EC_POINT: 0x181, SENSITIVE: 0x103 };
const CKM = { AES_KEY_GEN: 0x1080, AES_GCM: 0x1087, RSA_KEY_GEN: 0x0, SHA256_RSA: 0x40, EC_KEY_GEN: 0x1040, ECDSA: 0x1041 };
const P256 = Buffer.from('06082a8648ce3d030107', 'hex');

const label = process.argv[2] ?? 'p11bridge-demo';
const pin = process.env.P11_PIN;
if (!pin) throw new Error('set P11_PIN to the token user PIN');
const step = (what: string, detail = '') => console.log(`  ${what.padEnd(44)} ${detail}`);

const p11 = await Pkcs11Client.connect(); // port from TEC_COMM_PORT
try {
  const info = p11.serverInfo;
  step('connected', `${info.server} on ${process.env.TEC_COMM_PORT}, module "${info.module.manufacturerID.trim()} ${info.module.libraryDescription.trim()}"`);
  await p11.C_Initialize();
  let slot: Handle | undefined;
  for (const s of await p11.C_GetSlotList(true)) {
    if ((await p11.C_GetTokenInfo(s)).label.trim() === label) slot = s;
  }
  if (!slot) throw new Error(`no token labelled ${label}`);
  const token = await p11.C_GetTokenInfo(slot);
  step('found token', `"${token.label.trim()}" model ${token.model.trim()} serial ${token.serialNumber.trim()}`);
  step('mechanisms', `${(await p11.C_GetMechanismList(slot)).length} offered by the module`);

  const session = await p11.C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION);
  await p11.C_Login(session, CKU_USER, pin);
  step('logged in');

  const aes = await p11.C_GenerateKey(session, { mechanism: CKM.AES_KEY_GEN }, [
    { type: CKA.CLASS, value: CKO_SECRET_KEY }, { type: CKA.KEY_TYPE, value: CKK_AES }, { type: CKA.VALUE_LEN, value: 32 },
    { type: CKA.ENCRYPT, value: true }, { type: CKA.DECRYPT, value: true }, { type: CKA.TOKEN, value: false }, { type: CKA.SENSITIVE, value: true },
  ]);
  const iv = await p11.C_GenerateRandom(session, Buffer.alloc(12));
  const gcm = { mechanism: CKM.AES_GCM, parameter: { type: 0, iv, ivBits: 96, aad: Buffer.from('header'), tagBits: 128 } };
  const message = Buffer.from('attack at dawn');
  await p11.C_EncryptInit(session, gcm, aes);
  const sealed = Buffer.from(await p11.C_Encrypt(session, message, Buffer.alloc(64)));
  await p11.C_DecryptInit(session, gcm, aes);
  const opened = await p11.C_Decrypt(session, sealed, Buffer.alloc(64));
  step('AES-256-GCM encrypt/decrypt', `${sealed.length} bytes sealed, round trip ${opened.equals(message) ? 'ok' : 'FAILED'}`);

  const rsa = await p11.C_GenerateKeyPair(session, { mechanism: CKM.RSA_KEY_GEN },
    [{ type: CKA.MODULUS_BITS, value: 2048 }, { type: CKA.PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) }, { type: CKA.VERIFY, value: true }, { type: CKA.TOKEN, value: false }],
    [{ type: CKA.SIGN, value: true }, { type: CKA.TOKEN, value: false }, { type: CKA.SENSITIVE, value: true }]);
  await p11.C_SignInit(session, { mechanism: CKM.SHA256_RSA }, rsa.privateKey);
  const sig = Buffer.from(await p11.C_Sign(session, message, Buffer.alloc(256)));
  const [n, e] = await p11.C_GetAttributeValue(session, rsa.publicKey, [{ type: CKA.MODULUS }, { type: CKA.PUBLIC_EXPONENT }]);
  const pub = createPublicKey({ key: { kty: 'RSA', n: (n!.value as Buffer).toString('base64url'), e: (e!.value as Buffer).toString('base64url') }, format: 'jwk' });
  const ok = createVerify('sha256').update(message).verify(pub, sig);
  step('RSA-2048 sign, verified by node:crypto', ok ? 'ok' : 'FAILED');

  const ec = await p11.C_GenerateKeyPair(session, { mechanism: CKM.EC_KEY_GEN },
    [{ type: CKA.EC_PARAMS, value: P256 }, { type: CKA.VERIFY, value: true }, { type: CKA.TOKEN, value: false }],
    [{ type: CKA.SIGN, value: true }, { type: CKA.TOKEN, value: false }]);
  const digest = createHash('sha256').update(message).digest();
  await p11.C_SignInit(session, { mechanism: CKM.ECDSA }, ec.privateKey);
  const ecSig = Buffer.from(await p11.C_Sign(session, digest, Buffer.alloc(64)));
  await p11.C_VerifyInit(session, { mechanism: CKM.ECDSA }, ec.publicKey);
  step('EC P-256 ECDSA sign/verify', (await p11.C_Verify(session, digest, ecSig)) ? 'ok' : 'FAILED');

  await p11.C_FindObjectsInit(session, [{ type: CKA.TOKEN, value: false }]);
  const found = await p11.C_FindObjects(session, 100);
  await p11.C_FindObjectsFinal(session);
  const classes = await Promise.all(found.map(async (h) => (await p11.C_GetAttributeValue(session, h, [{ type: CKA.CLASS }]))[0]!.value!.readUInt32LE(0)));
  step('session objects', `${found.length}: ${classes.map((c) => ({ [CKO_SECRET_KEY]: 'secret', [CKO_PUBLIC_KEY]: 'public', [CKO_PRIVATE_KEY]: 'private' })[c]).join(', ')}`);
  for (const h of found) await p11.C_DestroyObject(session, h);
  step('destroyed them');

  await p11.C_Logout(session);
  await p11.C_CloseSession(session);
  await p11.C_Finalize();
  step('logged out, finalized');
} finally {
  await p11.close();
}
