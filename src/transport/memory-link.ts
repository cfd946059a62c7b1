// Two links joined in memory, for unit tests of the client and the daemon
// without ptys or socat: what one side writes arrives at the other on a later
// turn of the event loop, in order.
import type { GuestLink, Link } from './link.js';

export function memoryLinkPair(address = 'memory:0'): { server: Link; guest: GuestLink } {
  let toServer: ((chunk: Buffer) => void)[] = [];
  let guestListener: ((chunk: Buffer) => void) | undefined;
  let serverPaused = false;
  const held: Buffer[] = [];
  const deliver = (chunk: Buffer) => {
    if (serverPaused) held.push(chunk);
    else for (const l of toServer) l(chunk);
  };
  const server: Link = {
    address,
    write: async (bytes) => {
      const copy = Buffer.from(bytes);
      setImmediate(() => guestListener?.(copy));
    },
    onData: (l) => void toServer.push(l),
    onClose: () => {},
    pause: () => void (serverPaused = true),
    resume: () => {
      serverPaused = false;
      for (const c of held.splice(0)) deliver(c);
    },
    discard: async () => void held.splice(0),
    close: async () => void (toServer = []),
  };
  const guest: GuestLink = {
    address,
    lock: async () => {},
    unlock: () => {},
    write: async (bytes) => {
      const copy = Buffer.from(bytes);
      setImmediate(() => deliver(copy));
    },
    setListener: (l) => void (guestListener = l),
    close: async () => void (guestListener = undefined),
  };
  return { server, guest };
}
