#!/usr/bin/env node
// pmemps-check --pmem DIR: the offline full check of a pool. Verifies the
// engine's metadata (as every open does), walks every index slot and row,
// closes, then runs libpmemobj's own pmemobj_check on the file. It leaves
// the pool as it found it (OpenOptions.inspect): a pool a server stopped
// cleanly keeps the server's close record (its exactly-once table and dense
// tensors: closed with an empty one, a retried push was applied again), and
// a pool left by a crash is still one (else the server skipped its restore).
// Exit code 0 when the pool is sound, 1 when a problem was found.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Engine, checkPoolFile } from '../native/engine';

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const i = args.indexOf('--pmem');
  const dir = i >= 0 ? args[i + 1] : args[0];
  if (!dir) {
    process.stderr.write('usage: pmemps-check --pmem DIR\n');
    return 2;
  }
  const file = path.join(dir, 'pmemps.pool');
  if (!fs.existsSync(file)) {
    process.stderr.write(`pmemps-check: no pool in ${dir} (expected ${file})\n`);
    return 1;
  }
  const t0 = Date.now();
  // From the open to the close the pool is marked in use; only close() puts
  // back the mark it was found with. So a signal waits for the close (the
  // walk of the rows is synchronous: it is handled after it), and so does
  // a failure; a SIGKILL or a power loss meanwhile leaves a crash.
  let signalled: string | null = null;
  const hold = (s: string): void => {
    signalled = s;
  };
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const s of signals) process.on(s, hold);
  const engine = Engine.open({ dir, cacheMb: 16, inspect: true });
  const info = engine.openInfo;
  let report: ReturnType<Engine['fullCheck']>;
  let tables: { name: string; dim: number; rows: number }[];
  try {
    report = engine.fullCheck();
    tables = engine.listTables().map((t) => ({ name: t.name, dim: t.dim, rows: t.rows }));
  } finally {
    await engine.close();
    for (const s of signals) process.off(s, hold);
  }
  if (signalled) {
    process.stderr.write(`pmemps-check: stopped by ${signalled}; the pool was closed as it was found\n`);
    return 1;
  }
  const pmemobj = checkPoolFile(file);
  const ok = report.badEpochs === 0 && report.badRecords === 0 && pmemobj.consistent;
  process.stdout.write(
    JSON.stringify(
      {
        ok,
        dir: path.resolve(dir),
        committed: info.committed,
        prepared: info.prepared,
        layout: info.layout,
        replayedRecords: info.replayedRecords,
        replayWrites: info.replayWrites,
        ...report,
        tables,
        pmemobjCheck: pmemobj.message,
        seconds: (Date.now() - t0) / 1000,
      },
      null,
      2,
    ) + '\n',
  );
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`pmemps-check: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
