// Converts between pkcs11js's JavaScript shapes and the wire values of each
// kind in the call table. One converter per kind; no per-call code except
// the few places where pkcs11js's own API bends the C signature (see client.ts).
import { wireUlong } from '../protocol/msgpack.js';
import { Pkcs11Error } from '../protocol/errors.js';
import { assertNever, attributeKind, mechanismParamForm, RV, STRUCTS, type ArgKind, type FieldSpec, type ResultKind, type StructName, type StructSpec } from '../protocol/table.js';
import type { Attribute, AttributeResult, Mechanism, Template } from './types.js';

/** CK_ULONG size of this host: what pkcs11js would give for raw attribute values. */
export const ULONG_SIZE = process.arch === 'ia32' || process.arch === 'arm' ? 4 : 8;

const bad = (what: string, got: unknown): TypeError =>
  new TypeError(`expected ${what}, got ${got === null ? 'null' : Buffer.isBuffer(got) ? `Buffer(${got.length})` : typeof got}`);

function readHostUlong(b: Buffer): number | bigint {
  if (b.length === 4) return b.readUInt32LE(0);
  return wireUlong(b.readBigUInt64LE(0));
}

export function ulongToHost(v: number | bigint): Buffer {
  const b = Buffer.alloc(ULONG_SIZE);
  if (ULONG_SIZE === 4) b.writeUInt32LE(Number(BigInt.asUintN(32, BigInt(v))), 0);
  else b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), 0);
  return b;
}

function ulong(v: unknown): number | bigint {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return wireUlong(v);
  if (typeof v === 'bigint' && v >= 0n) return wireUlong(v);
  throw bad('a non-negative integer', v);
}

export function handleToWire(v: unknown): number | bigint {
  if (Buffer.isBuffer(v) && (v.length === 8 || v.length === 4)) return readHostUlong(v);
  if (typeof v === 'number' || typeof v === 'bigint') return ulong(v);
  throw bad('a handle (Buffer)', v);
}
export const handleFromWire = (v: unknown): Buffer => ulongToHost(v as number | bigint);

function bytes(v: unknown): Buffer | null {
  if (v === undefined || v === null) return null;
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v);
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  throw bad('a Buffer or string', v);
}

function label(v: unknown): Buffer {
  const b = bytes(v ?? '') ?? Buffer.alloc(0);
  if (b.length > 32) throw new TypeError(`token label is ${b.length} bytes; at most 32`);
  return Buffer.concat([b, Buffer.alloc(32 - b.length, 0x20)]);
}

function dateBytes(d: Date): Buffer {
  const p = (n: number, w: number) => String(n).padStart(w, '0');
  return Buffer.from(`${p(d.getUTCFullYear(), 4)}${p(d.getUTCMonth() + 1, 2)}${p(d.getUTCDate(), 2)}`, 'ascii');
}

/**
 * A pkcs11js attribute value as the wire value of its attribute's kind. It
 * is first taken as the host bytes pkcs11js would hand the module (a boolean
 * one byte, a number a CK_ULONG, a string UTF-8, a Date YYYYMMDD), then typed
 * by the table where the size fits the kind; a size that does not fit travels
 * as bin, and the server answers CKR_ATTRIBUTE_VALUE_INVALID as the module
 * would for a value of the wrong size.
 */
function attrValueToWire(a: Attribute, depth: number): unknown {
  const v = a.value;
  if (v === undefined || v === null) return null;
  const kind = attributeKind(a.type);
  if (Array.isArray(v) && !v.every((x) => typeof x === 'number' || typeof x === 'bigint')) {
    if (kind !== 'template' || depth > 0) throw new TypeError(`attribute 0x${a.type.toString(16)} does not take a template`);
    return templateToWire(v as Template, depth + 1);
  }
  if (typeof v === 'boolean' && kind === 'bool') return v;
  if ((typeof v === 'number' || typeof v === 'bigint') && kind === 'ulong') return ulong(v);
  if (Array.isArray(v) && kind === 'ulonglist') return (v as Array<number | bigint>).map(ulong);
  const host = hostBytes(a.type, v);
  switch (kind) {
    case 'bool': return host.length === 1 ? host[0] !== 0 : host;
    case 'ulong': return host.length === ULONG_SIZE ? readHostUlong(host) : host;
    case 'ulonglist':
      return host.length % ULONG_SIZE === 0
        ? Array.from({ length: host.length / ULONG_SIZE }, (_, i) => readHostUlong(host.subarray(i * ULONG_SIZE, (i + 1) * ULONG_SIZE)))
        : host;
    case 'bytes': case 'date': case 'template': return host;
    default: return assertNever(kind, 'attribute kind');
  }
}

/** The bytes pkcs11js would pass the module for a JavaScript attribute value. */
function hostBytes(type: number, v: NonNullable<Attribute['value']>): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v);
  if (typeof v === 'boolean') return Buffer.from([v ? 1 : 0]);
  if (typeof v === 'number' || typeof v === 'bigint') return ulongToHost(ulong(v));
  if (typeof v === 'string') return Buffer.from(v, 'utf8');
  if (v instanceof Date) return dateBytes(v);
  if (Array.isArray(v)) return Buffer.concat((v as Array<number | bigint>).map((x) => ulongToHost(ulong(x))));
  throw bad(`a value for attribute 0x${type.toString(16)}`, v);
}

export function templateToWire(t: unknown, depth = 0): unknown[] | null {
  if (t === undefined || t === null) return null; // a NULL template
  if (!Array.isArray(t)) throw bad('a template (array of { type, value })', t);
  return t.map((a: Attribute) => {
    if (!a || typeof a.type !== 'number') throw bad('an attribute { type, value }', a);
    return [ulong(a.type), attrValueToWire(a, depth)];
  });
}

/** Host layout of a pointer-free structure (e.g. CK_AES_CTR_PARAMS given as raw bytes). */
function parseHostStruct(spec: StructSpec, b: Buffer): unknown[] | undefined {
  if (spec.fields.some((f) => f.kind === 'bytes')) return undefined;
  const out: unknown[] = [];
  let off = 0;
  for (const f of spec.fields) {
    if (f.kind === 'ulong') {
      off = Math.ceil(off / ULONG_SIZE) * ULONG_SIZE;
      if (off + ULONG_SIZE > b.length) return undefined;
      out.push(readHostUlong(b.subarray(off, off + ULONG_SIZE)));
      off += ULONG_SIZE;
    } else {
      const n = fixedSize(f);
      if (off + n > b.length) return undefined;
      out.push(b.subarray(off, off + n));
      off += n;
    }
  }
  return Math.ceil(off / ULONG_SIZE) * ULONG_SIZE === b.length ? out : undefined;
}

const fixedSize = (f: FieldSpec): number => (f.kind === 'fixed8' ? 8 : f.kind === 'fixed16' ? 16 : Number(f.kind.slice(4)));

/**
 * A pkcs11js mechanism as [type] or [type, parameter] in the form the table
 * gives the mechanism. A parameter that cannot take that form travels as it
 * is and the server answers CKR_MECHANISM_PARAM_INVALID (a raw structure
 * holding pointers is never sent as bytes: see protocol.json paramKindsDoc).
 */
export function mechanismToWire(m: unknown): unknown[] {
  if (!m || typeof m !== 'object' || typeof (m as Mechanism).mechanism !== 'number') throw bad('a mechanism { mechanism, parameter }', m);
  const { mechanism, parameter } = m as Mechanism;
  const type = ulong(mechanism);
  if (parameter === undefined || parameter === null) return [type];
  const form = mechanismParamForm(mechanism);
  if (Buffer.isBuffer(parameter) || parameter instanceof Uint8Array) {
    const b = Buffer.from(parameter.buffer, parameter.byteOffset, parameter.byteLength);
    if (form.form === 'ulong' && b.length === ULONG_SIZE) return [type, readHostUlong(b)];
    if (form.form === 'struct') return [type, parseHostStruct(form.spec, b) ?? b];
    return [type, b];
  }
  if (typeof parameter === 'number' || typeof parameter === 'bigint') return [type, ulong(parameter)];
  if (typeof parameter !== 'object') throw bad('a mechanism parameter', parameter);
  if (form.form !== 'struct') {
    throw new Pkcs11Error(RV.CKR_MECHANISM_PARAM_INVALID!, '', `no parameter structure is known for mechanism 0x${mechanism.toString(16)}`);
  }
  const spec = form.spec;
  return [type, spec.fields.map((f) => {
    const v = (parameter as Record<string, unknown>)[f.name];
    if (f.kind === 'ulong') return v === undefined ? 0 : ulong(v);
    if (f.kind === 'bytes') return bytes(v);
    const b = bytes(v);
    if (!b || b.length !== fixedSize(f)) throw new TypeError(`${spec.ctype}.${f.name}: expected ${fixedSize(f)} bytes`);
    return b;
  })];
}

/** A pkcs11js-style argument as the wire value of its kind. */
export function argToWire(kind: ArgKind, v: unknown): unknown {
  switch (kind) {
    case 'ulong': return ulong(v);
    case 'slot': case 'session': return handleToWire(v);
    case 'object': return v === undefined ? 0 : handleToWire(v);
    case 'bool': return v === undefined ? false : Boolean(v);
    case 'bytes': return bytes(v);
    case 'label': return label(v);
    case 'mechanism': return mechanismToWire(v);
    case 'template': return templateToWire(v);
    case 'attrquery': return templateToWire(v)?.map((a) => [(a as unknown[])[0], true]) ?? null;
    case 'outbytes':
      if (!Buffer.isBuffer(v)) throw bad('an output Buffer', v);
      return v.length;
    case 'outfixed':
      if (v === null || v === undefined) return null;
      if (!Buffer.isBuffer(v)) throw bad('an output Buffer', v);
      return v.length;
    case 'outlist': return true;
    default: return assertNever(kind, 'argument kind');
  }
}

// pkcs11js gives CK_ULONG results as 32-bit numbers, except the token's
// memory counters, which it gives as BigInt; we return the same values.
const BIGINT_FIELDS = new Set(['totalPublicMemory', 'freePublicMemory', 'totalPrivateMemory', 'freePrivateMemory']);
const uint32 = (v: number | bigint): number => Number(BigInt.asUintN(32, BigInt(v)));

function structFromWire(spec: StructSpec, v: unknown[]): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  spec.fields.forEach((f, i) => {
    const x = v[i];
    if (f.kind === 'version') {
      const [major, minor] = x as number[];
      o[f.name] = { major, minor };
    } else if (f.kind === 'ulong') {
      const v = x as number | bigint;
      o[f.name] = f.name === 'slotID' ? handleFromWire(v) : BIGINT_FIELDS.has(f.name) ? BigInt(v) : uint32(v);
    } else {
      const b = x as Buffer;
      // pkcs11js reads utcTime up to its first NUL and every other text field whole.
      o[f.name] = (f.name === 'utcTime' ? b.subarray(0, b.indexOf(0) === -1 ? b.length : b.indexOf(0)) : b).toString('utf8');
    }
  });
  return o;
}

/** A typed attribute value from the wire as the raw bytes pkcs11js returns. */
export function attrValueToHost(type: number, v: unknown): AttributeResult {
  if (typeof v === 'boolean') return { type, value: Buffer.from([v ? 1 : 0]) };
  if (typeof v === 'number' || typeof v === 'bigint') return { type, value: ulongToHost(v) };
  if (Buffer.isBuffer(v)) return { type, value: v };
  if (Array.isArray(v)) {
    if (v.every((x) => !Array.isArray(x))) return { type, value: Buffer.concat(v.map((x) => ulongToHost(x as number))) };
    return { type, value: Buffer.alloc(0), template: v.map(([t, x]: [number, unknown]) => attrValueToHost(t, x)) };
  }
  return { type, value: Buffer.alloc(0) };
}

/** A wire result as pkcs11js would return it; `arg` is the caller's argument of the paired output. */
export function resultFromWire(kind: ResultKind, v: unknown, arg?: unknown): unknown {
  switch (kind) {
    case 'ulong': return uint32(v as number | bigint);
    case 'slot': case 'session': case 'object': return handleFromWire(v);
    case 'objectlist': return (v as Array<number | bigint>).map(handleFromWire);
    case 'outlist': return (v as Array<number | bigint>).map(Number);
    case 'outbytes': case 'outfixed': {
      if (v === null) return arg; // outfixed after a NULL buffer
      const out = arg as Buffer;
      const data = v as Buffer;
      if (data.length > out.length) throw new RangeError(`server returned ${data.length} bytes for a ${out.length}-byte buffer`);
      data.copy(out);
      return out.subarray(0, data.length);
    }
    case 'attrvalues': return v;
    default: return structFromWire(STRUCTS[kind as StructName], v as unknown[]);
  }
}
