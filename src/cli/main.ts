#!/usr/bin/env node
// p11bridge command line: `serve` runs the trusted VM's daemon; `probe` asks a
// running daemon through a port what it serves (a guest-side check).
import { existsSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import { createLogger } from '../log.js';
import { ConfigError, loadConfig, type DaemonConfig } from '../server/config.js';
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

interface ServeOptions {
  config?: string;
  module?: string;
  port?: string[];
  maxPayload: number;
  executor?: string;
  logLevel: string;
  lease: number;
  maxCall: number;
  initToken?: boolean;
}

program
  .command('serve')
  .description("serve a PKCS#11 module to guest VMs on serial ports")
  .option('--config <file>', 'JSON config file (module, ports with their policies, limits); options given here override it')
  .option('--module <path>', 'PKCS#11 module (.so) to serve, e.g. /usr/lib/softhsm/libsofthsm2.so (required here or in the config)')
  .option('--port <device>', "serial port to serve (repeatable); default: the config's ports, else those of /dev/ttyS4../dev/ttyS9 that exist", collect)
  .option('--max-payload <bytes>', 'largest message payload accepted', positiveInt, DEFAULT_MAX_PAYLOAD)
  .option('--executor <path>', 'p11bridge-exec binary (default: native/build/p11bridge-exec of this package)')
  .option('--lease <seconds>', 'close a connection silent this long (app killed, VM rebooted)', positiveNumber, 600)
  .option('--max-call <seconds>', 'terminate a module instance whose call runs this long', positiveNumber, 600)
  .option('--init-token', 'let ports not in the config initialize tokens (C_InitToken); off by default')
  .option('--log-level <level>', 'pino log level', process.env.P11BRIDGE_LOG_LEVEL ?? 'info')
  .action(async (o: ServeOptions, cmd: Command) => {
    let config: DaemonConfig | undefined;
    if (o.config !== undefined) {
      try {
        config = loadConfig(o.config);
      } catch (e) {
        fail(e instanceof ConfigError ? e.message : `config ${o.config}: ${(e as Error).message}`);
      }
    }
    // The command line (and P11BRIDGE_LOG_LEVEL) overrides the config, which overrides the defaults.
    const given = (key: keyof ServeOptions): boolean => cmd.getOptionValueSource(key) === 'cli';
    const logLevel = given('logLevel') || process.env.P11BRIDGE_LOG_LEVEL ? o.logLevel : config?.logLevel ?? o.logLevel;
    const log = createLogger(logLevel);
    const module = o.module ?? config?.module;
    if (module === undefined) fail('no PKCS#11 module: give --module <path> or "module" in a --config file');
    if (!existsSync(module)) {
      fail(o.module === undefined ? `config ${config!.file}: module: ${module} does not exist` : `PKCS#11 module ${module} does not exist`);
    }
    const configPorts = config?.ports.map((p) => p.path) ?? [];
    const ports = o.port ?? (configPorts.length > 0 ? configPorts : DEFAULT_PORTS.filter((p) => existsSync(p)));
    const policies = new Map(config?.ports.map((p) => [p.path, p.policy]) ?? []);
    if (o.initToken) for (const p of ports) if (!policies.has(p)) policies.set(p, { readOnly: false, initToken: true });
    if (config) {
      for (const p of ports) if (!policies.has(p)) log.warn({ port: p, config: config.file }, 'port not in the config: served without policy');
      for (const p of configPorts) if (!ports.includes(p)) log.warn({ port: p, config: config.file }, 'port of the config not served (--port names the ports to serve)');
    }
    const maxPayload = given('maxPayload') ? o.maxPayload : config?.maxPayload ?? o.maxPayload;
    const lease = given('lease') ? o.lease : config?.leaseSeconds ?? o.lease;
    const maxCall = given('maxCall') ? o.maxCall : config?.maxCallSeconds ?? o.maxCall;
    let daemon: Daemon;
    try {
      daemon = await Daemon.start({
        module, ports, maxPayload, executor: o.executor ?? config?.executor, log,
        leaseMs: lease * 1000, maxCallMs: maxCall * 1000,
        limits: config?.limits,
        policies,
      });
    } catch (e) {
      fail((e as Error).message);
    }
    const info = daemon.module.info;
    log.info({ ports, module, config: config?.file, functions: daemon.module.functions.length, manufacturer: String(info[1] ?? '').trim() }, 'serving');
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
  process.stderr.write(message.split('\n').map((line) => `p11bridge: ${line}\n`).join(''));
  process.exit(1);
}

await program.parseAsync(process.argv);
