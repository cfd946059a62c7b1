// Checks that a value off the line has the shape its kind demands
// (protocol.json `kinds`, `paramKindsDoc`, `attributesDoc`). Every decoder
// runs these before using a value, so a hostile or damaged payload is
// reported precisely instead of misread. native/src/wire.c applies the same
// rules in the same order: the golden vectors hold cases both must refuse.
//
// Two sorts of problem: a value that is not the protocol at all (malformed:
// the server answers ERROR CKR_ARGUMENTS_BAD), and a well-formed value in the
// wrong form for its mechanism or attribute (answered as the PKCS#11 return
// value a module gives for it, without calling the module).
import { ulongFromWire } from './msgpack.js';
import {
  assertNever, attributeKind, LIMITS, mechanismParamForm, rvCode, STRUCTS,
  type ArgKind, type FieldKind, type ResultKind, type StructName, type StructSpec,
} from './table.js';

export const MAX_TEMPLATE = LIMITS.maxTemplate;

export interface Problem {
  readonly message: string;
  /** Set when the value is well-formed but refused: the call is answered with this rv. */
  readonly rv?: number;
}

const CKR_MECHANISM_PARAM_INVALID = rvCode('CKR_MECHANISM_PARAM_INVALID');
const CKR_ATTRIBUTE_VALUE_INVALID = rvCode('CKR_ATTRIBUTE_VALUE_INVALID');

const isBin = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isUlong = (v: unknown): boolean => ulongFromWire(v) !== undefined;
/** One of the value types the protocol uses anywhere (not str, map, float, ext, negative int). */
const isWireValue = (v: unknown): boolean => v === null || typeof v === 'boolean' || isBin(v) || isUlong(v) || Array.isArray(v);
export const describe = (v: unknown): string =>
  v === null ? 'nil' : v === undefined ? 'nothing' : isBin(v) ? `bin(${v.length})` : Array.isArray(v) ? `array(${v.length})` : typeof v === 'bigint' ? (v < 0n ? 'negative int' : 'int') : typeof v === 'number' ? (Number.isInteger(v) ? (v < 0 ? 'negative int' : 'int') : 'float') : typeof v;

const malformed = (message: string): Problem => ({ message });
const refused = (rv: number, message: string): Problem => ({ rv, message });
const want = (what: string, ok: boolean, v: unknown): Problem | undefined => (ok ? undefined : malformed(`expected ${what}, got ${describe(v)}`));

function checkField(kind: FieldKind, v: unknown): string | undefined {
  const ok = (cond: boolean, what: string) => (cond ? undefined : `expected ${what}, got ${describe(v)}`);
  if (kind === 'ulong') return ok(isUlong(v), 'int');
  if (kind === 'bytes') return ok(v === null || isBin(v), 'bin or nil');
  if (kind === 'version') return ok(Array.isArray(v) && v.length === 2 && v.every((x) => Number.isInteger(x) && x >= 0 && x <= 255), '[major, minor]');
  const n = kind === 'fixed8' ? 8 : kind === 'fixed16' ? 16 : Number(kind.slice(4));
  return ok(isBin(v) && v.length === n, `bin(${n})`);
}

/** Checks a structure's fields; undefined when it is right, else what is wrong. */
export function checkStruct(spec: StructSpec, v: unknown): string | undefined {
  if (!Array.isArray(v) || v.length !== spec.fields.length) return `expected ${spec.ctype} as array(${spec.fields.length}), got ${describe(v)}`;
  for (let i = 0; i < spec.fields.length; i++) {
    const f = spec.fields[i]!;
    const err = checkField(f.kind, v[i]);
    if (err) return `${spec.ctype}.${f.name}: ${err}`;
  }
  return undefined;
}

const typeName = (type: unknown): string => `0x${BigInt(type as number).toString(16)}`;

/** A value of a guest's template, typed by its attribute's kind (`depth` 0 at the top, 1 inside a nested template). */
function checkAttrValue(type: unknown, v: unknown, depth: number): Problem | undefined {
  if (v === null) return undefined; // NULL, length 0: for the module to judge
  if (!isWireValue(v)) return malformed(`expected an attribute value, got ${describe(v)}`);
  const kind = attributeKind(type as number | bigint);
  const wrong = (what: string) => refused(CKR_ATTRIBUTE_VALUE_INVALID, `attribute ${typeName(type)} (${kind}) must be ${what}, got ${describe(v)}`);
  switch (kind) {
    case 'bool': return typeof v === 'boolean' ? undefined : wrong('a boolean');
    case 'ulong': return isUlong(v) ? undefined : wrong('an unsigned integer');
    case 'bytes': return isBin(v) ? undefined : wrong('bin');
    case 'date': return isBin(v) && (v.length === 0 || v.length === 8) ? undefined : wrong('bin of 8 bytes (YYYYMMDD) or empty');
    case 'ulonglist':
      if (!Array.isArray(v)) return wrong('an array of unsigned integers');
      if (v.length > MAX_TEMPLATE) return malformed(`CK_ULONG array of ${v.length} elements exceeds ${MAX_TEMPLATE}`);
      return v.every(isUlong) ? undefined : wrong('an array of unsigned integers');
    case 'template':
      if (!Array.isArray(v)) return wrong('a template');
      if (depth >= LIMITS.maxNesting) return wrong(`a template no more than ${LIMITS.maxNesting} level deep`);
      return checkTemplate(v, depth + 1);
    default: return assertNever(kind, 'attribute kind');
  }
}

/** A guest's template: nil (NULL) or [[type, value], ...]. */
function checkTemplate(v: unknown, depth = 0): Problem | undefined {
  if (v === null && depth === 0) return undefined;
  if (!Array.isArray(v)) return malformed(`expected template, got ${describe(v)}`);
  if (v.length > MAX_TEMPLATE) return malformed(`${depth ? 'nested template' : 'template'} of ${v.length} attributes exceeds ${MAX_TEMPLATE}`);
  for (let i = 0; i < v.length; i++) {
    const a = v[i];
    if (!Array.isArray(a) || a.length !== 2 || !isUlong(a[0])) return malformed(`attribute ${i}: expected [type, value], got ${describe(a)}`);
    const p = checkAttrValue(a[0], a[1], depth);
    if (p) return { ...p, message: `attribute ${i}: ${p.message}` };
  }
  return undefined;
}

function checkMechanism(v: unknown): Problem | undefined {
  if (!Array.isArray(v) || v.length < 1 || v.length > 2 || !isUlong(v[0])) return malformed(`expected [type] or [type, parameter], got ${describe(v)}`);
  const p = v[1];
  if (p === undefined || p === null) return undefined;
  if (!(isBin(p) || isUlong(p) || Array.isArray(p))) return malformed(`parameter: expected nil, bin, int or array, got ${describe(p)}`);
  if (isBin(p) && p.length === 0) return undefined; // a non-NULL pointer, length 0: no parameter
  const type = v[0] as number | bigint;
  const form = mechanismParamForm(type);
  const wrong = (what: string) => refused(CKR_MECHANISM_PARAM_INVALID, `mechanism ${typeName(type)} takes ${what}, got ${describe(p)}`);
  switch (form.form) {
    case 'none': return wrong('no parameter');
    case 'bytes': return isBin(p) ? undefined : wrong('a byte string');
    case 'ulong': return isUlong(p) ? undefined : wrong('an unsigned integer');
    case 'struct': {
      if (!Array.isArray(p)) return wrong(`${form.spec.ctype} as an array of its fields`);
      const err = checkStruct(form.spec, p);
      return err ? refused(CKR_MECHANISM_PARAM_INVALID, err) : undefined;
    }
    default: return assertNever(form, 'parameter form');
  }
}

type Check = (v: unknown) => Problem | undefined;

const argChecks: { readonly [K in ArgKind]: Check } = {
  ulong: (v) => want('int', isUlong(v), v),
  slot: (v) => want('int', isUlong(v), v),
  session: (v) => want('int', isUlong(v), v),
  object: (v) => want('int', isUlong(v), v),
  bool: (v) => want('bool', typeof v === 'boolean', v),
  bytes: (v) => want('bin or nil', v === null || isBin(v), v),
  label: (v) => want('bin(32)', isBin(v) && v.length === 32, v),
  mechanism: checkMechanism,
  template: (v) => checkTemplate(v),
  attrquery: (v) => {
    if (v === null) return undefined;
    if (!Array.isArray(v) || v.length > MAX_TEMPLATE) return malformed(`expected nil or an array of at most ${MAX_TEMPLATE} [type, want], got ${describe(v)}`);
    const bad = v.findIndex((a) => !Array.isArray(a) || a.length !== 2 || !isUlong(a[0]) || typeof a[1] !== 'boolean');
    return bad === -1 ? undefined : malformed(`entry ${bad}: expected [type, want]`);
  },
  outbytes: (v) => want('capacity (int) or nil', v === null || isUlong(v), v),
  outlist: (v) => want('capacity (int), nil or true', v === null || v === true || isUlong(v), v),
  outfixed: (v) => want('length (int) or nil', v === null || isUlong(v), v),
};

/** A value of a module's answer: lenient about sizes (a value of an unexpected size travels as bin). */
function checkAnswerValue(v: unknown, depth: number): string | undefined {
  if (v === null || typeof v === 'boolean' || isBin(v) || isUlong(v)) return undefined;
  if (!Array.isArray(v)) return `expected attribute value, got ${describe(v)}`;
  if (v.length > MAX_TEMPLATE) return `array of ${v.length} elements exceeds ${MAX_TEMPLATE}`;
  if (v.every(isUlong)) return undefined;
  if (depth >= LIMITS.maxNesting) return 'templates nest one level only';
  for (let i = 0; i < v.length; i++) {
    const a = v[i];
    if (!Array.isArray(a) || a.length !== 2 || !isUlong(a[0])) return `nested attribute ${i}: expected [type, value]`;
    const err = checkAnswerValue(a[1], depth + 1);
    if (err) return `nested attribute ${i}: ${err}`;
  }
  return undefined;
}

const ok = (what: string, cond: boolean, v: unknown): string | undefined => (cond ? undefined : `expected ${what}, got ${describe(v)}`);
const structCheck = (name: StructName) => (v: unknown) => checkStruct(STRUCTS[name], v);
const resultChecks: { readonly [K in ResultKind]: (v: unknown) => string | undefined } = {
  ulong: (v) => ok('int', isUlong(v), v),
  slot: (v) => ok('int', isUlong(v), v),
  session: (v) => ok('int', isUlong(v), v),
  object: (v) => ok('int', isUlong(v), v),
  outbytes: (v) => ok('bin or length', isBin(v) || isUlong(v), v),
  outlist: (v) => ok('array of int or count', isUlong(v) || (Array.isArray(v) && v.every(isUlong)), v),
  objectlist: (v) => ok('array of int', Array.isArray(v) && v.every(isUlong), v),
  outfixed: (v) => ok('bin or nil', v === null || isBin(v), v),
  attrvalues: (v) => {
    if (!Array.isArray(v)) return `expected array, got ${describe(v)}`;
    for (let i = 0; i < v.length; i++) {
      const err = checkAnswerValue(v[i], 0);
      if (err) return `entry ${i}: ${err}`;
    }
    return undefined;
  },
  info: structCheck('info'),
  slotinfo: structCheck('slotinfo'),
  tokeninfo: structCheck('tokeninfo'),
  sessioninfo: structCheck('sessioninfo'),
  mechinfo: structCheck('mechinfo'),
};

export const checkArg = (kind: ArgKind, v: unknown): Problem | undefined => argChecks[kind](v);
export const checkResult = (kind: ResultKind, v: unknown): string | undefined => resultChecks[kind](v);
