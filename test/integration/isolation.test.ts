// Each guest app is a PKCS#11 application of its own on the server, whether
// the apps share a port or not: logins, sessions, session objects and
// finalization of one never reach another, and a module instance that
// crashes or hangs takes down only its own app. Several processes share one
// port, and one killed in the middle of a call does not wedge it.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';
import { createToken, type SoftHsmToken } from '../helpers/softhsm.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { startGuest, type Guest } from '../helpers/guest.js';
import {
  CKA_LABEL, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_SHA256, CKR_DEVICE_ERROR, CKR_OBJECT_HANDLE_INVALID, CKR_SESSION_HANDLE_INVALID,
  CKS_RW_PUBLIC_SESSION, CKS_RW_USER_FUNCTIONS, CKU_USER, RW_SESSION,
} from '../helpers/pkcs11.js';
import { dataObject, rsaKeyPair, source } from '../helpers/templates.js';

const run = promisify(execFile);
const MODULE_SO = join(packageRoot(), 'native', 'build', 'libp11bridge.so');

let token: SoftHsmToken;
let ptyA: PtyPair;
let ptyB: PtyPair;
let daemon: Daemon;
const guests: Guest[] = [];

async function app(port: string, timeoutMs = 5000): Promise<Guest> {
  const g = await startGuest({ port });
  guests.push(g);
  await g.connect({ timeoutMs });
  await g.eval(`
    await c.C_Initialize();
    const slots = await c.C_GetSlotList(true);
    for (const s of slots) if ((await c.C_GetTokenInfo(s)).label.trim() === ${JSON.stringify('p11bridge-test')}) state.slot = s;
    return null;
  `);
  return g;
}

beforeAll(async () => {
  token = await createToken();
  ptyA = await createPtyPair();
  ptyB = await createPtyPair();
  daemon = await startDaemon({ module: token.module, ports: [ptyA.serverPath, ptyB.serverPath], env: token.env, args: ['--max-call', '3'] });
});
afterAll(async () => {
  for (const g of guests) await g.kill().catch(() => undefined);
  await daemon?.stop();
  await ptyA?.kill();
  await ptyB?.kill();
  await token?.cleanup();
});

for (const layout of ['different ports', 'the same port'] as const) {
  describe(`two apps on ${layout}`, () => {
    let a: Guest;
    let b: Guest;
    beforeAll(async () => {
      a = await app(ptyA.guestPath);
      b = await app(layout === 'different ports' ? ptyB.guestPath : ptyA.guestPath);
    });
    afterAll(async () => {
      await a.kill();
      await b.kill();
    });

    it('a login by one app does not log in the other', async () => {
      const sa = await a.eval(`state.s = await c.C_OpenSession(state.slot, ${RW_SESSION}); await c.C_Login(state.s, ${CKU_USER}, ${JSON.stringify(token.pin)}); return (await c.C_GetSessionInfo(state.s)).state`);
      const sb = await b.eval(`state.s = await c.C_OpenSession(state.slot, ${RW_SESSION}); return (await c.C_GetSessionInfo(state.s)).state`);
      expect(sa).toBe(CKS_RW_USER_FUNCTIONS);
      expect(sb).toBe(CKS_RW_PUBLIC_SESSION);
      // A private object is out of B's reach until B logs in itself.
      const priv = dataObject({ private: true, label: 'a-private', value: Buffer.from('secret') });
      await a.eval(`state.priv = await c.C_CreateObject(state.s, ${source(priv)}); return null`);
      const seen = await b.eval(`await c.C_FindObjectsInit(state.s, [{ type: ${CKA_LABEL}, value: 'a-private' }]); const f = await c.C_FindObjects(state.s, 10); await c.C_FindObjectsFinal(state.s); return f.length`);
      expect(seen).toBe(0);
    });

    it("one app's session and object handles are invalid for the other", async () => {
      // B opens no more sessions: A's handles (beyond B's one) mean nothing to B.
      const handles = await a.eval(`
        state.extra = [];
        for (let i = 0; i < 3; i++) state.extra.push(await c.C_OpenSession(state.slot, ${RW_SESSION}));
        state.obj = await c.C_CreateObject(state.s, ${source(dataObject({ label: 'a-session-object', value: Buffer.from('x') }))});
        return { sessions: state.extra, obj: state.obj };
      `);
      for (const s of handles.sessions) {
        await expect(b.call('C_GetSessionInfo', s)).rejects.toMatchObject({ code: CKR_SESSION_HANDLE_INVALID });
      }
      const bSession = await b.eval('return state.s');
      await expect(b.call('C_GetAttributeValue', bSession, handles.obj, [{ type: CKA_LABEL }])).rejects.toMatchObject({ code: CKR_OBJECT_HANDLE_INVALID });
      // A's session objects are invisible to B.
      const seen = await b.eval(`await c.C_FindObjectsInit(state.s, [{ type: ${CKA_LABEL}, value: 'a-session-object' }]); const f = await c.C_FindObjects(state.s, 10); await c.C_FindObjectsFinal(state.s); return f.length`);
      expect(seen).toBe(0);
    });

    it("C_CloseAllSessions and C_Finalize by one app leave the other's sessions alone", async () => {
      await a.eval('await c.C_CloseAllSessions(state.slot); return null');
      expect(await b.eval('return (await c.C_GetSessionInfo(state.s)).state')).toBe(CKS_RW_PUBLIC_SESSION);
      await a.eval('await c.C_Finalize(); return null');
      expect(await b.eval('return (await c.C_GetSessionInfo(state.s)).state')).toBe(CKS_RW_PUBLIC_SESSION);
      expect(await b.eval('return (await c.C_GenerateRandom(state.s, Buffer.alloc(8))).length')).toBe(8);
    });
  });
}

describe('a module instance that crashes or hangs', () => {
  it('takes down only its own app', async () => {
    const victim = await app(ptyA.guestPath);
    const bystander = await app(ptyA.guestPath);
    const other = await app(ptyB.guestPath);
    // connection ids are small and reused: the latest connection with that id on that port
    const pidOf = async (g: Guest, port: string) => {
      const conn = await g.eval('return c.serverInfo.connection');
      return daemon.logs().filter((l) => l.msg === 'connection opened' && l.conn === conn && l.port === port).at(-1)!.executorPid as number;
    };
    await victim.eval(`state.s = await c.C_OpenSession(state.slot, ${RW_SESSION}); return null`);
    // Crash: the victim gets CKR_DEVICE_ERROR, nobody else notices.
    process.kill(await pidOf(victim, ptyA.serverPath), 'SIGKILL');
    await expect(victim.eval('return c.C_GenerateRandom(state.s, Buffer.alloc(8))')).rejects.toMatchObject({ code: expect.any(Number) });
    for (const g of [bystander, other]) {
      expect(await g.eval(`const s = await c.C_OpenSession(state.slot, ${RW_SESSION}); return (await c.C_GenerateRandom(s, Buffer.alloc(8))).length`)).toBe(8);
    }

    // Hang: the call runs into the daemon's --max-call limit (3 s) while the others carry on.
    const hung = await app(ptyB.guestPath, 10_000);
    await hung.eval(`state.s = await c.C_OpenSession(state.slot, ${RW_SESSION}); return null`);
    const hungPid = await pidOf(hung, ptyB.serverPath);
    process.kill(hungPid, 'SIGSTOP');
    const stuck = hung.eval('return c.C_GenerateRandom(state.s, Buffer.alloc(8))');
    const stuckResult = stuck.then(() => 'answered', (e: { code?: number }) => e.code);
    // The other port serves normally meanwhile.
    expect(await other.eval(`const s = await c.C_OpenSession(state.slot, ${RW_SESSION}); let n = 0; for (let i = 0; i < 20; i++) n += (await c.C_GenerateRandom(s, Buffer.alloc(4))).length; return n`)).toBe(80);
    expect(await stuckResult).toBe(CKR_DEVICE_ERROR);
    await daemon.waitForLog((l) => l.msg === 'call exceeded the time limit; terminating the module instance', 5000);
  });
});

describe('several processes on one port', () => {
  it('eight processes, Node apps and pkcs11-tool through libp11bridge.so, hammering one port all get their own answers, and one killed mid-call does not wedge it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'p11b-hammer-'));
    // C programs through the native module: each pkcs11-tool run is a whole
    // lifecycle (C_Initialize .. C_Finalize) hashing a file of its own.
    const toolWorker = async (id: number, n: number) => {
      let ok = 0;
      for (let i = 0; i < n; i++) {
        const input = join(dir, `in-${id}-${i}`);
        const output = join(dir, `out-${id}-${i}`);
        const data = Buffer.from(`pkcs11-tool worker ${id} run ${i} `.repeat(1 + i));
        await writeFile(input, data);
        await run('pkcs11-tool', ['--module', MODULE_SO, '--hash', '-m', 'SHA256', '-i', input, '-o', output], {
          env: { ...process.env, TEC_COMM_PORT: ptyB.guestPath, SOFTHSM2_CONF: '/nonexistent/softhsm2.conf', P11BRIDGE_TIMEOUT_MS: '8000' },
        });
        if (!(await readFile(output)).equals(createHash('sha256').update(data).digest())) throw new Error(`pkcs11-tool worker ${id}: wrong digest at run ${i}`);
        ok++;
      }
      return ok;
    };
    const workers = await Promise.all([0, 1, 2, 3].map(() => app(ptyB.guestPath, 8000)));
    const loop = (id: number, n: number) => `
      const { createHash } = await import('node:crypto');
      const s = await c.C_OpenSession(state.slot, ${RW_SESSION});
      let ok = 0;
      for (let i = 0; i < ${n}; i++) {
        const msg = Buffer.from('worker ${id} message ' + i);
        await c.C_DigestInit(s, { mechanism: ${CKM_SHA256} });
        const d = await c.C_Digest(s, msg, Buffer.alloc(32));
        if (!d.equals(createHash('sha256').update(msg).digest())) throw new Error('wrong digest at ' + i);
        if ((await c.C_GenerateRandom(s, Buffer.alloc(16 + (i % 7)))).length !== 16 + (i % 7)) throw new Error('wrong length');
        ok++;
      }
      return ok;`;
    // A fifth process generates RSA keys in a loop and is killed in the middle of one.
    const doomed = await app(ptyB.guestPath, 8000);
    const doomedRun = doomed.eval(`
      const s = await c.C_OpenSession(state.slot, ${RW_SESSION});
      for (;;) await c.C_GenerateKeyPair(s, { mechanism: ${CKM_RSA_PKCS_KEY_PAIR_GEN} }, ${rsaKeyPair().map(source).join(', ')});
    `).catch(() => 'killed');
    const runs = workers.map((w, i) => w.eval(loop(i, 150)));
    const tools = [0, 1, 2, 3].map((i) => toolWorker(i, 12));
    await new Promise((r) => setTimeout(r, 700));
    await doomed.kill('SIGKILL');
    expect(await doomedRun).toBe('killed');
    expect(await Promise.all(runs)).toEqual([150, 150, 150, 150]);
    expect(await Promise.all(tools)).toEqual([12, 12, 12, 12]);
    await rm(dir, { recursive: true, force: true });
  });
});
