// `npm run demo`: the whole bridge on one machine. A fresh SoftHSM2 token
// stands in for the trusted VM's TPM, a socat pty pair for the virtual UART
// (left in cooked mode with echo on, like a freshly booted /dev/ttyS4), the
// daemon serves one end, and the guest app runs on the other in a process of
// its own that cannot see the token store.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createToken, SOFTHSM_MODULE } from '../lab/softhsm.js';
import { createPtyPair } from '../lab/pty.js';
import { startDaemon } from '../lab/daemon.js';
import { packageRoot } from '../src/paths.js';

const token = await createToken({ label: 'p11bridge-demo', soPin: 'demo-so-pin', pin: 'demo-user-pin' });
const pty = await createPtyPair();
console.log(`trusted VM: SoftHSM2 token "${token.label}" in ${token.dir}`);
console.log(`serial line: ${pty.serverPath} <-> ${pty.guestPath} (socat pty pair, cooked mode, echo on)`);
const daemon = await startDaemon({ module: SOFTHSM_MODULE, ports: [pty.serverPath], env: token.env, logLevel: 'info' });
console.log(`daemon: p11bridge serve --module ${SOFTHSM_MODULE} --port ${pty.serverPath} (pid ${daemon.pid})`);
console.log('guest app:');
let code: number | null = 1;
try {
  const app = spawn(process.execPath, [join(packageRoot(), 'dist', 'examples', 'guest-app.js'), token.label], {
    stdio: 'inherit',
    // The guest sees only its serial port: no token store.
    env: { ...process.env, SOFTHSM2_CONF: '/nonexistent/softhsm2.conf', TEC_COMM_PORT: pty.guestPath, P11_PIN: token.pin },
  });
  code = await new Promise<number | null>((resolve) => app.on('exit', resolve));
} finally {
  const { code: daemonCode } = await daemon.stop();
  console.log(`daemon stopped (exit ${daemonCode})`);
  await pty.kill();
  await token.cleanup();
}
console.log(code === 0 ? 'demo finished: ok' : `demo FAILED (guest app exit ${code})`);
process.exit(code === 0 ? 0 : 1);
