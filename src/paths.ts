// Locates files shipped with the package (the protocol table, the native
// executor) whether running from src/ under vitest or from dist/.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;
export function packageRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'proto', 'protocol.json'))) return (root = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the p11bridge package root');
    dir = up;
  }
}

export const defaultExecutorPath = (): string => join(packageRoot(), 'native', 'build', 'p11bridge-exec');
