// Per-port policy (README "Configuration and policy"): which tokens a port
// may see, whether it may change them, which mechanisms it may use. Applied
// by the daemon to CALL payloads before they reach the app's executor, and to
// the results that list slots and mechanisms. Ports without a policy are
// never decoded here: they cost nothing.
//
// What to look at in a call is found in the call table by argument and result
// kinds (slot, mechanism, template, outlist), not by function name; only the
// list of calls a read-only port refuses is written out, because it is policy.
import { decodeCall, decodeResult, encodeCall, encodeResult, ProtocolError } from '../protocol/codec.js';
import { CKR } from '../protocol/errors.js';
import { pack, peekFirstUint } from '../protocol/msgpack.js';
import { CALLS, callByName, RV, rvName, STRUCTS, type CallSpec } from '../protocol/table.js';
import type { Logger } from '../log.js';
import type { LineLog } from './guest-log.js';
import { Executor, type ExecutorLimits, type ExecutorReply } from './executor.js';

/** A token a port may see: every field given must match (label and serial as in CK_TOKEN_INFO, without the padding). */
export interface TokenGrant {
  readonly label?: string;
  readonly serial?: string;
}

export interface PortPolicy {
  /** Whether the port may initialize tokens (C_InitToken); off unless the config turns it on. */
  readonly initToken?: boolean;
  /** Tokens the port may see; undefined: all. */
  readonly tokens?: readonly TokenGrant[];
  /** The port may not change any token (no RW sessions, no token objects, no PIN or token initialisation). */
  readonly readOnly: boolean;
  /** Mechanism types the port may use; undefined: all. */
  readonly mechanisms?: ReadonlySet<bigint>;
}

/** Whether a policy restricts anything it must decode calls for (token initialisation is judged by the call id alone). */
export const isRestrictive = (p: PortPolicy | undefined): p is PortPolicy =>
  p !== undefined && (p.tokens !== undefined || p.readOnly || p.mechanisms !== undefined);

const rv = (name: string): number => {
  const code = RV[name];
  if (code === undefined) throw new Error(`protocol.json: no ${name}`);
  return code;
};
const CKR_SLOT_ID_INVALID = rv('CKR_SLOT_ID_INVALID');
const CKR_MECHANISM_INVALID = rv('CKR_MECHANISM_INVALID');
const CKR_TOKEN_WRITE_PROTECTED = rv('CKR_TOKEN_WRITE_PROTECTED');
const CKR_BUFFER_TOO_SMALL = rv('CKR_BUFFER_TOO_SMALL');
const CKR_CRYPTOKI_ALREADY_INITIALIZED = rv('CKR_CRYPTOKI_ALREADY_INITIALIZED');
const CKA_TOKEN = 0x1n;
const C_INIT_TOKEN = callByName('C_InitToken').id;
const CKF_RW_SESSION = 0x2n;
const CKF_TOKEN_INITIALIZED = 0x400n;

// ---------------------------------------------------------------- the policy

/** Calls a read-only port refuses outright: they initialise a token or change its PINs. */
const READ_ONLY_REFUSED: ReadonlySet<string> = new Set(['C_InitToken', 'C_InitPIN', 'C_SetPIN']);
/** Calls whose flags argument a read-only port checks for CKF_RW_SESSION. */
const READ_ONLY_SESSION_FLAGS: ReadonlyMap<string, string> = new Map([['C_OpenSession', 'flags']]);

// ---------------------------------------------------------------- the plan per call, from the table

interface ListResult {
  /** Index of the outlist argument (the caller's capacity). */
  readonly arg: number;
  /** Index of the outlist result. */
  readonly result: number;
}

interface CallPlan {
  /** Arguments of kind slot. */
  readonly slots: number[];
  /** Arguments of kind mechanism ([type, param]). */
  readonly mechanisms: number[];
  /** Arguments that are a bare CK_MECHANISM_TYPE (C_GetMechanismInfo's `type`). */
  readonly mechanismTypes: number[];
  /** Template arguments of calls that create an object (those returning an object handle). */
  readonly creatingTemplates: number[];
  /** An outlist of slot ids (C_GetSlotList). */
  readonly slotList?: ListResult;
  /** An outlist of mechanism types (C_GetMechanismList). */
  readonly mechanismList?: ListResult;
  /** Results of kind slot (C_WaitForSlotEvent). */
  readonly slotResults: number[];
  /** A flags argument a read-only port checks for CKF_RW_SESSION. */
  readonly sessionFlags?: number;
}

const indexes = <T>(xs: readonly T[], pred: (x: T) => boolean): number[] =>
  xs.flatMap((x, i) => (pred(x) ? [i] : []));

function listResult(spec: CallSpec, name: string): ListResult | undefined {
  const arg = spec.args.findIndex((a) => a.kind === 'outlist' && a.name === name);
  const result = spec.results.findIndex((r) => r.kind === 'outlist' && r.name === name);
  return arg >= 0 && result >= 0 ? { arg, result } : undefined;
}

function planFor(spec: CallSpec): CallPlan {
  const createsObject = spec.results.some((r) => r.kind === 'object');
  const flagsName = READ_ONLY_SESSION_FLAGS.get(spec.name);
  const flags = flagsName === undefined ? -1 : spec.args.findIndex((a) => a.name === flagsName && a.kind === 'ulong');
  if (flagsName !== undefined && flags < 0) throw new Error(`protocol.json: ${spec.name} has no ulong argument ${flagsName}`);
  return {
    slots: indexes(spec.args, (a) => a.kind === 'slot'),
    mechanisms: indexes(spec.args, (a) => a.kind === 'mechanism'),
    // The table types C_GetMechanismInfo's mechanism as `type:ulong`.
    mechanismTypes: indexes(spec.args, (a) => a.kind === 'ulong' && a.name === 'type'),
    creatingTemplates: createsObject ? indexes(spec.args, (a) => a.kind === 'template') : [],
    slotList: listResult(spec, 'slots'),
    mechanismList: listResult(spec, 'mechanisms'),
    slotResults: indexes(spec.results, (r) => r.kind === 'slot'),
    sessionFlags: flags >= 0 ? flags : undefined,
  };
}

const PLANS: ReadonlyMap<number, CallPlan> = new Map(CALLS.map((c) => [c.id, planFor(c)]));
for (const name of READ_ONLY_REFUSED) callByName(name); // a typo in the policy list fails at load

/** A CK_ULONG off the wire as a bigint (the values were checked by decodeCall/decodeResult). */
const big = (v: unknown): bigint => (typeof v === 'bigint' ? v : BigInt(v as number));

/**
 * Whether a template (or a template nested in it) sets CKA_TOKEN true.
 * decodeCall has typed every value by its attribute's kind, so CKA_TOKEN is
 * a boolean or nil (NULL, which the module refuses) and nothing else.
 */
export function makesTokenObject(template: unknown): boolean {
  if (!Array.isArray(template)) return false;
  for (const entry of template) {
    if (!Array.isArray(entry)) continue; // an element of a CK_ULONG array value
    const [type, value] = entry as [unknown, unknown];
    if (big(type) === CKA_TOKEN && value === true) return true;
    if (Array.isArray(value) && makesTokenObject(value)) return true;
  }
  return false;
}

// ---------------------------------------------------------------- the token probe

export interface TokenId {
  readonly label: string;
  readonly serial: string;
}

export interface TokenProbeOptions {
  executable: string;
  module: string;
  maxPayload: number;
  log: Logger;
  /** How long an answer is reused. Default 2000 ms. */
  ttlMs?: number;
  /** A slot the probe does not know forces a new look if the last is at least this old. Default 250 ms. */
  minRefreshMs?: number;
  /** A probe taking longer is presumed hung: its executor is killed and nothing is visible. Default 30 s. */
  timeoutMs?: number;
  limits?: ExecutorLimits;
}

const TOKENINFO = STRUCTS.tokeninfo.fields.map((f) => f.name);
const TI_LABEL = TOKENINFO.indexOf('label');
const TI_SERIAL = TOKENINFO.indexOf('serialNumber');
const TI_FLAGS = TOKENINFO.indexOf('flags');
if (TI_LABEL < 0 || TI_SERIAL < 0 || TI_FLAGS < 0) throw new Error('protocol.json: tokeninfo lacks label, serialNumber or flags');

/** A blank-padded CK_UTF8CHAR field as a string, without the padding. */
export const unpad = (b: Uint8Array): string => Buffer.from(b).toString('utf8').replace(/[ \0]+$/, '');

/**
 * Which token is in which slot, seen through a module instance of the
 * daemon's own (the apps' executors are theirs). One per daemon; its
 * executor starts on first need. Every look finalizes and initializes the
 * module again, since modules such as SoftHSM2 find tokens created by other
 * processes only in C_Initialize; answers are reused for ttlMs.
 *
 * Only initialized tokens are reported: an uninitialized slot has no label
 * or serial to grant, and SoftHSM2 numbers its free slot per process.
 */
export class TokenProbe {
  private executor: Executor | undefined;
  private initialized = false;
  private snapshot: { at: number; tokens: Map<string, TokenId> } | undefined;
  private pending: Promise<Map<string, TokenId>> | undefined;
  private closed = false;
  private readonly ttlMs: number;
  private readonly minRefreshMs: number;
  private readonly timeoutMs: number;

  constructor(private readonly opts: TokenProbeOptions) {
    this.ttlMs = opts.ttlMs ?? 2000;
    this.minRefreshMs = opts.minRefreshMs ?? 250;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
  }

  /** The token in each slot (undefined: no initialized token there, or the slot is unknown). */
  async lookup(slots: readonly unknown[]): Promise<Array<TokenId | undefined>> {
    let tokens = await this.current();
    if (slots.some((s) => !tokens.has(String(s))) && Date.now() - (this.snapshot?.at ?? 0) >= this.minRefreshMs) {
      tokens = await this.refresh(); // a token initialized since the last look
    }
    return slots.map((s) => tokens.get(String(s)));
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.pending?.catch(() => {});
    await this.executor?.close();
    this.executor = undefined;
  }

  private current(): Promise<Map<string, TokenId>> {
    if (this.snapshot && Date.now() - this.snapshot.at < this.ttlMs) return Promise.resolve(this.snapshot.tokens);
    return this.refresh();
  }

  private refresh(): Promise<Map<string, TokenId>> {
    this.pending ??= this.look().finally(() => {
      this.pending = undefined;
    });
    return this.pending;
  }

  private async look(): Promise<Map<string, TokenId>> {
    let tokens = new Map<string, TokenId>();
    const timer = setTimeout(() => this.executor?.kill(), this.timeoutMs);
    try {
      if (this.closed) throw new Error('the daemon is stopping');
      tokens = await this.ask();
    } catch (e) {
      // Fail closed: nothing is visible through a restricted port until the probe recovers.
      this.opts.log.error({ err: (e as Error).message }, 'policy probe failed; restricted ports see no token');
      this.executor?.kill();
      this.executor = undefined;
      this.initialized = false;
    } finally {
      clearTimeout(timer);
    }
    this.snapshot = { at: Date.now(), tokens };
    return tokens;
  }

  private async ask(): Promise<Map<string, TokenId>> {
    if (!this.executor?.alive) {
      this.executor = new Executor({
        executable: this.opts.executable, module: this.opts.module, maxPayload: this.opts.maxPayload, limits: this.opts.limits,
        onStderr: (line) => this.opts.log.warn({ line }, 'policy probe executor stderr'),
      });
      this.initialized = false;
    }
    const ex = this.executor;
    /** One call on the probe's module instance; rv must be one of `ok` (any rv if `ok` is undefined). */
    const call = async (name: string, args: unknown[], ok?: readonly number[]): Promise<{ rv: number; results: unknown[] | undefined }> => {
      const spec = callByName(name);
      const reply = await ex.call(encodeCall(spec, args));
      if (!reply.ok) throw new Error(`${name}: ${reply.message}`);
      const r = decodeResult(spec, reply.payload);
      if (ok && !ok.includes(r.rv)) throw new Error(`${name}: ${rvName(r.rv)}`);
      return r;
    };
    if (this.initialized) await call('C_Finalize', [], [CKR.OK, CKR.CRYPTOKI_NOT_INITIALIZED]);
    this.initialized = false;
    await call('C_Initialize', [], [CKR.OK, CKR_CRYPTOKI_ALREADY_INITIALIZED]);
    this.initialized = true;
    const { results } = await call('C_GetSlotList', [false, true], [CKR.OK]);
    const tokens = new Map<string, TokenId>();
    for (const slot of results![0] as unknown[]) {
      const ti = await call('C_GetTokenInfo', [slot]);
      if (ti.rv !== CKR.OK) continue; // no token, or one the module cannot read: nothing to grant
      const info = ti.results![0] as unknown[];
      if ((big(info[TI_FLAGS]) & CKF_TOKEN_INITIALIZED) === 0n) continue;
      tokens.set(String(slot), { label: unpad(info[TI_LABEL] as Uint8Array), serial: unpad(info[TI_SERIAL] as Uint8Array) });
    }
    this.opts.log.debug({ tokens: tokens.size }, 'policy probe');
    return tokens;
  }
}

// ---------------------------------------------------------------- enforcement

export interface CallContext {
  conn: number;
  req: number;
  /** The port's rate-limited log for what its guests cause (denials). */
  log?: LineLog;
}

/** Runs a CALL payload on the app's executor. */
export type Execute = (payload: Uint8Array) => Promise<ExecutorReply>;

/** Sits between a connection and its executor on a port with a policy. */
export interface CallGate {
  run(payload: Buffer, execute: Execute, ctx: CallContext): Promise<ExecutorReply>;
}

export class PolicyEnforcer implements CallGate {
  constructor(
    readonly port: string,
    readonly policy: PortPolicy,
    private readonly probe: () => TokenProbe,
    private readonly log: Logger,
  ) {}

  async run(payload: Buffer, execute: Execute, ctx: CallContext): Promise<ExecutorReply> {
    // Token initialisation is off unless the port's config allows it: a guest
    // that creates tokens slows every app's C_Initialize and the token probe.
    if (!this.policy.initToken && peekFirstUint(payload) === C_INIT_TOKEN) {
      (ctx.log ?? this.log).warn({ port: this.port, conn: ctx.conn, req: ctx.req, fn: 'C_InitToken', rv: 'CKR_TOKEN_WRITE_PROTECTED', reason: 'token initialisation is off on this port (initToken)' }, 'call denied by policy');
      return { ok: true, payload: pack([CKR_TOKEN_WRITE_PROTECTED]) };
    }
    if (!isRestrictive(this.policy)) return execute(payload);
    let call: { spec: CallSpec; args: unknown[] };
    try {
      call = decodeCall(payload);
    } catch (e) {
      // Fail closed: what the policy cannot read does not reach the module
      // (an unknown call id is CKR_FUNCTION_NOT_SUPPORTED, as from the executor).
      if (!(e instanceof ProtocolError)) return { ok: false, rv: CKR.ARGUMENTS_BAD, message: String(e) };
      // A refused argument is the call's answer, as the executor gives it.
      return e.refusal ? { ok: true, payload: pack([e.rv]) } : { ok: false, rv: e.rv, message: e.message };
    }
    const { spec, args } = call;
    const plan = PLANS.get(spec.id)!;
    const { tokens, mechanisms, readOnly } = this.policy;
    const log = ctx.log ?? this.log;
    const deny = (code: number, reason: string): ExecutorReply => {
      log.warn({ port: this.port, conn: ctx.conn, req: ctx.req, fn: spec.name, rv: rvName(code), reason }, 'call denied by policy');
      return { ok: true, payload: encodeResult(spec, code) };
    };

    if (tokens && plan.slots.length > 0) {
      const granted = await this.granted(plan.slots.map((i) => args[i]));
      if (granted.includes(false)) return deny(CKR_SLOT_ID_INVALID, 'slot not granted to this port');
    }
    if (mechanisms) {
      for (const i of plan.mechanisms) {
        if (!mechanisms.has(big((args[i] as unknown[])[0]))) return deny(CKR_MECHANISM_INVALID, 'mechanism not allowed on this port');
      }
      for (const i of plan.mechanismTypes) {
        if (!mechanisms.has(big(args[i]))) return deny(CKR_MECHANISM_INVALID, 'mechanism not allowed on this port');
      }
    }
    if (readOnly) {
      if (READ_ONLY_REFUSED.has(spec.name)) return deny(CKR_TOKEN_WRITE_PROTECTED, `read-only port: ${spec.name} changes the token`);
      if (plan.sessionFlags !== undefined && (big(args[plan.sessionFlags]) & CKF_RW_SESSION) !== 0n) {
        return deny(CKR_TOKEN_WRITE_PROTECTED, 'read-only port: read/write session');
      }
      if (plan.creatingTemplates.some((i) => makesTokenObject(args[i]))) {
        return deny(CKR_TOKEN_WRITE_PROTECTED, 'read-only port: template creates a token object');
      }
    }

    const slotList = tokens ? plan.slotList : undefined;
    const mechanismList = mechanisms ? plan.mechanismList : undefined;
    const list = slotList ?? mechanismList;
    const slotResults = tokens ? plan.slotResults : [];
    if (!list && slotResults.length === 0) return execute(payload);

    // The call's answer is filtered: fetch the whole list (capacity true) and
    // answer as the caller asked (count query, capacity, or all).
    const asked = list ? args[list.arg] : undefined;
    const sent = list ? args.map((a, i) => (i === list.arg ? true : a)) : args;
    const reply = await execute(list ? encodeCall(spec, sent) : payload);
    if (!reply.ok) return reply;
    let result: { rv: number; results: unknown[] | undefined };
    try {
      result = decodeResult(spec, reply.payload);
    } catch (e) {
      return { ok: false, rv: CKR.DEVICE_ERROR, message: `malformed result from the module instance: ${(e as Error).message}` };
    }
    if (result.rv !== CKR.OK || !result.results) {
      // A list the module could not fetch whole (it grew meanwhile): the rv only, never the unfiltered count.
      return list && result.results ? { ok: true, payload: pack([result.rv]) } : reply;
    }
    const results = [...result.results];

    for (const i of slotResults) {
      const [ok] = await this.granted([results[i]]);
      if (!ok) {
        log.debug({ port: this.port, conn: ctx.conn, req: ctx.req, fn: spec.name }, 'slot event of a token not granted to this port hidden');
        return { ok: true, payload: encodeResult(spec, CKR.NO_EVENT) };
      }
    }
    if (!list) return { ok: true, payload: encodeResult(spec, result.rv, results) };

    const all = results[list.result];
    if (!Array.isArray(all)) return { ok: false, rv: CKR.DEVICE_ERROR, message: `${spec.name}: the module instance answered a count where the list was asked for` };
    let kept: unknown[];
    if (list === slotList) {
      const granted = await this.granted(all);
      kept = all.filter((_, i) => granted[i]);
    } else {
      kept = all.filter((m) => mechanisms!.has(big(m)));
    }
    if (kept.length !== all.length) {
      log.debug({ port: this.port, conn: ctx.conn, req: ctx.req, fn: spec.name, hidden: all.length - kept.length }, 'list filtered by policy');
    }
    let code: number = CKR.OK;
    if (asked === null) {
      results[list.result] = kept.length; // count query
    } else if (asked === true || big(asked) >= BigInt(kept.length)) {
      results[list.result] = kept;
    } else {
      code = CKR_BUFFER_TOO_SMALL;
      results[list.result] = kept.length;
    }
    return { ok: true, payload: encodeResult(spec, code, results) };
  }

  /** Whether each slot holds a token this port may see. */
  private async granted(slots: readonly unknown[]): Promise<boolean[]> {
    const grants = this.policy.tokens;
    if (!grants) return slots.map(() => true);
    const tokens = await this.probe().lookup(slots);
    return tokens.map((t) => t !== undefined && grants.some((g) =>
      (g.label === undefined || g.label === t.label) && (g.serial === undefined || g.serial === t.serial)));
  }
}

/** What a policy restricts, for the start-up log (no secrets in a policy, but keep it short). */
export function describePolicy(p: PortPolicy): Record<string, unknown> {
  return {
    tokens: p.tokens?.map((t) => [t.label && `label=${t.label}`, t.serial && `serial=${t.serial}`].filter(Boolean).join(',')) ?? 'all',
    readOnly: p.readOnly,
    initToken: p.initToken === true,
    mechanisms: p.mechanisms ? p.mechanisms.size : 'all',
  };
}
