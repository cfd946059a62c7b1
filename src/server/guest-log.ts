// Log lines a guest can cause (refused calls, malformed frames, wrong
// connection keys ...), limited per port: a guest that sends garbage as fast
// as the line allows must not fill the trusted VM's disk. Lines over the
// rate are counted by message and summed up in one line every 10 s. Each
// message also has its own quarter of the rate, so that a flood of one kind
// (refused calls) never silences the others (the port pausing, a stuck line).
// Debug lines (every call), which an operator turns on on purpose, are not
// limited.
import type { Logger } from '../log.js';

type Level = 'debug' | 'info' | 'warn' | 'error';

/** What code that reports a guest's doings needs of a log. */
export interface LineLog {
  debug(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

export class GuestLog implements LineLog {
  private tokens: number;
  private refilled = Date.now();
  /** Per message: its own tokens and when they were last refilled. */
  private readonly perMessage = new Map<string, { tokens: number; refilled: number }>();
  private readonly suppressed = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    private readonly port: string,
    private readonly perSecond: number,
    private readonly summaryMs = 10_000,
  ) {
    this.tokens = perSecond;
  }

  /** Whether debug lines are written at all (callers skip building them otherwise). */
  get debugEnabled(): boolean {
    return this.log.isLevelEnabled('debug');
  }

  debug(obj: Record<string, unknown>, msg: string): void { this.write('debug', obj, msg); }
  info(obj: Record<string, unknown>, msg: string): void { this.write('info', obj, msg); }
  warn(obj: Record<string, unknown>, msg: string): void { this.write('warn', obj, msg); }
  error(obj: Record<string, unknown>, msg: string): void { this.write('error', obj, msg); }

  /** Writes the last summary and stops the timer. */
  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.summary();
  }

  private write(level: Level, obj: Record<string, unknown>, msg: string): void {
    if (!this.log.isLevelEnabled(level)) return;
    // debug (one line per call) is what an operator turns on to watch every
    // call: not limited. The default level, info, is.
    if (level === 'debug') {
      this.log.debug({ port: this.port, ...obj }, msg);
      return;
    }
    const now = Date.now();
    this.tokens = Math.min(this.perSecond, this.tokens + ((now - this.refilled) / 1000) * this.perSecond);
    this.refilled = now;
    // messages are the code's constant strings: this map stays small
    const share = Math.max(1, this.perSecond / 4);
    let m = this.perMessage.get(msg);
    if (!m) this.perMessage.set(msg, (m = { tokens: share, refilled: now }));
    m.tokens = Math.min(share, m.tokens + ((now - m.refilled) / 1000) * share);
    m.refilled = now;
    if (this.tokens >= 1 && m.tokens >= 1) {
      this.tokens--;
      m.tokens--;
      this.log[level]({ port: this.port, ...obj }, msg);
      return;
    }
    this.suppressed.set(msg, (this.suppressed.get(msg) ?? 0) + 1);
    if (!this.timer) {
      this.timer = setInterval(() => this.summary(), this.summaryMs);
      this.timer.unref();
    }
  }

  private summary(): void {
    if (this.suppressed.size === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    const counts = Object.fromEntries(this.suppressed);
    this.suppressed.clear();
    this.log.warn({ port: this.port, suppressed: counts, perSecond: this.perSecond }, 'log lines over the rate limit suppressed');
  }
}

/**
 * A string from a guest made safe for a log line: control characters,
 * bidirectional overrides and other invisible format characters shown as
 * \u{...}, and at most `max` characters.
 */
export function printable(s: string, max = 100): string {
  const cut = s.length > max ? `${s.slice(0, max)}...` : s;
  return cut.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
}
