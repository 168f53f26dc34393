import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

// Weight-hash cache entries (checkpoints/weights-hash.ts) go to a folder of this run, not the user's ~/.cache.
process.env.DEJAVU_CACHE_DIR ??= mkdtempSync(join(tmpdir(), 'dejavu-test-cache-'));

// The JSON report feeds .ci/run's closing "N passed, N failed" line.
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    testTimeout: 180_000,
    hookTimeout: 180_000,
    pool: 'forks',
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-report.json' },
  },
});
