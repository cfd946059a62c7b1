// The pkcs11js shapes the client speaks (PeculiarVentures/pkcs11js
// index.d.ts), so code written for pkcs11js moves over by adding `await`.

export type Handle = Buffer;

export interface Version { major: number; minor: number }
export interface ModuleInfo { cryptokiVersion: Version; manufacturerID: string; flags: number; libraryDescription: string; libraryVersion: Version }
export interface SlotInfo { slotDescription: string; manufacturerID: string; flags: number; hardwareVersion: Version; firmwareVersion: Version }
export interface TokenInfo {
  label: string; manufacturerID: string; model: string; serialNumber: string; flags: number;
  maxSessionCount: number; sessionCount: number; maxRwSessionCount: number; rwSessionCount: number;
  maxPinLen: number; minPinLen: number; totalPublicMemory: bigint; freePublicMemory: bigint;
  totalPrivateMemory: bigint; freePrivateMemory: bigint; hardwareVersion: Version; firmwareVersion: Version; utcTime: string;
}
export interface SessionInfo { slotID: Handle; state: number; flags: number; deviceError: number }
export interface MechanismInfo { minKeySize: number; maxKeySize: number; flags: number }

export interface Attribute { type: number; value?: number | bigint | boolean | string | Buffer | Date | Template | number[] }
export type Template = Attribute[];
export interface AttributeResult { type: number; value: Buffer; template?: AttributeResult[] }
export type TemplateResult = AttributeResult[];

/** A structured mechanism parameter: the fields named in protocol.json paramKinds. */
export interface MechanismParams { type?: number; [field: string]: number | Buffer | undefined }
export interface Mechanism { mechanism: number; parameter?: Buffer | number | MechanismParams }
export interface KeyPair { publicKey: Handle; privateKey: Handle }

/** Every forwarded PKCS#11 function, as pkcs11js names and shapes it, returning a Promise. */
export interface Pkcs11Api {
  C_Initialize(options?: { libraryParameters?: string; flags?: number }): Promise<void>;
  C_Finalize(): Promise<void>;
  C_GetInfo(): Promise<ModuleInfo>;
  C_GetSlotList(tokenPresent?: boolean): Promise<Handle[]>;
  C_GetSlotInfo(slot: Handle): Promise<SlotInfo>;
  C_GetTokenInfo(slot: Handle): Promise<TokenInfo>;
  C_GetMechanismList(slot: Handle): Promise<number[]>;
  C_GetMechanismInfo(slot: Handle, mech: number): Promise<MechanismInfo>;
  C_InitToken(slot: Handle, pin?: string | Buffer, label?: string): Promise<void>;
  C_InitPIN(session: Handle, pin?: string | Buffer): Promise<void>;
  C_SetPIN(session: Handle, oldPin: string | Buffer, newPin: string | Buffer): Promise<void>;
  C_OpenSession(slot: Handle, flags: number): Promise<Handle>;
  C_CloseSession(session: Handle): Promise<void>;
  C_CloseAllSessions(slot: Handle): Promise<void>;
  C_GetSessionInfo(session: Handle): Promise<SessionInfo>;
  C_GetOperationState(session: Handle): Promise<Buffer>;
  C_SetOperationState(session: Handle, state: Buffer, encryptionKey?: Handle, authenticationKey?: Handle): Promise<void>;
  C_Login(session: Handle, userType: number, pin?: string | Buffer): Promise<void>;
  C_Logout(session: Handle): Promise<void>;
  C_CreateObject(session: Handle, template: Template): Promise<Handle>;
  C_CopyObject(session: Handle, object: Handle, template: Template): Promise<Handle>;
  C_DestroyObject(session: Handle, object: Handle): Promise<void>;
  C_GetObjectSize(session: Handle, object: Handle): Promise<number>;
  C_GetAttributeValue(session: Handle, object: Handle, template: Template): Promise<TemplateResult>;
  C_SetAttributeValue(session: Handle, object: Handle, template: Template): Promise<void>;
  C_FindObjectsInit(session: Handle, template: Template): Promise<void>;
  C_FindObjects(session: Handle, maxObjectCount: number): Promise<Handle[]>;
  C_FindObjects(session: Handle): Promise<Handle | null>;
  C_FindObjectsFinal(session: Handle): Promise<void>;
  C_EncryptInit(session: Handle, mechanism: Mechanism, key: Handle): Promise<void>;
  C_Encrypt(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_EncryptUpdate(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_EncryptFinal(session: Handle, outData: Buffer): Promise<Buffer>;
  C_DecryptInit(session: Handle, mechanism: Mechanism, key: Handle): Promise<void>;
  C_Decrypt(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_DecryptUpdate(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_DecryptFinal(session: Handle, outData: Buffer): Promise<Buffer>;
  C_DigestInit(session: Handle, mechanism: Mechanism): Promise<void>;
  C_Digest(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_DigestUpdate(session: Handle, inData: Buffer): Promise<void>;
  C_DigestKey(session: Handle, key: Handle): Promise<void>;
  C_DigestFinal(session: Handle, outData: Buffer): Promise<Buffer>;
  C_SignInit(session: Handle, mechanism: Mechanism, key: Handle): Promise<void>;
  C_Sign(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_SignUpdate(session: Handle, inData: Buffer): Promise<void>;
  C_SignFinal(session: Handle, outData: Buffer): Promise<Buffer>;
  C_SignRecoverInit(session: Handle, mechanism: Mechanism, key: Handle): Promise<void>;
  C_SignRecover(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_VerifyInit(session: Handle, mechanism: Mechanism, key: Handle): Promise<void>;
  C_Verify(session: Handle, inData: Buffer, signature: Buffer): Promise<boolean>;
  C_VerifyUpdate(session: Handle, inData: Buffer): Promise<void>;
  C_VerifyFinal(session: Handle, signature: Buffer): Promise<boolean>;
  C_VerifyRecoverInit(session: Handle, mechanism: Mechanism, key: Handle): Promise<void>;
  C_VerifyRecover(session: Handle, signature: Buffer, outData: Buffer): Promise<Buffer>;
  C_DigestEncryptUpdate(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_DecryptDigestUpdate(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_SignEncryptUpdate(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_DecryptVerifyUpdate(session: Handle, inData: Buffer, outData: Buffer): Promise<Buffer>;
  C_GenerateKey(session: Handle, mechanism: Mechanism, template: Template): Promise<Handle>;
  C_GenerateKeyPair(session: Handle, mechanism: Mechanism, publicTmpl: Template, privateTmpl: Template): Promise<KeyPair>;
  C_WrapKey(session: Handle, mechanism: Mechanism, wrappingKey: Handle, key: Handle, wrappedKey: Buffer): Promise<Buffer>;
  C_UnwrapKey(session: Handle, mechanism: Mechanism, unwrappingKey: Handle, wrappedKey: Buffer, template: Template): Promise<Handle>;
  C_DeriveKey(session: Handle, mechanism: Mechanism, key: Handle, template: Template): Promise<Handle>;
  C_SeedRandom(session: Handle, buf: Buffer): Promise<void>;
  C_GenerateRandom(session: Handle, buf: Buffer): Promise<Buffer>;
  C_GetFunctionStatus(session: Handle): Promise<void>;
  C_CancelFunction(session: Handle): Promise<void>;
  C_WaitForSlotEvent(flags: number): Promise<Handle | null>;
}
