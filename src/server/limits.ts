// Everything a guest can make the daemon hold has a bound, here with its
// default. The defaults fit a trusted VM of 2 GiB serving six ports: at most
// 32 executors of at most 48 MiB of data each (1.5 GiB if every guest pushed
// every one to its limit), and per port at most 4 MiB of queued output plus
// one kept answer per connection (the payload limit, 1 MiB).

export interface Limits {
  /** Guest apps (connections) per port, counting executors that are still finishing. */
  maxConnectionsPerPort: number;
  /** Executors on the whole daemon, counted until they have exited. */
  maxExecutors: number;
  /** An executor's data segment (RLIMIT_DATA) in MiB: what one app can make the module allocate. */
  executorMemoryMiB: number;
  /** Open files per executor (RLIMIT_NOFILE). */
  executorMaxFiles: number;
  /** Added to each executor's nice value, so the daemon, which serves every port, stays ahead of the module's work. */
  executorNice: number;
  /** Executors may open network sockets (a TPM simulator reached over TCP); unix sockets are always allowed. */
  executorNetwork: boolean;
  /** Calls running at once per port; further calls of the port wait their turn (BUSY keeps their clients waiting). */
  runningCallsPerPort: number;
  /** Output queued for a port's line: above it the daemon stops reading that port until the line drains. */
  maxQueuedOutputBytes: number;
  /** A line that has taken nothing for this long while output waits is stuck: its queue is dropped and logged. */
  stuckLineMs: number;
  /** Log lines per second a port's guest can cause; the rest is counted and summed up every 10 s. */
  logLinesPerSecond: number;
  /** Requests with a wrong connection key answered per second and port; beyond, they get no answer at all. */
  badKeyAnswersPerSecond: number;
}

export const DEFAULT_LIMITS: Readonly<Limits> = {
  maxConnectionsPerPort: 16,
  maxExecutors: 32,
  executorMemoryMiB: 48,
  executorMaxFiles: 256,
  executorNice: 10,
  executorNetwork: false,
  runningCallsPerPort: 1,
  maxQueuedOutputBytes: 4 * 1024 * 1024,
  stuckLineMs: 30_000,
  logLinesPerSecond: 20,
  badKeyAnswersPerSecond: 10,
};

export const withDefaults = (given: Partial<Limits> | undefined): Limits => ({ ...DEFAULT_LIMITS, ...given });
