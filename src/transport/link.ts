// The seam between the protocol and whatever carries its bytes. The daemon
// serves Links (a serial line, a unix socket connection, an in-memory pair
// in tests); a guest talks through a GuestLink. An address says which: a
// device path (/dev/ttyS4) is a serial line, `unix:/run/p11bridge.sock` a
// unix socket.

/** A byte stream the daemon serves: one port. */
export interface Link {
  /** The address it was opened for, e.g. /dev/ttyS4 (policies and logs key on it). */
  readonly address: string;
  /** Resolves once the bytes are on their way (written whole, in order). */
  write(bytes: Buffer): Promise<void>;
  onData(listener: (chunk: Buffer) => void): void;
  /** The link ended without close(): the peer hung up, the device went away. */
  onClose(listener: (err?: Error) => void): void;
  /** Stops taking bytes off the link (the peer's writes then block), until resume(). */
  pause(): void;
  resume(): void;
  /** Drops what is still queued in both directions (a line that takes nothing). */
  discard(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A guest's end of a link. Several processes may share one serial port, so a
 * round trip holds the link's lock, and the link is read only while locked.
 */
export interface GuestLink {
  readonly address: string;
  /** Takes the lock (polling until `deadline`, ms since the epoch) and starts delivering data. */
  lock(deadline: number): Promise<void>;
  /** Stops delivering data and releases the lock. */
  unlock(): void;
  write(bytes: Buffer): Promise<void>;
  /** Where the data goes while locked. */
  setListener(listener: ((chunk: Buffer) => void) | undefined): void;
  /** Gives up the device (after a failed round trip: nothing of it may reach the next lock holder). */
  close(): Promise<void>;
}

export type Address = { kind: 'tty'; path: string } | { kind: 'unix'; path: string };

/** `unix:/path` is a unix socket; anything else is a device path. */
export function parseAddress(address: string): Address {
  if (address.startsWith('unix:')) {
    const path = address.slice(5);
    if (!path.startsWith('/')) throw new Error(`unix socket address ${address}: expected unix:/absolute/path`);
    return { kind: 'unix', path };
  }
  return { kind: 'tty', path: address };
}
