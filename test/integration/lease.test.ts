// Vanished apps: a guest app killed without C_Finalize loses its server-side
// context after the idle lease (sessions closed, executor gone), while an
// idle but living app keeps its connection by PINGing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken, type SoftHsmToken } from '../helpers/softhsm.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { startGuest, type Guest } from '../helpers/guest.js';
import { CKS_RW_PUBLIC_SESSION, CKS_RW_USER_FUNCTIONS, CKU_USER, RW_SESSION } from '../helpers/pkcs11.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('idle lease', () => {
  let token: SoftHsmToken;
  let ptyA: PtyPair;
  let ptyB: PtyPair;
  let daemon: Daemon;

  beforeAll(async () => {
    token = await createToken();
    ptyA = await createPtyPair();
    ptyB = await createPtyPair();
    daemon = await startDaemon({ module: token.module, ports: [ptyA.serverPath, ptyB.serverPath], env: token.env, args: ['--lease', '1.5'] });
  });
  afterAll(async () => {
    await daemon?.stop();
    await ptyA?.kill();
    await ptyB?.kill();
    await token?.cleanup();
  });

  async function loggedIn(port: string): Promise<{ guest: Guest; conn: number }> {
    const guest = await startGuest({ port });
    await guest.connect({ timeoutMs: 3000 });
    await guest.eval(`
      await c.C_Initialize();
      const slot = (await c.C_GetSlotList(true))[0];
      state.session = await c.C_OpenSession(slot, ${RW_SESSION});
      await c.C_Login(state.session, ${CKU_USER}, ${JSON.stringify(token.pin)});
    `);
    return { guest, conn: (await guest.eval('return c.serverInfo.connection')) as number };
  }

  it('expires a killed app and frees its executor; a living idle app keeps its connection', async () => {
    const living = await loggedIn(ptyA.guestPath);
    const doomed = await loggedIn(ptyB.guestPath);
    const opened = daemon.logs().filter((l) => l.msg === 'connection opened' && l.conn === doomed.conn && l.port === ptyB.serverPath).at(-1);
    const executorPid = opened?.executorPid as number;
    expect(alive(executorPid)).toBe(true);

    await doomed.guest.kill('SIGKILL');
    // Idle for twice the lease: the killed app's connection goes, the living one stays.
    await sleep(3500);
    await daemon.waitForLog((l) => l.msg === 'connection expired' && l.conn === doomed.conn, 5000);
    for (let i = 0; i < 50 && alive(executorPid); i++) await sleep(100);
    expect(alive(executorPid)).toBe(false);
    expect(daemon.logs().some((l) => l.msg === 'connection expired' && l.conn === living.conn)).toBe(false);

    const state = await living.guest.eval('return (await c.C_GetSessionInfo(state.session)).state');
    expect(state).toBe(CKS_RW_USER_FUNCTIONS); // still logged in
    await living.guest.close();
  });

  it('lets a guest that restarts reconnect with a fresh context', async () => {
    const again = await startGuest({ port: ptyB.guestPath });
    await again.connect({ timeoutMs: 3000 });
    await again.call('C_Initialize');
    const slot = (await again.call('C_GetSlotList', true))[0];
    const session = await again.call('C_OpenSession', slot, RW_SESSION);
    // A fresh application: not logged in.
    expect((await again.call('C_GetSessionInfo', session)).state).toBe(CKS_RW_PUBLIC_SESSION);
    await again.call('C_Finalize');
    await again.close();
  });
});
