// Regenerates proto/golden/vectors.json from golden-meanings.ts:
// `npm run golden`. Run it only when the protocol changes on purpose.
import { writeFileSync } from 'node:fs';
import { encodeCall, encodeResult, expectedResultBytes } from '../../src/protocol/codec.js';
import { encodeFrame } from '../../src/protocol/frame.js';
import { pack } from '../../src/protocol/msgpack.js';
import { callByName, LIMITS } from '../../src/protocol/table.js';
import { toJson } from './golden-json.js';
import { MEANINGS, REFUSALS } from './golden-meanings.js';

const vectors = MEANINGS.map((m) => {
  let payload: Buffer | undefined;
  let answerBytes: number | undefined;
  if (m.payload !== undefined) {
    // Requests and results go through the checked codec, so a vector can never
    // show a payload the table does not allow.
    if (m.call && m.direction === 'request') {
      const args = (m.payload as unknown[]).slice(1);
      payload = encodeCall(callByName(m.call), args);
      answerBytes = expectedResultBytes(callByName(m.call), args, LIMITS.defaultMaxPayload);
    } else if (m.call) {
      const [rv, ...results] = m.payload as [number, ...unknown[]];
      payload = encodeResult(callByName(m.call), rv, results);
    } else payload = pack(m.payload);
  }
  const hex = encodeFrame(m.frame.type, m.frame.conn, m.frame.req, payload, m.frame.key).toString('hex');
  return { name: m.name, call: m.call, direction: m.direction, frame: m.frame, payload: toJson(m.payload), ...(answerBytes !== undefined && { answerBytes }), hex };
});
const refusals = REFUSALS.map((r) => ({ name: r.name, expect: r.expect, payload: r.hex ?? pack(r.payload).toString('hex') }));
const out = new URL('../../proto/golden/vectors.json', import.meta.url);
writeFileSync(out, JSON.stringify({
  $comment: 'p11bridge golden frames. hex is the frame as it appears on the line (0x00 | COBS(header | payload | CRC-32) | 0x00); payload is the decoded MessagePack value in JSON, with bin as {"$bin": hex} and integers beyond 2^53 as {"$u64": decimal}; answerBytes is the size both clients expect the answer to a request to take (for the attempt timeout, payload limit 1 MiB). refusals are CALL payloads (hex) that every decoder of guest requests must refuse without calling the module: as malformed (ERROR CKR_ARGUMENTS_BAD), as an unknown call (ERROR CKR_FUNCTION_NOT_SUPPORTED), or as the call\'s RESULT with the rv named. See PROTOCOL.md section 10.',
  vectors,
  refusals,
}, null, 1) + '\n');
console.log(`wrote ${vectors.length} vectors and ${refusals.length} refusals`);
