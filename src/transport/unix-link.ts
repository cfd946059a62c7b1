// Unix sockets as links: `p11bridge serve --port unix:/run/p11bridge.sock`
// serves every connection to the socket as a port of its own, and a guest
// app connects with `port: 'unix:/run/p11bridge.sock'`. For a trusted VM's
// local apps, tests without ptys, and transports (vsock relays, SSH
// forwards) that end in a socket. Who may connect is the socket file's
// permissions.
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { GuestLink, Link } from './link.js';

function socketLink(address: string, socket: Socket): Link {
  const closeListeners: Array<(err?: Error) => void> = [];
  let closing = false;
  socket.on('error', () => {}); // the 'close' that follows tells the listeners
  socket.on('close', (hadError) => {
    if (!closing) for (const l of closeListeners) l(hadError ? new Error('socket error') : undefined);
  });
  return {
    address,
    write: (bytes) => new Promise<void>((resolve, reject) => socket.write(bytes, (err) => (err ? reject(err) : resolve()))),
    onData: (listener) => void socket.on('data', listener),
    onClose: (listener) => void closeListeners.push(listener),
    pause: () => void socket.pause(),
    resume: () => void socket.resume(),
    // a socket's buffers cannot be emptied: a peer that takes nothing is cut off
    discard: async () => void socket.destroy(),
    close: async () => {
      closing = true;
      socket.destroy();
    },
  };
}

export interface UnixListener {
  readonly address: string;
  close(): Promise<void>;
}

/** Listens on a unix socket; every connection becomes a Link, handed to onLink. */
export async function listenUnix(path: string, onLink: (link: Link) => void): Promise<UnixListener> {
  // a socket file left by a daemon that died is in the way; anything else is not ours to remove
  if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
  const address = `unix:${path}`;
  let n = 0;
  const server: Server = createServer((socket) => onLink(socketLink(`${address}#${++n}`, socket)));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    address,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** A guest's connection to a unix socket: its own stream, so the lock is only the in-process one. */
export class UnixGuestLink implements GuestLink {
  private socket: Socket | undefined;
  private listener: ((chunk: Buffer) => void) | undefined;

  constructor(readonly address: string, private readonly path: string) {}

  async lock(deadline: number): Promise<void> {
    if (this.socket && !this.socket.destroyed) return;
    const socket = createConnection(this.path);
    socket.on('data', (chunk) => this.listener?.(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      if (this.socket === socket) this.socket = undefined;
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`cannot connect to ${this.address}: no answer`)), Math.max(0, deadline - Date.now()));
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`cannot connect to ${this.address}: ${err.message}`));
      });
    });
    this.socket = socket;
  }

  unlock(): void {}

  write(bytes: Buffer): Promise<void> {
    const s = this.socket;
    if (!s) return Promise.reject(new Error(`${this.address} is not connected`));
    return new Promise((resolve, reject) => s.write(bytes, (err) => (err ? reject(err) : resolve())));
  }

  setListener(listener: ((chunk: Buffer) => void) | undefined): void {
    this.listener = listener;
  }

  async close(): Promise<void> {
    this.socket?.destroy();
    this.socket = undefined;
  }
}
