/* The copy engine: a plan of (data-section range -> destination) entries,
 * split into chunks and run on a pool of threads. Only the public reader API
 * is used, so every backend gets the same engine: zero-copy sources are
 * memcpy'd, the pread backend reads straight into the destination. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/checked.h"
#include "core/file.h"
#include "core/internal.h"

#define ENGINE_DEFAULT_CHUNK (8u << 20)
#define ENGINE_MIN_CHUNK (64u << 10)
/* Below this a populate call costs more than the faults it saves. */
#define ENGINE_MIN_PREFAULT (16u << 10)
#define ENGINE_MAX_THREADS 256u

typedef struct plan_entry {
  uint64_t offset; /* in the data section */
  uint64_t len;
  unsigned char *dst;
} plan_entry;

struct st_plan {
  const st_file *file;
  const st_allocator *alloc;
  plan_entry *entries;
  size_t count;
  size_t cap;
  uint64_t bytes;
};

st_status st_plan_new(const st_file *file, const st_allocator *allocator,
                      st_plan **out, st_error *err) {
  if (out == NULL) return st__fail(err, ST_ERR_INVALID_ARGUMENT, "out is NULL", ST_NO_OFFSET, NULL, 0, 0);
  *out = NULL;
  if (file == NULL) return st__fail(err, ST_ERR_INVALID_ARGUMENT, "file is NULL", ST_NO_OFFSET, NULL, 0, 0);
  st_plan *p = st__calloc(allocator, 1, sizeof *p);
  if (p == NULL) return st__fail(err, ST_ERR_NOMEM, "cannot allocate a plan", ST_NO_OFFSET, NULL, 0, 0);
  p->file = file;
  p->alloc = allocator;
  *out = p;
  st__ok(err);
  return ST_OK;
}

void st_plan_free(st_plan *plan) {
  if (plan == NULL) return;
  const st_allocator *a = plan->alloc;
  st__free(a, plan->entries);
  st__free(a, plan);
}

size_t st_plan_entry_count(const st_plan *plan) { return plan != NULL ? plan->count : 0; }

uint64_t st_plan_bytes(const st_plan *plan) { return plan != NULL ? plan->bytes : 0; }

static st_status plan_push(st_plan *p, uint64_t offset, uint64_t len, unsigned char *dst,
                           st_error *err) {
  if (len == 0) return ST_OK;
  /* Adjacent runs (a slice whose rows are contiguous in both places) merge. */
  if (p->count > 0) {
    plan_entry *last = &p->entries[p->count - 1];
    if (last->offset + last->len == offset && last->dst + last->len == dst) {
      last->len += len;
      p->bytes += len;
      return ST_OK;
    }
  }
  if (p->count == p->cap) {
    size_t ncap = p->cap != 0 ? p->cap * 2 : 16;
    size_t bytes;
    if (st__mul_overflow_size(ncap, sizeof *p->entries, &bytes))
      return st__fail(err, ST_ERR_NOMEM, "plan too large", ST_NO_OFFSET, NULL, 0, 0);
    plan_entry *n = st__realloc(p->alloc, p->entries, bytes);
    if (n == NULL) return st__fail(err, ST_ERR_NOMEM, "cannot grow the plan", ST_NO_OFFSET, NULL, 0, 0);
    p->entries = n;
    p->cap = ncap;
  }
  p->entries[p->count++] = (plan_entry){offset, len, dst};
  p->bytes += len;
  return ST_OK;
}

st_status st_plan_add_range(st_plan *plan, uint64_t offset, uint64_t len, void *dst,
                            st_error *err) {
  if (plan == NULL) return st__fail(err, ST_ERR_INVALID_ARGUMENT, "plan is NULL", ST_NO_OFFSET, NULL, 0, 0);
  uint64_t end;
  if (st__add_overflow_u64(offset, len, &end) || end > st_data_size(plan->file))
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "range outside the data section", offset, NULL, 0, 0);
  if (len > 0 && dst == NULL)
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "dst is NULL", ST_NO_OFFSET, NULL, 0, 0);
  size_t unused;
  if (!st__u64_to_size(len, &unused))
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "range larger than the address space", offset, NULL, 0, 0);
  st_status s = plan_push(plan, offset, len, dst, err);
  if (s == ST_OK) st__ok(err);
  return s;
}

st_status st_plan_add_tensor(st_plan *plan, size_t index, void *dst, size_t dst_size,
                             st_error *err) {
  if (plan == NULL) return st__fail(err, ST_ERR_INVALID_ARGUMENT, "plan is NULL", ST_NO_OFFSET, NULL, 0, 0);
  st_tensor_info ti;
  if (st_tensor_get(plan->file, index, &ti) != ST_OK)
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "tensor index out of range", ST_NO_OFFSET, NULL, 0, 0);
  uint64_t len = ti.data_end - ti.data_begin;
  if (dst_size < len)
    return st__fail(err, ST_ERR_BUFFER_TOO_SMALL, "destination smaller than the tensor", ST_NO_OFFSET,
                    ti.name, ti.name_len, 0);
  return st_plan_add_range(plan, ti.data_begin, len, dst, err);
}

typedef struct slice_push {
  st_plan *plan;
  unsigned char *out;
} slice_push;

static st_status push_row(void *vctx, const st__slice_row *row, st_error *err) {
  slice_push *c = vctx;
  for (uint64_t r = 0; r < row->nruns; r++) {
    st_status s = plan_push(c->plan, row->offset + r * row->run_stride, row->run_bytes, c->out, err);
    if (s != ST_OK) return s;
    c->out += row->run_bytes;
  }
  return ST_OK;
}

st_status st_plan_add_slice(st_plan *plan, size_t index, const st_range *ranges, size_t nranges,
                            void *dst, size_t dst_size, st_error *err) {
  if (plan == NULL) return st__fail(err, ST_ERR_INVALID_ARGUMENT, "plan is NULL", ST_NO_OFFSET, NULL, 0, 0);
  st_tensor_info ti;
  if (st_tensor_get(plan->file, index, &ti) != ST_OK)
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "tensor index out of range", ST_NO_OFFSET, NULL, 0, 0);
  uint64_t nbytes = 0;
  st_status s = st_slice_shape(plan->file, index, ranges, nranges, NULL, &nbytes);
  if (s != ST_OK)
    return st__fail(err, s, "slice does not fit the tensor", ST_NO_OFFSET, ti.name, ti.name_len, 0);
  if (dst_size < nbytes)
    return st__fail(err, ST_ERR_BUFFER_TOO_SMALL, "destination smaller than the slice", ST_NO_OFFSET,
                    ti.name, ti.name_len, 0);
  if (nbytes > 0 && dst == NULL)
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "dst is NULL", ST_NO_OFFSET, NULL, 0, 0);
  /* A failure leaves the plan as it was. */
  size_t before = plan->count;
  uint64_t before_bytes = plan->bytes;
  uint64_t before_last = before > 0 ? plan->entries[before - 1].len : 0;
  slice_push c = {plan, dst};
  s = st__slice_walk(plan->file, index, ranges, nranges, push_row, &c, err);
  if (s != ST_OK) {
    plan->count = before;
    plan->bytes = before_bytes;
    if (before > 0) plan->entries[before - 1].len = before_last; /* undo a merge */
    return s;
  }
  st__ok(err);
  return ST_OK;
}

void st_exec_options_init(st_exec_options *opts) {
  if (opts == NULL) return;
  memset(opts, 0, sizeof *opts);
  opts->struct_size = sizeof *opts;
  opts->chunk_size = ENGINE_DEFAULT_CHUNK;
}

/* A work item is a piece of one large entry (count == 1), or a run of
 * consecutive small entries taken whole (count > 1, off == 0), so a plan of
 * many small entries (a column slice: one entry per row) is not one atomic
 * hand-off per entry. */
typedef struct work_item {
  size_t first;
  size_t count;
  uint64_t off; /* within entry `first` when count == 1 */
  uint64_t len; /* bytes of the item */
} work_item;

/* Cuts the plan into work items; counts them when items is NULL. */
static size_t make_items(const st_plan *plan, uint64_t chunk, work_item *items) {
  size_t k = 0, i = 0;
  while (i < plan->count) {
    const plan_entry *e = &plan->entries[i];
    if (e->len >= chunk) {
      for (uint64_t off = 0; off < e->len; off += chunk, k++) {
        uint64_t left = e->len - off;
        if (items != NULL) items[k] = (work_item){i, 1, off, left < chunk ? left : chunk};
      }
      i++;
      continue;
    }
    size_t j = i;
    uint64_t sum = 0;
    while (j < plan->count && plan->entries[j].len < chunk && sum + plan->entries[j].len <= chunk)
      sum += plan->entries[j++].len;
    if (items != NULL) items[k] = (work_item){i, j - i, 0, sum};
    k++;
    i = j;
  }
  return k;
}

typedef struct engine_run {
  const st_plan *plan;
  const unsigned char *base; /* data section when zero-copy, else NULL */
  const work_item *items;
  size_t nitems;
  uint32_t flags;
  atomic_size_t next;
  atomic_int failed;
  atomic_uint_least64_t copied;
  atomic_uint_least64_t read;
  int dfd;              /* O_DIRECT descriptor, or -1 */
  uint64_t data_offset; /* file offset of the data section */
  pthread_mutex_t lock; /* guards the first error */
  st_status status;
  st_error error;
} engine_run;

static void record_failure(engine_run *r, st_status s, const st_error *e) {
  pthread_mutex_lock(&r->lock);
  if (r->status == ST_OK) {
    r->status = s;
    r->error = *e;
  }
  pthread_mutex_unlock(&r->lock);
  atomic_store(&r->failed, 1);
}

/* Populating the page tables of fresh destination memory in one call costs
 * far less than a fault per 4 KiB page (measured: 0.42 s against 0.75 s for
 * 500 MB). The source mapping is left alone: the kernel's fault-around
 * already maps page-cache pages 16 at a time, and MADV_POPULATE_READ there
 * measured slower. Best effort: kernels before 5.14 say EINVAL and the copy
 * faults pages instead. Only whole pages inside [p, p + len) are touched, so
 * memory around a caller's buffer is never prefaulted. */
static void prefault(const unsigned char *p, uint64_t len, int advice) {
  /* Every worker may get here first: the cached page size is atomic. */
  static _Atomic long cached_page;
  long page = atomic_load_explicit(&cached_page, memory_order_relaxed);
  if (page == 0) {
    page = sysconf(_SC_PAGESIZE);
    atomic_store_explicit(&cached_page, page, memory_order_relaxed);
  }
  uintptr_t mask = (uintptr_t)page - 1;
  uintptr_t b = ((uintptr_t)p + mask) & ~mask;
  uintptr_t e = ((uintptr_t)p + (uintptr_t)len) & ~mask;
  if (e > b) (void)madvise((void *)b, e - b, advice);
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define HUGE_PAGE ((uintptr_t)2 << 20)

/* ST_EXEC_HUGEPAGES: once per entry, before the workers split it into
 * chunks (chunk edges are not 2 MiB-aligned). Measured on a 498 MB load into
 * fresh memory: the kernel then clears and maps 2 MiB pages instead of
 * 4 KiB ones (benchmarks/RESULTS.md). Best effort, like prefault. */
static void advise_huge(const st_plan *plan) {
  for (size_t i = 0; i < plan->count; i++) {
    const plan_entry *e = &plan->entries[i];
    if (e->len < (uint64_t)HUGE_PAGE) continue;
    uintptr_t b = ((uintptr_t)e->dst + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    uintptr_t end = ((uintptr_t)e->dst + (uintptr_t)e->len) & ~(HUGE_PAGE - 1);
    if (end > b) (void)madvise((void *)b, end - b, MADV_HUGEPAGE);
  }
}

/* O_DIRECT wants offsets, lengths and buffers aligned to the device's block;
 * 4 KiB covers the usual 512 B and 4 KiB logical blocks. */
#define DIRECT_ALIGN ((uint64_t)4096)

/* Reads [src, src + len) of the data section through the O_DIRECT
 * descriptor: whole aligned blocks into the bounce buffer (capacity cap, a
 * multiple of DIRECT_ALIGN), then the wanted bytes out of it. */
static st_status direct_read(engine_run *r, unsigned char *bounce, uint64_t cap, uint64_t src,
                             uint64_t len, unsigned char *dst, st_error *err) {
  uint64_t pos = r->data_offset + src, end = pos + len;
  while (pos < end) {
    uint64_t a = pos & ~(DIRECT_ALIGN - 1);
    uint64_t want = ((end - a + DIRECT_ALIGN - 1) & ~(DIRECT_ALIGN - 1));
    if (want > cap) want = cap;
    uint64_t got = 0;
    while (got < want) {
      ssize_t n = pread(r->dfd, bounce + got, (size_t)(want - got), (off_t)(a + got));
      if (n < 0) {
        if (errno == EINTR) continue;
        return st__fail(err, ST_ERR_IO, "O_DIRECT read failed", pos, NULL, 0, errno);
      }
      if (n == 0) break; /* end of file: the last block is short */
      got += (uint64_t)n;
      if ((uint64_t)n % DIRECT_ALIGN != 0) break;
    }
    atomic_fetch_add_explicit(&r->read, got, memory_order_relaxed);
    uint64_t avail = got > pos - a ? got - (pos - a) : 0;
    uint64_t take = end - pos < avail ? end - pos : avail;
    if (take == 0)
      return st__fail(err, ST_ERR_FILE_CHANGED, "the file is shorter than when it was opened", pos,
                      NULL, 0, 0);
    memcpy(dst, bounce + (pos - a), (size_t)take);
    dst += take;
    pos += take;
  }
  return ST_OK;
}

/* A batch of small entries (the rows of a strided slice, small tensors)
 * mostly fills contiguous stretches of the destination: each stretch is
 * populated in one call, as a big entry is, instead of a fault per page. */
static void batch_prefault(const engine_run *r, const work_item *w) {
  if (r->flags & ST_EXEC_NO_PREFAULT) return;
  const plan_entry *e = &r->plan->entries[w->first];
  size_t run = 0;
  uint64_t run_len = e[0].len;
  for (size_t k = 1; k <= w->count; k++) {
    if (k < w->count && e[k - 1].dst + e[k - 1].len == e[k].dst) {
      run_len += e[k].len;
      continue;
    }
    if (run_len >= ENGINE_MIN_PREFAULT) prefault(e[run].dst, run_len, MADV_POPULATE_WRITE);
    if (k < w->count) {
      run = k;
      run_len = e[k].len;
    }
  }
}

static void *engine_worker(void *arg) {
  engine_run *r = arg;
  unsigned char *raw = NULL, *bounce = NULL;
  const uint64_t cap = (uint64_t)ENGINE_DEFAULT_CHUNK;
  if (r->dfd >= 0) {
    raw = st__malloc(r->plan->alloc, (size_t)(cap + DIRECT_ALIGN));
    if (raw == NULL) {
      st_error e;
      record_failure(r, st__fail(&e, ST_ERR_NOMEM, "cannot allocate an O_DIRECT buffer",
                                 ST_NO_OFFSET, NULL, 0, 0), &e);
      return NULL;
    }
    const uintptr_t align = (uintptr_t)DIRECT_ALIGN;
    bounce = (unsigned char *)(((uintptr_t)raw + align - 1) & ~(align - 1));
  }
  for (;;) {
    if (atomic_load_explicit(&r->failed, memory_order_relaxed)) break;
    size_t i = atomic_fetch_add(&r->next, 1);
    if (i >= r->nitems) break;
    const work_item *w = &r->items[i];
    st_status s = ST_OK;
    st_error e2;
    if (w->count > 1) batch_prefault(r, w);
    for (size_t k = 0; k < w->count && s == ST_OK; k++) {
      const plan_entry *e = &r->plan->entries[w->first + k];
      uint64_t off = w->count == 1 ? w->off : 0;
      uint64_t len = w->count == 1 ? w->len : e->len;
      uint64_t src = e->offset + off;
      unsigned char *dst = e->dst + off;
      if (!(r->flags & ST_EXEC_NO_PREFAULT) && len >= ENGINE_MIN_CHUNK)
        prefault(dst, len, MADV_POPULATE_WRITE);
      if (r->base != NULL) {
        memcpy(dst, r->base + src, (size_t)len);
        atomic_fetch_add_explicit(&r->read, len, memory_order_relaxed);
      } else if (bounce != NULL) {
        s = direct_read(r, bounce, cap, src, len, dst, &e2);
      } else {
        s = st_read_range(r->plan->file, src, len, dst, &e2);
        if (s == ST_OK) atomic_fetch_add_explicit(&r->read, len, memory_order_relaxed);
      }
    }
    if (s != ST_OK) {
      record_failure(r, s, &e2);
      break;
    }
    atomic_fetch_add_explicit(&r->copied, w->len, memory_order_relaxed);
  }
  st__free(r->plan->alloc, raw);
  return NULL;
}

static uint32_t default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) return 1;
  if (n > (long)ENGINE_MAX_THREADS) return ENGINE_MAX_THREADS;
  return (uint32_t)n;
}

st_status st_plan_execute(const st_plan *plan, const st_exec_options *opts, st_exec_stats *stats,
                          st_error *err) {
  if (plan == NULL) return st__fail(err, ST_ERR_INVALID_ARGUMENT, "plan is NULL", ST_NO_OFFSET, NULL, 0, 0);
  st_exec_options o;
  st_exec_options_init(&o);
  if (opts != NULL) {
    const char *bad = opts->struct_size != sizeof *opts
                          ? "st_exec_options.struct_size is not sizeof(st_exec_options) "
                            "(call st_exec_options_init)"
                      : (opts->flags & ~ST_EXEC_ALL_FLAGS) ? "unknown st_exec_options.flags bits"
                      : !st__all_zero(opts->reserved, sizeof opts->reserved)
                          ? "st_exec_options.reserved is not zero"
                          : NULL;
    if (bad != NULL) return st__fail(err, ST_ERR_INVALID_ARGUMENT, bad, ST_NO_OFFSET, NULL, 0, 0);
    o.threads = opts->threads;
    o.flags = opts->flags;
    o.chunk_size = opts->chunk_size != 0 ? opts->chunk_size : ENGINE_DEFAULT_CHUNK;
  }
  if (o.chunk_size < ENGINE_MIN_CHUNK) o.chunk_size = ENGINE_MIN_CHUNK;
  uint32_t threads = o.threads != 0 ? o.threads : default_threads();
  if (threads > ENGINE_MAX_THREADS) threads = ENGINE_MAX_THREADS;

  const unsigned char *base = NULL;
  if (st_tensor_count(plan->file) > 0 && st_data_size(plan->file) > 0) {
    const void *p0;
    /* File order starts at data offset 0, so tensor 0 marks the section. */
    if (st_tensor_data(plan->file, 0, &p0) == ST_OK) base = p0;
  }

  size_t nitems = make_items(plan, o.chunk_size, NULL);
  work_item *items = st__calloc(plan->alloc, nitems != 0 ? nitems : 1, sizeof *items);
  if (items == NULL) return st__fail(err, ST_ERR_NOMEM, "cannot allocate work items", ST_NO_OFFSET, NULL, 0, 0);
  make_items(plan, o.chunk_size, items);
  if ((size_t)threads > nitems) threads = nitems != 0 ? (uint32_t)nitems : 1;

  engine_run r;
  memset(&r, 0, sizeof r);
  r.plan = plan;
  r.base = base;
  r.items = items;
  r.nitems = nitems;
  r.flags = o.flags;
  r.dfd = -1;
  r.data_offset = st_data_offset(plan->file);
  if ((o.flags & ST_EXEC_DIRECT) && base == NULL && plan->file->fd >= 0 && nitems > 0) {
    /* A second descriptor on the same open file, with O_DIRECT; a
     * filesystem that refuses it (tmpfs: EINVAL) gets buffered reads. */
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", plan->file->fd);
    r.dfd = open(proc, O_RDONLY | O_DIRECT | O_CLOEXEC);
  }
#ifdef MADV_HUGEPAGE
  if (o.flags & ST_EXEC_HUGEPAGES) advise_huge(plan);
#endif
  atomic_init(&r.next, 0);
  atomic_init(&r.read, 0);
  atomic_init(&r.failed, 0);
  atomic_init(&r.copied, 0);
  pthread_mutex_init(&r.lock, NULL);
  r.status = ST_OK;

  pthread_t tids[ENGINE_MAX_THREADS];
  uint32_t started = 0;
  for (uint32_t t = 1; t < threads; t++) {
    if (pthread_create(&tids[started], NULL, engine_worker, &r) != 0) break;
    started++;
  }
  engine_worker(&r); /* the calling thread works too */
  for (uint32_t t = 0; t < started; t++) pthread_join(tids[t], NULL);
  pthread_mutex_destroy(&r.lock);
  st__free(plan->alloc, items);
  if (r.dfd >= 0) close(r.dfd);

  if (stats != NULL) {
    memset(stats, 0, sizeof *stats);
    stats->bytes_copied = atomic_load(&r.copied);
    stats->bytes_read = atomic_load(&r.read);
    stats->direct = r.dfd >= 0;
    stats->chunks = nitems;
    stats->threads_used = started + 1;
  }
  if (r.status != ST_OK) {
    if (err != NULL) *err = r.error;
    return r.status;
  }
  st__ok(err);
  return ST_OK;
}
