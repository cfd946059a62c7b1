// Starts `p11bridge serve` as a child process (the trusted VM's side) for the
// demo and the benchmarks, and waits until it serves.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { packageRoot } from '../paths.js';

export interface DaemonProcess {
  proc: ChildProcess;
  output(): string;
  stop(): Promise<number | null>;
}

/** Waits for the 'serving' line, which pino writes at level info: do not raise the level above it. */
export async function spawnDaemon(opts: { module: string; ports: string[]; env?: NodeJS.ProcessEnv; logLevel?: 'info' | 'debug' | 'trace' }): Promise<DaemonProcess> {
  const cli = join(packageRoot(), 'dist', 'src', 'cli', 'main.js');
  const args = [cli, 'serve', '--module', opts.module, ...opts.ports.flatMap((p) => ['--port', p]), '--log-level', opts.logLevel ?? 'info'];
  const proc = spawn(process.execPath, args, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon did not start within 15 s:\n${out}`)), 15_000);
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.includes('"msg":"serving"')) {
        clearTimeout(timer);
        resolve();
      }
    };
    proc.stdout!.on('data', onData);
    proc.stderr!.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`daemon exited with code ${code}:\n${out}`));
    });
  });
  return {
    proc,
    output: () => out,
    stop: async () => {
      if (proc.exitCode === null) proc.kill('SIGTERM');
      return exited;
    },
  };
}
