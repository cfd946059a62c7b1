// Works around a bug in @serialport/bindings-cpp's Poller (13.x): its native
// poll() restarts the uv_poll handle with only the event just asked for, so
// a write waiting for "writable" loses that wait when a read asks for
// "readable" (and the other way round) until some unrelated event re-arms
// it. On a port that is read and written at once -- the daemon answering
// while a client's retry arrives, a relay, a sender of bulk data reading the
// answers -- a write could then stall until more bytes came in. Here every
// poll asks for all the events someone is still waiting for.
import { createRequire } from 'node:module';

interface PollerProto {
  poll(flag?: number): void;
  listenerCount(event: string): number;
  poller: { poll(flag: number): void };
  __p11bridgeFixed?: boolean;
}

const READABLE = 0b0001, WRITABLE = 0b0010, DISCONNECT = 0b0100;

export function fixSerialPoller(): void {
  let proto: PollerProto | undefined;
  try {
    const req = createRequire(import.meta.url);
    const mod = req(req.resolve('@serialport/bindings-cpp').replace(/index\.js$/, 'poller.js')) as { Poller?: { prototype: PollerProto } };
    proto = mod.Poller?.prototype;
  } catch {
    return; // a layout we do not know: leave it alone
  }
  if (!proto || proto.__p11bridgeFixed || typeof proto.poll !== 'function') return;
  proto.__p11bridgeFixed = true;
  proto.poll = function (this: PollerProto, flag = 0) {
    let events = flag;
    if (this.listenerCount('readable') > 0) events |= READABLE;
    if (this.listenerCount('writable') > 0) events |= WRITABLE;
    if (this.listenerCount('disconnect') > 0) events |= DISCONNECT;
    this.poller.poll(events);
  };
}

fixSerialPoller();
