// golden.mjs: every vector of proto/golden/vectors.json through the C codecs
// of libp11bridge (build/test_golden), which must reproduce each frame byte
// for byte after decoding it into C values and re-encoding it.
//
//   node native/test/golden.mjs [path/to/test_golden]
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const bin = process.argv[2] ?? resolve(here, '../build/test_golden');
const refusalsBin = process.argv[3] ?? resolve(here, '../build/test_refusals');
const { vectors, refusals } = JSON.parse(readFileSync(resolve(here, '../../proto/golden/vectors.json'), 'utf8'));
const proto = JSON.parse(readFileSync(resolve(here, '../../proto/protocol.json'), 'utf8'));
const CALL_IDS = Object.fromEntries(
  JSON.parse(readFileSync(resolve(here, '../../proto/protocol.json'), 'utf8')).calls.map((c) => [c.name, c.id]));

const T = proto.frame.types;
const kindOf = (v) => {
  if (v.call) return v.direction;
  switch (v.frame.type) {
    case T.HELLO: return 'hello';
    case T.HELLO_OK: return 'hello_ok';
    case T.ERROR: return 'error';
    default: return 'frame';
  }
};
const lines = vectors.map((v) => {
  const kind = kindOf(v);
  let extra = '';
  if (kind === 'response') {
    // the request this answers, where the vector set has it
    const req = vectors.find((r) => r.call === v.call && r.direction === 'request' && r.frame.req === v.frame.req);
    extra = ` ${CALL_IDS[v.call]}:${req ? req.hex : '-'}`;
  }
  return `${kind} ${v.hex}${extra}`;
});
const out = execFileSync(bin, { input: lines.join('\n') + '\n', encoding: 'utf8' }).trim().split('\n');
let failed = 0;
vectors.forEach((v, i) => {
  const o = out[i] ?? 'err no output';
  const [status, type, conn, req, key, hex, answer] = o.split(' ');
  let why;
  if (status !== 'ok') why = o.slice(4);
  else if (Number(type) !== v.frame.type || Number(conn) !== v.frame.conn || Number(req) !== v.frame.req || Number(key) !== (v.frame.key ?? 0)) why = `header ${type}/${conn}/${req}/${key}`;
  else if (hex !== v.hex) why = `re-encoded\n    got  ${hex}\n    want ${v.hex}`;
  else if (v.answerBytes !== undefined && Number(answer) !== v.answerBytes) why = `expected answer size ${answer}, the TypeScript client expects ${v.answerBytes}`;
  if (why) {
    failed++;
    console.error(`FAIL ${v.name}: ${why}`);
  }
});
// refusals: the executor refuses each as the TypeScript decoder does, never calling the module
const rout = execFileSync(refusalsBin, { input: refusals.map((r) => r.payload).join('\n') + '\n', encoding: 'utf8' }).trim().split('\n');
let rfailed = 0;
refusals.forEach((r, i) => {
  const want = r.expect === 'malformed' || r.expect === 'unknown call' ? r.expect : `rv ${proto.rv[r.expect]}`;
  if (rout[i] !== want) {
    rfailed++;
    console.error(`FAIL refusal ${r.name}: got '${rout[i]}', want '${want}'`);
  }
});
if (failed || rfailed) {
  console.error(`golden: ${failed} of ${vectors.length} vectors and ${rfailed} of ${refusals.length} refusals failed`);
  process.exit(1);
}
console.log(`golden: ${vectors.length} vectors reproduced byte for byte; ${refusals.length} refusals refused as by the TypeScript decoder, the module never called`);
