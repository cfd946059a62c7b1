// Structured logs (pino). Call logs carry names, ids, return values and
// timings only: never PINs, key material or data buffers.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string = process.env.P11BRIDGE_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name: 'p11bridge', level, base: { pid: process.pid } });
}
