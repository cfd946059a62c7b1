// make_corpus.mjs: the seed corpora of the fuzz harnesses, from
// proto/golden/vectors.json (hex frames as on the line):
//   corpus/exec/<n>    the CALL payload of every request vector (what the
//                      daemon hands the executor)
//   corpus/module/<n>  [call id - 1, shape] + the line bytes of every
//                      response, HELLO_OK and ERROR vector, in a few shapes
//                      of the caller's arguments (fuzz_module.c)
//   node native/fuzz/make_corpus.mjs [outdir]   (default: native/fuzz/corpus)
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, resolve, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? join(here, 'corpus'));
const { vectors } = JSON.parse(readFileSync(resolve(here, '../../proto/golden/vectors.json'), 'utf8'));
const { calls } = JSON.parse(readFileSync(resolve(here, '../../proto/protocol.json'), 'utf8'));
const ids = Object.fromEntries(calls.map((c) => [c.name, c.id]));

function cobsDecode(b) {
  const o = [];
  for (let i = 0; i < b.length;) {
    const code = b[i++];
    for (let k = 1; k < code && i < b.length; k++) o.push(b[i++]);
    if (code < 0xff && i < b.length) o.push(0);
  }
  return Buffer.from(o);
}
const slug = (s) => s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60);

mkdirSync(join(out, 'exec'), { recursive: true });
mkdirSync(join(out, 'module'), { recursive: true });
let ne = 0;
let nm = 0;
vectors.forEach((v, i) => {
  const line = Buffer.from(v.hex, 'hex');
  const name = `${String(i).padStart(3, '0')}-${slug(v.name)}`;
  if (v.frame.type === 2) {
    const raw = cobsDecode(line.subarray(1, line.length - 1));
    writeFileSync(join(out, 'exec', name), raw.subarray(12, raw.length - 4));
    ne++;
  } else if (v.frame.type & 0x80) {
    const id = v.call ? ids[v.call] : 3;
    for (const shape of [0x00, 0x03, 0x0c, 0x3c]) {
      writeFileSync(join(out, 'module', `${name}-${shape.toString(16)}`), Buffer.concat([Buffer.from([id - 1, shape]), line]));
      nm++;
    }
  }
});
console.log(`make_corpus: ${ne} exec seeds, ${nm} module seeds in ${out}`);
