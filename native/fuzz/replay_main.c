/* replay_main.c: runs a libFuzzer harness as a plain program over the files
 * (or directories of files) given as arguments: the regression corpus of
 * crashing inputs found by fuzzing, replayed by a normal build
 * (make check-fuzz-regressions). Prints how many inputs it ran. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned long ran;

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return -1;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
  size_t got = n > 0 ? fread(buf, 1, (size_t)n, f) : 0;
  fclose(f);
  LLVMFuzzerTestOneInput(buf, got);
  free(buf);
  ran++;
  return 0;
}

static int run_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    perror(path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) return run_file(path);
  DIR *d = opendir(path);
  if (!d) return -1;
  struct dirent *e;
  int r = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", path, e->d_name);
    if (run_path(p) != 0) r = -1;
  }
  closedir(d);
  return r;
}

int main(int argc, char **argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  int r = 0;
  for (int i = 1; i < argc; i++)
    if (run_path(argv[i]) != 0) r = 1;
  printf("%s: %lu inputs replayed without a crash\n", argc > 0 ? argv[0] : "replay", ran);
  return r;
}
