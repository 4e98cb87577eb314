#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#include <libpmem.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common.h"

namespace pmemps {

namespace {
std::string pmem_err() {
  const char* m = pmemobj_errormsg();
  return m && *m ? m : strerror(errno);
}
}  // namespace

uint64_t Pool::root_sum(const PRoot* r) { return fnv1a(r, offsetof(PRoot, checksum)); }
uint64_t Pool::table_sum(const PTable* t) { return fnv1a(t, offsetof(PTable, checksum)); }

Pool::Pool(const std::string& dir, uint64_t pool_bytes, bool inspect) : dir_(dir), path_(dir + "/pmemps.pool") {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw Error(Code::Io, "cannot create pool directory " + dir + ": " + strerror(errno));
  } else if (!S_ISDIR(st.st_mode)) {
    throw Error(Code::InvalidArgument, dir + " is not a directory");
  }
  // One process per directory: a second opener gets a lock error, never a
  // second mapping that would corrupt the pool.
  const std::string lock_path = dir + "/pmemps.lock";
  lock_fd_ = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) throw Error(Code::Io, "cannot open " + lock_path + ": " + strerror(errno));
  if (flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    (void)!pread(lock_fd_, buf, sizeof buf - 1, 0);
    close(lock_fd_);
    lock_fd_ = -1;
    throw Error(Code::Locked, "pool directory " + dir + " is in use by another process (pid " + std::string(buf[0] ? buf : "?") +
                                  "); stop it or use another --pmem directory");
  }
  {
    std::string pid = std::to_string(getpid());
    (void)!ftruncate(lock_fd_, 0);
    (void)!pwrite(lock_fd_, pid.data(), pid.size(), 0);
  }

  try {
    if (access(path_.c_str(), F_OK) != 0) {
      pop_ = pmemobj_create(path_.c_str(), kLayoutName, pool_bytes, 0644);
      if (!pop_) {
        int e = errno;
        std::string m = pmem_err();
        unlink(path_.c_str());
        throw Error(e == ENOSPC ? Code::OutOfSpace : Code::Io, "cannot create pool " + path_ + ": " + m);
      }
      created_ = true;
    } else {
      pop_ = pmemobj_open(path_.c_str(), kLayoutName);
      if (!pop_) {
        std::string m = pmem_err();
        PMEMobjpool* other = pmemobj_open(path_.c_str(), nullptr);
        if (other) {
          pmemobj_close(other);
          throw Error(Code::Incompatible, "pool " + path_ + " has another layout than " + kLayoutName + " (" + m + ")");
        }
        throw Error(Code::Corrupt, "cannot open pool " + path_ + ": " + m + "; check it with `pmemps-check`");
      }
    }
    if (!created_ && !inspect) upgrade_root();
    if (!created_ && pmemobj_root_size(pop_) != sizeof(PRoot)) {
      // Another layout version: say which, without pmemobj_root() growing
      // (and so changing) the old pool's root to this build's size.
      const size_t rs = pmemobj_root_size(pop_);
      const PMEMoid old = rs >= 16 ? pmemobj_root(pop_, rs) : OID_NULL;
      const char* p = OID_IS_NULL(old) ? nullptr : static_cast<const char*>(pmemobj_direct(old));
      uint64_t magic = 0;
      uint32_t version = 0;
      if (p) {
        std::memcpy(&magic, p, 8);
        std::memcpy(&version, p + 8, 4);
      }
      if (magic == kMagic)
        throw Error(Code::Incompatible, "pool " + path_ + " has layout version " + std::to_string(version) + "; this build reads version " +
                                            std::to_string(kLayoutVersion) + " (move the pool aside or use the build that wrote it)");
      throw Error(Code::Incompatible, "pool " + path_ + " has a root object of another size: not a pmemps pool");
    }
    PMEMoid r = pmemobj_root(pop_, sizeof(PRoot));
    if (OID_IS_NULL(r)) throw Error(Code::Corrupt, "pool " + path_ + " has no root object: " + pmem_err());
    uuid_lo_ = r.pool_uuid_lo;
    root_ = static_cast<PRoot*>(pmemobj_direct(r));
    if (stat(path_.c_str(), &st) == 0) size_ = static_cast<uint64_t>(st.st_size);
    is_pmem_ = pmem_is_pmem(root_, sizeof(PRoot)) != 0;
    // Off PMEM the pool is read through the page cache a row or a record
    // at a time, at random: the default readahead read 128 KiB for each
    // 0.5 KiB record once the pool outgrew memory (~950 MB/s of reads
    // measured in a memory cgroup smaller than the pool).
    if (!is_pmem_) posix_madvise(pop_, size_, POSIX_MADV_RANDOM);
    if (!is_pmem_ && !inspect) open_file_writes();
  } catch (...) {
    if (pop_) pmemobj_close(pop_);
    pop_ = nullptr;
    close(lock_fd_);
    lock_fd_ = -1;
    throw;
  }
}

// Each older root is a prefix of version 7's that ends in its checksum:
// version 4's where version 5 has `layout`, version 5's where version 6 has
// `copy_blocks_off`, version 6's where version 7 has `mark_seg`.
// pmemobj_root grows the root atomically, keeping the old bytes and zeroing
// the new ones; one transaction then fills the new fields and makes it a
// version-7 root in place, allocating nothing, so a full pool is upgraded
// too (its copy arena's list comes at an open that finds room). A crash in
// between leaves a grown root of the old version, which the next open
// upgrades the same way.
void Pool::upgrade_root() {
  constexpr size_t kV4Size = offsetof(PRoot, layout) + sizeof(uint64_t);
  constexpr size_t kV5Size = offsetof(PRoot, copy_blocks_off) + sizeof(uint64_t);
  constexpr size_t kV6Size = offsetof(PRoot, mark_seg) + sizeof(uint64_t);
  static_assert(kV4Size + 16 == kV5Size, "version 5 adds layout, pad5 and vlog_off to version 4's root");
  static_assert(kV5Size + 8 == kV6Size, "version 6 adds copy_blocks_off to version 5's root");
  static_assert(kV6Size + 16 == sizeof(PRoot), "version 7 adds mark_seg and mark_off to version 6's root");
  const size_t rs = pmemobj_root_size(pop_);
  if (rs != kV4Size && rs != kV5Size && rs != kV6Size && rs != sizeof(PRoot)) return;
  const char* p = static_cast<const char*>(pmemobj_direct(pmemobj_root(pop_, rs)));
  uint64_t magic, sum;
  uint32_t version;
  std::memcpy(&magic, p, 8);
  std::memcpy(&version, p + 8, 4);
  if (magic != kMagic || version < 4 || version > 6) return;  // validate_root says what is wrong
  const size_t sum_at = version == 4 ? offsetof(PRoot, layout) : version == 5 ? offsetof(PRoot, copy_blocks_off) : offsetof(PRoot, mark_seg);
  if (rs < sum_at + 8) return;
  std::memcpy(&sum, p + sum_at, 8);
  if (fnv1a(p, sum_at) != sum) return;
  PMEMoid r = pmemobj_root(pop_, sizeof(PRoot));
  if (OID_IS_NULL(r))
    throw Error(Code::OutOfSpace,
                "pool " + path_ + " has no room to upgrade its root to layout version " + std::to_string(kLayoutVersion) + ": " + pmem_err());
  PRoot* root = static_cast<PRoot*>(pmemobj_direct(r));
  Tx tx(*this, TxLog::Bounded);
  tx.add(root, sizeof(PRoot));
  if (version == 4) {
    root->layout = kLayoutInPlace;
    root->pad5 = 0;
    root->vlog_off = 0;
  }
  // allocated by the engine once the pool has room (Engine::open_pool)
  if (version <= 5) root->copy_blocks_off = 0;
  // Before version 7 every slot was synced before the publish that made it
  // live: nothing before the published tail needs replaying.
  root->mark_seg = root->layout == kLayoutLogged ? kMarkAtTail : 0;
  root->mark_off = 0;
  root->version = kLayoutVersion;
  root->checksum = root_sum(root);
  tx.commit();
}

// write_file's pwrite puts bytes at the file offset equal to their pool
// offset, which holds for a pool that is one file mapped from its start (a
// pool set is several): the pool's first page and its root are compared as
// read through the file and through the mapping, else stores are used.
void Pool::open_file_writes() {
  if (const char* v = std::getenv("PMEMPS_LOG_PWRITE"); v && std::string(v) == "0") return;
  const int fd = open(path_.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  std::vector<char> buf(4096);
  const uint64_t ro = off_of(root_);
  const bool same = size_ >= buf.size() && pread(fd, buf.data(), buf.size(), 0) == static_cast<ssize_t>(buf.size()) &&
                    std::memcmp(buf.data(), base(), buf.size()) == 0 &&
                    pread(fd, buf.data(), sizeof(PRoot), static_cast<off_t>(ro)) == static_cast<ssize_t>(sizeof(PRoot)) &&
                    std::memcmp(buf.data(), root_, sizeof(PRoot)) == 0;
  if (!same) {
    close(fd);
    return;
  }
  file_fd_ = fd;
  const char* sp = std::getenv("PMEMPS_SLOT_PWRITE");
  slot_pwrite_ = !(sp && std::string(sp) == "0");
  if (const char* w = std::getenv("PMEMPS_LOG_WARM"); w && std::string(w) == "1") {
    warmer_ = std::make_unique<PageWarmer>(path_);
    if (!warmer_->ok()) warmer_.reset();
  }
}

void Pool::write_file(void* dst, const void* src, size_t n) {
  if (is_pmem_) return write(dst, src, n);
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  while (n > 0 && file_fd_ >= 0) {
    const ssize_t w = pwrite(file_fd_, s, n, static_cast<off_t>(off_of(d)));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    s += w;
    d += w;
    n -= static_cast<size_t>(w);
  }
  if (n > 0) std::memcpy(d, s, n);
}

Pool::~Pool() {
  warmer_.reset();
  if (file_fd_ >= 0) close(file_fd_);
  if (pop_) pmemobj_close(pop_);
  if (lock_fd_ >= 0) close(lock_fd_);  // releases the flock
}

void Pool::Envelope::add(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  std::lock_guard<std::mutex> g(mu);
  if (!lo || c < lo) lo = c;
  if (c + n > hi) hi = c + n;
}

std::pair<const char*, const char*> Pool::Envelope::take() {
  std::lock_guard<std::mutex> g(mu);
  std::pair<const char*, const char*> r{lo, hi};
  lo = hi = nullptr;
  return r;
}

void Pool::add_range(const void* p, size_t n) {
  if (is_pmem_) {
    pmemobj_flush(pop_, p, n);
    return;
  }
  // msync path: only the envelope matters (one sync, the kernel writes the
  // dirty pages inside it), so no list grows and nothing forces early syncs.
  env_.add(p, n);
}

void Pool::persist_envelope(Envelope& env) {
  std::lock_guard<std::mutex> sg(env.sync_mu);
  auto [lo, hi] = env.take();
  if (!lo) return;
  pmemobj_persist(pop_, lo, static_cast<size_t>(hi - lo));
  flush_calls_++;
}

void Pool::persist_ranges() {
  if (is_pmem_) {
    pmemobj_drain(pop_);
    flush_calls_++;
    return;
  }
  persist_envelope(env_);
}

void Pool::persist_lazy() {
  if (!is_pmem_) persist_envelope(lazy_);
}

uint64_t Pool::used_bytes() {
  uint64_t total = 0;
  for (PMEMoid o = pmemobj_first(pop_); !OID_IS_NULL(o); o = pmemobj_next(o)) total += pmemobj_alloc_usable_size(o);
  return total;
}

Tx::Tx(Pool& pool, TxLog log) : pool_(pool), bounded_(log == TxLog::Bounded) {
  if (pmemobj_tx_begin(pool_.pop(), nullptr, TX_PARAM_NONE) != 0)
    throw Error(Code::Io, std::string("cannot begin a pool transaction: ") + pmem_err());
  active_ = true;
  // Extending the undo log allocates from the heap. A bounded transaction
  // must not (it has to work on a full pool), and it fails on every pool,
  // full or not, when it outgrows the lane's log, so tests catch that.
  // (libpmemobj resets this at every transaction begin.)
  if (bounded_ && pmemobj_tx_log_auto_alloc(TX_LOG_TYPE_SNAPSHOT, 0) != 0) {
    const std::string m = pmem_err();
    if (pmemobj_tx_stage() == TX_STAGE_WORK) pmemobj_tx_abort(ECANCELED);
    pmemobj_tx_end();  // the destructor does not run for a constructor that throws
    active_ = false;
    throw Error(Code::Internal, "cannot configure the transaction log: " + m);
  }
}

Tx::~Tx() {
  if (!active_) return;
  if (pmemobj_tx_stage() == TX_STAGE_WORK) pmemobj_tx_abort(ECANCELED);
  pmemobj_tx_end();
}

void Tx::add(void* p, size_t n) {
  if (pmemobj_tx_xadd_range_direct(p, n, POBJ_XADD_NO_ABORT) != 0) {
    if (bounded_) throw Error(Code::Internal, std::string("a bounded pool transaction outgrew its log (a bug: please report it): ") + pmem_err());
    throw Error(errno == ENOMEM ? Code::OutOfSpace : Code::Io, std::string("pool transaction failed: ") + pmem_err());
  }
}

uint64_t Tx::alloc(size_t n, Fill fill) {
  const uint64_t flags = POBJ_XALLOC_NO_ABORT | (fill == Fill::Zeroed ? POBJ_XALLOC_ZERO : 0) | (fill == Fill::Later ? POBJ_XALLOC_NO_FLUSH : 0);
  PMEMoid o = pmemobj_tx_xalloc(Pool::alloc_size(n), 1, flags);
  while (OID_IS_NULL(o) && errno == ENOMEM && pool_.make_room()) o = pmemobj_tx_xalloc(Pool::alloc_size(n), 1, flags);
  if (OID_IS_NULL(o))
    throw Error(Code::OutOfSpace,
                "the pool is full (" + std::to_string(pool_.size() >> 20) + " MiB); create it larger with --pool-size / poolMb (" + pmem_err() + ")");
  return o.off;
}

void Tx::free(uint64_t off) {
  if (off == 0) return;
  if (pmemobj_tx_xfree(pool_.oid(off), POBJ_XFREE_NO_ABORT) != 0) throw Error(Code::Io, std::string("pool transaction failed: ") + pmem_err());
}

void Tx::commit() {
  pmemobj_tx_commit();
  active_ = false;
  if (pmemobj_tx_end() != 0) throw Error(Code::Io, std::string("pool transaction commit failed: ") + pmem_err());
}

}  // namespace pmemps
