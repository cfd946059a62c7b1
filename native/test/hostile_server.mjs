// hostile_server.mjs: a p11bridge "server" that answers with malformed,
// oversize and misdirected frames, for test_module's hostile mode (driven
// by module_smoke.mjs). It speaks on one end of a pty pair.
import { encodeFrame, FrameType } from '../../dist/src/protocol/frame.js';
import { Deframer } from '../../dist/src/protocol/deframer.js';
import { pack, unpack } from '../../dist/src/protocol/msgpack.js';
import { SUPPORTED_VERSIONS } from '../../dist/src/protocol/handshake.js';
import { openTty } from '../../dist/src/transport/tty-link.js';

const CONN = 0x4d;
const INFO = [[2, 40], Buffer.from('Hostile'.padEnd(32)), 0, Buffer.from('Not a module'.padEnd(32)), [0, 1]];
const res = (req, payload) => encodeFrame(FrameType.Result, CONN, req, payload);
const ok = (req, ...results) => res(req, pack([0, ...results]));
const badCrc = (req) => {
  const f = Buffer.from(ok(req, INFO));
  const i = f.length - 3; // inside the CRC (COBS-encoded: non-zero)
  f[i] = f[i] === 0x55 ? 0x56 : f[i] ^ 0x55;
  return f;
};
// one entry per CALL after C_Initialize, in test_module's order
const script = [
  (q) => [res(q, Buffer.from([0xc1]))],
  (q) => [ok(q, [1, 2])],
  (q) => [badCrc(q)],
  (q) => [ok(q, Buffer.alloc(32, 7))],
  (q) => [ok(q, [1, 2, 3])],
  (q) => [res(q, Buffer.from([0x92, 0x00, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]))],
  (q) => [ok(q, Buffer.alloc(5, 1))],
  (q) => [ok(q, [Buffer.alloc(100, 0x41)])],
  (q) => [ok(q, [true, 1])],
  (q) => [ok(q, [1, 2, 3])],
  (q) => [encodeFrame(FrameType.Error, CONN, q, pack({ rv: 50, message: 'unknown connection (test)' }))],
  (q) => [Buffer.from('garbage\x00\x01\x02\x03\x00'), encodeFrame(FrameType.Call, CONN, q, pack([3])), ok(q, INFO)],
  (q) => [res(q, Buffer.from([0x92, 0xff, 0x90]))],
  (q) => [encodeFrame(FrameType.Result, CONN + 1, q, pack([0, [[9, 9]]])), ok(q, INFO)],
  (q) => [Buffer.concat([Buffer.from([0]), Buffer.alloc(1_200_000, 0x01)]), ok(q, INFO)],
  (q) => 'busy',
];

const link = await openTty(process.argv[2]);
let step = 0;
const send = (b) => link.write(b);
// like a real server: a repeated request id (the module resends when an
// answer does not come) is answered from the copy of the last answer, or
// not at all while the first is still being "run"
let lastReq = -1;
let lastOut = null;
const deframer = new Deframer(1 << 20, {
  frame: async (f) => {
    if (f.type & 0x80) return;
    if (f.type === FrameType.Hello) {
      const { nonce } = unpack(f.payload);
      return send(encodeFrame(FrameType.HelloOk, CONN, f.req, pack({
        version: SUPPORTED_VERSIONS[1], maxPayload: 1 << 20, server: 'hostile/0', nonce, key: 0x1234567, module: { info: INFO, functions: Array.from({ length: 68 }, (_, i) => i + 1) },
      })));
    }
    if (f.type === FrameType.Bye) return send(encodeFrame(FrameType.ByeOk, CONN, f.req));
    if (f.type !== FrameType.Call) return;
    if (f.req === lastReq) {
      if (lastOut) for (const b of lastOut) await send(b);
      return;
    }
    lastReq = f.req;
    lastOut = null;
    const id = f.payload[1];
    const answer = (frames) => { lastOut = frames; return Promise.all(frames.map(send)); };
    if (id === 1 || id === 2) return answer([ok(f.req)]); // C_Initialize / C_Finalize
    if (id === 68) return answer([res(f.req, pack([8]))]); // C_WaitForSlotEvent: CKR_NO_EVENT
    const s = script[step++];
    if (!s) return answer([ok(f.req, INFO)]);
    const out = s(f.req);
    if (out === 'busy') {
      // longer than the client's silence timeout, kept alive by BUSY
      for (let i = 0; i < 4; i++) {
        await new Promise((r) => setTimeout(r, 200));
        await send(encodeFrame(FrameType.Busy, CONN, f.req));
      }
      return answer([ok(f.req, INFO)]);
    }
    lastOut = out;
    for (const b of out) await send(b);
  },
  drop: () => {},
  oversize: () => {},
});
link.onData((c) => deframer.push(c));
process.stdout.write('hostile server ready\n');
