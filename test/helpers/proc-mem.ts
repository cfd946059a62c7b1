// Memory of the daemon and its executors, read from /proc, sampled while an
// attack runs: the peaks are what the bounds are about.
import { readdirSync, readFileSync } from 'node:fs';

const kib = (text: string, field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
const read = (path: string): string => {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
};

/** The live child processes of pid. */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const stat = read(`/proc/${d}/stat`);
    // pid (comm) state ppid ...: comm may hold spaces and parentheses
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid === pid) out.push(Number(d));
  }
  return out;
}

export interface MemorySample {
  daemonRssKiB: number;
  executors: number;
  executorsPssKiB: number;
  largestExecutorPssKiB: number;
}

export function sample(daemonPid: number): MemorySample {
  const kids = childrenOf(daemonPid).filter((p) => read(`/proc/${p}/cmdline`).includes('p11bridge-exec'));
  const pss = kids.map((p) => kib(read(`/proc/${p}/smaps_rollup`), 'Pss'));
  return {
    daemonRssKiB: kib(read(`/proc/${daemonPid}/status`), 'VmRSS'),
    executors: kids.length,
    executorsPssKiB: pss.reduce((a, b) => a + b, 0),
    largestExecutorPssKiB: Math.max(0, ...pss),
  };
}

/** Samples every intervalMs until stop(): the first sample, the peaks and the last. */
export class MemoryWatch {
  readonly before: MemorySample;
  readonly peak: MemorySample;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pid: number, intervalMs = 100) {
    this.before = sample(pid);
    this.peak = { ...this.before };
    this.timer = setInterval(() => this.take(), intervalMs);
  }

  private take(): MemorySample {
    const s = sample(this.pid);
    for (const k of Object.keys(s) as Array<keyof MemorySample>) this.peak[k] = Math.max(this.peak[k], s[k]);
    return s;
  }

  stop(): { before: MemorySample; peak: MemorySample; after: MemorySample } {
    clearInterval(this.timer);
    const after = this.take();
    return { before: this.before, peak: this.peak, after };
  }
}
