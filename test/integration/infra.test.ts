// Tests of the test infrastructure itself (helpers), independent of the p11bridge daemon/client.
import { execFile } from 'node:child_process';
import { constants as fsc, createReadStream, promises as fs } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { startDaemon } from '../helpers/daemon.js';
import { openDirect } from '../helpers/direct.js';
import { decodeValue, encodeValue, GUEST_SOFTHSM2_CONF, startGuest, type Guest } from '../helpers/guest.js';
import { CKA_MODULUS_BITS, CKA_VALUE, CKR_PIN_INCORRECT, CKU_USER, RW_SESSION } from '../helpers/pkcs11.js';
import { createPtyPair, isCookedEcho, sttyAll } from '../helpers/pty.js';
import { createToken, SOFTHSM_MODULE, type SoftHsmToken } from '../helpers/softhsm.js';
import { dataObject } from '../helpers/templates.js';

const execFileP = promisify(execFile);
const fixture = (name: string) => fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

describe('softhsm helper', () => {
  it('creates a token that pkcs11js sees directly', async () => {
    const token: SoftHsmToken = await createToken({ label: 'infra-token' });
    cleanups.push(() => token.cleanup());
    expect(token.module).toBe(SOFTHSM_MODULE);
    expect(token.env.SOFTHSM2_CONF).toBe(token.conf);
    expect(await fs.readFile(token.conf, 'utf8')).toContain(`directories.tokendir = ${token.dir}/tokens`);

    const direct = await openDirect(token);
    cleanups.push(() => direct.close());
    const { pkcs11 } = direct;
    // SoftHSM2 always adds one more slot holding an uninitialized token.
    const slots = pkcs11.C_GetSlotList(true);
    const labels = slots.map((slot) => pkcs11.C_GetTokenInfo(slot).label.trim());
    expect(labels).toContain('infra-token');
    const slot = slots[labels.indexOf('infra-token')]!;

    // user PIN works
    const s = pkcs11.C_OpenSession(slot, RW_SESSION);
    pkcs11.C_Login(s, CKU_USER, token.pin);
    // A token object written here is visible to another process on the same token dir.
    pkcs11.C_CreateObject(s, dataObject({ token: true, label: 'infra-data', value: Buffer.from('x') }));
    const { stdout } = await execFileP(
      'pkcs11-tool',
      ['--module', token.module, '--token-label', 'infra-token', '--login', '--pin', token.pin, '--list-objects', '--type', 'data'],
      { env: { ...process.env, ...token.env } },
    );
    expect(stdout).toContain('infra-data');
    pkcs11.C_Logout(s);
    pkcs11.C_CloseSession(s);
  });
});

describe('pty helper', () => {
  it('creates a cooked, echoing pty pair that carries bytes both ways', async () => {
    const pty = await createPtyPair();
    cleanups.push(() => pty.kill());
    for (const p of [pty.serverPath, pty.guestPath]) {
      const out = await sttyAll(p);
      expect(isCookedEcho(out)).toBe(true);
      expect(out).not.toMatch(/(^|\s)-icanon(\s|$)/);
      expect(out).not.toMatch(/(^|\s)-echo(\s|$)/);
    }

    for (const p of [pty.serverPath, pty.guestPath]) {
      await execFileP('stty', ['-F', p, 'raw', '-echo']);
      expect(isCookedEcho(await sttyAll(p))).toBe(false);
    }
    const server = await fs.open(pty.serverPath, fsc.O_RDWR | fsc.O_NOCTTY);
    const guest = await fs.open(pty.guestPath, fsc.O_RDWR | fsc.O_NOCTTY);

    const roundTrip = async (from: fs.FileHandle, to: fs.FileHandle, text: string) => {
      const stream = createReadStream('', { fd: to.fd, autoClose: false });
      const got = new Promise<string>((resolve, reject) => {
        let acc = '';
        stream.on('data', (d) => {
          acc += d.toString();
          if (acc.length >= text.length) resolve(acc);
        });
        stream.on('error', reject);
      });
      await from.write(text);
      const data = await got;
      stream.pause();
      return data;
    };
    expect(await roundTrip(server, guest, 'hello')).toBe('hello');

    // Killing socat unblocks any read still pending on the slaves (EIO/EOF).
    await pty.kill();
    await server.close().catch(() => {});
    await guest.close().catch(() => {});
    await expect(fs.stat(pty.serverPath)).rejects.toThrow();
  });

  it('kill() is idempotent', async () => {
    const pty = await createPtyPair();
    await pty.kill();
    await pty.kill();
  });
});

describe('guest helper (with a fake client library)', () => {
  const start = async (extra: Record<string, string> = {}): Promise<Guest> => {
    const g = await startGuest({
      port: '/tmp/p11b-nonexistent-port',
      timeoutMs: 10_000,
      env: { P11B_CLIENT_MODULE: fixture('fake-client.mjs'), ...extra },
    });
    cleanups.push(() => g.kill());
    return g;
  };

  it('round-trips Buffers, BigInts and errors', async () => {
    const g = await start();
    await g.connect();
    const info = await g.call('info');
    expect(info.opts.port).toBe('/tmp/p11b-nonexistent-port');
    expect(info.softhsmConf).toBe(GUEST_SOFTHSM2_CONF);

    const slots = await g.call('C_GetSlotList', false);
    expect(slots).toEqual([Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([2, 0, 0, 0, 0, 0, 0, 0])]);
    expect(Buffer.isBuffer(slots[0])).toBe(true);

    const template = [{ type: CKA_VALUE, value: Buffer.from('abc') }, { type: CKA_MODULUS_BITS, value: 2048n }, { nested: { b: [Buffer.alloc(0)] } }];
    expect(await g.call('echo', ...template)).toEqual(template);

    await expect(g.call('C_Login', CKU_USER, '1234')).rejects.toMatchObject({ code: CKR_PIN_INCORRECT, method: 'C_Login', name: 'Pkcs11Error' });
    await expect(g.call('noSuchMethod')).rejects.toThrow(/no method noSuchMethod/);

    // concurrent commands, answered out of order
    const [a, b] = await Promise.all([g.call('sleep', 200), g.call('sleep', 10)]);
    expect([a, b]).toEqual([200, 10]);

    expect(await g.eval('state.n = (state.n ?? 0) + 1; return [Buffer.from("hi"), 5n, c.opts.port]')).toEqual([
      Buffer.from('hi'),
      5n,
      '/tmp/p11b-nonexistent-port',
    ]);
    expect(await g.eval('return state.n')).toBe(1);

    await g.close();
    expect((await g.call('info')).closed).toBe(true);
    expect(await g.exit()).toEqual({ code: 0, signal: null });
  });

  it('rejects pending calls with stderr when the guest dies', async () => {
    const g = await start();
    await g.connect({ port: '/tmp/other' });
    expect((await g.call('info')).opts.port).toBe('/tmp/other');
    const slow = g.call('sleep', 30_000);
    await expect(g.call('crash')).rejects.toThrow(/exited \(code 3.*fake client: crashing/s);
    await expect(slow).rejects.toThrow(/exited/);
    await expect(g.call('info')).rejects.toThrow(/exited/);
  });

  it('kill() simulates a crash', async () => {
    const g = await start();
    const pending = g.call('sleep', 30_000);
    expect(await g.kill()).toMatchObject({ signal: 'SIGKILL' });
    await expect(pending).rejects.toThrow(/signal SIGKILL/);
  });

  it('fails to start with a clear error when the library cannot be loaded', async () => {
    await expect(start({ P11B_CLIENT_MODULE: '/nonexistent/lib.js' })).rejects.toThrow(/cannot load client library/);
  });

  it('codec is symmetric', () => {
    const v = { a: [Buffer.from([0, 255]), 1n << 70n, null, 'x', 3], b: new Uint8Array([7]) };
    expect(decodeValue(JSON.parse(JSON.stringify(encodeValue(v))))).toEqual({ ...v, b: Buffer.from([7]) });
  });
});

describe('daemon helper (with a fake daemon)', () => {
  it('waits for "serving", keeps logs and stops', async () => {
    const d = await startDaemon({
      module: SOFTHSM_MODULE,
      ports: ['/tmp/a', '/tmp/b'],
      env: { FOO: 'bar' },
      entry: fixture('fake-daemon.mjs'),
    });
    cleanups.push(() => d.stop('SIGKILL'));
    expect(d.pid).toBeGreaterThan(0);
    expect(d.logs().find((r) => r.msg === 'serving')).toMatchObject({ ports: ['/tmp/a', '/tmp/b'] });
    expect(d.logs().find((r) => r.msg === 'starting')?.args).toEqual([
      'serve', '--module', SOFTHSM_MODULE, '--port', '/tmp/a', '--port', '/tmp/b', '--log-level', 'debug',
    ]);
    expect(d.lines().some((l) => l.line === 'not json' && !l.json)).toBe(true);
    expect(d.output()).toContain('"msg":"serving"');
    expect(await d.stop()).toEqual({ code: 0, signal: null });
    expect(d.logs().at(-1)?.msg).toBe('stopping');
    expect(await d.stop()).toEqual({ code: 0, signal: null });
  });

  it('reports an early exit with the output', async () => {
    await expect(
      startDaemon({ module: SOFTHSM_MODULE, ports: [], args: ['--fail'], entry: fixture('fake-daemon.mjs') }),
    ).rejects.toThrow(/exited \(code 1.*cannot open module/s);
  });
});
