// The bare-metal files of deploy/: the systemd unit passes
// `systemd-analyze verify` without a warning and stops with more time than
// the server's drain, and the shell scripts are shellcheck-clean. Neither
// tool needs a running systemd, so this runs on a CI machine without one;
// both are installed from Debian when missing.
import { after, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { removeDir, tempDir } from './helpers';

const ROOT = path.join(__dirname, '..', '..');
const UNIT = path.join(ROOT, 'deploy', 'systemd', 'pmemps@.service');
const dirs: string[] = [];
after(() => dirs.forEach(removeDir));

function ensure(tool: string, pkg: string): void {
  if (spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0) return;
  for (const args of [
    ['update', '-qq'],
    ['install', '-y', '-qq', pkg],
  ]) {
    const r = spawnSync('apt-get', args, { encoding: 'utf8', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    assert.equal(r.status, 0, `apt-get ${args.join(' ')}: ${r.stderr}`);
  }
}

function unitValue(text: string, key: string): string {
  const m = new RegExp(`^${key}=(.*)$`, 'm').exec(text);
  assert.ok(m, `${key}= is set`);
  return m[1].trim();
}

test('the systemd unit verifies, instantiated for a shard', () => {
  ensure('systemd-analyze', 'systemd');
  // verify reads the template through the instance name, from a directory
  // of its own: nothing is installed on the host.
  const dir = tempDir('unit');
  dirs.push(dir);
  fs.copyFileSync(UNIT, path.join(dir, 'pmemps@.service'));
  const r = spawnSync('systemd-analyze', ['verify', path.join(dir, 'pmemps@ps0.service')], { encoding: 'utf8' });
  assert.equal(r.status, 0, `systemd-analyze verify failed:\n${r.stdout}${r.stderr}`);
  // Unknown keys and unsafe settings are only warnings: none is allowed.
  const about = `${r.stdout}${r.stderr}`.split('\n').filter((l) => l.includes('pmemps@'));
  assert.deepEqual(about, [], 'no warning about the unit');
});

test('the unit stops with SIGTERM, gives more time than the drain, restarts on failure, and runs unprivileged', () => {
  const unit = fs.readFileSync(UNIT, 'utf8');
  const help = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'server', 'pserver.js'), '--help'], { encoding: 'utf8' });
  assert.equal(help.status, 0, help.stderr);
  const drain = /--drain-seconds[^[]*(?:\[[a-z]+\]\s*)?\[default: (\d+)\]/.exec(help.stdout);
  assert.ok(drain, 'pserver --help shows the drain default');
  assert.ok(Number(unitValue(unit, 'TimeoutStopSec')) > Number(drain[1]) + 10, `TimeoutStopSec is above the ${drain[1]} s drain plus the pool close`);
  assert.equal(unitValue(unit, 'KillSignal'), 'SIGTERM');
  assert.equal(unitValue(unit, 'Restart'), 'on-failure');
  assert.notEqual(unitValue(unit, 'User'), 'root');
  assert.equal(unitValue(unit, 'Environment'), 'PMEMPS_PMEM=/mnt/pmem0/%i', 'the pool of instance X is /mnt/pmem0/X');
  assert.equal(unitValue(unit, 'ReadWritePaths'), '/mnt/pmem0/%i', 'the only writable path under ProtectSystem=strict is the pool');
  assert.doesNotMatch(unit, /^MemoryDenyWriteExecute=yes/m, 'V8 needs writable-executable pages');
});

test('deploy/ shell scripts are shellcheck-clean', () => {
  ensure('shellcheck', 'shellcheck');
  const scripts = ['entrypoint.sh', 'pmem-setup.sh'].map((f) => path.join(ROOT, 'deploy', f));
  const r = spawnSync('shellcheck', scripts, { encoding: 'utf8' });
  assert.equal(r.status, 0, `shellcheck:\n${r.stdout}${r.stderr}`);
});
