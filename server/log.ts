// The process logger: pino JSON lines on stdout, one object per event, for
// log shippers; or through pino-pretty, one readable line per event.
//
// Every module imports `log` when it loads, before pserver has read its
// configuration, so the instance behind the export is replaced once by
// initLog(config) rather than configured in place: TypeScript's CommonJS
// output reads `log_1.log` at each use, so every module logs through the new
// instance from then on, and there is one place where a logger is made.
// Until then (and in programs that never call initLog: tests, benchmarks,
// the demo) the logger logs info and above, pretty on a terminal; it reads
// no environment, so the configuration is the only way to change it.
import pino, { type Logger } from 'pino';
import pinoPretty from 'pino-pretty';
import type { LogFormat, LogLevel } from './config';

function makeLogger(level: LogLevel, format: LogFormat): Logger {
  return format === 'pretty'
    ? pino(
        { level, base: { pid: process.pid } },
        pinoPretty({ colorize: !!process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'hostname', singleLine: true, sync: true }),
      )
    : pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}

export let log: Logger = makeLogger('info', process.stdout.isTTY ? 'pretty' : 'json');

/** Makes the process logger from the configuration; call once, before anything logs. */
export function initLog(c: { logLevel: LogLevel; logFormat: LogFormat }): Logger {
  log = makeLogger(c.logLevel, c.logFormat);
  return log;
}
