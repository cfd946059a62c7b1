// Starts `p11bridge serve` (dist/src/cli/main.js) as a child process, the
// trusted VM's side, for the demo, the benchmarks and the tests: waits until
// it serves, keeps its output as pino records, and stops it.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { packageRoot } from '../src/paths.js';
import { trackChild } from './children.js';

/** Repository root (the package root: the same from lab/ under vitest and from dist/lab/). */
export const REPO_ROOT = packageRoot();
/** The daemon's CLI entry point (built by tsc). */
export const CLI_MAIN = path.join(REPO_ROOT, 'dist/src/cli/main.js');

export interface StartDaemonOptions {
  /** PKCS#11 module path, e.g. SOFTHSM_MODULE. */
  module: string;
  /** Serial ports (pty paths, or unix:/path) to serve. */
  ports: string[];
  /** Extra environment (merged over process.env), e.g. token.env. */
  env?: Record<string, string | undefined>;
  /**
   * --log-level (default debug: every call is logged, for the tests). Readiness
   * is the 'serving' line, written at info: no level above it.
   */
  logLevel?: 'info' | 'debug' | 'trace';
  /** Extra CLI arguments appended after the defaults (a later --log-level wins). */
  args?: string[];
  /** Readiness limit in ms (default 15000). */
  readyTimeoutMs?: number;
  /** Override the entry script (default CLI_MAIN); for testing this helper. */
  entry?: string;
  /** A command the daemon runs under, e.g. ['prlimit', '--nofile=64:64', '--']. */
  prefix?: string[];
}

/** One output line of the daemon: pino JSON parsed where possible. */
export interface DaemonLogLine {
  stream: 'stdout' | 'stderr';
  /** The raw line. */
  line: string;
  /** The parsed JSON object, if the line was a JSON object. */
  json?: Record<string, unknown>;
}

export interface DaemonExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Daemon {
  pid: number;
  proc: ChildProcess;
  /** Parsed pino records (JSON lines of stdout and stderr), in arrival order. */
  logs(): Record<string, unknown>[];
  /** Every output line with its stream and parsed JSON (if any). */
  lines(): DaemonLogLine[];
  /** All output so far (stdout and stderr lines joined), for substring checks like "no PIN in logs". */
  output(): string;
  /** Resolve with the first log record (existing or future) matching pred; reject after timeoutMs or on exit. */
  waitForLog(pred: (rec: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Set once the process exited. */
  exited(): DaemonExit | undefined;
  /** Resolves when the process exits. */
  exitPromise: Promise<DaemonExit>;
  /** Send signal (default SIGTERM), wait up to 10 s, then SIGKILL. Resolves with the exit status. */
  stop(signal?: NodeJS.Signals): Promise<DaemonExit>;
}

function parseJson(line: string): Record<string, unknown> | undefined {
  const t = line.trim();
  if (!t.startsWith('{')) return undefined;
  try {
    const v: unknown = JSON.parse(t);
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

export async function startDaemon(opts: StartDaemonOptions): Promise<Daemon> {
  const args = [opts.entry ?? CLI_MAIN, 'serve', '--module', opts.module];
  for (const p of opts.ports) args.push('--port', p);
  args.push('--log-level', opts.logLevel ?? 'debug', ...(opts.args ?? []));

  const [cmd, ...pre] = opts.prefix?.length ? [...opts.prefix, process.execPath] : [process.execPath];
  const proc = spawn(cmd!, [...pre, ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...(opts.env ?? {}) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  trackChild(proc);

  const all: DaemonLogLine[] = [];
  const waiters = new Set<{ pred: (r: Record<string, unknown>) => boolean; resolve: (r: Record<string, unknown>) => void }>();
  const onLine = (stream: 'stdout' | 'stderr') => (line: string) => {
    const json = parseJson(line);
    all.push(json ? { stream, line, json } : { stream, line });
    if (json) {
      for (const w of [...waiters]) {
        if (w.pred(json)) {
          waiters.delete(w);
          w.resolve(json);
        }
      }
    }
  };
  createInterface({ input: proc.stdout! }).on('line', onLine('stdout'));
  createInterface({ input: proc.stderr! }).on('line', onLine('stderr'));

  let exitInfo: DaemonExit | undefined;
  let spawnError: Error | undefined;
  const exitPromise = new Promise<DaemonExit>((resolve) => {
    proc.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      // let readline deliver the last buffered lines first
      setImmediate(() => resolve(exitInfo!));
    });
    proc.once('error', (err) => {
      spawnError = err;
      if (proc.pid === undefined) {
        exitInfo = { code: null, signal: null };
        resolve(exitInfo);
      }
    });
  });

  const output = () => all.map((l) => l.line).join('\n');
  const logs = () => all.filter((l) => l.json).map((l) => l.json!);

  const waitForLog = (
    pred: (rec: Record<string, unknown>) => boolean,
    timeoutMs = 15_000,
  ): Promise<Record<string, unknown>> => {
    const found = logs().find(pred);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        resolve: (r: Record<string, unknown>) => {
          clearTimeout(timer);
          resolve(r);
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`daemon: no matching log line within ${timeoutMs} ms; output:\n${output()}`));
      }, timeoutMs);
      waiters.add(w);
      void exitPromise.then((e) => {
        if (!waiters.has(w)) return;
        waiters.delete(w);
        clearTimeout(timer);
        reject(
          new Error(
            `daemon exited (code ${e.code}, signal ${e.signal}) before a matching log line` +
              (spawnError ? ` (${spawnError.message})` : '') +
              `; output:\n${output()}`,
          ),
        );
      });
    });
  };

  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<DaemonExit> => {
    if (exitInfo) return exitPromise;
    proc.kill(signal);
    const timer = setTimeout(() => {
      if (!exitInfo) proc.kill('SIGKILL');
    }, 10_000);
    try {
      return await exitPromise;
    } finally {
      clearTimeout(timer);
    }
  };

  try {
    await waitForLog((r) => r.msg === 'serving', opts.readyTimeoutMs ?? 15_000);
  } catch (err) {
    await stop('SIGKILL').catch(() => {});
    throw new Error(`daemon did not become ready: ${(err as Error).message}\ncommand: ${process.execPath} ${args.join(' ')}`);
  }

  return {
    pid: proc.pid!,
    proc,
    logs,
    lines: () => [...all],
    output,
    waitForLog,
    exited: () => exitInfo,
    exitPromise,
    stop,
  };
}

/**
 * startDaemon at log level info, the daemon's own default: no line per call,
 * which would slow what the benchmarks measure. The benchmarks' name for it.
 */
export function spawnDaemon(opts: StartDaemonOptions): Promise<Daemon> {
  return startDaemon({ logLevel: 'info', ...opts });
}
