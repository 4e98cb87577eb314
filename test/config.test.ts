// The one configuration (server/config.ts): precedence of argv, environment
// and --config file; a bound on every option, refused from each source with
// a message naming the option and the source; the safe-default rule for
// public binds; redaction of the start-up line; the README table in sync.
// The refusals are also checked through the real binary: exit code 2 and
// nothing created in --pmem.
import { after, describe, it } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import YAML from 'yaml';
import { ConfigError, envName, isLoopbackBind, loadConfig, OPTIONS, optionsMarkdown, publicBindRefusal, redactConfig, type Source } from '../server/config';
import { poolDirs } from './helpers';

const PSERVER = path.join(__dirname, '..', 'server', 'pserver.js');
const README = path.join(__dirname, '..', '..', 'README.md');
const dirOf = poolDirs(after);
const dir = dirOf('config');
const file = (name: string, text: string): string => {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
};
const CERT = file('server.crt', 'not read by the config; AUTH reads it\n');
const KEY = file('server.key', 'x\n');
const CA = file('ca.crt', 'x\n');
const TOKENS = file('tokens', 'tok-7f3a9c5e21b4d8aa admin ops\n');
const MISSING = path.join(dir, 'missing.pem');
const BASE = ['--bind', '127.0.0.1:7000', '--pmem', path.join(dir, 'never')];

/** Loads with `option` set to `value` from one source (the required options on argv). */
function loadFrom(source: Exclude<Source, 'default'>, option: string, value: string, extra: string[] = []): ReturnType<typeof loadConfig> {
  // The other required options on argv; this one only from `source`.
  const i = BASE.indexOf(`--${option}`);
  const base = [...BASE.slice(0, Math.max(i, 0)), ...(i >= 0 ? BASE.slice(i + 2) : BASE), ...extra];
  if (source === 'argv') return loadConfig([...base, `--${option}`, value], {});
  if (source === 'env') return loadConfig(base, { [envName(option)]: value });
  const f = file(`one-${option}.yaml`, YAML.stringify({ [option]: value }));
  return loadConfig([...base, '--config', f], {});
}

const SOURCE_WORDS: Record<Exclude<Source, 'default'>, string> = { argv: 'on the command line', env: 'in the environment', file: 'of --config' };

describe('config: sources and precedence', () => {
  for (const ext of ['yaml', 'json'] as const) {
    it(`argv wins over env, env over a ${ext} file, the file over defaults`, () => {
      const values = { 'cache-mb': 11, 'max-streams': 12, 'drain-seconds': 13, 'log-level': 'debug', 'pool-size': 512 };
      const f = file(`prec.${ext}`, ext === 'json' ? JSON.stringify(values) : YAML.stringify(values));
      const { config, sources } = loadConfig([...BASE, '--config', f, '--cache-mb', '31'], { PMEMPS_CACHE_MB: '21', PMEMPS_MAX_STREAMS: '22' });
      assert.equal(config.cacheMb, 31);
      assert.equal(config.limits.maxStreams, 22);
      assert.equal(config.drainSeconds, 13);
      assert.equal(config.logLevel, 'debug');
      assert.equal(config.poolSizeMb, 512, 'a bare YAML number is MiB, as on the command line');
      assert.equal(config.limits.idleSeconds, 300);
      assert.equal(config.configFile, f);
      assert.deepEqual(
        { cache: sources['cache-mb'], streams: sources['max-streams'], drain: sources['drain-seconds'], idle: sources['idle-seconds'] },
        { cache: 'argv', streams: 'env', drain: 'file', idle: 'default' },
      );
      assert.ok(Object.isFrozen(config) && Object.isFrozen(config.limits));
    });
  }

  it('PMEMPS_CONFIG names the file; only PMEMPS_ variables of options are read', () => {
    const f = file('via-env.yaml', 'cache-mb: 77\n');
    const { config } = loadConfig(BASE, { PMEMPS_CONFIG: f, PMEMPS_FAILPOINT: 'engine.push:1', PMEMPS_SDK_FAILPOINT: 'x', PMEMPS_NOT_AN_OPTION: 'y' });
    assert.equal(config.cacheMb, 77);
  });

  it('the issue-8 options land in the typed fields the other modules read', () => {
    const { config } = loadConfig(
      [...BASE, '--tls-cert', CERT, '--tls-key', KEY, '--tls-client-ca', CA, '--auth-tokens', TOKENS, '--metrics-bind', '127.0.0.1:9100', '--insecure'],
      {},
    );
    assert.deepEqual(config.tls, { certFile: CERT, keyFile: KEY, clientCaFile: CA });
    assert.equal(config.authTokensFile, TOKENS);
    assert.equal(config.metricsBind, '127.0.0.1:9100');
    assert.equal(config.insecure, true);
    const plain = loadConfig(BASE, {}).config;
    assert.deepEqual([plain.tls, plain.authTokensFile, plain.metricsBind, plain.insecure], [undefined, undefined, undefined, false]);
    assert.equal(plain.logFormat, 'json', 'not a terminal: JSON lines');
    assert.equal(loadConfig(BASE, {}, { isTTY: true }).config.logFormat, 'pretty');
  });
});

// Values out of bounds or of the wrong type, one or more per option. The
// first test fails if an option is added without a row here.
const BAD: Record<string, { value: string; says: string; extra?: string[] }[]> = {
  bind: [
    { value: '7000', says: 'must be HOST:PORT' },
    { value: '127.0.0.1:65536', says: 'the port is 0..65535' },
    { value: '[zz]:7000', says: 'not an IPv6 address' },
  ],
  pmem: [{ value: ' ', says: 'is empty' }],
  'cache-mb': [
    { value: '0', says: 'at least 1' },
    { value: 'lots', says: 'must be a number' },
    { value: String(2 ** 25), says: 'at most 16777216' },
  ],
  'scratch-mb': [
    { value: '0', says: 'at least 1' },
    { value: '1.5', says: 'whole number' },
    { value: 'lots', says: 'must be a number' },
    { value: String(2 ** 20 + 1), says: 'at most 1048576' },
  ],
  'pool-size': [
    { value: '15M', says: '16M to 1P' },
    { value: '2P', says: '16M to 1P' },
    { value: 'big', says: 'like 512M' },
  ],
  'pool-layout': [
    { value: 'columnar', says: 'one of auto, inplace, logged' },
    { value: 'LOGGED', says: 'one of auto, inplace, logged' },
  ],
  'max-message-mb': [
    { value: '0', says: 'at least 1' },
    { value: '2048', says: 'at most 2047' },
  ],
  'drain-seconds': [
    { value: '-1', says: 'at least 0' },
    { value: '2147484', says: 'at most 2147483' },
  ],
  'max-connections': [
    { value: '0', says: 'at least 1' },
    { value: '1.5', says: 'whole number' },
  ],
  'max-streams': [
    { value: '0', says: 'at least 1' },
    { value: '2147483648', says: 'at most 2147483647' },
  ],
  'idle-seconds': [
    { value: '0', says: 'above 0' },
    { value: '2147484', says: 'at most 2147483' },
  ],
  'reply-mb-per-connection': [
    { value: '0', says: 'above 0' },
    { value: '1e9', says: 'at most' },
  ],
  'reply-mb': [
    { value: '-5', says: 'above 0' },
    { value: 'Infinity', says: 'must be a number' },
  ],
  'stall-seconds': [
    { value: '0', says: 'above 0' },
    { value: '1e10', says: 'at most 2147483' },
  ],
  'request-seconds': [
    { value: '0', says: 'above 0' },
    { value: '0x10', says: 'must be a number' },
  ],
  'recv-mb-per-connection': [
    { value: '64', says: 'must be above --max-message-mb (64)' },
    { value: '0', says: 'above 0' },
  ],
  'recv-mb': [
    { value: '128', says: 'at least --recv-mb-per-connection (256)' },
    { value: '1e9', says: 'at most' },
  ],
  'tls-cert': [
    { value: MISSING, says: 'does not exist' },
    { value: dir, says: 'is not a file' },
    { value: CERT, says: '--tls-cert needs --tls-key' },
  ],
  'tls-key': [
    { value: MISSING, says: 'does not exist' },
    { value: KEY, says: '--tls-key needs --tls-cert' },
  ],
  'tls-client-ca': [
    { value: MISSING, says: 'does not exist' },
    { value: CA, says: 'needs --tls-cert and --tls-key' },
    { value: CA, says: 'needs --tls-cert and --tls-key', extra: ['--tls-key', KEY] },
  ],
  'auth-tokens': [
    { value: MISSING, says: 'does not exist' },
    { value: dir, says: 'is not a file' },
  ],
  insecure: [{ value: 'maybe', says: 'true or false' }],
  'metrics-bind': [
    { value: '9100', says: 'must be HOST:PORT' },
    { value: 'host:123456', says: 'must be HOST:PORT' },
  ],
  'log-level': [{ value: 'loud', says: 'one of trace, debug, info, warn, error, fatal' }],
  'log-format': [{ value: 'xml', says: 'one of json, pretty' }],
};

describe('config: every option has a bound, refused from every source', () => {
  it('the table covers every option', () => {
    assert.deepEqual(Object.keys(BAD).sort(), OPTIONS.map((o) => o.name).sort());
  });

  for (const [option, cases] of Object.entries(BAD))
    it(`--${option}`, () => {
      for (const c of cases)
        for (const source of ['argv', 'env', 'file'] as const) {
          // --insecure from argv is a flag: its value would be a positional argument.
          if (option === 'insecure' && source === 'argv') continue;
          assert.throws(
            () => loadFrom(source, option, c.value, c.extra),
            (e: unknown) => {
              assert.ok(e instanceof ConfigError, String(e));
              assert.ok(e.message.includes(`--${option}`), `names the option: ${e.message}`);
              assert.ok(e.message.includes(c.says), `says "${c.says}": ${e.message}`);
              assert.ok(e.message.includes(SOURCE_WORDS[source]), `names the source ${source}: ${e.message}`);
              assert.equal(e.source, source);
              return true;
            },
            `${option}=${c.value} from ${source}`,
          );
        }
    });

  it('values of the wrong YAML type are refused', () => {
    for (const [key, value, says] of [
      ['cache-mb', true, 'must be a number'],
      ['bind', ['127.0.0.1:1'], 'must be a string'],
      ['insecure', 'perhaps', 'must be true or false'],
      ['log-level', null, 'must be a string'],
    ] as const) {
      const f = file('typed.yaml', YAML.stringify({ [key]: value }));
      assert.throws(() => loadConfig(['--pmem', dir, ...(key === 'bind' ? [] : ['--bind', '127.0.0.1:1']), '--config', f], {}), new RegExp(`--${key} ${says}`));
    }
  });

  it('required options, unknown flags and repeated flags', () => {
    assert.throws(() => loadConfig(['--pmem', dir], {}), /--bind HOST:PORT is required \(or PMEMPS_BIND/);
    assert.throws(() => loadConfig(['--bind', '127.0.0.1:1'], {}), /--pmem DIR is required/);
    assert.throws(() => loadConfig([...BASE, '--cach-mb', '5'], {}), /Unknown argument: cach-mb \(on the command line/);
    assert.throws(() => loadConfig([...BASE, 'extra'], {}), /Unknown argument: extra/);
    assert.throws(() => loadConfig([...BASE, '--cache-mb'], {}), /Not enough arguments following: cache-mb/);
    assert.equal(loadConfig([...BASE, '--cache-mb', '5', '--cache-mb=6'], {}).config.cacheMb, 6, 'the last of a repeated flag wins');
  });
});

describe('config: the --config file', () => {
  const load = (text: string, name = 'c.yaml'): ReturnType<typeof loadConfig> => loadConfig([...BASE, '--config', file(name, text)], {});

  it('unknown keys are named, all of them', () => {
    assert.throws(() => load('cache-mb: 5\ncacheMb: 6\nbnd: x\n'), /unknown keys: cacheMb, bnd \(keys are the option names/);
    assert.throws(() => load('config: other.yaml\n'), /unknown keys: config/);
  });

  it('malformed files say where', () => {
    assert.throws(
      () => load('cache-mb: [1\n'),
      (e: unknown) => e instanceof ConfigError && /not valid YAML or JSON/.test(e.message) && /at line \d+, column \d+/.test(e.message),
    );
    assert.throws(() => load('{"cache-mb": 1, "cache-mb": 2}', 'dup.json'), /Map keys must be unique/);
    assert.throws(() => load('- cache-mb\n'), /must be a mapping of option names to values .* not a list/);
    assert.throws(() => load('just text\n'), /not a string/);
    assert.throws(() => load('x'.repeat((1 << 20) + 1)), /is over 1048576 bytes/);
    assert.throws(
      () => loadConfig([...BASE, '--config', MISSING], {}),
      /the config file .*missing\.pem does not exist \(--config .*, from --config on the command line\)/,
    );
    assert.throws(() => loadConfig(BASE, { PMEMPS_CONFIG: dir }), /is not a file .*PMEMPS_CONFIG in the environment/);
  });

  it('an empty file is an empty configuration', () => {
    assert.equal(load('').config.cacheMb, 1024);
    assert.equal(load('# nothing yet\n').config.cacheMb, 1024);
  });
});

describe('config: safe by default', () => {
  it('loopback addresses, and only those', () => {
    const table: [string, boolean][] = [
      ['127.0.0.1:7000', true],
      ['127.200.3.4:7000', true],
      ['127.255.255.255:1', true],
      ['localhost:7000', true],
      ['LocalHost:7000', true],
      ['[::1]:7000', true],
      ['[0:0:0:0:0:0:0:1]:7000', true],
      ['[::ffff:127.0.0.1]:7000', true],
      ['0.0.0.0:7000', false],
      ['[::]:7000', false],
      ['10.0.0.1:7000', false],
      ['126.255.255.255:7000', false],
      ['128.0.0.1:7000', false],
      ['[::2]:7000', false],
      ['[::ffff:10.0.0.1]:7000', false],
      ['example.com:7000', false],
      ['localhost.example.com:7000', false],
      ['127.0.0.1.nip.io:7000', false],
      ['not an address', false],
    ];
    assert.deepEqual(
      table.map(([a]) => [a, isLoopbackBind(a)]),
      table,
    );
  });

  it('a public bind needs TLS, tokens or --insecure', () => {
    const tls = { certFile: CERT, keyFile: KEY };
    const decide = (c: Partial<Parameters<typeof publicBindRefusal>[0]>): boolean =>
      publicBindRefusal({ bind: '0.0.0.0:7000', insecure: false, ...c }) === undefined;
    assert.deepEqual(
      [
        decide({}),
        decide({ insecure: true }),
        decide({ tls }),
        decide({ authTokensFile: TOKENS }),
        decide({ bind: '127.0.0.1:7000' }),
        decide({ bind: '[::]:7000' }),
      ],
      [false, true, true, true, true, false],
    );
    const why = publicBindRefusal({ bind: '0.0.0.0:7000', insecure: false })!;
    for (const fix of ['--tls-cert', '--auth-tokens', '--insecure', '127.0.0.1']) assert.ok(why.includes(fix), `names the fix ${fix}: ${why}`);
  });

  it('loadConfig applies it to every source, after the other checks', () => {
    const pub = ['--bind', '0.0.0.0:7000', '--pmem', dir];
    assert.throws(() => loadConfig(pub, {}), /--bind 0\.0\.0\.0:7000 is not a loopback address.*\(from --bind on the command line\)/);
    assert.throws(() => loadConfig(['--pmem', dir], { PMEMPS_BIND: '[::]:7000' }), /not a loopback address.*PMEMPS_BIND in the environment/);
    assert.equal(loadConfig(pub, { PMEMPS_INSECURE: 'true' }).config.insecure, true);
    assert.equal(loadConfig([...pub, '--auth-tokens', TOKENS], {}).config.bind, '0.0.0.0:7000');
    assert.equal(loadConfig([...pub, '--config', file('tls.yaml', YAML.stringify({ 'tls-cert': CERT, 'tls-key': KEY }))], {}).config.tls?.keyFile, KEY);
    assert.throws(() => loadConfig([...pub, '--insecure', '--no-insecure'], {}), /not a loopback address/);
  });
});

describe('config: start-up line and README', () => {
  it('values of keys naming a secret are redacted; file paths are kept', () => {
    const out = redactConfig({
      bind: 'b',
      authToken: 's3cret',
      tls: { keyFile: '/k', certFile: '/c' },
      db: { password: 'p', apiKey: 'k', keys: ['a'] },
      authTokensFile: '/t',
    });
    assert.deepEqual(out, {
      bind: 'b',
      authToken: '[redacted]',
      tls: { keyFile: '/k', certFile: '/c' },
      db: { password: '[redacted]', apiKey: '[redacted]', keys: '[redacted]' },
      authTokensFile: '/t',
    });
  });

  it("README's options table is the one config.ts generates", () => {
    const readme = fs.readFileSync(README, 'utf8');
    assert.ok(
      readme.includes(optionsMarkdown()),
      'README.md is out of date: replace its options table with the output of\n  node -e "console.log(require(\'./dist/server/config\').optionsMarkdown())"',
    );
  });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runPserver(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const child = spawn(process.execPath, [PSERVER, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d));
  child.stderr.on('data', (d: Buffer) => (stderr += d));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

/**
 * Starts pserver, collects stdout lines until one matches `ready`, then sends
 * `signal` (a SIGTERM sent while it starts is a clean stop once it serves).
 */
async function startAndStop(
  args: string[],
  env: Record<string, string>,
  ready: RegExp,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<{ lines: string[]; code: number | null }> {
  const child = spawn(process.execPath, [PSERVER, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const lines: string[] = [];
  try {
    for await (const line of readline.createInterface({ input: child.stdout })) {
      lines.push(line);
      if (ready.test(line)) break;
    }
  } finally {
    child.kill(signal);
  }
  return { lines, code: await exited };
}

describe('config: through the real binary', () => {
  it('a bad value from argv, env or file: exit 2, one message naming it, nothing created', async () => {
    const pmem = path.join(dir, 'untouched');
    const bad = file('bad.yaml', 'max-message-mb: 4096\n');
    const runs: [string[], Record<string, string>, RegExp][] = [
      [
        ['--bind', '127.0.0.1:0', '--pmem', pmem, '--cache-mb', '0'],
        {},
        /^pserver: --cache-mb must be at least 1, got "0" \(from --cache-mb on the command line\)\n$/,
      ],
      [
        ['--bind', '127.0.0.1:0', '--pmem', pmem],
        { PMEMPS_STALL_SECONDS: 'soon' },
        /^pserver: --stall-seconds must be a number, got "soon" \(from PMEMPS_STALL_SECONDS in the environment\)\n$/,
      ],
      [
        ['--bind', '127.0.0.1:0', '--pmem', pmem, '--config', bad],
        {},
        /^pserver: --max-message-mb must be at most 2047, got 4096 \(from key "max-message-mb" of --config .*bad\.yaml\)\n$/,
      ],
      [['--bind', '0.0.0.0:0', '--pmem', pmem], {}, /^pserver: --bind 0\.0\.0\.0:0 is not a loopback address.*--insecure.*\n$/],
      [
        ['--bind', '127.0.0.1:0', '--pmem', pmem, '--pool-layout', 'columnar'],
        {},
        /^pserver: --pool-layout must be one of auto, inplace, logged, got "columnar" \(from --pool-layout on the command line\)\n$/,
      ],
    ];
    for (const [args, env, message] of runs) {
      const r = await runPserver(args, env);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.equal(r.stdout, '', 'nothing logged: the logger is made from a valid configuration only');
      assert.equal(fs.existsSync(pmem), false, 'nothing created in --pmem');
    }
  });

  it('starts from three sources and logs the merged config once, JSON off a terminal', async () => {
    const pmem = path.join(dir, 'p-json');
    const cfg = file('good.yaml', YAML.stringify({ 'cache-mb': 8, 'pool-size': '64M', 'auth-tokens': TOKENS }));
    const { lines, code } = await startAndStop(
      ['--bind', '127.0.0.1:0', '--pmem', pmem, '--config', cfg],
      { PMEM_IS_PMEM_FORCE: '1', PMEMPS_DRAIN_SECONDS: '5' },
      /"msg":"serving"/,
    );
    assert.equal(code, 0);
    const events = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const configs = events.filter((e) => e.msg === 'config');
    assert.equal(configs.length, 1);
    assert.equal(events[0].msg, 'config', 'the first line');
    const c = configs[0].config as Record<string, unknown>;
    assert.deepEqual([c.cacheMb, c.poolSizeMb, c.drainSeconds, c.authTokensFile, c.logFormat], [8, 64, 5, TOKENS, 'json']);
    assert.deepEqual(configs[0].sources, {
      bind: 'argv',
      pmem: 'argv',
      'cache-mb': 'file',
      'pool-size': 'file',
      'auth-tokens': 'file',
      'drain-seconds': 'env',
    });
    assert.ok(!lines.join('\n').includes('tok-7f3a9c'), 'the contents of the token file never reach the log');
  });

  it('--pool-layout auto makes a logged pool off persistent memory and an in-place one on it; a pool keeps its layout', async () => {
    const created = async (pmem: string, env: Record<string, string>, extra: string[] = []): Promise<Record<string, unknown>> => {
      const { lines, code } = await startAndStop(
        ['--bind', '127.0.0.1:0', '--pmem', pmem, '--pool-size', '32M', ...extra],
        { PMEMPS_LOG_FORMAT: 'json', PMEMPS_DRAIN_SECONDS: '5', ...env },
        /"msg":"serving"/,
      );
      assert.equal(code, 0);
      return lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((e) => typeof e.isPmem === 'boolean')!;
    };
    const disk = path.join(dir, 'p-layout-disk');
    assert.deepEqual(await created(disk, { PMEM_IS_PMEM_FORCE: '0' }).then((e) => [e.isPmem, e.layout, e.created]), [false, 'logged', true]);
    const pm = path.join(dir, 'p-layout-pmem');
    assert.deepEqual(await created(pm, { PMEM_IS_PMEM_FORCE: '1' }).then((e) => [e.isPmem, e.layout]), [true, 'inplace']);
    const kept = await created(disk, { PMEM_IS_PMEM_FORCE: '0' }, ['--pool-layout', 'inplace']);
    assert.deepEqual([kept.layout, kept.created], ['logged', false], 'an existing pool keeps the layout it was made with');
  });

  it('--log-level and --log-format make the one logger', async () => {
    const pmem = path.join(dir, 'p-pretty');
    // Without PMEM_IS_PMEM_FORCE the pool is not on persistent memory: a
    // warning, the only line at level warn before serving.
    const { lines, code } = await startAndStop(
      ['--bind', '127.0.0.1:0', '--pmem', pmem, '--pool-size', '32M', '--log-level', 'warn'],
      { PMEM_IS_PMEM_FORCE: '0', PMEMPS_LOG_FORMAT: 'pretty' },
      /persistent memory/,
    );
    // SIGTERM came while it started (the warning comes before "serving"): still a clean stop.
    assert.equal(code, 0, 'a SIGTERM during the start stops cleanly once the server is up');
    assert.equal(lines.length, 1, `only the warning: ${lines.join('\n')}`);
    assert.match(lines[0], /WARN.*the pool is not on persistent memory/);
    assert.throws(() => JSON.parse(lines[0]), 'pretty, not JSON');
  });
});
