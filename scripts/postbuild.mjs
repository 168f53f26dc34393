// Make the CLI entry executable after tsc (npm links bin files, but a fresh clone runs `node dist/cli/main.js` too).
import { chmodSync, existsSync } from 'node:fs';
const bin = new URL('../dist/cli/main.js', import.meta.url);
if (existsSync(bin)) chmodSync(bin, 0o755);
