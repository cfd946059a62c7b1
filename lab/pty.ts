// Pseudo-terminal pairs (socat) standing in for the serial line between the
// VMs, left in cooked mode with echo on like a freshly booted /dev/ttyS4.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export interface PtyPair {
  /** Symlink to the pty the daemon (trusted VM) side opens. */
  serverPath: string;
  /** Symlink to the pty the guest side opens. */
  guestPath: string;
  /** Temp dir holding the links. */
  dir: string;
  /** socat's pid. */
  pid: number;
  /** socat's stderr so far. */
  stderr(): string;
  /** Kill socat, wait for it to exit, remove the temp dir. Idempotent. */
  kill(): Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function exists(p: string): Promise<boolean> {
  try {
    await fs.stat(p); // follows the link: the pty must exist too
    return true;
  } catch {
    return false;
  }
}

/** `stty -a -F path` output. */
export async function sttyAll(p: string): Promise<string> {
  const { stdout } = await execFileP('stty', ['-a', '-F', p], { timeout: 5_000 });
  return stdout;
}

/** True when the stty -a output shows canonical mode and echo on. */
export function isCookedEcho(sttyOutput: string): boolean {
  const flags = new Set(sttyOutput.split(/[\s;]+/));
  return flags.has('icanon') && flags.has('echo');
}

/**
 * Start `socat -d -d pty,link=<tmp>/server-tty pty,link=<tmp>/guest-tty`.
 * The ptys are left in their default state (cooked, echo on) like a freshly
 * booted serial port; this is verified before returning.
 */
export async function createPtyPair(opts: { dumpDir?: boolean } = {}): Promise<PtyPair> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'p11b-pty-'));
  const serverPath = path.join(dir, 'server-tty');
  const guestPath = path.join(dir, 'guest-tty');
  // dumpDir: socat copies each direction's bytes to <dir>/left-to-right
  // (daemon to guest) and <dir>/right-to-left, for counting bytes on the line.
  const dump = opts.dumpDir ? ['-r', path.join(dir, 'left-to-right'), '-R', path.join(dir, 'right-to-left')] : [];

  const proc: ChildProcess = spawn(
    'socat',
    ['-d', '-d', ...dump, `pty,link=${serverPath}`, `pty,link=${guestPath}`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => {
    stderr += d;
  });
  let exited = false;
  let spawnError: Error | undefined;
  const exitPromise = new Promise<void>((resolve) => {
    proc.once('exit', () => {
      exited = true;
      resolve();
    });
    proc.once('error', (err) => {
      spawnError = err;
      exited = true;
      resolve();
    });
  });

  let killed = false;
  const kill = async (): Promise<void> => {
    if (!killed) {
      killed = true;
      if (!exited) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => {
          if (!exited) proc.kill('SIGKILL');
        }, 3_000);
        await exitPromise;
        clearTimeout(t);
      }
      await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
    }
    await exitPromise;
  };

  try {
    const deadline = Date.now() + 5_000;
    for (;;) {
      if (spawnError) throw new Error(`cannot start socat: ${spawnError.message}`);
      if (exited) throw new Error(`socat exited before creating the ptys; stderr:\n${stderr}`);
      if ((await exists(serverPath)) && (await exists(guestPath))) break;
      if (Date.now() > deadline) {
        throw new Error(`socat did not create ${serverPath} and ${guestPath} within 5 s; stderr:\n${stderr}`);
      }
      await sleep(20);
    }
    for (const p of [serverPath, guestPath]) {
      const out = await sttyAll(p);
      if (!isCookedEcho(out)) {
        throw new Error(`pty ${p} is not in cooked mode with echo on (expected icanon and echo):\n${out}`);
      }
    }
  } catch (err) {
    await kill();
    throw err;
  }

  return {
    serverPath,
    guestPath,
    dir,
    pid: proc.pid!,
    stderr: () => stderr,
    kill,
  };
}
