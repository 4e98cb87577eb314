// Step barriers for the workers of a job (the Barrier RPC, served by shard
// 0): a call returns when `parties` distinct workers arrived at the same
// (name, generation). Arrivals are idempotent per worker, so a retried call
// is not counted twice. Kept in memory only: a stopping server fails the
// waiting calls with UNAVAILABLE and the workers arrive again elsewhere.
//
// Bounded: at most MAX_OPEN_ROUNDS rounds wait at once (beyond, an arrival
// is refused with RESOURCE_EXHAUSTED), a worker whose every call of a round
// was cancelled is no longer counted in it, and a round left with no call is
// dropped (its workers arrive again when they retry), and the
// last RELEASED_KEPT released generations of at most MAX_NAMES names are
// remembered.
//
// A call for a generation released before returns at once (a retry); any
// other forms or joins a round, whatever generations were released: one
// call with generation 2^52-1 and parties 1 once made every later round of
// its name return at once (a review's attack), and steps rewound by a
// restore (rewind) are rounds again, not retries.
import * as grpc from '@grpc/grpc-js';
import { ServerError } from './errors';

interface Round {
  parties: number;
  arrived: Set<string>;
  waiters: { worker: string; resolve: () => void; reject: (e: Error) => void }[]; // calls still waiting
}

export const MAX_OPEN_ROUNDS = 1024;
export const MAX_NAMES = 4096;
export const RELEASED_KEPT = 64;

export class Barriers {
  private readonly rounds = new Map<string, Round>();
  private readonly released = new Map<string, number[]>(); // name -> its last released generations, oldest first; Map order = age

  arrive(name: string, generation: number, parties: number, worker: string, call?: grpc.ServerUnaryCall<any, any>): Promise<Record<string, never>> {
    if (this.released.get(name)?.includes(generation)) return Promise.resolve({});
    const key = `${name}\u0000${generation}`;
    let r = this.rounds.get(key);
    if (!r) {
      if (this.rounds.size >= MAX_OPEN_ROUNDS)
        return Promise.reject(
          new ServerError('OUT_OF_SPACE', `${MAX_OPEN_ROUNDS} barriers are waiting on this server, its limit; finish or cancel some first`),
        );
      r = { parties, arrived: new Set(), waiters: [] };
      this.rounds.set(key, r);
    }
    if (r.parties !== parties)
      return Promise.reject(
        new ServerError('INVALID_ARGUMENT', `barrier "${name}" generation ${generation} has ${r.parties} parties; this call says ${parties}`),
      );
    r.arrived.add(worker);
    const round = r;
    const p = new Promise<Record<string, never>>((resolve, reject) => {
      const waiter = { worker, resolve: () => resolve({}), reject };
      round.waiters.push(waiter);
      call?.on('cancelled', () => {
        reject(new ServerError('UNAVAILABLE', 'barrier call cancelled'));
        round.waiters = round.waiters.filter((w) => w !== waiter);
        // A worker that gave up (it died, or its deadline passed) is not
        // there: counting it would release the others without it.
        if (!round.waiters.some((w) => w.worker === worker)) round.arrived.delete(worker);
        if (round.waiters.length === 0 && this.rounds.get(key) === round) this.rounds.delete(key);
      });
    });
    if (round.arrived.size >= round.parties) {
      this.rounds.delete(key);
      const kept = this.released.get(name) ?? [];
      this.released.delete(name); // re-insert: Map order is the age order
      kept.push(generation);
      if (kept.length > RELEASED_KEPT) kept.shift();
      this.released.set(name, kept);
      if (this.released.size > MAX_NAMES) this.released.delete(this.released.keys().next().value as string);
      for (const w of round.waiters) w.resolve();
    }
    return p;
  }

  /** A restore rewound the job: its steps come again, so generations released before are rounds again. */
  rewind(): void {
    this.released.clear();
  }

  /** Fails every waiting call (the server is stopping). */
  failAll(): void {
    for (const r of this.rounds.values()) for (const w of r.waiters) w.reject(new ServerError('UNAVAILABLE', 'the server is stopping'));
    this.rounds.clear();
  }
}
