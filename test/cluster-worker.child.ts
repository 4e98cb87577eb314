// A training worker process for the service tests: runs the plan of
// test/cluster.lib.ts against a cluster through the SDK, persists every
// plan.persistEvery steps (worker 0, the chief), restores after a server
// crash, and reports events as JSON lines on stdout. Killed by the tests
// with SIGKILL, or by itself at an SDK failpoint (PMEMPS_SDK_FAILPOINT).
import { PsClient, PsError, ServerRestartedError, CheckpointError, CoordinatorSupersededError } from '../worker';
import {
  DENSE_INIT,
  DENSE_NAME,
  DENSE_OPT,
  TABLE,
  allKeys,
  batchKeys,
  biasAt,
  denseGrad,
  digest,
  gradsFor,
  type WorkerArgs,
  type WorkerEvent,
} from './cluster.lib';

const args = JSON.parse(process.argv[2]) as WorkerArgs;
const p = args.plan;
const emit = (e: WorkerEvent): void => void process.stdout.write(JSON.stringify(e) + '\n');

async function init(ps: PsClient): Promise<void> {
  await ps.createTable(TABLE);
  if (args.worker === 0) await ps.setDense(DENSE_NAME, DENSE_INIT, DENSE_OPT);
}

async function snapshot(ps: PsClient): Promise<string> {
  const rows = await ps.pull(TABLE.name, allKeys(p));
  const dense = (await ps.pullDense([DENSE_NAME])).get(DENSE_NAME)!;
  return digest(rows, dense);
}

async function restore(ps: PsClient): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await ps.restore();
      if (r.id === 0) await init(ps); // no checkpoint yet: the tables went with the rollback
      const want = r.id === 0 ? 0 : (r.meta as { step: number }).step;
      if (r.step !== want) throw new Error(`restore returned step ${r.step} but meta says ${want}`);
      const bias = r.dense.get('bias');
      if (r.id !== 0 && (!bias || bias[0] !== biasAt(r.step)[0] || bias[1] !== biasAt(r.step)[1])) throw new Error('restored trainer dense tensor differs');
      emit({ event: 'restored', id: r.id, step: r.step, digest: await snapshot(ps) });
      return r.step;
    } catch (e) {
      // A server may be down again (a crash during the restore): try again.
      if (attempt >= 20 || e instanceof CoordinatorSupersededError) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

async function main(): Promise<void> {
  const ps = await PsClient.connect({ endpoints: args.endpoints, retryForMs: args.retryForMs ?? 20_000, deadlineMs: 10_000, workerId: args.workerId });
  emit({ event: 'started' });
  let step = 0;
  if (args.restoreFirst) step = await restore(ps);
  else await init(ps);
  let restoredOnce = false;
  const two = p.workers > 1;
  while (step < p.steps) {
    try {
      // Two workers push in a fixed order within a step: 0, then 1.
      if (two && args.worker === 1) await ps.barrier('a', p.workers, step);
      const keys = batchKeys(p, step, args.worker);
      const rows = await ps.pull(TABLE.name, keys);
      await ps.push(TABLE.name, keys, gradsFor(p, step, args.worker, rows));
      if (args.worker === 0) await ps.pushDense(DENSE_NAME, denseGrad(p, step));
      if (two && args.worker === 0) await ps.barrier('a', p.workers, step);
      if (two) await ps.barrier('b', p.workers, step);
      step++;
      if (args.stepDelayMs) await new Promise((r) => setTimeout(r, args.stepDelayMs));
      if (args.worker === 0 && step % p.persistEvery === 0) {
        const { id } = await ps.persist({ step, dense: { bias: biasAt(step) }, meta: { step } });
        emit({ event: 'persisted', id, step });
      }
      if (two) await ps.barrier('c', p.workers, step); // nobody pushes while the chief persists
      if (args.restoreAtStep !== undefined && !restoredOnce && step === args.restoreAtStep) {
        restoredOnce = true;
        step = await restore(ps);
      }
    } catch (e) {
      if (two || !(e instanceof ServerRestartedError || e instanceof CheckpointError || (e instanceof PsError && e.code === 14))) throw e;
      emit({ event: 'error', step, message: (e as Error).message, name: (e as Error).name });
      step = await restore(ps);
    }
  }
  emit({ event: 'done', step, digest: await snapshot(ps) });
  ps.close();
}

main().catch((e) => {
  process.stderr.write(`worker ${args.worker}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
