/* Fuzz target: writer round trip. The input is a small program describing a
 * tensor set and metadata (names of arbitrary bytes, any dtype number, odd
 * shapes, wrong lengths, producer callbacks that fail). Every refusal must be
 * the status the input deserves; every accepted set is written to memory and
 * to a descriptor, the two outputs must be byte-identical, in the reference's
 * layout, and reopen to exactly what was added. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_TENSORS 8
#define MAX_META 4

typedef struct reader {
  const uint8_t *p;
  size_t n;
} reader;

static uint8_t take(reader *r) {
  if (r->n == 0) return 0;
  r->n--;
  return *r->p++;
}

/* Up to max bytes of the input, as a string (may be short at the end). */
static size_t take_str(reader *r, size_t max, const uint8_t **s) {
  size_t len = take(r) % (max + 1);
  if (len > r->n) len = r->n;
  *s = r->p;
  r->p += len;
  r->n -= len;
  return len;
}

typedef struct tensor {
  const uint8_t *name;
  size_t name_len;
  st_dtype dtype;
  uint32_t rank;
  uint64_t shape[6];
  uint8_t *bytes;
  uint64_t nbytes;
  int fail_cb; /* producer fails at this call (1-based); 0 = never */
  int cb_calls;
  int accepted;
} tensor;

static int produce(void *ctx, uint64_t offset, void *dst, size_t len) {
  tensor *t = ctx;
  t->cb_calls++;
  if (t->fail_cb != 0 && t->cb_calls >= t->fail_cb) return 1;
  FZ_CHECK(offset <= t->nbytes && len <= t->nbytes - offset);
  memcpy(dst, t->bytes + offset, len);
  return 0;
}

static int name_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
  int c = memcmp(a, b, al < bl ? al : bl);
  if (c != 0) return c;
  return al < bl ? -1 : al > bl;
}

static int has_nul(const uint8_t *s, size_t n) { return memchr(s, 0, n) != NULL; }

static st_status expect_string(const uint8_t *s, size_t n) {
  if (has_nul(s, n)) return ST_ERR_NUL_IN_STRING;
  if (!fz_utf8_ok(s, n)) return ST_ERR_INVALID_HEADER;
  return ST_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader rd = {data, size};
  tensor ts[MAX_TENSORS];
  memset(ts, 0, sizeof ts);
  const uint8_t *mk[MAX_META], *mv[MAX_META];
  size_t mkl[MAX_META], mvl[MAX_META];
  int macc[MAX_META];
  size_t nt = take(&rd) % (MAX_TENSORS + 1), nm = take(&rd) % (MAX_META + 1);
  uint8_t fill = take(&rd);

  st_writer *w = NULL;
  FZ_CHECK(st_writer_new(NULL, &w, NULL) == ST_OK);
  int any_cb_fail = 0;

  for (size_t k = 0; k < nm; k++) {
    mkl[k] = take_str(&rd, 12, &mk[k]);
    mvl[k] = take_str(&rd, 24, &mv[k]);
    st_status want = expect_string(mk[k], mkl[k]);
    st_status want_v = expect_string(mv[k], mvl[k]);
    int dup = 0;
    for (size_t j = 0; j < k; j++)
      if (macc[j] && name_cmp(mk[j], mkl[j], mk[k], mkl[k]) == 0) dup = 1;
    st_error err;
    st_status s = st_writer_add_metadata(w, (const char *)mk[k], mkl[k], (const char *)mv[k],
                                         mvl[k], &err);
    FZ_CHECK(err.code == s);
    if (want == ST_OK && want_v == ST_OK && !dup) {
      FZ_CHECK(s == ST_OK);
    } else {
      FZ_CHECK(s == want || s == want_v || (dup && s == ST_ERR_DUPLICATE_KEY));
    }
    macc[k] = s == ST_OK;
  }

  for (size_t i = 0; i < nt; i++) {
    tensor *t = &ts[i];
    uint8_t ctl = take(&rd);
    if ((ctl & 0x3F) == 0x3F) {
      t->name = (const uint8_t *)"__metadata__";
      t->name_len = 12;
    } else {
      t->name_len = take_str(&rd, 10, &t->name);
    }
    t->dtype = (st_dtype)(take(&rd) % (ST_DTYPE_COUNT + 2));
    t->rank = take(&rd) % 6;
    for (uint32_t d = 0; d < t->rank; d++) {
      uint8_t b = take(&rd);
      /* Mostly small dims; sometimes 0 next to a huge one, or two huge ones. */
      t->shape[d] = (b & 0xE0) == 0xE0 ? (uint64_t)1 << (32 + (b & 31)) : (uint64_t)(b % 7);
    }
    int wrong_len = (ctl & 0x40) != 0 && (ctl & 0x3F) < 8;
    int use_cb = (ctl & 0x80) != 0;
    if (use_cb && (ctl & 0x3F) < 4) {
      t->fail_cb = 1 + (ctl & 3);
    }

    /* What the writer must say. */
    st_status want = ST_OK;
    uint64_t numel = 1, bits = 0;
    int overflow = 0;
    for (uint32_t d = 0; d < t->rank; d++)
      if (__builtin_mul_overflow(numel, t->shape[d], &numel)) overflow = 1;
    int bad_dtype = (unsigned)t->dtype >= ST_DTYPE_COUNT;
    if (!bad_dtype && !overflow &&
        __builtin_mul_overflow(numel, (uint64_t)st_dtype_bits(t->dtype), &bits))
      overflow = 1;
    st_status sname = expect_string(t->name, t->name_len);
    int reserved = t->name_len == 12 && memcmp(t->name, "__metadata__", 12) == 0;
    int dup = 0;
    for (size_t j = 0; j < i; j++)
      if (ts[j].accepted && name_cmp(ts[j].name, ts[j].name_len, t->name, t->name_len) == 0)
        dup = 1;

    t->nbytes = (bad_dtype || overflow) ? 0 : bits / 8;
    /* A legal shape too big to back with memory: only its length check is
     * exercised (a wrong length, so the writer never reads the buffer). */
    if (t->nbytes > ((uint64_t)1 << 20)) {
      t->nbytes = 0;
      wrong_len = 1;
      use_cb = 0;
      t->fail_cb = 0;
    }
    uint64_t pass_len = t->nbytes + (wrong_len ? 1 + (ctl & 7) : 0);
    t->bytes = malloc((size_t)pass_len + 1);
    FZ_CHECK(t->bytes != NULL);
    for (uint64_t b = 0; b < pass_len; b++) t->bytes[b] = (uint8_t)(fill + b * 31 + i);

    st_error err;
    st_status s;
    if (use_cb)
      s = st_writer_add_tensor_cb(w, (const char *)t->name, t->name_len, t->dtype, t->shape,
                                  t->rank, produce, t, &err);
    else
      s = st_writer_add_tensor(w, (const char *)t->name, t->name_len, t->dtype, t->shape,
                               t->rank, t->bytes, pass_len, &err);
    FZ_CHECK(FZ_KNOWN_STATUS(s) && err.code == s);
    if (bad_dtype) want = ST_ERR_INVALID_ARGUMENT;
    else if (sname != ST_OK) want = sname;
    else if (reserved) want = ST_ERR_RESERVED_NAME;
    else if (overflow) want = ST_ERR_VALIDATION_OVERFLOW;
    else if (bits % 8 != 0) want = ST_ERR_MISALIGNED_SLICE;
    else if (wrong_len && !use_cb) want = ST_ERR_INVALID_TENSOR_INFO;
    else if (dup) want = ST_ERR_DUPLICATE_KEY;
    FZ_CHECK(s == want);
    t->accepted = s == ST_OK;
    if (t->accepted && t->fail_cb != 0) any_cb_fail = 1;
  }

  uint64_t total = 0;
  st_status s = st_writer_size(w, &total, NULL);
  FZ_CHECK(s == ST_OK);
  FZ_CHECK(total >= 8 && total < (1u << 24));
  uint8_t *buf = malloc((size_t)total + 1);
  FZ_CHECK(buf != NULL);
  size_t written = 0;
  st_error err;
  if (total > 8) FZ_CHECK(st_writer_write_memory(w, buf, (size_t)total - 1, &written, NULL) ==
                          ST_ERR_BUFFER_TOO_SMALL);
  for (size_t i = 0; i < nt; i++) ts[i].cb_calls = 0;
  s = st_writer_write_memory(w, buf, (size_t)total, &written, &err);
  if (any_cb_fail) {
    /* ST_ERR_CALLBACK exactly when some producer reached its failing call. */
    int failed = 0;
    for (size_t i = 0; i < nt; i++)
      if (ts[i].accepted && ts[i].fail_cb != 0 && ts[i].cb_calls >= ts[i].fail_cb) failed = 1;
    FZ_CHECK(s == (failed ? ST_ERR_CALLBACK : ST_OK));
    FZ_CHECK(err.code == s);
  } else {
    FZ_CHECK(s == ST_OK);
  }
  if (s == ST_OK) {
    FZ_CHECK(written == total);
    uint64_t n = 0;
    for (int b = 7; b >= 0; b--) n = (n << 8) | buf[b];
    /* The reference pads the header so that the data starts 8-aligned. */
    FZ_CHECK((8 + n) % 8 == 0);

    st_file *f = NULL;
    FZ_CHECK(st_open_memory(buf, (size_t)total, NULL, &f, &err) == ST_OK);
    size_t acc = 0;
    for (size_t i = 0; i < nt; i++) {
      tensor *t = &ts[i];
      if (!t->accepted) continue;
      acc++;
      size_t idx;
      FZ_CHECK(st_tensor_find(f, (const char *)t->name, t->name_len, &idx) == ST_OK);
      st_tensor_info ti;
      FZ_CHECK(st_tensor_get(f, idx, &ti) == ST_OK);
      FZ_CHECK(ti.dtype == t->dtype && ti.rank == t->rank);
      for (uint32_t d = 0; d < t->rank; d++) FZ_CHECK(ti.shape[d] == t->shape[d]);
      FZ_CHECK(ti.data_end - ti.data_begin == t->nbytes);
      const void *view;
      FZ_CHECK(st_tensor_data(f, idx, &view) == ST_OK);
      if (t->nbytes > 0) FZ_CHECK(memcmp(view, t->bytes, (size_t)t->nbytes) == 0);
    }
    FZ_CHECK(st_tensor_count(f) == acc);
    /* The reference's order: dtype rank descending, then name. */
    for (size_t i = 0; i + 1 < acc; i++) {
      st_tensor_info a, b;
      FZ_CHECK(st_tensor_get(f, i, &a) == ST_OK && st_tensor_get(f, i + 1, &b) == ST_OK);
      if (a.data_end == a.data_begin || b.data_end == b.data_begin) continue;
      FZ_CHECK(a.dtype > b.dtype ||
               (a.dtype == b.dtype && name_cmp((const uint8_t *)a.name, a.name_len,
                                               (const uint8_t *)b.name, b.name_len) < 0));
    }
    size_t macc_n = 0;
    for (size_t k = 0; k < nm; k++) {
      if (!macc[k]) continue;
      macc_n++;
      const char *v;
      size_t vl;
      FZ_CHECK(st_metadata_find(f, (const char *)mk[k], mkl[k], &v, &vl) == ST_OK);
      FZ_CHECK(vl == mvl[k] && memcmp(v, mv[k], vl) == 0);
    }
    FZ_CHECK(st_metadata_count(f) == macc_n);
    st_close(f);

    /* The descriptor path writes the same bytes. */
    int fd = memfd_create("fuzzw", MFD_CLOEXEC);
    if (fd >= 0) {
      for (size_t i = 0; i < nt; i++) ts[i].fail_cb = 0;
      FZ_CHECK(st_writer_write_fd(w, fd, NULL) == ST_OK);
      uint8_t *back = malloc((size_t)total + 1);
      FZ_CHECK(back != NULL);
      FZ_CHECK(pread(fd, back, (size_t)total + 1, 0) == (ssize_t)total);
      FZ_CHECK(memcmp(back, buf, (size_t)total) == 0);
      free(back);
      close(fd);
    }
  }
  free(buf);
  st_writer_free(w);
  for (size_t i = 0; i < nt; i++) free(ts[i].bytes);
  return 0;
}
