// The call table from proto/protocol.json, typed. Everything that encodes,
// decodes or dispatches a PKCS#11 call goes through here, so the 68 shapes
// are written down once (in the JSON) and interpreted everywhere else.
import protocolJson from '../../proto/protocol.json' with { type: 'json' };

export type ArgKind =
  | 'ulong' | 'bool' | 'slot' | 'session' | 'object' | 'bytes' | 'label'
  | 'mechanism' | 'template' | 'attrquery' | 'outbytes' | 'outlist' | 'outfixed';
export type ResultKind =
  | 'ulong' | 'slot' | 'session' | 'object' | 'outbytes' | 'outlist' | 'objectlist'
  | 'outfixed' | 'attrvalues' | StructName;
export type StructName = 'info' | 'slotinfo' | 'tokeninfo' | 'sessioninfo' | 'mechinfo';
export type AttrKind = 'ulong' | 'bool' | 'template' | 'ulonglist' | 'bytes';
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

interface RawCall { id: number; name: string; args: string[]; results: string[]; local?: boolean; partial?: string[] }
interface RawTable {
  protocolVersion: number;
  calls: RawCall[];
  structs: Record<string, { ctype: string; fields: string[][] }>;
  paramKinds: Record<string, { ctype: string; fields: string[][] }>;
  mechanisms: Record<string, { value: number; param: string }>;
  mechanismTypes: Record<string, number>;
  attributes: Record<string, { value: number; kind: string }>;
  rv: Record<string, number>;
}
const raw = protocolJson as unknown as RawTable;

export const PROTOCOL_VERSION: number = raw.protocolVersion;

export const RV: Readonly<Record<string, number>> = raw.rv;
const rvNames = new Map<number, string>();
for (const [name, code] of Object.entries(raw.rv)) if (!rvNames.has(code)) rvNames.set(code, name);
const CKR_VENDOR_DEFINED = 0x80000000;

/** The CKR_* name of a return value, as pkcs11js names it. */
export function rvName(code: number): string {
  return rvNames.get(code) ?? (code >= CKR_VENDOR_DEFINED ? 'CKR_VENDOR_DEFINED' : `CKR_0x${code.toString(16).toUpperCase()}`);
}

function param<K extends string>(s: string): Param<K> {
  const [name, kind] = s.split(':');
  if (!name || !kind) throw new Error(`protocol.json: bad parameter '${s}'`);
  return { name, kind: kind as K };
}

export const CALLS: readonly CallSpec[] = raw.calls.map((c) => ({
  id: c.id,
  name: c.name,
  args: c.args.map((a) => param<ArgKind>(a)),
  results: c.results.map((r) => param<ResultKind>(r)),
  local: c.local === true,
  partial: new Set((c.partial ?? []).map((n) => {
    const code = raw.rv[n];
    if (code === undefined) throw new Error(`protocol.json: unknown rv ${n} in ${c.name}`);
    return code;
  })),
}));
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

export const STRUCTS: Readonly<Record<StructName, StructSpec>> = Object.fromEntries(
  Object.entries(raw.structs).map(([k, s]) => [k, {
    ctype: s.ctype,
    fields: s.fields.map(([name, kind]) => ({ name: name!, kind: kind as FieldKind })),
  }]),
) as unknown as Record<StructName, StructSpec>;

export const PARAM_KINDS: ReadonlyMap<string, StructSpec> = new Map(
  Object.entries(raw.paramKinds).map(([k, s]) => [k, {
    ctype: s.ctype,
    fields: s.fields.map(([name, kind]) => ({ name: name!, kind: kind as FieldKind })),
  }]),
);

const mechParam = new Map<number, StructSpec>();
const ulongParam = new Set<number>();
for (const m of Object.values(raw.mechanisms)) {
  const spec = PARAM_KINDS.get(m.param);
  if (!spec) throw new Error(`protocol.json: unknown param kind ${m.param}`);
  if (m.param === 'ULONG') ulongParam.add(m.value);
  else mechParam.set(m.value, spec);
}
/** The structured parameter a mechanism takes, if the table knows one. */
export function mechanismParamSpec(mechanism: number): StructSpec | undefined {
  return mechParam.get(mechanism);
}
/** Whether a mechanism's parameter is one CK_ULONG (it travels as an integer). */
export const mechanismTakesUlong = (mechanism: number): boolean => ulongParam.has(mechanism);

/** Every CKM_* name of the OASIS headers with its value (names only; nothing on the wire depends on it). */
export const MECHANISM_TYPES: ReadonlyMap<string, number> = new Map(Object.entries(raw.mechanismTypes));

const attrKinds = new Map<number, AttrKind>();
for (const a of Object.values(raw.attributes)) attrKinds.set(a.value, a.kind as AttrKind);
/** How an attribute's value is typed on the wire; unknown attributes are bytes. */
export function attributeKind(type: number): AttrKind {
  return attrKinds.get(type) ?? 'bytes';
}
