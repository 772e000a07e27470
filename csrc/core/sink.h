/* Internal to the safetensors library: not installed, not part of the ABI.
 * Where the format layer meets the I/O layer when writing: the writer (core)
 * lays a file out and emits its bytes, in order, into a sink that io
 * provides (a descriptor, a durable commit, an O_DIRECT bounce buffer), as
 * zstd's compressor writes into a caller's buffer and never opens a file. */
#ifndef ST_CORE_SINK_H
#define ST_CORE_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* One piece of bytes; the layout of POSIX struct iovec, which the I/O layer
 * checks at compile time and hands to writev-style calls as is (libuv's
 * uv_buf_t does the same). */
typedef struct st__piece {
  void *base;
  size_t len;
} st__piece;

/* Receives the file's bytes in order. */
typedef struct st__sink st__sink;
struct st__sink {
  /* Takes the n pieces (which it may modify) after every earlier byte; their
   * memory may be reused as soon as it returns. Returns 0 or an errno value,
   * with *at the file offset of the write that failed. */
  int (*putv)(st__sink *sink, st__piece *pieces, int n, uint64_t *at);
  /* Writes out whatever the sink still holds; called once, after the last
   * putv. Same return convention. */
  int (*finish)(st__sink *sink, uint64_t *at);
};

/* Produces the whole file through sink, in order, then finishes it; fills
 * err and returns its status on failure (ST_ERR_IO from the sink,
 * ST_ERR_CALLBACK, ...). */
typedef st_status (*st__emit_fn)(void *ctx, st__sink *sink, st_error *err);

/* st_writer_new without the randomness (a system call, so the I/O layer
 * draws it): seed keys the writer's SipHash tables of names. */
st_status st__writer_create(const st_allocator *allocator, const uint64_t seed[2],
                            st_writer **out, st_error *err);

/* One write of a writer's file: its layout and the buffers the emission
 * needs, made before any file is touched. */
typedef struct st__write_job {
  st_writer *w;
  uint64_t size;              /* the file's size: 8 + N + data */
  const st_allocator *alloc;  /* the writer's */
  unsigned char *scratch;     /* producers' chunks */
  size_t scratch_size;
  st__piece *pieces;          /* one sink call's gathered pieces */
} st__write_job;

/* Lays the writer's file out and allocates what emitting it needs.
 * Statuses: those of st_writer_size, ST_ERR_NOMEM. On failure nothing is
 * left to release. */
st_status st__writer_begin(st_writer *w, st__write_job *job, st_error *err);

/* An st__emit_fn over a begun job (ctx: the st__write_job). */
st_status st__writer_emit(void *job, st__sink *sink, st_error *err);

/* Releases what st__writer_begin allocated. */
void st__writer_end(st__write_job *job);

#endif /* ST_CORE_SINK_H */
