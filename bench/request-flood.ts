// The memory a pserver holds under a flood of large requests that never
// finish (BENCHMARKS.md, "A flood of large requests"): the server's highest
// RSS above its idle RSS while N raw HTTP/2 connections each send S requests
// that announce a message just under --max-message-mb and send M MiB of it.
//
//   npm run build && node dist/bench/request-flood.js --connections 64 --streams 4 --mib 30 [--recv-mb 1024] [--runs 1]
//
// The server runs with its defaults but --request-seconds (6) and the
// receive budgets given; how each stream ended (gRPC status / HTTP/2 reset
// code) is counted. The client is one process: on a 2-core machine it
// shares the cores with the server, which bounds the flood's rate.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { LocalCluster } from '../examples/local-cluster';
import { PULL_PATH, RawSession, rssMiB, type StreamEnd, unfinishedFrame, within } from '../test/abuse.lib';

const args = yargs(hideBin(process.argv))
  .scriptName('request-flood')
  .option('connections', { type: 'number', default: 64 })
  .option('streams', { type: 'number', default: 4, describe: 'requests per connection' })
  .option('mib', { type: 'number', default: 30, describe: 'MiB each request sends (never all of its message)' })
  .option('recv-mb', { type: 'number', default: 1024, describe: "the server's --recv-mb" })
  .option('recv-mb-per-connection', { type: 'number', default: 256, describe: "the server's --recv-mb-per-connection" })
  .option('max-message-mb', { type: 'number', default: 64, describe: "the server's --max-message-mb" })
  .option('request-seconds', { type: 'number', default: 6, describe: "the server's --request-seconds" })
  .option('runs', { type: 'number', default: 1 })
  .strict()
  .parseSync();

async function run(): Promise<{ idle: number; peak: number; ends: Record<string, number> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pmemps-flood-'));
  const cluster = await LocalCluster.start({
    dir,
    shards: 1,
    env: {
      PMEMPS_RECV_MB: String(args['recv-mb']),
      PMEMPS_RECV_MB_PER_CONNECTION: String(args['recv-mb-per-connection']),
      PMEMPS_MAX_MESSAGE_MB: String(args['max-message-mb']),
      PMEMPS_REQUEST_SECONDS: String(args['request-seconds']),
    },
  });
  const sessions: RawSession[] = [];
  try {
    const pid = cluster.procs[0]!.pid!;
    await new Promise((r) => setTimeout(r, 1000)); // settle after start
    const idle = rssMiB(pid);
    let peak = idle;
    const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pid))), 5);
    const body = unfinishedFrame((args['max-message-mb'] - 1) * 2 ** 20, args.mib * 2 ** 20);
    for (let i = 0; i < args.connections; i++) sessions.push(new RawSession(cluster.endpoints[0]));
    let settled: StreamEnd[];
    try {
      const done = sessions.flatMap((s) => Array.from({ length: args.streams }, () => s.request(PULL_PATH, body, false).done));
      settled = await within(Promise.all(done), 300_000, 'the server ending every stream');
    } finally {
      clearInterval(sampler);
    }
    const ends: Record<string, number> = {};
    for (const e of settled) {
      const k = `${e.grpcStatus}/${e.rstCode}`;
      ends[k] = (ends[k] ?? 0) + 1;
    }
    return { idle, peak, ends };
  } finally {
    for (const s of sessions) s.destroy();
    await cluster.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const cpus = os.cpus();
  console.log(
    `request flood: ${args.connections} connections x ${args.streams} requests x ${args.mib} MiB; --recv-mb ${args['recv-mb']}, --recv-mb-per-connection ${args['recv-mb-per-connection']}, --max-message-mb ${args['max-message-mb']}; ${cpus.length} x ${cpus[0]?.model}, node ${process.version}`,
  );
  for (let i = 0; i < args.runs; i++) {
    const r = await run();
    const above = r.peak - r.idle;
    console.log(
      `run ${i + 1}: idle ${r.idle.toFixed(0)} MiB, highest ${r.peak.toFixed(0)} MiB: ${above.toFixed(0)} above idle, ${(above - args['recv-mb']).toFixed(0)} above idle + --recv-mb; streams ended (grpc-status/reset code): ${JSON.stringify(r.ends)}`,
    );
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
