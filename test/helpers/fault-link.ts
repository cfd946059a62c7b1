// A faulty serial line for tests: a relay between two pty pairs that drops,
// corrupts, duplicates, truncates, delays and splits what passes, seeded and
// reproducible.
//
//   daemon ── pair1.serverPath ═ socat ═ pair1.guestPath ── FaultLink ── pair2.serverPath ═ socat ═ pair2.guestPath ── guest app
//
// The relay opens its two ends raw (configureTty clears ICANON, ECHO, OPOST)
// and reads both at all times, so a side that stops reading never fills a
// pty (a pty holds a few KiB) and stalls the other direction.
//
// Faults are decided per frame: the relay cuts each direction's bytes at the
// 0x00 delimiters, and each non-empty piece is damaged with probability
// `frameRate`, the kind chosen at random among `kinds`. Decisions depend only
// on the sequence of pieces and the seed (never on how the bytes were
// chunked), so a run with the same traffic and seed does the same damage.
import type { Link } from '../../src/transport/link.js';
import { openTty } from '../../src/transport/tty-link.js';

export type DamageKind = 'drop' | 'corrupt' | 'duplicate' | 'truncate';
export const DAMAGE_KINDS: readonly DamageKind[] = ['drop', 'corrupt', 'duplicate', 'truncate'];

export interface DirectionFaults {
  /** Probability that a frame is damaged (0..1). */
  frameRate?: number;
  /** Damage kinds to choose from (default: all four). */
  kinds?: readonly DamageKind[];
  /** Probability that a frame is held back before it is passed on. */
  delayRate?: number;
  /** Longest hold-back in ms (uniform 0..delayMs). Later frames wait behind it: order is kept. */
  delayMs?: number;
  /** Probability that a frame is written in small pieces (1..16 bytes) with a pause between them. */
  splitRate?: number;
  /** Pause between the pieces of a split frame, in ms (default 0: a separate write, no pause). */
  splitPauseMs?: number;
}

export interface DirectionStats {
  /** Non-empty pieces (frames, or noise between delimiters) seen. */
  frames: number;
  bytes: number;
  damaged: number;
  dropped: number;
  corrupted: number;
  duplicated: number;
  truncated: number;
  delayed: number;
  split: number;
}

export interface FaultLinkOptions {
  seed: number;
  /** Guest app to daemon. */
  toServer?: DirectionFaults;
  /** Daemon to guest app. */
  toGuest?: DirectionFaults;
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ZERO = Buffer.from([0]);
/** A piece longer than this is passed on undamaged in parts (noise, not a frame); keeps memory bounded. */
const MAX_PIECE = 4 * 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const emptyStats = (): DirectionStats => ({ frames: 0, bytes: 0, damaged: 0, dropped: 0, corrupted: 0, duplicated: 0, truncated: 0, delayed: 0, split: 0 });

/**
 * One direction of the line: frames in, damaged frames out. Pure apart from
 * `out`; usable without ptys (property tests feed it bytes directly).
 */
export class FaultyDirection {
  readonly stats = emptyStats();
  private rand: () => number;
  private piece: Buffer[] = [];
  private pieceLen = 0;
  private chain: Promise<void> = Promise.resolve();

  constructor(seed: number, public faults: DirectionFaults, private readonly out: (bytes: Buffer) => void) {
    this.rand = mulberry32(seed);
  }

  /** Starts the damage decisions afresh from `seed`. */
  reseed(seed: number): void {
    this.rand = mulberry32(seed);
  }

  /** Bytes as they came off the line. */
  push(chunk: Buffer): void {
    this.stats.bytes += chunk.length;
    let start = 0;
    while (start < chunk.length) {
      const zero = chunk.indexOf(0, start);
      const end = zero === -1 ? chunk.length : zero;
      if (end > start) {
        this.piece.push(Buffer.from(chunk.subarray(start, end)));
        this.pieceLen += end - start;
        if (this.pieceLen > MAX_PIECE) this.flushPiece(false);
      }
      if (zero === -1) return;
      this.flushPiece(true);
      this.emit([ZERO], 0);
      start = zero + 1;
    }
  }

  /** Resolves when everything pushed so far has been written out. */
  idle(): Promise<void> {
    return this.chain;
  }

  private flushPiece(complete: boolean): void {
    if (this.pieceLen === 0) return;
    const piece = Buffer.concat(this.piece, this.pieceLen);
    this.piece = [];
    this.pieceLen = 0;
    if (!complete) return this.emit([piece], 0);
    this.stats.frames++;
    const f = this.faults;
    const r = this.rand;
    let parts: Buffer[] = [piece];
    if (r() < (f.frameRate ?? 0)) {
      const kinds = f.kinds?.length ? f.kinds : DAMAGE_KINDS;
      const kind = kinds[Math.floor(r() * kinds.length)]!;
      this.stats.damaged++;
      switch (kind) {
        case 'drop':
          this.stats.dropped++;
          parts = [];
          break;
        case 'corrupt': {
          this.stats.corrupted++;
          const bad = Buffer.from(piece);
          const flips = 1 + Math.floor(r() * 3);
          for (let i = 0; i < flips; i++) {
            const pos = Math.floor(r() * bad.length);
            bad[pos] = bad[pos]! ^ (1 << Math.floor(r() * 8));
          }
          parts = [bad];
          break;
        }
        case 'duplicate':
          this.stats.duplicated++;
          parts = [piece, Buffer.from([0, 0]), piece];
          break;
        case 'truncate':
          this.stats.truncated++;
          parts = [piece.subarray(0, Math.floor(r() * piece.length))];
          break;
      }
    }
    let delay = 0;
    if (f.delayRate && r() < f.delayRate) {
      this.stats.delayed++;
      delay = Math.floor(r() * (f.delayMs ?? 0));
    }
    if (f.splitRate && r() < f.splitRate) {
      this.stats.split++;
      const whole = Buffer.concat(parts);
      parts = [];
      for (let i = 0; i < whole.length; ) {
        const n = 1 + Math.floor(r() * 16);
        parts.push(whole.subarray(i, i + n));
        i += n;
      }
      return this.emit(parts, delay, f.splitPauseMs ?? 0, true);
    }
    this.emit(parts, delay);
  }

  private emit(parts: Buffer[], delay: number, pause = 0, separately = false): void {
    if (parts.length === 0) return;
    if (delay === 0 && !separately && this.quiet) {
      // Fast path: nothing is held back, write now (keeps the order).
      this.out(parts.length === 1 ? parts[0]! : Buffer.concat(parts));
      return;
    }
    this.pending++;
    this.chain = this.chain.then(async () => {
      if (delay) await sleep(delay);
      if (separately) {
        for (const p of parts) {
          this.out(p);
          if (pause) await sleep(pause);
          else await new Promise((r) => setImmediate(r));
        }
      } else {
        this.out(Buffer.concat(parts));
      }
      this.pending--;
    });
  }

  private pending = 0;
  private get quiet(): boolean {
    return this.pending === 0;
  }
}

export class FaultLink {
  readonly toServer: FaultyDirection;
  readonly toGuest: FaultyDirection;

  private constructor(private readonly serverSide: Link, private readonly guestSide: Link, opts: FaultLinkOptions) {
    const write = (link: Link) => (bytes: Buffer) => void link.write(bytes).catch(() => undefined);
    this.toServer = new FaultyDirection(opts.seed, opts.toServer ?? {}, write(serverSide));
    this.toGuest = new FaultyDirection((opts.seed ^ 0x9e3779b9) >>> 0, opts.toGuest ?? {}, write(guestSide));
    guestSide.onData((chunk) => this.toServer.push(chunk));
    serverSide.onData((chunk) => this.toGuest.push(chunk));
  }

  /**
   * Relays between `daemonSideGuestPath` (pair 1's guest end; the daemon
   * holds pair 1's server end) and `appSideServerPath` (pair 2's server end;
   * the guest app opens pair 2's guest end).
   */
  static async start(daemonSideGuestPath: string, appSideServerPath: string, opts: FaultLinkOptions): Promise<FaultLink> {
    const serverSide = await openTty(daemonSideGuestPath, { lock: false });
    let guestSide: Link;
    try {
      guestSide = await openTty(appSideServerPath, { lock: false });
    } catch (e) {
      await serverSide.close();
      throw e;
    }
    return new FaultLink(serverSide, guestSide, opts);
  }

  /** Changes the faults of both directions (counters keep running). */
  setFaults(toServer: DirectionFaults, toGuest: DirectionFaults = toServer): void {
    this.toServer.faults = toServer;
    this.toGuest.faults = toGuest;
  }

  stats(): { toServer: DirectionStats; toGuest: DirectionStats } {
    return { toServer: { ...this.toServer.stats }, toGuest: { ...this.toGuest.stats } };
  }

  async close(): Promise<void> {
    await Promise.all([this.serverSide.close(), this.guestSide.close()]);
  }
}
