/* Internal to the safetensors library: not installed, not part of the ABI.
 * The I/O layer: everything that touches a descriptor or a mapping. Reads
 * of the data section, the writer's retrying write loops and sinks, the
 * durable commit (temp file, fsync, rename, directory fsync), and a table of
 * hooks so tests can inject faults into every system call of the save
 * path. */
#ifndef ST_IO_IO_H
#define ST_IO_IO_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "core/sink.h"
#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The system calls of the save path. fallocate_fn returns 0 or an errno
 * value (posix_fallocate's convention); the others follow libc (-1 and
 * errno). A NULL member means the libc function, except pwritev_fn: NULL
 * with a non-NULL pwrite_fn sends gathered writes through pwrite_fn, one
 * piece per call, so a table that hooks only pwrite still sees every
 * positioned write. */
typedef struct st__io_hooks {
  int (*open_fn)(const char *path, int flags, mode_t mode);
  ssize_t (*pwrite_fn)(int fd, const void *buf, size_t len, off_t off);
  ssize_t (*write_fn)(int fd, const void *buf, size_t len);
  int (*fsync_fn)(int fd);
  int (*close_fn)(int fd);
  int (*rename_fn)(const char *from, const char *to);
  int (*unlink_fn)(const char *path);
  int (*fallocate_fn)(int fd, off_t off, off_t len);
  /* Gives the anonymous (O_TMPFILE) file open as fd the name path; libc
   * convention. */
  int (*link_fd_fn)(int fd, const char *path);
  ssize_t (*pwritev_fn)(int fd, const struct iovec *iov, int n, off_t off);
} st__io_hooks;

/* TEST-ONLY: replaces the system calls of the save path for the whole
 * process (the table is copied); NULL restores libc. Not thread-safe: call
 * it only while no write is running. Never exported from the shared
 * library. Also restores pthread_create for st__io_set_thread_hook. */
void st__io_set_hooks(const st__io_hooks *hooks);

/* Starts a thread; pthread_create's convention. */
typedef int (*st__thread_create_fn)(pthread_t *thread, const pthread_attr_t *attr,
                                    void *(*start)(void *), void *arg);

/* TEST-ONLY: how the O_DIRECT sink starts its writer thread (NULL:
 * pthread_create), until the next st__io_set_hooks. Outside the hook table
 * so that tables written as positional initializers stay complete. Same
 * rules as st__io_set_hooks. */
void st__io_set_thread_hook(st__thread_create_fn fn);

/* Copies len bytes at offset of the data section of f (range already
 * checked), from the mapping or through pread. */
st_status st__read_data(const st_file *f, uint64_t offset, void *dst,
                        size_t len, st_error *err);

/* Writes all len bytes sequentially to fd, retrying EINTR and short writes.
 * Returns 0 or an errno value. */
int st__write_all(int fd, const void *buf, size_t len);

/* Writes all len bytes at file offset off, retrying EINTR and short writes.
 * Returns 0 or an errno value. */
int st__pwrite_all(int fd, const void *buf, size_t len, uint64_t off);

/* Writes the n pieces of iov back to back from file offset off, in calls of
 * at most IOV_MAX pieces and 1 GiB, retrying EINTR and short writes; iov is
 * consumed (its entries are advanced). Returns 0 or an errno value, with *at
 * the file offset where the failed call began. */
int st__pwritev_all(int fd, struct iovec *iov, int n, uint64_t off,
                    uint64_t *at);

/* TEST-ONLY: this machine's temp-name tag (16 hex digits and a NUL): a hash
 * of the hostname, the boot id and the pid namespace. */
void st__io_temp_tag(char out[17]);

/* TEST-ONLY: how many directory scans the stale temp-file sweep has made in
 * this process; and a reset of its memory of swept directories. */
unsigned long st__io_sweep_scans(void);
void st__io_sweep_forget(void);

/* 64 unpredictable-enough bits (seeds and temp-file names, not crypto). */
uint64_t st__random_u64(void);

/* Writes size bytes produced by emit durably to path: an anonymous file in
 * the target's directory (O_TMPFILE; a named temp file where the filesystem
 * lacks it), fsync (unless ST_WRITE_NO_FSYNC), a temp name linked in, close,
 * rename over path, directory fsync. With ST_WRITE_DIRECT the temp file is
 * opened with O_DIRECT and written through an aligned bounce buffer
 * (buffered where the filesystem refuses O_DIRECT); a file larger than that
 * buffer gets a second one and a writer thread that writes each full buffer
 * while the caller fills the other. Stale temp files of this target are
 * swept first, once per directory per process (commit.c says which). On
 * failure the temp file is removed and path is untouched (except when only
 * the final directory fsync fails: the new file is then in place but its
 * durability is unknown, and ST_ERR_IO is still returned). */
st_status st__commit_path(const char *path, uint64_t size, uint32_t flags,
                          const st_allocator *alloc, st__emit_fn emit,
                          void *ctx, st_error *err);

/* Writes the bytes produced by emit to fd at its current position. */
st_status st__write_fd(int fd, st__emit_fn emit, void *ctx, st_error *err);

#ifdef __cplusplus
}
#endif

#endif /* ST_IO_IO_H */
