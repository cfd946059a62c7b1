// Errors shaped like pkcs11js's Pkcs11Error: numeric `code` (the CK_RV), the
// CKR name as the message, and the method that failed. Errors that the bridge
// itself raises (timeouts, protocol trouble) add a description after the name.
import { RV, rvName } from './table.js';

export class Pkcs11Error extends Error {
  override readonly name = 'Pkcs11Error';
  constructor(
    readonly code: number,
    readonly method: string = '',
    readonly detail?: string,
  ) {
    super(detail ? `${rvName(code)}: ${detail}` : rvName(code));
  }
}

export const CKR = {
  OK: RV.CKR_OK!,
  ARGUMENTS_BAD: RV.CKR_ARGUMENTS_BAD!,
  BUFFER_TOO_SMALL: RV.CKR_BUFFER_TOO_SMALL!,
  DEVICE_ERROR: RV.CKR_DEVICE_ERROR!,
  DEVICE_REMOVED: RV.CKR_DEVICE_REMOVED!,
  FUNCTION_NOT_SUPPORTED: RV.CKR_FUNCTION_NOT_SUPPORTED!,
  CRYPTOKI_NOT_INITIALIZED: RV.CKR_CRYPTOKI_NOT_INITIALIZED!,
  MECHANISM_PARAM_INVALID: RV.CKR_MECHANISM_PARAM_INVALID!,
  ATTRIBUTE_SENSITIVE: RV.CKR_ATTRIBUTE_SENSITIVE!,
  ATTRIBUTE_TYPE_INVALID: RV.CKR_ATTRIBUTE_TYPE_INVALID!,
  NO_EVENT: RV.CKR_NO_EVENT!,
  GENERAL_ERROR: RV.CKR_GENERAL_ERROR!,
} as const;
