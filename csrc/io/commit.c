/* The save path's system calls: retrying write loops and the durable commit.
 *
 * SIGXFSZ: a write past RLIMIT_FSIZE raises SIGXFSZ, whose default action
 * kills the process. The library never changes signal dispositions; a caller
 * that wants ST_ERR_IO (sys_errno EFBIG) instead should ignore SIGXFSZ. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/random.h>
#endif

#include "common/checked.h"
#include "core/internal.h"
#include "io/io.h"

/* Largest single write request: Linux transfers at most ~2 GiB per call. */
#define ST_IO_MAX_CHUNK ((size_t)1 << 30)
/* Temp names keep at most this many bytes of the target's name, so the
 * decorated name stays under NAME_MAX. */
#define ST_TMP_BASE_MAX 160u
#define ST_TMP_ATTEMPTS 64
/* Pieces per pwritev call (Linux's UIO_MAXIOV). */
#if defined(IOV_MAX) && IOV_MAX < 1024
#define ST_IOV_MAX IOV_MAX
#else
#define ST_IOV_MAX 1024
#endif
/* O_DIRECT alignment of memory, offsets and lengths: the page size, which
 * covers every common device (statx's STATX_DIOALIGN would tell exactly, but
 * glibc 2.36's struct statx lacks the fields). A device that wants more
 * refuses the write with EINVAL and gets buffered writes instead. */
#define ST_DIRECT_ALIGN ((size_t)4096)
/* Each O_DIRECT bounce buffer (a file larger than one gets two); a
 * multiple of ST_DIRECT_ALIGN. 2 MiB (half of an L2-sized working set for
 * the two) measured 12-15% faster than 4 or 8 MiB on the 2-core VM of
 * benchmarks/RESULTS.md. Overridable only to measure other sizes. */
#ifndef ST_DIRECT_BUF
#define ST_DIRECT_BUF ((size_t)2 << 20)
#endif

static int libc_open(const char *path, int flags, mode_t mode) {
  return open(path, flags, mode);
}

static int libc_fallocate(int fd, off_t off, off_t len) {
#if defined(__linux__)
  /* fallocate(2), not posix_fallocate: glibc's emulation writes every block
   * on filesystems without support, which is slow and pointless here. */
  if (fallocate(fd, 0, off, len) == 0) return 0;
  return errno;
#else
  return posix_fallocate(fd, off, len);
#endif
}

/* linkat with AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link of
 * the descriptor works for everyone where /proc is mounted. */
static int libc_link_fd(int fd, const char *path) {
#if defined(__linux__)
  if (linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) == 0) return 0;
  if (errno != ENOENT && errno != EPERM && errno != EINVAL) return -1;
  char proc[64];
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  return linkat(AT_FDCWD, proc, AT_FDCWD, path, AT_SYMLINK_FOLLOW);
#else
  (void)fd;
  (void)path;
  errno = ENOTSUP;
  return -1;
#endif
}

static const st__io_hooks libc_hooks = {
    libc_open, pwrite, write, fsync, close, rename, unlink, libc_fallocate, libc_link_fd,
    pwritev,
};

static st__io_hooks hooks = {
    libc_open, pwrite, write, fsync, close, rename, unlink, libc_fallocate, libc_link_fd,
    pwritev,
};

static st__thread_create_fn thread_create = pthread_create;

void st__io_set_thread_hook(st__thread_create_fn fn) {
  thread_create = fn != NULL ? fn : pthread_create;
}

/* A gathered write for hook tables that hook pwrite only: the first
 * non-empty piece, one call; st__pwritev_all loops for the rest. */
static ssize_t pwritev_via_pwrite(int fd, const struct iovec *iov, int n, off_t off) {
  for (int i = 0; i < n; i++) {
    if (iov[i].iov_len > 0) return hooks.pwrite_fn(fd, iov[i].iov_base, iov[i].iov_len, off);
  }
  return 0;
}

void st__io_set_hooks(const st__io_hooks *h) {
  thread_create = pthread_create;
  if (h == NULL) {
    hooks = libc_hooks;
    return;
  }
  hooks.open_fn = h->open_fn != NULL ? h->open_fn : libc_hooks.open_fn;
  hooks.pwrite_fn = h->pwrite_fn != NULL ? h->pwrite_fn : libc_hooks.pwrite_fn;
  hooks.write_fn = h->write_fn != NULL ? h->write_fn : libc_hooks.write_fn;
  hooks.fsync_fn = h->fsync_fn != NULL ? h->fsync_fn : libc_hooks.fsync_fn;
  hooks.close_fn = h->close_fn != NULL ? h->close_fn : libc_hooks.close_fn;
  hooks.rename_fn = h->rename_fn != NULL ? h->rename_fn : libc_hooks.rename_fn;
  hooks.unlink_fn = h->unlink_fn != NULL ? h->unlink_fn : libc_hooks.unlink_fn;
  hooks.fallocate_fn =
      h->fallocate_fn != NULL ? h->fallocate_fn : libc_hooks.fallocate_fn;
  hooks.link_fd_fn = h->link_fd_fn != NULL ? h->link_fd_fn : libc_hooks.link_fd_fn;
  if (h->pwritev_fn != NULL) {
    hooks.pwritev_fn = h->pwritev_fn;
  } else {
    hooks.pwritev_fn = h->pwrite_fn != NULL ? pwritev_via_pwrite : libc_hooks.pwritev_fn;
  }
}

/* Largest value an off_t holds, whatever its width. */
static uint64_t off_max(void) {
  return ((uint64_t)1 << (sizeof(off_t) * 8 - 1)) - 1;
}

/* The one retry rule of plain writes: EINTR is retried, a short write
 * continues where it stopped, and a regular file never accepts zero bytes of
 * a non-empty write (EIO). off: the file offset, or -1 for write(2). */
static int write_loop(int fd, const unsigned char *p, size_t len, int64_t off) {
  while (len > 0) {
    size_t n = len < ST_IO_MAX_CHUNK ? len : ST_IO_MAX_CHUNK;
    ssize_t r = off < 0 ? hooks.write_fn(fd, p, n) : hooks.pwrite_fn(fd, p, n, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      return errno != 0 ? errno : EIO;
    }
    if (r == 0) return EIO;
    p += (size_t)r;
    len -= (size_t)r;
    if (off >= 0) off += r;
  }
  return 0;
}

int st__write_all(int fd, const void *buf, size_t len) { return write_loop(fd, buf, len, -1); }

int st__pwrite_all(int fd, const void *buf, size_t len, uint64_t off) {
  uint64_t end;
  if (st__add_overflow_u64(off, len, &end) || end > off_max()) return EFBIG;
  return write_loop(fd, buf, len, (int64_t)off);
}

int st__pwritev_all(int fd, struct iovec *iov, int n, uint64_t off,
                    uint64_t *at) {
  uint64_t end = off;
  *at = off;
  for (int i = 0; i < n; i++) {
    if (st__add_overflow_u64(end, iov[i].iov_len, &end)) return EFBIG;
  }
  if (end > off_max()) return EFBIG;
  int i = 0;
  while (i < n) {
    if (iov[i].iov_len == 0) {
      i++;
      continue;
    }
    /* At most 1 GiB per call, so the total always fits an ssize_t. */
    struct iovec one;
    const struct iovec *v = iov + i;
    int cnt = 0;
    if (iov[i].iov_len > ST_IO_MAX_CHUNK) {
      one.iov_base = iov[i].iov_base;
      one.iov_len = ST_IO_MAX_CHUNK;
      v = &one;
      cnt = 1;
    } else {
      size_t bytes = 0;
      while (i + cnt < n && cnt < ST_IOV_MAX &&
             iov[i + cnt].iov_len <= ST_IO_MAX_CHUNK - bytes) {
        bytes += iov[i + cnt].iov_len;
        cnt++;
      }
    }
    ssize_t r = hooks.pwritev_fn(fd, v, cnt, (off_t)off);
    if (r < 0) {
      if (errno == EINTR) continue;
      *at = off;
      return errno != 0 ? errno : EIO;
    }
    if (r == 0) {
      *at = off;
      return EIO;
    }
    size_t done = (size_t)r;
    off += done;
    while (done > 0 && i < n) {
      if (done >= iov[i].iov_len) {
        done -= iov[i].iov_len;
        iov[i].iov_len = 0;
        i++;
      } else {
        iov[i].iov_base = (char *)iov[i].iov_base + done;
        iov[i].iov_len -= done;
        done = 0;
      }
    }
  }
  return 0;
}

static uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t st__random_u64(void) {
  static _Atomic uint64_t counter;
  uint64_t v = 0;
#if defined(__linux__)
  if (getrandom(&v, sizeof v, GRND_NONBLOCK) == (ssize_t)sizeof v) {
    return v ^ mix64(atomic_fetch_add(&counter, 1));
  }
#endif
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  v = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
  v ^= (uint64_t)getpid() << 32;
  v ^= (uint64_t)(uintptr_t)&ts;
  return mix64(v ^ mix64(atomic_fetch_add(&counter, 1)));
}

/* --- sinks ---------------------------------------------------------------- */

/* The writer's pieces are laid out as struct iovec, so they go to pwritev
 * as they are. */
_Static_assert(sizeof(st__piece) == sizeof(struct iovec) &&
                   offsetof(st__piece, base) == offsetof(struct iovec, iov_base) &&
                   offsetof(st__piece, len) == offsetof(struct iovec, iov_len),
               "st__piece must have the layout of struct iovec");

static struct iovec *as_iovec(st__piece *pieces) { return (struct iovec *)(void *)pieces; }

static int finish_nothing(st__sink *sink, uint64_t *at) {
  (void)sink;
  (void)at;
  return 0;
}

/* Gathered positioned writes straight from the caller's memory. */
typedef struct {
  st__sink base;
  int fd;
  uint64_t off;
} pwrite_sink;

static int putv_pwrite(st__sink *sink, st__piece *pieces, int n, uint64_t *at) {
  pwrite_sink *s = (pwrite_sink *)(void *)sink;
  struct iovec *iov = as_iovec(pieces);
  uint64_t len = 0;
  for (int i = 0; i < n; i++) len += iov[i].iov_len;
  int e = st__pwritev_all(s->fd, iov, n, s->off, at);
  if (e == 0) s->off += len;
  return e;
}

/* A descriptor at its own position: plain writes, piece by piece. */
typedef struct {
  st__sink base;
  int fd;
  uint64_t off; /* bytes written so far, for error offsets */
} write_sink;

static int putv_write(st__sink *sink, st__piece *pieces, int n, uint64_t *at) {
  write_sink *s = (write_sink *)(void *)sink;
  struct iovec *iov = as_iovec(pieces);
  for (int i = 0; i < n; i++) {
    int e = st__write_all(s->fd, iov[i].iov_base, iov[i].iov_len);
    if (e != 0) {
      *at = s->off;
      return e;
    }
    s->off += iov[i].iov_len;
  }
  return 0;
}

st_status st__write_fd(int fd, st__emit_fn emit, void *ctx, st_error *err) {
  if (fd < 0) {
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "negative file descriptor",
                    ST_NO_OFFSET, NULL, 0, 0);
  }
  write_sink s = {{putv_write, finish_nothing}, fd, 0};
  return emit(ctx, &s.base, err);
}

/* O_DIRECT: the bytes are copied into an aligned bounce buffer and written
 * a full buffer at a time, so every write but the last is aligned in
 * memory, offset and length. The last partial block goes out buffered.
 *
 * A file larger than one buffer gets two: once the first is full, a writer
 * thread writes each full buffer while the caller fills the other, so the
 * copy overlaps the device's transfer. The thread owns fd and `direct`
 * while it runs; the caller takes them back after joining it. */
typedef struct {
  st__sink base;
  int fd;
  bool direct;           /* O_DIRECT still set on fd */
  unsigned char *buf[2]; /* ST_DIRECT_ALIGN-aligned, cap bytes each; [1]: NULL
                          * for a file that fits one */
  int cur;               /* the buffer the caller fills */
  size_t cap;            /* a multiple of ST_DIRECT_ALIGN */
  size_t fill;
  uint64_t off;          /* file offset of buf[cur][0]: a multiple of cap */
  bool threaded;         /* the writer thread runs (mu, cv valid) */
  bool no_thread;        /* none to start: creation failed, or it was joined */
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;     /* any change of the fields below */
  bool queued;           /* a full buffer waits for the thread */
  bool busy;             /* the thread is writing one */
  bool stop;             /* exit once nothing is queued */
  const unsigned char *job;
  uint64_t job_off;
  int err;               /* the thread's failure, and the offset of its write */
  uint64_t err_at;
} direct_sink;

/* Turns O_DIRECT off for the rest of the file. Returns 0 or an errno value. */
static int drop_direct(direct_sink *s) {
  if (!s->direct) return 0;
  int fl = fcntl(s->fd, F_GETFL);
  if (fl < 0 || fcntl(s->fd, F_SETFL, fl & ~O_DIRECT) != 0) return errno != 0 ? errno : EIO;
  s->direct = false;
  return 0;
}

static int direct_write(direct_sink *s, const unsigned char *p, size_t len, uint64_t off,
                        uint64_t *at) {
  *at = off;
  int e = st__pwrite_all(s->fd, p, len, off);
  /* EINVAL from a direct write: the filesystem wants another alignment or
   * no O_DIRECT at all. The same bytes at the same offsets, buffered. A
   * short write before the EINVAL left bytes that are rewritten alike. */
  if (e == EINVAL && s->direct) {
    e = drop_direct(s);
    if (e == 0) e = st__pwrite_all(s->fd, p, len, off);
  }
  return e;
}

/* The writer thread: one queued buffer at a time, until told to stop or a
 * write fails (the caller then sees err at its next handoff). */
static void *direct_thread(void *arg) {
  direct_sink *s = arg;
  pthread_mutex_lock(&s->mu);
  for (;;) {
    while (!s->queued && !s->stop) pthread_cond_wait(&s->cv, &s->mu);
    if (!s->queued) break;
    const unsigned char *p = s->job;
    uint64_t off = s->job_off, at = 0;
    s->queued = false;
    s->busy = true;
    pthread_mutex_unlock(&s->mu);
    int e = direct_write(s, p, s->cap, off, &at);
    pthread_mutex_lock(&s->mu);
    s->busy = false;
    if (e != 0) {
      s->err = e;
      s->err_at = at;
    }
    pthread_cond_broadcast(&s->cv);
    if (e != 0) break;
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

/* Starts the writer thread with every asynchronous signal blocked, so the
 * application's handlers keep running on its own threads. SIGXFSZ stays
 * open: a write past RLIMIT_FSIZE behaves as on the caller's thread. */
static bool direct_start(direct_sink *s) {
  if (s->buf[1] == NULL || s->no_thread) return false;
  if (pthread_mutex_init(&s->mu, NULL) != 0) {
    s->no_thread = true;
    return false;
  }
  if (pthread_cond_init(&s->cv, NULL) != 0) {
    pthread_mutex_destroy(&s->mu);
    s->no_thread = true;
    return false;
  }
  sigset_t all, old;
  sigfillset(&all);
  static const int keep[] = {SIGXFSZ, SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS};
  for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) sigdelset(&all, keep[i]);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  s->queued = s->busy = s->stop = false;
  s->err = 0;
  int rc = thread_create(&s->thread, NULL, direct_thread, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    s->no_thread = true;
    return false;
  }
  s->threaded = true;
  return true;
}

/* Stops and joins the writer thread. With discard, a queued buffer is
 * dropped (the save failed); otherwise it is written first. Returns the
 * thread's error, if any, with *at its offset. Safe to call when no thread
 * runs. */
static int direct_stop(direct_sink *s, bool discard, uint64_t *at) {
  if (!s->threaded) return 0;
  pthread_mutex_lock(&s->mu);
  if (discard) s->queued = false;
  s->stop = true;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  pthread_join(s->thread, NULL);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  s->threaded = false;
  s->no_thread = true;
  if (s->err != 0) *at = s->err_at;
  return s->err;
}

/* The caller's buffer is full: hands it to the thread (started on the
 * first full buffer of a file that needs more) and takes the other, or
 * writes it here when no thread runs. */
static int direct_full(direct_sink *s, uint64_t *at) {
  if (s->threaded || direct_start(s)) {
    pthread_mutex_lock(&s->mu);
    while ((s->queued || s->busy) && s->err == 0) pthread_cond_wait(&s->cv, &s->mu);
    int e = s->err;
    if (e == 0) {
      s->job = s->buf[s->cur];
      s->job_off = s->off;
      s->queued = true;
      pthread_cond_broadcast(&s->cv);
    } else {
      *at = s->err_at;
    }
    pthread_mutex_unlock(&s->mu);
    if (e != 0) return e;
    s->cur ^= 1;
  } else {
    int e = direct_write(s, s->buf[s->cur], s->cap, s->off, at);
    if (e != 0) return e;
  }
  s->off += s->cap;
  s->fill = 0;
  return 0;
}

static int putv_direct(st__sink *sink, st__piece *pieces, int n, uint64_t *at) {
  struct iovec *iov = as_iovec(pieces);
  direct_sink *s = (direct_sink *)(void *)sink;
  for (int i = 0; i < n; i++) {
    const unsigned char *p = iov[i].iov_base;
    size_t len = iov[i].iov_len;
    while (len > 0) {
      size_t k = s->cap - s->fill < len ? s->cap - s->fill : len;
      memcpy(s->buf[s->cur] + s->fill, p, k);
      s->fill += k;
      p += k;
      len -= k;
      if (s->fill == s->cap) {
        int e = direct_full(s, at);
        if (e != 0) return e;
      }
    }
  }
  return 0;
}

static int finish_direct(st__sink *sink, uint64_t *at) {
  direct_sink *s = (direct_sink *)(void *)sink;
  int e = direct_stop(s, false, at);
  if (e != 0) return e;
  unsigned char *buf = s->buf[s->cur];
  size_t whole = s->fill & ~(ST_DIRECT_ALIGN - 1), tail = s->fill - whole;
  if (whole > 0) {
    e = direct_write(s, buf, whole, s->off, at);
    if (e != 0) return e;
  }
  if (tail > 0) {
    *at = s->off + whole;
    e = drop_direct(s);
    if (e == 0) e = st__pwrite_all(s->fd, buf + whole, tail, s->off + whole);
    if (e != 0) return e;
  }
  s->off += s->fill;
  s->fill = 0;
  return 0;
}

/* --- durable commit ------------------------------------------------------- */

static st_status io_fail(st_error *err, const char *message, const char *path,
                         int e) {
  return st__fail(err, ST_ERR_IO, message, ST_NO_OFFSET, path, strlen(path),
                  e != 0 ? e : EIO);
}

/* Fsyncs the directory holding the renamed file so the rename itself is
 * durable. Returns 0 or an errno value. */
static int fsync_dir(const char *dir) {
  int dfd = hooks.open_fn(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (dfd < 0) return errno != 0 ? errno : EIO;
  int e = 0;
  while (hooks.fsync_fn(dfd) != 0) {
    if (errno == EINTR) continue;
    /* Some filesystems cannot sync a directory at all: nothing is lost. */
    if (errno != EINVAL) e = errno != 0 ? errno : EIO;
    break;
  }
  hooks.close_fn(dfd);
  return e;
}

/* --- temp names and the stale temp-file sweep ------------------------------
 * A named temp file is ".<base>.<tag>.<pid>.<16 hex>.tmp". tag (16 hex) is a
 * hash of this machine's hostname, boot id and pid namespace: a pid means
 * something only where all three are ours. A leftover is removed when it is
 * ours (same tag) and its pid no longer runs, or, whoever made it, when it is
 * older than ST_TMP_STALE_SECONDS (no save takes a day between naming its
 * temp file and renaming it: the name is given just before the rename).
 * Everything else (a live writer here, any writer on another host or in
 * another container sharing the filesystem) is left alone. A process sweeps
 * each directory at most once (ST_SWEEP_MEMO directories remembered), so
 * repeated saves never rescan a large directory. */
#define ST_TMP_STALE_SECONDS (24 * 60 * 60)
#define ST_SWEEP_MEMO 64

static void read_small(const char *path, char *out, size_t cap) {
  out[0] = '\0';
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = read(fd, out, cap - 1);
  close(fd);
  out[n > 0 ? (size_t)n : 0] = '\0';
}

static uint64_t hash_str(uint64_t h, const char *s) {
  for (; *s != '\0'; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull; /* FNV-1a */
  return mix64(h ^ 0xff);
}

static pthread_once_t tag_once = PTHREAD_ONCE_INIT;
static char tag_hex[17];

static void make_tag(void) {
  char buf[256];
  uint64_t h = 0xcbf29ce484222325ull;
  if (gethostname(buf, sizeof buf) != 0) buf[0] = '\0';
  buf[sizeof buf - 1] = '\0';
  h = hash_str(h, buf);
  read_small("/proc/sys/kernel/random/boot_id", buf, sizeof buf);
  h = hash_str(h, buf);
  ssize_t n = readlink("/proc/self/ns/pid", buf, sizeof buf - 1);
  buf[n > 0 ? (size_t)n : 0] = '\0';
  h = hash_str(h, buf);
  snprintf(tag_hex, sizeof tag_hex, "%016llx", (unsigned long long)h);
}

/* This machine's tag: 16 hex digits, NUL-terminated, static storage. */
static const char *host_tag(void) {
  pthread_once(&tag_once, make_tag);
  return tag_hex;
}

void st__io_temp_tag(char out[17]) { memcpy(out, host_tag(), 17); }

/* Writes the decorated temp name for base into tmp (capacity cap). */
static void temp_name(char *tmp, size_t cap, const char *path, size_t dir_len,
                      const char *base, size_t keep) {
  memcpy(tmp, path, dir_len);
  tmp[dir_len] = '.';
  memcpy(tmp + dir_len + 1, base, keep);
  snprintf(tmp + dir_len + 1 + keep, cap - dir_len - 1 - keep, ".%s.%ld.%016llx.tmp",
           host_tag(), (long)getpid(), (unsigned long long)st__random_u64());
}

/* The directories this process has swept (by device and inode), and the pid
 * that swept them: a forked child starts afresh. */
static pthread_mutex_t memo_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  dev_t dev;
  ino_t ino;
} memo[ST_SWEEP_MEMO];
static size_t memo_count, memo_next;
static pid_t memo_pid;
static atomic_ulong sweep_scans;

unsigned long st__io_sweep_scans(void) { return atomic_load(&sweep_scans); }

void st__io_sweep_forget(void) {
  pthread_mutex_lock(&memo_lock);
  memo_count = memo_next = 0;
  pthread_mutex_unlock(&memo_lock);
}

/* Whether dir (open as dfd) is still to be swept by this process; marks it
 * swept. */
static bool first_visit(int dfd) {
  struct stat sb;
  if (fstat(dfd, &sb) != 0) return false;
  bool first = true;
  pthread_mutex_lock(&memo_lock);
  if (memo_pid != getpid()) {
    memo_pid = getpid();
    memo_count = memo_next = 0;
  }
  for (size_t i = 0; i < memo_count && first; i++)
    if (memo[i].dev == sb.st_dev && memo[i].ino == sb.st_ino) first = false;
  if (first) {
    memo[memo_next].dev = sb.st_dev;
    memo[memo_next].ino = sb.st_ino;
    memo_next = (memo_next + 1) % ST_SWEEP_MEMO;
    if (memo_count < ST_SWEEP_MEMO) memo_count++;
  }
  pthread_mutex_unlock(&memo_lock);
  return first;
}

/* Whether n[0..len) is all lowercase hex. */
static bool all_hex(const char *n, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (!((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'f'))) return false;
  return true;
}

/* Whether the entry n (a temp name of this target: ".<base>." already
 * matched, rest = what follows) may be removed. */
static bool stale(int dfd, const char *n, const char *rest) {
  size_t len = strlen(rest);
  if (len < 4 || strcmp(rest + len - 4, ".tmp") != 0) return false;
  /* <tag>.<pid>.<16 hex>.tmp, or an older release's <pid>.<16 hex>.tmp
   * (no tag: judged by age only). */
  bool ours = false;
  const char *p = rest;
  if (len > 17 && rest[16] == '.' && all_hex(rest, 16)) {
    ours = memcmp(rest, host_tag(), 16) == 0;
    p = rest + 17;
  }
  char *end = NULL;
  errno = 0;
  long pid = strtol(p, &end, 10);
  if (end == p || errno != 0 || *end != '.' || pid <= 0 || strlen(end) != 1 + 16 + 4 ||
      !all_hex(end + 1, 16))
    return false;
  if (ours && pid != (long)getpid() && kill((pid_t)pid, 0) != 0 && errno == ESRCH) return true;
  struct stat sb;
  struct timespec now;
  if (fstatat(dfd, n, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode) ||
      clock_gettime(CLOCK_REALTIME, &now) != 0)
    return false;
  return now.tv_sec - sb.st_mtime > ST_TMP_STALE_SECONDS;
}

/* Removes the stale temp files of this target (see above). Best effort. */
static void sweep_stale(const char *dir, const char *base, size_t keep) {
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  if (!first_visit(dfd)) {
    close(dfd);
    return;
  }
  DIR *d = fdopendir(dfd);
  if (d == NULL) {
    close(dfd);
    return;
  }
  atomic_fetch_add(&sweep_scans, 1);
  size_t dlen = strlen(dir);
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    const char *n = e->d_name;
    if (n[0] != '.' || strlen(n) < keep + 2 || memcmp(n + 1, base, keep) != 0 ||
        n[keep + 1] != '.' || !stale(dfd, n, n + keep + 2))
      continue;
    char full[PATH_MAX];
    size_t len = strlen(n);
    if (dlen + 1 + len + 1 > sizeof full) continue;
    memcpy(full, dir, dlen);
    full[dlen] = '/';
    memcpy(full + dlen + 1, n, len + 1);
    hooks.unlink_fn(full);
  }
  closedir(d);
}

/* Opens a temp file, with O_DIRECT when *direct; where the filesystem
 * refuses O_DIRECT (EINVAL) it opens buffered and clears *direct. Linux may
 * create a named file before refusing O_DIRECT, so created (an O_EXCL open
 * of a fresh random name) removes it before the buffered retry. */
static int open_temp(const char *p, int oflags, bool *direct, bool created) {
  int fd;
  if (*direct) {
    do {
      fd = hooks.open_fn(p, oflags | O_DIRECT, 0666);
    } while (fd < 0 && errno == EINTR);
    if (fd >= 0 || errno != EINVAL) return fd;
    if (created) hooks.unlink_fn(p);
    *direct = false;
  }
  do {
    fd = hooks.open_fn(p, oflags, 0666);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

st_status st__commit_path(const char *path, uint64_t size, uint32_t flags,
                          const st_allocator *alloc, st__emit_fn emit,
                          void *ctx, st_error *err) {
  size_t plen = strlen(path);
  const char *slash = strrchr(path, '/');
  size_t dir_len = slash != NULL ? (size_t)(slash - path) + 1 : 0;
  const char *base = path + dir_len;
  size_t base_len = plen - dir_len;
  if (base_len == 0 || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "path names no file",
                    ST_NO_OFFSET, path, plen, 0);
  }
  if (size > off_max()) {
    return st__fail(err, ST_ERR_IO, "file too large for this platform",
                    ST_NO_OFFSET, path, plen, EFBIG);
  }

  size_t keep = base_len < ST_TMP_BASE_MAX ? base_len : ST_TMP_BASE_MAX;
  size_t cap = dir_len + keep + 64;
  /* The directory to fsync: "." for a bare name, "/" for the root. */
  size_t dcap = dir_len + 2;
  char *tmp = st__malloc(alloc, cap + dcap);
  if (tmp == NULL) {
    return st__fail(err, ST_ERR_NOMEM, NULL, ST_NO_OFFSET, NULL, 0, 0);
  }
  char *dir = tmp + cap;
  if (dir_len == 0) {
    memcpy(dir, ".", 2);
  } else if (dir_len == 1) {
    memcpy(dir, "/", 2);
  } else {
    memcpy(dir, path, dir_len - 1);
    dir[dir_len - 1] = '\0';
  }
  sweep_stale(dir, base, keep);

  /* O_DIRECT: the bounce buffers are allocated before any file exists; a
   * file that fits one buffer (never more than the file rounded up to a
   * block) gets no second one, nor a thread. */
  bool want_direct = (flags & ST_WRITE_DIRECT) != 0, direct = false;
  void *bounce_raw = NULL;
  direct_sink ds;
  memset(&ds, 0, sizeof ds);
  if (want_direct) {
    uint64_t want = size + (ST_DIRECT_ALIGN - 1);
    ds.cap = want < ST_DIRECT_BUF ? (size_t)want & ~(ST_DIRECT_ALIGN - 1) : ST_DIRECT_BUF;
    size_t nbuf = size > ds.cap ? 2 : 1;
    bounce_raw = st__malloc(alloc, nbuf * ds.cap + ST_DIRECT_ALIGN);
    if (bounce_raw == NULL) {
      st__free(alloc, tmp);
      return st__fail(err, ST_ERR_NOMEM, NULL, ST_NO_OFFSET, NULL, 0, 0);
    }
    uintptr_t a = ((uintptr_t)bounce_raw + (ST_DIRECT_ALIGN - 1)) & ~(uintptr_t)(ST_DIRECT_ALIGN - 1);
    ds.buf[0] = (unsigned char *)a;
    ds.buf[1] = nbuf == 2 ? ds.buf[0] + ds.cap : NULL;
  }

  /* The data goes into an anonymous file, so a writer killed while writing
   * leaves nothing behind; it gets a name only just before the rename. */
  bool named = false;
  direct = want_direct;
  int fd = open_temp(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, &direct, false);
  if (fd < 0 && errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
    st_status s = io_fail(err, "cannot create the temporary file", path, errno);
    st__free(alloc, bounce_raw);
    st__free(alloc, tmp);
    return s;
  }
  for (int attempt = 0; fd < 0; attempt++) {
    /* No O_TMPFILE here: a named temp file. 0666: the umask applies, as for
     * any newly created file. */
    temp_name(tmp, cap, path, dir_len, base, keep);
    direct = want_direct;
    fd = open_temp(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, &direct, true);
    if (fd >= 0) {
      named = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno != EEXIST || attempt + 1 >= ST_TMP_ATTEMPTS) {
      st_status s = io_fail(err, "cannot create the temporary file", path, errno);
      st__free(alloc, bounce_raw);
      st__free(alloc, tmp);
      return s;
    }
  }

  st_status s = ST_OK;
  int e = hooks.fallocate_fn(fd, 0, (off_t)size);
  if (e != 0 && e != EOPNOTSUPP && e != EINVAL && e != ENOSYS && e != EINTR) {
    s = io_fail(err, "cannot reserve space for the file", path, e);
    goto fail;
  }

  pwrite_sink ps = {{putv_pwrite, finish_nothing}, fd, 0};
  st__sink *sink = &ps.base;
  if (direct) {
    ds.base.putv = putv_direct;
    ds.base.finish = finish_direct;
    ds.fd = fd;
    ds.direct = true;
    sink = &ds.base;
  }
  s = emit(ctx, sink, err);
  if (s != ST_OK) goto fail;

  if ((flags & ST_WRITE_NO_FSYNC) == 0) {
    while (hooks.fsync_fn(fd) != 0) {
      if (errno == EINTR) continue;
      s = io_fail(err, "fsync of the temporary file failed", path, errno);
      goto fail;
    }
  }
  for (int attempt = 0; !named; attempt++) {
    temp_name(tmp, cap, path, dir_len, base, keep);
    if (hooks.link_fd_fn(fd, tmp) == 0) {
      named = true;
      break;
    }
    if (errno == EINTR) continue;
    if (errno != EEXIST || attempt + 1 >= ST_TMP_ATTEMPTS) {
      s = io_fail(err, "cannot name the temporary file", path, errno);
      goto fail;
    }
  }
  {
    int c = hooks.close_fn(fd);
    fd = -1;
    /* Linux closes the descriptor even when close reports an error; the
     * error itself (EIO from delayed write-back) means lost data. */
    if (c != 0) {
      s = io_fail(err, "close of the temporary file failed", path, errno);
      goto fail;
    }
  }
  if (hooks.rename_fn(tmp, path) != 0) {
    s = io_fail(err, "cannot rename the temporary file over the target", path,
                errno);
    goto fail;
  }
  if ((flags & ST_WRITE_NO_FSYNC) == 0) {
    e = fsync_dir(dir);
    if (e != 0) {
      s = io_fail(err, "fsync of the directory failed", path, e);
      st__free(alloc, bounce_raw);
      st__free(alloc, tmp);
      return s;
    }
  }
  st__free(alloc, bounce_raw);
  st__free(alloc, tmp);
  st__ok(err);
  return ST_OK;

fail:
  {
    /* A failed emit may leave the writer thread running: it is joined
     * before the descriptor closes, and its queued buffer dropped. */
    uint64_t ignored = 0;
    (void)direct_stop(&ds, true, &ignored);
  }
  if (fd >= 0) hooks.close_fn(fd);
  if (named) hooks.unlink_fn(tmp);
  st__free(alloc, bounce_raw);
  st__free(alloc, tmp);
  return s;
}

/* --- the writer's entry points that need the system ------------------------ */

st_status st_writer_new(const st_allocator *allocator, st_writer **out, st_error *err) {
  const uint64_t seed[2] = {st__random_u64(), st__random_u64()};
  return st__writer_create(allocator, seed, out, err);
}

st_status st_writer_write_path(st_writer *w, const char *path, uint32_t flags, st_error *err) {
  if (w == NULL || path == NULL || (flags & ~(ST_WRITE_NO_FSYNC | ST_WRITE_DIRECT)) != 0) {
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "writer or path is NULL, or unknown flags",
                    ST_NO_OFFSET, NULL, 0, 0);
  }
  st__write_job job;
  st_status s = st__writer_begin(w, &job, err);
  if (s != ST_OK) return s;
  s = st__commit_path(path, job.size, flags, job.alloc, st__writer_emit, &job, err);
  st__writer_end(&job);
  return s;
}

st_status st_writer_write_fd(st_writer *w, int fd, st_error *err) {
  if (w == NULL || fd < 0) {
    return st__fail(err, ST_ERR_INVALID_ARGUMENT, "writer is NULL or fd is negative",
                    ST_NO_OFFSET, NULL, 0, 0);
  }
  st__write_job job;
  st_status s = st__writer_begin(w, &job, err);
  if (s != ST_OK) return s;
  s = st__write_fd(fd, st__writer_emit, &job, err);
  st__writer_end(&job);
  return s;
}
