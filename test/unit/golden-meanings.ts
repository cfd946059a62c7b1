// The meanings behind proto/golden/vectors.json: at least one frame for every
// argument and result kind of the call table, plus the handshake and control
// frames. `npm run golden` regenerates the file from these (only when the
// protocol changes on purpose); the tests check both directions against it.
import { callByName, RV } from '../../src/protocol/table.js';
import { FrameType } from '../../src/protocol/frame.js';

const b = (hex: string) => Buffer.from(hex, 'hex');
const pad = (s: string, n: number) => Buffer.from(s.padEnd(n, ' '), 'ascii');
const id = (name: string) => callByName(name).id;
const CONN = 0x1a2b3c4d;
const UNAVAILABLE = 0xffffffffffffffffn;

export interface Meaning {
  name: string;
  call?: string;
  direction?: 'request' | 'response';
  frame: { type: number; conn: number; req: number };
  payload: unknown; // undefined: empty payload
}

const req = (name: string, call: string, r: number, args: unknown[]): Meaning =>
  ({ name, call, direction: 'request', frame: { type: FrameType.Call, conn: CONN, req: r }, payload: [id(call), ...args] });
const res = (name: string, call: string, r: number, rv: number, results?: unknown[]): Meaning =>
  ({ name, call, direction: 'response', frame: { type: FrameType.Result, conn: CONN, req: r }, payload: results ? [rv, ...results] : [rv] });

const info = [[2, 40], pad('SoftHSM', 32), 0, pad('Implementation of PKCS11', 32), [2, 6]];

export const MEANINGS: Meaning[] = [
  { name: 'HELLO', frame: { type: FrameType.Hello, conn: 0, req: 0x5eed1234 }, payload: { versions: [1, 1], maxPayload: 1048576, client: 'p11bridge-ts/0.1.0' } },
  { name: 'HELLO_OK', frame: { type: FrameType.HelloOk, conn: CONN, req: 0x5eed1234 }, payload: { version: 1, maxPayload: 1048576, server: 'p11bridge/0.1.0', module: { info, functions: [1, 2, 3, 5] } } },
  { name: 'ERROR: unknown connection', frame: { type: FrameType.Error, conn: 7, req: 9 }, payload: { rv: RV.CKR_DEVICE_REMOVED, message: 'unknown connection 7' } },
  { name: 'BUSY', frame: { type: FrameType.Busy, conn: CONN, req: 12 }, payload: undefined },
  { name: 'BYE', frame: { type: FrameType.Bye, conn: CONN, req: 99 }, payload: undefined },
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
];
