// CALL and RESULT payloads: [id, args...] and [rv, results...], checked
// against the call table in both directions.
import { checkArg, checkResult } from './kinds.js';
import { pack, peekFirstUint, unpackUntrusted } from './msgpack.js';
import { CKR } from './errors.js';
import { assertNever, callById, RV, type CallSpec } from './table.js';

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    message: string,
    /** The CKR code a server answers with: CKR_ARGUMENTS_BAD unless the call itself is unknown. */
    readonly rv: number = CKR.ARGUMENTS_BAD,
    /**
     * A well-formed call whose argument the table refuses (a mechanism
     * parameter or attribute value in the wrong form): answered as a RESULT
     * with `rv`, as a module would, not as an ERROR.
     */
    readonly refusal = false,
  ) {
    super(message);
  }
}

export function encodeCall(spec: CallSpec, args: readonly unknown[]): Buffer {
  checkArgs(spec, args);
  return pack([spec.id, ...args]);
}

function checkArgs(spec: CallSpec, args: readonly unknown[]): void {
  checkArity(spec, 'argument', spec.args.length, args.length);
  spec.args.forEach((p, i) => {
    const problem = checkArg(p.kind, args[i]);
    if (problem) {
      const message = `${spec.name} argument ${i + 1} (${p.name}): ${problem.message}`;
      throw problem.rv === undefined ? new ProtocolError(message) : new ProtocolError(message, problem.rv, true);
    }
  });
}

export function decodeCall(payload: Uint8Array): { spec: CallSpec; args: unknown[] } {
  const v = safeUnpack(payload);
  if (!Array.isArray(v) || v.length === 0) throw new ProtocolError('CALL payload is not [id, args...]');
  const spec = typeof v[0] === 'number' ? callById(v[0]) : undefined;
  if (!spec) {
    const known = typeof v[0] === 'number' || typeof v[0] === 'bigint';
    throw new ProtocolError(`unknown call id ${String(v[0])}`, known ? CKR.FUNCTION_NOT_SUPPORTED : CKR.ARGUMENTS_BAD);
  }
  const args = v.slice(1);
  checkArgs(spec, args);
  return { spec, args };
}

/** Whether a RESULT with this rv carries the call's results. */
export const carriesResults = (spec: CallSpec, rv: number): boolean => rv === RV.CKR_OK || spec.partial.has(rv);

export function encodeResult(spec: CallSpec, rv: number, results: readonly unknown[] = []): Buffer {
  if (!carriesResults(spec, rv)) return pack([rv]);
  checkArity(spec, 'result', spec.results.length, results.length);
  return pack([rv, ...results]);
}

export interface DecodedResult { rv: number; results: unknown[] | undefined }

export function decodeResult(spec: CallSpec, payload: Uint8Array): DecodedResult {
  const v = safeUnpack(payload);
  if (!Array.isArray(v) || v.length === 0 || typeof v[0] !== 'number' || !Number.isInteger(v[0]) || v[0] < 0) {
    throw new ProtocolError(`${spec.name}: RESULT payload is not [rv, results...]`);
  }
  const rv = v[0];
  if (v.length === 1) {
    if (rv === RV.CKR_OK && spec.results.length > 0) throw new ProtocolError(`${spec.name}: CKR_OK without results`);
    return { rv, results: rv === RV.CKR_OK ? [] : undefined };
  }
  if (!carriesResults(spec, rv)) throw new ProtocolError(`${spec.name}: results with rv ${rv}`);
  const results = v.slice(1);
  checkArity(spec, 'result', spec.results.length, results.length);
  spec.results.forEach((p, i) => {
    const err = checkResult(p.kind, results[i]);
    if (err) throw new ProtocolError(`${spec.name} result ${i + 1} (${p.name}): ${err}`);
  });
  return { rv, results };
}

export { peekFirstUint };

/**
 * About how many bytes the RESULT payload of a call takes, from the output
 * capacities in its wire arguments (capped at `limit`): what a sender adds
 * to its wait on a slow line. The same rules as pb_client_expected_len in
 * native/src/module/marshal.c; an objectlist is bounded by the call's
 * maxObjectCount argument, as protocol.json's kinds say.
 */
export function expectedResultBytes(spec: CallSpec, args: readonly unknown[], limit: number): number {
  const arg = (name: string): unknown => args[spec.args.findIndex((a) => a.name === name)];
  const count = (v: unknown): number | undefined => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined);
  let n = 16; // [rv, ...]
  for (const p of spec.results) {
    const v = p.kind === 'objectlist' ? arg('maxObjectCount') : arg(p.name);
    const c = count(v);
    switch (p.kind) {
      case 'outbytes': case 'outfixed': n += c === undefined ? 9 : Math.min(c, limit) + 5; break;
      case 'outlist': n += c === undefined ? (v === true ? 1024 : 9) : Math.min(c * 9, limit) + 5; break;
      case 'objectlist': n += Math.min((c ?? 0) * 9, limit) + 5; break;
      case 'attrvalues': n += 5 + (Array.isArray(v) ? v.length * (10 + 256) : 0); break;
      case 'ulong': case 'slot': case 'session': case 'object': n += 9; break;
      case 'info': case 'slotinfo': case 'tokeninfo': case 'sessioninfo': case 'mechinfo': n += 256; break;
      default: assertNever(p.kind, 'result kind');
    }
    if (n >= limit) return limit;
  }
  return n;
}

function checkArity(spec: CallSpec, what: string, expected: number, got: number): void {
  if (expected !== got) throw new ProtocolError(`${spec.name} takes ${expected} ${what}s, got ${got}`);
}

function safeUnpack(payload: Uint8Array): unknown {
  try {
    return unpackUntrusted(payload);
  } catch (e) {
    throw new ProtocolError((e as Error).message);
  }
}
