#!/usr/bin/env node
// gen.mjs: generate the C tables and invocation stubs of p11bridge from
// proto/protocol.json (and check them against include/pkcs11/pkcs11f.h).
//
//   node tools/gen.mjs [outdir]     (default: build/gen, relative to native/)
//
// Emits:
//   pb_gen.h        PB_NCALLS, PB_MAX_SLOTS
//   pb_tables.c     call descriptors, info-struct and mechanism-parameter
//                   descriptors (offsetof-based), attribute kind lookup,
//                   kind names -- shared by executor and client module
//   exec_invoke.c   executor: one line per call through the function list,
//                   pb_has_function()
//   module_stubs.c  libp11bridge: the 68 exported C_xxx entry points, each one
//                   line that puts its C parameters into value slots and hands
//                   them to the generic marshaller (pb_client_call), and the
//                   CK_FUNCTION_LIST
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const nativeDir = resolve(here, '..');
const outDir = resolve(nativeDir, process.argv[2] ?? 'build/gen');
const proto = JSON.parse(readFileSync(resolve(nativeDir, '../proto/protocol.json'), 'utf8'));
const pkcs11f = readFileSync(resolve(nativeDir, 'include/pkcs11/pkcs11f.h'), 'utf8')
  .replace(/\/\*[\s\S]*?\*\//g, ' ');

const die = (msg) => { process.stderr.write(`gen.mjs: ${msg}\n`); process.exit(1); };

// ---- kinds known to the hand-written C (wire.h pb_kind) ----
const KINDS = ['ulong', 'bool', 'slot', 'session', 'object', 'bytes', 'label', 'mechanism',
  'template', 'attrquery', 'attrvalues', 'outbytes', 'outlist', 'objectlist', 'outfixed',
  'info', 'slotinfo', 'tokeninfo', 'sessioninfo', 'mechinfo'];
const STRUCT_KINDS = ['info', 'slotinfo', 'tokeninfo', 'sessioninfo', 'mechinfo'];
const kindEnum = (k) => {
  if (!KINDS.includes(k)) die(`unknown kind '${k}' (add it to wire.h and gen.mjs)`);
  return `PB_K_${k.toUpperCase()}`;
};
for (const k of Object.keys(proto.kinds)) kindEnum(k);
for (const k of KINDS) if (!(k in proto.kinds)) die(`kind '${k}' missing from protocol.json`);

const ATTR_KINDS = { bytes: 'PB_AK_BYTES', ulong: 'PB_AK_ULONG', bool: 'PB_AK_BOOL',
  template: 'PB_AK_TEMPLATE', ulonglist: 'PB_AK_ULONGLIST', date: 'PB_AK_DATE' };
// protocol.json limits, as C macros (wire.h uses them)
const LIMIT_MACROS = { maxTemplate: 'PB_MAX_TEMPLATE', maxNesting: 'PB_MAX_NESTING', maxDepth: 'PB_MAX_DEPTH',
  maxFindObjects: 'PB_MAX_FIND', minPayload: 'PB_MIN_PAYLOAD', defaultMaxPayload: 'PB_DEFAULT_MAX_PAYLOAD',
  maxConnectionsPerPort: 'PB_MAX_CONNECTIONS' };
for (const k of Object.keys(LIMIT_MACROS)) if (!Number.isSafeInteger(proto.limits?.[k])) die(`limits.${k} missing`);
for (const k of Object.keys(proto.limits)) if (!(k in LIMIT_MACROS)) die(`limits.${k} is known to no code`);
const FRAME_TYPES = ['HELLO', 'CALL', 'BYE', 'PING', 'HELLO_OK', 'RESULT', 'BYE_OK', 'PONG', 'BUSY', 'ERROR'];
for (const t of FRAME_TYPES) if (!Number.isInteger(proto.frame?.types?.[t])) die(`frame.types.${t} missing`);
for (const t of Object.keys(proto.frame.types)) if (!FRAME_TYPES.includes(t)) die(`frame.types.${t} is known to no code`);

// ---- C parameter lists from pkcs11f.h, in CK_FUNCTION_LIST order ----
const cfuncs = [];
{
  const re = /CK_PKCS11_FUNCTION_INFO\((\w+)\)\s*#ifdef CK_NEED_ARG_LIST\s*\(([\s\S]*?)\);\s*#endif/g;
  let m;
  while ((m = re.exec(pkcs11f))) {
    const body = m[2].trim();
    const params = body === '' ? [] : body.split(',').map((s) => s.trim());
    cfuncs.push({ name: m[1], params });
  }
}

// ---- calls ----
const calls = [...proto.calls].sort((a, b) => a.id - b.id);
calls.forEach((c, i) => {
  if (c.id !== i + 1) die(`call ids must be 1..N without gaps (at ${c.name})`);
  if (!cfuncs[i] || cfuncs[i].name !== c.name) die(`${c.name}: id ${c.id} is not its CK_FUNCTION_LIST position (pkcs11f.h has ${cfuncs[i]?.name})`);
});
const rvValue = (name) => {
  if (!(name in proto.rv)) die(`unknown rv ${name}`);
  return proto.rv[name];
};
const split = (s) => { const [name, kind] = s.split(':'); kindEnum(kind); return { name, kind }; };

// C argument expressions per kind: arguments, and results with no argument slot.
function argExpr(p) {
  const a = `a[${p.slot}]`;
  switch (p.kind) {
    case 'ulong': case 'slot': case 'session': case 'object': return [`${a}.ul`];
    case 'bool': return [`${a}.b`];
    case 'bytes': return [`${a}.p`, `${a}.len`];
    case 'label': return [`${a}.p`];
    case 'mechanism': return [`&${a}.mech`];
    case 'template': case 'attrquery': return [`${a}.tmpl`, `${a}.count`];
    case 'outbytes': return [`${a}.p`, `&${a}.len`];
    case 'outlist': return [`${a}.ulp`, `&${a}.count`];
    case 'outfixed': return [`${a}.p`, `${a}.len`];
    default: die(`kind ${p.kind} cannot be an argument`);
  }
}
function resExpr(p) {
  const a = `a[${p.slot}]`;
  switch (p.kind) {
    case 'ulong': case 'slot': case 'session': case 'object': return [`&${a}.ul`];
    default:
      if (STRUCT_KINDS.includes(p.kind)) return [`&${a}.st.${p.kind}`];
      die(`kind ${p.kind} cannot be a result without an argument of the same name`);
  }
}
// Calls whose C parameter list is not "arguments in order, then new results":
// a list of "{name}" (expanded by kind), or C text where $name is its slot.
const OVERRIDES = {
  C_Initialize: ['&pb_exec_init_args'],
  C_Finalize: ['NULL_PTR'],
  C_OpenSession: ['{slot}', '{flags}', 'NULL_PTR', 'NULL_PTR', '{session}'],
  C_FindObjects: ['{session}', '$objects.ulp', '{maxObjectCount}', '&$objects.count'],
  // Never block the executor (it could not even be finalized): clients poll.
  C_WaitForSlotEvent: ['$flags.ul | CKF_DONT_BLOCK', '{slot}', 'NULL_PTR'],
};

const OUTPUT_ARG_KINDS = { outbytes: 'outbytes', outlist: 'outlist', outfixed: 'outfixed', attrquery: 'attrvalues' };
let maxSlots = 1;
const callInfos = calls.map((c) => {
  const args = c.args.map(split).map((p, i) => ({ ...p, slot: i, aux: -1, isArg: true }));
  let next = args.length;
  const res = c.results.map(split).map((p) => {
    // A result is the output half of an argument (same name, output kind);
    // otherwise (e.g. C_CopyObject's new object) it gets a slot of its own.
    const same = args.find((x) => x.name === p.name && OUTPUT_ARG_KINDS[x.kind] === p.kind);
    const slot = same ? same.slot : next++;
    let aux = -1;
    if (p.kind === 'objectlist') {
      const mc = args.find((x) => x.name === 'maxObjectCount' && x.kind === 'ulong');
      if (!mc) die(`${c.name}: objectlist needs a maxObjectCount:ulong argument`);
      aux = mc.slot;
    }
    return { ...p, slot, aux, shared: !!same };
  });
  maxSlots = Math.max(maxSlots, next);
  let cargs = [];
  if (c.local) {
    cargs = null;
  } else if (OVERRIDES[c.name]) {
    const all = [...args, ...res];
    for (const o of OVERRIDES[c.name]) {
      const m = /^\{(\w+)\}$/.exec(o);
      if (m) {
        const p = all.find((x) => x.name === m[1]);
        if (!p) die(`${c.name}: override names unknown parameter ${m[1]}`);
        cargs.push(...(p.isArg ? argExpr(p) : resExpr(p)));
      } else {
        cargs.push(o.replace(/\$(\w+)/g, (_, n) => {
          const p = all.find((x) => x.name === n);
          if (!p) die(`${c.name}: override names unknown parameter ${n}`);
          return `a[${p.slot}]`;
        }));
      }
    }
  } else {
    for (const p of args) cargs.push(...argExpr(p));
    for (const p of res) if (!p.shared) cargs.push(...resExpr(p));
  }
  const cf = cfuncs[c.id - 1];
  if (cargs && cargs.length !== cf.params.length) {
    die(`${c.name}: generated ${cargs.length} C arguments (${cargs.join(', ')}), pkcs11f.h has ${cf.params.length} (${cf.params.join(', ')})`);
  }
  return { c, args, res, nslots: next, cargs, partial: (c.partial ?? []).map((n) => [n, rvValue(n)]) };
});

// ---- emit ----
const hdr = '/* Generated by native/tools/gen.mjs from proto/protocol.json. Do not edit. */\n';
const q = (s) => JSON.stringify(s);
const hex = (v) => `0x${BigInt(v).toString(16).toUpperCase()}UL`;

let gen_h = hdr + `#ifndef P11BRIDGE_PB_GEN_H
#define P11BRIDGE_PB_GEN_H
#define PB_NCALLS ${calls.length}
#define PB_MAX_SLOTS ${maxSlots}
#define PB_PROTOCOL_VERSION ${proto.protocolVersion}
${Object.entries(LIMIT_MACROS).map(([k, m]) => `#define ${m} ${proto.limits[k]}UL`).join('\n')}
#define PB_FRAME_VERSION ${proto.frame.version}
enum {
${Object.entries(proto.frame.types).map(([k, v]) => `  PB_T_${k} = 0x${v.toString(16).toUpperCase()},`).join('\n')}
};
#endif
`;

let t = hdr + `#include <stddef.h>
#include "calls.h"

#define PB_MEMBER_SIZE(T, m) (sizeof(((T *)0)->m))

`;
// info structs
function structDesc(cname, key, ctype, fields, fieldFn) {
  const lines = fields.map(fieldFn);
  t += `static const pb_field ${cname}_fields[] = {\n${lines.map((l) => `  ${l},\n`).join('')}};\n`;
  t += `const pb_struct_desc ${cname} = {${q(key)}, ${q(ctype)}, sizeof(${ctype}), ${fields.length}, ${cname}_fields};\n\n`;
}
const asserts = [];
for (const k of STRUCT_KINDS) {
  const s = proto.structs[k];
  if (!s) die(`structs.${k} missing`);
  structDesc(`pb_struct_${k}`, k, s.ctype, s.fields, ([name, kind, cmember]) => {
    const m = cmember ?? name;
    const off = `offsetof(${s.ctype}, ${m})`;
    if (kind === 'ulong') {
      asserts.push(`PB_MEMBER_SIZE(${s.ctype}, ${m}) == sizeof(CK_ULONG)`);
      return `{${q(name)}, PB_F_ULONG, ${off}, 0, sizeof(CK_ULONG)}`;
    }
    if (kind === 'version') {
      asserts.push(`PB_MEMBER_SIZE(${s.ctype}, ${m}) == sizeof(CK_VERSION)`);
      return `{${q(name)}, PB_F_VERSION, ${off}, 0, sizeof(CK_VERSION)}`;
    }
    const cm = /^char(\d+)$/.exec(kind);
    if (cm) {
      asserts.push(`PB_MEMBER_SIZE(${s.ctype}, ${m}) == ${cm[1]}`);
      return `{${q(name)}, PB_F_CHAR, ${off}, 0, ${cm[1]}}`;
    }
    die(`structs.${k}.${name}: unknown field kind ${kind}`);
  });
}
// mechanism parameter kinds
const paramKeys = Object.keys(proto.paramKinds);
const cident = (s) => s.replace(/[^A-Za-z0-9_]/g, '_');
for (const key of paramKeys) {
  const s = proto.paramKinds[key];
  structDesc(`pb_param_${cident(key)}`, key, s.ctype, s.fields, ([name, kind, m, m2]) => {
    if (!m) die(`paramKinds.${key}.${name}: C member name missing`);
    const off = `offsetof(${s.ctype}, ${m})`;
    if (kind === 'ulong') {
      asserts.push(`PB_MEMBER_SIZE(${s.ctype}, ${m}) == sizeof(CK_ULONG)`);
      return `{${q(name)}, PB_F_ULONG, ${off}, 0, sizeof(CK_ULONG)}`;
    }
    if (kind === 'bytes') {
      if (!m2) die(`paramKinds.${key}.${name}: length member missing`);
      asserts.push(`PB_MEMBER_SIZE(${s.ctype}, ${m}) == sizeof(void *)`);
      asserts.push(`PB_MEMBER_SIZE(${s.ctype}, ${m2}) == sizeof(CK_ULONG)`);
      return `{${q(name)}, PB_F_BYTES, ${off}, offsetof(${s.ctype}, ${m2}), 0}`;
    }
    const fm = /^fixed(\d+)$/.exec(kind);
    if (fm) {
      asserts.push(`PB_MEMBER_SIZE(${s.ctype}, ${m}) == ${fm[1]}`);
      return `{${q(name)}, PB_F_FIXED, ${off}, 0, ${fm[1]}}`;
    }
    die(`paramKinds.${key}.${name}: unknown field kind ${kind}`);
  });
}
t += asserts.map((a) => `_Static_assert(${a}, ${q(a)});\n`).join('') + '\n';

// mechanism -> parameter form (protocol.json paramKindsDoc); unlisted: none
t += `pb_param_form pb_mech_param_form(CK_MECHANISM_TYPE type, const pb_struct_desc **desc) {\n  *desc = NULL;\n  switch (type) {\n`;
const seen = new Set();
for (const [name, m] of Object.entries(proto.mechanisms)) {
  if (seen.has(m.value)) die(`mechanisms.${name}: value ${m.value} listed twice`);
  seen.add(m.value);
  if (m.param === 'bytes') t += `  case ${hex(m.value)}: return PB_PF_BYTES; /* ${name} */\n`;
  else if (m.param === 'ulong') t += `  case ${hex(m.value)}: return PB_PF_ULONG; /* ${name} */\n`;
  else if (m.param in proto.paramKinds) t += `  case ${hex(m.value)}: *desc = &pb_param_${cident(m.param)}; return PB_PF_STRUCT; /* ${name} */\n`;
  else die(`mechanisms.${name}: unknown param '${m.param}'`);
}
t += `  default: return PB_PF_NONE;\n  }\n}\n\n`;

t += `pb_attr_kind pb_attr_kind_of(CK_ATTRIBUTE_TYPE type) {\n  switch (type) {\n`;
for (const [name, a] of Object.entries(proto.attributes)) {
  if (!(a.kind in ATTR_KINDS)) die(`attributes.${name}: unknown kind ${a.kind}`);
  t += `  case ${hex(a.value)}: return ${ATTR_KINDS[a.kind]}; /* ${name} */\n`;
}
t += `  default: return PB_AK_BYTES;\n  }\n}\n\n`;

t += `const char *pb_kind_name(pb_kind k) {\n  switch (k) {\n`;
for (const k of KINDS) t += `  case ${kindEnum(k)}: return ${q(k)};\n`;
t += `  }\n  return "?";\n}\n\n`;

for (const ci of callInfos) {
  const { c, args, res, partial } = ci;
  const pl = (arr) => arr.map((p) => `{${q(p.name)}, ${kindEnum(p.kind)}, ${p.slot}, ${p.aux}}`).join(', ');
  if (args.length) t += `static const pb_param ${c.name}_args[] = {${pl(args)}};\n`;
  if (res.length) t += `static const pb_param ${c.name}_res[] = {${pl(res)}};\n`;
  if (partial.length) t += `static const CK_RV ${c.name}_partial[] = {${partial.map(([n, v]) => `${hex(v)} /* ${n} */`).join(', ')}};\n`;
}
t += `\nconst pb_call pb_calls[PB_NCALLS] = {\n`;
for (const ci of callInfos) {
  const { c, args, res, partial, nslots } = ci;
  t += `  {${c.id}, ${q(c.name)}, ${c.local ? 1 : 0}, ${args.length}, ${args.length ? `${c.name}_args` : 'NULL'}, ` +
    `${res.length}, ${res.length ? `${c.name}_res` : 'NULL'}, ${nslots}, ${partial.length}, ${partial.length ? `${c.name}_partial` : 'NULL'}},\n`;
}
t += `};\n\nconst pb_call *pb_call_by_id(uint64_t id) {\n  return (id >= 1 && id <= PB_NCALLS) ? &pb_calls[id - 1] : NULL;\n}\n\n`;
t += `int pb_call_is_partial(const pb_call *c, CK_RV rv) {\n  for (unsigned i = 0; i < c->npartial; i++)\n    if (c->partial[i] == rv) return 1;\n  return 0;\n}\n`;

let x = hdr + `#include "exec.h"

CK_RV pb_invoke(CK_FUNCTION_LIST_PTR fl, unsigned id, pb_slot *a) {
  (void)a;
  switch (id) {
`;
for (const ci of callInfos) {
  const n = ci.c.name;
  if (!ci.cargs) continue;
  x += `  case ${ci.c.id}: return fl->${n} ? fl->${n}(${ci.cargs.join(', ')}) : CKR_FUNCTION_NOT_SUPPORTED;\n`;
}
x += `  default: return CKR_FUNCTION_NOT_SUPPORTED;\n  }\n}\n\nint pb_has_function(CK_FUNCTION_LIST_PTR fl, unsigned id) {\n  switch (id) {\n`;
for (const ci of callInfos) x += `  case ${ci.c.id}: return fl->${ci.c.name} != NULL_PTR;\n`;
x += `  default: return 0;\n  }\n}\n`;

// ---- client module entry points (the invoke lines in reverse) ----
// Each C parameter fills one member of a value slot (pb_cslot, module/client.h).
function cArgFields(p) {
  switch (p.kind) {
    case 'ulong': case 'slot': case 'session': case 'object': return ['ul'];
    case 'bool': return ['b'];
    case 'bytes': case 'outfixed': return ['p', 'len'];
    case 'label': return ['p'];
    case 'mechanism': return ['mech'];
    case 'template': case 'attrquery': return ['tmpl', 'count'];
    case 'outbytes': return ['p', 'lenp'];
    case 'outlist': return ['ulp', 'lenp'];
    default: die(`kind ${p.kind} cannot be an argument`);
  }
}
function cResFields(p) {
  if (['ulong', 'slot', 'session', 'object'].includes(p.kind)) return ['ulp'];
  if (STRUCT_KINDS.includes(p.kind)) return ['out'];
  die(`kind ${p.kind} cannot be a result without an argument of the same name`);
}
// Entry points answered by module.c itself (state, not marshalling).
const CLIENT_HOOKS = {
  C_Initialize: 'pb_mod_initialize',
  C_Finalize: 'pb_mod_finalize',
  C_GetFunctionList: 'pb_mod_get_function_list',
};
// C parameter lists that are not "arguments in order, then new results":
// '{name}' expands by kind, '$name.member' is one member, '-' is ignored,
// '@' is passed on to the caller named in CLIENT_CALLERS.
const CLIENT_OVERRIDES = {
  // Notify callbacks are not forwarded (the server passes NULL).
  C_OpenSession: ['{slot}', '{flags}', '-', '-', '{session}'],
  C_FindObjects: ['{session}', '$objects.ulp', '{maxObjectCount}', '$objects.lenp'],
  C_WaitForSlotEvent: ['{flags}', '{slot}', '@'],
};
const CLIENT_CALLERS = { C_WaitForSlotEvent: 'pb_mod_wait_for_slot_event' };

const cparam = (decl) => {
  const m = /^(.*?)(\w+)$/.exec(decl.trim());
  if (!m) die(`cannot parse C parameter '${decl}'`);
  return { type: m[1].trim(), name: m[2] };
};
let ms = hdr + `/* libp11bridge entry points: each forwards its parameters to the generic
 * marshaller walking pb_calls (see src/module/marshal.c, module.c). */
#include "client.h"

#define PB_EXPORT __attribute__((visibility("default")))

`;
for (const ci of callInfos) {
  const { c, args, res } = ci;
  const cf = cfuncs[c.id - 1];
  const params = cf.params.map(cparam);
  const sig = `PB_EXPORT CK_RV ${c.name}(${params.map((p) => `${p.type} ${p.name}`).join(', ') || 'void'})`;
  if (CLIENT_HOOKS[c.name]) {
    if (params.length !== 1) die(`${c.name}: hook expects one parameter`);
    ms += `${sig} { return ${CLIENT_HOOKS[c.name]}(${params[0].name}); }\n`;
    continue;
  }
  if (c.local) die(`${c.name}: local call without a hook`);
  const all = [...args, ...res];
  const targets = []; // per C parameter: {slot, field} | null (ignored) | '@'
  const expand = (p, fields) => fields.forEach((f) => targets.push({ slot: p.slot, field: f }));
  if (CLIENT_OVERRIDES[c.name]) {
    for (const o of CLIENT_OVERRIDES[c.name]) {
      let m;
      if (o === '-') targets.push(null);
      else if (o === '@') targets.push('@');
      else if ((m = /^\{(\w+)\}$/.exec(o))) {
        const p = all.find((x) => x.name === m[1]);
        if (!p) die(`${c.name}: client override names unknown parameter ${m[1]}`);
        expand(p, p.isArg ? cArgFields(p) : cResFields(p));
      } else if ((m = /^\$(\w+)\.(\w+)$/.exec(o))) {
        const p = all.find((x) => x.name === m[1]);
        if (!p) die(`${c.name}: client override names unknown parameter ${m[1]}`);
        targets.push({ slot: p.slot, field: m[2] });
      } else die(`${c.name}: bad client override ${o}`);
    }
  } else {
    for (const p of args) expand(p, cArgFields(p));
    for (const p of res) if (!p.shared) expand(p, cResFields(p));
  }
  if (targets.length !== params.length) {
    die(`${c.name}: client stub maps ${targets.length} C parameters, pkcs11f.h has ${params.length} (${cf.params.join(', ')})`);
  }
  const slots = Array.from({ length: ci.nslots }, () => []);
  const ignored = [];
  let extra = null;
  targets.forEach((t, i) => {
    if (t === null) ignored.push(params[i].name);
    else if (t === '@') extra = params[i].name;
    else slots[t.slot].push(`.${t.field} = ${params[i].name}`);
  });
  const init = slots.map((f, i) => `[${i}] = {${f.join(', ')}}`).join(', ');
  const voids = ignored.map((n) => `(void)${n}; `).join('');
  const call = CLIENT_CALLERS[c.name] ? `${CLIENT_CALLERS[c.name]}(a${extra ? `, ${extra}` : ''})` : `pb_client_call(${c.id}, a)`;
  ms += `${sig} { pb_cslot a[${ci.nslots}] = {${init}}; ${voids}return ${call}; }\n`;
}
ms += `\nCK_FUNCTION_LIST pb_function_list = {\n  {2, 40},\n${cfuncs.map((f) => `  ${f.name},\n`).join('')}};\n`;

mkdirSync(outDir, { recursive: true });
const write = (name, text) => {
  const p = join(outDir, name);
  let old = null;
  try { old = readFileSync(p, 'utf8'); } catch { /* new */ }
  if (old !== text) writeFileSync(p, text); // keep mtimes stable for make
};
write('pb_gen.h', gen_h);
write('pb_tables.c', t);
write('exec_invoke.c', x);
write('module_stubs.c', ms);
