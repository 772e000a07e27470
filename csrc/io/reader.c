/* Opening files (path, descriptor, memory), the mmap and pread backends, and
 * the reads through them (ranges, tensors, slices). A handle never changes
 * after open, so every read is safe from many threads. */
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
#include "io/io.h"

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
  if (in->struct_size != sizeof *in)
    return bad_arg(err, "st_open_options.struct_size is not sizeof(st_open_options) "
                        "(call st_open_options_init)");
  if (in->flags & ~ST_OPEN_ALL_FLAGS) return bad_arg(err, "unknown st_open_options.flags bits");
  if (!st__all_zero(in->reserved, sizeof in->reserved))
    return bad_arg(err, "st_open_options.reserved is not zero");
  *o = *in;
  if (o->backend != ST_BACKEND_MMAP && o->backend != ST_BACKEND_PREAD)
    return bad_arg(err, "unknown backend");
  if (o->max_header_size > ST_MAX_HEADER_SIZE && !(o->flags & ST_OPEN_ALLOW_HUGE_HEADER))
    return bad_arg(err, "max_header_size over the format's cap needs ST_OPEN_ALLOW_HUGE_HEADER");
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

/* Prefaults a private writable mapping of a file with read faults, which
 * map the page cache's pages without copying them (MADV_POPULATE_READ,
 * Linux 5.14). Best effort, like MAP_POPULATE: an older kernel, or a page
 * that cannot be read (the file shrank), is left to fault when used. */
static void populate_shared(void *p, size_t bytes) {
  (void)madvise(p, bytes, 22 /* MADV_POPULATE_READ */);
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
      return st__framing(NULL, size, o, &n, err);
    }
    size_t msz;
    if (!st__u64_to_size(size, &msz)) {
      close(fd);
      st_close(f);
      return io_fail(err, "file too large to map", EFBIG);
    }
    int writable = (o->flags & ST_OPEN_MAP_PRIVATE_WRITABLE) != 0;
    int populate = (o->flags & ST_OPEN_MAP_POPULATE) != 0;
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    int mflags = MAP_PRIVATE;
#ifdef MAP_POPULATE
    /* Only a read-only mapping takes MAP_POPULATE: Linux populates a
     * private writable mapping with write faults, a private copy of every
     * page (measured: +64 MiB of anonymous memory for a 64 MiB file). */
    if (populate && !writable) mflags |= MAP_POPULATE;
#endif
    void *m = mmap(NULL, msz, prot, mflags, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (m == MAP_FAILED) {
      st_close(f);
      return io_fail(err, "mmap failed", e);
    }
    if (populate && writable) populate_shared(m, msz);
    f->map = m;
    f->map_size = msz;
    f->base = m;
    if ((st = st__framing(f->base, size, o, &n, err)) != ST_OK) goto fail;
    /* The header is read once, front to back. */
    (void)madvise(m, (size_t)(HDR + n), MADV_WILLNEED);
    header = f->base + HDR;
  } else {
    f->fd = fd;
    unsigned char first8[HDR];
    if (size < HDR) {
      st = st__framing(NULL, size, o, &n, err);
      goto fail;
    }
    if ((st = pread_full(fd, first8, HDR, 0, err)) != ST_OK) goto fail;
    if ((st = st__framing(first8, size, o, &n, err)) != ST_OK) goto fail;
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
  if (size < HDR) return st__framing(NULL, size, &o, &n, err);
  if ((st = st__framing(data, size, &o, &n, err)) != ST_OK) return st;
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

/* --- slices: the walk is core's, the reads are here ------------------------ */

/* Above this a strided row is read run by run instead of as one span. */
#define GATHER_SPAN_MAX ((uint64_t)1 << 20)
#define GATHER_RUN_MAX 4096u

typedef struct read_ctx {
  const st_file *f;
  unsigned char *out;
  unsigned char *scratch; /* pread backend: one strided row's covering span */
} read_ctx;

static st_status read_row(void *vctx, const st__slice_row *row, st_error *err) {
  read_ctx *c = vctx;
  st_status st = ST_OK;
  if (row->nruns == 1) {
    st = st__read_data(c->f, row->offset, c->out, (size_t)row->run_bytes, err);
    c->out += row->run_bytes;
    return st;
  }
  const uint64_t span = (row->nruns - 1) * row->run_stride + row->run_bytes;
  if (c->f->base == NULL && row->run_bytes < GATHER_RUN_MAX && span <= GATHER_SPAN_MAX) {
    if (c->scratch == NULL) {
      c->scratch = st__malloc(c->f->alloc, (size_t)span);
      if (c->scratch == NULL)
        return st__fail(err, ST_ERR_NOMEM, "cannot allocate the gather buffer", ST_NO_OFFSET, NULL, 0, 0);
    }
    st = st__read_data(c->f, row->offset, c->scratch, (size_t)span, err);
    for (uint64_t r = 0; st == ST_OK && r < row->nruns; r++) {
      memcpy(c->out, c->scratch + r * row->run_stride, (size_t)row->run_bytes);
      c->out += row->run_bytes;
    }
    return st;
  }
  for (uint64_t r = 0; st == ST_OK && r < row->nruns; r++) {
    st = st__read_data(c->f, row->offset + r * row->run_stride, c->out, (size_t)row->run_bytes, err);
    c->out += row->run_bytes;
  }
  return st;
}

st_status st_tensor_read_slice(const st_file *f, size_t index, const st_range *ranges,
                               size_t nranges, void *dst, size_t dst_size, st_error *err) {
  uint64_t nbytes = 0;
  st_status st = st_slice_shape(f, index, ranges, nranges, NULL, &nbytes);
  if (st != ST_OK)
    return st__slice_fail(err, st, (f != NULL && index < f->ntensors) ? &f->tensors[index] : NULL);
  const st__tensor *t = &f->tensors[index];
  if (dst_size < nbytes)
    return st__fail(err, ST_ERR_BUFFER_TOO_SMALL, "destination buffer too small", ST_NO_OFFSET,
                    t->name, t->name_len, 0);
  if (nbytes > 0 && dst == NULL) return st__slice_fail(err, ST_ERR_INVALID_ARGUMENT, t);
  read_ctx c = {f, dst, NULL};
  st = st__slice_walk(f, index, ranges, nranges, read_row, &c, err);
  st__free(f->alloc, c.scratch);
  if (st == ST_OK) st__ok(err);
  return st;
}
