// An attacker on one guest port, against the real daemon over real socat
// ptys and a real SoftHSM2 with two tokens: each hole a hostile guest could
// reach (issue 9) tried the way an attacker would, and shown closed. Ports:
// RO (read-only), BETA (sees token "beta" only), MECH (a mechanism
// allow-list), FREE (unrestricted) and PROBE, where an honest app measures its
// latency while the others are attacked. Every exhaustion attack measures the
// daemon's and the executors' memory before, at the peak and after, and the
// PROBE port's latency meanwhile; those figures go to .tmp/attack-report.json
// and the output, and are never asserted as timings. The bounds themselves are
// asserted: memory, executors, log bytes.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrame, FrameType } from '../../src/protocol/frame.js';
import { pack, unpack } from '../../src/protocol/msgpack.js';
import { callId } from '../../src/protocol/table.js';
import { REPO_ROOT, startDaemon, type Daemon } from '../helpers/daemon.js';
import { startGuest, type Guest } from '../helpers/guest.js';
import * as pk from '../helpers/pkcs11.js';
import { MemoryWatch, sample, type MemorySample } from '../helpers/proc-mem.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';
import { RawLine, takeReq, type Session } from '../helpers/raw-line.js';
import { createToken, type SoftHsmToken } from '../helpers/softhsm.js';
import { aesKeyGen, dataObject, rsaKeyPair, wire } from '../helpers/templates.js';

const execFileP = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MiB = 1024 * 1024;
const ID = (name: string) => callId(name);
const PIN = 'Us3r-PIN-4711';
const SO_PIN = 'so-PIN-0815';

const LIMITS = {
  maxConnectionsPerPort: 4,
  maxExecutors: 16,
  executorMemoryMiB: 48,
  stuckLineMs: 2000,
  logLinesPerSecond: 20,
  badKeyAnswersPerSecond: 10,
  // socat's relay couples the two directions of a pty pair: once a guest stops
  // reading, socat blocks writing to it and stops forwarding the guest's own
  // requests too, after a few KiB. Only the answers to the requests that got
  // through can pile up (three of 1 MiB here), so the bound is set below that.
  maxQueuedOutputBytes: 1024 * 1024,
};

let token: SoftHsmToken;
let daemon: Daemon;
const pty: Record<'RO' | 'BETA' | 'MECH' | 'FREE' | 'PROBE', PtyPair> = {} as never;
let probe: Guest;
const cleanups: Array<() => Promise<unknown> | unknown> = [];
const report: Array<Record<string, unknown>> = [];

beforeAll(async () => {
  token = await createToken({ label: 'alpha', soPin: SO_PIN, pin: PIN });
  cleanups.push(() => token.cleanup());
  await execFileP('softhsm2-util', ['--init-token', '--free', '--label', 'beta', '--so-pin', SO_PIN, '--pin', PIN], { env: { ...process.env, ...token.env } });
  for (const k of Object.keys({ RO: 0, BETA: 0, MECH: 0, FREE: 0, PROBE: 0 }) as Array<keyof typeof pty>) {
    pty[k] = await createPtyPair();
    cleanups.push(() => pty[k].kill());
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'p11b-attacks-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({
    ports: [
      { path: pty.RO.serverPath, readOnly: true },
      { path: pty.BETA.serverPath, tokens: [{ label: 'beta' }] },
      { path: pty.MECH.serverPath, mechanisms: ['CKM_SHA256', 'CKM_AES_KEY_GEN', 'CKM_AES_GCM'] },
      { path: pty.FREE.serverPath },
      { path: pty.PROBE.serverPath },
    ],
    limits: LIMITS,
    // Seen in about one run in three of test 2: a call of the never-reading
    // guest that never answers (not yet understood; see the closing note of
    // issue 9). The daemon's time limit on a call is the defence against a
    // hung module call; 30 s leaves room for test 3's RSA-4096 generation.
    maxCallSeconds: 30,
  }));
  daemon = await startDaemon({
    module: token.module,
    ports: Object.values(pty).map((p) => p.serverPath),
    env: token.env,
    // info, the default level: what an attacker can make the daemon log
    args: ['--config', config, '--log-level', 'info'],
  });
  cleanups.push(() => daemon.stop());
  probe = await startGuest({ port: pty.PROBE.guestPath });
  cleanups.push(() => probe.kill());
  await probe.connect();
  await probe.call('C_Initialize');
  await probe.eval(`
    const [slot] = await c.C_GetSlotList(true);
    state.s = await c.C_OpenSession(slot, ${pk.CKF_SERIAL_SESSION});
  `);
}, 120_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => {});
  if (report.length) {
    mkdirSync(path.join(REPO_ROOT, '.tmp'), { recursive: true });
    writeFileSync(path.join(REPO_ROOT, '.tmp', 'attack-report.json'), JSON.stringify(report, null, 1));
    console.log(['attack report (daemon RSS and executor PSS in MiB; PROBE port C_GenerateRandom(32) latency in ms):',
      ...report.map((r) => `  ${JSON.stringify(r)}`)].join('\n'));
  }
});

/** The honest app on PROBE calls C_GenerateRandom(32) back to back for ms: its latencies. */
function measureProbe(ms: number): Promise<number[]> {
  return probe.eval(`
    const lat = [];
    const end = Date.now() + ${ms};
    while (Date.now() < end) {
      const t = process.hrtime.bigint();
      await c.C_GenerateRandom(state.s, Buffer.alloc(32));
      lat.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    return lat;
  `) as Promise<number[]>;
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? Number(s[Math.min(s.length - 1, Math.floor(p * s.length))]!.toFixed(2)) : NaN;
};
const mib = (k: number) => Number((k / 1024).toFixed(1));

function record(attack: string, m: { before: MemorySample; peak: MemorySample; after: MemorySample }, lat: number[], extra: Record<string, unknown> = {}) {
  const r = {
    attack,
    daemonRss: { before: mib(m.before.daemonRssKiB), peak: mib(m.peak.daemonRssKiB), after: mib(m.after.daemonRssKiB) },
    executors: { before: m.before.executors, peak: m.peak.executors, after: m.after.executors },
    largestExecutorPss: mib(m.peak.largestExecutorPssKiB),
    allExecutorsPssPeak: mib(m.peak.executorsPssKiB),
    probe: { calls: lat.length, p50: pct(lat, 0.5), p99: pct(lat, 0.99) },
    ...extra,
  };
  report.push(r);
  return r;
}

/** One raw-frame reader per port: two readers of one pty would take each other's bytes. */
const lines = new Map<PtyPair, RawLine>();
async function lineOf(port: PtyPair): Promise<RawLine> {
  let line = lines.get(port);
  if (!line) {
    line = await RawLine.open(port.guestPath);
    lines.set(port, line);
    cleanups.push(() => line!.close());
  }
  return line;
}
async function closeLine(port: PtyPair): Promise<void> {
  await lines.get(port)?.close();
  lines.delete(port);
}

/** A raw-frame guest connection on a port with an initialized module instance and a session on its first token. */
async function attacker(port: PtyPair, flags = pk.CKF_SERIAL_SESSION): Promise<{ line: RawLine; s: Session; h: number; slot: number }> {
  const line = await lineOf(port);
  const s = await line.hello();
  expect(await line.call(s, [ID('C_Initialize')])).toEqual([0]);
  const slots = await line.call(s, [ID('C_GetSlotList'), true, true]) as [number, number[]];
  const slot = slots[1][0]!;
  const open = await line.call(s, [ID('C_OpenSession'), slot, flags]) as [number, number];
  expect(open[0]).toBe(0);
  return { line, s, h: open[1], slot };
}

const logCount = (msg: string) => daemon.logs().filter((r) => r.msg === msg).length;

describe('1. a guest cannot make the module follow its pointers', () => {
  it('raw byte images of pointer-holding parameters and attributes are refused on the read-only port, the module instance unharmed', async () => {
    const { line, s, h } = await attacker(pty.RO);
    const gen = await line.call(s, [ID('C_GenerateKey'), h, [pk.CKM_AES_KEY_GEN], wire(aesKeyGen({ private: false, uses: ['encrypt', 'decrypt', 'derive'] }))]) as [number, number];
    expect(gen[0]).toBe(0);
    const key = gen[1];
    // pointers an attacker would aim at the executor's memory (with ASLR off: the environment, the heap)
    const image = (n: number) => Buffer.concat(Array.from({ length: n / 8 }, () => Buffer.from('0000555555559000', 'hex')));
    const pointerish = [
      ['C_EncryptInit', [ID('C_EncryptInit'), h, [pk.CKM_AES_GCM, image(48)], key], pk.CKR_MECHANISM_PARAM_INVALID],
      ['C_DecryptInit', [ID('C_DecryptInit'), h, [pk.CKM_AES_GCM, image(48)], key], pk.CKR_MECHANISM_PARAM_INVALID],
      ['ECDH1_DERIVE', [ID('C_DeriveKey'), h, [pk.CKM_ECDH1_DERIVE, image(40)], key, [[pk.CKA_TOKEN, false]]], pk.CKR_MECHANISM_PARAM_INVALID],
      ['AES_ECB_ENCRYPT_DATA', [ID('C_DeriveKey'), h, [pk.CKM_AES_ECB_ENCRYPT_DATA, image(16)], key, [[pk.CKA_TOKEN, false]]], pk.CKR_MECHANISM_PARAM_INVALID],
      ['AES_CBC_ENCRYPT_DATA', [ID('C_DeriveKey'), h, [pk.CKM_AES_CBC_ENCRYPT_DATA, image(32)], key, [[pk.CKA_TOKEN, false]]], pk.CKR_MECHANISM_PARAM_INVALID],
      ['WRAP_TEMPLATE in C_CreateObject', [ID('C_CreateObject'), h, [[pk.CKA_CLASS, pk.CKO_SECRET_KEY], [pk.CKA_KEY_TYPE, pk.CKK_AES], [pk.CKA_VALUE, Buffer.alloc(32, 1)], [pk.CKA_WRAP_TEMPLATE, image(48)]]], pk.CKR_ATTRIBUTE_VALUE_INVALID],
      ['UNWRAP_TEMPLATE in C_CreateObject', [ID('C_CreateObject'), h, [[pk.CKA_CLASS, pk.CKO_SECRET_KEY], [pk.CKA_KEY_TYPE, pk.CKK_AES], [pk.CKA_VALUE, Buffer.alloc(32, 1)], [pk.CKA_UNWRAP_TEMPLATE, image(48)]]], pk.CKR_ATTRIBUTE_VALUE_INVALID],
      ['WRAP_TEMPLATE in C_GenerateKey', [ID('C_GenerateKey'), h, [pk.CKM_AES_KEY_GEN], [[pk.CKA_VALUE_LEN, 32], [pk.CKA_WRAP_TEMPLATE, image(24)]]], pk.CKR_ATTRIBUTE_VALUE_INVALID],
    ] as const;
    const pid = Number(daemon.logs().filter((r) => r.msg === 'connection opened' && r.port === pty.RO.serverPath).at(-1)!.executorPid);
    for (const [what, payload, want] of pointerish) {
      expect(await line.call(s, [...payload]), what).toEqual([want]);
      // the same module instance, the same session: nothing crashed
      expect((await line.call(s, [ID('C_GetSessionInfo'), h]) as number[])[0], `after ${what}`).toBe(0);
    }
    expect(existsSync(`/proc/${pid}`)).toBe(true);
    // the structured forms still work: AES-GCM through its fields, a wrap template as a template
    const gcm = [pk.CKM_AES_GCM, [Buffer.alloc(12, 7), 96, Buffer.from('aad'), 128]];
    expect(await line.call(s, [ID('C_EncryptInit'), h, gcm, key])).toEqual([0]);
    const ct = await line.call(s, [ID('C_Encrypt'), h, Buffer.from('attack at dawn'), 64]) as [number, Buffer];
    expect(ct[0]).toBe(0);
    expect(ct[1].length).toBe(14 + 16);
    const withTemplate = await line.call(s, [ID('C_GenerateKey'), h, [pk.CKM_AES_KEY_GEN],
      [...wire(aesKeyGen({ private: false, uses: [] })), [pk.CKA_WRAP_TEMPLATE, [[pk.CKA_KEY_TYPE, pk.CKK_AES]]]]]) as number[];
    expect(withTemplate[0]).toBe(0);
    await line.bye(s);
  });

  it('CKA_TOKEN true in any encoding but a boolean never passes the read-only check: the value is refused as invalid', async () => {
    const { line, s, h } = await attacker(pty.RO);
    for (const value of [1, [1], Buffer.from([1]), 0xffffffffffffffffn]) {
      expect(await line.call(s, [ID('C_CreateObject'), h, [[pk.CKA_CLASS, pk.CKO_DATA], [pk.CKA_TOKEN, value]]])).toEqual([pk.CKR_ATTRIBUTE_VALUE_INVALID]);
    }
    expect(await line.call(s, [ID('C_CreateObject'), h, [[pk.CKA_CLASS, pk.CKO_DATA], [pk.CKA_TOKEN, true]]])).toEqual([pk.CKR_TOKEN_WRITE_PROTECTED]);
    await line.bye(s);
  });
});

describe('2-4. what a guest can make the daemon and the executors hold is bounded', () => {
  it('2. a guest that never reads: output queued for its port stays bounded, and the port recovers', { timeout: 150_000 }, async () => {
    const conns = [await attacker(pty.FREE), await attacker(pty.FREE), await attacker(pty.FREE)];
    const watch = new MemoryWatch(daemon.pid);
    const probing = measureProbe(8000);
    // stop reading: the daemon's answers pile up behind a line that takes nothing
    conns[0]!.line.link.pause();
    try {
      let sent = 0;
      const end = Date.now() + 8000;
      // as many requests as the attack in the issue sent (46 KB): the backlog
      // the port works off once it is read again stays bounded
      await Promise.all(conns.map(async (a) => {
        for (let i = 0; i < 600 && Date.now() < end; i++) {
          const req = takeReq(a.s);
          const write = a.line.write(encodeFrame(FrameType.Call, a.s.conn, req, pack([ID('C_GenerateRandom'), a.h, MiB - 64]), a.s.key)).catch(() => undefined);
          // a write that blocks means the daemon stopped reading this port: wait, but not past the end
          await Promise.race([write, sleep(Math.max(0, end - Date.now()))]);
          sent++;
        }
      }));
      const m = watch.stop();
      const lat = await probing;
      const r = record('2. never-reading guest, 3 connections, C_GenerateRandom(1 MiB) requests', m, lat, { requests: sent });
      expect(logCount('output not draining: port stops reading until it does')).toBeGreaterThan(0);
      // before: 65 MiB -> 1.5 GiB in 11 s. Now: the queue bound (1 MiB here, twice that for answers) and one kept answer per connection.
      expect(r.daemonRss.peak - r.daemonRss.before).toBeLessThan(120);
      // the stuck line's queue is dropped; then the port serves again
      await daemon.waitForLog((l) => l.msg === 'line takes nothing: queued output dropped' && l.port === pty.FREE.serverPath, 20_000);
      await closeLine(pty.FREE);
      await sleep(500);
      const bye = await lineOf(pty.FREE);
      for (const a of conns) await bye.bye(a.s, 60_000);
      await closeLine(pty.FREE);
      const g = await startGuest({ port: pty.FREE.guestPath });
      cleanups.push(() => g.kill());
      await g.connect({ timeoutMs: 20_000 });
      await g.call('C_Initialize');
      expect((await g.call('C_GetSlotList', true)).length).toBeGreaterThanOrEqual(2);
      await g.call('C_Finalize');
      await g.close();
      await g.exit();
    } finally {
      // a failure above must not leave the shared FREE line paused for the tests after it
      await closeLine(pty.FREE);
    }
  });

  it('3. one call at a time per connection: thousands of requests behind a slow one are refused, not queued', { timeout: 90_000 }, async () => {
    const { line, s, h } = await attacker(pty.FREE);
    const watch = new MemoryWatch(daemon.pid);
    const probing = measureProbe(6000);
    // the slow call: RSA-4096 key generation
    const slowReq = takeReq(s);
    await line.write(encodeFrame(FrameType.Call, s.conn, slowReq, pack([ID('C_GenerateKeyPair'), h, [pk.CKM_RSA_PKCS_KEY_PAIR_GEN],
      ...rsaKeyPair({ bits: 4096, private: false }).map(wire)]), s.key));
    const n = 2000;
    const first = s.req;
    const big = pack([ID('C_GenerateRandom'), h, MiB - 64]);
    for (let i = 0; i < n; i++) await line.write(encodeFrame(FrameType.Call, s.conn, takeReq(s), big, s.key));
    const slow = await line.next(slowReq, s.conn, 120_000);
    expect(slow.type).toBe(FrameType.Result);
    expect((unpack(slow.payload) as number[])[0]).toBe(0);
    const m = watch.stop();
    const lat = await probing;
    // every request sent while the key generation ran was refused with an ERROR, never run
    let refused = 0;
    for (let r = first; r < first + n; r++) {
      const i = line.seen.findIndex((f) => f.req === r && f.conn === s.conn && f.type === FrameType.Error);
      if (i >= 0) refused++;
    }
    const ran = line.seen.filter((f) => f.conn === s.conn && f.req >= first && f.type === FrameType.Result).length;
    const rec = record('3. 2000 CALLs of C_GenerateRandom(1 MiB) behind an RSA-4096 key generation', m, lat, { refused, ran });
    expect(refused).toBeGreaterThan(n / 2);
    expect(rec.daemonRss.peak - rec.daemonRss.before).toBeLessThan(64); // before: 61 MiB -> 1.5 GiB
    // and the connection goes on
    line.clear();
    expect((await line.call(s, [ID('C_GetSessionInfo'), h]) as number[])[0]).toBe(0);
    await line.bye(s);
  });

  it('4. an executor cannot grow past its memory limit (1 MiB session objects in a loop, read-only port, no login)', { timeout: 120_000 }, async () => {
    const a = await attacker(pty.RO);
    const b = await attacker(pty.RO);
    const watch = new MemoryWatch(daemon.pid);
    const probing = measureProbe(8000);
    const rvs = new Map<number, number>();
    await Promise.all([a, b].map(async ({ line, s, h }) => {
      for (let i = 0; i < 120; i++) {
        const rv = await line.rv(s, [ID('C_CreateObject'), h, wire(dataObject({ private: false, value: Buffer.alloc(1000 * 1024, i) }))], 30_000);
        rvs.set(rv, (rvs.get(rv) ?? 0) + 1);
        if (rv !== 0) break;
      }
    }));
    const m = watch.stop();
    const lat = await probing;
    const rec = record('4. 1 MiB session objects until refused, 2 connections on the read-only port', m, lat, { answers: Object.fromEntries(rvs) });
    for (const { line, s } of [a, b]) await line.bye(s);
    // the module ran out of its 48 MiB data segment (or the executor died of it): either way, no more
    expect([...rvs.keys()].some((rv) => rv !== 0)).toBe(true);
    expect(rec.largestExecutorPss).toBeLessThan(LIMITS.executorMemoryMiB + 32); // before: 700 MiB
    expect(daemon.exited()).toBeUndefined();
  });
});

describe('5. a connection cannot be taken over by another process on the port', () => {
  it('a replayed HELLO, guessed ids and wrong keys get nothing; 16 wrong keys end the victim\'s connection rather than let a guess through', { timeout: 60_000 }, async () => {
    const line = await lineOf(pty.BETA);
    // the victim: logged in on token beta
    const victim = await line.hello();
    expect(await line.call(victim, [ID('C_Initialize')])).toEqual([0]);
    const [, slots] = await line.call(victim, [ID('C_GetSlotList'), true, true]) as [number, number[]];
    const [, h] = await line.call(victim, [ID('C_OpenSession'), slots[0], pk.CKF_SERIAL_SESSION]) as [number, number];
    expect(await line.call(victim, [ID('C_Login'), h, pk.CKU_USER, Buffer.from(PIN)])).toEqual([0]);

    // the attacker knows the victim's connection id and HELLO nonce
    // 1. a HELLO repeating the nonce does not hand out the connection
    const replay = await line.hello({ nonce: victim.nonce }).then(() => 'HELLO_OK', (e: Error) => e.message);
    expect(replay).toMatch(/nonce opened a connection that is in use/);
    // 2. calls with the victim's id and request ids ahead of it, without the key: as for no connection
    const unknownReply = async (conn: number, key: number, type: number, payload?: Buffer) => {
      const req = 0x7f00 + Math.floor(Math.random() * 200);
      await line.write(encodeFrame(type, conn, req, payload, key));
      const f = await line.next(req, conn >>> 0);
      return { type: f.type, payload: (f.payload.length ? unpack(f.payload) : {}) as { rv: number; message: string } };
    };
    const getInfo = pack([ID('C_GetSessionInfo'), h]);
    const other = victim.conn === 255 ? 254 : victim.conn + 1; // a connection that does not exist
    // (the next connection opened gets another id, so `other` stays unknown)
    const next = await line.hello();
    expect(next.conn).not.toBe(other);
    await line.bye(next);
    const wrong = await unknownReply(victim.conn, (victim.key ^ 0x5a5a5a5a) >>> 0, FrameType.Call, getInfo);
    const none = await unknownReply(other, 12345, FrameType.Call, getInfo);
    expect(wrong.type).toBe(FrameType.Error);
    expect(wrong.payload.rv).toBe(pk.CKR_DEVICE_REMOVED);
    // the same answer as for a connection that does not exist: nothing to tell a right id from a wrong one
    expect(wrong.payload.message.replace(String(victim.conn), 'N')).toBe(none.payload.message.replace(String(other), 'N'));
    expect((await unknownReply(victim.conn, 0, FrameType.Ping)).payload.rv).toBe(pk.CKR_DEVICE_REMOVED);
    // a BYE without the key ends nothing
    const bye = await unknownReply(victim.conn, victim.key + 1, FrameType.Bye);
    expect(bye.type).toBe(FrameType.ByeOk);
    // 3. the victim's next request runs (it was not made stale by the attacker's ids), still logged in
    const info = await line.call(victim, [ID('C_GetSessionInfo'), h]) as [number, number[]];
    expect(info[0]).toBe(0);
    expect(info[1][1]).toBe(pk.CKS_RO_USER_FUNCTIONS);
    // 4. guessing fast: wrong keys are logged, and answered only up to the port's budget
    const before = line.seen.length;
    const t0 = Date.now();
    for (let i = 0; i < 300; i++) await line.write(encodeFrame(FrameType.Ping, other, 0x1000 + i, undefined, i + 1));
    await sleep(1500);
    const seconds = (Date.now() - t0) / 1000;
    const answered = line.seen.slice(before).filter((f) => f.req >= 0x1000 && f.req < 0x1000 + 300).length;
    expect(answered).toBeLessThanOrEqual(Math.ceil(seconds + 1) * LIMITS.badKeyAnswersPerSecond);
    expect(daemon.logs().some((r) => r.msg === 'request with a wrong connection key refused' && r.conn === victim.conn)).toBe(true);
    // the victim is still fine
    expect((await line.call(victim, [ID('C_GetSessionInfo'), h]) as number[])[0]).toBe(0);
    report.push({ attack: '5. 300 PINGs with guessed keys for a connection id', answered, seconds: Number(seconds.toFixed(1)) });
    // 5. guessing the victim's key: 16 wrong keys end its connection, so no guess gets further
    for (let i = 0; i < 16; i++) await line.write(encodeFrame(FrameType.Ping, victim.conn, 0x2000 + i, undefined, (victim.key + 1 + i) >>> 0 || 1));
    await daemon.waitForLog((r) => r.msg === 'connection closed: 16 requests with a wrong key' && r.conn === victim.conn);
    // the port's budget of refusal answers for this second went to the guesses
    await sleep(1100);
    expect(await line.call(victim, [ID('C_GetSessionInfo'), h])).toMatchObject({ error: { rv: pk.CKR_DEVICE_REMOVED } });
  });
});

describe('6. executors count until they exit, and a busy port does not starve the others', () => {
  it('a connection closed while its executor still works keeps its place until the executor has exited', { timeout: 60_000 }, async () => {
    // a daemon of its own with room for two apps
    const p = await createPtyPair();
    cleanups.push(() => p.kill());
    const dir = mkdtempSync(path.join(os.tmpdir(), 'p11b-attacks-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const config = path.join(dir, 'config.json');
    // calls longer than 3 s are taken for hung: their executor is killed
    writeFileSync(config, JSON.stringify({ ports: [{ path: p.serverPath }], maxCallSeconds: 3, limits: { maxConnectionsPerPort: 2, runningCallsPerPort: 2 } }));
    const d = await startDaemon({ module: token.module, ports: [p.serverPath], env: token.env, args: ['--config', config, '--log-level', 'info'] });
    cleanups.push(() => d.stop());
    const line = await lineOf(p);
    const busy = async () => {
      const s = await line.hello();
      await line.call(s, [ID('C_Initialize')]);
      const [, slots] = await line.call(s, [ID('C_GetSlotList'), true, true]) as [number, number[]];
      const [, h] = await line.call(s, [ID('C_OpenSession'), slots[0], pk.CKF_SERIAL_SESSION]) as [number, number];
      // 2048-bit DH domain parameters take SoftHSM2 seconds; BYE at once: the
      // executor runs the call to its end (or its time limit) before it exits
      await line.write(encodeFrame(FrameType.Call, s.conn, takeReq(s), pack([ID('C_GenerateKey'), h, [pk.CKM_DH_PKCS_PARAMETER_GEN], [[pk.CKA_PRIME_BITS, 2048], [pk.CKA_TOKEN, false], [pk.CKA_PRIVATE, false]]]), s.key));
      await line.write(encodeFrame(FrameType.Bye, s.conn, takeReq(s), undefined, s.key));
      await sleep(200);
    };
    await busy();
    await busy();
    // both connections ended, both executors still run: no room for a third app
    const executors = sample(d.pid).executors;
    const third = await line.hello().then(() => 'HELLO_OK', (e: Error) => e.message);
    expect(executors, d.output().split('\n').slice(-12).join('\n')).toBe(2);
    expect(third).toMatch(/too many connections on .* \(2 of 2\)/);
    await d.waitForLog((r) => r.msg === 'connection refused: too many connections', 5000);
    // the calls hit their 3 s limit, the executors are killed; then there is room again
    for (let i = 0; i < 100 && sample(d.pid).executors > 0; i++) await sleep(100);
    expect(sample(d.pid).executors).toBe(0);
    expect(d.logs().filter((r) => r.msg === 'call exceeded the time limit; terminating the module instance')).toHaveLength(2);
    const s = await line.hello();
    expect(await line.call(s, [ID('C_Initialize')])).toEqual([0]);
    await line.bye(s);
  });

  it('key generations in a loop on one port: executors stay within the limit, the other port keeps being served', { timeout: 120_000 }, async () => {
    const line = await lineOf(pty.FREE);
    const watch = new MemoryWatch(daemon.pid, 50);
    const probing = measureProbe(10_000);
    let opened = 0;
    let refused = 0;
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      let s: Session;
      try {
        s = await line.hello();
      } catch (e) {
        expect(String(e)).toMatch(/too many connections/);
        refused++;
        await sleep(200);
        continue;
      }
      opened++;
      await line.call(s, [ID('C_Initialize')]);
      const [, slots] = await line.call(s, [ID('C_GetSlotList'), true, true]) as [number, number[]];
      const [, h] = await line.call(s, [ID('C_OpenSession'), slots[0], pk.CKF_SERIAL_SESSION]) as [number, number];
      await line.write(encodeFrame(FrameType.Call, s.conn, takeReq(s), pack([ID('C_GenerateKeyPair'), h, [pk.CKM_RSA_PKCS_KEY_PAIR_GEN],
        ...rsaKeyPair({ bits: 4096, private: false }).map(wire)]), s.key));
      await line.write(encodeFrame(FrameType.Bye, s.conn, takeReq(s), undefined, s.key));
    }
    const m = watch.stop();
    const lat = await probing;
    record('6. HELLO, RSA-4096 key generation, BYE in a loop for 10 s on one port', m, lat, { opened, refused });
    // before: 42-43 executors with a limit of 32. Now at most the port's limit
    // on top of those of the other ports (the PROBE app's, ...), which this loop does not touch.
    expect(m.peak.executors - m.before.executors).toBeLessThanOrEqual(LIMITS.maxConnectionsPerPort);
    await closeLine(pty.FREE);
    await sleep(6000);
  });
});

describe('7. a guest cannot flood the log', () => {
  it('policy denials and malformed calls at full speed write a bounded number of log lines', { timeout: 60_000 }, async () => {
    const { line, s, h } = await attacker(pty.MECH);
    const logBytes = () => daemon.output().length;
    const before = logBytes();
    const t0 = Date.now();
    let sentBytes = 0;
    const denied = pack([ID('C_DigestInit'), h, [pk.CKM_MD5]]);
    const malformed = Buffer.from([0x92, ID('C_DigestInit'), 0xc1]);
    for (let i = 0; i < 1000; i++) {
      const payload = i % 2 ? denied : malformed;
      const f = encodeFrame(FrameType.Call, s.conn, takeReq(s), payload, s.key);
      sentBytes += f.length;
      await line.write(f);
      // read the answers as they come (they are answered one at a time)
      if (i % 50 === 49) await line.next(s.req - 1, s.conn, 20_000);
    }
    const seconds = (Date.now() - t0) / 1000;
    // the summary of what was over the rate comes within 10 s
    await daemon.waitForLog((r) => r.msg === 'log lines over the rate limit suppressed' && r.port === pty.MECH.serverPath, 15_000);
    const written = logBytes() - before;
    const ratio = written / sentBytes;
    report.push({ attack: '7. 500 denied and 500 malformed CALLs', seconds: Number(seconds.toFixed(1)), guestBytes: sentBytes, logBytes: written, logBytesPerGuestByte: Number(ratio.toFixed(3)) });
    // before: 10.7 log bytes per byte sent. The bound: logLinesPerSecond lines a second, and a summary.
    expect(ratio).toBeLessThan(0.5);
  });
});

describe('8. smaller holes', () => {
  it('C_InitToken on a free slot is off unless the port allows it', async () => {
    const { line, s } = await attacker(pty.FREE);
    const [, all] = await line.call(s, [ID('C_GetSlotList'), false, true]) as [number, number[]];
    // SoftHSM2 keeps its free slot last
    expect(await line.call(s, [ID('C_InitToken'), all.at(-1)!, Buffer.from(SO_PIN), Buffer.from('intruder'.padEnd(32))])).toEqual([pk.CKR_TOKEN_WRITE_PROTECTED]);
    await daemon.waitForLog((r) => r.msg === 'call denied by policy' && r.fn === 'C_InitToken', 5000);
    await line.bye(s);
  });

  it('a HELLO asking for a payload limit below the protocol minimum is refused with a reason', async () => {
    const line = await lineOf(pty.FREE);
    const e = await line.hello({ maxPayload: 63 }).then(() => '', (err: Error) => err.message);
    expect(e).toMatch(/maxPayload must be at least 1024/);
  });

  it('a client name with control and bidi characters is logged escaped', async () => {
    const line = await lineOf(pty.FREE);
    const s = await line.hello({ client: 'evil\u202Egpj.exe\u0007' });
    await line.bye(s);
    expect(daemon.output()).not.toContain('\u202E');
    await daemon.waitForLog((r) => r.msg === 'connection opened' && r.client === 'evil\\u{202e}gpj.exe\\u{7}', 5000);
  });
});

describe('8. smaller holes, on a daemon of their own', () => {
  let d: Daemon;
  let p: PtyPair;
  beforeAll(async () => {
    p = await createPtyPair();
    cleanups.push(() => p.kill());
    // few file descriptors (about 40 executors' worth, 3 each: EMFILE comes
    // before the connection limit; 100 was too few for Node to load its
    // modules, which it opens in parallel, on a cold disk cache), a small payload limit, and an executor that talks on stderr
    const dir = mkdtempSync(path.join(os.tmpdir(), 'p11b-attacks-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const config = path.join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ ports: [{ path: p.serverPath }], limits: { maxConnectionsPerPort: 60, maxExecutors: 60 } }));
    d = await startDaemon({
      module: token.module, ports: [p.serverPath], env: { ...token.env, P11BRIDGE_DEBUG: '1' },
      args: ['--config', config, '--max-payload', '4096', '--log-level', 'info'],
      prefix: ['prlimit', '--nofile=160:160', '--'],
    });
    cleanups.push(() => d.stop());
  }, 60_000);

  it('a payload one byte over the limit is refused; one at the limit is read', async () => {
    const line = await lineOf(p);
    const s = await line.hello({ maxPayload: 4096 });
    const at = Buffer.concat([Buffer.from([0x93, ID('C_SeedRandom'), 0x01, 0xc5, 0x0f, 0xfa]), Buffer.alloc(4090, 1)]);
    expect(at.length).toBe(4096);
    const over = Buffer.concat([Buffer.from([0x93, ID('C_SeedRandom'), 0x01, 0xc5, 0x0f, 0xfb]), Buffer.alloc(4091, 1)]);
    expect(await line.rv(s, at)).not.toBe(pk.CKR_ARGUMENTS_BAD);
    const r = await line.call(s, over);
    expect(r).toMatchObject({ error: { rv: pk.CKR_ARGUMENTS_BAD } });
    expect((r as { error: { message: string } }).error.message).toMatch(/exceeds this server's limit of 4096 bytes/);
    await line.bye(s);
  });

  it('what an executor prints goes to the daemon\'s log, never to the guest', async () => {
    const line = await lineOf(p);
    line.clear();
    const seenBefore = line.seen.length;
    const s = await line.hello({ maxPayload: 4096 });
    expect(await line.call(s, [ID('C_Initialize')])).toEqual([0]);
    const pid = Number(d.logs().filter((r) => r.msg === 'connection opened').at(-1)!.executorPid);
    process.kill(pid, 'SIGKILL');
    await d.waitForLog((r) => r.msg === 'executor ended unexpectedly; connection closed' && r.signal === 'SIGKILL');
    await d.waitForLog((r) => r.msg === 'executor stderr' && /p11bridge-exec: sandbox/.test(String(r.line)), 5000);
    const r = await line.call(s, [ID('C_GetInfo')]);
    expect(r).toMatchObject({ error: { rv: pk.CKR_DEVICE_REMOVED } });
    for (const f of line.seen.slice(seenBefore)) expect(f.payload.toString('latin1')).not.toMatch(/p11bridge-exec|sandbox/);
  });

  it('an error on starting an executor (EMFILE) refuses that app only; the daemon and its other apps go on', { timeout: 60_000 }, async () => {
    const line = await lineOf(p);
    const first = await line.hello({ maxPayload: 4096 });
    expect(await line.call(first, [ID('C_Initialize')])).toEqual([0]);
    const opened: Session[] = [];
    let failure = '';
    for (let i = 0; i < 60 && !failure; i++) {
      const s = await line.hello({ maxPayload: 4096 }).catch((e: Error) => ((failure = e.message), undefined));
      if (!s) break;
      opened.push(s);
      const r = await line.call(s, [ID('C_Initialize')]);
      if (!Array.isArray(r)) failure = r.error.message;
    }
    // 160 descriptors run out before 60 executors
    expect(failure).toMatch(/cannot start executor|EMFILE/i);
    expect(d.exited()).toBeUndefined();
    expect((await line.call(first, [ID('C_GetInfo')]) as number[])[0]).toBe(0);
    for (const s of opened) await line.bye(s).catch(() => undefined);
    await sleep(1000);
    const again = await line.hello({ maxPayload: 4096 });
    expect(await line.call(again, [ID('C_Initialize')])).toEqual([0]);
  });
});

describe('9. NULL and an empty template or buffer reach the module as the guest passed them', () => {
  it('through libp11bridge.so, the same answers as from SoftHSM2 directly (pkcs11test CreateCopyDestroyObject)', { timeout: 60_000 }, async () => {
    const prog = path.join(REPO_ROOT, 'native/build/test_null_empty');
    await execFileP('make', ['-s', '-C', path.join(REPO_ROOT, 'native'), 'build/test_null_empty']);
    const direct = await execFileP(prog, [token.module, 'alpha', PIN], { env: { ...process.env, ...token.env } });
    const bridged = await execFileP(prog, [path.join(REPO_ROOT, 'native/build/libp11bridge.so'), 'alpha', PIN],
      { env: { ...process.env, TEC_COMM_PORT: pty.PROBE.guestPath, SOFTHSM2_CONF: '/nonexistent' } });
    expect(direct.stdout).toMatch(/C_CopyObject\(template, 0\) 0x0\n/);
    expect(direct.stdout).toMatch(/C_GenerateRandom\(NULL, 0\) 0x7\n/);
    expect(bridged.stdout).toBe(direct.stdout);
  });
});

describe('the bounds in force', () => {
  it('the daemon reports its executor confinement and limits at start-up', () => {
    const rec = daemon.logs().find((r) => r.msg === 'executor confinement and limits')!;
    expect(rec).toBeDefined();
    expect(String(rec.sandbox)).toMatch(/memory-limit/);
    expect(String(rec.sandbox)).toMatch(/no-new-privileges/);
    expect(rec.maxConnectionsPerPort).toBe(LIMITS.maxConnectionsPerPort);
    expect(sample(daemon.pid).daemonRssKiB).toBeGreaterThan(0);
    expect(readFileSync('/proc/self/status', 'utf8')).toMatch(/VmRSS/);
  });
});
