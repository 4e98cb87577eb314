// The process logger: pino JSON lines on stdout, one object per event, for
// log shippers; on a terminal (or with PMEMPS_LOG_PRETTY=1) the same events
// through pino-pretty, one readable line each. PMEMPS_LOG_PRETTY=0 forces JSON.
import pino from 'pino';
import pinoPretty from 'pino-pretty';

const level = process.env.PMEMPS_LOG_LEVEL ?? 'info';
const pretty = process.env.PMEMPS_LOG_PRETTY !== undefined ? process.env.PMEMPS_LOG_PRETTY === '1' : !!process.stdout.isTTY;

export const log = pretty
  ? pino({ level, base: { pid: process.pid } }, pinoPretty({ colorize: !!process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'hostname', singleLine: true, sync: true }))
  : pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
