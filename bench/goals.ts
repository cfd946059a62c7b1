// The performance goals (issue 13), checked against the figures of this run
// (.tmp/bench.json and .tmp/bench-isolation.json): each one met, or the
// distance to it. Printed, never asserted: a bench is not a test.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeFrame, FrameType } from '../src/protocol/frame.js';
import { packageRoot } from '../src/paths.js';

interface Fig { p50_us?: number; ops_s?: number; error?: string }
interface Run {
  floor: { echo64_us: number; echo64k_us: number };
  paths: Record<string, Record<string, Fig>>;
  bytesPerOp: Record<'bridge-c' | 'p11kit', Record<string, number | string>>;
}
interface Isolation { memory: Array<{ apps: number; daemonMiB: number; executorsMiB: number; perAppMiB: number }> }

const tmp = join(packageRoot(), '.tmp');
const run = JSON.parse(readFileSync(join(tmp, 'bench.json'), 'utf8')) as Run;
const iso = JSON.parse(readFileSync(join(tmp, 'bench-isolation.json'), 'utf8')) as Isolation;
const p = (path: string, op: string) => run.paths[path]?.[op];
const { echo64_us: floor64, echo64k_us: floor64k } = run.floor;

const out: string[] = [];
const goal = (met: boolean, what: string, measured: string) => out.push(`  ${met ? 'met   ' : 'MISSED'} ${what}: ${measured}`);

// 1. libp11bridge.so at least as fast as p11-kit, op by op
const ops = Object.keys(run.paths['bridge-c'] ?? {});
const slower = ops.filter((op) => {
  const b = p('bridge-c', op)?.p50_us;
  const k = p('p11kit', op);
  return b !== undefined && k?.p50_us !== undefined && b > k.p50_us;
});
goal(slower.length === 0, 'libp11bridge.so as fast as p11-kit on every op',
  slower.length ? `slower on ${slower.map((op) => `${op} (${(p('bridge-c', op)!.p50_us! / p('p11kit', op)!.p50_us!).toFixed(2)}x)`).join(', ')}` : `on all ${ops.length}`);
const si = (path: string) => (p(path, 'session-info')?.p50_us ?? NaN) / floor64;
goal(si('bridge-c') <= 1.3, 'no-crypto round trip through libp11bridge.so within 1.3x of the 64-byte C echo', `${si('bridge-c').toFixed(2)}x`);
goal(si('bridge-ts') <= 1.6, 'no-crypto round trip through the TypeScript client within 1.6x of that floor', `${si('bridge-ts').toFixed(2)}x`);
const rsa = (path: string, direct: string) => (p(path, 'rsa2048-sign')?.ops_s ?? NaN) / (p(direct, 'rsa2048-sign')?.ops_s ?? NaN);
goal(rsa('bridge-c', 'direct-c') >= 0.7 && rsa('bridge-ts', 'direct-node') >= 0.7, 'RSA-2048 signing at 0.7x of direct ops/s or better',
  `libp11bridge.so ${rsa('bridge-c', 'direct-c').toFixed(2)}x, TypeScript ${rsa('bridge-ts', 'direct-node').toFixed(2)}x`);
// a 64 KiB AES op is two calls (Init, then the 64 KiB one): its floor is one 64-byte and one 64 KiB echo
const aesFloor = floor64k + floor64;
const aes = ['aes-ecb-64k', 'aes-cbc-pad-64k'].flatMap((op) => ['bridge-c', 'bridge-ts'].map((path) => ({ op, path, r: (p(path, op)?.p50_us ?? NaN) / aesFloor })));
goal(aes.every((a) => a.r <= 1.3), '64 KiB AES within 1.3x of the 64 KiB echo floor (plus one 64-byte echo for its Init)',
  aes.map((a) => `${a.path} ${a.op} ${Number.isNaN(a.r) ? 'n/a' : `${a.r.toFixed(2)}x`}`).join(', '));
const more = Object.keys(run.bytesPerOp['bridge-c']).filter((op) => {
  const b = run.bytesPerOp['bridge-c'][op];
  const k = run.bytesPerOp.p11kit[op];
  return typeof b === 'number' && typeof k === 'number' && b >= k;
});
goal(more.length === 0, 'fewer bytes on the line than p11-kit for every op',
  more.length ? `more on ${more.join(', ')}` : Object.keys(run.bytesPerOp['bridge-c']).map((op) => `${op} ${run.bytesPerOp['bridge-c'][op]} vs ${run.bytesPerOp.p11kit[op]}`).join(', '));
// framing and header: what a frame with an empty payload takes on the line
const request = encodeFrame(FrameType.Call, 1, 1, Buffer.alloc(0), 0x12345678).length;
const answer = encodeFrame(FrameType.Result, 1, 1, Buffer.alloc(0)).length;
goal(Math.max(request, answer) < 16, 'framing plus header under 16 bytes per message', `request ${request} B, answer ${answer} B (COBS adds 1 byte per 254 of payload)`);
const byApps = (n: number) => iso.memory.find((m) => m.apps === n);
const one = byApps(1);
const six = byApps(6);
const perApp = six && one ? (six.daemonMiB + six.executorsMiB - one.daemonMiB - one.executorsMiB) / 5 : NaN;
goal(perApp < 10, 'under 10 MiB PSS per additional connected app', `${perApp.toFixed(1)} MiB`);
const total6 = six ? six.daemonMiB + six.executorsMiB : NaN;
goal(total6 < 100, 'under 100 MiB in all for 6 ports with one app each', `${total6.toFixed(1)} MiB (daemon ${six?.daemonMiB.toFixed(1)}, executors ${six?.executorsMiB.toFixed(1)})`);

console.log(['', 'goals (issue 13), from this run:', ...out].join('\n'));
