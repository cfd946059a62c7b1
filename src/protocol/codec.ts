// CALL and RESULT payloads: [id, args...] and [rv, results...], checked
// against the call table in both directions.
import { checkArg, checkResult } from './kinds.js';
import { checkStructure, pack, peekFirstUint, unpack } from './msgpack.js';
import { callById, RV, type CallSpec } from './table.js';

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  /** The CKR code a server answers with: CKR_ARGUMENTS_BAD unless the call itself is unknown. */
  constructor(message: string, readonly rv = 0x7 /* CKR_ARGUMENTS_BAD */) {
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
    const err = checkArg(p.kind, args[i]);
    if (err) throw new ProtocolError(`${spec.name} argument ${i + 1} (${p.name}): ${err}`);
  });
}

export function decodeCall(payload: Uint8Array): { spec: CallSpec; args: unknown[] } {
  const v = safeUnpack(payload);
  if (!Array.isArray(v) || v.length === 0) throw new ProtocolError('CALL payload is not [id, args...]');
  const spec = typeof v[0] === 'number' ? callById(v[0]) : undefined;
  if (!spec) {
    const known = typeof v[0] === 'number' || typeof v[0] === 'bigint';
    throw new ProtocolError(`unknown call id ${String(v[0])}`, known ? 0x54 /* CKR_FUNCTION_NOT_SUPPORTED */ : 0x7);
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

function checkArity(spec: CallSpec, what: string, expected: number, got: number): void {
  if (expected !== got) throw new ProtocolError(`${spec.name} takes ${expected} ${what}s, got ${got}`);
}

function safeUnpack(payload: Uint8Array): unknown {
  const bad = checkStructure(payload);
  if (bad) throw new ProtocolError(`malformed payload: ${bad}`);
  try {
    return unpack(payload);
  } catch (e) {
    throw new ProtocolError(`payload is not MessagePack: ${(e as Error).message}`);
  }
}
