// The pmemps worker SDK. See worker/client.ts for the calls, docs/protocol.md
// for the checkpoint protocol, and worker/shard.ts for the key-to-shard map.
export { PsClient, keyBuffer, type ConnectOptions, type KeysLike, type ShardStatus } from './client';
export { type PersistInput, type RestoreResult } from './checkpoint';
export {
  PsError,
  type PushOutcome,
  AccessDeniedError,
  TlsError,
  ServerRestartedError,
  IdentityMismatchError,
  CoordinatorSupersededError,
  CheckpointError,
} from './errors';
export { type TlsOptions } from './connection';
export { PeriodicPersist, type PeriodicOptions } from './periodic';
export { StallMeter, type StepStall } from './stall';
export { shardOfKey, shardOfDense, shardsOf, splitmix64, fnv1a64 } from './shard';
export { statefulSetEndpoints, type StatefulSetEndpointsOptions } from './k8s';
export type { TableSpec, OptimizerSpec, InitializerSpec } from '../native/types';
