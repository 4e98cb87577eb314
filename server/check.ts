#!/usr/bin/env node
// pmemps-check --pmem DIR: the offline full check of a pool. Verifies the
// engine's metadata (as every open does), walks every index slot and row,
// closes cleanly, then runs libpmemobj's own pmemobj_check on the file.
// Exit code 0 when the pool is sound, 1 when a problem was found.
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
  const t0 = Date.now();
  const engine = Engine.open({ dir, cacheMb: 16 });
  const info = engine.openInfo;
  const report = engine.fullCheck();
  const tables = engine.listTables().map((t) => ({ name: t.name, dim: t.dim, rows: t.rows }));
  await engine.close();
  const file = checkPoolFile(path.join(dir, 'pmemps.pool'));
  const ok = report.badEpochs === 0 && report.badRecords === 0 && file.consistent;
  process.stdout.write(
    JSON.stringify(
      {
        ok,
        dir: path.resolve(dir),
        committed: info.committed,
        prepared: info.prepared,
        layout: info.layout,
        ...report,
        tables,
        pmemobjCheck: file.message,
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
