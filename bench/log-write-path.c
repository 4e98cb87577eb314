// How a log's records reach a file off PMEM (BENCHMARKS.md, "Step 4's
// lower bounds" and "The log written with pwrite"): stores through a
// shared mapping into fresh pages of a fallocate'd file then msync; pwrite
// of 1 MiB buffers then fdatasync; the same then msync of the mapping (the
// engine's way since the log is written with pwrite); a pwrite per record
// then msync; stores into pages written before (still cached, then dropped
// from the cache) then msync. 544-byte records, as a dim-64 Adagrad row's.
//   gcc -O2 bench/log-write-path.c -o lw && ./lw DIR/file MiB
// Needs 5 x MiB free on DIR's filesystem; removes its file.
//   ./lw DIR/file MiB warm
// instead measures what a page the page cache does not hold costs a pwrite
// (docs/design.md, "New segments read ahead"): 1 MiB pwrites into a
// fallocate'd file, pieces of MiB in turn, first straight into new pages,
// then into pages read ahead with pread (as page_warmer.h does, on a
// descriptor marked POSIX_FADV_RANDOM), each followed by fdatasync. Needs
// 8 x MiB free.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { kRec = 544, kBuf = 1 << 20 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// Stores records over the first len bytes of the mapping, then msyncs them.
static void store_and_msync(const char* what, char* m, size_t len, const char* rec) {
  const double t0 = now();
  for (size_t o = 0; o + kRec <= len; o += kRec) memcpy(m + o, rec, kRec);
  const double t1 = now();
  msync(m, len, MS_SYNC);
  const double t2 = now();
  printf("%s: stores %.3f s, msync %.3f s, total %.3f s\n", what, t1 - t0, t2 - t1, t2 - t0);
}

// pwrites len bytes at file offset `at` in pieces of `piece` bytes from
// src, then msyncs the mapping's range over them.
static int pwrite_and_msync(const char* what, int fd, char* m, size_t at, size_t len, const char* src, size_t piece) {
  const double t0 = now();
  for (size_t o = 0; o + piece <= len; o += piece)
    if (pwrite(fd, src, piece, (off_t)(at + o)) != (ssize_t)piece) {
      perror("pwrite");
      exit(1);
    }
  const double t1 = now();
  msync(m + at, len, MS_SYNC);
  const double t2 = now();
  return printf("%s: writes %.3f s, msync %.3f s, total %.3f s\n", what, t1 - t0, t2 - t1, t2 - t0);
}

static double pwrite_range(int fd, size_t at, size_t len, const char* buf) {
  const double t0 = now();
  for (size_t o = 0; o < len; o += kBuf)
    if (pwrite(fd, buf, kBuf, (off_t)(at + o)) != kBuf) {
      perror("pwrite");
      exit(1);
    }
  return now() - t0;
}

static int warm(const char* path, size_t len) {
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  int rfd = open(path, O_RDONLY);
  if (fd < 0 || rfd < 0 || posix_fallocate(fd, 0, 8 * len)) {
    perror(path);
    return 1;
  }
  posix_fadvise(rfd, 0, 0, POSIX_FADV_RANDOM);
  char* buf = malloc(kBuf);
  char* rbuf = malloc(kBuf);
  memset(buf, 7, kBuf);
  // Pages freed just before are cheap to take again: use them up first.
  printf("first %zu MiB (pages freed recently): %.3f s\n", 2 * len >> 20, pwrite_range(fd, 0, 2 * len, buf));
  fdatasync(fd);
  for (int round = 0; round < 3; round++) {
    const size_t a = (2 + 2 * round) * len, b = a + len;
    const double w = pwrite_range(fd, a, len, buf);
    double t0 = now();
    fdatasync(fd);
    printf("into new pages: pwrite %.3f s (%.0f MB/s), fdatasync %.3f s\n", w, len / 1e6 / w, now() - t0);
    t0 = now();
    for (size_t o = 0; o < len; o += kBuf)
      if (pread(rfd, rbuf, kBuf, (off_t)(b + o)) < 0) perror("pread");
    const double r = now() - t0;
    const double w2 = pwrite_range(fd, b, len, buf);
    t0 = now();
    fdatasync(fd);
    printf("read ahead: pread %.3f s, then pwrite %.3f s (%.0f MB/s), fdatasync %.3f s\n", r, w2, len / 1e6 / w2, now() - t0);
  }
  free(buf);
  free(rbuf);
  close(rfd);
  close(fd);
  unlink(path);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 4 && strcmp(argv[3], "warm") == 0) return warm(argv[1], (size_t)atoi(argv[2]) << 20);
  if (argc != 3) {
    fprintf(stderr, "usage: %s FILE MiB [warm]\n", argv[0]);
    return 2;
  }
  const size_t len = (size_t)atoi(argv[2]) << 20;
  int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || posix_fallocate(fd, 0, 5 * len)) {
    perror(argv[1]);
    return 1;
  }
  char rec[kRec];
  memset(rec, 7, sizeof rec);
  char* m = mmap(0, 5 * len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  store_and_msync("mmap fresh", m, len, rec);

  char* buf = malloc(kBuf);
  for (size_t o = 0; o < kBuf; o += kRec) memcpy(buf + o, rec, kBuf - o < kRec ? kBuf - o : kRec);
  const double t0 = now();
  for (size_t o = 0; o < len; o += kBuf)
    if (pwrite(fd, buf, kBuf, (off_t)(len + o)) != kBuf) {
      perror("pwrite");
      return 1;
    }
  const double t1 = now();
  fdatasync(fd);
  const double t2 = now();
  printf("pwrite fresh: writes %.3f s, fdatasync %.3f s, total %.3f s\n", t1 - t0, t2 - t1, t2 - t0);

  pwrite_and_msync("pwrite 1 MiB fresh, msync", fd, m, 3 * len, len, buf, kBuf);
  pwrite_and_msync("pwrite a record fresh, msync", fd, m, 4 * len, len, rec, kRec);

  rec[0] = 9;
  store_and_msync("mmap rewrite (cached)", m, len, rec);

  madvise(m, len, MADV_DONTNEED);
  posix_fadvise(fd, 0, (off_t)len, POSIX_FADV_DONTNEED);
  rec[0] = 10;
  store_and_msync("mmap rewrite (uncached)", m, len, rec);
  munmap(m, 5 * len);
  free(buf);
  close(fd);
  unlink(argv[1]);
  return 0;
}
