// The daemon's config file: what a valid one gives the daemon, and that every
// bad key or value is refused with a message naming its path.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, keyPath, loadConfig, parseConfig } from '../../src/server/config.js';
import { MECHANISM_TYPES } from '../../src/protocol/table.js';
import { DEFAULT_LIMITS } from '../../src/server/limits.js';

const FILE = '/etc/p11bridge/config.json';
const tmp = mkdtempSync(path.join(os.tmpdir(), 'p11b-config-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The problems parseConfig reports, without the "config <file>: " prefix. */
function problems(data: unknown): string[] {
  try {
    parseConfig(data, FILE);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    const err = e as ConfigError;
    expect(err.message).toBe(err.problems.map((p) => `config ${FILE}: ${p}`).join('\n'));
    return [...err.problems];
  }
  throw new Error('expected the config to be refused');
}

const port = (extra: Record<string, unknown> = {}) => ({ path: '/dev/ttyS4', ...extra });

describe('valid configs', () => {
  it('accepts an empty config (everything from the command line)', () => {
    expect(parseConfig({}, FILE)).toEqual({ file: FILE, ports: [], module: undefined, executor: undefined,
      maxPayload: undefined, leaseSeconds: undefined, maxCallSeconds: undefined, limits: {}, logLevel: undefined });
  });

  it('gives every port its policy; absent keys mean unrestricted', () => {
    const c = parseConfig({
      module: '/usr/lib/softhsm/libsofthsm2.so',
      ports: [
        { path: '/dev/ttyS4' },
        { path: '/dev/ttyS5', tokens: [{ label: 'first' }, { serial: 'f5c94f2a5219ba37' }, { label: 'x', serial: 'y' }], readOnly: true },
        { path: '/dev/ttyS6', mechanisms: ['CKM_AES_GCM', 0x40, '0x80000001', 'CKM_VENDOR_DEFINED'], readOnly: false },
      ],
      maxPayload: 65536, leaseSeconds: 1.5, maxCallSeconds: 30, limits: { maxConnectionsPerPort: 4, executorNetwork: true }, logLevel: 'debug', executor: '/opt/p11bridge-exec',
    }, FILE);
    expect(c.module).toBe('/usr/lib/softhsm/libsofthsm2.so');
    expect(c.ports.map((p) => p.path)).toEqual(['/dev/ttyS4', '/dev/ttyS5', '/dev/ttyS6']);
    expect(c.ports[0]!.policy).toEqual({ tokens: undefined, readOnly: false, initToken: false, mechanisms: undefined });
    expect(c.ports[1]!.policy).toEqual({
      tokens: [{ label: 'first' }, { serial: 'f5c94f2a5219ba37' }, { label: 'x', serial: 'y' }], readOnly: true, initToken: false, mechanisms: undefined,
    });
    expect(c.ports[2]!.policy.mechanisms).toEqual(new Set([4231n, 0x40n, 0x80000001n, 0x80000000n]));
    expect(c).toMatchObject({ maxPayload: 65536, leaseSeconds: 1.5, maxCallSeconds: 30, limits: { maxConnectionsPerPort: 4, executorNetwork: true }, logLevel: 'debug', executor: '/opt/p11bridge-exec' });
  });

  it('an empty allow-list allows no mechanism', () => {
    expect(parseConfig({ ports: [port({ mechanisms: [] })] }, FILE).ports[0]!.policy.mechanisms).toEqual(new Set());
  });

  it('takes relative module and executor paths from the config file\'s directory', () => {
    const c = parseConfig({ module: 'lib/module.so', executor: '../bin/exec' }, FILE);
    expect(c.module).toBe('/etc/p11bridge/lib/module.so');
    expect(c.executor).toBe('/etc/bin/exec');
  });

  it('the example config is valid', () => {
    const file = new URL('../../examples/p11bridge.config.json', import.meta.url).pathname;
    const c = loadConfig(file);
    expect(c.ports.length).toBeGreaterThan(1);
    expect(c.ports.some((p) => p.policy.readOnly)).toBe(true);
    expect(c.ports.some((p) => p.policy.mechanisms?.has(BigInt(MECHANISM_TYPES.get('CKM_AES_GCM')!)))).toBe(true);
  });
});

describe('bad keys and values, each named by its path', () => {
  it('wrong types', () => {
    expect(problems({ ports: [port(), port({ path: '/dev/ttyS5', readOnly: 'yes' })] })).toEqual(['ports[1].readOnly: expected boolean, received string']);
    expect(problems({ ports: {} })).toEqual(['ports: expected array, received object']);
    expect(problems({ module: 5 })).toEqual(['module: expected string, received number']);
    expect(problems({ ports: [port({ tokens: [{ label: 5 }] })] })).toEqual(['ports[0].tokens[0].label: expected string, received number']);
    expect(problems({ ports: [port({ tokens: 'first' })] })).toEqual(['ports[0].tokens: expected array, received string']);
    expect(problems({ ports: [port({ mechanisms: [null] })] })).toEqual(['ports[0].mechanisms[0]: expected a CKM_* name or a mechanism number, received null']);
    expect(problems([])).toEqual(['expected object, received array']);
  });

  it('unknown keys, at every level, with the keys that are known', () => {
    expect(problems({ modul: '/x.so' })).toEqual([
      'modul: unknown key (known keys: module, ports, maxPayload, leaseSeconds, maxCallSeconds, limits, logLevel, executor)',
    ]);
    expect(problems({ ports: [port({ readonly: true })] })).toEqual(['ports[0].readonly: unknown key (known keys: path, tokens, readOnly, initToken, mechanisms)']);
    expect(problems({ limits: { maxConnections: 4 } })).toEqual([`limits.maxConnections: unknown key (known keys: ${Object.keys(DEFAULT_LIMITS).join(', ')})`]);
    expect(problems({ ports: [port({ tokens: [{ label: 'a', slot: 1 }] })] })).toEqual(['ports[0].tokens[0].slot: unknown key (known keys: label, serial)']);
  });

  it('unknown mechanism names, with a hint for near misses', () => {
    expect(problems({ ports: [port({ mechanisms: ['CKM_AES_GCM', 'CKM_AES_GCN'] })] })).toEqual(['ports[0].mechanisms[1]: unknown mechanism "CKM_AES_GCN"']);
    expect(problems({ ports: [port({ mechanisms: ['aes_gcm'] })] })).toEqual(['ports[0].mechanisms[0]: unknown mechanism "aes_gcm" (did you mean CKM_AES_GCM?)']);
    expect(problems({ ports: [port({ mechanisms: [-1, 1.5] })] })).toEqual([
      'ports[0].mechanisms[0]: expected a mechanism number (a non-negative integer), received -1',
      'ports[0].mechanisms[1]: expected a mechanism number (a non-negative integer), received 1.5',
    ]);
  });

  it('bad values', () => {
    expect(problems({ ports: [{ readOnly: true }] })).toEqual(['ports[0].path: required (string)']);
    expect(problems({ ports: [port({ path: 'ttyS4' })] })).toEqual(['ports[0].path: expected an absolute device path such as /dev/ttyS4']);
    expect(problems({ ports: [port(), port()] })).toEqual(['ports[1].path: /dev/ttyS4 is already ports[0]']);
    expect(problems({ ports: [port({ tokens: [{}] })] })).toEqual(['ports[0].tokens[0]: a token needs a label, a serial or both']);
    expect(problems({ ports: [port({ tokens: [{ label: 'x'.repeat(33) }] })] })).toEqual(['ports[0].tokens[0].label: a token label has at most 32 bytes']);
    expect(problems({ ports: [port({ tokens: [{ serial: '' }] })] })).toEqual(['ports[0].tokens[0].serial: the serial must not be empty']);
    expect(problems({ ports: [port({ tokens: [{ label: 'padded  ' }] })] })).toEqual(['ports[0].tokens[0].label: the label must not end in blanks (they are padding)']);
    expect(problems({ maxPayload: 1.5 })).toEqual(['maxPayload: expected a positive integer']);
    expect(problems({ limits: { maxConnectionsPerPort: 0 } })).toEqual(['limits.maxConnectionsPerPort: expected an integer from 1 to 1024']);
    expect(problems({ limits: { executorNice: 20, executorNetwork: 'no' } })).toEqual(['limits.executorNice: expected an integer from 0 to 19', 'limits.executorNetwork: expected boolean, received string']);
    expect(problems({ ports: [port({ initToken: 1 })] })).toEqual(['ports[0].initToken: expected boolean, received number']);
    expect(problems({ leaseSeconds: -1 })).toEqual(['leaseSeconds: expected a positive number']);
    expect(problems({ maxCallSeconds: '60' })).toEqual(['maxCallSeconds: expected number, received string']);
    expect(problems({ logLevel: 'loud' })).toEqual(['logLevel: expected one of fatal, error, warn, info, debug, trace, silent']);
    expect(problems({ module: '' })).toEqual(['module: must not be empty']);
  });

  it('reports every problem at once', () => {
    expect(problems({ logLevel: 'loud', ports: [port({ readOnly: 1 })], extra: true })).toEqual([
      'ports[0].readOnly: expected boolean, received number',
      'logLevel: expected one of fatal, error, warn, info, debug, trace, silent',
      'extra: unknown key (known keys: module, ports, maxPayload, leaseSeconds, maxCallSeconds, limits, logLevel, executor)',
    ]);
  });

  it('files that cannot be read or are not JSON', () => {
    const missing = path.join(tmp, 'missing.json');
    expect(() => loadConfig(missing)).toThrow(`config ${missing}: cannot read: ENOENT`);
    const broken = path.join(tmp, 'broken.json');
    writeFileSync(broken, '{ "module": "/x.so", }');
    expect(() => loadConfig(broken)).toThrow(new RegExp(`^config ${broken}: not valid JSON: `));
    const bad = path.join(tmp, 'bad.json');
    writeFileSync(bad, JSON.stringify({ ports: [port({ readOnly: 'no' })] }));
    expect(() => loadConfig(bad)).toThrow(`config ${bad}: ports[0].readOnly: expected boolean, received string`);
  });

  it('key paths', () => {
    expect(keyPath(['ports', 1, 'readOnly'])).toBe('ports[1].readOnly');
    expect(keyPath(['odd key'])).toBe('["odd key"]');
  });
});

describe('mechanism names (protocol.json mechanismTypes)', () => {
  it('has every CKM_ define of the OASIS header, with its value', () => {
    const header = readFileSync(new URL('../../native/include/pkcs11/pkcs11t.h', import.meta.url), 'utf8');
    const defines = [...header.matchAll(/^#define\s+(CKM_\w+)\s+(0x[0-9A-Fa-f]+)UL\b/gm)].map((m) => [m[1]!, Number.parseInt(m[2]!, 16)] as const);
    expect(defines.length).toBe((header.match(/^#define\s+CKM_/gm) ?? []).length);
    expect(MECHANISM_TYPES.size).toBe(defines.length);
    for (const [name, value] of defines) expect(MECHANISM_TYPES.get(name), name).toBe(value);
    expect(MECHANISM_TYPES.get('CKM_AES_GCM')).toBe(0x1087);
    expect(MECHANISM_TYPES.get('CKM_EC_KEY_PAIR_GEN')).toBe(MECHANISM_TYPES.get('CKM_ECDSA_KEY_PAIR_GEN'));
  });

  it('agrees with the structured-parameter table', () => {
    const proto = JSON.parse(readFileSync(new URL('../../proto/protocol.json', import.meta.url), 'utf8')) as { mechanisms: Record<string, { value: number }> };
    for (const [name, m] of Object.entries(proto.mechanisms)) {
      if (MECHANISM_TYPES.has(name)) expect(MECHANISM_TYPES.get(name), name).toBe(m.value);
    }
  });
});
