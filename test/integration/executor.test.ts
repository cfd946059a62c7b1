// The native parts, against a real SoftHSM2 token. The C executor on its own:
// the smoke test of every kind codec, the same under valgrind (zero errors, no
// definite leaks), and mutation fuzzing of its input. The guest-side PKCS#11
// module libp11bridge.so: the golden vectors through its C codecs byte for
// byte, and end to end through the daemon over a pty pair (plus a hostile
// server), also under valgrind; the fuzzers' regression inputs replayed. Its
// retries through a faulty line are in faults.test.ts. The scripts
// live in native/test and native/fuzz.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../../src/paths.js';

const run = promisify(execFile);
const make = (target: string) => run('make', ['-s', '-C', `${packageRoot()}/native`, target], { maxBuffer: 16 << 20 });

describe('native: p11bridge-exec and libp11bridge.so', () => {
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

  it('libp11bridge.so: C codecs reproduce every golden vector byte for byte', async () => {
    const { stdout } = await make('check-golden');
    expect(stdout).toMatch(/golden: \d+ vectors reproduced byte for byte/);
  });

  it('libp11bridge.so: end to end through the daemon, and against a hostile server', async () => {
    const { stdout } = await make('check-module');
    expect(stdout).toMatch(/test_module: \d+ checks passed\n/);
    expect(stdout).toMatch(/test_module: \d+ checks passed \(hostile server\)/);
    expect(stdout).toMatch(/module_smoke: passed/);
  }, 120_000);

  it('fuzzing regressions: every input that once crashed a decoder, and the seed corpus, replay cleanly', async () => {
    const { stdout } = await make('check-fuzz-regressions');
    expect(stdout).toMatch(/replay_exec: \d+ inputs replayed without a crash/);
    expect(stdout).toMatch(/replay_module: \d+ inputs replayed without a crash/);
  }, 300_000);

  it('coverage-guided fuzzing (libFuzzer) of the executor and module decoders finds no crash in a bounded run', async () => {
    const seconds = process.env.P11BRIDGE_FUZZ_SECONDS ?? '20';
    const { stdout } = await run('make', ['-s', '-C', `${packageRoot()}/native`, 'fuzz', `FUZZ_SECONDS=${seconds}`], { maxBuffer: 16 << 20 });
    // The figures (executions per target) go to the log for the notes.
    console.log(stdout.split('\n').filter((l) => /number_of_executed_units|last:/.test(l)).join('\n'));
    expect(stdout).not.toMatch(/FOUND A CRASH/);
    expect(stdout).toMatch(/fuzz: exec .*number_of_executed_units/);
    expect(stdout).toMatch(/fuzz: module .*number_of_executed_units/);
  }, 600_000);

  it('libp11bridge.so: the same under valgrind with no errors', async () => {
    const { stdout, stderr } = await make('check-module-valgrind');
    const all = stdout + stderr;
    expect(all).toMatch(/module_smoke: passed under valgrind/);
    expect(all).not.toMatch(/ERROR SUMMARY: [1-9]/);
    expect(all).not.toMatch(/definitely lost: [1-9]/);
  }, 300_000);
});
