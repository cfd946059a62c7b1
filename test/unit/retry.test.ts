// Properties of what makes calls exactly-once on a faulty line: the client's
// retry timing, the server's request-id order, the fault link itself, and
// the client's retries against the server's connection logic through a
// seeded faulty relay (real ptys; the "module" is a counter, no PKCS#11).
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { attemptTimeout, backoff, DEFAULT_RETRY, MAX_BACKOFF_MS, PortChannel } from '../../src/client/channel.js';
import { createLogger } from '../../src/log.js';
import { Deframer } from '../../src/protocol/deframer.js';
import { encodeFrame, FrameType, isBefore, nextReq, type Frame } from '../../src/protocol/frame.js';
import { Connection } from '../../src/server/connection.js';
import type { Executor } from '../../src/server/executor.js';
import { PortServer } from '../../src/server/port-server.js';
import { DEFAULT_LIMITS } from '../../src/server/limits.js';
import { openTty } from '../../src/transport/tty-link.js';
import { FaultLink, FaultyDirection } from '../helpers/fault-link.js';
import { createPtyPair, type PtyPair } from '../helpers/pty.js';

const nextId = nextReq;

describe('retry timing', () => {
  const policyArb = fc.record({
    attemptTimeoutMs: fc.integer({ min: 1, max: 10_000 }),
    maxAttempts: fc.integer({ min: 1, max: 20 }),
    backoffMs: fc.integer({ min: 0, max: 5000 }),
    baudRate: fc.integer({ min: 300, max: 4_000_000 }),
  });

  it('an attempt waits at least the base, longer for more bytes, and covers their line time', () => {
    fc.assert(fc.property(policyArb, fc.nat({ max: 2 << 20 }), fc.nat({ max: 2 << 20 }), (p, a, b) => {
      const [lo, hi] = a <= b ? [a, b] : [b, a];
      expect(attemptTimeout(p, lo)).toBeGreaterThanOrEqual(p.attemptTimeoutMs);
      expect(attemptTimeout(p, hi)).toBeGreaterThanOrEqual(attemptTimeout(p, lo));
      expect(attemptTimeout(p, hi) - p.attemptTimeoutMs).toBeGreaterThanOrEqual((hi * 10 * 1000) / p.baudRate - 1e-6);
    }));
    // A 1 MiB answer on a 115200 bit/s UART needs about 91 s of line time.
    expect(attemptTimeout(DEFAULT_RETRY, 1 << 20)).toBeGreaterThan(91_000);
  });

  it('the back-off never shrinks from one sending to the next and is capped', () => {
    fc.assert(fc.property(policyArb, fc.integer({ min: 2, max: 60 }), (p, n) => {
      expect(backoff(p, n + 1)).toBeGreaterThanOrEqual(backoff(p, n));
      expect(backoff(p, n)).toBeLessThanOrEqual(Math.max(MAX_BACKOFF_MS, 0));
      expect(backoff(p, 2)).toBe(Math.min(p.backoffMs, MAX_BACKOFF_MS));
    }));
  });
});

describe('request id order (the server drops stale repeats)', () => {
  const id = fc.integer({ min: 1, max: 0xffff });
  it('is irreflexive and antisymmetric, and every id comes before the next one, across the wrap', () => {
    fc.assert(fc.property(id, id, (a, b) => {
      expect(isBefore(a, a)).toBe(false);
      if (a !== b && ((b - a) & 0xffff) !== 0x8000) expect(isBefore(a, b)).toBe(!isBefore(b, a));
      expect(isBefore(a, nextId(a))).toBe(true);
      expect(isBefore(nextId(a), a)).toBe(false);
    }));
    expect(isBefore(0xffff, 1)).toBe(true);
  });
});

describe('the fault link', () => {
  const framesArb = fc.array(fc.uint8Array({ minLength: 0, maxLength: 300 }), { minLength: 1, maxLength: 60 });
  const run = (seed: number, rate: number, frames: Buffer[], chunking: number[]) => {
    const out: Buffer[] = [];
    const d = new FaultyDirection(seed, { frameRate: rate }, (b) => out.push(Buffer.from(b)));
    const all = Buffer.concat(frames);
    for (let i = 0, k = 0; i < all.length; k++) {
      const n = 1 + (chunking[k % chunking.length] ?? 0);
      d.push(all.subarray(i, i + n));
      i += n;
    }
    return { bytes: Buffer.concat(out), stats: d.stats };
  };
  const wire = (payloads: Uint8Array[]) => payloads.map((p, i) => encodeFrame(FrameType.Call, 7, i + 1, p));

  it('does the same damage for the same seed and traffic, however the bytes are chunked', () => {
    fc.assert(fc.property(fc.integer(), framesArb, fc.array(fc.nat({ max: 500 }), { minLength: 1 }), fc.array(fc.nat({ max: 500 }), { minLength: 1 }), (seed, payloads, c1, c2) => {
      const frames = wire(payloads);
      const a = run(seed, 0.3, frames, c1);
      const b = run(seed, 0.3, frames, c2);
      expect(a.bytes.equals(b.bytes)).toBe(true);
      expect(a.stats).toEqual(b.stats);
    }));
  });

  it('passes everything unchanged at rate 0; with damage, a receiver sees only frames that were sent, in order', () => {
    fc.assert(fc.property(fc.integer(), framesArb, fc.double({ min: 0, max: 1, noNaN: true }), (seed, payloads, rate) => {
      const frames = wire(payloads);
      expect(run(seed, 0, frames, [4096]).bytes.equals(Buffer.concat(frames))).toBe(true);
      const got: Frame[] = [];
      const { bytes, stats } = run(seed, rate, frames, [100]);
      new Deframer(1 << 20, { frame: (f) => got.push(f), drop: () => {}, oversize: () => {} }).push(bytes);
      let last = 0;
      for (const f of got) {
        // Duplicates repeat the previous id; nothing is reordered or invented.
        expect(f.req === last || f.req > last).toBe(true);
        expect(Buffer.from(f.payload).equals(Buffer.from(payloads[f.req - 1]!))).toBe(true);
        last = f.req;
      }
      expect(got.length).toBeGreaterThanOrEqual(frames.length - stats.dropped - stats.corrupted - stats.truncated);
      expect(got.length).toBeLessThanOrEqual(frames.length + stats.duplicated);
    }));
  });
});

describe('client retries against the server connection, through a faulty relay', () => {
  // The "module": every run of a call adds one to a counter and answers the
  // new count. Exactly-once means the answers are 1, 2, 3, ... and the
  // counter ends at the number of calls.
  let serverPair: PtyPair, guestPair: PtyPair, link: FaultLink, server: PortServer, channel: PortChannel;
  let runs = 0;
  const CONN = 42;
  const KEY = 0x5ec2e7;
  beforeAll(async () => {
    serverPair = await createPtyPair();
    guestPair = await createPtyPair();
    link = await FaultLink.start(serverPair.guestPath, guestPair.serverPath, { seed: 1 });
    const log = createLogger('silent');
    const executor = {
      call: async (payload: Uint8Array) => {
        // Some calls take a while, so repeats of a running call happen too.
        if (payload[payload.length - 1]! % 5 === 0) await new Promise((r) => setTimeout(r, 40));
        runs++;
        const answer = Buffer.from([0x92, 0x00, 0xce, 0, 0, 0, 0]); // MessagePack [0, uint32 runs]
        answer.writeUInt32BE(runs, 3);
        return { ok: true as const, payload: answer };
      },
      kill: () => undefined,
    } as unknown as Executor;
    const serverLink = await openTty(serverPair.serverPath, { lock: false });
    let conn: Connection | undefined;
    server = new PortServer(serverLink, 1 << 20, {
      hello: () => undefined,
      bye: () => undefined,
      ping: () => undefined,
      call: (port, f) => {
        conn ??= new Connection(CONN, KEY, port, executor, 1 << 20);
        void conn.handleCall(f.req, f.payload);
      },
    }, log, DEFAULT_LIMITS);
    channel = await PortChannel.acquire(guestPair.guestPath, 1 << 20);
  });
  afterAll(async () => {
    await channel?.release();
    await server?.link.close();
    await link?.close();
    await guestPair?.kill();
    await serverPair?.kill();
  });

  it('every call runs exactly once and each caller gets its own answer, whatever the damage', { timeout: 60_000 }, async () => {
    let req = 0;
    let calls = 0;
    await fc.assert(fc.asyncProperty(
      fc.integer(), fc.double({ min: 0, max: 0.3, noNaN: true }), fc.array(fc.nat({ max: 255 }), { minLength: 5, maxLength: 25 }),
      async (seed, rate, args) => {
        link.setFaults({ frameRate: rate });
        link.toServer.reseed(seed);
        link.toGuest.reseed(seed + 1);
        for (const a of args) {
          req = nextId(req);
          const reply = await channel.mutex.runExclusive(() => channel.roundTrip(encodeFrame(FrameType.Call, CONN, req, Buffer.from([0x91, a & 0x7f]), KEY), {
            conn: CONN, req, method: 'test', timeoutMs: 20_000,
            retry: { attemptTimeoutMs: 60, maxAttempts: 100, backoffMs: 2, baudRate: 115200 },
          }));
          calls++;
          expect(reply.type).toBe(FrameType.Result);
          expect(reply.payload.readUInt32BE(3)).toBe(calls);
        }
        expect(runs).toBe(calls);
      },
    ), { numRuns: 12, seed: 5 });
    expect(channel.stats.retries).toBeGreaterThan(0);
  });
});
