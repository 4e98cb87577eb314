// The one definition of pserver's options, and the one place they are read.
//
// Each option comes from, in order of precedence: the command line
// (--cache-mb 4096), the environment (PMEMPS_CACHE_MB=4096), a --config FILE
// (YAML or JSON, `cache-mb: 4096`), or its default. loadConfig merges them
// into one frozen PserverConfig and validates all of it before pserver opens
// anything, so a bad value changes nothing on disk; every error names the
// option and where it came from, so the user knows which of the three to fix.
//
// OPTIONS below also generates `pserver --help` and the README's options
// table (optionsMarkdown; test/config.test.ts keeps the README in sync).
import * as fs from 'node:fs';
import * as net from 'node:net';
import yargs from 'yargs';
import YAML from 'yaml';
import { DEFAULT_SCRATCH_MB, MAX_SCRATCH_MB } from '../native/types';
import { DEFAULT_MAX_MESSAGE_MB } from '../proto/load';
import { DEFAULT_TRANSPORT_LIMITS, type TransportLimits } from './transport-limits';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];
export const POOL_LAYOUTS = ['auto', 'inplace', 'logged'] as const;
export type PoolLayoutOption = (typeof POOL_LAYOUTS)[number];

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  /** Mutual TLS: only clients with a certificate signed by this CA get in. */
  clientCaFile?: string;
}

export interface PserverConfig {
  bind: string;
  pmem: string;
  cacheMb: number;
  scratchMb: number;
  poolSizeMb: number;
  poolLayout: PoolLayoutOption;
  maxMessageMb: number;
  drainSeconds: number;
  limits: TransportLimits;
  logLevel: LogLevel;
  logFormat: LogFormat;
  tls?: TlsFiles;
  authTokensFile?: string;
  insecure: boolean;
  metricsBind?: string;
  /** The --config file the values were merged from, if any. */
  configFile?: string;
}

export type Source = 'argv' | 'env' | 'file' | 'default';

/** A value a user gave that pserver cannot start with; pserver exits with code 2. */
export class ConfigError extends Error {
  constructor(
    message: string,
    readonly option?: string,
    readonly source?: Source,
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Kind = 'string' | 'number' | 'integer' | 'boolean';

interface OptionDef {
  name: string;
  kind: Kind;
  /** Shown after the flag in help and README (`--bind HOST:PORT`). */
  arg?: string;
  /** The value when no source sets it; undefined: unset (or required). */
  default?: string | number | boolean;
  /** README's default column when `default` does not say it. */
  defaultText?: string;
  required?: boolean;
  choices?: readonly string[];
  /** Inclusive bounds of a number. */
  min?: number;
  max?: number;
  /** min is exclusive (a positive number). */
  above?: boolean;
  /** Must name an existing readable file (its contents are read by the module that uses it). */
  file?: boolean;
  hostPort?: boolean;
  describe: string;
}

const D = DEFAULT_TRANSPORT_LIMITS;
// A Node timer longer than 2^31-1 ms fires at once, so a longer time would
// act as the shortest one instead.
const TIMER_MAX_SECONDS = Math.floor((2 ** 31 - 1) / 1000);
// A budget in MiB past 16 TiB is a typo, not a machine.
const MB_MAX = 16 * 2 ** 20;

export const OPTIONS: readonly OptionDef[] = [
  {
    name: 'bind',
    kind: 'string',
    arg: 'HOST:PORT',
    required: true,
    hostPort: true,
    describe: 'address to serve on; a non-loopback host needs TLS or tokens, or `--insecure`',
  },
  {
    name: 'pmem',
    kind: 'string',
    arg: 'DIR',
    required: true,
    describe: 'directory of the pool (`DIR/pmemps.pool`, locked while open): a DAX mount, CXL memory, /dev/shm or any filesystem',
  },
  { name: 'cache-mb', kind: 'number', arg: 'N', default: 1024, min: 1, max: MB_MAX, describe: 'hard DRAM budget of the row cache, MiB' },
  {
    name: 'scratch-mb',
    kind: 'integer',
    arg: 'N',
    default: DEFAULT_SCRATCH_MB,
    min: 1,
    max: MAX_SCRATCH_MB,
    describe:
      'DRAM budget of the working arrays of pulls and pushes too large for those each engine thread keeps (8 MiB), MiB: such a call waits until it fits beside the others; one larger than the budget runs alone',
  },
  {
    name: 'pool-size',
    kind: 'string',
    arg: 'S',
    default: '16G',
    describe: 'size when the pool is created (`512M`, `64G`; a bare number is MiB; 16M to 1P); ignored for an existing pool',
  },
  {
    name: 'pool-layout',
    kind: 'string',
    arg: 'L',
    default: 'auto',
    choices: POOL_LAYOUTS,
    describe:
      'row layout of a pool being created: `inplace` (versions in the row records; fastest on persistent memory), `logged` (versions appended to a log: sequential writes for SSDs and other page-cached files) or `auto` (inplace on persistent memory, else logged); an existing pool keeps its own',
  },
  {
    name: 'max-message-mb',
    kind: 'number',
    arg: 'N',
    default: DEFAULT_MAX_MESSAGE_MB,
    min: 1,
    max: 2047,
    describe: 'largest request or response, MiB (a 65,536-key x dim-128 batch is 32 MiB; the SDK splits larger batches)',
  },
  {
    name: 'drain-seconds',
    kind: 'number',
    arg: 'N',
    default: 30,
    min: 0,
    max: TIMER_MAX_SECONDS,
    describe: 'on SIGTERM, how long calls in flight may take before they are cancelled',
  },
  {
    name: 'max-connections',
    kind: 'integer',
    arg: 'N',
    default: D.maxConnections,
    min: 1,
    max: 2 ** 31 - 1,
    describe: 'connections served at once; more are closed on accept',
  },
  {
    name: 'max-streams',
    kind: 'integer',
    arg: 'N',
    default: D.maxStreams,
    min: 1,
    max: 2 ** 31 - 1,
    describe: 'concurrent calls per connection (HTTP/2 `MAX_CONCURRENT_STREAMS`; the SDK uses up to 256 pushes plus pull chunks per server)',
  },
  {
    name: 'idle-seconds',
    kind: 'number',
    arg: 'N',
    default: D.idleSeconds,
    min: 0,
    above: true,
    max: TIMER_MAX_SECONDS,
    describe: 'a connection without a call for this long is closed (GOAWAY; gRPC clients reconnect on their next call)',
  },
  {
    name: 'reply-mb-per-connection',
    kind: 'number',
    arg: 'N',
    default: D.replyMbPerConnection,
    min: 0,
    above: true,
    max: MB_MAX,
    describe: 'reply bytes one connection may have unsent, MiB; its further pulls wait (one reply always goes, whatever its size)',
  },
  {
    name: 'reply-mb',
    kind: 'number',
    arg: 'N',
    default: D.replyMb,
    min: 0,
    above: true,
    max: MB_MAX,
    describe: 'reply bytes all connections together may have unsent, MiB; further pulls wait',
  },
  {
    name: 'stall-seconds',
    kind: 'number',
    arg: 'N',
    default: D.stallSeconds,
    min: 0,
    above: true,
    max: TIMER_MAX_SECONDS,
    describe:
      'a connection whose unsent replies make no progress for this long is closed (`ENHANCE_YOUR_CALM`); a pull waits at most twice this long for reply budget',
  },
  {
    name: 'request-seconds',
    kind: 'number',
    arg: 'N',
    default: D.requestSeconds,
    min: 0,
    above: true,
    max: TIMER_MAX_SECONDS,
    describe: 'a request whose body has not fully arrived after this long is answered `DEADLINE_EXCEEDED` and its stream reset',
  },
  {
    name: 'recv-mb-per-connection',
    kind: 'number',
    arg: 'N',
    default: D.recvMbPerConnection,
    min: 0,
    above: true,
    max: MB_MAX,
    describe:
      'bytes of requests one connection has the server hold (arriving, or arrived and not yet answered), MiB (above `--max-message-mb`); over it its newest requests still arriving are refused `UNAVAILABLE` (never processed; the SDK retries) and reset',
  },
  {
    name: 'recv-mb',
    kind: 'number',
    arg: 'N',
    default: D.recvMb,
    min: 0,
    above: true,
    max: MB_MAX,
    describe:
      'bytes of requests all connections together have the server hold (arriving, or arrived and not yet answered), MiB; over it the newest requests still arriving of the connection holding the most are refused `UNAVAILABLE` and reset',
  },
  {
    name: 'tls-cert',
    kind: 'string',
    arg: 'FILE',
    file: true,
    describe: 'PEM certificate chain of the gRPC port; with `--tls-key` the port speaks TLS only ([Security](#security))',
  },
  {
    name: 'tls-key',
    kind: 'string',
    arg: 'FILE',
    file: true,
    describe: 'PEM private key of `--tls-cert`, unencrypted; checked against the certificate at start',
  },
  {
    name: 'tls-client-ca',
    kind: 'string',
    arg: 'FILE',
    file: true,
    describe: 'mutual TLS: only clients with a certificate signed by this PEM CA get in (needs `--tls-cert`)',
  },
  {
    name: 'auth-tokens',
    kind: 'string',
    arg: 'FILE',
    file: true,
    describe: 'tokens and roles, one `token role [name]` per line; calls must carry `authorization: Bearer <token>`; re-read on SIGHUP',
  },
  {
    name: 'insecure',
    kind: 'boolean',
    default: false,
    describe: 'allow a non-loopback `--bind` without TLS or tokens (anyone who reaches the port can read and change everything)',
  },
  {
    name: 'metrics-bind',
    kind: 'string',
    arg: 'HOST:PORT',
    hostPort: true,
    defaultText: 'off',
    describe:
      'serve Prometheus metrics at `http://HOST:PORT/metrics` ([Metrics](#metrics)); port 0 takes a free port, logged as `metricsPort`; a port in use stops the start (exit 2, nothing opened)',
  },
  { name: 'log-level', kind: 'string', arg: 'L', default: 'info', choices: LOG_LEVELS, describe: 'least level logged' },
  {
    name: 'log-format',
    kind: 'string',
    arg: 'F',
    defaultText: 'pretty on a terminal, else json',
    choices: LOG_FORMATS,
    describe: 'json: pino JSON lines on stdout, one object per event, for log shippers; pretty: one readable line per event',
  },
];

const CONFIG_OPTION = 'config';
// A configuration is a screenful of keys; anything much larger is the wrong file.
const CONFIG_FILE_MAX_BYTES = 1 << 20;

export const envName = (option: string): string => `PMEMPS_${option.toUpperCase().replace(/-/g, '_')}`;

function where(source: Source, option: string, file?: string): string {
  switch (source) {
    case 'argv':
      return `--${option} on the command line`;
    case 'env':
      return `${envName(option)} in the environment`;
    case 'file':
      return `key "${option}" of --config ${file}`;
    default:
      return `the default of --${option}`;
  }
}

interface Raw {
  value: unknown;
  source: Source;
}

/** Turns one raw value (a string from argv or env, anything YAML gives from a file) into the option's type. */
function coerce(def: OptionDef, raw: Raw, file: string | undefined): string | number | boolean {
  const bad = (what: string): never => {
    throw new ConfigError(`--${def.name} ${what} (from ${where(raw.source, def.name, file)})`, def.name, raw.source);
  };
  const shown = typeof raw.value === 'string' ? `"${raw.value}"` : JSON.stringify(raw.value);
  const v = raw.value;
  if (typeof v === 'string' && v.trim() === '') bad('is empty: give a value or leave it unset');
  switch (def.kind) {
    case 'boolean':
      if (typeof v === 'boolean') return v;
      if (typeof v === 'string' && /^(1|true|yes)$/i.test(v)) return true;
      if (typeof v === 'string' && /^(0|false|no)$/i.test(v)) return false;
      return bad(`must be true or false, got ${shown}`);
    case 'number':
    case 'integer': {
      let n = NaN;
      if (typeof v === 'number') n = v;
      else if (typeof v === 'string' && /^\s*[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?\s*$/i.test(v)) n = Number(v);
      if (!Number.isFinite(n)) bad(`must be a number, got ${shown}`);
      if (def.kind === 'integer' && !Number.isInteger(n)) bad(`must be a whole number, got ${shown}`);
      const lo = def.min ?? -Infinity;
      const hi = def.max ?? Infinity;
      if (def.above ? !(n > lo) : !(n >= lo)) bad(def.above ? `must be above ${lo}, got ${shown}` : `must be at least ${lo}, got ${shown}`);
      if (!(n <= hi)) bad(`must be at most ${hi}, got ${shown}`);
      return n;
    }
    default: {
      // YAML reads `pool-size: 512` as a number; the option means the same text.
      const s = typeof v === 'number' && Number.isFinite(v) ? String(v) : v;
      if (typeof s !== 'string') return bad(`must be a string, got ${shown}`);
      if (def.choices && !def.choices.includes(s)) bad(`must be one of ${def.choices.join(', ')}, got ${shown}`);
      if (def.hostPort) {
        const why = hostPortProblem(s);
        if (why) bad(`must be HOST:PORT, e.g. 127.0.0.1:7000 or [::1]:7000 (${why}), got ${shown}`);
      }
      if (def.file) {
        const why = fileProblem(s);
        if (why) bad(`names ${s}, which ${why}`);
      }
      return s;
    }
  }
}

/** Splits HOST:PORT (an IPv6 host in brackets); undefined if it is not one. */
export function splitHostPort(s: string): { host: string; port: number } | undefined {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(s) ?? /^([^:[\]\s]+):(\d{1,5})$/.exec(s);
  if (!m) return undefined;
  return { host: m[1], port: Number(m[2]) };
}

function hostPortProblem(s: string): string | undefined {
  const hp = splitHostPort(s);
  if (!hp) return 'a host, a colon and a port number; an IPv6 host in brackets';
  if (hp.port > 65535) return 'the port is 0..65535';
  if (s.startsWith('[') && net.isIPv6(hp.host) === false) return `${hp.host} is not an IPv6 address`;
  return undefined;
}

function fileProblem(p: string): string | undefined {
  const unreadable = (e: unknown): string => {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return 'does not exist';
    if (code === 'EACCES' || code === 'EPERM') return 'this user may not read';
    return `cannot be read (${(e as Error).message})`;
  };
  try {
    if (!fs.statSync(p).isFile()) return 'is not a file';
    fs.accessSync(p, fs.constants.R_OK);
  } catch (e) {
    return unreadable(e);
  }
  return undefined;
}

/** Pool size in MiB from 512M, 64G, 1T or a bare number of MiB. */
function parseSize(s: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)([KMGTP]?)i?B?$/i.exec(s.trim());
  if (!m) return undefined;
  const mul: Record<string, number> = { '': 1, K: 1 / 1024, M: 1, G: 1024, T: 2 ** 20, P: 2 ** 30 };
  return Number(m[1]) * mul[m[2].toUpperCase()];
}

function readConfigFile(file: string, source: Source): Record<string, unknown> {
  const from = `(--config ${file}, from ${where(source, CONFIG_OPTION)})`;
  const why = fileProblem(file);
  if (why) throw new ConfigError(`the config file ${file} ${why} ${from}`, CONFIG_OPTION, source);
  if (fs.statSync(file).size > CONFIG_FILE_MAX_BYTES)
    throw new ConfigError(`the config file ${file} is over ${CONFIG_FILE_MAX_BYTES} bytes: is it the right file? ${from}`, CONFIG_OPTION, source);
  let doc: unknown;
  try {
    // JSON is YAML too; YAML refuses duplicate keys, which JSON.parse would let the last one win.
    doc = YAML.parse(fs.readFileSync(file, 'utf8'), { prettyErrors: true });
  } catch (e) {
    throw new ConfigError(`the config file ${file} is not valid YAML or JSON: ${(e as Error).message}`, CONFIG_OPTION, 'file');
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc))
    throw new ConfigError(
      `the config file ${file} must be a mapping of option names to values (e.g. "cache-mb: 4096"), not a ${Array.isArray(doc) ? 'list' : typeof doc}`,
      CONFIG_OPTION,
      'file',
    );
  const known = new Set(OPTIONS.map((o) => o.name));
  const unknown = Object.keys(doc).filter((k) => !known.has(k));
  if (unknown.length)
    throw new ConfigError(
      `the config file ${file} has unknown keys: ${unknown.join(', ')} (keys are the option names without the leading --, e.g. cache-mb; see pserver --help)`,
      unknown[0],
      'file',
    );
  return doc as Record<string, unknown>;
}

function parseArgv(argv: string[], version: string | undefined): Record<string, unknown> {
  let y = yargs(argv)
    .scriptName('pserver')
    .usage(
      '$0 --bind HOST:PORT --pmem DIR [options]\n\nServes one shard of a pmemps cluster from a libpmemobj pool in DIR.\n' +
        'Every option can also be set as PMEMPS_<OPTION> (e.g. PMEMPS_CACHE_MB=4096) or as a key of --config FILE;\n' +
        'the command line wins over the environment, which wins over the file.',
    )
    // Last of a repeated flag wins, as in most tools; no camelCase or dotted
    // aliases, so the names are exactly those of the table.
    // Values stay strings (coerce() reads every source alike).
    .parserConfiguration({
      'duplicate-arguments-array': false,
      'camel-case-expansion': false,
      'dot-notation': false,
      'parse-numbers': false,
      'parse-positional-numbers': false,
    })
    .option(CONFIG_OPTION, { type: 'string', requiresArg: true, describe: 'YAML or JSON file of options (keys: the option names, e.g. cache-mb: 4096)' });
  for (const o of OPTIONS) {
    y = y.option(o.name, {
      ...(o.kind === 'boolean' ? { type: 'boolean' as const } : {}),
      requiresArg: o.kind !== 'boolean',
      describe: o.describe.replace(/`/g, '') + (o.choices ? ` (${o.choices.join('|')})` : ''),
      // Defaults are applied after the merge, not by yargs, so that an
      // unset flag does not hide the environment or the file.
      defaultDescription: o.default !== undefined ? String(o.default) : o.defaultText,
    });
  }
  y = version ? y.version(version) : y.version(false);
  return y
    .strict()
    .help()
    .fail((msg, err) => {
      throw new ConfigError(`${msg ?? err?.message} (on the command line; see pserver --help)`, undefined, 'argv');
    })
    .parseSync() as Record<string, unknown>;
}

/** Where each option's value came from, for the start-up log line. */
export type ConfigSources = Record<string, Source>;

export interface LoadedConfig {
  config: PserverConfig;
  sources: ConfigSources;
}

/**
 * Reads argv, the PMEMPS_* variables of `env` (only those of OPTIONS: other
 * PMEMPS_ variables, such as test failpoints, are not options) and the
 * --config file; validates everything; throws ConfigError on the first
 * problem. `isTTY` decides the default log format.
 */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env, opts: { isTTY?: boolean; version?: string } = {}): LoadedConfig {
  const args = parseArgv(argv, opts.version);
  let configFile: string | undefined;
  let fileValues: Record<string, unknown> = {};
  const cfgRaw: Raw | undefined =
    args[CONFIG_OPTION] !== undefined
      ? { value: args[CONFIG_OPTION], source: 'argv' }
      : env[envName(CONFIG_OPTION)] !== undefined
        ? { value: env[envName(CONFIG_OPTION)], source: 'env' }
        : undefined;
  if (cfgRaw) {
    configFile = String(cfgRaw.value);
    if (configFile.trim() === '')
      throw new ConfigError(`--config is empty (from ${where(cfgRaw.source, CONFIG_OPTION)}): give a file or leave it unset`, CONFIG_OPTION, cfgRaw.source);
    fileValues = readConfigFile(configFile, cfgRaw.source);
  }

  const v: Record<string, string | number | boolean | undefined> = {};
  const sources: ConfigSources = {};
  for (const o of OPTIONS) {
    const e = env[envName(o.name)];
    const raw: Raw | undefined =
      args[o.name] !== undefined
        ? { value: args[o.name], source: 'argv' }
        : e !== undefined
          ? { value: e, source: 'env' }
          : o.name in fileValues
            ? { value: fileValues[o.name], source: 'file' }
            : undefined;
    if (raw) {
      v[o.name] = coerce(o, raw, configFile);
      sources[o.name] = raw.source;
    } else if (o.required) {
      throw new ConfigError(`--${o.name} ${o.arg} is required (or ${envName(o.name)}, or "${o.name}:" in a --config file)`, o.name);
    } else {
      v[o.name] = o.default;
      sources[o.name] = 'default';
    }
  }

  const fail = (option: string, msg: string): never => {
    throw new ConfigError(`${msg} (from ${where(sources[option], option, configFile)})`, option, sources[option]);
  };
  const num = (name: string): number => v[name] as number;
  const str = (name: string): string | undefined => v[name] as string | undefined;

  const poolSizeMb = parseSize(str('pool-size')!);
  if (poolSizeMb === undefined) fail('pool-size', `--pool-size must look like 512M or 64G, got "${str('pool-size')}"`);
  if (!(poolSizeMb! >= 16 && poolSizeMb! <= 2 ** 30)) fail('pool-size', `--pool-size must be 16M to 1P, got "${str('pool-size')}"`);
  // A request of the largest size (plus its 5-byte gRPC header) must be able to arrive.
  if (!(num('recv-mb-per-connection') > num('max-message-mb')))
    fail(
      'recv-mb-per-connection',
      `--recv-mb-per-connection (${num('recv-mb-per-connection')}) must be above --max-message-mb (${num('max-message-mb')}), or no request of the largest size could arrive`,
    );
  if (!(num('recv-mb') >= num('recv-mb-per-connection')))
    fail('recv-mb', `--recv-mb (${num('recv-mb')}) must be at least --recv-mb-per-connection (${num('recv-mb-per-connection')})`);
  const cert = str('tls-cert');
  const key = str('tls-key');
  const ca = str('tls-client-ca');
  if (ca !== undefined && cert === undefined)
    fail('tls-client-ca', '--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS with client certificates');
  if (cert !== undefined && key === undefined) fail('tls-cert', '--tls-cert needs --tls-key (the private key of the certificate)');
  if (key !== undefined && cert === undefined) fail('tls-key', '--tls-key needs --tls-cert (the certificate of the key)');

  const config: PserverConfig = {
    bind: str('bind')!,
    pmem: str('pmem')!,
    cacheMb: num('cache-mb'),
    scratchMb: num('scratch-mb'),
    poolSizeMb: poolSizeMb!,
    poolLayout: str('pool-layout') as PoolLayoutOption,
    maxMessageMb: num('max-message-mb'),
    drainSeconds: num('drain-seconds'),
    limits: {
      maxConnections: num('max-connections'),
      maxStreams: num('max-streams'),
      idleSeconds: num('idle-seconds'),
      replyMbPerConnection: num('reply-mb-per-connection'),
      replyMb: num('reply-mb'),
      stallSeconds: num('stall-seconds'),
      requestSeconds: num('request-seconds'),
      recvMbPerConnection: num('recv-mb-per-connection'),
      recvMb: num('recv-mb'),
    },
    logLevel: str('log-level') as LogLevel,
    logFormat: (str('log-format') as LogFormat | undefined) ?? (opts.isTTY ? 'pretty' : 'json'),
    insecure: v.insecure as boolean,
  };
  if (cert !== undefined) config.tls = ca !== undefined ? { certFile: cert, keyFile: key!, clientCaFile: ca } : { certFile: cert, keyFile: key! };
  if (str('auth-tokens') !== undefined) config.authTokensFile = str('auth-tokens');
  if (str('metrics-bind') !== undefined) config.metricsBind = str('metrics-bind');
  if (configFile !== undefined) config.configFile = configFile;

  const refusal = publicBindRefusal(config);
  if (refusal) fail('bind', refusal);
  return { config: deepFreeze(config), sources: Object.freeze(sources) };
}

const LOOPBACK = new net.BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * True if HOST:PORT can only be reached from this machine: 127.0.0.0/8, ::1
 * (also IPv4-mapped) or "localhost". Any other name counts as public: what
 * it resolves to can change after the check.
 */
export function isLoopbackBind(bind: string): boolean {
  const hp = splitHostPort(bind);
  if (!hp) return false;
  const host = hp.host.toLowerCase();
  if (host === 'localhost') return true;
  const family = net.isIP(host);
  if (family === 0) return false;
  return LOOPBACK.check(host, family === 4 ? 'ipv4' : 'ipv6');
}

/**
 * The safe default: why pserver must not start with this bind, or undefined
 * if it may. A port anyone can reach must check who calls (TLS or tokens),
 * unless the operator says --insecure (e.g. on a private network).
 */
export function publicBindRefusal(c: Pick<PserverConfig, 'bind' | 'tls' | 'authTokensFile' | 'insecure'>): string | undefined {
  if (c.insecure || c.tls || c.authTokensFile !== undefined || isLoopbackBind(c.bind)) return undefined;
  return (
    `--bind ${c.bind} is not a loopback address, and without TLS or tokens anyone who reaches it could read, change, roll back or drop every table. ` +
    'Give --tls-cert and --tls-key (add --tls-client-ca for client certificates) and/or --auth-tokens FILE; ' +
    'or, on a network only trusted machines reach, --insecure; or bind 127.0.0.1'
  );
}

// Keys that name a secret's value; a key ending in "File" is a path, which is
// not secret (the file's contents never enter the config).
const SECRET_KEY = /token|key|password|secret/i;

/** A copy for the start-up log: values of keys that name a secret replaced by "[redacted]". */
export function redactConfig(value: unknown, key = ''): unknown {
  if (key && SECRET_KEY.test(key) && !/file$/i.test(key)) return '[redacted]';
  if (Array.isArray(value)) return value.map((x) => redactConfig(x));
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, x]) => [k, redactConfig(x, k)]));
  return value;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const x of Object.values(o)) deepFreeze(x);
    Object.freeze(o);
  }
  return o;
}

/** The README's options table: one row per option, from OPTIONS. */
export function optionsMarkdown(): string {
  const rows = [
    '| option | env | default | meaning |',
    '|---|---|---|---|',
    `| \`--config FILE\` | \`${envName(CONFIG_OPTION)}\` | none | YAML or JSON file of options; keys are the option names (\`cache-mb: 4096\`) |`,
  ];
  for (const o of OPTIONS) {
    const flag = o.arg ? `--${o.name} ${o.arg}` : `--${o.name}`;
    const def = o.required ? 'required' : (o.defaultText ?? (o.default === undefined ? 'none' : String(o.default)));
    const meaning = o.describe + (o.choices ? ` (${o.choices.map((c) => `\`${c}\``).join(', ')})` : '');
    rows.push(`| \`${flag}\` | \`${envName(o.name)}\` | ${def} | ${meaning} |`);
  }
  return rows.join('\n');
}
