// The baseline's far end: echoes every byte back on a serial port, through
// the same serialport stack the daemon uses. Run by bench/run.ts.
import { openSerial } from '../src/transport/server-port.js';

const link = await openSerial(process.argv[2]!);
link.onData((chunk) => void link.write(chunk));
process.stdout.write('ready\n');
process.on('SIGTERM', () => void link.close().then(() => process.exit(0)));
