// Step barriers for the workers of a job (the Barrier RPC, served by shard
// 0): a call returns when `parties` distinct workers arrived at the same
// (name, generation). Arrivals are idempotent per worker, so a retried call
// is not counted twice. Kept in memory only: a stopping server fails the
// waiting calls with UNAVAILABLE and the workers arrive again elsewhere.
//
// Bounded: at most MAX_OPEN_ROUNDS rounds and MAX_WAITING_CALLS calls wait
// at once, at most MAX_CALLS_PER_WORKER of one worker in one round (beyond,
// an arrival is refused with RESOURCE_EXHAUSTED; each waiting call holds
// ~10 KiB of the server, and a flood of them once took gigabytes); a
// cancelled call leaves in O(1) (a mass disconnect was quadratic and
// stalled the event loop for minutes); a worker whose every call of a round
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

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
}

interface Round {
  parties: number;
  arrived: Map<string, Set<Waiter>>; // worker -> its calls still waiting
}

export const MAX_OPEN_ROUNDS = 1024;
export const MAX_WAITING_CALLS = 16_384;
export const MAX_CALLS_PER_WORKER = 4;
export const MAX_NAMES = 4096;
export const RELEASED_KEPT = 64;

export class Barriers {
  private readonly rounds = new Map<string, Round>();
  private readonly released = new Map<string, number[]>(); // name -> its last released generations, oldest first; Map order = age
  private waiting = 0;

  arrive(name: string, generation: number, parties: number, worker: string, call?: grpc.ServerUnaryCall<any, any>): Promise<Record<string, never>> {
    if (this.released.get(name)?.includes(generation)) return Promise.resolve({});
    const key = `${name}\u0000${generation}`;
    let r = this.rounds.get(key);
    if (!r) {
      if (this.rounds.size >= MAX_OPEN_ROUNDS)
        return Promise.reject(
          new ServerError('OUT_OF_SPACE', `${MAX_OPEN_ROUNDS} barriers are waiting on this server, its limit; finish or cancel some first`),
        );
      // Full, no round is made: the last party of a round is let in below.
      if (this.waiting >= MAX_WAITING_CALLS && parties > 1) return Promise.reject(this.full());
      r = { parties, arrived: new Map() };
      this.rounds.set(key, r);
    }
    if (r.parties !== parties)
      return Promise.reject(
        new ServerError('INVALID_ARGUMENT', `barrier "${name}" generation ${generation} has ${r.parties} parties; this call says ${parties}`),
      );
    const mine = r.arrived.get(worker) ?? new Set<Waiter>();
    if (mine.size >= MAX_CALLS_PER_WORKER)
      return Promise.reject(
        new ServerError(
          'OUT_OF_SPACE',
          `worker "${worker}" already has ${MAX_CALLS_PER_WORKER} calls waiting at barrier "${name}" generation ${generation}, the limit; each worker needs one`,
        ),
      );
    // The last party is let in even at the limit: it releases the round.
    const releases = !r.arrived.has(worker) && r.arrived.size + 1 >= r.parties;
    if (this.waiting >= MAX_WAITING_CALLS && !releases) return Promise.reject(this.full());
    r.arrived.set(worker, mine);
    const round = r;
    const p = new Promise<Record<string, never>>((resolve, reject) => {
      const waiter: Waiter = { resolve: () => resolve({}), reject };
      mine.add(waiter);
      this.waiting++;
      call?.on('cancelled', () => {
        if (!mine.delete(waiter)) return; // released or failed already
        this.waiting--;
        reject(new ServerError('UNAVAILABLE', 'barrier call cancelled'));
        // A worker that gave up (it died, or its deadline passed) is not
        // there: counting it would release the others without it.
        if (mine.size === 0 && round.arrived.get(worker) === mine) round.arrived.delete(worker);
        if (round.arrived.size === 0 && this.rounds.get(key) === round) this.rounds.delete(key);
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
      this.settle(round, (w) => w.resolve());
    }
    return p;
  }

  private settle(round: Round, how: (w: Waiter) => void): void {
    for (const calls of round.arrived.values()) {
      for (const w of calls) how(w);
      this.waiting -= calls.size;
      calls.clear();
    }
  }

  private full(): ServerError {
    return new ServerError('OUT_OF_SPACE', `${MAX_WAITING_CALLS} barrier calls are waiting on this server, its limit; finish or cancel some first`);
  }

  /** A restore rewound the job: its steps come again, so generations released before are rounds again. */
  rewind(): void {
    this.released.clear();
  }

  /** Fails every waiting call (the server is stopping). */
  failAll(): void {
    for (const r of this.rounds.values()) this.settle(r, (w) => w.reject(new ServerError('UNAVAILABLE', 'the server is stopping')));
    this.rounds.clear();
  }
}
