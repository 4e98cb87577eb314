// The process logger: pino JSON lines; set PMEMPS_LOG_PRETTY=1 (or run on a
// terminal) for a compact human-readable form without extra dependencies.
import pino from 'pino';

const level = process.env.PMEMPS_LOG_LEVEL ?? 'info';

export const log = pino({
  level,
  base: { pid: process.pid },
  timestamp: pino.stdTimeFunctions.isoTime,
});
