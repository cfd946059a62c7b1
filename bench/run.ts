// `npm run bench [-- --quick]`: every path to the same SoftHSM2 token,
// measured in one run, in interleaved rounds so that a noisy neighbour hits
// them all alike, and reported as ratios:
//   floor       a C echo of a message over the same kind of socat pty pair
//               (native/bench/p11bench echo): what any serial RPC pays
//   direct-c    p11bench calling libsofthsm2.so itself
//   bridge-c    p11bench calling libp11bridge.so (guest) -> pty -> daemon -> executor
//   p11kit      p11bench calling p11-kit-client.so -> pty -> p11-kit remote
//   direct-node pkcs11js on libsofthsm2.so, the same ops (bench/ops.ts)
//   bridge-ts   Pkcs11Client -> pty -> daemon -> executor
// plus the bytes each op puts on the line (counted by socat -r/-R on the
// pair), and the aggregate rate with 1, 2 and 6 ports busy at once.
// No thresholds: figures, medians over rounds, go to stdout and
// .tmp/bench.json.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pkcs11js from 'pkcs11js';
import { Pkcs11Client } from '../src/index.js';
import { createToken, SOFTHSM_MODULE } from '../lab/softhsm.js';
import { createPtyPair, type PtyPair } from '../lab/pty.js';
import { spawnDaemon } from '../lab/daemon.js';
import { packageRoot } from '../src/paths.js';
import { OPS, prepare, timeOp, type OpName, type OpResult } from './ops.js';

const execFileP = promisify(execFile);
const quick = process.argv.includes('--quick');
const ROUNDS = quick ? 1 : 3;
const BUDGET_MS = quick ? 60 : 300;
const BYTES_N = quick ? 5 : 20;
const AGG_MS = quick ? 500 : 2000;
/** At least this many samples of each op (the key generation's median needs them). */
const MIN_SAMPLES = quick ? 5 : 15;
const P11BENCH = join(packageRoot(), 'native', 'build', 'p11bench');
const BRIDGE_MODULE = join(packageRoot(), 'native', 'build', 'libp11bridge.so');
const P11KIT_CLIENT = '/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so';
const LABEL = 'bench';

const token = await createToken({ label: LABEL });
const pin = token.pin;

// ---- the links: one pair per path, six for the daemon's ports
const ports: PtyPair[] = [];
for (let i = 0; i < 6; i++) ports.push(await createPtyPair());
const floorPty = await createPtyPair();
const kitPty = await createPtyPair();
const daemon = await spawnDaemon({ module: SOFTHSM_MODULE, ports: ports.map((p) => p.serverPath), env: token.env });
const echoServer = spawn(P11BENCH, ['echo-server', floorPty.serverPath], { stdio: 'ignore' });
// A bench that fails half-way must not leave its relays and servers running.
process.on('exit', () => {
  for (const pid of [...ports, floorPty, kitPty].map((p) => p.pid).concat(echoServer.pid ?? [])) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
  }
});

/**
 * p11-kit's server, one per client session (it serves one and stays), behind
 * a socat on the tty as in the issue's set-up: `p11-kit remote` refuses to run
 * with a terminal as its stdin.
 */
function startP11kit(pty: PtyPair): ChildProcess {
  return spawn('socat', [`${pty.serverPath},rawer`, `EXEC:p11-kit remote ${SOFTHSM_MODULE}`],
    { stdio: 'ignore', env: { ...process.env, ...token.env } });
}
const stop = async (p: ChildProcess) => {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const gone = new Promise((r) => p.once('exit', r));
  p.kill('SIGKILL');
  await gone;
};

async function p11bench(module: string, env: NodeJS.ProcessEnv, count: string, ops: readonly string[]): Promise<OpResult[]> {
  const { stdout } = await execFileP(P11BENCH, ['ops', module, LABEL, pin, count, ...ops],
    { env: { ...process.env, ...env, P11BENCH_MIN_SAMPLES: String(MIN_SAMPLES) }, maxBuffer: 1 << 24, timeout: 600_000 });
  return stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as OpResult);
}
const bridgeEnv = (pty: PtyPair) => ({ TEC_COMM_PORT: pty.guestPath, P11BRIDGE_TIMEOUT_MS: '60000' });
const kitEnv = (pty: PtyPair) => ({ P11_KIT_SERVER_ADDRESS: `|socat - ${pty.guestPath},rawer` });

async function viaP11kit(count: string, ops: readonly string[]): Promise<OpResult[]> {
  const server = startP11kit(kitPty);
  await new Promise((r) => setTimeout(r, 100));
  try {
    return await p11bench(P11KIT_CLIENT, kitEnv(kitPty), count, ops);
  } finally {
    await stop(server);
  }
}

async function viaNode(kind: 'direct-node' | 'bridge-ts'): Promise<OpResult[]> {
  let api: Record<string, (...a: never[]) => unknown>;
  let close = async () => {};
  if (kind === 'direct-node') {
    const m = new pkcs11js.PKCS11();
    process.env.SOFTHSM2_CONF = token.conf;
    m.load(SOFTHSM_MODULE);
    api = m as unknown as typeof api;
    close = async () => m.close();
  } else {
    const c = await Pkcs11Client.connect({ port: ports[0]!.guestPath, timeoutMs: 60_000 });
    api = c as unknown as typeof api;
    close = () => c.close();
  }
  const b = await prepare(api, LABEL, pin);
  const out: OpResult[] = [];
  for (const op of OPS) out.push(await timeOp(b, op, BUDGET_MS, MIN_SAMPLES));
  await b.close();
  await close();
  return out;
}

async function floor(): Promise<OpResult[]> {
  const out: OpResult[] = [];
  for (const size of [64, 65536]) {
    const { stdout } = await execFileP(P11BENCH, ['echo', floorPty.guestPath, String(size), String(BUDGET_MS * 2)], { timeout: 60_000 });
    out.push(JSON.parse(stdout) as OpResult);
  }
  return out;
}

const PATHS = ['floor', 'direct-c', 'bridge-c', 'p11kit', 'direct-node', 'bridge-ts'] as const;
type PathName = (typeof PATHS)[number];
const rounds: Record<PathName, OpResult[][]> = Object.fromEntries(PATHS.map((p) => [p, []])) as never;
const runPath: Record<PathName, () => Promise<OpResult[]>> = {
  floor,
  'direct-c': () => p11bench(SOFTHSM_MODULE, token.env, String(BUDGET_MS), OPS),
  'bridge-c': () => p11bench(BRIDGE_MODULE, bridgeEnv(ports[0]!), String(BUDGET_MS), OPS),
  p11kit: () => viaP11kit(String(BUDGET_MS), OPS),
  'direct-node': () => viaNode('direct-node'),
  'bridge-ts': () => viaNode('bridge-ts'),
};
for (let r = 0; r < ROUNDS; r++) {
  for (const p of PATHS) {
    process.stderr.write(`bench: round ${r + 1}/${ROUNDS} ${p}\n`);
    rounds[p].push(await runPath[p]());
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[s.length >> 1]! : NaN;
};
/** Per path and op: the median over rounds of each figure. */
function summary(p: PathName): Map<string, OpResult> {
  const m = new Map<string, OpResult>();
  for (const round of rounds[p]) {
    for (const r of round) {
      const prev = m.get(r.op);
      if (r.error) {
        if (!prev) m.set(r.op, { op: r.op, error: r.error });
        continue;
      }
      m.set(r.op, prev?.p50_us === undefined ? { ...r } : prev);
    }
  }
  for (const [op, v] of m) {
    const ok = rounds[p].flatMap((round) => round.filter((r) => r.op === op && !r.error));
    if (!ok.length) continue;
    m.set(op, { op, n: ok.reduce((a, r) => a + r.n!, 0), p50_us: median(ok.map((r) => r.p50_us!)), p99_us: median(ok.map((r) => r.p99_us!)), ops_s: median(ok.map((r) => r.ops_s!)) });
    void v;
  }
  return m;
}
const sums = Object.fromEntries(PATHS.map((p) => [p, summary(p)])) as Record<PathName, Map<string, OpResult>>;

// ---- bytes per op on the line, bridge and p11-kit, counted by a socat that dumps each direction to a file
async function countingPair(): Promise<{ pty: PtyPair; bytes(): number; kill(): Promise<void> }> {
  const pty = await createPtyPair({ dumpDir: true });
  const size = (f: string) => {
    try {
      return statSync(join(pty.dir, f)).size;
    } catch {
      return 0;
    }
  };
  return { pty, bytes: () => size('left-to-right') + size('right-to-left'), kill: () => pty.kill() };
}
const bytesPerOp: Record<'bridge-c' | 'p11kit', Record<string, number | string>> = { 'bridge-c': {}, p11kit: {} };
{
  const bc = await countingPair();
  const kc = await countingPair();
  const bridgeDaemon = await spawnDaemon({ module: SOFTHSM_MODULE, ports: [bc.pty.serverPath], env: token.env });
  for (const op of OPS.filter((o) => o !== 'rsa2048-keygen')) {
    for (const [path, pair, runOnce] of [
      ['bridge-c', bc, (n: string) => p11bench(BRIDGE_MODULE, bridgeEnv(bc.pty), n, [op])],
      ['p11kit', kc, async (n: string) => {
        const server = startP11kit(kc.pty);
        await new Promise((r) => setTimeout(r, 100));
        try {
          return await p11bench(P11KIT_CLIENT, kitEnv(kc.pty), n, [op]);
        } finally {
          await stop(server);
        }
      }],
    ] as const) {
      const b0 = pair.bytes();
      await runOnce('x0');
      const b1 = pair.bytes();
      const res = await runOnce(`x${BYTES_N}`);
      const b2 = pair.bytes();
      bytesPerOp[path][op] = res[0]?.error ? res[0].error : Math.round(((b2 - b1) - (b1 - b0)) / BYTES_N);
    }
  }
  await bridgeDaemon.stop();
  await bc.kill();
  await kc.kill();
}

// ---- aggregate: the same op on 1, 2 and 6 ports at once, one C app per port
const aggregate: Record<string, Record<string, number>> = {};
for (const op of ['random32', 'rsa2048-sign'] as const) {
  aggregate[op] = {};
  for (const k of [1, 2, 6]) {
    const results = await Promise.all(ports.slice(0, k).map((p) => p11bench(BRIDGE_MODULE, bridgeEnv(p), String(AGG_MS), [op])));
    aggregate[op][`${k} port${k > 1 ? 's' : ''}`] = Math.round(results.reduce((a, r) => a + (r[0]?.ops_s ?? 0), 0));
  }
}
const directAgg: Record<string, number> = {};
for (const op of ['random32', 'rsa2048-sign'] as const) {
  const results = await Promise.all([0, 1].map(() => p11bench(SOFTHSM_MODULE, token.env, String(AGG_MS), [op])));
  directAgg[op] = Math.round(results.reduce((a, r) => a + (r[0]?.ops_s ?? 0), 0));
}

echoServer.kill('SIGKILL');
await daemon.stop();
for (const p of [...ports, floorPty, kitPty]) await p.kill();
await token.cleanup();

// ---- report
const floor64 = sums.floor.get('echo-64')?.p50_us ?? NaN;
const floor64k = sums.floor.get('echo-65536')?.p50_us ?? NaN;
const us = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? '—' : v < 10 ? v.toFixed(1) : v.toFixed(0));
const ratio = (a: number | undefined, b: number | undefined) => (a && b ? (a / b).toFixed(2) : '—');
const get = (p: PathName, op: string) => sums[p].get(op);
const cell = (p: PathName, op: string) => (get(p, op)?.error ? 'refused' : us(get(p, op)?.p50_us));
/** Round trips each op makes (its PKCS#11 calls); the floor it can reach is that many 64-byte echoes (a 64 KiB one for the bulk call). */
const TRIPS: Record<OpName, number> = { 'session-info': 1, random32: 1, 'sha256-1k': 2, 'rsa2048-sign': 2, 'ecdsa-p256-sign': 2,
  'aes-cbc-pad-64k': 2, 'aes-ecb-64k': 2, 'find-label': 3, 'rsa2048-keygen': 3 };
const floorFor = (op: OpName) => (op.includes('64k') ? floor64k + (TRIPS[op] - 1) * floor64 : TRIPS[op] * floor64);
const SHOWN = ['direct-c', 'direct-node', 'bridge-c', 'bridge-ts', 'p11kit'] as const;
/** Each remote path against its own kind of direct call: C against C, Node against Node. */
const directOf = { 'bridge-c': 'direct-c', p11kit: 'direct-c', 'bridge-ts': 'direct-node' } as const;

const lines: string[] = [];
const row = (cells: string[], widths: number[]) => '  ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[0]!) : c.padStart(widths[i]!))).join('');
lines.push(`p11bridge bench${quick ? ' (--quick)' : ''}: SoftHSM2, socat pty pairs, ${ROUNDS} round(s), ~${BUDGET_MS} ms per op per path; medians over rounds`);
lines.push(`  link floor (C echo over a pty pair): 64 B ${us(floor64)} µs, 64 KiB ${us(floor64k)} µs (p50)`);
lines.push('');
lines.push('  p50 latency, µs');
const w1 = [16, 12, 12, 12, 12, 12, 10];
lines.push(row(['op', ...SHOWN, 'floor'], w1));
for (const op of OPS) lines.push(row([op, ...SHOWN.map((p) => cell(p, op)), us(floorFor(op))], w1));
lines.push('');
lines.push('  ratios of p50 (lower is better): to direct (C for C paths, Node for bridge-ts), to p11-kit, to the floor');
const w2 = [16, 11, 11, 11, 11, 11, 11, 11];
lines.push(row(['op', 'bc/direct', 'ts/direct', 'kit/direct', 'bc/kit', 'ts/kit', 'bc/floor', 'ts/floor'], w2));
for (const op of OPS) {
  const p50 = (p: PathName) => (get(p, op)?.error ? undefined : get(p, op)?.p50_us);
  lines.push(row([op, ratio(p50('bridge-c'), p50('direct-c')), ratio(p50('bridge-ts'), p50('direct-node')), ratio(p50('p11kit'), p50('direct-c')),
    get('p11kit', op)?.error ? 'kit refuses' : ratio(p50('bridge-c'), p50('p11kit')), get('p11kit', op)?.error ? 'kit refuses' : ratio(p50('bridge-ts'), p50('p11kit')),
    ratio(p50('bridge-c'), floorFor(op)), ratio(p50('bridge-ts'), floorFor(op))], w2));
}
lines.push('');
lines.push('  ops/s, p99 µs, and ops/s as a share of direct');
const w3 = [16, ...SHOWN.map(() => 22)];
lines.push(row(['op', ...SHOWN], w3));
for (const op of OPS) {
  lines.push(row([op, ...SHOWN.map((p) => {
    const r = get(p, op);
    if (!r || r.error) return r?.error ? 'refused' : '—';
    const d = p in directOf ? get(directOf[p as keyof typeof directOf], op)?.ops_s : undefined;
    return `${Math.round(r.ops_s!)}/s ${us(r.p99_us)}${d ? ` ${(r.ops_s! / d).toFixed(2)}x` : ''}`;
  })], w3));
}
lines.push('');
lines.push('  bytes on the line per op (both directions, counted on the pty pair)');
lines.push(row(['op', 'p11bridge', 'p11-kit', 'ratio'], [16, 12, 12, 10]));
for (const op of OPS.filter((o) => o !== 'rsa2048-keygen')) {
  const b = bytesPerOp['bridge-c'][op];
  const k = bytesPerOp.p11kit[op];
  lines.push(row([op, String(b ?? '—'), typeof k === 'number' ? String(k) : 'refused', typeof b === 'number' && typeof k === 'number' ? (b / k).toFixed(2) : '—'], [16, 12, 12, 10]));
}
lines.push('');
lines.push(`  aggregate ops/s, one C app per port: ${Object.entries(aggregate).map(([op, v]) => `${op} ${Object.entries(v).map(([k, n]) => `${k} ${n}`).join(', ')}`).join('; ')}`);
lines.push(`  direct, two processes at once: ${Object.entries(directAgg).map(([op, n]) => `${op} ${n}`).join(', ')} ops/s`);
console.log(lines.join('\n'));

mkdirSync(join(packageRoot(), '.tmp'), { recursive: true });
const json = {
  quick, rounds: ROUNDS, budgetMs: BUDGET_MS,
  floor: { echo64_us: floor64, echo64k_us: floor64k },
  paths: Object.fromEntries(PATHS.map((p) => [p, Object.fromEntries(sums[p])])),
  perRound: rounds, bytesPerOp, aggregate, directAggregate: directAgg,
};
writeFileSync(join(packageRoot(), '.tmp', 'bench.json'), JSON.stringify(json, null, 2));
