// Load the PKCS#11 module directly (pkcs11js) in the test process, for comparisons.
import type { PKCS11 } from 'pkcs11js';
import type { SoftHsmToken } from './softhsm.js';

export interface DirectModule {
  pkcs11: PKCS11;
  /** C_Finalize (errors ignored) and unload the module. Idempotent. */
  close(): void;
}

/**
 * Load token.module with pkcs11js and C_Initialize it.
 * Sets process.env.SOFTHSM2_CONF = token.conf first: SoftHSM2 reads it at C_Initialize.
 * Note: one module instance per process is loaded by dlopen; SoftHSM2 reads its
 * config on each C_Initialize, so close() before opening another token.
 */
export async function openDirect(token: Pick<SoftHsmToken, 'conf' | 'module'>): Promise<DirectModule> {
  process.env.SOFTHSM2_CONF = token.conf;
  const pkcs11js = (await import('pkcs11js')).default;
  const pkcs11 = new pkcs11js.PKCS11();
  pkcs11.load(token.module);
  try {
    pkcs11.C_Initialize();
  } catch (err) {
    try {
      pkcs11.close();
    } catch {
      /* ignore */
    }
    throw err;
  }
  let closed = false;
  return {
    pkcs11,
    close(): void {
      if (closed) return;
      closed = true;
      try {
        pkcs11.C_Finalize();
      } catch {
        /* ignore */
      }
      pkcs11.close();
    },
  };
}
