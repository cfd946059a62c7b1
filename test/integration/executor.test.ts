// The C executor on its own, against a real SoftHSM2 token: the smoke test of
// every kind codec, the same under valgrind (zero errors, no definite leaks),
// and mutation fuzzing of its input. The scripts live in native/test.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';

const run = promisify(execFile);
const make = (target: string) => run('make', ['-s', '-C', `${packageRoot()}/native`, target], { maxBuffer: 16 << 20 });

describe('p11bridge-exec', () => {
  it('passes its smoke test', async () => {
    const { stdout } = await make('check');
    expect(stdout).toMatch(/exec_smoke: \d+ checks passed/);
  });

  it('passes its smoke test under valgrind with no errors', async () => {
    const { stdout, stderr } = await make('check-valgrind');
    expect(stdout + stderr).toMatch(/ERROR SUMMARY: 0 errors/);
    expect(stdout + stderr).toMatch(/definitely lost: 0 bytes/);
  }, 180_000);

  it('survives mutation fuzzing of its input', async () => {
    const { stdout } = await make('check-fuzz');
    expect(stdout).toMatch(/executor exited 0/);
  }, 120_000);
});
