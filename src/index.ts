// Public entry point: the guest-side client and its types.
export { Pkcs11Client, type ConnectOptions, type ServerInfo, type RawResult } from './client/client.js';
export { Pkcs11Error } from './protocol/errors.js';
export { RV, rvName, CALLS, callByName } from './protocol/table.js';
export type * from './client/types.js';
