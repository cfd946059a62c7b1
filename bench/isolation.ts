// `npm run bench` (second part): what the one-executor-per-app design costs
// and buys. Memory (PSS) and set-up time per additional guest app, and the
// fairness ratio: C_GenerateRandom(32) latency on port B while port A runs
// back-to-back RSA-4096 key generations, against the same with A idle.
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pkcs11Client } from '../src/index.js';
import { createToken, SOFTHSM_MODULE } from '../lab/softhsm.js';
import { createPtyPair } from '../lab/pty.js';
import { spawnDaemon } from '../lab/daemon.js';
import { defaultExecutorPath, packageRoot } from '../src/paths.js';
import { Executor } from '../src/server/executor.js';
import { encodeCall } from '../src/protocol/codec.js';
import { callByName } from '../src/protocol/table.js';
import { unpack } from '../src/protocol/msgpack.js';

const quick = process.argv.includes('--quick');
const N = quick ? 100 : 500;

const pssKb = (pid: number) => Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))![1]);
const avg = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const token = await createToken({ label: 'bench' });

// The isolation's own cost per call: one round trip over the pipe to an app's
// executor, measured without the serial line.
async function executorRoundTrip(): Promise<number> {
  const ex = new Executor({ executable: defaultExecutorPath(), module: SOFTHSM_MODULE, maxPayload: 1 << 20, env: { ...process.env, ...token.env } });
  const ask = async (name: string, args: unknown[]) => {
    const r = await ex.call(encodeCall(callByName(name), args));
    if (!r.ok) throw new Error(r.message);
    return unpack(r.payload) as unknown[];
  };
  await ask('C_Initialize', []);
  const [, slots] = await ask('C_GetSlotList', [true, true]);
  const [, session] = await ask('C_OpenSession', [(slots as number[])[0], 6]);
  const payload = encodeCall(callByName('C_GenerateRandom'), [session, 32]);
  for (let i = 0; i < 200; i++) await ex.call(payload);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < 2000; i++) await ex.call(payload);
  const us = Number(process.hrtime.bigint() - t0) / 1e3 / 2000;
  await ex.close();
  return us;
}
const pipeUs = await executorRoundTrip();
const ports = await Promise.all([0, 1, 2, 3, 4, 5].map(() => createPtyPair()));
const ptyA = ports[0]!;
const daemon = await spawnDaemon({ module: SOFTHSM_MODULE, ports: ports.map((p) => p.serverPath), env: token.env });
delete process.env.SOFTHSM2_CONF;

// Memory (PSS: shared pages split among the processes sharing them) of the
// daemon plus its executors with 1, 6 (one per port) and 24 (four per port)
// apps each logged in with a session, and set-up time per app.
const apps: Pkcs11Client[] = [];
const setupMs: number[] = [];
const memory: Array<{ apps: number; daemonMiB: number; executorsMiB: number; perAppMiB: number }> = [];
const executorPids = () => daemon.output().split('\n').flatMap((l) => {
  try {
    const r = JSON.parse(l) as { msg?: string; executorPid?: number };
    return r.msg === 'connection opened' && r.executorPid ? [r.executorPid] : [];
  } catch {
    return [];
  }
});
for (const target of [1, 6, 24]) {
  while (apps.length < target) {
    const port = ports[apps.length % ports.length]!;
    const t0 = performance.now();
    const c = await Pkcs11Client.connect({ port: port.guestPath });
    await c.C_Initialize();
    setupMs.push(performance.now() - t0);
    const slot = (await c.C_GetSlotList(true))[0]!;
    const s = await c.C_OpenSession(slot, 6);
    await c.C_Login(s, 1, token.pin);
    apps.push(c);
  }
  await new Promise((r) => setTimeout(r, 200));
  const ex = executorPids().map(pssKb);
  const d = pssKb(daemon.proc.pid!);
  memory.push({ apps: target, daemonMiB: d / 1024, executorsMiB: ex.reduce((a, x) => a + x, 0) / 1024, perAppMiB: avg(ex) / 1024 });
}

// Fairness: latency on port B, port A idle vs busy with RSA-4096 key generations.
const b = apps[1]!; // on port B

const bs = await b.C_OpenSession((await b.C_GetSlotList(true))[0]!, 6);
async function latencies(): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < N; i++) {
    const t0 = process.hrtime.bigint();
    await b.C_GenerateRandom(bs, Buffer.alloc(32));
    out.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  return out;
}
const idle = await latencies();
const loadScript = `
  const { Pkcs11Client } = await import(${JSON.stringify(`${packageRoot()}/dist/src/index.js`)});
  const c = await Pkcs11Client.connect({ port: ${JSON.stringify(ptyA.guestPath)}, timeoutMs: 60000 });
  await c.C_Initialize();
  const s = await c.C_OpenSession((await c.C_GetSlotList(true))[0], 6);
  await c.C_Login(s, 1, ${JSON.stringify(token.pin)});
  process.stdout.write('ready\\n');
  let n = 0;
  for (;;) { await c.C_GenerateKeyPair(s, { mechanism: 0 }, [{ type: 0x121, value: 4096 }, { type: 0x122, value: Buffer.from([1, 0, 1]) }], [{ type: 0x108, value: true }]); process.stdout.write('key ' + (++n) + '\\n'); }
`;
const load = spawn(process.execPath, ['--input-type=module', '-e', loadScript], { stdio: ['ignore', 'pipe', 'inherit'] });
let keys = 0;
await new Promise<void>((resolve, reject) => {
  load.on('exit', (code) => reject(new Error(`load generator exited (${code})`)));
  load.stdout!.on('data', (d: Buffer) => {
    if (d.toString().includes('ready')) resolve();
    keys += (d.toString().match(/key /g) ?? []).length;
  });
});
await new Promise((r) => setTimeout(r, 300));
// Sample for at least as long as two key generations take.
const busy: number[] = [];
const startKeys = keys;
while (busy.length < N || keys - startKeys < 2) busy.push(...(await latencies()));
load.removeAllListeners('exit');
load.kill('SIGKILL');

for (const c of apps) {
  await c.C_Finalize();
  await c.close();
}
await daemon.stop();
for (const p of ports) await p.kill();
await token.cleanup();

console.log(`p11bridge isolation bench (SoftHSM2, 6 ports)`);
for (const m of memory) {
  console.log(`  ${String(m.apps).padStart(2)} app(s): daemon PSS ${m.daemonMiB.toFixed(1)} MiB, executors ${m.executorsMiB.toFixed(1)} MiB (${m.perAppMiB.toFixed(2)} MiB each), total ${(m.daemonMiB + m.executorsMiB).toFixed(1)} MiB`);
}
console.log(`  set-up per app (HELLO + C_Initialize)  median ${median(setupMs).toFixed(1)} ms over ${setupMs.length}`);
console.log(`  C_GenerateRandom(32) on port B     median ${median(idle).toFixed(0)} µs with A idle, ${median(busy).toFixed(0)} µs with A generating RSA-4096 keys (${keys - startKeys} generated meanwhile, ${busy.length} samples)`);
console.log(`  executor pipe round trip, C_GenerateRandom(32)  ${pipeUs.toFixed(1)} µs (the isolation's cost per call, without the serial line)`);
console.log(`  fairness ratio (busy/idle)        ${(median(busy) / median(idle)).toFixed(2)}`);
mkdirSync(join(packageRoot(), '.tmp'), { recursive: true });
writeFileSync(join(packageRoot(), '.tmp', 'bench-isolation.json'), JSON.stringify({ memory, setupMsMedian: median(setupMs), idleUs: median(idle), busyUs: median(busy), pipeUs }, null, 2));
