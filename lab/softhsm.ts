// Temporary SoftHSM2 tokens: used by the demo, the benchmarks and the tests.
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** Path of the SoftHSM2 PKCS#11 module on Debian. */
export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface CreateTokenOptions {
  label?: string;
  soPin?: string;
  pin?: string;
}

export interface SoftHsmToken {
  /** Temp directory holding softhsm2.conf and tokens/. */
  dir: string;
  /** Path of the softhsm2.conf to put in SOFTHSM2_CONF. */
  conf: string;
  /** Environment to give a process that should see this token. */
  env: { SOFTHSM2_CONF: string };
  label: string;
  soPin: string;
  pin: string;
  /** PKCS#11 module path (SOFTHSM_MODULE). */
  module: string;
  /** Remove the temp directory (idempotent). */
  cleanup(): Promise<void>;
}

export async function createToken(opts: CreateTokenOptions = {}): Promise<SoftHsmToken> {
  const label = opts.label ?? 'p11bridge-test';
  const soPin = opts.soPin ?? '12345678';
  const pin = opts.pin ?? '87654321';

  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'p11b-hsm-'));
  const cleanup = async (): Promise<void> => {
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    const tokens = path.join(dir, 'tokens');
    await fs.mkdir(tokens);
    const conf = path.join(dir, 'softhsm2.conf');
    await fs.writeFile(
      conf,
      `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`,
    );
    const env = { SOFTHSM2_CONF: conf };
    try {
      await execFileP(
        'softhsm2-util',
        ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin],
        { env: { ...process.env, ...env }, timeout: 30_000 },
      );
    } catch (err) {
      const e = err as Error & { stdout?: string; stderr?: string };
      throw new Error(
        `softhsm2-util --init-token failed: ${e.message}\nstdout: ${e.stdout ?? ''}\nstderr: ${e.stderr ?? ''}`,
      );
    }
    return { dir, conf, env, label, soPin, pin, module: SOFTHSM_MODULE, cleanup };
  } catch (err) {
    await cleanup().catch(() => {});
    throw err;
  }
}
