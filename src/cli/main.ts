#!/usr/bin/env node
// p11bridge command line: `serve` runs the trusted VM's daemon; `probe` asks a
// running daemon through a port what it serves (a guest-side check).
import { existsSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { createLogger } from '../log.js';
import { Daemon } from '../server/daemon.js';
import { DEFAULT_MAX_PAYLOAD } from '../protocol/frame.js';
import { Pkcs11Client } from '../client/client.js';
import { VERSION } from '../version.js';

const DEFAULT_PORTS = ['/dev/ttyS4', '/dev/ttyS5', '/dev/ttyS6', '/dev/ttyS7', '/dev/ttyS8', '/dev/ttyS9'];

const positiveInt = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError(`expected a positive integer, got '${v}'`);
  return n;
};
const positiveNumber = (v: string): number => {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`expected a positive number, got '${v}'`);
  return n;
};
const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

const program = new Command('p11bridge').version(VERSION).description('PKCS#11 over serial lines between VMs');

program
  .command('serve')
  .description("serve a PKCS#11 module to guest VMs on serial ports")
  .requiredOption('--module <path>', 'PKCS#11 module (.so) to serve, e.g. /usr/lib/softhsm/libsofthsm2.so')
  .option('--port <device>', 'serial port to serve (repeatable); default: those of /dev/ttyS4../dev/ttyS9 that exist', collect)
  .option('--max-payload <bytes>', 'largest message payload accepted', positiveInt, DEFAULT_MAX_PAYLOAD)
  .option('--executor <path>', 'p11bridge-exec binary (default: native/build/p11bridge-exec of this package)')
  .option('--lease <seconds>', 'close a connection silent this long (app killed, VM rebooted)', positiveNumber, 600)
  .option('--max-call <seconds>', 'terminate a module instance whose call runs this long', positiveNumber, 600)
  .option('--log-level <level>', 'pino log level', process.env.P11BRIDGE_LOG_LEVEL ?? 'info')
  .action(async (o: { module: string; port?: string[]; maxPayload: number; executor?: string; logLevel: string; lease: number; maxCall: number }) => {
    const log = createLogger(o.logLevel);
    if (!existsSync(o.module)) fail(`PKCS#11 module ${o.module} does not exist`);
    const ports = o.port ?? DEFAULT_PORTS.filter((p) => existsSync(p));
    let daemon: Daemon;
    try {
      daemon = await Daemon.start({
        module: o.module, ports, maxPayload: o.maxPayload, executor: o.executor, log,
        leaseMs: o.lease * 1000, maxCallMs: o.maxCall * 1000,
      });
    } catch (e) {
      fail((e as Error).message);
    }
    const info = daemon.module.info;
    log.info({ ports, module: o.module, functions: daemon.module.functions.length, manufacturer: String(info[1] ?? '').trim() }, 'serving');
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'stopping');
      daemon.stop().then(
        () => {
          log.info('stopped');
          process.exit(0);
        },
        (err: Error) => {
          log.error({ err: err.message }, 'stop failed');
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });

program
  .command('probe')
  .description('connect to a daemon through a port and print what it serves')
  .option('--port <device>', 'serial port (default: $TEC_COMM_PORT)')
  .option('--timeout <ms>', 'silence timeout', positiveInt, 5000)
  .action(async (o: { port?: string; timeout: number }) => {
    try {
      const client = await Pkcs11Client.connect({ port: o.port, timeoutMs: o.timeout });
      console.log(JSON.stringify(client.serverInfo, null, 2));
      await client.close();
    } catch (e) {
      fail((e as Error).message);
    }
  });

function fail(message: string): never {
  process.stderr.write(`p11bridge: ${message}\n`);
  process.exit(1);
}

await program.parseAsync(process.argv);
