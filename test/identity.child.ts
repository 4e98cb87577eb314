// A worker process of the identity tests: it waits for a request line on
// stdin (so the parent releases every worker at the same moment), waits the
// request's seeded delay, connects with its own PsClient, and answers one
// JSON line with what it saw. It serves requests until stdin closes, so one
// process takes part in many repetitions without paying a Node start each
// time; every request is a new client with new channels.
import * as readline from 'node:readline';
import { PsClient } from '../worker';

export interface ConnectRequest {
  endpoints: string[];
  delayMs: number;
  adoptNewShards?: boolean;
}

export interface ConnectReply {
  ok: boolean;
  /** The error's class name and message when !ok. */
  error?: string;
  /** Every shard's identity as this worker saw it right after connect. */
  identities?: { cluster_id: string; shard_index: number; shard_count: number; sealed: boolean }[];
}

async function serve(req: ConnectRequest): Promise<ConnectReply> {
  if (req.delayMs > 0) await new Promise((r) => setTimeout(r, req.delayMs));
  let ps: PsClient;
  try {
    ps = await PsClient.connect({ endpoints: req.endpoints, retryForMs: 20_000, deadlineMs: 10_000, adoptNewShards: req.adoptNewShards });
  } catch (e) {
    return { ok: false, error: `${(e as Error).name}: ${(e as Error).message}` };
  }
  try {
    const st = await ps.status();
    return { ok: true, identities: st.map((s) => Object.assign({ sealed: false }, s.identity)) };
  } finally {
    ps.close();
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  serve(JSON.parse(line) as ConnectRequest).then(
    (r) => process.stdout.write(JSON.stringify(r) + '\n'),
    (e) => process.stdout.write(JSON.stringify({ ok: false, error: `unexpected: ${(e as Error).stack ?? e}` }) + '\n'),
  );
});
