// The engine's C++ components that have unit tests of their own
// (native/test/*_test.cc): each is compiled against native/src with the
// compiler node-gyp uses and run; it exits non-zero naming the failed check.
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.resolve(__dirname, '..', '..');
const dir = path.join(root, 'native', 'test');

describe('native unit tests', () => {
  const tests = fs.readdirSync(dir).filter((f) => f.endsWith('_test.cc'));
  it('exist', () => assert.ok(tests.length > 0, `no *_test.cc under ${dir}`));
  for (const t of tests) {
    it(t, () => {
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-unit-'));
      try {
        const exe = path.join(tmp, t.replace(/\.cc$/, ''));
        const cc = spawnSync(
          'g++',
          ['-std=c++17', '-O1', '-Wall', '-Wextra', '-Werror', '-I', path.join(root, 'native', 'src'), path.join(dir, t), '-o', exe],
          {
            encoding: 'utf8',
          },
        );
        assert.equal(cc.status, 0, `g++ failed:\n${cc.stderr}`);
        const run = spawnSync(exe, [], { encoding: 'utf8', timeout: 120_000 });
        assert.equal(run.status, 0, `${t} failed:\n${run.stderr}`);
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    });
  }
});
