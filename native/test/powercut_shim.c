// A power cut for the msync path, preloaded into a crash test's child
// (LD_PRELOAD): every shared mapping of a file under $PMEMPS_POWERCUT_DIR
// gets a shadow file (<file>.durable) that holds what a power cut would
// leave of it. It starts as the file's content when first mapped, and each
// msync() of the mapping copies the pages it covers into it, as the kernel
// writes them. After the child is killed, the test rebuilds the pool from
// the shadow (test/crash.lib.ts, powerCut): stores that no msync covered
// are lost, as they would be if the machine had lost power, while a
// SIGKILL alone keeps them in the page cache and cannot show a missing
// sync.
//
// Invariants:
//  * The shadow changes only at the child's first mapping of the file and
//    in msync(); the pool file itself is left to the real calls.
//  * msync() copies before it syncs, so a range is in the shadow by the
//    time the engine goes on as if it were durable.
//  * Mappings of other files, and private mappings, cost one flags test.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_MAPS 64

struct map {
  char* addr;
  size_t len;
  off_t off;
  int shadow;  // fd of <file>.durable
};

static struct map maps[MAX_MAPS];
static int nmaps;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void* (*real_mmap)(void*, size_t, int, int, int, off_t);
static int (*real_munmap)(void*, size_t);
static int (*real_msync)(void*, size_t, int);

static void die(const char* what) {
  fprintf(stderr, "powercut_shim: %s\n", what);
  abort();
}

static void resolve(void) {
  if (!real_mmap) real_mmap = (void* (*)(void*, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
  if (!real_munmap) real_munmap = (int (*)(void*, size_t))dlsym(RTLD_NEXT, "munmap");
  if (!real_msync) real_msync = (int (*)(void*, size_t, int))dlsym(RTLD_NEXT, "msync");
}

static void write_all(int fd, const char* p, size_t n, off_t at) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, at);
    if (w <= 0) die("cannot write the shadow file");
    p += w;
    n -= (size_t)w;
    at += w;
  }
}

// The shadow of the file open as fd: created from the file's content the
// first time this process maps it.
static int open_shadow(int fd) {
  const char* dir = getenv("PMEMPS_POWERCUT_DIR");
  if (!dir || !*dir) return -1;
  char link[64], path[PATH_MAX], shadow[PATH_MAX + 16];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return -1;
  path[n] = 0;
  size_t dl = strlen(dir);
  if (strncmp(path, dir, dl) != 0 || path[dl] != '/') return -1;
  snprintf(shadow, sizeof shadow, "%s.durable", path);
  int s = open(shadow, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (s < 0) die("cannot create the shadow file");
  struct stat st;
  if (fstat(fd, &st) != 0) die("cannot stat the mapped file");
  static char buf[1 << 20];
  for (off_t at = 0; at < st.st_size;) {
    ssize_t r = pread(fd, buf, sizeof buf, at);
    if (r <= 0) die("cannot read the mapped file");
    write_all(s, buf, (size_t)r, at);
    at += r;
  }
  return s;
}

void* mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) {
  resolve();
  void* p = real_mmap(addr, len, prot, flags, fd, off);
  if (p == MAP_FAILED || fd < 0 || !(flags & MAP_SHARED) || !(prot & PROT_WRITE)) return p;
  int s = open_shadow(fd);
  if (s < 0) return p;
  pthread_mutex_lock(&mu);
  if (nmaps == MAX_MAPS) die("too many mappings");
  maps[nmaps++] = (struct map){(char*)p, len, off, s};
  pthread_mutex_unlock(&mu);
  return p;
}

int munmap(void* addr, size_t len) {
  resolve();
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nmaps; i++)
    if (maps[i].addr == addr) {
      close(maps[i].shadow);
      maps[i] = maps[--nmaps];
      break;
    }
  pthread_mutex_unlock(&mu);
  return real_munmap(addr, len);
}

int msync(void* addr, size_t len, int flags) {
  resolve();
  const long page = sysconf(_SC_PAGESIZE);
  char* lo = (char*)addr;
  char* hi = (char*)(((uintptr_t)addr + len + (uintptr_t)page - 1) & ~((uintptr_t)page - 1));
  pthread_mutex_lock(&mu);
  for (int i = 0; i < nmaps; i++) {
    struct map* m = &maps[i];
    char* a = lo > m->addr ? lo : m->addr;
    char* b = hi < m->addr + m->len ? hi : m->addr + m->len;
    if (a < b) write_all(m->shadow, a, (size_t)(b - a), m->off + (a - m->addr));
  }
  pthread_mutex_unlock(&mu);
  return real_msync(addr, len, flags);
}
