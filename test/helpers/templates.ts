// Key and object templates the tests keep needing (AES and HMAC keys of a
// known value, keys the module generates, RSA and EC key pairs, data
// objects), in pkcs11js's shape ({ type, value }[], which pkcs11js and the
// TypeScript client both take); wire() gives the raw frames' shape
// ([[type, value], ...]) and source() the text of one for code a guest runs
// through Guest.eval. A builder writes CKA_TOKEN (false unless a token object
// is asked for) and otherwise only the attributes its options ask for, so a
// test's template says what the test is about.
import type pkcs11js from 'pkcs11js';
import {
  CKA_APPLICATION, CKA_CLASS, CKA_DECRYPT, CKA_DERIVE, CKA_EC_PARAMS, CKA_ENCRYPT, CKA_EXTRACTABLE, CKA_ID, CKA_KEY_TYPE, CKA_LABEL,
  CKA_MODULUS_BITS, CKA_PRIVATE, CKA_PUBLIC_EXPONENT, CKA_SENSITIVE, CKA_SIGN, CKA_SIGN_RECOVER, CKA_TOKEN, CKA_UNWRAP, CKA_VALUE,
  CKA_VALUE_LEN, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_WRAP, CKK_AES, CKK_GENERIC_SECRET, CKO_DATA, CKO_SECRET_KEY,
} from './pkcs11.js';

export type Attribute = pkcs11js.Attribute;
export type Template = pkcs11js.Template;
/** A template as raw frames carry it: [type, value] pairs, byte strings as bytes. */
export type WireTemplate = Array<[number, unknown]>;

/** What a key may be used for: the attribute set to true. */
export type Use = 'encrypt' | 'decrypt' | 'sign' | 'verify' | 'wrap' | 'unwrap' | 'derive' | 'signRecover' | 'verifyRecover';
const USE_ATTRIBUTE: Record<Use, number> = {
  encrypt: CKA_ENCRYPT, decrypt: CKA_DECRYPT, sign: CKA_SIGN, verify: CKA_VERIFY, wrap: CKA_WRAP, unwrap: CKA_UNWRAP,
  derive: CKA_DERIVE, signRecover: CKA_SIGN_RECOVER, verifyRecover: CKA_VERIFY_RECOVER,
};
/** Every use of a symmetric key. */
export const SYMMETRIC_USES: readonly Use[] = ['encrypt', 'decrypt', 'wrap', 'unwrap', 'derive'];

/** The RSA public exponent 65537 (F4), big-endian. */
export const RSA_F4 = Buffer.from([1, 0, 1]);
/** CKA_EC_PARAMS of P-256 (prime256v1): its DER OID. */
export const P256 = Buffer.from('06082a8648ce3d030107', 'hex');
/** CKA_EC_PARAMS of P-384 (secp384r1): its DER OID. */
export const P384 = Buffer.from('06052b81040022', 'hex');
/** The DER SubjectPublicKeyInfo of a P-256 key up to the point (id-ecPublicKey, prime256v1, BIT STRING of 66 bytes). */
export const P256_SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex');

export interface ObjectOptions {
  /** CKA_TOKEN (default false: a session object). */
  token?: boolean;
  /** CKA_PRIVATE, when given (otherwise the module's default). */
  private?: boolean;
  /** CKA_LABEL, when given. */
  label?: string | Buffer;
  /** CKA_ID, when given. */
  id?: Buffer;
}

export interface KeyOptions extends ObjectOptions {
  /** The uses set to true (CKA_ENCRYPT, CKA_SIGN, ...). */
  uses?: readonly Use[];
  /** CKA_SENSITIVE, when given. */
  sensitive?: boolean;
  /** CKA_EXTRACTABLE, when given. */
  extractable?: boolean;
  /** More attributes, last. */
  extra?: Template;
}

/** A secret the test reads back: CKA_SENSITIVE false, CKA_EXTRACTABLE true. */
export const READABLE = { sensitive: false, extractable: true } as const;

const attr = (type: number, value: Attribute['value']): Attribute => ({ type, value });

/** CKA_TOKEN, then CKA_PRIVATE, CKA_LABEL and CKA_ID where given. */
function objectAttributes(o: ObjectOptions): Template {
  const t = [attr(CKA_TOKEN, o.token ?? false)];
  if (o.private !== undefined) t.push(attr(CKA_PRIVATE, o.private));
  if (o.label !== undefined) t.push(attr(CKA_LABEL, o.label));
  if (o.id !== undefined) t.push(attr(CKA_ID, o.id));
  return t;
}

const uses = (u: readonly Use[] = []): Template => u.map((x) => attr(USE_ATTRIBUTE[x], true));

/** The uses, then CKA_SENSITIVE and CKA_EXTRACTABLE where given, then the extra attributes. */
function keyAttributes(o: KeyOptions): Template {
  const t = uses(o.uses);
  if (o.sensitive !== undefined) t.push(attr(CKA_SENSITIVE, o.sensitive));
  if (o.extractable !== undefined) t.push(attr(CKA_EXTRACTABLE, o.extractable));
  return [...t, ...(o.extra ?? [])];
}

/** A data object (CKO_DATA) for C_CreateObject, with CKA_APPLICATION and CKA_VALUE where given. */
export function dataObject(o: ObjectOptions & { application?: Buffer; value?: Buffer } = {}): Template {
  const t = [attr(CKA_CLASS, CKO_DATA), ...objectAttributes(o)];
  if (o.application !== undefined) t.push(attr(CKA_APPLICATION, o.application));
  if (o.value !== undefined) t.push(attr(CKA_VALUE, o.value));
  return t;
}

/** A secret key of a known value for C_CreateObject: CKO_SECRET_KEY of keyType with CKA_VALUE. */
export function secretKey(keyType: number, value: Buffer, o: KeyOptions = {}): Template {
  return [attr(CKA_CLASS, CKO_SECRET_KEY), attr(CKA_KEY_TYPE, keyType), ...objectAttributes(o), attr(CKA_VALUE, value), ...keyAttributes(o)];
}

/** An AES key of a known value (32 bytes: AES-256) that encrypts and decrypts, unless o.uses says otherwise. */
export const aesKey = (value: Buffer, o: KeyOptions = {}): Template => secretKey(CKK_AES, value, { uses: ['encrypt', 'decrypt'], ...o });

/** An HMAC key of a known value (CKK_GENERIC_SECRET) that signs and verifies, unless o.uses says otherwise. */
export const hmacKey = (value: Buffer, o: KeyOptions = {}): Template => secretKey(CKK_GENERIC_SECRET, value, { uses: ['sign', 'verify'], ...o });

/**
 * A secret key the module makes (C_GenerateKey, C_DeriveKey, C_UnwrapKey):
 * CKO_SECRET_KEY of keyType, with CKA_VALUE_LEN where given.
 */
export function newSecretKey(keyType: number, o: KeyOptions & { valueLen?: number } = {}): Template {
  const t = [attr(CKA_CLASS, CKO_SECRET_KEY), attr(CKA_KEY_TYPE, keyType), ...objectAttributes(o)];
  if (o.valueLen !== undefined) t.push(attr(CKA_VALUE_LEN, o.valueLen));
  return [...t, ...keyAttributes(o)];
}

/** C_GenerateKey (CKM_AES_KEY_GEN) template of an AES-256 session key that encrypts and decrypts; o changes any of it. */
export const aesKeyGen = (o: KeyOptions & { valueLen?: number } = {}): Template =>
  newSecretKey(CKK_AES, { valueLen: 32, uses: ['encrypt', 'decrypt'], ...o });

export interface KeyPairOptions {
  /** CKA_TOKEN of both keys (default false: session objects). */
  token?: boolean;
  /** CKA_LABEL of both keys, when given. */
  label?: string | Buffer;
  /** CKA_ID of both keys, when given. */
  id?: Buffer;
  /** The public key's uses (default: verify). */
  publicUses?: readonly Use[];
  /** The private key's uses (default: sign). */
  privateUses?: readonly Use[];
  /** The private key's CKA_PRIVATE, when given. */
  private?: boolean;
  /** The private key's CKA_SENSITIVE, when given. */
  sensitive?: boolean;
  /** The private key's CKA_EXTRACTABLE, when given. */
  extractable?: boolean;
}

/** The two templates of C_GenerateKeyPair: [public key, private key]. */
export type KeyPairTemplates = [publicKey: Template, privateKey: Template];

function keyPair(o: KeyPairOptions, publicAttributes: Template): KeyPairTemplates {
  const both = { token: o.token, label: o.label, id: o.id };
  return [
    [...objectAttributes(both), ...publicAttributes, ...uses(o.publicUses ?? ['verify'])],
    [...objectAttributes({ ...both, private: o.private }), ...keyAttributes({ uses: o.privateUses ?? ['sign'], sensitive: o.sensitive, extractable: o.extractable })],
  ];
}

/**
 * C_GenerateKeyPair (CKM_RSA_PKCS_KEY_PAIR_GEN) templates of an RSA key
 * pair: 2048 bits, exponent 65537, a public key that verifies and a private
 * key that signs, unless the options say otherwise.
 */
export function rsaKeyPair(o: KeyPairOptions & { bits?: number } = {}): KeyPairTemplates {
  return keyPair(o, [attr(CKA_MODULUS_BITS, o.bits ?? 2048), attr(CKA_PUBLIC_EXPONENT, RSA_F4)]);
}

/**
 * C_GenerateKeyPair (CKM_EC_KEY_PAIR_GEN) templates of an EC key pair on
 * P-256 (or the curve of `params`): a public key that verifies and a private
 * key that signs, unless the options say otherwise.
 */
export function ecKeyPair(o: KeyPairOptions & { params?: Buffer } = {}): KeyPairTemplates {
  return keyPair(o, [attr(CKA_EC_PARAMS, o.params ?? P256)]);
}

/** A template in the raw frames' shape: [type, value] pairs, strings as their UTF-8 bytes. */
export function wire(t: Template): WireTemplate {
  return t.map((a) => [a.type, typeof a.value === 'string' ? Buffer.from(a.value) : a.value]);
}

/** A template as JavaScript source, for code a guest runs through Guest.eval (Buffer is in scope there). */
export function source(t: Template): string {
  const value = (v: Attribute['value']): string => {
    if (Buffer.isBuffer(v)) return `Buffer.from('${v.toString('hex')}', 'hex')`;
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v);
    throw new Error(`source: no source form for ${String(v)}`);
  };
  return `[${t.map((a) => `{ type: ${a.type}, value: ${value(a.value)} }`).join(', ')}]`;
}
