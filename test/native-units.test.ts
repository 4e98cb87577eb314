// The engine's C++ components that have unit tests of their own
// (native/test/*_test.cc): each is compiled with the compiler node-gyp uses
// and run twice, on the msync path and with PMEM emulated
// (PMEM_IS_PMEM_FORCE=1); it exits non-zero naming the failed check. A
// test's first line may name what it links besides itself:
// `// build: vlog.cc pool.cc -lpmemobj -pthread` (sources under native/src; flags as given).
import { describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.resolve(__dirname, '..', '..');
const src = path.join(root, 'native', 'src');
const dir = path.join(root, 'native', 'test');

function buildArgs(file: string): string[] {
  const first = fs.readFileSync(file, 'utf8').split('\n', 1)[0];
  const m = /^\/\/ build:(.*)$/.exec(first);
  if (!m) return [];
  return m[1]
    .trim()
    .split(/\s+/)
    .map((a) => (a.startsWith('-') ? a : path.join(src, a)));
}

describe('native unit tests', () => {
  const tests = fs.readdirSync(dir).filter((f) => f.endsWith('_test.cc'));
  it('exist', () => assert.ok(tests.length > 0, `no *_test.cc under ${dir}`));
  for (const t of tests) {
    it(t, () => {
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-unit-'));
      try {
        const exe = path.join(tmp, t.replace(/\.cc$/, ''));
        const file = path.join(dir, t);
        const args = buildArgs(file);
        const libs = args.filter((a) => a.startsWith('-'));
        const srcs = args.filter((a) => !a.startsWith('-'));
        const cc = spawnSync(
          'g++',
          ['-std=c++17', '-O1', '-Wall', '-Wextra', '-Werror', '-Wno-unused-parameter', '-I', src, file, ...srcs, '-o', exe, ...libs],
          {
            encoding: 'utf8',
          },
        );
        assert.equal(cc.status, 0, `g++ failed:\n${cc.stderr}`);
        for (const force of ['0', '1']) {
          const run = spawnSync(exe, [], { encoding: 'utf8', timeout: 120_000, env: { ...process.env, TMPDIR: tmp, PMEM_IS_PMEM_FORCE: force } });
          assert.equal(run.status, 0, `${t} (PMEM_IS_PMEM_FORCE=${force}) failed:\n${run.stderr}`);
        }
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    });
  }
});
