// Step barriers for the workers of a job (the Barrier RPC, served by shard
// 0): a call returns when `parties` distinct workers arrived at the same
// (name, generation). Arrivals are idempotent per worker, so a retried call
// is not counted twice. Kept in memory only: a stopping server fails the
// waiting calls with UNAVAILABLE and the workers arrive again elsewhere.
import * as grpc from '@grpc/grpc-js';
import { EngineError } from '../native/engine';
import { ShardError } from './shard';

interface Round {
  parties: number;
  arrived: Set<string>;
  waiters: { resolve: () => void; reject: (e: Error) => void }[];
}

export class Barriers {
  private readonly rounds = new Map<string, Round>();
  private readonly done = new Map<string, number>(); // name -> highest generation released

  arrive(name: string, generation: number, parties: number, worker: string, call?: grpc.ServerUnaryCall<any, any>): Promise<Record<string, never>> {
    if ((this.done.get(name) ?? -1) >= generation) return Promise.resolve({});
    const key = `${name}\u0000${generation}`;
    let r = this.rounds.get(key);
    if (!r) {
      r = { parties, arrived: new Set(), waiters: [] };
      this.rounds.set(key, r);
    }
    if (r.parties !== parties)
      return Promise.reject(new EngineError('INVALID_ARGUMENT', `barrier "${name}" generation ${generation} has ${r.parties} parties; this call says ${parties}`));
    r.arrived.add(worker);
    const round = r;
    const p = new Promise<Record<string, never>>((resolve, reject) => {
      round.waiters.push({ resolve: () => resolve({}), reject });
      call?.on('cancelled', () => reject(new ShardError('UNAVAILABLE', 'barrier call cancelled')));
    });
    if (round.arrived.size >= round.parties) {
      this.rounds.delete(key);
      this.done.set(name, Math.max(this.done.get(name) ?? -1, generation));
      for (const w of round.waiters) w.resolve();
    }
    return p;
  }

  /** Fails every waiting call (the server is stopping). */
  failAll(): void {
    for (const r of this.rounds.values()) for (const w of r.waiters) w.reject(new ShardError('UNAVAILABLE', 'the server is stopping'));
    this.rounds.clear();
  }
}
