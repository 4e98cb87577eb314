// What a slot's write costs on a page that a sync cleaned (docs/design.md,
// "Slot writes with pwrite"): a file of MiB mebibytes is mapped, written
// and msync'd, so that every page is cached, clean and write-protected in
// the mapping, as the row records' pages are after the slots' mark or the
// kernel's write-back; then 100,000 16-byte slots at random 56-byte records
// are written, either with stores through the mapping (a write-protect
// fault into the filesystem for each page touched first) or with a pwrite
// each on the file. Seeded: every run writes the same slots.
//   gcc -O2 bench/slot-write.c -o sw && ./sw DIR/file 560 store && ./sw DIR/file 560 pwrite
// Needs MiB free on DIR's filesystem; removes its file.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

enum { kRec = 56, kSlots = 100000 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  if (argc != 4 || (strcmp(argv[3], "store") != 0 && strcmp(argv[3], "pwrite") != 0)) {
    fprintf(stderr, "usage: %s FILE MiB store|pwrite\n", argv[0]);
    return 2;
  }
  const size_t len = (size_t)atol(argv[2]) << 20;
  const int pw = strcmp(argv[3], "pwrite") == 0;
  const int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || posix_fallocate(fd, 0, (off_t)len) != 0) {
    perror("open/fallocate");
    return 1;
  }
  char* m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  madvise(m, len, MADV_RANDOM);
  memset(m, 1, len);
  msync(m, len, MS_SYNC);
  uint64_t s = 12345;
  const size_t nrec = len / kRec;
  size_t* off = malloc(sizeof(size_t) * kSlots);
  for (int i = 0; i < kSlots; i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    off[i] = ((s >> 11) % nrec) * kRec + 16;
  }
  char v[16];
  memset(v, 7, sizeof v);
  const double t0 = now();
  for (int i = 0; i < kSlots; i++) {
    if (!pw) {
      memcpy(m + off[i], v, sizeof v);
    } else if (pwrite(fd, v, sizeof v, (off_t)off[i]) != (ssize_t)sizeof v) {
      perror("pwrite");
      return 1;
    }
  }
  const double t1 = now();
  printf("%s: %d slots in %.3f s = %.2f us each\n", argv[3], kSlots, t1 - t0, (t1 - t0) * 1e6 / kSlots);
  munmap(m, len);
  close(fd);
  unlink(argv[1]);
  free(off);
  return 0;
}
