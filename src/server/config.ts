// The daemon's config file (`p11bridge serve --config <file>`): JSON,
// validated at start-up. Every key is known (strict objects); a bad key or
// value is reported with its path (`ports[1].readOnly: expected boolean,
// received string`) and stops the daemon. README "Configuration and policy".
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { MECHANISM_TYPES } from '../protocol/table.js';
import { DEFAULT_LIMITS, type Limits } from './limits.js';
import type { PortPolicy, TokenGrant } from './policy.js';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export interface PortConfig {
  path: string;
  policy: PortPolicy;
}

export interface DaemonConfig {
  /** The config file, as given. */
  file: string;
  module?: string;
  ports: PortConfig[];
  maxPayload?: number;
  leaseSeconds?: number;
  maxCallSeconds?: number;
  /** Bounds on what guests can make the daemon hold; absent keys take their defaults. */
  limits: Partial<Limits>;
  logLevel?: (typeof LOG_LEVELS)[number];
  executor?: string;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly file: string,
    /** One line per problem, each starting with the key path. */
    readonly problems: readonly string[],
  ) {
    super(problems.map((p) => `config ${file}: ${p}`).join('\n'));
  }
}

const CKM_MAX = 0xffffffffffffffffn;

/** A mechanism in an allow-list: a CKM_* name, a number, or a "0x..." string (vendor mechanisms). */
const mechanism = z.unknown().transform((v, ctx): bigint => {
  const bad = (message: string): never => {
    ctx.addIssue({ code: 'custom', message, input: v });
    return z.NEVER;
  };
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) return bad(`expected a mechanism number (a non-negative integer), received ${v}`);
    return BigInt(v);
  }
  if (typeof v !== 'string') return bad(`expected a CKM_* name or a mechanism number, received ${typeName(v)}`);
  if (/^0x[0-9a-f]{1,16}$/i.test(v)) return BigInt(v);
  const value = MECHANISM_TYPES.get(v);
  if (value !== undefined) return BigInt(value);
  const hint = [v.toUpperCase(), `CKM_${v.toUpperCase()}`].find((n) => MECHANISM_TYPES.has(n));
  return bad(`unknown mechanism ${JSON.stringify(v)}${hint ? ` (did you mean ${hint}?)` : ''}`);
}).refine((m) => m <= CKM_MAX, { error: 'mechanism number exceeds 64 bits' });

const padded = (what: string, max: number) =>
  z.string({ error: (i) => `expected string, received ${typeName(i.input)}` })
    .min(1, { error: `the ${what} must not be empty` })
    .refine((s) => Buffer.byteLength(s, 'utf8') <= max, { error: `a token ${what} has at most ${max} bytes` })
    .refine((s) => s === s.trimEnd(), { error: `the ${what} must not end in blanks (they are padding)` });

const token = z.strictObject({
  label: padded('label', 32).optional(),
  serial: padded('serial', 16).optional(),
}).refine((t) => t.label !== undefined || t.serial !== undefined, { error: 'a token needs a label, a serial or both' });

const port = z.strictObject({
  path: z.string().refine((p) => p.startsWith('/'), { error: 'expected an absolute device path such as /dev/ttyS4' }),
  tokens: z.array(token).optional(),
  readOnly: z.boolean().optional(),
  initToken: z.boolean().optional(),
  mechanisms: z.array(mechanism).optional(),
});

const positiveInt = z.number().refine((n) => Number.isSafeInteger(n) && n > 0, { error: 'expected a positive integer' });
const positiveNumber = z.number().refine((n) => Number.isFinite(n) && n > 0, { error: 'expected a positive number' });
const nonEmpty = z.string().min(1, { error: 'must not be empty' });
const intIn = (lo: number, hi: number) =>
  z.number().refine((n) => Number.isSafeInteger(n) && n >= lo && n <= hi, { error: `expected an integer from ${lo} to ${hi}` });

/** limits.ts, key by key (a key added there without a rule here does not compile). */
const limitRules: { [K in keyof Limits]: z.ZodType<Limits[K]> } = {
  maxConnectionsPerPort: intIn(1, 1024),
  maxExecutors: intIn(1, 4096),
  executorMemoryMiB: intIn(16, 1 << 20),
  executorMaxFiles: intIn(16, 1 << 20),
  executorNice: intIn(0, 19),
  executorNetwork: z.boolean(),
  runningCallsPerPort: intIn(1, 1024),
  maxQueuedOutputBytes: intIn(65536, 2 ** 40),
  stuckLineMs: intIn(100, 3_600_000),
  logLinesPerSecond: intIn(1, 1_000_000),
  badKeyAnswersPerSecond: intIn(0, 1_000_000),
};
const limitsSchema = z.strictObject(Object.fromEntries(Object.entries(limitRules).map(([k, r]) => [k, r.optional()])) as {
  [K in keyof Limits]: z.ZodOptional<z.ZodType<Limits[K]>>
});

const schema = z.strictObject({
  module: nonEmpty.optional(),
  ports: z.array(port).superRefine((ports, ctx) => {
    ports.forEach((p, i) => {
      const first = ports.findIndex((q) => q.path === p.path);
      if (first < i) ctx.addIssue({ code: 'custom', path: [i, 'path'], message: `${p.path} is already ports[${first}]` });
    });
  }).optional(),
  maxPayload: positiveInt.optional(),
  leaseSeconds: positiveNumber.optional(),
  maxCallSeconds: positiveNumber.optional(),
  limits: limitsSchema.optional(),
  logLevel: z.enum(LOG_LEVELS, { error: `expected one of ${LOG_LEVELS.join(', ')}` }).optional(),
  executor: nonEmpty.optional(),
});

/** Known keys by object path shape, for "unknown key" messages. */
const KNOWN_KEYS: Array<[(path: readonly PropertyKey[]) => boolean, readonly string[]]> = [
  [(p) => p.length === 0, Object.keys(schema.shape)],
  [(p) => p.length === 2 && p[0] === 'ports', Object.keys(port.shape)],
  [(p) => p.length === 4 && p[0] === 'ports' && p[2] === 'tokens', ['label', 'serial']],
  [(p) => p.length === 1 && p[0] === 'limits', Object.keys(DEFAULT_LIMITS)],
];

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

/** `ports[1].readOnly` */
export function keyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const k of path) {
    if (typeof k === 'number') out += `[${k}]`;
    else if (typeof k === 'string' && /^[A-Za-z_$][\w$]*$/.test(k)) out += out ? `.${k}` : k;
    else out += `[${JSON.stringify(String(k))}]`;
  }
  return out;
}

function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let v = data;
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}

function problems(data: unknown, issues: readonly z.core.$ZodIssue[]): string[] {
  const out: string[] = [];
  for (const iss of issues) {
    const at = (p: readonly PropertyKey[], msg: string) => out.push(p.length ? `${keyPath(p)}: ${msg}` : msg);
    if (iss.code === 'unrecognized_keys') {
      const known = KNOWN_KEYS.find(([match]) => match(iss.path))?.[1];
      for (const k of iss.keys) at([...iss.path, k], `unknown key${known ? ` (known keys: ${known.join(', ')})` : ''}`);
    } else if (iss.code === 'invalid_type') {
      const v = valueAt(data, iss.path);
      at(iss.path, v === undefined ? `required (${iss.expected})` : `expected ${iss.expected}, received ${typeName(v)}`);
    } else {
      at(iss.path, iss.message);
    }
  }
  return out;
}

/** Validates a parsed config; relative module and executor paths are taken from the config file's directory. */
export function parseConfig(data: unknown, file: string): DaemonConfig {
  const r = schema.safeParse(data);
  if (!r.success) throw new ConfigError(file, problems(data, r.error.issues));
  const c = r.data;
  const here = (p: string | undefined) => (p === undefined || isAbsolute(p) ? p : resolve(dirname(resolve(file)), p));
  return {
    file,
    module: here(c.module),
    ports: (c.ports ?? []).map((p) => ({
      path: p.path,
      policy: {
        tokens: p.tokens?.map((t): TokenGrant => ({ ...(t.label !== undefined && { label: t.label }), ...(t.serial !== undefined && { serial: t.serial }) })),
        readOnly: p.readOnly ?? false,
        initToken: p.initToken ?? false,
        mechanisms: p.mechanisms ? new Set(p.mechanisms) : undefined,
      },
    })),
    maxPayload: c.maxPayload,
    leaseSeconds: c.leaseSeconds,
    maxCallSeconds: c.maxCallSeconds,
    limits: (c.limits ?? {}) as Partial<Limits>,
    logLevel: c.logLevel,
    executor: here(c.executor),
  };
}

/** Reads and validates a config file; throws ConfigError naming the file and every bad key. */
export function loadConfig(file: string): DaemonConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [`cannot read: ${(e as Error).message}`]);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(file, [`not valid JSON: ${(e as Error).message}`]);
  }
  return parseConfig(data, file);
}
