// The per-port log limiter: a guest's flood of one message is bounded and
// never silences the port's other messages.
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { GuestLog } from '../../src/server/guest-log.js';

function capture() {
  const lines: Array<{ msg: string; suppressed?: Record<string, number> }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l));
      done();
    },
  });
  return { lines, log: pino({ level: 'info' }, stream) };
}
const tick = () => new Promise((r) => setImmediate(r));

describe('GuestLog', () => {
  it('10,000 lines of one message write a quarter of the rate; another message still gets through; the rest is summed up', async () => {
    const { lines, log } = capture();
    const g = new GuestLog(log, '/dev/ttyS4', 20);
    for (let i = 0; i < 10_000; i++) g.info({ req: i }, 'request refused');
    g.warn({}, 'output not draining');
    g.close();
    await tick();
    expect(lines.filter((l) => l.msg === 'request refused')).toHaveLength(5);
    expect(lines.filter((l) => l.msg === 'output not draining')).toHaveLength(1);
    const summary = lines.find((l) => l.msg === 'log lines over the rate limit suppressed');
    expect(summary?.suppressed).toEqual({ 'request refused': 9995 });
  });

  it('many different messages at once share the overall rate', async () => {
    const { lines, log } = capture();
    const g = new GuestLog(log, '/dev/ttyS4', 20);
    for (let i = 0; i < 1000; i++) g.info({}, `message ${i % 50}`);
    g.close();
    await tick();
    expect(lines.filter((l) => l.msg.startsWith('message '))).toHaveLength(20);
  });

  it('debug lines are not limited', async () => {
    const { lines, log } = capture();
    log.level = 'debug';
    const g = new GuestLog(log, '/dev/ttyS4', 20);
    for (let i = 0; i < 500; i++) g.debug({}, 'call');
    g.close();
    await tick();
    expect(lines.filter((l) => l.msg === 'call')).toHaveLength(500);
  });
});
