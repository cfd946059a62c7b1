// exec_smoke.mjs: end-to-end smoke test of p11bridge-exec against a fresh
// SoftHSM2 token, speaking the executor link (PROTOCOL.md section 9) directly.
//
//   node native/test/exec_smoke.mjs             (from anywhere)
//   P11BRIDGE_VALGRIND=1 node native/test/exec_smoke.mjs   (under valgrind)
//
// Env: P11BRIDGE_EXEC (executor path), SOFTHSM2_MODULE (module path).
// Exits non-zero on the first mismatch.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash, randomBytes } from 'node:crypto';
import { Packr, Unpackr } from 'msgpackr';

const here = dirname(fileURLToPath(import.meta.url));
const EXEC = process.env.P11BRIDGE_EXEC ?? resolve(here, '../build/p11bridge-exec');
const MODULE = process.env.SOFTHSM2_MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';
const VALGRIND = !!process.env.P11BRIDGE_VALGRIND;
const TIMEOUT = VALGRIND ? 300_000 : 30_000;

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'auto' });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'auto' });

// ---- constants ----
const CKR = { OK: 0, ARGUMENTS_BAD: 7, ATTRIBUTE_SENSITIVE: 0x11, ATTRIBUTE_TYPE_INVALID: 0x12, ATTRIBUTE_VALUE_INVALID: 0x13,
  FUNCTION_NOT_SUPPORTED: 0x54, MECHANISM_PARAM_INVALID: 0x71, OBJECT_HANDLE_INVALID: 0x82,
  OPERATION_NOT_INITIALIZED: 0x91, PIN_INCORRECT: 0xa0, SESSION_HANDLE_INVALID: 0xb3,
  SIGNATURE_INVALID: 0xc0, BUFFER_TOO_SMALL: 0x150, DEVICE_MEMORY: 0x31, CRYPTOKI_NOT_INITIALIZED: 0x190 };
const ID = { describe: 0, C_Initialize: 1, C_Finalize: 2, C_GetInfo: 3, C_GetFunctionList: 4,
  C_GetSlotList: 5, C_GetSlotInfo: 6, C_GetTokenInfo: 7, C_GetMechanismList: 8,
  C_GetMechanismInfo: 9, C_InitToken: 10, C_OpenSession: 13, C_CloseSession: 14,
  C_GetSessionInfo: 16, C_Login: 19, C_CreateObject: 21, C_DestroyObject: 23, C_GetObjectSize: 24,
  C_GetAttributeValue: 25, C_FindObjectsInit: 27, C_FindObjects: 28, C_FindObjectsFinal: 29,
  C_EncryptInit: 30, C_Encrypt: 31, C_DecryptInit: 34, C_Decrypt: 35, C_DigestInit: 38, C_Digest: 39,
  C_SignInit: 43, C_Sign: 44, C_VerifyInit: 49, C_Verify: 50, C_GenerateKey: 59,
  C_GenerateKeyPair: 60, C_GenerateRandom: 65 };
const CKA = { CLASS: 0, TOKEN: 1, PRIVATE: 2, LABEL: 3, VALUE: 0x11, KEY_TYPE: 0x100, SENSITIVE: 0x103,
  ENCRYPT: 0x104, DECRYPT: 0x105, WRAP: 0x106, SIGN: 0x108, VERIFY: 0x10a, MODULUS: 0x120,
  MODULUS_BITS: 0x121, PUBLIC_EXPONENT: 0x122, VALUE_LEN: 0x161, EXTRACTABLE: 0x162, EC_PARAMS: 0x180,
  EC_POINT: 0x181, WRAP_TEMPLATE: 0x40000211, ALLOWED_MECHANISMS: 0x40000600 };
const CKM = { RSA_PKCS_KEY_PAIR_GEN: 0, SHA256_RSA_PKCS: 0x40, SHA256_RSA_PKCS_PSS: 0x43, SHA256: 0x250,
  AES_KEY_GEN: 0x1080, AES_CBC: 0x1082, AES_CBC_PAD: 0x1085, AES_GCM: 0x1087, EC_KEY_PAIR_GEN: 0x1040,
  ECDSA: 0x1041 };
const CKG_MGF1_SHA256 = 2;

// ---- assertions ----
let checks = 0;
function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
}
const show = (v) => JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n`
  : x && x.type === 'Buffer' && Array.isArray(x.data) ? `<bin ${x.data.length}>` : x));
function eq(actual, expected, what) {
  checks++;
  if (show(actual) !== show(expected)) fail(`${what}: expected ${show(expected)}, got ${show(actual)}`);
}
function ok(cond, what) {
  checks++;
  if (!cond) fail(what);
}
const isBin = (v, n) => Buffer.isBuffer(v) && (n === undefined || v.length === n);
const bin = (s) => Buffer.from(s);
const hex = (s) => Buffer.from(s, 'hex');

// ---- executor connection ----
class Exec {
  constructor(args = [], { valgrindLog } = {}) {
    let cmd = EXEC;
    let argv = ['--module', MODULE, ...args];
    if (VALGRIND) {
      argv = ['--leak-check=full', '--errors-for-leak-kinds=definite', '--show-leak-kinds=definite',
        '--error-exitcode=1', `--suppressions=${resolve(here, 'valgrind.supp')}`,
        ...(valgrindLog ? [`--log-file=${valgrindLog}`] : []), cmd, ...argv];
      cmd = 'valgrind';
    }
    this.proc = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.buf = Buffer.alloc(0);
    this.waiters = [];
    this.stderr = '';
    this.proc.stdout.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.pump(); });
    this.proc.stderr.on('data', (d) => { this.stderr += d; });
    this.exited = new Promise((res) => this.proc.on('exit', (code, sig) => res({ code, sig })));
    this.proc.stdin.on('error', () => {});
  }
  pump() {
    while (this.waiters.length && this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (this.buf.length < 4 + len) return;
      const body = this.buf.subarray(4, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      this.waiters.shift().resolve(unpackr.unpack(body));
    }
  }
  sendRaw(payload) {
    const hdr = Buffer.alloc(4);
    hdr.writeUInt32BE(payload.length);
    this.proc.stdin.write(Buffer.concat([hdr, payload]));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`timeout; stderr: ${this.stderr}`)), TIMEOUT);
      this.waiters.push({ resolve: (v) => { clearTimeout(t); resolve(v); } });
      this.pump();
    });
  }
  call(...msg) { return this.sendRaw(packr.pack(msg)); }
  async close() {
    this.proc.stdin.end();
    return this.exited;
  }
}

// expect a RESULT [rv, ...results]
async function expectRv(ex, msg, rv, what) {
  const r = await ex.call(...msg);
  ok(Array.isArray(r), `${what}: expected a RESULT array, got ${show(r)}`);
  eq(r[0], rv, `${what} rv`);
  return r.slice(1);
}
async function expectError(ex, payloadOrMsg, rv, what, msgRe) {
  const r = Buffer.isBuffer(payloadOrMsg) ? await ex.sendRaw(payloadOrMsg) : await ex.call(...payloadOrMsg);
  ok(r && !Array.isArray(r) && typeof r === 'object', `${what}: expected an error map, got ${show(r)}`);
  eq(r.rv, rv, `${what} error rv`);
  ok(typeof r.message === 'string' && r.message.length > 0, `${what}: error message missing`);
  if (msgRe) ok(msgRe.test(r.message), `${what}: message ${show(r.message)} does not match ${msgRe}`);
  return r.message;
}

// ---- token ----
const dir = mkdtempSync(join(tmpdir(), 'p11bridge-smoke-'));
const conf = join(dir, 'softhsm2.conf');
writeFileSync(conf, `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\n`);
process.env.SOFTHSM2_CONF = conf;
execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 't', '--so-pin', '1234', '--pin', '5678'],
  { stdio: ['ignore', 'ignore', 'inherit'] });
const cleanup = () => rmSync(dir, { recursive: true, force: true });
process.on('exit', cleanup);

const vgLogs = [];
const newExec = (args) => {
  const log = VALGRIND ? join(dir, `vg-${vgLogs.length}.log`) : undefined;
  if (log) vgLogs.push(log);
  return new Exec(args, { valgrindLog: log });
};

async function main() {
  const ex = newExec();

  // describe
  const [desc] = await expectRv(ex, [ID.describe], 0, 'describe');
  ok(Array.isArray(desc) && desc.includes(1) && desc.includes(44) && desc.includes(68), `describe list ${show(desc)}`);
  ok(desc.every((v, i) => i === 0 || v > desc[i - 1]), 'describe list ascending');

  // before C_Initialize the module answers itself
  await expectRv(ex, [ID.C_GetSlotList, true, null], CKR.CRYPTOKI_NOT_INITIALIZED, 'GetSlotList before init');

  await expectRv(ex, [ID.C_Initialize], 0, 'C_Initialize');
  const [info] = await expectRv(ex, [ID.C_GetInfo], 0, 'C_GetInfo');
  eq(info.length, 5, 'CK_INFO fields');
  eq(info[0][0], 2, 'cryptokiVersion.major');
  ok(isBin(info[1], 32) && isBin(info[3], 32), 'CK_INFO char32 fields');
  ok(info[1].toString().startsWith('SoftHSM'), `manufacturerID ${info[1]}`);
  ok(Array.isArray(info[4]) && info[4].length === 2, 'libraryVersion');

  // slots
  const [slots] = await expectRv(ex, [ID.C_GetSlotList, true, true], 0, 'GetSlotList(true, true)');
  ok(Array.isArray(slots) && slots.length >= 2, `slots ${show(slots)}`);
  const [nslots] = await expectRv(ex, [ID.C_GetSlotList, true, null], 0, 'GetSlotList count');
  eq(nslots, slots.length, 'slot count');
  eq(await expectRv(ex, [ID.C_GetSlotList, true, 1], CKR.BUFFER_TOO_SMALL, 'GetSlotList capacity 1'), [slots.length], 'BUFFER_TOO_SMALL count');
  eq(await expectRv(ex, [ID.C_GetSlotList, true, 100], 0, 'GetSlotList capacity 100'), [slots], 'slot list');
  let slot;
  for (const s of slots) {
    const [ti] = await expectRv(ex, [ID.C_GetTokenInfo, s], 0, `GetTokenInfo ${s}`);
    eq(ti.length, 18, 'CK_TOKEN_INFO fields');
    ok(isBin(ti[0], 32) && isBin(ti[2], 16) && isBin(ti[3], 16) && isBin(ti[17], 16), 'token info char fields');
    if (ti[0].toString() === 't'.padEnd(32, ' ')) slot = s;
  }
  ok(slot !== undefined, 'token "t" found');
  const [si] = await expectRv(ex, [ID.C_GetSlotInfo, slot], 0, 'GetSlotInfo');
  ok(isBin(si[0], 64) && isBin(si[1], 32) && typeof si[2] === 'number', 'slot info');

  // mechanisms
  const [nmech] = await expectRv(ex, [ID.C_GetMechanismList, slot, null], 0, 'mechanism count');
  ok(nmech > 10, `mechanism count ${nmech}`);
  const [mechs] = await expectRv(ex, [ID.C_GetMechanismList, slot, nmech], 0, 'mechanism list');
  eq(mechs.length, nmech, 'mechanism list length');
  for (const m of [CKM.AES_CBC_PAD, CKM.AES_GCM, CKM.SHA256_RSA_PKCS, CKM.ECDSA]) ok(mechs.includes(m), `mechanism 0x${m.toString(16)} listed`);
  const [mi] = await expectRv(ex, [ID.C_GetMechanismInfo, slot, CKM.AES_KEY_GEN], 0, 'GetMechanismInfo');
  eq(mi.slice(0, 2), [16, 32], 'AES key sizes');

  // session and login
  const [h] = await expectRv(ex, [ID.C_OpenSession, slot, 6], 0, 'OpenSession');
  ok(typeof h === 'number' && h > 0, 'session handle');
  const [sinfo] = await expectRv(ex, [ID.C_GetSessionInfo, h], 0, 'GetSessionInfo');
  eq(sinfo[0], slot, 'session slot');
  await expectRv(ex, [ID.C_Login, h, 1, bin('0000')], CKR.PIN_INCORRECT, 'Login wrong PIN');
  await expectRv(ex, [ID.C_Login, h, 1, bin('5678')], 0, 'Login');

  // AES key
  const [aes] = await expectRv(ex, [ID.C_GenerateKey, h, [CKM.AES_KEY_GEN], [
    [CKA.CLASS, 4], [CKA.KEY_TYPE, 0x1f], [CKA.VALUE_LEN, 32], [CKA.ENCRYPT, true], [CKA.DECRYPT, true],
    [CKA.SENSITIVE, true], [CKA.TOKEN, false], [CKA.LABEL, bin('aes-1')],
    [CKA.ALLOWED_MECHANISMS, [CKM.AES_CBC_PAD, CKM.AES_GCM]]]], 0, 'GenerateKey AES');

  // AES-CBC-PAD with length query, BUFFER_TOO_SMALL, then the real call
  const iv = randomBytes(16);
  const plain = bin('twenty bytes of data');
  await expectRv(ex, [ID.C_EncryptInit, h, [CKM.AES_CBC_PAD, iv], aes], 0, 'EncryptInit CBC-PAD');
  eq(await expectRv(ex, [ID.C_Encrypt, h, plain, null], 0, 'Encrypt length query'), [32], 'Encrypt length');
  eq(await expectRv(ex, [ID.C_Encrypt, h, plain, 1], CKR.BUFFER_TOO_SMALL, 'Encrypt capacity 1'), [32], 'Encrypt BUFFER_TOO_SMALL length');
  const [ct] = await expectRv(ex, [ID.C_Encrypt, h, plain, 64], 0, 'Encrypt');
  ok(isBin(ct, 32), 'ciphertext 32 bytes');
  await expectRv(ex, [ID.C_Encrypt, h, plain, 64], CKR.OPERATION_NOT_INITIALIZED, 'Encrypt after the operation ended');
  await expectRv(ex, [ID.C_DecryptInit, h, [CKM.AES_CBC_PAD, iv], aes], 0, 'DecryptInit CBC-PAD');
  const [pt] = await expectRv(ex, [ID.C_Decrypt, h, ct, 10_000_000], 0, 'Decrypt (capacity above the limit)');
  eq(pt.toString(), plain.toString(), 'CBC-PAD round trip');

  // AES-GCM with a structured parameter
  const gcm = [randomBytes(12), 96, bin('header'), 128];
  await expectRv(ex, [ID.C_EncryptInit, h, [CKM.AES_GCM, gcm], aes], 0, 'EncryptInit GCM');
  const [gct] = await expectRv(ex, [ID.C_Encrypt, h, plain, 1024], 0, 'Encrypt GCM');
  ok(isBin(gct, plain.length + 16), 'GCM ciphertext + tag');
  await expectRv(ex, [ID.C_DecryptInit, h, [CKM.AES_GCM, gcm], aes], 0, 'DecryptInit GCM');
  const [gpt] = await expectRv(ex, [ID.C_Decrypt, h, gct, 1024], 0, 'Decrypt GCM');
  eq(gpt.toString(), plain.toString(), 'GCM round trip');
  await expectRv(ex, [ID.C_EncryptInit, h, [CKM.AES_CBC, [1, 2]], aes], CKR.MECHANISM_PARAM_INVALID, 'array parameter of a mechanism without a structure');
  await expectRv(ex, [ID.C_EncryptInit, h, [CKM.AES_GCM, [gcm[0], 96, null]], aes], CKR.MECHANISM_PARAM_INVALID, 'GCM with 3 fields');
  await expectRv(ex, [ID.C_EncryptInit, h, [CKM.AES_GCM, [gcm[0], 'x', null, 128]], aes], CKR.MECHANISM_PARAM_INVALID, 'GCM field of wrong type');
  // a raw image of CK_GCM_PARAMS (it holds pointers) never reaches the module
  await expectRv(ex, [ID.C_EncryptInit, h, [CKM.AES_GCM, Buffer.alloc(40, 0x41)], aes], CKR.MECHANISM_PARAM_INVALID, 'GCM parameter as raw bytes');

  // digest
  await expectRv(ex, [ID.C_DigestInit, h, [CKM.SHA256]], 0, 'DigestInit');
  eq(await expectRv(ex, [ID.C_Digest, h, bin('abc'), 32], 0, 'Digest'), [createHash('sha256').update('abc').digest()], 'SHA-256("abc")');
  await expectRv(ex, [ID.C_DigestInit, h, [CKM.SHA256]], 0, 'DigestInit 2');
  eq((await expectRv(ex, [ID.C_Digest, h, Buffer.alloc(0), 32], 0, 'Digest of empty'))[0], createHash('sha256').digest(), 'SHA-256("") (empty bin is a non-NULL pointer)');

  // RSA key pair, PKCS#1 v1.5 and PSS
  const [rsaPub, rsaPriv] = await expectRv(ex, [ID.C_GenerateKeyPair, h, [CKM.RSA_PKCS_KEY_PAIR_GEN],
    [[CKA.MODULUS_BITS, 2048], [CKA.PUBLIC_EXPONENT, hex('010001')], [CKA.VERIFY, true], [CKA.TOKEN, false]],
    [[CKA.SIGN, true], [CKA.SENSITIVE, true], [CKA.TOKEN, false], [CKA.PRIVATE, true]]], 0, 'GenerateKeyPair RSA');
  const data = bin('message to be signed');
  await expectRv(ex, [ID.C_SignInit, h, [CKM.SHA256_RSA_PKCS], rsaPriv], 0, 'SignInit RSA');
  eq(await expectRv(ex, [ID.C_Sign, h, data, null], 0, 'Sign length'), [256], 'RSA signature length');
  const [sig] = await expectRv(ex, [ID.C_Sign, h, data, 256], 0, 'Sign RSA');
  ok(isBin(sig, 256), 'RSA signature');
  await expectRv(ex, [ID.C_VerifyInit, h, [CKM.SHA256_RSA_PKCS], rsaPub], 0, 'VerifyInit RSA');
  await expectRv(ex, [ID.C_Verify, h, data, sig], 0, 'Verify RSA');
  const bad = Buffer.from(sig);
  bad[10] ^= 1;
  await expectRv(ex, [ID.C_VerifyInit, h, [CKM.SHA256_RSA_PKCS], rsaPub], 0, 'VerifyInit RSA 2');
  await expectRv(ex, [ID.C_Verify, h, data, bad], CKR.SIGNATURE_INVALID, 'Verify RSA bad signature');
  const pss = [CKM.SHA256, CKG_MGF1_SHA256, 32];
  await expectRv(ex, [ID.C_SignInit, h, [CKM.SHA256_RSA_PKCS_PSS, pss], rsaPriv], 0, 'SignInit PSS');
  const [psig] = await expectRv(ex, [ID.C_Sign, h, data, 512], 0, 'Sign PSS');
  ok(isBin(psig, 256), 'PSS signature');
  await expectRv(ex, [ID.C_VerifyInit, h, [CKM.SHA256_RSA_PKCS_PSS, pss], rsaPub], 0, 'VerifyInit PSS');
  await expectRv(ex, [ID.C_Verify, h, data, psig], 0, 'Verify PSS');

  // EC P-256 and ECDSA
  const [ecPub, ecPriv] = await expectRv(ex, [ID.C_GenerateKeyPair, h, [CKM.EC_KEY_PAIR_GEN],
    [[CKA.EC_PARAMS, hex('06082a8648ce3d030107')], [CKA.VERIFY, true], [CKA.TOKEN, false]],
    [[CKA.SIGN, true], [CKA.TOKEN, false]]], 0, 'GenerateKeyPair EC');
  const digest = createHash('sha256').update(data).digest();
  await expectRv(ex, [ID.C_SignInit, h, [CKM.ECDSA], ecPriv], 0, 'SignInit ECDSA');
  const [esig] = await expectRv(ex, [ID.C_Sign, h, digest, 64], 0, 'Sign ECDSA');
  ok(isBin(esig, 64), 'ECDSA signature');
  await expectRv(ex, [ID.C_VerifyInit, h, [CKM.ECDSA], ecPub], 0, 'VerifyInit ECDSA');
  await expectRv(ex, [ID.C_Verify, h, digest, esig], 0, 'Verify ECDSA');

  // C_GetAttributeValue
  const [vals] = await expectRv(ex, [ID.C_GetAttributeValue, h, aes, [
    [CKA.CLASS, true], [CKA.TOKEN, true], [CKA.VALUE, true], [CKA.VALUE_LEN, true], [CKA.LABEL, false],
    [CKA.LABEL, true], [CKA.ENCRYPT, true], [CKA.ALLOWED_MECHANISMS, false], [CKA.ALLOWED_MECHANISMS, true],
    [CKA.VALUE, false]]], CKR.ATTRIBUTE_SENSITIVE, 'GetAttributeValue with a sensitive attribute');
  eq(vals, [4, false, null, 32, 5, bin('aes-1'), true, 2, [CKM.AES_CBC_PAD, CKM.AES_GCM], null], 'AES key attributes');
  const [pvals] = await expectRv(ex, [ID.C_GetAttributeValue, h, rsaPub, [
    [CKA.MODULUS, false], [CKA.MODULUS, true], [CKA.PUBLIC_EXPONENT, true], [CKA.CLASS, true],
    [CKA.KEY_TYPE, true], [CKA.MODULUS_BITS, true]]], 0, 'GetAttributeValue RSA public key');
  eq(pvals[0], 256, 'modulus length');
  ok(isBin(pvals[1], 256), 'modulus');
  eq(pvals.slice(2), [hex('010001'), 2, 0, 2048], 'public exponent, class, key type, modulus bits');
  const [ivals] = await expectRv(ex, [ID.C_GetAttributeValue, h, ecPub, [
    [0x7fff1234, true], [CKA.EC_PARAMS, true], [CKA.EC_POINT, false]]], CKR.ATTRIBUTE_TYPE_INVALID, 'GetAttributeValue unknown type');
  eq(ivals.slice(0, 2), [null, hex('06082a8648ce3d030107')], 'unknown attribute nil, EC params');
  ok(typeof ivals[2] === 'number' && ivals[2] >= 65, 'EC point length');
  await expectRv(ex, [ID.C_GetAttributeValue, h, 0x7ffffff, [[CKA.CLASS, true]]], CKR.OBJECT_HANDLE_INVALID, 'GetAttributeValue bad handle');

  // nested template (CKA_WRAP_TEMPLATE) both ways
  const [wk] = await expectRv(ex, [ID.C_GenerateKey, h, [CKM.AES_KEY_GEN], [
    [CKA.VALUE_LEN, 16], [CKA.WRAP, true], [CKA.TOKEN, false], [CKA.EXTRACTABLE, true], [CKA.SENSITIVE, false],
    [CKA.WRAP_TEMPLATE, [[CKA.CLASS, 4], [CKA.KEY_TYPE, 0x1f], [CKA.EXTRACTABLE, true]]]]], 0, 'GenerateKey with a nested template');
  const [wvals] = await expectRv(ex, [ID.C_GetAttributeValue, h, wk, [
    [CKA.WRAP_TEMPLATE, false], [CKA.WRAP_TEMPLATE, true], [CKA.VALUE, true]]], 0, 'GetAttributeValue nested template');
  eq(wvals[0], 3, 'nested template length in attributes');
  eq(wvals[1], [[CKA.CLASS, 4], [CKA.KEY_TYPE, 0x1f], [CKA.EXTRACTABLE, true]], 'nested template value');
  ok(isBin(wvals[2], 16), 'non-sensitive value');

  // find objects
  await expectRv(ex, [ID.C_FindObjectsInit, h, [[CKA.CLASS, 4]]], 0, 'FindObjectsInit');
  const [found] = await expectRv(ex, [ID.C_FindObjects, h, 10], 0, 'FindObjects');
  eq([...found].sort((a, b) => a - b), [aes, wk].sort((a, b) => a - b), 'found secret keys');
  eq(await expectRv(ex, [ID.C_FindObjects, h, 10], 0, 'FindObjects again'), [[]], 'no more objects');
  await expectRv(ex, [ID.C_FindObjectsFinal, h], 0, 'FindObjectsFinal');
  await expectRv(ex, [ID.C_FindObjectsInit, h, []], 0, 'FindObjectsInit empty template');
  const [all] = await expectRv(ex, [ID.C_FindObjects, h, BigInt(2) ** 40n], 0, 'FindObjects (huge max count)');
  eq(all.length, 6, 'all session objects');
  await expectRv(ex, [ID.C_FindObjectsFinal, h], 0, 'FindObjectsFinal 2');

  // random
  const [rnd] = await expectRv(ex, [ID.C_GenerateRandom, h, 48], 0, 'GenerateRandom');
  ok(isBin(rnd, 48), 'random bytes');
  await expectError(ex, [ID.C_GenerateRandom, h, 2 * 1048576], CKR.ARGUMENTS_BAD, 'GenerateRandom above the limit', /C_GenerateRandom argument 2 \(randomData\): .*limit/);

  // object size, destroy
  const [osz] = await expectRv(ex, [ID.C_GetObjectSize, h, aes], 0, 'GetObjectSize');
  ok(typeof osz === 'number' || typeof osz === 'bigint', `object size ${show(osz)}`);
  await expectRv(ex, [ID.C_DestroyObject, h, aes], 0, 'DestroyObject');
  await expectRv(ex, [ID.C_GetAttributeValue, h, aes, [[CKA.CLASS, true]]], CKR.OBJECT_HANDLE_INVALID, 'destroyed object');

  // errors reported by the module
  await expectRv(ex, [ID.C_CloseSession, 99999], CKR.SESSION_HANDLE_INVALID, 'invalid session');
  await expectRv(ex, [ID.C_GetSessionInfo, BigInt('18446744073709551615')], CKR.SESSION_HANDLE_INVALID, 'session 2^64-1');

  // malformed requests: answered with an error map, the executor keeps serving
  await expectError(ex, randomBytes(64).fill(0xc1, 0, 1), CKR.ARGUMENTS_BAD, 'random bytes', /malformed/);
  await expectError(ex, Buffer.from([0xdd, 0x7f, 0xff, 0xff, 0xff, 0x01]), CKR.ARGUMENTS_BAD, 'array32 claiming 2^31 elements', /more elements than bytes/);
  await expectError(ex, Buffer.alloc(0), CKR.ARGUMENTS_BAD, 'empty message');
  await expectError(ex, Buffer.concat([packr.pack([ID.C_GetInfo]), Buffer.from([0xc0])]), CKR.ARGUMENTS_BAD, 'trailing bytes', /after/);
  await expectError(ex, packr.pack({ a: 1 }), CKR.ARGUMENTS_BAD, 'not an array', /expected \[id, args\.\.\.\], got map/);
  await expectError(ex, packr.pack([]), CKR.ARGUMENTS_BAD, 'empty array');
  await expectError(ex, [-1], CKR.ARGUMENTS_BAD, 'negative id');
  await expectError(ex, [99], CKR.FUNCTION_NOT_SUPPORTED, 'unknown id 99', /unknown call id 99/);
  await expectError(ex, [ID.C_GetFunctionList], CKR.FUNCTION_NOT_SUPPORTED, 'C_GetFunctionList');
  await expectError(ex, [0, 1], CKR.ARGUMENTS_BAD, 'describe with an argument');
  await expectError(ex, [ID.C_CloseSession], CKR.ARGUMENTS_BAD, 'missing argument', /C_CloseSession: expected 1 argument, got 0/);
  await expectError(ex, [ID.C_Sign, h, 5, null], CKR.ARGUMENTS_BAD, 'C_Sign data int',
    /^C_Sign argument 2 \(data\): expected bin or nil, got int$/);
  await expectError(ex, [ID.C_Sign, h, 'text', null], CKR.ARGUMENTS_BAD, 'C_Sign data str', /got str/);
  await expectError(ex, [ID.C_Sign, h, data, -5], CKR.ARGUMENTS_BAD, 'C_Sign capacity negative', /argument 3 \(signature\)/);
  await expectError(ex, [ID.C_CloseSession, -3], CKR.ARGUMENTS_BAD, 'negative session', /got negative int/);
  await expectError(ex, [ID.C_CloseSession, 1.5], CKR.ARGUMENTS_BAD, 'float session', /floats are not part of the protocol/);
  await expectError(ex, [ID.C_GetSlotList, 1, null], CKR.ARGUMENTS_BAD, 'bool as int', /expected bool/);
  await expectError(ex, [ID.C_GetSlotList, true, false], CKR.ARGUMENTS_BAD, 'outlist false');
  await expectError(ex, [ID.C_InitToken, slot, bin('1234'), bin('short')], CKR.ARGUMENTS_BAD, 'label not 32 bytes', /argument 3 \(label\): expected bin of 32 bytes, got 5 bytes/);
  const big = Array.from({ length: 5000 }, () => [CKA.TOKEN, false]);
  await expectError(ex, [ID.C_FindObjectsInit, h, big], CKR.ARGUMENTS_BAD, '5000-attribute template', /5000 attributes exceeds 1024/);
  await expectError(ex, [ID.C_GetAttributeValue, h, ecPub, Array.from({ length: 1025 }, () => [0, true])], CKR.ARGUMENTS_BAD, '1025-entry query', /limit 1024/);
  await expectRv(ex, [ID.C_FindObjectsInit, h, [[CKA.WRAP_TEMPLATE, [[0, [[0, 1]]]]]]], CKR.ATTRIBUTE_VALUE_INVALID, 'a template where CKA_CLASS is wanted, nested');
  await expectRv(ex, [ID.C_FindObjectsInit, h, [[CKA.WRAP_TEMPLATE, [[CKA.WRAP_TEMPLATE, [[0, 1]]]]]]], CKR.ATTRIBUTE_VALUE_INVALID, 'template nested too deep');
  await expectRv(ex, [ID.C_FindObjectsInit, h, [[CKA.WRAP_TEMPLATE, Buffer.alloc(48, 0x41)]]], CKR.ATTRIBUTE_VALUE_INVALID, 'a wrap template as raw bytes');
  await expectError(ex, [ID.C_FindObjectsInit, h, [[CKA.CLASS, 'x']]], CKR.ARGUMENTS_BAD, 'str attribute value', /attribute 1 \(type 0x0\)/);
  await expectError(ex, [ID.C_FindObjectsInit, h, [[CKA.CLASS]]], CKR.ARGUMENTS_BAD, 'attribute without value');
  await expectRv(ex, [ID.C_FindObjectsInit, h, [[CKA.ALLOWED_MECHANISMS, [1, [2]]]]], CKR.ATTRIBUTE_VALUE_INVALID, 'mixed array');
  await expectError(ex, [ID.C_GetAttributeValue, h, ecPub, [[CKA.CLASS, 1]]], CKR.ARGUMENTS_BAD, 'want not bool', /want: expected bool/);
  await expectError(ex, [ID.C_SignInit, h, [], rsaPriv], CKR.ARGUMENTS_BAD, 'empty mechanism');
  await expectError(ex, [ID.C_SignInit, h, [1, null, 2], rsaPriv], CKR.ARGUMENTS_BAD, 'mechanism of 3');
  await expectError(ex, [ID.C_SignInit, h, [CKM.ECDSA, true], rsaPriv], CKR.ARGUMENTS_BAD, 'mechanism bool param');
  // deeply nested arrays (msgpack-c depth limit)
  await expectError(ex, Buffer.concat([Buffer.alloc(200, 0x91), Buffer.from([0xc0])]), CKR.ARGUMENTS_BAD, 'deep nesting');
  // still serving
  const [info2] = await expectRv(ex, [ID.C_GetInfo], 0, 'C_GetInfo after malformed requests');
  eq(info2, info, 'same info');

  // an unsigned-int mechanism parameter reaches the module as a CK_ULONG
  // (SoftHSM refuses it: 8 bytes is not an IV; the point is that it is a RESULT)
  const ip = await ex.call(ID.C_EncryptInit, h, [CKM.AES_CBC_PAD, 7], wk);
  ok(Array.isArray(ip) && ip.length === 1 && ip[0] !== 0, `int parameter answered by the module: ${show(ip)}`);

  // a kind-ULONG parameter (CKM_SHA256_HMAC_GENERAL) is an unsigned int: an
  // array, even an empty one, is refused, never turned into 0
  await expectRv(ex, [ID.C_SignInit, h, [0x252, []], wk], CKR.MECHANISM_PARAM_INVALID, 'ULONG-kind parameter as []');
  await expectRv(ex, [ID.C_SignInit, h, [0x252, [16]], wk], CKR.MECHANISM_PARAM_INVALID, 'ULONG-kind parameter as [16]');

  await expectRv(ex, [ID.C_Finalize], 0, 'C_Finalize');
  await expectRv(ex, [ID.C_GetInfo], CKR.CRYPTOKI_NOT_INITIALIZED, 'after C_Finalize');
  const ex1 = await ex.close();
  eq(ex1, { code: 0, sig: null }, 'exit after stdin EOF');

  // an app that never finalizes: the executor finalizes on EOF
  const ex2 = newExec(['--max-payload', '4096']);
  await expectRv(ex2, [ID.C_Initialize], 0, 'C_Initialize (2)');
  const [h2] = await expectRv(ex2, [ID.C_OpenSession, slot, 4], 0, 'OpenSession (2)');
  await expectError(ex2, [ID.C_GenerateRandom, h2, 4097], CKR.ARGUMENTS_BAD, 'GenerateRandom above --max-payload');
  const [r2] = await expectRv(ex2, [ID.C_GenerateRandom, h2, 4096], 0, 'GenerateRandom at --max-payload');
  ok(isBin(r2, 4096), '4096 random bytes');
  // an output larger than the payload limit, for a caller buffer that was
  // large enough (served with a buffer of the limit): not BUFFER_TOO_SMALL
  const [k2] = await expectRv(ex2, [ID.C_GenerateKey, h2, [CKM.AES_KEY_GEN], [
    [CKA.CLASS, 4], [CKA.KEY_TYPE, 0x1f], [CKA.VALUE_LEN, 16], [CKA.ENCRYPT, true], [CKA.TOKEN, false], [CKA.PRIVATE, false]]], 0, 'GenerateKey (2)');
  await expectRv(ex2, [ID.C_EncryptInit, h2, [CKM.AES_CBC, randomBytes(16)], k2], 0, 'EncryptInit CBC (2)');
  await expectError(ex2, [ID.C_Encrypt, h2, Buffer.alloc(8192, 1), 10000], CKR.DEVICE_MEMORY, 'output beyond --max-payload',
    /output of 8192 bytes exceeds the bridge's payload limit 4096/);
  // (the operation stays active, as after any CKR_BUFFER_TOO_SMALL)
  eq(await expectRv(ex2, [ID.C_Encrypt, h2, Buffer.alloc(8192, 1), 4000], CKR.BUFFER_TOO_SMALL, 'a caller buffer really too small'),
    [8192], 'BUFFER_TOO_SMALL length');
  eq(await ex2.close(), { code: 0, sig: null }, 'exit without C_Finalize');

  // a message longer than the limit cannot be resynchronized: error, exit 2
  const ex3 = newExec(['--max-payload', '4096']);
  const hdr = Buffer.alloc(4);
  hdr.writeUInt32BE(4096 + 65536 + 1);
  ex3.proc.stdin.write(hdr);
  const r3 = await new Promise((resolve) => { ex3.waiters.push({ resolve }); ex3.pump(); });
  eq(r3.rv, CKR.ARGUMENTS_BAD, 'oversize message error');
  eq(await ex3.exited, { code: 2, sig: null }, 'exit 2 after an oversize message');

  // a module that does not load: message on stderr, exit 1 (not under valgrind)
  if (!VALGRIND) {
    const ex4 = new Exec([]);
    ex4.proc.kill();
    const bad = spawn(EXEC, ['--module', join(dir, 'nonexistent.so')], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    bad.stderr.on('data', (d) => { err += d; });
    const code = await new Promise((res) => bad.on('close', res));
    eq(code, 1, 'exit 1 for a module that does not load');
    ok(/cannot load module/.test(err), `stderr names the problem: ${err}`);
  }

  if (VALGRIND) {
    for (const log of vgLogs) {
      const text = existsSync(log) ? readFileSync(log, 'utf8') : '';
      const lines = text.split('\n').filter((l) => /ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|in use at exit/.test(l));
      console.log(`${log.split('/').pop()}:\n  ${lines.map((l) => l.replace(/^==\d+== /, '')).join('\n  ')}`);
      const m = /ERROR SUMMARY: (\d+) errors/.exec(text);
      ok(m && m[1] === '0', `valgrind reports errors, see:\n${text.slice(-6000)}`);
    }
  }
  console.log(`exec_smoke: ${checks} checks passed${VALGRIND ? ' (under valgrind)' : ''}`);
}

main().catch((e) => fail(e.stack ?? String(e)));
