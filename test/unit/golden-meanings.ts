// The meanings behind proto/golden/vectors.json: at least one frame for every
// argument and result kind of the call table, plus the handshake and control
// frames. `npm run golden` regenerates the file from these (only when the
// protocol changes on purpose); the tests check both directions against it.
import { callByName, RV } from '../../src/protocol/table.js';
import { FrameType } from '../../src/protocol/frame.js';

const b = (hex: string) => Buffer.from(hex, 'hex');
const pad = (s: string, n: number) => Buffer.from(s.padEnd(n, ' '), 'ascii');
const id = (name: string) => callByName(name).id;
const CONN = 7;
/** The connection's key from HELLO_OK: every request of the connection carries it. */
const KEY = 0x6b3f90e1;
const UNAVAILABLE = 0xffffffffffffffffn;

export interface Meaning {
  name: string;
  call?: string;
  direction?: 'request' | 'response';
  frame: { type: number; conn: number; req: number; key?: number };
  payload: unknown; // undefined: empty payload
}

/** A payload both decoders of guest requests must refuse: as malformed (ERROR CKR_ARGUMENTS_BAD) or with a CKR_* rv as the call's RESULT, never calling the module. */
export interface Refusal {
  name: string;
  /** The CALL payload, as a value to pack unchecked, or as hex for bytes no encoder writes. */
  payload?: unknown;
  hex?: string;
  expect: 'malformed' | 'unknown call' | keyof typeof RV;
}

const req = (name: string, call: string, r: number, args: unknown[]): Meaning =>
  ({ name, call, direction: 'request', frame: { type: FrameType.Call, conn: CONN, req: r, key: KEY }, payload: [id(call), ...args] });
const res = (name: string, call: string, r: number, rv: number, results?: unknown[]): Meaning =>
  ({ name, call, direction: 'response', frame: { type: FrameType.Result, conn: CONN, req: r }, payload: results ? [rv, ...results] : [rv] });

const info = [[2, 40], pad('SoftHSM', 32), 0, pad('Implementation of PKCS11', 32), [2, 6]];

export const MEANINGS: Meaning[] = [
  { name: 'HELLO', frame: { type: FrameType.Hello, conn: 0, req: 0x1234 }, payload: { versions: [2, 2], nonce: 0x5eed1234, maxPayload: 1048576, client: 'p11bridge-ts/0.1.0' } },
  { name: 'HELLO_OK', frame: { type: FrameType.HelloOk, conn: CONN, req: 0x1234 }, payload: { version: 2, maxPayload: 1048576, server: 'p11bridge/0.1.0', nonce: 0x5eed1234, key: KEY, module: { info, functions: [1, 2, 3, 5] } } },
  { name: 'PING: is the server there (connection 0, no key)', frame: { type: FrameType.Ping, conn: 0, req: 0x77 }, payload: undefined },
  { name: 'PING: keep a connection alive (keyed)', frame: { type: FrameType.Ping, conn: CONN, req: 30, key: KEY }, payload: undefined },
  { name: 'ERROR: unknown connection', frame: { type: FrameType.Error, conn: 9, req: 9 }, payload: { rv: RV.CKR_DEVICE_REMOVED, message: 'unknown connection 9' } },
  { name: 'BUSY', frame: { type: FrameType.Busy, conn: CONN, req: 12 }, payload: undefined },
  { name: 'BYE', frame: { type: FrameType.Bye, conn: CONN, req: 99, key: KEY }, payload: undefined },
  req('C_Initialize: no arguments', 'C_Initialize', 1, []),
  res('C_Initialize: CKR_OK, no results', 'C_Initialize', 1, RV.CKR_OK!, []),
  res('C_GetInfo: info', 'C_GetInfo', 2, RV.CKR_OK!, [info]),
  req('C_GetSlotList: bool, outlist sized by the server (true)', 'C_GetSlotList', 3, [true, true]),
  req('C_GetSlotList: outlist count query (nil)', 'C_GetSlotList', 4, [false, null]),
  res('C_GetSlotList: outlist as array', 'C_GetSlotList', 3, RV.CKR_OK!, [[0x1d614705, 1]]),
  res('C_GetSlotList: outlist as count', 'C_GetSlotList', 4, RV.CKR_OK!, [2]),
  req('C_GetMechanismList: slot, outlist capacity 1', 'C_GetMechanismList', 5, [1, 1]),
  res('C_GetMechanismList: CKR_BUFFER_TOO_SMALL with the count', 'C_GetMechanismList', 5, RV.CKR_BUFFER_TOO_SMALL!, [63]),
  res('C_GetSlotInfo: slotinfo', 'C_GetSlotInfo', 6, RV.CKR_OK!, [[pad('SoftHSM slot ID 0x1d614705', 64), pad('SoftHSM project', 32), 5, [2, 6], [2, 6]]]),
  res('C_GetTokenInfo: tokeninfo with CK_UNAVAILABLE_INFORMATION', 'C_GetTokenInfo', 7, RV.CKR_OK!, [[
    pad('demo', 32), pad('SoftHSM project', 32), pad('SoftHSM v2', 16), pad('abba56199d614705', 16), 1069,
    0, UNAVAILABLE, 0, UNAVAILABLE, 255, 4, UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, UNAVAILABLE, [2, 6], [2, 6], Buffer.from('2026112318483100', 'ascii'),
  ]]),
  req('C_GetMechanismInfo: slot, ulong', 'C_GetMechanismInfo', 8, [1, 0x1087]),
  res('C_GetMechanismInfo: mechinfo', 'C_GetMechanismInfo', 8, RV.CKR_OK!, [[16, 32, 0x300]]),
  req('C_InitToken: bytes, label', 'C_InitToken', 9, [1, Buffer.from('12345678'), pad('new token', 32)]),
  req('C_OpenSession: slot, ulong flags', 'C_OpenSession', 10, [1, 6]),
  res('C_OpenSession: session', 'C_OpenSession', 10, RV.CKR_OK!, [1]),
  res('C_GetSessionInfo: sessioninfo', 'C_GetSessionInfo', 11, RV.CKR_OK!, [[1, 3, 6, 0]]),
  req('C_Login: ulong, bytes (PIN)', 'C_Login', 12, [1, 1, Buffer.from('87654321')]),
  req('C_Login: nil PIN (protected authentication path)', 'C_Login', 13, [1, 1, null]),
  res('C_Login: CKR_PIN_INCORRECT, no results', 'C_Login', 12, RV.CKR_PIN_INCORRECT!),
  req('C_CreateObject: template with every value type', 'C_CreateObject', 14, [1, [
    [0x0, 4], [0x1, false], [0x3, Buffer.from('label')], [0x11, null], [0x40000600, [0x1082, 0x1085]],
    [0x40000211, [[0x104, true], [0x100, 0x1f]]],
  ]]),
  res('C_CreateObject: object', 'C_CreateObject', 14, RV.CKR_OK!, [2]),
  req('C_GetAttributeValue: attrquery', 'C_GetAttributeValue', 15, [1, 2, [[0x0, true], [0x1, true], [0x11, false], [0x11, true], [0x40000600, true]]]),
  res('C_GetAttributeValue: attrvalues with a sensitive attribute', 'C_GetAttributeValue', 15, RV.CKR_ATTRIBUTE_SENSITIVE!, [[4, false, 32, null, [0x1082, 0x1085]]]),
  req('C_FindObjects: ulong max count', 'C_FindObjects', 16, [1, 10]),
  res('C_FindObjects: objectlist', 'C_FindObjects', 16, RV.CKR_OK!, [[2, 3, 0x10000]]),
  req('C_EncryptInit: mechanism with a bin parameter (IV)', 'C_EncryptInit', 17, [1, [0x1085, b('000102030405060708090a0b0c0d0e0f')], 2]),
  req('C_EncryptInit: mechanism with a structured parameter (GCM)', 'C_EncryptInit', 18, [1, [0x1087, [b('cafebabefacedbaddecaf888'), 96, b('feedface'), 128]], 2]),
  req('C_SignInit: mechanism with a structured parameter (RSA-PSS)', 'C_SignInit', 19, [1, [0x43, [0x250, 2, 32]], 3]),
  req('C_SignInit: mechanism without a parameter', 'C_SignInit', 20, [1, [0x40], 3]),
  req('C_SignInit: mechanism with a CK_ULONG parameter (HMAC general)', 'C_SignInit', 21, [1, [0x252, 16], 3]),
  req('C_Sign: bytes, outbytes length query (nil)', 'C_Sign', 22, [1, Buffer.from('hello'), null]),
  res('C_Sign: outbytes as a length', 'C_Sign', 22, RV.CKR_OK!, [256]),
  req('C_Sign: bytes, outbytes capacity', 'C_Sign', 23, [1, Buffer.from('hello'), 256]),
  res('C_Sign: outbytes as data', 'C_Sign', 23, RV.CKR_OK!, [b('0102030405060708')]),
  req('C_DeriveKey: ECDH1 parameter, template', 'C_DeriveKey', 24, [1, [0x1050, [1, null, b('04aabbcc')]], 3, [[0x0, 4], [0x100, 0x10], [0x161, 32]]]),
  res('C_DeriveKey: object', 'C_DeriveKey', 24, RV.CKR_OK!, [5]),
  req('C_GenerateKeyPair: two templates', 'C_GenerateKeyPair', 25, [1, [0x1040], [[0x180, b('06082a8648ce3d030107')], [0x10a, true]], [[0x108, true], [0x1, true]]]),
  res('C_GenerateKeyPair: two objects', 'C_GenerateKeyPair', 25, RV.CKR_OK!, [6, 7]),
  req('C_GenerateRandom: outfixed length', 'C_GenerateRandom', 26, [1, 4]),
  res('C_GenerateRandom: outfixed data', 'C_GenerateRandom', 26, RV.CKR_OK!, [b('deadbeef')]),
  req('C_WaitForSlotEvent: ulong flags', 'C_WaitForSlotEvent', 27, [1]),
  res('C_WaitForSlotEvent: CKR_FUNCTION_NOT_SUPPORTED passes through', 'C_WaitForSlotEvent', 27, RV.CKR_FUNCTION_NOT_SUPPORTED!),
  res('C_GetObjectSize: ulong', 'C_GetObjectSize', 28, RV.CKR_OK!, [1024]),
  req('C_FindObjectsInit: a NULL template (nil)', 'C_FindObjectsInit', 31, [1, null]),
  req('C_CopyObject: an empty template (a non-NULL pointer, count 0)', 'C_CopyObject', 32, [1, 2, []]),
  res('C_CopyObject: object', 'C_CopyObject', 32, RV.CKR_OK!, [3]),
  req('C_CreateObject: date attributes (CK_DATE, and empty)', 'C_CreateObject', 33, [1, [[0x0, 1], [0x110, Buffer.from('20261202', 'ascii')], [0x111, Buffer.alloc(0)]]]),
  req('C_GetAttributeValue: a NULL template (nil)', 'C_GetAttributeValue', 34, [1, 2, null]),
  res('C_GetAttributeValue: no values', 'C_GetAttributeValue', 34, RV.CKR_OK!, [[]]),
  req('C_GenerateRandom: a NULL buffer (nil)', 'C_GenerateRandom', 35, [1, null]),
  res('C_GenerateRandom: nothing after a NULL buffer', 'C_GenerateRandom', 35, RV.CKR_OK!, [null]),
  req('C_EncryptInit: an empty parameter (a non-NULL pointer, length 0)', 'C_EncryptInit', 36, [1, [0x1081, Buffer.alloc(0)], 2]),
];

const CREATE = id('C_CreateObject');
const ENCRYPT_INIT = id('C_EncryptInit');
const GENERATE_KEY = id('C_GenerateKey');
const tooDeep = (n: number) => `${'91'.repeat(n)}c0`;

/**
 * What a guest must never get past the decoders: raw byte images of C
 * structures that hold pointers (the module would follow them), values of the
 * wrong form, and MessagePack that is not the protocol's.
 */
export const REFUSALS: Refusal[] = [
  { name: 'CK_GCM_PARAMS as raw bytes (holds pointers)', payload: [ENCRYPT_INIT, 1, [0x1087, b('41'.repeat(48))], 2], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'CK_ECDH1_DERIVE_PARAMS as raw bytes', payload: [id('C_DeriveKey'), 1, [0x1050, b('00'.repeat(40))], 2, []], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'CK_KEY_DERIVATION_STRING_DATA as raw bytes (AES-ECB-ENCRYPT-DATA)', payload: [id('C_DeriveKey'), 1, [0x1104, b('ff'.repeat(16))], 2, []], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'CK_AES_CBC_ENCRYPT_DATA_PARAMS as raw bytes', payload: [id('C_DeriveKey'), 1, [0x1105, b('00'.repeat(32))], 2, []], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'a parameter for a mechanism that takes none', payload: [id('C_SignInit'), 1, [0x40, b('0102')], 2], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'a parameter for a mechanism the table does not list (vendor)', payload: [id('C_SignInit'), 1, [0x80001234, b('0102')], 2], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'an integer parameter for an IV mechanism', payload: [ENCRYPT_INIT, 1, [0x1082, 7], 2], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'bytes for a CK_ULONG parameter', payload: [id('C_SignInit'), 1, [0x252, b('1000000000000000')], 2], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'GCM parameter with 3 fields', payload: [ENCRYPT_INIT, 1, [0x1087, [b('00'), 96, null]], 2], expect: 'CKR_MECHANISM_PARAM_INVALID' },
  { name: 'CKA_WRAP_TEMPLATE as raw bytes (a CK_ATTRIBUTE array holds pointers)', payload: [CREATE, 1, [[0x40000211, b('00'.repeat(48))]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_UNWRAP_TEMPLATE as raw bytes in C_GenerateKey', payload: [GENERATE_KEY, 1, [0x1080], [[0x40000212, b('00'.repeat(24))]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_TOKEN as an integer', payload: [CREATE, 1, [[0x1, 1]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_TOKEN as a one-byte bin', payload: [CREATE, 1, [[0x1, b('01')]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_TOKEN as an integer array', payload: [CREATE, 1, [[0x1, [1]]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_CLASS as bytes', payload: [CREATE, 1, [[0x0, b('0400000000000000')]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_LABEL as an integer', payload: [CREATE, 1, [[0x3, 5]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_START_DATE of 7 bytes', payload: [CREATE, 1, [[0x110, b('32303236313230')]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_ALLOWED_MECHANISMS with a nested array', payload: [CREATE, 1, [[0x40000600, [1, [2]]]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'a template nested in a nested template', payload: [CREATE, 1, [[0x40000211, [[0x40000211, [[0x1, true]]]]]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'CKA_TOKEN as an integer inside a wrap template', payload: [CREATE, 1, [[0x40000211, [[0x1, 1]]]]], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'a refused value before a malformed one: the first problem decides', payload: [CREATE, 1, [[0x1, 1], 'x']], expect: 'CKR_ATTRIBUTE_VALUE_INVALID' },
  { name: 'a malformed entry before a refused value', payload: [CREATE, 1, ['x', [0x1, 1]]], expect: 'malformed' },
  { name: 'an attribute value that is a string', payload: [CREATE, 1, [[0x3, 'label']]], expect: 'malformed' },
  { name: 'an attribute without a value', payload: [CREATE, 1, [[0x3]]], expect: 'malformed' },
  { name: 'a mechanism parameter that is a string', payload: [ENCRYPT_INIT, 1, [0x1082, 'iv'], 2], expect: 'malformed' },
  { name: 'a mechanism of three elements', payload: [ENCRYPT_INIT, 1, [0x1082, null, 1], 2], expect: 'malformed' },
  { name: 'a template of 1025 attributes', payload: [CREATE, 1, Array.from({ length: 1025 }, () => [0x1, true])], expect: 'malformed' },
  { name: 'a session handle that is negative', payload: [id('C_CloseSession'), -1], expect: 'malformed' },
  { name: 'too few arguments', payload: [id('C_Sign'), 1], expect: 'malformed' },
  { name: 'an unknown call id', payload: [250], expect: 'unknown call' },
  { name: 'a float where a session handle is wanted', hex: `92${id('C_CloseSession').toString(16).padStart(2, '0')}cb3ff8000000000000`, expect: 'malformed' },
  { name: 'an extension type', hex: `92${id('C_CloseSession').toString(16).padStart(2, '0')}d40100`, expect: 'malformed' },
  { name: 'MessagePack byte 0xc1', hex: 'c1', expect: 'malformed' },
  { name: 'nesting 17 deep', hex: tooDeep(17), expect: 'malformed' },
  { name: 'a map key that is an array', hex: '81910101', expect: 'malformed' },
  { name: 'an array declaring 2^32-1 elements in 6 bytes', hex: 'ddffffffffc0', expect: 'malformed' },
  { name: 'a bin declaring 4 GiB in 6 bytes', hex: `93${id('C_SeedRandom').toString(16).padStart(2, '0')}01c6fffffff0`, expect: 'malformed' },
  { name: 'bytes after the value', hex: `91${id('C_GetInfo').toString(16).padStart(2, '0')}c0`, expect: 'malformed' },
];
