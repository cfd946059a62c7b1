// HELLO / HELLO_OK / ERROR payloads (PROTOCOL.md section 4), validated on
// receipt because they come off the line.
import { z } from 'zod';
import { unpackUntrusted } from './msgpack.js';
import { LIMITS, PROTOCOL_VERSION } from './table.js';

export const SUPPORTED_VERSIONS: readonly [number, number] = [PROTOCOL_VERSION, PROTOCOL_VERSION];

const nonce = z.number().int().min(1).max(0xffffffff);

export const helloSchema = z.object({
  versions: z.tuple([z.number().int().min(0), z.number().int().min(0)]),
  /** Pairs the HELLO_OK with this HELLO (the header's request id has 16 bits only), and tells a resent HELLO from a new one. */
  nonce,
  maxPayload: z.number().int().min(LIMITS.minPayload, { error: `maxPayload must be at least ${LIMITS.minPayload}` }),
  client: z.string().max(200).optional(),
});
export type Hello = z.infer<typeof helloSchema>;

export const helloOkSchema = z.object({
  version: z.number().int(),
  maxPayload: z.number().int().positive(),
  /** The server closes a connection silent for this long; clients PING well within it. */
  leaseMs: z.number().int().positive().optional(),
  server: z.string().max(200),
  /** The HELLO's nonce. */
  nonce,
  /** This connection's key: every later request of the connection carries it in its header. */
  key: z.number().int().min(1).max(0xffffffff),
  module: z.object({
    info: z.array(z.unknown()),
    functions: z.array(z.number().int()),
  }),
});
export type HelloOk = z.infer<typeof helloOkSchema>;

export const errorSchema = z.object({
  rv: z.number().int().min(0),
  message: z.string().max(4096),
});
export type ErrorPayload = z.infer<typeof errorSchema>;

/** A map payload from a peer, checked against its schema; undefined if it is not one. */
export function parsePayload<T>(schema: z.ZodType<T>, payload: Uint8Array): T | undefined {
  try {
    const r = schema.safeParse(unpackUntrusted(payload));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}

/** The highest version in both inclusive ranges, or undefined. */
export function negotiateVersion(ours: readonly [number, number], theirs: readonly [number, number]): number | undefined {
  const hi = Math.min(ours[1], theirs[1]);
  const lo = Math.max(ours[0], theirs[0]);
  return hi >= lo ? hi : undefined;
}
