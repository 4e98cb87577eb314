// Pool bytes per row, by dim and optimizer: the layout's arithmetic, then
// (with --measure) what a real pserver reports in Status.pool_used_bytes
// after rows are pushed through the SDK. docs/operations.md quotes both.
//
//   node dist/scripts/pool-sizing.js              # the table from the layout (instant)
//   node dist/scripts/pool-sizing.js --measure    # plus a real pserver: ~20 s, a 4 GiB pool file in the temp dir
//
// The arithmetic restates native/src/layout.h (row_bytes_for), optimizer.cc
// (state_blocks) and engine_data.cc (init_geometry): if those change, --measure
// shows the disagreement in its "model" column.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LocalCluster } from '../examples/local-cluster';
import { PsClient } from '../worker';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 256 * KiB; // Pool::kChunk
const HUGE_HEADER = 16; // Pool::kHugeHeader
const FULL_SLAB = 32 * CHUNK - HUGE_HEADER; // slabs grow 1, 2 .. 32 chunks, then stay at 32

interface Opt {
  label: string;
  spec: Record<string, number | boolean | string>;
  blocks: number; // state blocks of dim floats (optimizer.cc, state_blocks)
}

const OPTS: Opt[] = [
  { label: 'sgd', spec: { type: 'sgd', lr: 0.01 }, blocks: 0 },
  { label: 'sgd+momentum', spec: { type: 'sgd', lr: 0.01, momentum: 0.9 }, blocks: 1 },
  { label: 'adagrad', spec: { type: 'adagrad', lr: 0.05 }, blocks: 1 },
  { label: 'rmsprop', spec: { type: 'rmsprop', lr: 0.01 }, blocks: 1 },
  { label: 'adam', spec: { type: 'adam', lr: 0.001 }, blocks: 2 },
  { label: 'ftrl', spec: { type: 'ftrl', lr: 0.05 }, blocks: 2 },
  { label: 'rmsprop+mom+centered', spec: { type: 'rmsprop', lr: 0.01, momentum: 0.9, centered: true }, blocks: 3 },
];
const DIMS = [8, 16, 32, 64, 128, 256, 512, 1024];

/** The row record: key, then 3 slots of {epoch, step, weights + state} padded to 8 bytes. */
export function rowBytes(dim: number, blocks: number): number {
  const slot = (8 + 4 * dim * (1 + blocks) + 7) & ~7;
  return 8 + 3 * slot;
}

/** Row bytes once the tail of each 8 MiB slab that holds no whole row is counted. */
function slabbedRowBytes(row: number): number {
  return (FULL_SLAB + HUGE_HEADER) / Math.floor(FULL_SLAB / row);
}

function pad(s: string | number, n: number): string {
  return String(s).padStart(n);
}

function printModel(): void {
  console.log('Pool bytes per row from the layout (row record, 8 MiB slabs; plus the index: about 37 B per key, measured below)\n');
  console.log(pad('optimizer', 22) + DIMS.map((d) => pad(`dim ${d}`, 9)).join(''));
  for (const o of OPTS) console.log(pad(o.label, 22) + DIMS.map((d) => pad(Math.round(slabbedRowBytes(rowBytes(d, o.blocks))), 9)).join(''));
}

interface Measured {
  label: string;
  dim: number;
  rows: number;
  perRow: number;
  model: number;
}

async function pushRows(ps: PsClient, table: string, dim: number, first: number, n: number): Promise<void> {
  const batch = Math.max(256, Math.min(16_384, Math.floor((8 * MiB) / (4 * dim))));
  const inFlight: Promise<void>[] = [];
  for (let k = 0; k < n; k += batch) {
    const m = Math.min(batch, n - k);
    const keys = new BigUint64Array(m);
    for (let i = 0; i < m; i++) keys[i] = BigInt(first + k + i);
    inFlight.push(ps.push(table, keys, new Float32Array(m * dim).fill(0.01)));
    if (inFlight.length >= 4) await inFlight.shift();
  }
  await Promise.all(inFlight);
}

async function used(ps: PsClient): Promise<number> {
  return (await ps.status())[0].pool_used_bytes;
}

async function measure(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-sizing-'));
  let cluster: LocalCluster | null = null;
  let ps: PsClient | null = null;
  try {
    cluster = await LocalCluster.start({ dir: path.join(dir, 'a'), shards: 1, poolSize: '4G', cacheMb: 256, logLevel: 'warn' });
    ps = await PsClient.connect({ endpoints: cluster.endpoints });
    const out: Measured[] = [];
    // Enough rows that the index and the slabs are past their first, partly
    // empty allocations, within ~256 MiB per table.
    const cases: [Opt, number][] = [];
    for (const label of ['sgd', 'adagrad', 'adam']) for (const d of [8, 64, 256, 1024]) cases.push([OPTS.find((o) => o.label === label)!, d]);
    for (const [o, dim] of cases) {
      const model = rowBytes(dim, o.blocks);
      const rows = Math.min(200_000, Math.floor((256 * MiB) / model));
      const name = `t_${o.label}_${dim}`.replace(/[^a-z0-9_]/g, '_');
      const before = await used(ps);
      await ps.createTable({ name, dim, seed: 1, optimizer: o.spec as any, initializer: { type: 'zeros' } } as any);
      await pushRows(ps, name, dim, 1, rows);
      const after = await used(ps);
      out.push({ label: o.label, dim, rows, perRow: (after - before) / rows, model });
    }
    console.log('\nMeasured with a real pserver (Status.pool_used_bytes after creating the table and pushing N new rows, per row)\n');
    console.log(`${pad('optimizer', 10)}${pad('dim', 6)}${pad('rows N', 9)}${pad('row record', 12)}${pad('measured/row', 14)}${pad('overhead', 10)}`);
    for (const m of out)
      console.log(`${pad(m.label, 10)}${pad(m.dim, 6)}${pad(m.rows, 9)}${pad(m.model, 12)}${pad(m.perRow.toFixed(1), 14)}${pad(`${(((m.perRow - m.model) / m.model) * 100).toFixed(1)}%`, 10)}`);

    // The index alone: a table of tiny rows and a million keys.
    const before = await used(ps);
    await ps.createTable({ name: 'index_probe', dim: 1, seed: 1, optimizer: { type: 'sgd', lr: 0.01 }, initializer: { type: 'zeros' } } as any);
    const n = 1_000_000;
    await pushRows(ps, 'index_probe', 1, 1, n);
    const perKey = (await used(ps)) - before;
    const model = slabbedRowBytes(rowBytes(1, 0));
    console.log(`\nIndex: ${n} keys of dim 1 / sgd (row record ${rowBytes(1, 0)} B): ${(perKey / n).toFixed(1)} B per key, of which index ~${(perKey / n - model).toFixed(1)} B`);
    ps.close();
    ps = null;
    await cluster.stop();
    cluster = null;

    // Where a pool stops: fill a small one until the first RESOURCE_EXHAUSTED.
    cluster = await LocalCluster.start({ dir: path.join(dir, 'b'), shards: 1, poolSize: '256M', cacheMb: 64, logLevel: 'warn' });
    ps = await PsClient.connect({ endpoints: cluster.endpoints });
    await ps.createTable({ name: 'fill', dim: 64, seed: 1, optimizer: { type: 'adagrad', lr: 0.05 }, initializer: { type: 'zeros' } } as any);
    let rows = 0;
    let refusal = '';
    for (;;) {
      try {
        await pushRows(ps, 'fill', 64, rows + 1, 1024);
        rows += 1024;
      } catch (e) {
        refusal = (e as Error).message;
        break;
      }
    }
    const st = (await ps.status())[0];
    console.log(`\nFull pool (256M, dim 64 / adagrad, batches of 1,024 new rows): ${rows} rows held; pool_used_bytes ${st.pool_used_bytes} of pool_bytes ${st.pool_bytes} (${((st.pool_used_bytes / st.pool_bytes) * 100).toFixed(1)}%)`);
    console.log(`  refusal: ${refusal}`);
  } finally {
    ps?.close();
    if (cluster) await cluster.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  printModel();
  if (process.argv.includes('--measure')) await measure();
}

if (require.main === module)
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
