// The call table from proto/protocol.json, typed and checked when it loads.
// Everything that encodes, decodes or dispatches a PKCS#11 call goes through
// here, so the 68 shapes are written down once (in the JSON) and interpreted
// everywhere else. A kind the code does not know stops the load, as
// native/tools/gen.mjs stops the C build.
import protocolJson from '../../proto/protocol.json' with { type: 'json' };

/** Every kind of protocol.json `kinds`, listed once. */
export const ARG_KINDS = ['ulong', 'bool', 'slot', 'session', 'object', 'bytes', 'label', 'mechanism', 'template', 'attrquery', 'outbytes', 'outlist', 'outfixed'] as const;
export const STRUCT_NAMES = ['info', 'slotinfo', 'tokeninfo', 'sessioninfo', 'mechinfo'] as const;
export const RESULT_KINDS = ['ulong', 'slot', 'session', 'object', 'outbytes', 'outlist', 'objectlist', 'outfixed', 'attrvalues', ...STRUCT_NAMES] as const;
export const ATTR_KINDS = ['ulong', 'bool', 'template', 'ulonglist', 'bytes', 'date'] as const;

export type ArgKind = (typeof ARG_KINDS)[number];
export type StructName = (typeof STRUCT_NAMES)[number];
export type ResultKind = (typeof RESULT_KINDS)[number];
export type AttrKind = (typeof ATTR_KINDS)[number];
export type FieldKind = 'ulong' | 'bytes' | 'version' | 'fixed8' | 'fixed16' | `char${number}`;

export interface Param<K extends string> { readonly name: string; readonly kind: K }
export interface CallSpec {
  readonly id: number;
  readonly name: string;
  readonly args: readonly Param<ArgKind>[];
  readonly results: readonly Param<ResultKind>[];
  /** Answered by the client library itself, never sent (C_GetFunctionList). */
  readonly local: boolean;
  /** Return values other than CKR_OK that still carry the results. */
  readonly partial: ReadonlySet<number>;
}
export interface FieldSpec { readonly name: string; readonly kind: FieldKind }
export interface StructSpec { readonly ctype: string; readonly fields: readonly FieldSpec[] }

/** The form a mechanism's parameter takes on the wire (protocol.json `paramKindsDoc`). */
export type ParamForm =
  | { readonly form: 'none' }
  | { readonly form: 'bytes' }
  | { readonly form: 'ulong' }
  | { readonly form: 'struct'; readonly spec: StructSpec };

export function assertNever(x: never, what: string): never {
  throw new Error(`unexpected ${what}: ${String(x)}`);
}

interface RawCall { id: number; name: string; args: string[]; results: string[]; local?: boolean; partial?: string[] }
interface RawTable {
  protocolVersion: number;
  frame: { version: number; types: Record<string, number> };
  limits: Record<string, number>;
  kinds: Record<string, string>;
  calls: RawCall[];
  structs: Record<string, { ctype: string; fields: string[][] }>;
  paramKinds: Record<string, { ctype: string; fields: string[][] }>;
  mechanisms: Record<string, { value: number; param: string }>;
  mechanismTypes: Record<string, number>;
  attributes: Record<string, { value: number; kind: string }>;
  rv: Record<string, number>;
}
const raw = protocolJson as unknown as RawTable;

const bad = (what: string): never => {
  throw new Error(`proto/protocol.json: ${what}`);
};
const oneOf = <T extends string>(list: readonly T[], v: string, where: string): T =>
  (list as readonly string[]).includes(v) ? (v as T) : bad(`${where}: unknown kind '${v}'`);

for (const k of new Set<string>([...ARG_KINDS, ...RESULT_KINDS])) if (!(k in raw.kinds)) bad(`kind '${k}' is not described in kinds`);
for (const k of Object.keys(raw.kinds)) if (!(ARG_KINDS as readonly string[]).includes(k) && !(RESULT_KINDS as readonly string[]).includes(k)) bad(`kinds.${k} is known to no code`);

export const PROTOCOL_VERSION: number = raw.protocolVersion;

function limit(name: string): number {
  const v = raw.limits[name];
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0 ? v : bad(`limits.${name} missing`);
}
/** Limits both sides enforce (protocol.json `limits`). */
export const LIMITS = {
  maxTemplate: limit('maxTemplate'),
  maxNesting: limit('maxNesting'),
  maxDepth: limit('maxDepth'),
  maxFindObjects: limit('maxFindObjects'),
  minPayload: limit('minPayload'),
  defaultMaxPayload: limit('defaultMaxPayload'),
  /** Connections a port can have: the frame header's connection field is one byte. */
  maxConnectionsPerPort: limit('maxConnectionsPerPort'),
} as const;

/** The frame layer's version byte and frame types (protocol.json `frame`). */
export const FRAME = {
  version: raw.frame.version,
  types: raw.frame.types as Readonly<Record<'HELLO' | 'CALL' | 'BYE' | 'PING' | 'HELLO_OK' | 'RESULT' | 'BYE_OK' | 'PONG' | 'BUSY' | 'ERROR', number>>,
} as const;
for (const t of ['HELLO', 'CALL', 'BYE', 'PING', 'HELLO_OK', 'RESULT', 'BYE_OK', 'PONG', 'BUSY', 'ERROR']) {
  if (!Number.isInteger(raw.frame.types[t])) bad(`frame.types.${t} missing`);
}

export const RV: Readonly<Record<string, number>> = raw.rv;
const rvNames = new Map<number, string>();
for (const [name, code] of Object.entries(raw.rv)) if (!rvNames.has(code)) rvNames.set(code, name);
const CKR_VENDOR_DEFINED = 0x80000000;

/** The CK_RV value of a CKR_* name of the table (a typo stops the load). */
export function rvCode(name: string): number {
  return raw.rv[name] ?? bad(`no ${name} in rv`);
}

/** The CKR_* name of a return value, as pkcs11js names it. */
export function rvName(code: number): string {
  return rvNames.get(code) ?? (code >= CKR_VENDOR_DEFINED ? 'CKR_VENDOR_DEFINED' : `CKR_0x${code.toString(16).toUpperCase()}`);
}

function param<K extends string>(s: string, kinds: readonly K[], where: string): Param<K> {
  const [name, kind] = s.split(':');
  if (!name || !kind) bad(`${where}: bad parameter '${s}'`);
  return { name: name!, kind: oneOf(kinds, kind!, `${where} ${name}`) };
}

export const CALLS: readonly CallSpec[] = raw.calls.map((c, i) => {
  if (c.id !== i + 1) bad(`call ids must be 1..N in order (at ${c.name})`);
  return {
    id: c.id,
    name: c.name,
    args: c.args.map((a) => param(a, ARG_KINDS, c.name)),
    results: c.results.map((r) => param(r, RESULT_KINDS, c.name)),
    local: c.local === true,
    partial: new Set((c.partial ?? []).map((n) => raw.rv[n] ?? bad(`unknown rv ${n} in ${c.name}`))),
  };
});
const byName = new Map(CALLS.map((c) => [c.name, c]));
const byId = new Map(CALLS.map((c) => [c.id, c]));

export function callByName(name: string): CallSpec {
  const c = byName.get(name);
  if (!c) throw new Error(`no PKCS#11 call named ${name}`);
  return c;
}
export function callById(id: number): CallSpec | undefined {
  return byId.get(id);
}
/** The id of a call by name, for code that names calls (a typo stops the load). */
export const callId = (name: string): number => callByName(name).id;

const FIELD_KIND = /^(ulong|bytes|version|fixed8|fixed16|char\d+)$/;
function structSpec(where: string, s: { ctype: string; fields: string[][] }, allowBytes: boolean): StructSpec {
  return {
    ctype: s.ctype,
    fields: s.fields.map(([name, kind]) => {
      if (!name || !kind || !FIELD_KIND.test(kind) || (kind === 'bytes' && !allowBytes)) bad(`${where}.${name}: bad field kind '${kind}'`);
      return { name: name!, kind: kind as FieldKind };
    }),
  };
}

export const STRUCTS: Readonly<Record<StructName, StructSpec>> = Object.fromEntries(
  STRUCT_NAMES.map((k) => [k, structSpec(`structs.${k}`, raw.structs[k] ?? bad(`structs.${k} missing`), false)]),
) as Record<StructName, StructSpec>;

export const PARAM_KINDS: ReadonlyMap<string, StructSpec> = new Map(
  Object.entries(raw.paramKinds).map(([k, s]) => [k, structSpec(`paramKinds.${k}`, s, true)]),
);

const NONE: ParamForm = { form: 'none' };
const paramForms = new Map<number, ParamForm>();
for (const [name, m] of Object.entries(raw.mechanisms)) {
  let f: ParamForm;
  if (m.param === 'bytes' || m.param === 'ulong') f = { form: m.param };
  else f = { form: 'struct', spec: PARAM_KINDS.get(m.param) ?? bad(`mechanisms.${name}: unknown param '${m.param}'`) };
  if (paramForms.has(m.value)) bad(`mechanisms.${name}: value ${m.value} listed twice`);
  paramForms.set(m.value, f);
}
/** How a mechanism's parameter travels; mechanisms the table does not list take none. */
export function mechanismParamForm(mechanism: number | bigint): ParamForm {
  return typeof mechanism === 'number' || mechanism <= BigInt(Number.MAX_SAFE_INTEGER)
    ? paramForms.get(Number(mechanism)) ?? NONE
    : NONE;
}

/** Every CKM_* name of the OASIS headers with its value (names only; nothing on the wire depends on it). */
export const MECHANISM_TYPES: ReadonlyMap<string, number> = new Map(Object.entries(raw.mechanismTypes));

const attrKinds = new Map<number, AttrKind>();
for (const [name, a] of Object.entries(raw.attributes)) attrKinds.set(a.value, oneOf(ATTR_KINDS, a.kind, `attributes.${name}`));
/** How an attribute's value is typed on the wire; attributes the table does not list are bytes. */
export function attributeKind(type: number | bigint): AttrKind {
  return (typeof type === 'number' || type <= BigInt(Number.MAX_SAFE_INTEGER) ? attrKinds.get(Number(type)) : undefined) ?? 'bytes';
}
