// The engine's public vocabulary: table specs, optimizer and initializer
// settings, and what open/stats/checkpoint calls report. Shared by the
// engine wrapper, the server and the tests so that one definition rules.

export type OptimizerSpec =
  | { type: 'sgd'; lr: number; momentum?: number; dampening?: number; nesterov?: boolean; weightDecay?: number }
  | { type: 'adagrad'; lr: number; initialAccumulator?: number; eps?: number }
  | { type: 'adam'; lr: number; beta1?: number; beta2?: number; eps?: number }
  | { type: 'rmsprop'; lr: number; alpha?: number; eps?: number; momentum?: number; centered?: boolean }
  | {
      type: 'ftrl';
      lr: number;
      lrPower?: number;
      initialAccumulator?: number;
      l1?: number;
      l2?: number;
      l2Shrinkage?: number;
    };

export type OptimizerType = OptimizerSpec['type'];

export type InitializerSpec =
  | { type: 'zeros' }
  | { type: 'constant'; value: number }
  | { type: 'uniform'; min: number; max: number }
  | { type: 'normal'; mean: number; std: number; truncated?: boolean };

export interface TableSpec {
  name: string;
  /** Row width, 1..4096 float32 values. */
  dim: number;
  optimizer: OptimizerSpec;
  initializer: InitializerSpec;
  /** Seed of the initializer: a key's initial row is a pure function of (seed, key). */
  seed: number;
}

/** Hyperparameters that may change on a live table (learning-rate schedules). */
export type HyperUpdate = Partial<Record<string, number | boolean>>;

export interface TableInfo extends TableSpec {
  /** Rows reserved in the pool (pushed at least once; after a crash or rollback it still counts rows first pushed after the checkpoint). */
  rows: number;
  /** float32 values per row: weights plus optimizer state. */
  rowFloats: number;
}

/** Engine.open's scratchMb: its default, and its largest value (1 TiB). */
export const DEFAULT_SCRATCH_MB = 256;
export const MAX_SCRATCH_MB = 2 ** 20;

export interface OpenOptions {
  /** Directory holding the pool. Omit with memoryOnly. */
  dir?: string;
  /** Pool size in MiB, used when the pool is created (default 1024). */
  poolMb?: number;
  /** Hard DRAM budget of the row cache, in MiB (default 256). */
  cacheMb?: number;
  /**
   * The working memory of pulls and pushes larger than the arrays each
   * thread keeps between calls, in MiB (default 256): one budget for the
   * process, which each open sets (scratchStats()). A call waits until its
   * need fits beside the others; one larger than the whole budget runs alone.
   */
  scratchMb?: number;
  /** DRAM-only engine with no pool: the benchmark's baseline and the crash test's reference. */
  memoryOnly?: boolean;
  /**
   * Where a pool created by this open keeps its rows' versions (an existing
   * pool keeps its own; openInfo.layout says which): 'inplace', each row's
   * versions in its record (fastest on PMEM), or 'logged', the versions
   * appended to a log and the row record naming them, so that write-backs
   * are sequential (for pools on an SSD or another page-cached file), or
   * 'auto': in place when the pool is on persistent memory, else logged.
   * Default 'inplace'.
   */
  layout?: PoolLayout | 'auto';
  /**
   * Opened to be inspected (pmemps-check): close() then leaves the pool as
   * this open found it, whatever record it is given: a pool a server closed
   * cleanly keeps that close's record (its exactly-once table and dense
   * tensors), and a pool left by a crash is still one at the next open.
   */
  inspect?: boolean;
}

export type PoolLayout = 'inplace' | 'logged';

export interface CheckpointRef {
  id: number;
}

export interface OpenInfo {
  /** The pool was created by this open. */
  created: boolean;
  /** The previous process closed the pool cleanly (state is the latest, not the last checkpoint). */
  cleanClose: boolean;
  /** The pool mapping is real persistent memory (or PMEM_IS_PMEM_FORCE emulates it). */
  isPmem: boolean;
  committed: number | null;
  prepared: number | null;
  /** Pushes are refused until a checkpoint prepared before a restart is committed or aborted. */
  pushesBlocked: boolean;
  /** Opens of this pool, this one included. */
  opens: number;
  /** The pool's row layout, chosen when it was created ('inplace' in memory mode). */
  layout: PoolLayout;
  /**
   * Logged pools: version-log records this open replayed into their rows'
   * slots (those after the slots' mark; at most about the mark's lag, 256 MiB
   * of log by default, plus what the last checkpoint wrote). 0 after a clean close.
   */
  replayedRecords: number;
  /**
   * Of replayedRecords, the slots that did not already hold their record and
   * were written: after a process crash the page cache kept nearly all of
   * them; after a power cut, those whose pages had not reached the media.
   */
  replayWrites: number;
  /**
   * Logged pools off PMEM: the checkpoint's flush and compaction write the
   * version log with pwrite through the pool's file rather than storing
   * through the mapping (docs/design.md, "The log written with pwrite"). False
   * on PMEM, for in-place pools, for a pool not mapped from its file's start,
   * and with PMEMPS_LOG_PWRITE=0.
   */
  logPwrite: boolean;
  /**
   * Logged pools off PMEM: a write-back's slot (16 bytes on a random page of
   * the rows) is written with pwrite rather than stored through the mapping,
   * which faults on a page a sync cleaned (docs/design.md, "Slot writes with
   * pwrite"). False where logPwrite is, and with PMEMPS_SLOT_PWRITE=0.
   */
  slotPwrite: boolean;
  /** The record given to the last close(), when that close was clean; else null. */
  closeRecord: Buffer | null;
}

export interface EngineStats {
  cacheBytes: number;
  cacheBudget: number;
  cacheRows: number;
  hits: number;
  misses: number;
  evictions: number;
  writebacks: number;
  flushes: number;
  poolBytes: number;
  poolUsedBytes: number;
  committed: number | null;
  prepared: number | null;
  /** Highest checkpoint id prepared or aborted: the next prepare needs a higher one. */
  lastId: number;
  epoch: number;
  /** Longest time, in microseconds, that a push waited on a running checkpoint (wall clock: the epoch lock, then the longest any of its threads spent on stripe locks and copies or write-backs of rows the checkpoint had yet to write). */
  maxPushWaitUs: number;
  /** Copies of rows a running checkpoint still had to write that pushes put in the pool's free space, the cache's budget being full (PMEM only; cumulative). */
  copiesInPool: number;
  /** Pool bytes reserved for such copies, kept from one checkpoint to the next (at most the cache budget and 1/16 of the pool); given back by a restore or rollback, and (the blocks no running checkpoint uses) whenever an allocation finds the pool full. */
  copyRoomBytes: number;
  /** Rows stored saturated (an element that overflowed float32 at +-3.4e38, a NaN at its value before) because another push of the row ran between a push's check and its store, and together they overflowed; a push alone that would overflow a row is refused whole (cumulative). */
  rowsSaturated: number;
  /** Removed tables whose storage is still being freed (normally 0 once the call that removed them returned). */
  garbageTables: number;
  /** Pool bytes held by the version log's segments (logged pools; else 0). */
  logBytes: number;
  /** Log segments compaction freed since open. */
  logSegmentsFreed: number;
  /** Bytes of live versions compaction copied forward since open (what reclaiming the rest cost). */
  logBytesCopied: number;
  /** Bytes of new log segments read into the page cache ahead of their writes, since open (logged pools off PMEM with PMEMPS_LOG_WARM=1; else 0). */
  logBytesWarmed: number;
  /** Where the last completed prepare's time went (wall clock, microseconds; all 0 before one since open). */
  lastPrepare: PrepareTimes;
}

export interface PrepareTimes {
  /** Writing back the rows the checkpoint had yet to write. */
  flushUs: number;
  /** Of flushUs, writing the rows' slots (logged pools: 16 bytes each on a random page of the rows, after their records). */
  slotsUs: number;
  /** Syncing the version log (logged pools). */
  logSyncUs: number;
  /** Syncing the pool's other written ranges (rows, new rows' headers, index slots). */
  persistUs: number;
  /** The transaction that publishes the checkpoint. */
  publishUs: number;
  /** Rows written back while the flush ran (evictions' among them). */
  rows: number;
}

export interface CheckpointContent {
  id: number;
  dense: Map<string, Float32Array>;
  meta: Buffer;
}

export interface PrepareInput {
  dense?: Map<string, Float32Array> | Record<string, Float32Array>;
  meta?: Buffer;
  /** A coordinator ballot recorded (when higher) in the same transaction as the prepared checkpoint. */
  ballot?: number;
}
