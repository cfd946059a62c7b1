// A soak of 1,000 app lifecycles against one daemon, a tenth of them killed
// with SIGKILL in the middle of their work: afterwards the daemon holds no
// connection, no executor and no extra file descriptor, and its memory stays
// within a stated bound. The figures are printed for the notes.
import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken, type SoftHsmToken } from '../helpers/softhsm.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { startGuest } from '../helpers/guest.js';
import { RW_SESSION } from '../helpers/pkcs11.js';

const CLEAN = 900;
const KILLED = 100;
// V8 grows its heap to a high-water mark and stays there (measured: +30..40 MiB
// by 1,000 connections, flat or falling after), so the bound is generous.
const RSS_GROWTH_BOUND_KB = 64 * 1024;

const rssKb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;
const children = (pid: number) =>
  readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
    try {
      return readFileSync(`/proc/${d}/stat`, 'utf8').split(') ')[1]!.split(' ')[1] === String(pid);
    } catch {
      return false;
    }
  }).length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('soak: 1,000 app lifecycles, a tenth killed', () => {
  let token: SoftHsmToken;
  let pty: PtyPair;
  let daemon: Daemon;
  beforeAll(async () => {
    token = await createToken();
    pty = await createPtyPair();
    daemon = await startDaemon({ module: token.module, ports: [pty.serverPath], env: token.env, args: ['--lease', '1', '--log-level', 'info'] });
  });
  afterAll(async () => {
    await daemon?.stop();
    await pty?.kill();
    await token?.cleanup();
  });

  it('leaves no connections, executors or descriptors behind', async () => {
    const pid = daemon.pid;
    // Warm up once, then take the baseline.
    const warm = await startGuest({ port: pty.guestPath });
    await warm.connect();
    await warm.call('C_Initialize');
    await warm.call('C_Finalize');
    await warm.close();
    await sleep(300);
    const before = { rss: rssKb(pid), fds: fdCount(pid), children: children(pid) };

    // Clean lifecycles, in one guest process: connect, initialize, a session, a call, finalize, close.
    const cycles = await warm.eval(`
      const P = Pkcs11Client;
      let n = 0;
      for (let i = 0; i < ${CLEAN}; i++) {
        const x = await P.connect({ timeoutMs: 5000 });
        await x.C_Initialize();
        const slot = (await x.C_GetSlotList(true))[0];
        const s = await x.C_OpenSession(slot, ${RW_SESSION});
        await x.C_GenerateRandom(s, Buffer.alloc(16));
        await x.C_Finalize();
        await x.close();
        n++;
      }
      return n;
    `);
    expect(cycles, JSON.stringify(daemon.logs().filter((l) => /expired|unexpectedly|refused/.test(String(l.msg))).slice(0, 5))).toBe(CLEAN);
    await warm.kill();

    // Killed lifecycles: processes that vanish mid-work without C_Finalize.
    for (let i = 0; i < KILLED; i += 10) {
      const batch = await Promise.all(Array.from({ length: 10 }, () => startGuest({ port: pty.guestPath })));
      // Each app gets going (connection, session) before it is killed mid-loop.
      await Promise.all(batch.map((g) => g.eval(`
        state.x = await Pkcs11Client.connect({ timeoutMs: 5000 });
        await state.x.C_Initialize();
        const slot = (await state.x.C_GetSlotList(true))[0];
        state.s = await state.x.C_OpenSession(slot, ${RW_SESSION});
        return null;
      `)));
      const runs = batch.map((g) => g.eval('for (;;) await state.x.C_GenerateRandom(state.s, Buffer.alloc(64));').catch(() => 'killed'));
      await sleep(150);
      await Promise.all(batch.map((g) => g.kill('SIGKILL')));
      expect(await Promise.all(runs)).toEqual(batch.map(() => 'killed'));
    }

    // Past the lease (1 s) the vanished apps' connections are reclaimed.
    let after = { rss: 0, fds: 0, children: -1 };
    for (let t = 0; t < 100; t++) {
      await sleep(100);
      after = { rss: rssKb(pid), fds: fdCount(pid), children: children(pid) };
      if (after.children === before.children && after.fds <= before.fds) break;
    }
    // Lines a port's guests cause are rate-limited; the rest are counted in
    // a summary every 10 s: count both, once the last summary is out.
    const count = (msg: string) => daemon.logs().reduce((n, l) =>
      n + (l.msg === msg ? 1 : 0) + Number((l.suppressed as Record<string, number> | undefined)?.[msg] ?? 0), 0);
    let opened = 0, closed = 0, expired = 0;
    for (let t = 0; t < 150; t++) {
      [opened, closed, expired] = [count('connection opened'), count('connection closed'), count('connection expired')];
      if (opened === closed + expired) break;
      await sleep(100);
    }
    console.log(`soak: ${opened} connections opened, ${closed} closed, ${expired} expired; daemon RSS ${before.rss} -> ${after.rss} kB, fds ${before.fds} -> ${after.fds}, executors ${before.children} -> ${after.children}`);
    expect(after.children).toBe(before.children);
    expect(after.fds).toBeLessThanOrEqual(before.fds);
    expect(opened).toBe(closed + expired);
    expect(expired).toBeGreaterThanOrEqual(KILLED);
    expect(after.rss - before.rss).toBeLessThan(RSS_GROWTH_BOUND_KB);
  }, 600_000);
});
