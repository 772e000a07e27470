/* Fuzz target: open, then read every tensor and random slices of it. The
 * input is a whole file; the slices come from a generator seeded with the
 * input's hash. Every read path must agree with the zero-copy view and with
 * an independent element-by-element slicer: st_tensor_read, st_read_range,
 * st_tensor_read_slice, st_plan_add_slice + st_plan_execute, over a memory
 * handle and over a pread handle of the same bytes (memfd). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_OUT ((uint64_t)1 << 20)
#define SLICES_PER_TENSOR 4

static uint8_t out_a[MAX_OUT], out_b[MAX_OUT], out_c[MAX_OUT], out_ref[MAX_OUT];

/* A pread handle over the same bytes; NULL when memfd is unavailable. */
static st_file *open_pread(const uint8_t *data, size_t size, st_status *s) {
  *s = ST_OK;
  int fd = memfd_create("fuzz", MFD_CLOEXEC);
  if (fd < 0) return NULL;
  size_t done = 0;
  while (done < size) {
    ssize_t w = write(fd, data + done, size - done);
    if (w <= 0) {
      close(fd);
      return NULL;
    }
    done += (size_t)w;
  }
  st_open_options o;
  st_open_options_init(&o);
  o.backend = ST_BACKEND_PREAD;
  st_file *f = NULL;
  *s = st_open_fd(fd, &o, &f, NULL);
  close(fd);
  return f;
}

static void check_slice(st_file *f, st_file *p, size_t i, const st_tensor_info *t,
                        const uint8_t *bytes, fz_rng *r) {
  st_range rg[ST_DEFAULT_MAX_RANK + 1];
  memset(rg, 0, sizeof rg);
  size_t nr = (size_t)fz_below(r, (uint64_t)t->rank + 2); /* may exceed rank */
  for (size_t d = 0; d < nr; d++) {
    uint64_t dim = d < t->rank ? t->shape[d] : 1;
    rg[d].start = fz_bound(r, dim);
    rg[d].stop = fz_bound(r, dim);
    uint64_t k = fz_below(r, 10);
    rg[d].step = k == 0 ? 0 : k == 1 ? -1 : k == 2 ? INT64_MAX : (int64_t)k - 2;
  }
  uint64_t shape[ST_DEFAULT_MAX_RANK];
  uint64_t nbytes = 0;
  st_status s = st_slice_shape(f, i, rg, nr, shape, &nbytes);
  FZ_CHECK(FZ_KNOWN_STATUS(s));
  bool bad = nr > t->rank;
  for (size_t d = 0; d < nr; d++) bad = bad || rg[d].step < 1;
  if (bad) {
    FZ_CHECK(s == ST_ERR_INVALID_SLICE);
    return;
  }
  unsigned bits = st_dtype_bits(t->dtype);
  if (s == ST_ERR_UNSUPPORTED) {
    FZ_CHECK(bits % 8 != 0);
    return;
  }
  FZ_CHECK(s == ST_OK);
  fz_dim dims[ST_DEFAULT_MAX_RANK];
  fz_resolve(t, rg, nr, dims);
  uint64_t numel = 1;
  for (uint32_t d = 0; d < t->rank; d++) {
    FZ_CHECK(shape[d] == dims[d].count);
    numel *= dims[d].count;
  }
  FZ_CHECK(nbytes == numel * bits / 8);
  if (nbytes > MAX_OUT) return;

  st_error err;
  memset(out_a, 0xEE, (size_t)nbytes);
  s = st_tensor_read_slice(f, i, rg, nr, out_a, (size_t)nbytes, &err);
  FZ_CHECK(s == ST_OK);
  if (nbytes > 0)
    FZ_CHECK(st_tensor_read_slice(f, i, rg, nr, out_b, (size_t)nbytes - 1, NULL) ==
             ST_ERR_BUFFER_TOO_SMALL);
  if (bits % 8 == 0) {
    uint64_t m = fz_ref_slice(t, dims, bytes, out_ref);
    FZ_CHECK(m == nbytes);
    FZ_CHECK(memcmp(out_a, out_ref, (size_t)nbytes) == 0);
  }

  /* The engine: one plan, executed with a random thread count and chunk. */
  st_plan *plan = NULL;
  FZ_CHECK(st_plan_new(f, NULL, &plan, NULL) == ST_OK);
  memset(out_b, 0xDD, (size_t)nbytes);
  s = st_plan_add_slice(plan, i, rg, nr, out_b, (size_t)nbytes, NULL);
  FZ_CHECK(s == ST_OK);
  uint64_t planned = st_plan_bytes(plan);
  FZ_CHECK(planned == nbytes);
  st_exec_options eo;
  st_exec_options_init(&eo);
  eo.threads = (uint32_t)fz_below(r, 3) + 1;
  eo.chunk_size = fz_below(r, 2) ? 1 + fz_below(r, 64) : 0;
  st_exec_stats stats;
  FZ_CHECK(st_plan_execute(plan, &eo, &stats, NULL) == ST_OK);
  FZ_CHECK(stats.bytes_copied == nbytes);
  st_plan_free(plan);
  FZ_CHECK(memcmp(out_a, out_b, (size_t)nbytes) == 0);

  if (p != NULL) {
    memset(out_c, 0xCC, (size_t)nbytes);
    FZ_CHECK(st_tensor_read_slice(p, i, rg, nr, out_c, (size_t)nbytes, NULL) == ST_OK);
    FZ_CHECK(memcmp(out_a, out_c, (size_t)nbytes) == 0);
    plan = NULL;
    FZ_CHECK(st_plan_new(p, NULL, &plan, NULL) == ST_OK);
    memset(out_c, 0xBB, (size_t)nbytes);
    FZ_CHECK(st_plan_add_slice(plan, i, rg, nr, out_c, (size_t)nbytes, NULL) == ST_OK);
    FZ_CHECK(st_plan_execute(plan, &eo, NULL, NULL) == ST_OK);
    st_plan_free(plan);
    FZ_CHECK(memcmp(out_a, out_c, (size_t)nbytes) == 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  st_file *f = NULL;
  st_status s = st_open_memory(data, size, NULL, &f, NULL);
  FZ_CHECK(FZ_KNOWN_STATUS(s));
  st_status sp;
  st_file *p = open_pread(data, size, &sp);
  /* Both backends decide alike. */
  if (p != NULL || sp != ST_OK) FZ_CHECK(sp == s);
  if (s != ST_OK) {
    st_close(p);
    return 0;
  }
  fz_rng r = {fz_hash(data, size)};
  size_t n = st_tensor_count(f);
  for (size_t i = 0; i < n && i < 64; i++) {
    st_tensor_info t;
    FZ_CHECK(st_tensor_get(f, i, &t) == ST_OK);
    const void *view = NULL;
    FZ_CHECK(st_tensor_data(f, i, &view) == ST_OK);
    uint64_t len = t.data_end - t.data_begin;
    if (len <= MAX_OUT) {
      FZ_CHECK(st_tensor_read(f, i, out_a, (size_t)len, NULL) == ST_OK);
      if (len > 0) FZ_CHECK(memcmp(out_a, view, (size_t)len) == 0);
      FZ_CHECK(st_read_range(f, t.data_begin, len, out_b, NULL) == ST_OK);
      if (len > 0) FZ_CHECK(memcmp(out_b, view, (size_t)len) == 0);
      if (p != NULL) {
        FZ_CHECK(st_tensor_read(p, i, out_c, (size_t)len, NULL) == ST_OK);
        if (len > 0) FZ_CHECK(memcmp(out_c, view, (size_t)len) == 0);
        const void *pv = NULL;
        FZ_CHECK(st_tensor_data(p, i, &pv) == ST_ERR_UNSUPPORTED);
      }
      if (len > 0)
        FZ_CHECK(st_tensor_read(f, i, out_a, (size_t)len - 1, NULL) == ST_ERR_BUFFER_TOO_SMALL);
    }
    for (int k = 0; k < SLICES_PER_TENSOR; k++) check_slice(f, p, i, &t, view, &r);
  }
  /* Ranges that leave the data section are refused. */
  uint64_t ds = st_data_size(f);
  FZ_CHECK(st_read_range(f, ds, 1, out_a, NULL) == ST_ERR_INVALID_ARGUMENT);
  FZ_CHECK(st_read_range(f, 1, UINT64_MAX, out_a, NULL) == ST_ERR_INVALID_ARGUMENT);
  st_close(p);
  st_close(f);
  return 0;
}
