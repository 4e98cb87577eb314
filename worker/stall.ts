// Stall accounting: how much of each training step the trainer spent
// waiting on the parameter servers rather than computing. Waiting time is
// the wall-clock union of the SDK's outstanding calls, so two shards
// answered in parallel count once.

export interface StepStall {
  stepMs: number;
  waitMs: number;
  /** waitMs / stepMs */
  stalled: number;
}

export class StallMeter {
  private outstanding = 0;
  private waitStart = 0;
  private waitInStep = 0;
  private stepStart = 0;
  private inStep = false;
  totalStepMs = 0;
  totalWaitMs = 0;
  steps = 0;

  /** Called by the SDK around every server call. */
  enter(): void {
    if (this.outstanding++ === 0) this.waitStart = performance.now();
  }

  leave(): void {
    if (--this.outstanding === 0 && this.inStep) this.waitInStep += performance.now() - Math.max(this.waitStart, this.stepStart);
  }

  beginStep(): void {
    this.stepStart = performance.now();
    this.waitInStep = 0;
    this.inStep = true;
    if (this.outstanding > 0) this.waitStart = this.stepStart;
  }

  endStep(): StepStall {
    const now = performance.now();
    if (this.outstanding > 0) this.waitInStep += now - Math.max(this.waitStart, this.stepStart);
    this.inStep = false;
    const stepMs = now - this.stepStart;
    this.totalStepMs += stepMs;
    this.totalWaitMs += this.waitInStep;
    this.steps++;
    return { stepMs, waitMs: this.waitInStep, stalled: stepMs > 0 ? this.waitInStep / stepMs : 0 };
  }

  /** Share of all measured step time spent waiting on the servers. */
  get stalledShare(): number {
    return this.totalStepMs > 0 ? this.totalWaitMs / this.totalStepMs : 0;
  }
}
