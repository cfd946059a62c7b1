// exec_fuzz.mjs: mutation fuzzing of p11bridge-exec over the executor link.
// Every answer must be a RESULT array starting with an unsigned rv or an
// error map {rv, message}; the executor must never die.
//
//   node native/test/exec_fuzz.mjs [iterations]     (default 5000)
//   P11BRIDGE_EXEC=native/build/asan/p11bridge-exec node native/test/exec_fuzz.mjs
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Packr, Unpackr } from 'msgpackr';

const here = dirname(fileURLToPath(import.meta.url));
const EXEC = process.env.P11BRIDGE_EXEC ?? resolve(here, '../build/p11bridge-exec');
const MODULE = process.env.SOFTHSM2_MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';
const N = Number(process.argv[2] ?? 5000);
const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'auto' });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'auto' });

let seed = Number(process.env.SEED ?? 12345);
const rnd = () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x80000000; };
const ri = (n) => Math.floor(rnd() * n);
const pick = (a) => a[ri(a.length)];

const dir = mkdtempSync(join(tmpdir(), 'p11bridge-fuzz-'));
writeFileSync(join(dir, 'softhsm2.conf'), `directories.tokendir = ${dir}\nobjectstore.backend = file\nlog.level = ERROR\n`);
process.env.SOFTHSM2_CONF = join(dir, 'softhsm2.conf');
execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'f', '--so-pin', '1234', '--pin', '5678'], { stdio: 'ignore' });
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

const proc = spawn(EXEC, ['--module', MODULE], { stdio: ['pipe', 'pipe', 'inherit'] });
let buf = Buffer.alloc(0);
let waiter = null;
proc.stdout.on('data', (d) => { buf = Buffer.concat([buf, d]); pump(); });
proc.on('exit', (code, sig) => { if (!done) { console.error(`FAIL: executor exited (${code}, ${sig})`); process.exit(1); } });
let done = false;
function pump() {
  if (!waiter || buf.length < 4) return;
  const len = buf.readUInt32BE(0);
  if (buf.length < 4 + len) return;
  const body = buf.subarray(4, 4 + len);
  buf = buf.subarray(4 + len);
  const w = waiter;
  waiter = null;
  w(unpackr.unpack(body));
}
function send(payload) {
  const hdr = Buffer.alloc(4);
  hdr.writeUInt32BE(payload.length);
  proc.stdin.write(Buffer.concat([hdr, payload]));
  return new Promise((res) => { waiter = res; pump(); });
}
const call = (...m) => send(packr.pack(m));

const randValue = (depth = 0) => {
  switch (ri(depth > 2 ? 8 : 10)) {
    case 0: return null;
    case 1: return rnd() < 0.5;
    case 2: return ri(300);
    case 3: return pick([0, 1, 0x1085, 0x1087, 0x43, 2 ** 32 - 1, 2n ** 64n - 1n, 2n ** 40n, -1, -(2 ** 40)]);
    case 4: return rnd() * 10;
    case 5: return 'str'.repeat(ri(3));
    case 6: return Buffer.alloc(pick([0, 1, 8, 12, 16, 32, 33, 64]), ri(256));
    case 7: return Buffer.alloc(ri(40), 7);
    case 8: return Array.from({ length: ri(5) }, () => randValue(depth + 1));
    default: return Array.from({ length: ri(4) }, () => [pick([0, 1, 0x11, 0x104, 0x40000211, 0x40000600, ri(0x200)]), randValue(depth + 1)]);
  }
};
function mutate(v, depth = 0) {
  if (rnd() < 0.15) return randValue(depth);
  if (Array.isArray(v)) {
    const c = v.map((x) => (rnd() < 0.3 ? mutate(x, depth + 1) : x));
    if (rnd() < 0.05) c.push(randValue(depth + 1));
    if (rnd() < 0.05 && c.length > 1) c.pop();
    return c;
  }
  return v;
}

async function main() {
  let h = 0, key = 0, pub = 0, priv = 0;
  const setup = async () => {
    await call(1);
    const [, slots] = await call(5, true, true);
    const [, s] = await call(13, Array.isArray(slots) ? slots[0] ?? 0 : 0, 6);
    h = typeof s === 'number' ? s : 0;
    await call(19, h, 1, Buffer.from('5678'));
    key = (await call(59, h, [0x1080], [[0x161, 32], [0x104, true], [0x105, true], [1, false], [0x40000600, [0x1085, 0x1087]]]))[1] ?? 0;
    const kp = await call(60, h, [0x1040], [[0x180, Buffer.from('06082a8648ce3d030107', 'hex')], [1, false]], [[0x108, true], [1, false]]);
    pub = kp[1] ?? 0; priv = kp[2] ?? 0;
  };
  await setup();
  const seeds = () => [
    [3], [5, true, null], [5, false, 3], [5, true, true], [7, 1], [8, 0, true], [9, 0, 0x1080], [16, h],
    [25, h, key, [[0, true], [0x11, false], [0x161, true], [0x40000600, true], [0x40000211, true]]],
    [27, h, [[0, 4], [0x40000600, [1, 2]]]], [28, h, 5], [29, h],
    [30, h, [0x1087, [Buffer.alloc(12), 96, Buffer.alloc(3), 128]], key], [31, h, Buffer.alloc(20), 64], [32, h, Buffer.alloc(16), null],
    [33, h, 16], [30, h, [0x1085, Buffer.alloc(16)], key], [38, h, [0x250]], [39, h, Buffer.alloc(3), 32],
    [43, h, [0x1041], priv], [44, h, Buffer.alloc(32), 64], [49, h, [0x1041], pub], [50, h, Buffer.alloc(32), Buffer.alloc(64)],
    [43, h, [0x43, [0x250, 2, 32]], priv], [63, h, [0x1050, [1, null, Buffer.alloc(65, 4)]], priv, [[0x161, 16]]],
    [65, h, 16], [64, h, Buffer.alloc(4)], [61, h, [0x2109], key, key, 100], [17, h, null], [24, h, key],
    [22, h, key, [[3, Buffer.from('x')]]], [21, h, [[0, 4], [0x100, 0x1f], [0x11, Buffer.alloc(16)], [1, false]]],
  ];
  let results = 0, errors = 0;
  for (let i = 0; i < N; i++) {
    if (i % 500 === 499) await setup();
    let r;
    if (rnd() < 0.1) {
      const b = packr.pack(mutate(pick(seeds())));
      const c = Buffer.from(b);
      for (let k = 0; k < 1 + ri(3); k++) c[ri(c.length)] = ri(256);
      r = await send(rnd() < 0.2 ? c.subarray(0, ri(c.length)) : c);
    } else {
      const m = mutate(pick(seeds()));
      if (Array.isArray(m) && [2, 10, 12, 14, 15, 20, 68].includes(m[0])) continue;
      r = await call(...(Array.isArray(m) ? m : [m]));
    }
    if (Array.isArray(r) && r.length >= 1 && (typeof r[0] === 'number' || typeof r[0] === 'bigint')) results++;
    else if (r && typeof r === 'object' && 'rv' in r && typeof r.message === 'string') errors++;
    else { console.error(`FAIL: bad answer ${JSON.stringify(r)}`); process.exit(1); }
  }
  done = true;
  proc.stdin.end();
  const code = await new Promise((res) => proc.on('exit', res));
  if (code !== 0) { console.error(`FAIL: exit code ${code}`); process.exit(1); }
  console.log(`exec_fuzz: ${N} messages, ${results} results, ${errors} error maps, executor exited 0`);
}
main().catch((e) => { console.error(e); process.exit(1); });
