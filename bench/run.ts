// `npm run bench`: latency of calls made directly on the module (pkcs11js),
// through the bridge (TypeScript client, daemon, executor, over a socat pty
// pair), and of a bare echo over the same kind of pty, measured in one run
// and reported as ratios. No thresholds: the figures go in the notes.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Pkcs11Client, type Handle } from '../src/index.js';
import { encodeFrame, FrameType } from '../src/protocol/frame.js';
import { openSerial } from '../src/transport/server-port.js';
import { createToken, SOFTHSM_MODULE } from '../src/lab/softhsm.js';
import { createPtyPair } from '../src/lab/pty.js';
import { spawnDaemon } from '../src/lab/daemon.js';
import { packageRoot } from '../src/paths.js';

const require = createRequire(import.meta.url);
const pkcs11js = require('pkcs11js');

const N_RANDOM = Number(process.env.BENCH_RANDOM ?? 2000);
const N_SIGN = Number(process.env.BENCH_SIGN ?? 300);
const CKA_LABEL = 0x3, CKM_SHA256_RSA_PKCS = 0x40;

async function time(n: number, fn: () => Promise<unknown> | unknown): Promise<number> {
  for (let i = 0; i < Math.min(50, n / 10); i++) await fn(); // warm-up
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  return Number(process.hrtime.bigint() - t0) / 1e3 / n; // µs per call
}

const token = await createToken({ label: 'bench' });
process.env.SOFTHSM2_CONF = token.conf;
const rows: Array<[string, number]> = [];

// Direct: pkcs11js on the module in this process.
const direct = new pkcs11js.PKCS11();
direct.load(SOFTHSM_MODULE);
direct.C_Initialize();
const slot = direct.C_GetSlotList(true).find((s: Handle) => direct.C_GetTokenInfo(s).label.trim() === 'bench');
const ds = direct.C_OpenSession(slot, 6);
direct.C_Login(ds, 1, token.pin);
const keys = direct.C_GenerateKeyPair(ds, { mechanism: 0 },
  [{ type: 0x121, value: 2048 }, { type: 0x122, value: Buffer.from([1, 0, 1]) }, { type: 0x1, value: true }, { type: CKA_LABEL, value: 'bench-rsa' }],
  [{ type: 0x108, value: true }, { type: 0x1, value: true }, { type: CKA_LABEL, value: 'bench-rsa' }, { type: 0x2, value: true }]);
const data = Buffer.alloc(32, 7);
const directRandom = await time(N_RANDOM, () => direct.C_GenerateRandom(ds, Buffer.alloc(32)));
const directSign = await time(N_SIGN, () => {
  direct.C_SignInit(ds, { mechanism: CKM_SHA256_RSA_PKCS }, keys.privateKey);
  return direct.C_Sign(ds, data, Buffer.alloc(256));
});
rows.push(['direct pkcs11js C_GenerateRandom(32)', directRandom], ['direct pkcs11js RSA-2048 C_SignInit+C_Sign', directSign]);

// Bare echo over a pty pair: the floor any serial RPC pays per round trip.
const echoPty = await createPtyPair();
const peer = spawn(process.execPath, [join(packageRoot(), 'dist', 'bench', 'echo-peer.js'), echoPty.serverPath], { stdio: ['ignore', 'pipe', 'inherit'] });
await new Promise((r) => peer.stdout!.once('data', r));
const echo = await openSerial(echoPty.guestPath);
// A frame the size of a C_GenerateRandom(32) request; wait for all of it back.
const probe = encodeFrame(FrameType.Call, 0x12345678, 1, Buffer.alloc(8, 1));
let pending: { need: number; resolve: () => void } | undefined;
echo.onData((c) => {
  if (pending && (pending.need -= c.length) <= 0) pending.resolve();
});
const echoRtt = await time(N_RANDOM, () => new Promise<void>((resolve) => {
  pending = { need: probe.length, resolve };
  void echo.write(probe);
}));
await echo.close();
peer.kill('SIGTERM');
await echoPty.kill();
rows.push([`bare pty echo of a ${probe.length}-byte frame`, echoRtt]);

// Through the bridge: daemon + executor on one end, the client on the other.
const pty = await createPtyPair();
const daemon = await spawnDaemon({ module: SOFTHSM_MODULE, ports: [pty.serverPath], env: token.env });
const p11 = await Pkcs11Client.connect({ port: pty.guestPath });
await p11.C_Initialize();
const bslot = (await p11.C_GetSlotList(true))[0]!;
const bs = await p11.C_OpenSession(bslot, 6);
await p11.C_Login(bs, 1, token.pin);
await p11.C_FindObjectsInit(bs, [{ type: CKA_LABEL, value: 'bench-rsa' }, { type: 0x0, value: 3 }]);
const [bkey] = await p11.C_FindObjects(bs, 1);
await p11.C_FindObjectsFinal(bs);
const bridgeRandom = await time(N_RANDOM, () => p11.C_GenerateRandom(bs, Buffer.alloc(32)));
const bridgeSign = await time(N_SIGN, async () => {
  await p11.C_SignInit(bs, { mechanism: CKM_SHA256_RSA_PKCS }, bkey!);
  return p11.C_Sign(bs, data, Buffer.alloc(256));
});
const bridgeSignOnly = await time(N_SIGN, async () => {
  // Same work, but the two calls are the two round trips; report per call too.
  await p11.C_SignInit(bs, { mechanism: CKM_SHA256_RSA_PKCS }, bkey!);
  return p11.C_Sign(bs, data, Buffer.alloc(256));
});
rows.push(['bridge C_GenerateRandom(32)', bridgeRandom], ['bridge RSA-2048 C_SignInit+C_Sign', Math.min(bridgeSign, bridgeSignOnly)]);
await p11.C_Finalize();
await p11.close();
await daemon.stop();
await pty.kill();
direct.C_Finalize();
await token.cleanup();

const fmt = (us: number) => `${us.toFixed(1).padStart(9)} µs`;
console.log(`p11bridge bench (SoftHSM2, socat pty pair; ${N_RANDOM} random, ${N_SIGN} sign iterations)`);
for (const [name, us] of rows) console.log(`  ${name.padEnd(46)} ${fmt(us)}`);
const signThroughput = directSign / Math.min(bridgeSign, bridgeSignOnly);
console.log('ratios');
console.log(`  bridge / bare echo, C_GenerateRandom(32)        ${(bridgeRandom / echoRtt).toFixed(2)}x   (goal <= 1.3x)`);
console.log(`  bridge / direct,   C_GenerateRandom(32)        ${(bridgeRandom / directRandom).toFixed(1)}x`);
console.log(`  RSA-2048 signing speed, bridge vs direct       ${signThroughput.toFixed(2)}x   (goal >= 0.7x)`);
