// Daemon behaviour: several ports at once, several apps per port, tty modes,
// hostile bytes on the line, the raw frame protocol (errors, replays), signals
// and start-up failures. Real daemon, real socat pty pairs, real SoftHSM2.
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_MAIN, REPO_ROOT, startDaemon, type Daemon } from '../helpers/daemon.js';
import { startGuest, type Guest } from '../helpers/guest.js';
import {
  CKA_CLASS, CKA_LABEL, CKA_MODULUS_BITS, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_SHA256, CKO_DATA, CKR_ARGUMENTS_BAD, CKR_DEVICE_REMOVED,
  CKR_FUNCTION_NOT_SUPPORTED, CKR_OBJECT_HANDLE_INVALID, CKR_OK, CKR_SESSION_HANDLE_INVALID, CKS_RW_PUBLIC_SESSION, CKS_RW_USER_FUNCTIONS,
  CKU_USER, RW_SESSION,
} from '../helpers/pkcs11.js';
import { createPtyPair, isCookedEcho, sttyAll, type PtyPair } from '../helpers/pty.js';
import { createToken, SOFTHSM_MODULE, type SoftHsmToken } from '../helpers/softhsm.js';
import { RawLine } from '../helpers/raw-line.js';
import { dataObject, rsaKeyPair, wire } from '../helpers/templates.js';
import { cobsEncodeDelimited } from '../../src/protocol/cobs.js';
import { encodeFrame, FrameType, type Frame } from '../../src/protocol/frame.js';
import { SUPPORTED_VERSIONS } from '../../src/protocol/handshake.js';
import { pack, unpack } from '../../src/protocol/msgpack.js';
import { callByName } from '../../src/protocol/table.js';

const execFileP = promisify(execFile);

// call ids, from proto/protocol.json
const CALLS_USED = ['C_Initialize', 'C_Finalize', 'C_GetInfo', 'C_GetSlotList', 'C_OpenSession', 'C_GetSessionInfo', 'C_CreateObject',
  'C_DestroyObject', 'C_FindObjectsInit', 'C_FindObjects', 'C_FindObjectsFinal', 'C_Digest'] as const;
const ID = Object.fromEntries(CALLS_USED.map((n) => [n, callByName(n).id])) as Record<(typeof CALLS_USED)[number], number>;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const hasFlag = (stty: string, flag: string) => stty.split(/[\s;]+/).includes(flag);

const cleanups: Array<() => Promise<unknown> | unknown> = [];
async function runCleanups(): Promise<void> {
  while (cleanups.length) {
    try {
      await cleanups.pop()!();
    } catch {
      /* keep cleaning */
    }
  }
}

async function findSlot(g: Guest, label: string): Promise<Buffer> {
  const slots: Buffer[] = await g.call('C_GetSlotList', true);
  for (const sl of slots) {
    const ti = await g.call('C_GetTokenInfo', sl);
    if (String(ti.label).trim() === label) return sl;
  }
  throw new Error(`no slot with token ${label}`);
}

let token: SoftHsmToken;
let ptyA: PtyPair;
let ptyB: PtyPair;
let ptyRaw: PtyPair;
let daemon: Daemon;
let gA: Guest;
let gB: Guest;
let slot: Buffer;

beforeAll(async () => {
  token = await createToken({ label: 'daemon-token' });
  cleanups.push(() => token.cleanup());
  ptyA = await createPtyPair();
  cleanups.push(() => ptyA.kill());
  ptyB = await createPtyPair();
  cleanups.push(() => ptyB.kill());
  ptyRaw = await createPtyPair();
  cleanups.push(() => ptyRaw.kill());
  daemon = await startDaemon({ module: token.module, ports: [ptyA.serverPath, ptyB.serverPath, ptyRaw.serverPath], env: token.env });
  cleanups.push(() => daemon.stop());
  gA = await startGuest({ port: ptyA.guestPath });
  cleanups.push(() => gA.kill());
  gB = await startGuest({ port: ptyB.guestPath });
  cleanups.push(() => gB.kill());
});

afterAll(async () => {
  await runCleanups();
});

describe('one daemon, several ports', () => {
  let sA: Buffer;
  let sB: Buffer;

  it('serves two ports at once, a guest on each', async () => {
    expect(daemon.logs().find((r) => r.msg === 'serving')?.ports).toEqual([ptyA.serverPath, ptyB.serverPath, ptyRaw.serverPath]);
    await Promise.all([gA.connect(), gB.connect()]);
    await Promise.all([gA.call('C_Initialize'), gB.call('C_Initialize')]);
    slot = await findSlot(gA, token.label);
    expect(await findSlot(gB, token.label)).toEqual(slot);
    sA = await gA.call('C_OpenSession', slot, RW_SESSION);
    sB = await gB.call('C_OpenSession', slot, RW_SESSION);
    const [ra, rb] = await Promise.all([gA.call('C_GenerateRandom', sA, Buffer.alloc(32)), gB.call('C_GenerateRandom', sB, Buffer.alloc(48))]);
    expect(ra.length).toBe(32);
    expect(rb.length).toBe(48);
    const info = await gA.call('C_GetInfo');
    expect(info.manufacturerID.trim()).toBe('SoftHSM');
  });

  it('a slow RSA-4096 key generation on one port does not hold up the other port', async () => {
    const order: string[] = [];
    const keygen = gA
      .call('C_GenerateKeyPair', sA, { mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN }, ...rsaKeyPair({ bits: 4096, private: false }))
      .then((kp) => {
        order.push('keygen');
        return kp;
      });
    // let the keygen request reach the daemon first (not a timing assertion)
    await sleep(200);
    for (let i = 0; i < 20; i++) {
      const r: Buffer = await gB.call('C_GenerateRandom', sB, Buffer.alloc(16 + i));
      expect(r.length).toBe(16 + i);
    }
    order.push('random x20');
    const kp = await keygen;
    expect(Buffer.isBuffer(kp.publicKey)).toBe(true);
    expect(Buffer.isBuffer(kp.privateKey)).toBe(true);
    expect(order).toEqual(['random x20', 'keygen']);
    const [attr] = await gA.call('C_GetAttributeValue', sA, kp.publicKey, [{ type: CKA_MODULUS_BITS }]);
    expect(Number((attr.value as Buffer).readBigUInt64LE(0))).toBe(4096);
  });

  it('both ends of a pty that starts cooked with echo are switched to raw (-icanon -echo)', async () => {
    // createPtyPair verified icanon+echo on both ends before the daemon and client opened them.
    for (const p of [ptyA.serverPath, ptyA.guestPath, ptyB.serverPath, ptyB.guestPath]) {
      const out = await sttyAll(p);
      expect(hasFlag(out, '-icanon'), `${p}: ${out}`).toBe(true);
      expect(hasFlag(out, '-echo'), `${p}: ${out}`).toBe(true);
      expect(isCookedEcho(out)).toBe(false);
    }
  });
});

describe('two apps (connections) on the same port, in one guest process', () => {
  it('interleaved concurrent calls on both connections all get the right answers', async () => {
    const r = await gB.eval(`
      const port = process.env.TEC_COMM_PORT;
      const a = await Pkcs11Client.connect({ port });
      const b = await Pkcs11Client.connect({ port });
      state.a = a; state.b = b;
      if (a.serverInfo.connection === b.serverInfo.connection) throw new Error('same connection id');
      await Promise.all([a.C_Initialize(), b.C_Initialize()]);
      const slot = Buffer.from('${slot.toString('hex')}', 'hex');
      const sa = [], sb = [];
      for (let i = 0; i < 3; i++) { sa.push(await a.C_OpenSession(slot, ${RW_SESSION})); sb.push(await b.C_OpenSession(slot, ${RW_SESSION})); }
      state.sa = sa; state.sb = sb;
      const chain = async (cl, s, tag) => {
        const out = [];
        for (let i = 0; i < 8; i++) {
          const data = Buffer.from(tag + '/' + i + '/' + 'z'.repeat(i * 41));
          await cl.C_DigestInit(s, { mechanism: ${CKM_SHA256} });
          const digest = await cl.C_Digest(s, data, Buffer.alloc(32));
          const n = 1 + ((i * 53 + tag.length * 7) % 300);
          const rnd = await cl.C_GenerateRandom(s, Buffer.alloc(n));
          out.push({ data, digest, n, got: rnd.length });
        }
        return out;
      };
      const jobs = [];
      for (let k = 0; k < 3; k++) { jobs.push(chain(a, sa[k], 'a' + k)); jobs.push(chain(b, sb[k], 'bb' + k)); }
      // plus a burst of independent calls on both connections
      const burst = [];
      for (let i = 0; i < 30; i++) burst.push((i % 2 ? a : b).C_GenerateRandom((i % 2 ? sa : sb)[0], Buffer.alloc(i + 1)).then((x) => x.length));
      const [chains, lens] = await Promise.all([Promise.all(jobs), Promise.all(burst)]);
      return { chains, lens, conns: [a.serverInfo.connection, b.serverInfo.connection] };
    `);
    expect(r.conns[0]).not.toBe(r.conns[1]);
    expect(r.chains).toHaveLength(6);
    for (const chain of r.chains) {
      expect(chain).toHaveLength(8);
      for (const step of chain) {
        expect(step.digest).toEqual(createHash('sha256').update(step.data).digest());
        expect(step.got).toBe(step.n);
      }
    }
    expect(r.lens).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
  });

  it('a login on one connection does not log in the other; sessions of one are invalid on the other', async () => {
    const r = await gB.eval(`
      const { a, b, sa, sb } = state;
      await a.C_Login(sa[0], ${CKU_USER}, '${token.pin}');
      const stateA = (await a.C_GetSessionInfo(sa[0])).state;
      const stateB = (await b.C_GetSessionInfo(sb[0])).state;
      // sessions only a opens: their handle values were never issued to b
      const extra = [];
      for (let i = 0; i < 3; i++) extra.push(await a.C_OpenSession(Buffer.from('${slot.toString('hex')}', 'hex'), ${RW_SESSION}));
      const num = (h) => Number(h.readBigUInt64LE(0));
      const bHandles = sb.map(num);
      const onlyA = extra.find((h) => !bHandles.includes(num(h)));
      let errB;
      try { await b.C_GetSessionInfo(onlyA); } catch (e) { errB = { code: e.code, message: e.message, name: e.name }; }
      let errClose;
      try { await b.C_CloseSession(onlyA); } catch (e) { errClose = { code: e.code, message: e.message }; }
      const stateOnA = (await a.C_GetSessionInfo(onlyA)).state;
      await a.C_Logout(sa[0]);
      const stateAfterLogout = (await a.C_GetSessionInfo(sa[0])).state;
      await a.close(); await b.close();
      return { stateA, stateB, onlyA: onlyA ? num(onlyA) : null, bHandles, errB, errClose, stateOnA, stateAfterLogout };
    `);
    expect(r.stateA).toBe(CKS_RW_USER_FUNCTIONS);
    expect(r.stateB).toBe(CKS_RW_PUBLIC_SESSION);
    expect(r.onlyA).not.toBeNull();
    expect(r.bHandles).not.toContain(r.onlyA);
    expect(r.errB).toMatchObject({ code: CKR_SESSION_HANDLE_INVALID, name: 'Pkcs11Error' });
    expect(r.errB.message).toMatch(/^CKR_SESSION_HANDLE_INVALID(:|$)/);
    expect(r.errClose).toMatchObject({ code: CKR_SESSION_HANDLE_INVALID });
    // a's session survived b's attempt to close it; a is logged in on all its sessions
    expect(r.stateOnA).toBe(CKS_RW_USER_FUNCTIONS);
    expect(r.stateAfterLogout).toBe(CKS_RW_PUBLIC_SESSION);
    // the guest's own first connection on that port is unaffected
    expect((await gB.call('C_GenerateRandom', await gB.call('C_OpenSession', slot, RW_SESSION), Buffer.alloc(8))).length).toBe(8);
  });
});

describe('raw frames on the line (the test process plays the guest)', () => {
  let line: RawLine;
  beforeAll(async () => {
    line = await RawLine.open(ptyRaw.guestPath);
    cleanups.push(() => line.close());
  });

  const ping = async (req: number) => {
    await line.write(encodeFrame(FrameType.Ping, 0, req));
    const f = await line.next(req);
    expect(f.type).toBe(FrameType.Pong);
  };

  it('survives garbage: random bytes, zeros, 3 MiB without a zero', async () => {
    await ping(101);
    const withZeros = randomBytes(64 * 1024);
    for (let i = 0; i < withZeros.length; i += 97) withZeros[i] = 0;
    await line.write(withZeros);
    const noZero = randomBytes(3 * 1024 * 1024);
    for (let i = 0; i < noZero.length; i++) if (noZero[i] === 0) noZero[i] = 0x5a;
    await line.write(noZero);
    await line.write(Buffer.from([0, 0, 0, 1, 2, 3, 0, 0xff, 0xfe, 0]));
    await line.write(randomBytes(5000));
    // the daemon is still there and still reads this port (the PING starts with 0x00)
    await ping(102);
    expect(daemon.exited()).toBeUndefined();
  });

  it('an oversize frame (valid header, payload > 1 MiB) is answered with ERROR CKR_ARGUMENTS_BAD', async () => {
    const payload = Buffer.alloc(1024 * 1024 + 4096, 0xab);
    await line.write(encodeFrame(FrameType.Call, 0x34, 77, payload));
    const f = await line.next(77, 0x34);
    expect(f.type).toBe(FrameType.Error);
    const e = unpack(f.payload) as { rv: number; message: string };
    expect(e.rv).toBe(CKR_ARGUMENTS_BAD);
    expect(e.message).toMatch(/limit|large|exceeds/i);
    await ping(103);
  });

  it('a frame with an unknown version byte is answered with ERROR mentioning the version', async () => {
    const body = pack([ID.C_GetInfo]);
    // type byte with version 7 in bits 6-4, connection, request: the part of the header every version shares
    const raw = Buffer.alloc(4 + body.length + 4);
    raw[0] = (7 << 4) | (FrameType.Call & 0x0f);
    raw[1] = 0xab;
    raw.writeUInt16BE(55, 2);
    body.copy(raw, 4);
    raw.writeUInt32BE(crc32(raw.subarray(0, 4 + body.length)), 4 + body.length);
    await line.write(cobsEncodeDelimited(raw));
    const f = await line.next(55, 0xab);
    expect(f.type).toBe(FrameType.Error);
    const e = unpack(f.payload) as { rv: number; message: string };
    expect(e.message).toMatch(/version/);
    expect(e.message).toMatch(/7/);
  });

  it('a CALL for an unknown connection id is answered with ERROR CKR_DEVICE_REMOVED', async () => {
    await line.write(encodeFrame(FrameType.Call, 0xde, 9, pack([ID.C_GetInfo])));
    const f = await line.next(9, 0xde);
    expect(f.type).toBe(FrameType.Error);
    const e = unpack(f.payload) as { rv: number; message: string };
    expect(e.rv).toBe(CKR_DEVICE_REMOVED);
    expect(e.message).toMatch(/unknown connection/);
  });

  it('a repeated request id is answered from the server copy, not run again', async () => {
    const nonce = randomInt(1, 0x10000);
    await line.write(encodeFrame(FrameType.Hello, 0, nonce, pack({ versions: SUPPORTED_VERSIONS, nonce, maxPayload: 1024 * 1024, client: 'raw-test/1' })));
    const ok = await line.next(nonce);
    expect(ok.type).toBe(FrameType.HelloOk);
    const conn = ok.conn;
    const { key } = unpack(ok.payload) as { key: number };
    expect(conn).not.toBe(0);

    const call = async (req: number, payload: unknown[]): Promise<{ frame: Frame; value: unknown[] }> => {
      await line.write(encodeFrame(FrameType.Call, conn, req, pack(payload), key));
      const frame = await line.next(req, conn);
      expect(frame.type, JSON.stringify(unpack(frame.payload))).toBe(FrameType.Result);
      return { frame, value: unpack(frame.payload) as unknown[] };
    };
    expect((await call(1, [ID.C_Initialize])).value).toEqual([CKR_OK]);
    const slotNum = Number(slot.readBigUInt64LE(0));
    const open = await call(2, [ID.C_OpenSession, slotNum, RW_SESSION]);
    expect(open.value[0]).toBe(CKR_OK);
    const s = open.value[1] as number;

    const label = Buffer.from(`replay-${nonce}`);
    const create = [ID.C_CreateObject, s, wire(dataObject({ private: false, label, value: Buffer.from('once') }))];
    const first = await call(3, create);
    const second = await call(3, create);
    expect(first.value[0]).toBe(CKR_OK);
    expect(second.frame).toEqual(first.frame);
    expect(Buffer.compare(second.frame.payload, first.frame.payload)).toBe(0);
    expect(encodeFrame(second.frame.type, second.frame.conn, second.frame.req, second.frame.payload)).toEqual(
      encodeFrame(first.frame.type, first.frame.conn, first.frame.req, first.frame.payload),
    );

    expect((await call(4, [ID.C_FindObjectsInit, s, [[CKA_CLASS, CKO_DATA], [CKA_LABEL, label]]])).value).toEqual([CKR_OK]);
    const found = await call(5, [ID.C_FindObjects, s, 10]);
    expect(found.value).toEqual([CKR_OK, [first.value[1]]]);
    expect((await call(6, [ID.C_FindObjectsFinal, s])).value).toEqual([CKR_OK]);

    await line.write(encodeFrame(FrameType.Bye, conn, 7, undefined, key));
    expect((await line.next(7, conn)).type).toBe(FrameType.ByeOk);
  });

  it('after all that, a real client on the same port works', async () => {
    await line.close();
    await sleep(50);
    const g = await startGuest({ port: ptyRaw.guestPath });
    cleanups.push(() => g.kill());
    await g.connect();
    await g.call('C_Initialize');
    const s: Buffer = await g.call('C_OpenSession', slot, RW_SESSION);
    const d: Buffer = await g.call('C_DigestInit', s, { mechanism: CKM_SHA256 }).then(() => g.call('C_Digest', s, Buffer.from('abc'), Buffer.alloc(32)));
    expect(d.toString('hex')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    await g.close();
    expect(daemon.exited()).toBeUndefined();
  });
});

describe('signals', () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal} with a client connected and logged in: exits 0 and logs 'stopped'`, async () => {
      const p = await createPtyPair();
      cleanups.push(() => p.kill());
      for (const path of [p.serverPath, p.guestPath]) expect(isCookedEcho(await sttyAll(path))).toBe(true);
      const d = await startDaemon({ module: token.module, ports: [p.serverPath], env: token.env });
      cleanups.push(() => d.stop('SIGKILL'));
      const g = await startGuest({ port: p.guestPath });
      cleanups.push(() => g.kill());
      await g.connect();
      await g.call('C_Initialize');
      const s: Buffer = await g.call('C_OpenSession', slot, RW_SESSION);
      await g.call('C_Login', s, CKU_USER, token.pin);
      expect((await g.call('C_GetSessionInfo', s)).state).toBe(CKS_RW_USER_FUNCTIONS);

      // stop() sends the signal and SIGKILLs after 10 s: a signal exit would show a hang.
      expect(await d.stop(signal)).toEqual({ code: 0, signal: null });
      expect(d.logs().some((r) => r.msg === 'stopped')).toBe(true);
      expect(d.logs().find((r) => r.msg === 'stopping')?.signal).toBe(signal);
      await g.kill();
      // the daemon and the client have run (and are gone): both ends were switched to raw
      for (const path of [p.serverPath, p.guestPath]) {
        const out = await sttyAll(path);
        expect(hasFlag(out, '-icanon'), `${path}: ${out}`).toBe(true);
        expect(hasFlag(out, '-echo'), `${path}: ${out}`).toBe(true);
      }
      await p.kill();
    });
  }
});

describe('refuses to start', () => {
  const serve = async (args: string[]): Promise<{ code: number | null; stderr: string; stdout: string }> => {
    try {
      const { stdout, stderr } = await execFileP(process.execPath, [CLI_MAIN, 'serve', ...args], {
        cwd: REPO_ROOT,
        env: { ...process.env, ...token.env },
        timeout: 20_000,
      });
      return { code: 0, stdout, stderr };
    } catch (e) {
      const err = e as { code?: number | string; stdout?: string; stderr?: string; killed?: boolean };
      return { code: typeof err.code === 'number' ? err.code : null, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
    }
  };

  it('when the module does not exist', async () => {
    const p = await createPtyPair();
    cleanups.push(() => p.kill());
    const r = await serve(['--module', '/nonexistent/libnothing.so', '--port', p.serverPath]);
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBeNull();
    expect(r.stderr).toContain('/nonexistent/libnothing.so');
    expect(r.stderr).toMatch(/does not exist/);
    await p.kill();
  });

  it('when a port does not exist', async () => {
    const p = await createPtyPair();
    cleanups.push(() => p.kill());
    const r = await serve(['--module', SOFTHSM_MODULE, '--port', p.serverPath, '--port', '/nonexistent/ttyS99']);
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBeNull();
    expect(r.stderr).toContain('/nonexistent/ttyS99');
    expect(r.stderr).toMatch(/does not exist/);
    await p.kill();
  });
});

describe('a hostile guest: malformed payloads inside well-formed frames', () => {
  // Each payload is answered (a RESULT with an error rv, or an ERROR frame),
  // never crashes the daemon or the connection's module instance, and
  // allocates nothing in proportion to a declared length: the frames are
  // small, the declared lengths are 4 GiB. Run on a port without policy (the
  // executor's C decoder reads the payload) and on a port with a mechanism
  // allow-list (the daemon's TypeScript decoder reads it first).
  const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
  const cat = (...parts: Array<Buffer | number[]>) => Buffer.concat(parts.map((p) => Buffer.isBuffer(p) ? p : Buffer.from(p)));

  /** [what, payload, the rv it must get] */
  function hostile(s: number): Array<[string, Buffer, number]> {
    const attrs = Array.from({ length: 100_000 }, (_, i) => [CKA_LABEL, Buffer.from([i & 0xff])]);
    return [
      ['an empty payload', Buffer.alloc(0), CKR_ARGUMENTS_BAD],
      ['a map instead of an array', pack({ call: ID.C_GetInfo }), CKR_ARGUMENTS_BAD],
      ['an unknown call id', pack([250]), CKR_FUNCTION_NOT_SUPPORTED],
      ['a string for a session handle', pack([ID.C_GetSessionInfo, 'one']), CKR_ARGUMENTS_BAD],
      ['a float for a session handle', cat([0x92, ID.C_GetSessionInfo, 0xcb], Buffer.alloc(8, 0x3f)), CKR_ARGUMENTS_BAD],
      ['a negative session handle', pack([ID.C_GetSessionInfo, -1]), CKR_ARGUMENTS_BAD],
      ['a session handle of 2^64-1 (never issued)', cat([0x92, ID.C_GetSessionInfo, 0xcf], Buffer.alloc(8, 0xff)), CKR_SESSION_HANDLE_INVALID],
      ['an object handle never issued', pack([ID.C_DestroyObject, s, 0x7eadbeef]), CKR_OBJECT_HANDLE_INVALID],
      ['too few arguments', pack([ID.C_Digest, s]), CKR_ARGUMENTS_BAD],
      ['trailing bytes after the call', cat(pack([ID.C_GetInfo]), [0xc0, 0xc0]), CKR_ARGUMENTS_BAD],
      ['a msgpack extension type', cat([0x92, ID.C_GetSessionInfo, 0xd4, 0x01, 0x00]), CKR_ARGUMENTS_BAD],
      ['a byte string declaring 4 GiB', cat([0x94, ID.C_Digest, s, 0xc6], u32(0xfffffff0), [1, 2, 3]), CKR_ARGUMENTS_BAD],
      ['a string declaring 4 GiB', cat([0x93, ID.C_CreateObject, s, 0x91, 0x92, 0x03, 0xdb], u32(0xffffffff), [0x41]), CKR_ARGUMENTS_BAD],
      ['an array declaring 4 G elements', cat([0x93, ID.C_CreateObject, s, 0xdd], u32(0xffffffff), [0xc0]), CKR_ARGUMENTS_BAD],
      ['a map declaring 4 G entries', cat([0x93, ID.C_CreateObject, s, 0x91, 0x92, 0x03, 0xdf], u32(0xffffffff)), CKR_ARGUMENTS_BAD],
      ['a template nested 100,000 deep', cat([0x93, ID.C_CreateObject, s], Buffer.alloc(100_000, 0x91), [0xc0]), CKR_ARGUMENTS_BAD],
      ['a template of 100,000 attributes', pack([ID.C_CreateObject, s, attrs]), CKR_ARGUMENTS_BAD],
      ['a call id past the table', cat([0x91, 0xcf], Buffer.alloc(8, 0xff)), CKR_FUNCTION_NOT_SUPPORTED],
    ];
  }

  async function attack(withPolicy: boolean): Promise<void> {
    const p = await createPtyPair();
    cleanups.push(() => p.kill());
    const args: string[] = ['--log-level', 'info'];
    if (withPolicy) {
      const dir = path.join(os.tmpdir(), `p11bridge-hostile-${process.pid}`);
      mkdirSync(dir, { recursive: true });
      const file = path.join(dir, 'config.json');
      writeFileSync(file, JSON.stringify({ ports: [{ path: p.serverPath, mechanisms: ['CKM_SHA256'] }] }));
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      args.push('--config', file);
    }
    const d = await startDaemon({ module: token.module, ports: [p.serverPath], env: token.env, args });
    cleanups.push(() => d.stop());
    const line = await RawLine.open(p.guestPath);
    cleanups.push(() => line.close());
    const nonce = randomInt(1, 0x10000);
    await line.write(encodeFrame(FrameType.Hello, 0, nonce, pack({ versions: SUPPORTED_VERSIONS, nonce, maxPayload: 1024 * 1024, client: 'hostile/1' })));
    const helloOk = await line.next(nonce);
    const conn = helloOk.conn;
    const { key } = unpack(helloOk.payload) as { key: number };
    let req = 0;
    const send = async (payload: Buffer): Promise<{ rv: number; frame: Frame }> => {
      const r = ++req;
      await line.write(encodeFrame(FrameType.Call, conn, r, payload, key));
      const frame = await line.next(r, conn);
      if (frame.type === FrameType.Error) return { rv: (unpack(frame.payload) as { rv: number }).rv, frame };
      expect(frame.type).toBe(FrameType.Result);
      return { rv: (unpack(frame.payload) as number[])[0]!, frame };
    };
    expect((await send(pack([ID.C_Initialize]))).rv).toBe(CKR_OK);
    const slots = await send(pack([ID.C_GetSlotList, true, 8]));
    expect(slots.rv).toBe(CKR_OK);
    const slotNum = (unpack(slots.frame.payload) as [number, number[]])[1][0]!;
    const open = await send(pack([ID.C_OpenSession, slotNum, RW_SESSION]));
    expect(open.rv).toBe(CKR_OK);
    const s = (unpack(open.frame.payload) as number[])[1]!;
    const rssBefore = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${d.pid}/status`, 'utf8'))![1]);
    for (const [what, payload, want] of hostile(s)) {
      const { rv } = await send(payload);
      expect(rv, what).toBe(want);
      // the connection (and its module instance) still serves
      expect((await send(pack([ID.C_GetSessionInfo, s]))).rv, `after ${what}`).toBe(CKR_OK);
    }
    const rssAfter = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${d.pid}/status`, 'utf8'))![1]);
    expect(rssAfter - rssBefore).toBeLessThan(64 * 1024); // KiB: nothing near the 4 GiB declared
    expect(d.exited()).toBeUndefined();
  }

  it('on a port without policy (the executor decodes)', { timeout: 60_000 }, () => attack(false));
  it('on a port with a mechanism allow-list (the daemon decodes first)', { timeout: 60_000 }, () => attack(true));
});
