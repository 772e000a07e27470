/* Internal to the safetensors library: not installed, not part of the ABI.
 * The open-file handle and its tensor table, shared by the header parser
 * (core/header.c), the table queries (core/table.c), the slicer
 * (core/slice.c) and the backends (io/reader.c). */
#ifndef ST_CORE_FILE_H
#define ST_CORE_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* One tensor. Names and shapes point into the handle's single arena. */
typedef struct st__tensor {
  const char *name;      /* decoded, NUL-terminated */
  size_t name_len;
  const uint64_t *shape; /* rank entries */
  uint64_t numel;
  uint64_t begin;        /* relative to the data section */
  uint64_t end;
  uint64_t name_pos;     /* file offset of the name's opening quote */
  size_t aux;            /* while parsing: token of the name, then the
                            entry's position in the header */
  size_t shape_tok;      /* while parsing: token of the shape array */
  uint32_t rank;
  st_dtype dtype;
  bool overflow;         /* while parsing: numel overflowed */
} st__tensor;

typedef struct st__meta {
  const char *key;
  size_t key_len;
  const char *value;
  size_t value_len;
  uint64_t key_pos; /* file offset of the key's opening quote */
} st__meta;

struct st_file {
  const st_allocator *alloc; /* the caller's (it outlives the handle) */
  st_backend backend;
  uint32_t flags;
  int fd;                    /* pread backend only; else -1 */
  const unsigned char *base; /* whole file: mapping or caller memory */
  void *map;                 /* our mapping (munmap on close), or NULL */
  size_t map_size;
  unsigned char *header_buf; /* pread backend: the header bytes */
  uint64_t file_size;
  uint64_t header_size;      /* N */
  uint64_t data_size;        /* last end (trailing bytes excluded) */
  void *arena;               /* shapes, then names and metadata strings */
  st__tensor *tensors;       /* file order: (begin, end, name) */
  size_t ntensors;
  size_t *name_order;        /* file-order indices sorted by name */
  st__meta *meta;            /* sorted by key */
  size_t nmeta;
  /* Set by the I/O layer (core makes no system calls): populates the page
   * tables of a fresh block of bytes, best effort; NULL: nothing. */
  void (*populate)(void *p, size_t bytes);
};

/* Framing: N from the first 8 bytes of a file of file_size bytes (first8
 * may be NULL when file_size < 8), checked against the header limit and the
 * size. */
st_status st__framing(const unsigned char *first8, uint64_t file_size,
                      const st_open_options *opts, uint64_t *n_out, st_error *err);

/* Parses and validates header (n bytes, file bytes 8..8+n) against a file of
 * file_size bytes, filling the table fields of f (alloc must be set). On
 * failure everything it allocated is freed again. */
st_status st__header_parse(st_file *f, const unsigned char *header, size_t n,
                           uint64_t file_size, const st_open_options *opts,
                           st_error *err);

/* Frees the table fields filled by st__header_parse (safe on partial). */
void st__header_free(st_file *f);

/* One row of a slice: nruns runs of run_bytes each, run_stride apart,
 * starting at offset of the data section. Rows come in row-major order. */
typedef struct st__slice_row {
  uint64_t offset;
  uint64_t nruns;
  uint64_t run_bytes;
  uint64_t run_stride;
} st__slice_row;

typedef st_status (*st__slice_row_fn)(void *ctx, const st__slice_row *row,
                                      st_error *err);

/* Fills err for a slice that failed with st (naming tensor t, may be NULL)
 * and returns st. */
st_status st__slice_fail(st_error *err, st_status st, const st__tensor *t);

/* Walks the rows of a slice (the semantics of st_tensor_read_slice), calling
 * fn for each; stops at the first status fn returns that is not ST_OK. An
 * empty slice calls fn never. */
st_status st__slice_walk(const st_file *f, size_t index, const st_range *ranges,
                         size_t nranges, st__slice_row_fn fn, void *ctx,
                         st_error *err);

#endif /* ST_CORE_FILE_H */
