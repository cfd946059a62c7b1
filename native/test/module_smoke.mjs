// module_smoke.mjs: libp11bridge.so end to end. Starts a fresh SoftHSM2
// token, a socat pty pair (left cooked with echo on, like a fresh serial
// port), the p11bridge daemon on one end, and build/test_module on the
// other, which loads the module and runs its checks (test_module.c).
//
//   node native/test/module_smoke.mjs
//   P11BRIDGE_VALGRIND=1 node native/test/module_smoke.mjs   (test_module under valgrind)
//
// Env: SOFTHSM2_MODULE (module path). Exits non-zero on failure.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const MODULE = process.env.SOFTHSM2_MODULE ?? '/usr/lib/softhsm/libsofthsm2.so';
const LIB = resolve(here, '../build/libp11bridge.so');
const TEST = resolve(here, '../build/test_module');
const VALGRIND = !!process.env.P11BRIDGE_VALGRIND;
const PIN = '87654321';
const LABEL = 'p11bridge-module';

const children = [];
const dir = mkdtempSync(join(tmpdir(), 'p11b-mod-'));
function cleanup() {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  rmSync(dir, { recursive: true, force: true });
}
function fail(msg) {
  console.error(`module_smoke: FAIL: ${msg}`);
  cleanup();
  process.exit(1);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- token ----
mkdirSync(join(dir, 'tokens'));
const conf = join(dir, 'softhsm2.conf');
writeFileSync(conf, `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
const hsmEnv = { ...process.env, SOFTHSM2_CONF: conf };
execFileSync('softhsm2-util', ['--init-token', '--free', '--label', LABEL, '--so-pin', '12345678', '--pin', PIN], { env: hsmEnv, stdio: 'ignore' });

// ---- the module's own CK_INFO, for comparison ----
const require = createRequire(import.meta.url);
let expectInfo;
{
  const pkcs11js = require('pkcs11js');
  process.env.SOFTHSM2_CONF = conf;
  const p = new pkcs11js.PKCS11();
  p.load(MODULE);
  p.C_Initialize();
  const i = p.C_GetInfo();
  expectInfo = `${i.manufacturerID.trim()}|${i.libraryDescription.trim()}|${i.libraryVersion.major}.${i.libraryVersion.minor}`;
  p.C_Finalize();
  p.close();
  delete process.env.SOFTHSM2_CONF;
}

// ---- pty pair ----
const A = join(dir, 'server-tty');
const B = join(dir, 'guest-tty');
const socat = spawn('socat', [`pty,link=${A}`, `pty,link=${B}`], { stdio: 'ignore' });
children.push(socat);
for (let i = 0; i < 100 && !(existsSync(A) && existsSync(B)); i++) await sleep(50);
if (!existsSync(A) || !existsSync(B)) fail('socat did not create the pty pair');

// ---- daemon ----
const daemon = spawn(process.execPath, [join(root, 'dist/src/cli/main.js'), 'serve', '--module', MODULE, '--port', A],
  { env: hsmEnv, stdio: ['ignore', 'pipe', 'pipe'] });
children.push(daemon);
let dlog = '';
daemon.stdout.on('data', (d) => (dlog += d));
daemon.stderr.on('data', (d) => (dlog += d));
for (let i = 0; i < 300 && !dlog.includes('"msg":"serving"'); i++) await sleep(50);
if (!dlog.includes('"msg":"serving"')) fail(`daemon did not start:\n${dlog}`);

// ---- the test program ----
const digests = Array.from({ length: 8 }, (_, i) => createHash('sha256').update(`p11bridge thread ${i}`).digest('hex')).join(',');
const env = { ...process.env, TEC_COMM_PORT: B, P11BRIDGE_TEST_PIN: PIN, P11BRIDGE_TEST_LABEL: LABEL,
  P11BRIDGE_TEST_INFO: expectInfo, P11BRIDGE_TEST_DIGESTS: digests };
delete env.SOFTHSM2_CONF;
delete env.P11BRIDGE_CONFIG;
let cmd = TEST;
let argv = [LIB];
if (VALGRIND) {
  argv = ['--leak-check=full', '--errors-for-leak-kinds=definite', '--show-leak-kinds=definite',
    '--error-exitcode=1', '--trace-children=no', `--suppressions=${resolve(here, 'valgrind.supp')}`, TEST, LIB];
  cmd = 'valgrind';
}
const t = spawn(cmd, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
let out = '';
t.stdout.on('data', (d) => { out += d; process.stdout.write(d); });
t.stderr.on('data', (d) => { out += d; process.stderr.write(d); });
const timer = setTimeout(() => t.kill("SIGKILL"), VALGRIND ? 600_000 : Number(process.env.P11BRIDGE_TEST_TIMEOUT ?? 120_000));
const code = await new Promise((r) => t.on('exit', (c, sig) => r(sig ? sig : c)));
clearTimeout(timer);
if (code !== 0) fail(`test_module exited ${code}${/FAIL/.test(out) ? '' : `\ndaemon log:\n${dlog.slice(-3000)}`}`);
if (!/test_module: \d+ checks passed/.test(out)) fail('test_module did not report success');
if (VALGRIND && !/ERROR SUMMARY: 0 errors/.test(out)) fail('valgrind reported errors');

// ---- a hostile server on a second pty pair ----
{
  const HA = join(dir, 'hostile-server-tty');
  const HB = join(dir, 'hostile-guest-tty');
  const s2 = spawn('socat', [`pty,link=${HA}`, `pty,link=${HB}`], { stdio: 'ignore' });
  children.push(s2);
  for (let i = 0; i < 100 && !(existsSync(HA) && existsSync(HB)); i++) await sleep(50);
  const hs = spawn(process.execPath, [resolve(here, 'hostile_server.mjs'), HA], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(hs);
  let hout = '';
  hs.stdout.on('data', (d) => (hout += d));
  for (let i = 0; i < 200 && !hout.includes('ready'); i++) await sleep(50);
  if (!hout.includes('ready')) fail('hostile server did not start');
  const henv = { ...env, TEC_COMM_PORT: HB, P11BRIDGE_TIMEOUT_MS: '400' };
  const h = spawn(cmd, [...argv, 'hostile'], { env: henv, stdio: ['ignore', 'pipe', 'pipe'] });
  let o2 = '';
  h.stdout.on('data', (d) => { o2 += d; process.stdout.write(d); });
  h.stderr.on('data', (d) => { o2 += d; process.stderr.write(d); });
  const timer2 = setTimeout(() => h.kill('SIGKILL'), VALGRIND ? 300_000 : 60_000);
  const c2 = await new Promise((r) => h.on('exit', (c, sig) => r(sig ? sig : c)));
  clearTimeout(timer2);
  if (c2 !== 0 || !/checks passed \(hostile server\)/.test(o2)) fail(`test_module (hostile) exited ${c2}`);
  if (VALGRIND && !/ERROR SUMMARY: 0 errors/.test(o2)) fail('valgrind reported errors (hostile)');
}

cleanup();
console.log(`module_smoke: passed${VALGRIND ? ' under valgrind' : ''}`);
