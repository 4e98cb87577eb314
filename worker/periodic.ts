// Persist every N steps or every T seconds, whichever comes first. The
// trainer calls maybePersist() at the end of each step (from the chief
// worker, at a step barrier when there are several workers).
import type { PsClient } from './client';
import type { PersistInput } from './checkpoint';

export interface PeriodicOptions {
  everySteps?: number;
  everySeconds?: number;
}

export class PeriodicPersist {
  private lastStep: number;
  private lastTime = Date.now();
  persisted = 0;
  /** Total wall time spent in persist(), ms. */
  persistMs = 0;

  constructor(
    private readonly client: PsClient,
    private readonly opts: PeriodicOptions,
    startStep = 0,
  ) {
    if (!opts.everySteps && !opts.everySeconds) throw new Error('PeriodicPersist needs everySteps or everySeconds');
    this.lastStep = startStep;
  }

  due(step: number): boolean {
    return (
      (!!this.opts.everySteps && step - this.lastStep >= this.opts.everySteps) ||
      (!!this.opts.everySeconds && Date.now() - this.lastTime >= this.opts.everySeconds * 1000)
    );
  }

  /** Persists when due; returns the checkpoint id, or null when not due. */
  async maybePersist(step: number, state: () => Omit<PersistInput, 'step'>): Promise<number | null> {
    if (!this.due(step)) return null;
    const t0 = performance.now();
    const { id } = await this.client.persist({ step, ...state() });
    this.persistMs += performance.now() - t0;
    this.persisted++;
    this.lastStep = step;
    this.lastTime = Date.now();
    return id;
  }
}
