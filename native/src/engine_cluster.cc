// Cluster bookkeeping kept durably in the pool root: the ballot and the
// shard identity (a memory-only engine keeps them in its MemStore; these
// calls' checks are the same for both).
//
// Invariants:
//  * The ballot only grows; the identity, once stored, never changes, and
//    its seal only goes from unsealed to sealed.
//  * Root fields change only inside transactions under tx_mu_, so these
//    calls need no exclusive epoch lock and never wait for running batches.

#include "engine_impl.h"

namespace pmemps {

// Root fields change only inside transactions under tx_mu_, so these need
// no exclusive epoch lock and never wait for running batches.
uint64_t Engine::raise_ballot(uint64_t b) {
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<TxMutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  return store_->raise_ballot(b);
}

uint64_t Engine::raise_ballot_pool(uint64_t b) {
  if (b > root_->ballot) {
    Tx tx(*pool_, TxLog::Bounded);
    tx.add(root_, sizeof(PRoot));
    root_->ballot = b;
    persist_root(tx);
    tx.commit();
  }
  return root_->ballot;
}

uint64_t Engine::ballot() {
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<TxMutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  return store_->ballot();
}

Engine::Identity Engine::identity_pool() const {
  return Identity{root_->cluster_id[0], root_->cluster_id[1], root_->shard_index, root_->shard_count, root_->identity_sealed != 0};
}

Engine::Identity Engine::identity() {
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<TxMutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  return store_->identity();
}

Engine::Identity Engine::set_identity(const Identity& id) {
  if (id.count == 0 || id.index >= id.count)
    fail(Code::InvalidArgument,
         "shard index must be below the shard count (got " + std::to_string(id.index) + " of " + std::to_string(id.count) + ")");
  if (id.count > UINT32_MAX) fail(Code::InvalidArgument, "shard count must be below 2^32 (got " + std::to_string(id.count) + ")");
  std::shared_lock<RwLock> el(epoch_mu_);
  std::lock_guard<TxMutex> g(tx_mu_);
  if (closed_) fail(Code::FailedPrecondition, "the engine is closed");
  const Identity cur = store_->identity();
  if (cur.count != 0) {
    if (cur.cluster_hi != id.cluster_hi || cur.cluster_lo != id.cluster_lo || cur.index != id.index || cur.count != id.count)
      fail(Code::FailedPrecondition, "this pool belongs to shard " + std::to_string(cur.index) + " of " + std::to_string(cur.count) +
                                         " of another or the same cluster with other settings; check the server list and --pmem");
    // The seal only ever goes from 0 to 1: a worker still forming the
    // cluster must not unseal what another one sealed.
    if (cur.sealed || !id.sealed) return cur;
  } else if (id.sealed) {
    // A seal confirms an identity every shard was seen to hold; a shard
    // without one lost its pool since, and must not be adopted silently.
    fail(Code::FailedPrecondition, "this shard has no identity to seal: its pool is new (replaced since the cluster was identified?)");
  }
  store_->set_identity(id);
  return id;
}

void Engine::set_identity_pool(const Identity& id) {
  Tx tx(*pool_, TxLog::Bounded);
  tx.add(root_, sizeof(PRoot));
  root_->cluster_id[0] = id.cluster_hi;
  root_->cluster_id[1] = id.cluster_lo;
  root_->shard_index = id.index;
  root_->shard_count = static_cast<uint32_t>(id.count);
  root_->identity_sealed = id.sealed ? 1 : 0;
  persist_root(tx);
  tx.commit();
}

}  // namespace pmemps
