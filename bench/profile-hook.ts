// Preloaded into a process that bench/wire-profile.ts measures
// (`node -r dist/bench/profile-hook.js ...`), so that the server runs
// unchanged: SIGUSR2 starts V8's CPU profiler on the main thread, the next
// SIGUSR2 stops it and writes the profile to $PMEMPS_PROFILE_OUT.<n>.cpuprofile
// (n counts the profiles of this process). --cpu-prof would profile the whole
// life of the process, start-up and table fill included; this profiles only
// the measured steps.
import * as fs from 'node:fs';
import * as inspector from 'node:inspector';

const out = process.env.PMEMPS_PROFILE_OUT;
if (out) {
  const session = new inspector.Session();
  session.connect();
  let running = false;
  let n = 0;
  const interval = Number(process.env.PMEMPS_PROFILE_INTERVAL_US ?? 250);
  session.post('Profiler.enable', () => session.post('Profiler.setSamplingInterval', { interval }));
  process.on('SIGUSR2', () => {
    if (!running) {
      running = true;
      session.post('Profiler.start');
      return;
    }
    running = false;
    session.post('Profiler.stop', (err, res) => {
      const file = `${out}.${n++}.cpuprofile`;
      // Written under a temporary name and renamed: the reader polls for the final name.
      fs.writeFileSync(file + '.tmp', err ? '{}' : JSON.stringify(res.profile));
      fs.renameSync(file + '.tmp', file);
    });
  });
}
