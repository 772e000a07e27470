/* st_bench: the physical limits and the C-level contenders that the Python
 * benchmark suite (benchmarks/bench_cpu.py) measures beside the packages.
 *
 *   st_bench memcpy BYTES THREADS RUNS [SRC]  multi-threaded memcpy into
 *                                          fresh memory (4 KiB pages, and with
 *                                          huge pages advised), and into
 *                                          touched memory; the source is SRC's
 *                                          first BYTES in the page cache
 *   st_bench load FILE BACKEND THREADS RUNS [hugepages]  engine load of every
 *                                          tensor into fresh memory, every byte
 *                                          touched (hugepages: ST_EXEC_HUGEPAGES)
 *   st_bench write PATH BYTES RUNS         raw sequential write + fsync
 *   st_bench save SRC OUT RUNS MODE        st_writer_write_path of every tensor
 *                                          of SRC (mapped, pointer tensors) to
 *                                          OUT (removed first, untimed); MODE
 *                                          buffered (fsync), direct
 *                                          (ST_WRITE_DIRECT, fsync) or nofsync
 *
 * Every result is one JSON object on stdout: seconds per run (median) and
 * GB/s. Not part of the library; not installed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "safetensors.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Fresh anonymous memory, like torch.empty for a large tensor. */
static unsigned char *fresh(size_t n) {
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

typedef struct copy_job {
  unsigned char *dst;
  const unsigned char *src;
  size_t len;
} copy_job;

static void *copy_worker(void *arg) {
  copy_job *j = arg;
  memcpy(j->dst, j->src, j->len);
  return NULL;
}

static void par_memcpy(unsigned char *dst, const unsigned char *src, size_t n, int threads) {
  pthread_t t[256];
  copy_job jobs[256];
  if (threads < 1) threads = 1;
  if (threads > 256) threads = 256;
  size_t per = (n / (size_t)threads + 4095) & ~(size_t)4095;
  int k = 0;
  for (size_t off = 0; off < n && k < threads; off += per, k++)
    jobs[k] = (copy_job){dst + off, src + off, off + per > n ? n - off : per};
  int started = 0;
  for (int i = 1; i < k; i++)
    if (pthread_create(&t[started], NULL, copy_worker, &jobs[i]) == 0) started++;
    else copy_worker(&jobs[i]);
  if (k > 0) copy_worker(&jobs[0]);
  for (int i = 0; i < started; i++) pthread_join(t[i], NULL);
}

static uint64_t touch(const unsigned char *p, size_t n) {
  uint64_t acc = 0;
  for (size_t i = 0; i < n; i += 4096) acc += p[i];
  return acc;
}

/* The source: src_path's bytes in the page cache, mapped and populated
 * (untimed), so that the source costs no fresh memory, as a load's source
 * costs none; without a file, a filled anonymous buffer. */
static unsigned char *memcpy_source(const char *src_path, size_t n) {
  if (src_path == NULL) {
    unsigned char *src = fresh(n);
    if (src != NULL) memset(src, 0x5a, n);
    return src;
  }
  int fd = open(src_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
  close(fd);
  return p == MAP_FAILED ? NULL : p;
}

static int bench_memcpy(size_t n, int threads, int runs, const char *src_path) {
  unsigned char *src = memcpy_source(src_path, n);
  if (src == NULL) return 1;
  double tf[64], th[64], tt[64];
  for (int r = 0; r < runs && r < 64; r++) {
    /* Fresh destinations first: on a VM whose freed memory goes back to the
     * host, the first pages a process takes are the cheapest, and a load
     * gets those too. */
    unsigned char *dst = fresh(n);
    if (dst == NULL) return 1;
    double t0 = now();
    par_memcpy(dst, src, n, threads);
    tf[r] = now() - t0;
    munmap(dst, n);
    /* The same with transparent huge pages advised, as the engine's
     * ST_EXEC_HUGEPAGES does (the advice itself is timed). */
    dst = fresh(n);
    if (dst == NULL) return 1;
    t0 = now();
    (void)madvise(dst, n, MADV_HUGEPAGE);
    par_memcpy(dst, src, n, threads);
    th[r] = now() - t0;
    /* Into memory already touched (the same buffer, copied again). */
    t0 = now();
    par_memcpy(dst, src, n, threads);
    tt[r] = now() - t0;
    munmap(dst, n);
  }
  double mf = median(tf, runs), mh = median(th, runs), mt = median(tt, runs);
  printf("{\"op\":\"memcpy\",\"bytes\":%zu,\"threads\":%d,\"fresh_s\":%.6f,\"fresh_gbps\":%.3f,"
         "\"fresh_thp_s\":%.6f,\"fresh_thp_gbps\":%.3f,"
         "\"touched_s\":%.6f,\"touched_gbps\":%.3f}\n",
         n, threads, mf, (double)n / mf / 1e9, mh, (double)n / mh / 1e9, mt,
         (double)n / mt / 1e9);
  return 0;
}

static int bench_load(const char *path, const char *backend, int threads, int runs,
                      uint32_t flags) {
  st_open_options o;
  st_open_options_init(&o);
  o.backend = strcmp(backend, "pread") == 0 ? ST_BACKEND_PREAD : ST_BACKEND_MMAP;
  double t[64];
  uint64_t bytes = 0, sink = 0;
  for (int r = 0; r < runs && r < 64; r++) {
    double t0 = now();
    st_file *f;
    st_error err;
    if (st_open(path, &o, &f, &err) != ST_OK) {
      fprintf(stderr, "open: %s\n", err.message);
      return 1;
    }
    size_t total = (size_t)st_data_size(f);
    unsigned char *dst = fresh(total ? total : 1);
    st_plan *plan;
    if (dst == NULL || st_plan_new(f, NULL, &plan, NULL) != ST_OK) return 1;
    size_t off = 0;
    for (size_t i = 0; i < st_tensor_count(f); i++) {
      st_tensor_info ti;
      st_tensor_get(f, i, &ti);
      size_t len = (size_t)(ti.data_end - ti.data_begin);
      if (st_plan_add_tensor(plan, i, dst + off, len, NULL) != ST_OK) return 1;
      off += len;
    }
    st_exec_options eo;
    st_exec_options_init(&eo);
    eo.threads = (uint32_t)threads;
    eo.flags = flags;
    if (st_plan_execute(plan, &eo, NULL, &err) != ST_OK) {
      fprintf(stderr, "execute: %s\n", err.message);
      return 1;
    }
    sink += touch(dst, total);
    t[r] = now() - t0;
    bytes = total;
    st_plan_free(plan);
    st_close(f);
    munmap(dst, total ? total : 1);
  }
  double m = median(t, runs);
  printf("{\"op\":\"load\",\"backend\":\"%s\",\"hugepages\":%d,\"bytes\":%llu,\"threads\":%d,"
         "\"s\":%.6f,\"gbps\":%.3f,\"sink\":%llu}\n",
         backend, (flags & ST_EXEC_HUGEPAGES) != 0, (unsigned long long)bytes, threads, m,
         (double)bytes / m / 1e9, (unsigned long long)(sink & 1));
  return 0;
}

static int bench_write(const char *path, size_t n, int runs) {
  unsigned char *src = fresh(n);
  if (src == NULL) return 1;
  memset(src, 0x33, n);
  double t[64];
  for (int r = 0; r < runs && r < 64; r++) {
    unlink(path);
    double t0 = now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return 1;
    size_t done = 0;
    while (done < n) {
      size_t chunk = n - done < (8u << 20) ? n - done : (8u << 20);
      ssize_t w = write(fd, src + done, chunk);
      if (w < 0) {
        if (errno == EINTR) continue;
        return 1;
      }
      done += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) return 1;
    t[r] = now() - t0;
  }
  unlink(path);
  double m = median(t, runs);
  printf("{\"op\":\"write\",\"bytes\":%zu,\"s\":%.6f,\"gbps\":%.3f}\n", n, m, (double)n / m / 1e9);
  return 0;
}

static int bench_save(const char *src, const char *out, int runs, const char *mode) {
  uint32_t flags;
  if (strcmp(mode, "buffered") == 0) flags = 0;
  else if (strcmp(mode, "direct") == 0) flags = ST_WRITE_DIRECT;
  else if (strcmp(mode, "nofsync") == 0) flags = ST_WRITE_NO_FSYNC;
  else return 2;
  st_file *f;
  st_error err;
  if (st_open(src, NULL, &f, &err) != ST_OK) {
    fprintf(stderr, "open: %s\n", err.message);
    return 1;
  }
  st_writer *w;
  if (st_writer_new(NULL, &w, &err) != ST_OK) return 1;
  size_t n = st_tensor_count(f);
  for (size_t i = 0; i < n; i++) {
    st_tensor_info ti;
    const void *data;
    st_tensor_get(f, i, &ti);
    if (st_tensor_data(f, i, &data) != ST_OK ||
        st_writer_add_tensor(w, ti.name, ti.name_len, ti.dtype, ti.shape, ti.rank, data,
                             ti.data_end - ti.data_begin, &err) != ST_OK) {
      fprintf(stderr, "add: %s\n", err.message);
      return 1;
    }
  }
  for (size_t k = 0; k < st_metadata_count(f); k++) {
    const char *key, *val;
    size_t kl, vl;
    st_metadata_get(f, k, &key, &kl, &val, &vl);
    if (st_writer_add_metadata(w, key, kl, val, vl, &err) != ST_OK) return 1;
  }
  uint64_t bytes = 0;
  if (st_writer_size(w, &bytes, &err) != ST_OK) return 1;
  double t[64];
  for (int r = 0; r < runs && r < 64; r++) {
    /* Untimed: replacing a file whose pages are cached frees them inside
     * the rename, which would charge one mode for the one before it. */
    unlink(out);
    double t0 = now();
    if (st_writer_write_path(w, out, flags, &err) != ST_OK) {
      fprintf(stderr, "save: %s (errno %d)\n", err.message, err.sys_errno);
      return 1;
    }
    t[r] = now() - t0;
  }
  st_writer_free(w);
  st_close(f);
  double m = median(t, runs);
  printf("{\"op\":\"save\",\"mode\":\"%s\",\"tensors\":%zu,\"bytes\":%llu,\"s\":%.6f,"
         "\"gbps\":%.3f}\n",
         mode, n, (unsigned long long)bytes, m, (double)bytes / m / 1e9);
  return 0;
}

int main(int argc, char **argv) {
  if ((argc == 5 || argc == 6) && strcmp(argv[1], "memcpy") == 0)
    return bench_memcpy((size_t)strtoull(argv[2], NULL, 10), atoi(argv[3]), atoi(argv[4]),
                        argc == 6 ? argv[5] : NULL);
  if ((argc == 6 || (argc == 7 && strcmp(argv[6], "hugepages") == 0)) &&
      strcmp(argv[1], "load") == 0)
    return bench_load(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]),
                      argc == 7 ? ST_EXEC_HUGEPAGES : 0u);
  if (argc == 5 && strcmp(argv[1], "write") == 0)
    return bench_write(argv[2], (size_t)strtoull(argv[3], NULL, 10), atoi(argv[4]));
  if (argc == 6 && strcmp(argv[1], "save") == 0)
    return bench_save(argv[2], argv[3], atoi(argv[4]), argv[5]);
  fprintf(stderr,
          "usage: st_bench memcpy BYTES THREADS RUNS [SRC] | load FILE mmap|pread THREADS RUNS [hugepages] |"
          " write PATH BYTES RUNS | save SRC OUT RUNS buffered|direct|nofsync\n");
  return 2;
}
