// The daemon side of a serial device (a UART, or a pty in tests): opened in
// raw 8N1 mode with echo off (serialport's binding clears ICANON, ECHO, OPOST
// and IXON itself), so a freshly booted tty in cooked mode with echo on is
// put right at open. The daemon holds it, locked, for its whole life.
import { SerialPort } from 'serialport';
import './poller-fix.js';

export interface ByteLink {
  readonly path: string;
  write(bytes: Buffer): Promise<void>;
  onData(listener: (chunk: Buffer) => void): void;
  onClose(listener: (err?: Error) => void): void;
  /** Stops taking bytes off the line (the peer's writes then block), until resume(). */
  pause(): void;
  resume(): void;
  /** Discards what the device still holds in both directions (a line that takes nothing). */
  discard(): Promise<void>;
  close(): Promise<void>;
}

export interface SerialOptions {
  baudRate?: number;
  /** flock(LOCK_EX) the device while open, so two daemons cannot share a port. */
  lock?: boolean;
}

export async function openSerial(path: string, opts: SerialOptions = {}): Promise<ByteLink> {
  const port = new SerialPort({
    path,
    baudRate: opts.baudRate ?? 115200,
    dataBits: 8,
    parity: 'none',
    stopBits: 1,
    rtscts: false,
    xon: false,
    xoff: false,
    hupcl: false,
    lock: opts.lock ?? true,
    autoOpen: false,
  });
  await new Promise<void>((resolve, reject) => port.open((err) => (err ? reject(openError(path, err)) : resolve())));
  // Bytes a cooked tty buffered before we switched it to raw are stale noise.
  await new Promise<void>((resolve) => port.flush(() => resolve()));
  // Errors reach the write callbacks and onClose; a stream 'error' event with
  // no listener (a write cancelled by close) would end the process.
  port.on('error', () => {});
  let closing = false;
  return {
    path,
    write: (bytes) =>
      new Promise<void>((resolve, reject) => {
        port.write(bytes, (err) => (err ? reject(err) : resolve()));
      }),
    onData: (listener) => port.on('data', listener),
    pause: () => void port.pause(),
    resume: () => void port.resume(),
    discard: () => new Promise<void>((resolve) => port.flush(() => resolve())),
    onClose: (listener) => port.on('close', (err?: Error) => { if (!closing) listener(err); }),
    close: () =>
      new Promise<void>((resolve) => {
        closing = true;
        if (!port.isOpen) return resolve();
        port.close(() => resolve());
      }),
  };
}

function openError(path: string, err: Error): Error {
  const msg = err.message;
  if (/ENOENT|No such file/i.test(msg)) return new Error(`serial port ${path} does not exist`);
  if (/lock/i.test(msg)) return new Error(`serial port ${path} is in use by another process (${msg})`);
  if (/EACCES|Permission/i.test(msg)) return new Error(`no permission to open serial port ${path}`);
  return new Error(`cannot open serial port ${path}: ${msg}`);
}
