// Checks that a value off the line has the shape its kind demands
// (protocol.json `kinds`). Every decoder runs these before using a value, so
// a hostile or damaged payload is reported precisely instead of misread.
import { ulongFromWire } from './msgpack.js';
import { mechanismParamSpec, STRUCTS, type ArgKind, type FieldKind, type ResultKind, type StructName, type StructSpec } from './table.js';

export const MAX_TEMPLATE = 1024;

const isBin = (v: unknown): v is Uint8Array => v instanceof Uint8Array;
const isUlong = (v: unknown): boolean => ulongFromWire(v) !== undefined;
const describe = (v: unknown): string =>
  v === null ? 'nil' : isBin(v) ? `bin(${v.length})` : Array.isArray(v) ? `array(${v.length})` : typeof v === 'bigint' ? 'int' : typeof v === 'number' ? (Number.isInteger(v) ? (v < 0 ? 'negative int' : 'int') : 'float') : typeof v;

type Check = (v: unknown) => string | undefined;
const want = (what: string, ok: boolean, v: unknown): string | undefined => (ok ? undefined : `expected ${what}, got ${describe(v)}`);

function checkField(kind: FieldKind, v: unknown): string | undefined {
  if (kind === 'ulong') return want('int', isUlong(v), v);
  if (kind === 'bytes') return want('bin or nil', v === null || isBin(v), v);
  if (kind === 'version') {
    return want('[major, minor]', Array.isArray(v) && v.length === 2 && v.every((x) => Number.isInteger(x) && x >= 0 && x <= 255), v);
  }
  const n = kind === 'fixed8' ? 8 : kind === 'fixed16' ? 16 : Number(kind.slice(4));
  return want(`bin(${n})`, isBin(v) && v.length === n, v);
}

export function checkStruct(spec: StructSpec, v: unknown): string | undefined {
  if (!Array.isArray(v) || v.length !== spec.fields.length) return `expected ${spec.ctype} as array(${spec.fields.length}), got ${describe(v)}`;
  for (let i = 0; i < spec.fields.length; i++) {
    const f = spec.fields[i]!;
    const err = checkField(f.kind, v[i]);
    if (err) return `${spec.ctype}.${f.name}: ${err}`;
  }
  return undefined;
}

function checkAttrValue(v: unknown, depth: number): string | undefined {
  if (v === null || typeof v === 'boolean' || isBin(v) || isUlong(v)) return undefined;
  if (!Array.isArray(v)) return `expected attribute value, got ${describe(v)}`;
  if (v.length > MAX_TEMPLATE) return `nested template of ${v.length} attributes exceeds ${MAX_TEMPLATE}`;
  if (v.every(isUlong)) return undefined;
  if (depth > 0) return 'templates nest one level only';
  return checkTemplate(v, depth + 1);
}

function checkTemplate(v: unknown, depth = 0): string | undefined {
  if (!Array.isArray(v)) return `expected template, got ${describe(v)}`;
  if (v.length > MAX_TEMPLATE) return `template of ${v.length} attributes exceeds ${MAX_TEMPLATE}`;
  for (let i = 0; i < v.length; i++) {
    const a = v[i];
    if (!Array.isArray(a) || a.length !== 2 || !isUlong(a[0])) return `attribute ${i}: expected [type, value], got ${describe(a)}`;
    const err = checkAttrValue(a[1], depth);
    if (err) return `attribute ${i}: ${err}`;
  }
  return undefined;
}

function checkMechanism(v: unknown): string | undefined {
  if (!Array.isArray(v) || v.length < 1 || v.length > 2 || !isUlong(v[0])) return `expected [type] or [type, parameter], got ${describe(v)}`;
  const p = v[1];
  if (p === undefined || p === null || isBin(p) || isUlong(p)) return undefined;
  if (!Array.isArray(p)) return `parameter: expected nil, bin, int or array, got ${describe(p)}`;
  const spec = mechanismParamSpec(Number(v[0]));
  // An unknown structure is for the module to refuse (CKR_MECHANISM_PARAM_INVALID).
  return spec ? checkStruct(spec, p) : undefined;
}

const argChecks: Record<ArgKind, Check> = {
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
    if (!Array.isArray(v) || v.length > MAX_TEMPLATE) return `expected array of at most ${MAX_TEMPLATE} [type, want], got ${describe(v)}`;
    const bad = v.findIndex((a) => !Array.isArray(a) || a.length !== 2 || !isUlong(a[0]) || typeof a[1] !== 'boolean');
    return bad === -1 ? undefined : `entry ${bad}: expected [type, want]`;
  },
  outbytes: (v) => want('capacity (int) or nil', v === null || isUlong(v), v),
  outlist: (v) => want('capacity (int), nil or true', v === null || v === true || isUlong(v), v),
  outfixed: (v) => want('length (int)', isUlong(v), v),
};

const structCheck = (name: StructName): Check => (v) => checkStruct(STRUCTS[name], v);
const resultChecks: Record<ResultKind, Check> = {
  ulong: argChecks.ulong,
  slot: argChecks.slot,
  session: argChecks.session,
  object: argChecks.object,
  outbytes: (v) => want('bin or length', isBin(v) || isUlong(v), v),
  outlist: (v) => want('array of int or count', isUlong(v) || (Array.isArray(v) && v.every(isUlong)), v),
  objectlist: (v) => want('array of int', Array.isArray(v) && v.every(isUlong), v),
  outfixed: (v) => want('bin', isBin(v), v),
  attrvalues: (v) => {
    if (!Array.isArray(v)) return `expected array, got ${describe(v)}`;
    for (let i = 0; i < v.length; i++) {
      const err = checkAttrValue(v[i], 0);
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

export const checkArg = (kind: ArgKind, v: unknown): string | undefined => argChecks[kind](v);
export const checkResult = (kind: ResultKind, v: unknown): string | undefined => resultChecks[kind](v);
