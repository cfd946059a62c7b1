// fault_smoke.mjs: libp11bridge.so's retries through a faulty line.
//
//   SoftHSM2 <- daemon <- pty pair <- fault relay -> pty pair <- test_module faults
//
// The relay splits each direction's byte stream into frames (at the 0x00
// delimiters) and drops, corrupts or duplicates whole frames at a seeded,
// reproducible rate. test_module's "faults" mode (test_module.c) runs a mixed
// workload (multi-part AES-CBC, HMAC, RSA, digests, creates and destroys,
// logout/login) and checks that every call completed exactly once.
//
//   node native/test/fault_smoke.mjs
// Env: P11BRIDGE_FAULT_RATE (fraction of frames damaged per direction, default
//      0.05: half dropped, half corrupted, plus 1/5 of that duplicated),
//      P11BRIDGE_FAULT_SEED (default 5), P11BRIDGE_FAULT_CALLS (calls, default 300),
//      P11BRIDGE_ATTEMPT_MS (the module's resend timeout, default here 200),
//      P11BRIDGE_VALGRIND=1 (test_module under valgrind), SOFTHSM2_MODULE.
// Prints the relay's counts and the module's retry statistics; exits non-zero
// on failure.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openSerial } from '../../dist/src/transport/server-port.js';
import { cobsDecode } from '../../dist/src/protocol/cobs.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const MODULE = process.env.SOFTHSM2_MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';
const LIB = resolve(here, '../build/libp11bridge.so');
const TEST = resolve(here, '../build/test_module');
const VALGRIND = !!process.env.P11BRIDGE_VALGRIND;
const RATE = Number(process.env.P11BRIDGE_FAULT_RATE ?? 0.05);
const SEED = Number(process.env.P11BRIDGE_FAULT_SEED ?? 5);
const CALLS = Number(process.env.P11BRIDGE_FAULT_CALLS ?? 300);
const PIN = '87654321';

const children = [];
const dir = mkdtempSync(join(tmpdir(), 'p11b-faults-'));
function cleanup() {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}
function fail(msg) {
  console.error(`fault_smoke: FAIL: ${msg}`);
  cleanup();
  process.exit(1);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- token ----
mkdirSync(join(dir, 'tokens'));
const conf = join(dir, 'softhsm2.conf');
writeFileSync(conf, `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
const hsmEnv = { ...process.env, SOFTHSM2_CONF: conf };
execFileSync('softhsm2-util', ['--init-token', '--free', '--label', 'faults', '--so-pin', '12345678', '--pin', PIN], { env: hsmEnv, stdio: 'ignore' });

// ---- two pty pairs: daemon <-> relay <-> module ----
async function ptyPair(a, b) {
  const s = spawn('socat', [`pty,link=${a}`, `pty,link=${b}`], { stdio: 'ignore' });
  children.push(s);
  for (let i = 0; i < 100 && !(existsSync(a) && existsSync(b)); i++) await sleep(50);
  if (!existsSync(a) || !existsSync(b)) fail('socat did not create a pty pair');
}
const DAEMON_TTY = join(dir, 'daemon-tty');
const RELAY_D = join(dir, 'relay-daemon-side');
const RELAY_G = join(dir, 'relay-guest-side');
const GUEST_TTY = join(dir, 'guest-tty');
await ptyPair(DAEMON_TTY, RELAY_D);
await ptyPair(RELAY_G, GUEST_TTY);

// ---- the relay ----
// mulberry32: small, seeded, reproducible
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = prng(SEED);
const stats = {
  toDaemon: { frames: 0, dropped: 0, corrupted: 0, duplicated: 0, repeats: 0 },
  toGuest: { frames: 0, dropped: 0, corrupted: 0, duplicated: 0, repeats: 0 },
};
const linkD = await openSerial(RELAY_D, { lock: false });
const linkG = await openSerial(RELAY_G, { lock: false });
function direction(from, to, st) {
  let piece = [];
  let pieceLen = 0;
  const seen = new Set(); // "type:conn:req" of requests, to count resends
  let chain = Promise.resolve();
  const emit = (buf) => { chain = chain.then(() => to.write(buf)).catch(() => {}); };
  from.onData((chunk) => {
    let start = 0;
    for (;;) {
      const z = chunk.indexOf(0, start);
      if (z < 0) {
        if (start < chunk.length) { piece.push(chunk.subarray(start)); pieceLen += chunk.length - start; }
        return;
      }
      if (z > start) { piece.push(chunk.subarray(start, z)); pieceLen += z - start; }
      start = z + 1;
      if (pieceLen === 0) continue;
      const p = Buffer.concat(piece);
      piece = [];
      pieceLen = 0;
      st.frames++;
      const raw = cobsDecode(p);
      if (raw && raw.length >= 16 && !(raw[1] & 0x80)) {
        const key = `${raw[1]}:${raw.readUInt32BE(4)}:${raw.readUInt32BE(8)}`;
        if (seen.has(key)) st.repeats++;
        else seen.add(key);
      }
      const r = rnd();
      if (r < RATE / 2) {
        st.dropped++;
        continue;
      }
      let out = Buffer.from(p);
      if (r < RATE) {
        st.corrupted++;
        const i = Math.floor(rnd() * out.length);
        out[i] = (out[i] ^ (1 + Math.floor(rnd() * 255))) || 0x55; // never 0x00: the frame stays one piece
      }
      const framed = Buffer.concat([Buffer.from([0]), out, Buffer.from([0])]);
      emit(framed);
      if (rnd() < RATE / 5) {
        st.duplicated++;
        emit(framed);
      }
    }
  });
}
direction(linkG, linkD, stats.toDaemon);
direction(linkD, linkG, stats.toGuest);

// ---- daemon ----
const daemon = spawn(process.execPath, [join(root, 'dist/src/cli/main.js'), 'serve', '--module', MODULE, '--port', DAEMON_TTY],
  { env: hsmEnv, stdio: ['ignore', 'pipe', 'pipe'] });
children.push(daemon);
let dlog = '';
daemon.stdout.on('data', (d) => (dlog += d));
daemon.stderr.on('data', (d) => (dlog += d));
for (let i = 0; i < 300 && !dlog.includes('"msg":"serving"'); i++) await sleep(50);
if (!dlog.includes('"msg":"serving"')) fail(`daemon did not start:\n${dlog}`);

// ---- the test program ----
const env = { ...process.env, TEC_COMM_PORT: GUEST_TTY, P11BRIDGE_TEST_PIN: PIN, P11BRIDGE_TEST_CALLS: String(CALLS),
  P11BRIDGE_TEST_SEED: String(SEED), P11BRIDGE_ATTEMPT_MS: process.env.P11BRIDGE_ATTEMPT_MS ?? '200', P11BRIDGE_DEBUG: '1', P11BRIDGE_TIMEOUT_MS: process.env.P11BRIDGE_TIMEOUT_MS ?? '8000' };
delete env.SOFTHSM2_CONF;
delete env.P11BRIDGE_CONFIG;
let cmd = TEST;
let argv = [LIB, 'faults'];
if (VALGRIND) {
  argv = ['--leak-check=full', '--errors-for-leak-kinds=definite', '--show-leak-kinds=definite',
    '--error-exitcode=1', '--trace-children=no', `--suppressions=${resolve(here, 'valgrind.supp')}`, TEST, LIB, 'faults'];
  cmd = 'valgrind';
}
const started = Date.now();
const t = spawn(cmd, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
let out = '';
let err = '';
t.stdout.on('data', (d) => { out += d; process.stdout.write(d); });
t.stderr.on('data', (d) => { err += d; });
const timer = setTimeout(() => t.kill('SIGKILL'), VALGRIND ? 900_000 : 300_000);
const code = await new Promise((r) => t.on('exit', (c, sig) => r(sig ? sig : c)));
clearTimeout(timer);
const secs = ((Date.now() - started) / 1000).toFixed(1);
const resent = (err.match(/answered after \d+ resend/g) ?? []).length;
const failed = err.split('\n').filter((l) => /no answer from the p11bridge server/.test(l));
const portStats = /port statistics: .*/.exec(err)?.[0] ?? '(none)';
console.log(`fault_smoke: rate ${RATE} seed ${SEED}, ${secs} s`);
console.log(`  relay guest->daemon: ${JSON.stringify(stats.toDaemon)}`);
console.log(`  relay daemon->guest: ${JSON.stringify(stats.toGuest)}`);
console.log(`  module: ${resent} calls answered after resending; ${portStats}`);
if (failed.length) console.log(`  calls that failed:\n    ${failed.join('\n    ')}`);
if (code !== 0) fail(`test_module exited ${code}\n${err.split('\n').filter((l) => !/answered after/.test(l)).slice(-40).join('\n')}`);
if (!/checks passed \(faults\)/.test(out)) fail('test_module did not report success');
if (VALGRIND && !/ERROR SUMMARY: 0 errors/.test(err)) fail('valgrind reported errors');
if (RATE > 0 && stats.toDaemon.repeats === 0) fail('no resend seen at the relay: the fault injection did not bite');
cleanup();
console.log(`fault_smoke: passed${VALGRIND ? ' under valgrind' : ''}`);
