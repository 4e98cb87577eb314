// What a page the page cache takes afresh costs a write on this machine, and
// whether the file's kind matters (docs/design.md, "The remaining gaps on a
// disk"): 512 MiB of 1 MiB pwrites + fdatasync into (1) a new file that
// grows as it is written, (2) a fallocate'd new file, (3) the same again;
// each file is removed before the next, so its pages return to the kernel.
// Run it after the machine has been idle a while (free page reporting gives
// free memory back to the host after a few seconds), then again at once.
//   gcc -O2 bench/fresh-pages.c -o fp && ./fp DIR/file [MiB] [first]
// first = extend (default) or falloc: which kind of file is written first.
// Needs MiB free on DIR's filesystem; removes its files.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { kBuf = 1 << 20 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void one(const char* base, const char* kind, size_t len, const char* buf) {
  char f[4096];
  snprintf(f, sizeof f, "%s.%s", base, kind);
  const int fd = open(f, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || (strcmp(kind, "falloc") == 0 && posix_fallocate(fd, 0, (off_t)len) != 0)) {
    perror(f);
    exit(1);
  }
  const double t0 = now();
  for (size_t o = 0; o < len; o += kBuf)
    if (pwrite(fd, buf, kBuf, (off_t)o) != kBuf) {
      perror("pwrite");
      exit(1);
    }
  const double t1 = now();
  fdatasync(fd);
  const double t2 = now();
  printf("%-7s write %.3f s (%.0f MB/s), sync %.3f s\n", kind, t1 - t0, len / 1e6 / (t1 - t0), t2 - t1);
  close(fd);
  unlink(f);
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE [MiB] [extend|falloc]\n", argv[0]);
    return 2;
  }
  const size_t len = (size_t)(argc > 2 ? atol(argv[2]) : 512) << 20;
  const int falloc_first = argc > 3 && strcmp(argv[3], "falloc") == 0;
  char* buf = malloc(kBuf);
  memset(buf, 3, kBuf);
  const char* a = falloc_first ? "falloc" : "extend";
  const char* b = falloc_first ? "extend" : "falloc";
  one(argv[1], a, len, buf);
  one(argv[1], b, len, buf);
  one(argv[1], a, len, buf);
  return 0;
}
