// Regenerates proto/golden/vectors.json from golden-meanings.ts:
// `npm run golden`. Run it only when the protocol changes on purpose.
import { writeFileSync } from 'node:fs';
import { encodeCall, encodeResult } from '../../src/protocol/codec.js';
import { encodeFrame } from '../../src/protocol/frame.js';
import { pack } from '../../src/protocol/msgpack.js';
import { callByName } from '../../src/protocol/table.js';
import { toJson } from './golden-json.js';
import { MEANINGS } from './golden-meanings.js';

const vectors = MEANINGS.map((m) => {
  let payload: Buffer | undefined;
  if (m.payload !== undefined) {
    // Requests and results go through the checked codec, so a vector can never
    // show a payload the table does not allow.
    if (m.call && m.direction === 'request') payload = encodeCall(callByName(m.call), (m.payload as unknown[]).slice(1));
    else if (m.call) {
      const [rv, ...results] = m.payload as [number, ...unknown[]];
      payload = encodeResult(callByName(m.call), rv, results);
    } else payload = pack(m.payload);
  }
  return { name: m.name, call: m.call, direction: m.direction, frame: m.frame, payload: toJson(m.payload), hex: encodeFrame(m.frame.type, m.frame.conn, m.frame.req, payload).toString('hex') };
});
const out = new URL('../../proto/golden/vectors.json', import.meta.url);
writeFileSync(out, JSON.stringify({
  $comment: 'p11bridge golden frames. hex is the frame as it appears on the line (0x00 | COBS(header | payload | CRC-32) | 0x00); payload is the decoded MessagePack value in JSON, with bin as {"$bin": hex} and integers beyond 2^53 as {"$u64": decimal}. See PROTOCOL.md section 10.',
  vectors,
}, null, 1) + '\n');
console.log(`wrote ${vectors.length} vectors`);
