// Child process of the crash tests. Two modes:
//
//   node dist/test/crash.child.js <plan.json>
//       Opens the pool of the plan, runs its ops in order and appends progress
//       lines to the plan's progress file with synchronous writes (they
//       survive a SIGKILL: they are in the page cache). With plan.kill it
//       SIGKILLs itself right after issuing op plan.kill.op. PMEMPS_FAILPOINT
//       in the environment makes the native engine SIGKILL the process itself.
//
//   node dist/test/crash.child.js --hold <dir>
//       Opens the pool, prints "ready" and keeps it open until killed (the
//       LOCKED test).

import * as fs from 'node:fs';
import { Engine } from '../native/engine';
import { applyOp, ChildPlan, describeOp, POOL_MB } from './crash.lib';

async function hold(dir: string): Promise<void> {
  const e = Engine.open({ dir, poolMb: POOL_MB, cacheMb: 1 });
  process.stdout.write(`ready ${JSON.stringify(e.openInfo)}\n`);
  setInterval(() => undefined, 1 << 30);
}

async function run(planFile: string): Promise<void> {
  const plan = JSON.parse(fs.readFileSync(planFile, 'utf8')) as ChildPlan;
  const fd = fs.openSync(plan.progress, 'a');
  const log = (line: string) => {
    fs.writeSync(fd, line + '\n');
  };
  const e = Engine.open({ dir: plan.dir, poolMb: plan.poolMb, cacheMb: plan.cacheMb, layout: plan.layout });
  log(`open ${JSON.stringify(e.openInfo)}`);
  process.stdout.write('ready\n');
  for (let i = 0; i < plan.ops.length; i++) {
    const op = plan.ops[i];
    log(`op ${i} ${op.k}`);
    if (plan.kill && plan.kill.op === i) {
      const p = applyOp(e, op, log); // the native call is issued before this returns
      p.then(
        () => log(`opdone ${i}`),
        (err: Error) => log(`operr ${i} ${err.message}`),
      );
      const die = () => process.kill(process.pid, 'SIGKILL');
      const d = plan.kill.delay;
      setInterval(() => undefined, 1 << 30);
      if (d === 'sync') die();
      else if (d === 'immediate') setImmediate(die);
      else setTimeout(die, d);
      return;
    }
    try {
      await applyOp(e, op, log);
    } catch (err) {
      log(`error ${i} ${(err as Error).message}`);
      process.stderr.write(`crash child: op ${i} (${describeOp(op)}) failed: ${(err as Error).stack}\n`);
      process.exit(3);
    }
  }
  log('done');
  process.exit(0);
}

const args = process.argv.slice(2);
(args[0] === '--hold' ? hold(args[1]) : run(args[0])).catch((err: Error) => {
  process.stderr.write(`crash child: ${err.stack}\n`);
  process.exit(2);
});
