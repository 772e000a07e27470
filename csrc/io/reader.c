/* Opening files (path, descriptor, memory), the mmap and pread backends, and
 * the read-only accessors of an open handle. A handle never changes after
 * open, so every accessor is safe from many threads. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checked.h"
#include "core/file.h"
#include "core/internal.h"

#define HDR 8u

void st_open_options_init(st_open_options *opts) {
  if (opts == NULL) return;
  memset(opts, 0, sizeof *opts);
  opts->struct_size = sizeof *opts;
  opts->backend = ST_BACKEND_MMAP;
  opts->max_header_size = ST_MAX_HEADER_SIZE;
  opts->max_rank = ST_DEFAULT_MAX_RANK;
  opts->max_depth = ST_DEFAULT_MAX_DEPTH;
  opts->max_tensors = ST_DEFAULT_MAX_TENSORS;
  opts->max_name_len = ST_DEFAULT_MAX_NAME_LEN;
}

static st_status bad_arg(st_error *err, const char *msg) {
  return st__fail(err, ST_ERR_INVALID_ARGUMENT, msg, ST_NO_OFFSET, NULL, 0, 0);
}

static st_status io_fail(st_error *err, const char *msg, int e) {
  return st__fail(err, ST_ERR_IO, msg, ST_NO_OFFSET, NULL, 0, e);
}

/* Copies the caller's options (or the defaults) after checking them. */
static st_status take_options(const st_open_options *in, st_open_options *o, st_error *err) {
  st_open_options_init(o);
  if (in == NULL) return ST_OK;
  if (in->struct_size < offsetof(st_open_options, reserved))
    return bad_arg(err, "st_open_options not initialized (struct_size)");
  memcpy(o, in, offsetof(st_open_options, reserved));
  o->struct_size = sizeof *o;
  if (o->backend != ST_BACKEND_MMAP && o->backend != ST_BACKEND_PREAD)
    return bad_arg(err, "unknown backend");
  if (o->max_header_size > ST_MAX_HEADER_SIZE && !(o->flags & ST_OPEN_ALLOW_HUGE_HEADER))
    return bad_arg(err, "max_header_size over the format's cap needs ST_OPEN_ALLOW_HUGE_HEADER");
  return ST_OK;
}

/* Framing: N from the first 8 bytes, checked against the limit and size. */
static st_status framing(const unsigned char *first8, uint64_t file_size,
                         const st_open_options *o, uint64_t *n_out, st_error *err) {
  if (file_size < HDR)
    return st__fail(err, ST_ERR_HEADER_TOO_SMALL, "file shorter than 8 bytes", 0, NULL, 0, 0);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | first8[i];
  if (n > o->max_header_size)
    return st__fail(err, ST_ERR_HEADER_TOO_LARGE, "header length over the limit", 0, NULL, 0, 0);
  uint64_t stop;
  if (st__add_overflow_u64(n, HDR, &stop) || stop > file_size)
    return st__fail(err, ST_ERR_INVALID_HEADER_LENGTH, "header length points past the end of the file",
                    0, NULL, 0, 0);
  size_t ns;
  if (!st__u64_to_size(n, &ns))
    return st__fail(err, ST_ERR_HEADER_TOO_LARGE, "header length does not fit in memory", 0, NULL, 0, 0);
  *n_out = n;
  return ST_OK;
}

/* The parser's big tables are fresh memory written right away: their page
 * tables are populated in one call (MADV_POPULATE_WRITE, best effort). */
static void populate_pages(void *p, size_t bytes) {
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t b = ((uintptr_t)p + page - 1) & ~(page - 1);
  uintptr_t e = ((uintptr_t)p + bytes) & ~(page - 1);
  if (e > b) (void)madvise((void *)b, e - b, 23 /* MADV_POPULATE_WRITE */);
}

static st_file *new_handle(const st_open_options *o) {
  st_file *f = st__calloc(o->allocator, 1, sizeof *f);
  if (f == NULL) return NULL;
  f->alloc = o->allocator;
  f->flags = o->flags;
  f->backend = o->backend;
  f->fd = -1;
  f->populate = populate_pages;
  return f;
}

void st_close(st_file *f) {
  if (f == NULL) return;
  st__header_free(f);
  if (f->map != NULL) munmap(f->map, f->map_size);
  if (f->fd >= 0) close(f->fd);
  st__free(f->alloc, f->header_buf);
  st__free(f->alloc, f);
}

/* Reads exactly len bytes at off; a short file is ST_ERR_FILE_CHANGED. */
static st_status pread_full(int fd, void *dst, size_t len, uint64_t off, st_error *err) {
  unsigned char *p = dst;
  while (len > 0) {
    size_t chunk = len > ((size_t)1 << 30) ? ((size_t)1 << 30) : len;
    if (off > (uint64_t)INT64_MAX) return io_fail(err, "offset too large", EOVERFLOW);
    ssize_t r = pread(fd, p, chunk, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return io_fail(err, "pread failed", errno);
    }
    if (r == 0)
      return st__fail(err, ST_ERR_FILE_CHANGED, "the file is shorter than when it was opened", off,
                      NULL, 0, 0);
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return ST_OK;
}

/* Takes ownership of fd (closes it on failure). */
static st_status open_fd_owned(int fd, const st_open_options *o, st_file **out, st_error *err) {
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    return io_fail(err, "fstat failed", e);
  }
  if (!S_ISREG(sb.st_mode)) {
    close(fd);
    return st__fail(err, ST_ERR_IO, "not a regular file", ST_NO_OFFSET, NULL, 0,
                    S_ISDIR(sb.st_mode) ? EISDIR : EINVAL);
  }
  uint64_t size = (uint64_t)sb.st_size;
  st_file *f = new_handle(o);
  if (f == NULL) {
    close(fd);
    return st__fail(err, ST_ERR_NOMEM, "cannot allocate the handle", ST_NO_OFFSET, NULL, 0, 0);
  }
  f->file_size = size;
  st_status st;
  uint64_t n = 0;
  const unsigned char *header;
  if (o->backend == ST_BACKEND_MMAP) {
    if (size < HDR) {
      close(fd);
      st_close(f);
      return framing(NULL, size, o, &n, err);
    }
    size_t msz;
    if (!st__u64_to_size(size, &msz)) {
      close(fd);
      st_close(f);
      return io_fail(err, "file too large to map", EFBIG);
    }
    int prot = PROT_READ | ((o->flags & ST_OPEN_MAP_PRIVATE_WRITABLE) ? PROT_WRITE : 0);
    int mflags = MAP_PRIVATE;
#ifdef MAP_POPULATE
    if (o->flags & ST_OPEN_MAP_POPULATE) mflags |= MAP_POPULATE;
#endif
    void *m = mmap(NULL, msz, prot, mflags, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (m == MAP_FAILED) {
      st_close(f);
      return io_fail(err, "mmap failed", e);
    }
    f->map = m;
    f->map_size = msz;
    f->base = m;
    if ((st = framing(f->base, size, o, &n, err)) != ST_OK) goto fail;
    /* The header is read once, front to back. */
    (void)madvise(m, (size_t)(HDR + n), MADV_WILLNEED);
    header = f->base + HDR;
  } else {
    f->fd = fd;
    unsigned char first8[HDR];
    if (size < HDR) {
      st = framing(NULL, size, o, &n, err);
      goto fail;
    }
    if ((st = pread_full(fd, first8, HDR, 0, err)) != ST_OK) goto fail;
    if ((st = framing(first8, size, o, &n, err)) != ST_OK) goto fail;
    f->header_buf = st__malloc(f->alloc, (size_t)n);
    if (f->header_buf == NULL) {
      st = st__fail(err, ST_ERR_NOMEM, "cannot allocate the header buffer", ST_NO_OFFSET, NULL, 0, 0);
      goto fail;
    }
    if ((st = pread_full(fd, f->header_buf, (size_t)n, HDR, err)) != ST_OK) goto fail;
    header = f->header_buf;
  }
  f->header_size = n;
  if ((st = st__header_parse(f, header, (size_t)n, size, o, err)) != ST_OK) goto fail;
  *out = f;
  st__ok(err);
  return ST_OK;
fail:
  st_close(f);
  return st;
}

st_status st_open(const char *path, const st_open_options *opts, st_file **out, st_error *err) {
  if (out == NULL) return bad_arg(err, "out is NULL");
  *out = NULL;
  if (path == NULL) return bad_arg(err, "path is NULL");
  st_open_options o;
  st_status st = take_options(opts, &o, err);
  if (st != ST_OK) return st;
  int fd;
  /* O_NONBLOCK: opening a FIFO must not hang (it is refused as not a regular
   * file); it changes nothing for regular files. */
  do {
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return io_fail(err, "cannot open the file", errno);
  return open_fd_owned(fd, &o, out, err);
}

st_status st_open_fd(int fd, const st_open_options *opts, st_file **out, st_error *err) {
  if (out == NULL) return bad_arg(err, "out is NULL");
  *out = NULL;
  if (fd < 0) return bad_arg(err, "fd is negative");
  st_open_options o;
  st_status st = take_options(opts, &o, err);
  if (st != ST_OK) return st;
  int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup_fd < 0) return io_fail(err, "cannot duplicate the descriptor", errno);
  return open_fd_owned(dup_fd, &o, out, err);
}

st_status st_open_memory(const void *data, size_t size, const st_open_options *opts,
                         st_file **out, st_error *err) {
  if (out == NULL) return bad_arg(err, "out is NULL");
  *out = NULL;
  if (data == NULL && size > 0) return bad_arg(err, "data is NULL");
  st_open_options o;
  st_status st = take_options(opts, &o, err);
  if (st != ST_OK) return st;
  uint64_t n;
  if (size < HDR) return framing(NULL, size, &o, &n, err);
  if ((st = framing(data, size, &o, &n, err)) != ST_OK) return st;
  st_file *f = new_handle(&o);
  if (f == NULL) return st__fail(err, ST_ERR_NOMEM, "cannot allocate the handle", ST_NO_OFFSET, NULL, 0, 0);
  f->backend = ST_BACKEND_MMAP;
  f->base = data;
  f->file_size = size;
  f->header_size = n;
  if ((st = st__header_parse(f, f->base + HDR, (size_t)n, size, &o, err)) != ST_OK) {
    st_close(f);
    return st;
  }
  *out = f;
  st__ok(err);
  return ST_OK;
}

st_backend st_file_backend(const st_file *f) { return f != NULL ? f->backend : ST_BACKEND_MMAP; }
uint64_t st_header_size(const st_file *f) { return f != NULL ? f->header_size : 0; }
uint64_t st_data_offset(const st_file *f) { return f != NULL ? HDR + f->header_size : 0; }
uint64_t st_data_size(const st_file *f) { return f != NULL ? f->data_size : 0; }

const char *st_header_bytes(const st_file *f) {
  if (f == NULL) return NULL;
  if (f->header_buf != NULL) return (const char *)f->header_buf;
  return (const char *)f->base + HDR;
}

size_t st_tensor_count(const st_file *f) { return f != NULL ? f->ntensors : 0; }

st_status st_tensor_get(const st_file *f, size_t index, st_tensor_info *out) {
  if (f == NULL || out == NULL || index >= f->ntensors) return ST_ERR_INVALID_ARGUMENT;
  const st__tensor *t = &f->tensors[index];
  out->name = t->name;
  out->name_len = t->name_len;
  out->dtype = t->dtype;
  out->rank = t->rank;
  out->shape = t->shape;
  out->numel = t->numel;
  out->data_begin = t->begin;
  out->data_end = t->end;
  return ST_OK;
}

st_status st_tensor_name_order(const st_file *f, size_t k, size_t *index) {
  if (f == NULL || index == NULL || k >= f->ntensors) return ST_ERR_INVALID_ARGUMENT;
  *index = f->name_order[k];
  return ST_OK;
}

static int cmp_bytes(const char *a, size_t al, const char *b, size_t bl) {
  int c = memcmp(a, b, al < bl ? al : bl);
  if (c != 0) return c;
  return al < bl ? -1 : al > bl;
}

/* Binary search over the name order: O(log n) and immune to hash flooding. */
st_status st_tensor_find(const st_file *f, const char *name, size_t len, size_t *index) {
  if (f == NULL || index == NULL || (name == NULL && len > 0)) return ST_ERR_INVALID_ARGUMENT;
  if (name == NULL) name = "";
  size_t lo = 0, hi = f->ntensors;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const st__tensor *t = &f->tensors[f->name_order[mid]];
    int c = cmp_bytes(t->name, t->name_len, name, len);
    if (c == 0) {
      *index = f->name_order[mid];
      return ST_OK;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return ST_ERR_NOT_FOUND;
}

size_t st_metadata_count(const st_file *f) { return f != NULL ? f->nmeta : 0; }

st_status st_metadata_get(const st_file *f, size_t k, const char **key, size_t *key_len,
                          const char **value, size_t *value_len) {
  if (f == NULL || k >= f->nmeta) return ST_ERR_INVALID_ARGUMENT;
  const st__meta *m = &f->meta[k];
  if (key != NULL) *key = m->key;
  if (key_len != NULL) *key_len = m->key_len;
  if (value != NULL) *value = m->value;
  if (value_len != NULL) *value_len = m->value_len;
  return ST_OK;
}

st_status st_metadata_find(const st_file *f, const char *key, size_t key_len, const char **value,
                           size_t *value_len) {
  if (f == NULL || (key == NULL && key_len > 0)) return ST_ERR_INVALID_ARGUMENT;
  if (key == NULL) key = "";
  size_t lo = 0, hi = f->nmeta;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const st__meta *m = &f->meta[mid];
    int c = cmp_bytes(m->key, m->key_len, key, key_len);
    if (c == 0) {
      if (value != NULL) *value = m->value;
      if (value_len != NULL) *value_len = m->value_len;
      return ST_OK;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return ST_ERR_NOT_FOUND;
}

st_status st_tensor_data(const st_file *f, size_t index, const void **data) {
  if (f == NULL || data == NULL || index >= f->ntensors) return ST_ERR_INVALID_ARGUMENT;
  if (f->base == NULL) return ST_ERR_UNSUPPORTED;
  *data = f->base + HDR + f->header_size + f->tensors[index].begin;
  return ST_OK;
}

st_status st__read_data(const st_file *f, uint64_t offset, void *dst, size_t len, st_error *err) {
  if (len == 0) return ST_OK;
  uint64_t at = HDR + f->header_size + offset;
  if (f->base != NULL) {
    memcpy(dst, f->base + at, len);
    return ST_OK;
  }
  return pread_full(f->fd, dst, len, at, err);
}

st_status st_read_range(const st_file *f, uint64_t offset, uint64_t len, void *dst, st_error *err) {
  if (f == NULL) return bad_arg(err, "file is NULL");
  uint64_t end;
  if (st__add_overflow_u64(offset, len, &end) || end > f->data_size)
    return bad_arg(err, "the range leaves the data section");
  size_t n;
  if (!st__u64_to_size(len, &n)) return bad_arg(err, "the range does not fit in memory");
  if (dst == NULL && n > 0) return bad_arg(err, "dst is NULL");
  st_status st = st__read_data(f, offset, dst, n, err);
  if (st == ST_OK) st__ok(err);
  return st;
}

st_status st_tensor_read(const st_file *f, size_t index, void *dst, size_t dst_size, st_error *err) {
  if (f == NULL || index >= f->ntensors) return bad_arg(err, "no such tensor");
  const st__tensor *t = &f->tensors[index];
  uint64_t len = t->end - t->begin;
  if (dst_size < len)
    return st__fail(err, ST_ERR_BUFFER_TOO_SMALL, "destination buffer too small", ST_NO_OFFSET,
                    t->name, t->name_len, 0);
  if (dst == NULL && len > 0) return bad_arg(err, "dst is NULL");
  st_status st = st__read_data(f, t->begin, dst, (size_t)len, err);
  if (st == ST_OK) st__ok(err);
  return st;
}
