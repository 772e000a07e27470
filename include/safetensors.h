/*
 * safetensors.h -- the C API of torch-safetensors: a strict reader and a
 * reference-exact, durable writer for the safetensors format.
 *
 * The format
 *   bytes 0..8      N, unsigned 64-bit little-endian: the header length
 *   bytes 8..8+N    a UTF-8 JSON object: {"__metadata__": {str: str},
 *                   "<name>": {"dtype": "F32", "shape": [2, 3],
 *                              "data_offsets": [begin, end]}, ...}
 *                   possibly padded with JSON whitespace
 *   bytes 8+N..end  the data section; offsets are relative to its first byte.
 *                   Tensors are dense, row-major, little-endian, and tile the
 *                   data section exactly.
 *
 * Rules of the API
 *   - Open = validate. A handle exists only for a file that passed every check
 *     of the format contract (shared/FORMAT.md), including the rules where this
 *     library is deliberately stricter than the reference: duplicate keys, NUL
 *     in names or metadata, and rank / count / name-length / nesting limits.
 *   - Errors are values. Every fallible function returns st_status (ST_OK = 0;
 *     the other numbers are pinned forever) and, when the caller passes a
 *     non-NULL st_error, fills it with a constant message, the byte offset in
 *     the file and the offending name. Nothing reachable from file bytes
 *     aborts, asserts or prints. There is no global "last error".
 *   - Ownership. Every pointer returned by a reader function is borrowed from
 *     the handle and lives until st_close(). Every *_open / *_new has exactly
 *     one *_close / *_free, which accepts NULL.
 *   - Strings are (pointer, length) and also NUL-terminated. Sizes and offsets
 *     are size_t / uint64_t.
 *   - Threads. An open st_file is immutable: every reader function may be
 *     called on one handle from many threads at once. An st_writer must be
 *     used by one thread at a time.
 *   - Values are never checked: a BOOL byte other than 0/1 or a NaN payload
 *     is returned as stored.
 *   - Options structs carry their size and reserved room: struct_size must be
 *     what the matching *_init set, and unknown flag bits and non-zero
 *     reserved fields are refused (ST_ERR_INVALID_ARGUMENT), never ignored,
 *     so they can be given a meaning later.
 *
 * Two tiers (as zstd has)
 *   - Stable: every section not marked experimental (version, status and
 *     errors, dtypes and the torch mapping, allocation, reading, writing).
 *     Numbers, names and struct layouts are pinned; the SONAME changes only
 *     when they break.
 *   - Experimental: "Plans and the copy engine" (st_plan_*, st_exec_*,
 *     ST_EXEC_*) and "Sniffing" (st_sniff), declared only when the caller
 *     defines ST_EXPERIMENTAL_API
 *     before including this header. It may change in any release, and a
 *     program that uses it must be rebuilt against the exact version.
 */
#ifndef SAFETENSORS_H
#define SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library needs POSIX (mmap, pread, O_TMPFILE or named temp files,
 * pthreads) and is built with gcc or clang; its symbols are hidden except
 * those marked ST_API. */
#if defined(__GNUC__) && __GNUC__ >= 4
#  define ST_API __attribute__((visibility("default")))
#else
#  define ST_API
#endif

/* ==========================================================================
 * Version
 * ========================================================================== */

/* The project's one version number: CMake, the Python package metadata
 * (pyproject.toml) and torch_safetensors.__version__ are all read from these
 * three lines. */
#define ST_VERSION_MAJOR 0
#define ST_VERSION_MINOR 2
#define ST_VERSION_PATCH 0
#define ST_VERSION_NUMBER \
  (ST_VERSION_MAJOR * 10000 + ST_VERSION_MINOR * 100 + ST_VERSION_PATCH)
#define ST_VERSION_QUOTE_(x) #x
#define ST_VERSION_QUOTE(x) ST_VERSION_QUOTE_(x)
#define ST_VERSION_STRING                                              \
  ST_VERSION_QUOTE(ST_VERSION_MAJOR) "." ST_VERSION_QUOTE(ST_VERSION_MINOR) \
  "." ST_VERSION_QUOTE(ST_VERSION_PATCH)

/** The library's ST_VERSION_NUMBER, as built. */
ST_API unsigned st_version_number(void);
/** The library's ST_VERSION_STRING, as built (static storage). */
ST_API const char *st_version_string(void);

/* ==========================================================================
 * Status and errors
 * ========================================================================== */

/* Pinned numbers: never renumbered, never reused. */
typedef enum st_status {
  ST_OK = 0,
  ST_ERR_INVALID_ARGUMENT = 1,   /* the caller passed a bad argument */
  ST_ERR_NOMEM = 2,              /* an allocation failed */
  ST_ERR_IO = 3,                 /* a system call failed; st_error.sys_errno */
  ST_ERR_HEADER_TOO_SMALL = 4,   /* file shorter than 8 bytes */
  ST_ERR_HEADER_TOO_LARGE = 5,   /* N over the header limit */
  ST_ERR_INVALID_HEADER_LENGTH = 6, /* 8 + N past the end of the file */
  ST_ERR_INVALID_HEADER = 7,     /* header is not valid UTF-8 */
  ST_ERR_HEADER_DESERIALIZATION = 8, /* not JSON of the required shape */
  ST_ERR_VALIDATION_OVERFLOW = 9, /* element or bit count overflows 64 bits */
  ST_ERR_MISALIGNED_SLICE = 10,  /* sub-byte tensor not a whole number of bytes */
  ST_ERR_INVALID_TENSOR_INFO = 11, /* byte range length != shape x dtype */
  ST_ERR_INVALID_OFFSET = 12,    /* ranges do not tile the data section */
  ST_ERR_INCOMPLETE_BUFFER = 13, /* data section size != last end */
  ST_ERR_DUPLICATE_KEY = 14,     /* stricter: a key appears twice */
  ST_ERR_NUL_IN_STRING = 15,     /* stricter: U+0000 in a name or metadata */
  ST_ERR_LIMIT = 16,             /* rank, tensor count, name length, nesting */
  ST_ERR_NOT_FOUND = 17,         /* no tensor or metadata key of that name */
  ST_ERR_INVALID_SLICE = 18,     /* slice spec does not fit the tensor */
  ST_ERR_BUFFER_TOO_SMALL = 19,  /* caller's destination is too small */
  ST_ERR_UNSUPPORTED = 20,       /* not possible with this backend or dtype */
  ST_ERR_RESERVED_NAME = 21,     /* writer: a tensor called __metadata__ */
  ST_ERR_CALLBACK = 22,          /* writer: a producer callback failed */
  ST_ERR_FILE_CHANGED = 23       /* the file shrank or changed under a read */
} st_status;

/** Offset value meaning "no byte offset applies". */
#define ST_NO_OFFSET UINT64_MAX
/** Capacity of st_error.name, terminating NUL included. */
#define ST_ERROR_NAME_CAP 128

/* Caller-owned error record; every field is written on failure. */
typedef struct st_error {
  st_status code;
  int sys_errno;          /* errno of the failing system call, else 0 */
  const char *message;    /* constant string, static storage, never NULL */
  uint64_t offset;        /* byte offset in the file, or ST_NO_OFFSET */
  size_t name_len;        /* full length of the offending name (may exceed
                             what name holds) */
  char name[ST_ERROR_NAME_CAP]; /* truncated, NUL-terminated copy, or "" */
  uint64_t reserved[8];   /* zero; room to grow without an ABI break */
} st_error;

/** A short constant description of a status (static storage, never NULL). */
ST_API const char *st_status_str(st_status status);
/** The status's symbolic name, e.g. "ST_ERR_INVALID_OFFSET" (never NULL). */
ST_API const char *st_status_name(st_status status);

/* ==========================================================================
 * Dtypes
 * ========================================================================== */

/* Pinned numbers: never renumbered, never reused; a new dtype gets the next
 * one. (The order in which the writer sorts dtypes, the reference writer's,
 * is a separate table inside the library, not these numbers.) */
typedef enum st_dtype {
  ST_BOOL = 0,
  ST_F4 = 1,            /* 4 bits; two per byte, first in the low nibble */
  ST_F6_E2M3 = 2,       /* 6 bits */
  ST_F6_E3M2 = 3,       /* 6 bits */
  ST_U8 = 4,
  ST_I8 = 5,
  ST_F8_E5M2 = 6,
  ST_F8_E4M3 = 7,
  ST_F8_E8M0 = 8,
  ST_F8_E4M3FNUZ = 9,
  ST_F8_E5M2FNUZ = 10,
  ST_I16 = 11,
  ST_U16 = 12,
  ST_F16 = 13,
  ST_BF16 = 14,
  ST_I32 = 15,
  ST_U32 = 16,
  ST_F32 = 17,
  ST_C64 = 18,
  ST_F64 = 19,
  ST_I64 = 20,
  ST_U64 = 21
} st_dtype;

#define ST_DTYPE_COUNT 22

/** The format's name of a dtype ("F32"), or NULL when out of range. */
ST_API const char *st_dtype_name(st_dtype dtype);
/** Bits per element (4, 6, 8, 16, 32 or 64), or 0 when out of range. */
ST_API unsigned st_dtype_bits(st_dtype dtype);
/** Looks up a dtype by its exact, case-sensitive name of len bytes.
 *  Returns ST_OK or ST_ERR_NOT_FOUND (also for a NULL name). */
ST_API st_status st_dtype_from_name(const char *name, size_t len,
                                    st_dtype *out);

/* --- The torch mapping and the view policy ------------------------------
 * The one table of which torch dtype each file dtype loads as, and the one
 * view policy that every binding (Python, C++) follows:
 *   - F6_E2M3 / F6_E3M2: torch has no 6-bit dtype; a flat 1-D uint8 tensor of
 *     the raw packed bytes (never unpacked).
 *   - F4: float4_e2m1fn_x2, which packs two values per element: the torch
 *     shape is the file shape with its last dimension halved. With an odd last
 *     dimension there is no such shape: a flat 1-D float4_e2m1fn_x2 tensor of
 *     the bytes.
 *   - Bytes not aligned to the torch element size where they lie: an aligned
 *     copy, never a misaligned zero-copy view.
 *   - Every other dtype: its torch dtype with the file shape. */

/** torch's Python name of the dtype a file dtype loads as ("float32",
 *  "float4_e2m1fn_x2"; "uint8" for the F6 dtypes' raw bytes), or NULL when
 *  out of range. Static storage. */
ST_API const char *st_dtype_torch_name(st_dtype dtype);
/** The same torch dtype's c10::ScalarType name, as c10::toString writes it
 *  ("Float", "Float4_e2m1fn_x2", "Byte"), or NULL when out of range. */
ST_API const char *st_dtype_c10_name(st_dtype dtype);
/** File values per torch element: 1; 2 for F4 (pairs); 0 for the F6 dtypes
 *  (raw bytes, no torch element) and when out of range. */
ST_API unsigned st_dtype_torch_values(st_dtype dtype);
/** The file dtype a torch dtype saves as, by torch's Python name ("float32",
 *  with or without a "torch." prefix) or its c10 name ("Float"), len bytes.
 *  Never an F6 dtype. Statuses: ST_OK, ST_ERR_NOT_FOUND (also for NULL). */
ST_API st_status st_dtype_from_torch_name(const char *name, size_t len,
                                          st_dtype *out);

/* ==========================================================================
 * Allocation
 * ========================================================================== */

/* A caller's allocator, used for every allocation a handle makes (tests use
 * it to fail the n-th allocation). NULL anywhere means libc. free must accept
 * NULL. Handles keep the pointer: it must outlive them. */
typedef struct st_allocator {
  void *(*malloc_fn)(void *ctx, size_t size);
  void *(*realloc_fn)(void *ctx, void *ptr, size_t size);
  void (*free_fn)(void *ctx, void *ptr);
  void *ctx;
} st_allocator;

/* ==========================================================================
 * Reading
 * ========================================================================== */

typedef struct st_file st_file;

typedef enum st_backend {
  ST_BACKEND_MMAP = 0,   /* default: map the file; zero-copy views */
  ST_BACKEND_PREAD = 1   /* no mapping: positioned reads (network
                            filesystems, files that may change underneath;
                            a truncation is ST_ERR_FILE_CHANGED, not SIGBUS) */
} st_backend;

/* Documented default limits. A caller may lower them; the header limit may be
 * raised past ST_MAX_HEADER_SIZE only with allow_huge_header. */
#define ST_MAX_HEADER_SIZE 100000000ull /* the format's cap on N */
#define ST_DEFAULT_MAX_RANK 64u
#define ST_DEFAULT_MAX_TENSORS 10000000u
#define ST_DEFAULT_MAX_NAME_LEN 65536u
#define ST_DEFAULT_MAX_DEPTH 64u        /* JSON nesting, unknown fields too */

/* Flags for st_open_options.flags; any other bit is refused. */
#define ST_OPEN_ALLOW_TRAILING_BYTES 0x1u /* tolerate bytes after the last
                                             tensor (format: an error) */
#define ST_OPEN_MAP_PRIVATE_WRITABLE 0x2u /* mmap backend: a private
                                             copy-on-write mapping whose views
                                             the caller may write; the file is
                                             never modified */
#define ST_OPEN_MAP_POPULATE 0x4u         /* mmap backend: prefault pages */
#define ST_OPEN_ALLOW_HUGE_HEADER 0x8u    /* let max_header_size exceed
                                             ST_MAX_HEADER_SIZE */
#define ST_OPEN_ALL_FLAGS 0xFu            /* every ST_OPEN_* bit defined */

typedef struct st_open_options {
  size_t struct_size;        /* sizeof(st_open_options), set by _init; any
                                other value is refused */
  st_backend backend;
  uint32_t flags;            /* ST_OPEN_* */
  uint64_t max_header_size;  /* default ST_MAX_HEADER_SIZE */
  uint32_t max_rank;         /* default ST_DEFAULT_MAX_RANK */
  uint32_t max_depth;        /* default ST_DEFAULT_MAX_DEPTH */
  uint64_t max_tensors;      /* default ST_DEFAULT_MAX_TENSORS */
  uint64_t max_name_len;     /* bytes; default ST_DEFAULT_MAX_NAME_LEN */
  const st_allocator *allocator; /* NULL: libc */
  uint64_t reserved[8];      /* zero (else refused) */
} st_open_options;

/** Fills opts with the defaults. Always call it before changing fields. */
ST_API void st_open_options_init(st_open_options *opts);

/** Opens and fully validates the file at path. opts NULL: defaults.
 *  On success *out is a handle to free with st_close(); on failure *out is
 *  NULL and err (may be NULL) says why.
 *  Statuses: ST_ERR_INVALID_ARGUMENT (also for options with a wrong
 *  struct_size, an unknown flag bit, a non-zero reserved field or an unknown
 *  backend), ST_ERR_IO, ST_ERR_NOMEM, and every format status (4..16). */
ST_API st_status st_open(const char *path, const st_open_options *opts,
                         st_file **out, st_error *err);

/** As st_open, on an open file descriptor. The descriptor stays the
 *  caller's: the handle duplicates it, so fd may be closed right after. */
ST_API st_status st_open_fd(int fd, const st_open_options *opts,
                            st_file **out, st_error *err);

/** As st_open, over the caller's memory [data, data + size). The memory is
 *  borrowed: it must stay valid and unchanged until st_close(). The backend
 *  option is ignored; views are zero-copy. */
ST_API st_status st_open_memory(const void *data, size_t size,
                                const st_open_options *opts, st_file **out,
                                st_error *err);

/** Closes a handle and releases its mapping. NULL is a no-op. Every pointer
 *  borrowed from the handle dies here. */
ST_API void st_close(st_file *file);

/** The backend in use (ST_BACKEND_MMAP for st_open_memory handles). */
ST_API st_backend st_file_backend(const st_file *file);
/** N, the header length in bytes. */
ST_API uint64_t st_header_size(const st_file *file);
/** 8 + N: the file offset of the data section. */
ST_API uint64_t st_data_offset(const st_file *file);
/** Size of the data section in bytes (trailing bytes excluded). */
ST_API uint64_t st_data_size(const st_file *file);
/** The raw header bytes (N of them, borrowed). */
ST_API const char *st_header_bytes(const st_file *file);

/* --- The tensor table --------------------------------------------------- */

/* One tensor, as the header describes it. All pointers are borrowed from the
 * handle. */
typedef struct st_tensor_info {
  const char *name;      /* UTF-8, escapes decoded, NUL-terminated */
  size_t name_len;       /* bytes, without the NUL */
  st_dtype dtype;
  uint32_t rank;         /* number of dimensions; 0 = scalar */
  const uint64_t *shape; /* rank entries (a valid pointer even if rank 0) */
  uint64_t numel;        /* product of shape (1 for a scalar) */
  uint64_t data_begin;   /* byte range, relative to the data section */
  uint64_t data_end;
  uint64_t reserved[4];  /* zeroed by st_tensor_get; room to grow */
} st_tensor_info;

/** Number of tensors. */
ST_API size_t st_tensor_count(const st_file *file);

/** Tensor number index in file order (sorted by data_begin, then name); every
 *  field of *out is written, reserved ones zeroed.
 *  Statuses: ST_ERR_INVALID_ARGUMENT (index out of range or NULL out). */
ST_API st_status st_tensor_get(const st_file *file, size_t index,
                               st_tensor_info *out);

/** The file-order index of the k-th tensor in name order (byte-wise
 *  ascending). Statuses: ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_tensor_name_order(const st_file *file, size_t k,
                                      size_t *index);

/** Finds a tensor by exact name (len bytes): a binary search over the name
 *  order, O(log n) whatever the names (no hash to flood).
 *  Statuses: ST_ERR_NOT_FOUND, ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_tensor_find(const st_file *file, const char *name,
                                size_t len, size_t *index);

/* The view policy of the bindings (see "The torch mapping" above). */
/* Flags of st_torch_view. */
#define ST_VIEW_PACKED 0x1u /* F4 pairs: the torch shape's last dimension is
                               half the file's */
#define ST_VIEW_FLAT 0x2u   /* no torch shape: a 1-D tensor of numel elements
                               holding the raw bytes */
#define ST_VIEW_COPY 0x4u   /* the bytes are not aligned to element_size where
                               they lie (in the mapping or the caller's
                               memory; pread backend: at their file offset):
                               load an aligned copy, never a view */

/* How one tensor of a file becomes a torch tensor. The torch shape is the
 * file shape (st_tensor_info.shape) with its last dimension replaced by
 * last_dim, or [numel] when ST_VIEW_FLAT. */
typedef struct st_torch_view {
  st_dtype dtype;         /* the file dtype */
  uint32_t flags;         /* ST_VIEW_* */
  const char *torch_name; /* as st_dtype_torch_name (static storage) */
  const char *c10_name;   /* as st_dtype_c10_name (static storage) */
  uint64_t element_size;  /* bytes per torch element (1: F4 pairs, raw) */
  uint64_t numel;         /* torch elements: byte size / element_size */
  uint32_t rank;          /* torch rank: 1 when ST_VIEW_FLAT, else the file's */
  uint32_t reserved0;     /* zero */
  uint64_t last_dim;      /* the torch shape's last dimension (rank > 0) */
  uint64_t reserved[4];   /* zero; room to grow */
} st_torch_view;

/** Fills *out with the view policy's answer for tensor index of file.
 *  Statuses: ST_ERR_INVALID_ARGUMENT (NULL, index out of range). */
ST_API st_status st_tensor_torch_view(const st_file *file, size_t index,
                                      st_torch_view *out);

/** The view policy for a dtype and a file shape of rank dimensions (a slice's,
 *  say), without the ST_VIEW_COPY question, which only a file can answer.
 *  Statuses: ST_ERR_INVALID_ARGUMENT (NULL out, NULL shape with rank > 0,
 *  dtype out of range, a size that overflows or is not whole bytes). */
ST_API st_status st_torch_view_of(st_dtype dtype, const uint64_t *shape,
                                  uint32_t rank, st_torch_view *out);

/* --- Metadata ----------------------------------------------------------- */

/** Number of __metadata__ entries (0 when absent or null). */
ST_API size_t st_metadata_count(const st_file *file);

/** The k-th metadata entry in key order (byte-wise ascending); borrowed.
 *  Any out pointer may be NULL. Statuses: ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_metadata_get(const st_file *file, size_t k,
                                 const char **key, size_t *key_len,
                                 const char **value, size_t *value_len);

/** Looks up a metadata value by exact key. Statuses: ST_ERR_NOT_FOUND,
 *  ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_metadata_find(const st_file *file, const char *key,
                                  size_t key_len, const char **value,
                                  size_t *value_len);

/* --- Data ----------------------------------------------------------------- */

/** A zero-copy pointer to a tensor's bytes (mmap backend or memory handle),
 *  valid until st_close(). For a zero-size tensor *data may be any non-NULL
 *  pointer. With ST_OPEN_MAP_PRIVATE_WRITABLE the bytes may be written
 *  (copy-on-write; the file is not modified).
 *  Statuses: ST_ERR_UNSUPPORTED (pread backend), ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_tensor_data(const st_file *file, size_t index,
                                const void **data);

/** Copies a tensor's bytes into dst (dst_size >= data_end - data_begin), with
 *  any backend. Statuses: ST_ERR_BUFFER_TOO_SMALL, ST_ERR_IO,
 *  ST_ERR_FILE_CHANGED, ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_tensor_read(const st_file *file, size_t index, void *dst,
                                size_t dst_size, st_error *err);

/** Copies len bytes at offset of the data section into dst, with any
 *  backend. Statuses as st_tensor_read, plus ST_ERR_INVALID_ARGUMENT when the
 *  range leaves the data section. */
ST_API st_status st_read_range(const st_file *file, uint64_t offset,
                               uint64_t len, void *dst, st_error *err);

/* --- Slices --------------------------------------------------------------- */

/* One dimension of a slice, with Python's meaning: start and stop may be
 * negative (counted from the end) and are clamped to [0, dim]; step >= 1.
 * Use ST_SLICE_END as stop for "to the end". */
typedef struct st_range {
  int64_t start;
  int64_t stop;
  int64_t step;
} st_range;

#define ST_SLICE_END INT64_MAX

/** Resolves a slice of nranges (<= rank) dimensions; missing trailing
 *  dimensions are taken whole. Writes the rank result dims to out_shape (may
 *  be NULL) and the byte size to *nbytes (may be NULL).
 *  Statuses: ST_ERR_INVALID_SLICE (nranges > rank, step < 1),
 *  ST_ERR_UNSUPPORTED (a sub-byte dtype whose last dimension is cut),
 *  ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_slice_shape(const st_file *file, size_t index,
                                const st_range *ranges, size_t nranges,
                                uint64_t *out_shape, uint64_t *nbytes);

/** Copies a slice of a tensor, row-major, into dst, reading only the bytes
 *  needed (contiguous runs are copied whole). Statuses: those of
 *  st_slice_shape and st_tensor_read. */
ST_API st_status st_tensor_read_slice(const st_file *file, size_t index,
                                      const st_range *ranges, size_t nranges,
                                      void *dst, size_t dst_size,
                                      st_error *err);

/* ==========================================================================
 * Writing
 * ========================================================================== */

typedef struct st_writer st_writer;

/* Produces len bytes of a tensor, starting at offset within the tensor, into
 * dst. Returns 0 on success; anything else aborts the write with
 * ST_ERR_CALLBACK. May be called several times, in any order. */
typedef int (*st_producer)(void *ctx, uint64_t offset, void *dst,
                           size_t len);

/** Creates an empty writer. allocator NULL: libc.
 *  Statuses: ST_ERR_NOMEM, ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_writer_new(const st_allocator *allocator,
                               st_writer **out, st_error *err);

/** Frees a writer. NULL is a no-op. */
ST_API void st_writer_free(st_writer *writer);

/** Adds (or with the same key, refuses) a __metadata__ entry. Key and value
 *  are copied. Statuses: ST_ERR_DUPLICATE_KEY, ST_ERR_NUL_IN_STRING,
 *  ST_ERR_INVALID_HEADER (not UTF-8), ST_ERR_NOMEM, ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_writer_add_metadata(st_writer *writer, const char *key,
                                        size_t key_len, const char *value,
                                        size_t value_len, st_error *err);

/** Makes the header carry a __metadata__ object even when no entry is added:
 *  `"__metadata__":{}`, which is what the reference writes for an empty
 *  metadata dict (with no entries and no call, the key is left out).
 *  err may be NULL. Statuses: ST_ERR_INVALID_ARGUMENT (NULL writer). */
ST_API st_status st_writer_declare_metadata(st_writer *writer, st_error *err);

/** Declares a tensor whose data_len bytes are at data (borrowed until the
 *  write ends). The name and shape are copied. data_len must equal shape x
 *  dtype bits / 8. Statuses: ST_ERR_DUPLICATE_KEY, ST_ERR_RESERVED_NAME,
 *  ST_ERR_NUL_IN_STRING, ST_ERR_INVALID_HEADER (name not UTF-8),
 *  ST_ERR_INVALID_TENSOR_INFO, ST_ERR_VALIDATION_OVERFLOW,
 *  ST_ERR_MISALIGNED_SLICE, ST_ERR_LIMIT (rank over ST_DEFAULT_MAX_RANK or
 *  name over ST_DEFAULT_MAX_NAME_LEN bytes: every file written opens with
 *  the reader's defaults), ST_ERR_NOMEM, ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_writer_add_tensor(st_writer *writer, const char *name,
                                      size_t name_len, st_dtype dtype,
                                      const uint64_t *shape, uint32_t rank,
                                      const void *data, uint64_t data_len,
                                      st_error *err);

/** As st_writer_add_tensor, with the bytes produced by a callback at write
 *  time instead of a pointer. */
ST_API st_status st_writer_add_tensor_cb(st_writer *writer, const char *name,
                                         size_t name_len, st_dtype dtype,
                                         const uint64_t *shape, uint32_t rank,
                                         st_producer producer, void *ctx,
                                         st_error *err);

/** The total file size the writer will produce (8 + N + data), computing the
 *  layout. Statuses: ST_ERR_HEADER_TOO_LARGE, ST_ERR_VALIDATION_OVERFLOW,
 *  ST_ERR_NOMEM, ST_ERR_INVALID_ARGUMENT (NULL writer or size). */
ST_API st_status st_writer_size(st_writer *writer, uint64_t *size,
                                st_error *err);

/* Flags for st_writer_write_path; any other bit is refused. Both are stable:
 * the bytes written are the same with or without them (what ST_WRITE_DIRECT
 * says about buffers and threads is how this version does it). */
#define ST_WRITE_NO_FSYNC 0x1u  /* skip fsync of file and directory (tests,
                                   scratch files); rename stays atomic */
#define ST_WRITE_DIRECT 0x2u    /* write the temporary file with O_DIRECT
                                   (page cache bypassed: a big checkpoint does
                                   not evict it, and fsync has little left to
                                   flush); where the filesystem refuses
                                   O_DIRECT the write is buffered, silently,
                                   with the same bytes. Extra memory: one
                                   bounce buffer of at most 2 MiB; a file
                                   larger than that gets a second one and a
                                   writer thread, joined before the call
                                   returns, that writes each full buffer
                                   while the calling thread (which runs the
                                   producer callbacks) fills the other. */

/** Writes the file durably: a temporary file in the same directory
 *  (anonymous, O_TMPFILE, while the data is written; named just before the
 *  rename), every byte written, fsync, rename over path, fsync of the
 *  directory. On failure the old file at path is untouched and no temporary
 *  file remains. A writer killed mid-save can leave a named temp file
 *  ".<name>.<tag>.<pid>.<random>.tmp" (only between naming it and the
 *  rename); tag hashes this host's name, boot id and pid namespace. The first
 *  save into a directory in a process scans it once (never again in that
 *  process, so repeated saves cost no directory reads) and removes the
 *  target's temp files that are ours (same tag) with a pid that no longer
 *  runs, or that are over 24 hours old; a live writer's, and one from another
 *  host or container sharing the filesystem, are never touched.
 *  flags: ST_WRITE_* (0: durable, buffered).
 *  With ST_WRITE_DIRECT the data passes through an aligned bounce buffer and
 *  the last partial block is written buffered; a filesystem that refuses
 *  O_DIRECT (at open or at a write) gets buffered writes instead, and the
 *  bytes are the same either way.
 *  The caller should ignore SIGXFSZ so a file-size limit is ST_ERR_IO (EFBIG)
 *  rather than a signal.
 *  Statuses: ST_ERR_IO, ST_ERR_CALLBACK, ST_ERR_NOMEM, those of
 *  st_writer_size. */
ST_API st_status st_writer_write_path(st_writer *writer, const char *path,
                                      uint32_t flags, st_error *err);

/** Writes the file to fd at its current position (no fsync, no rename).
 *  Statuses: as st_writer_write_path. */
ST_API st_status st_writer_write_fd(st_writer *writer, int fd, st_error *err);

/** Writes the file into dst (capacity dst_size; st_writer_size tells how much
 *  is needed). *written (may be NULL) receives the size.
 *  Statuses: ST_ERR_BUFFER_TOO_SMALL, as st_writer_size, ST_ERR_CALLBACK. */
ST_API st_status st_writer_write_memory(st_writer *writer, void *dst,
                                        size_t dst_size, size_t *written,
                                        st_error *err);

#ifdef ST_EXPERIMENTAL_API

/* ==========================================================================
 * Plans and the copy engine -- EXPERIMENTAL: declared only with
 * ST_EXPERIMENTAL_API defined before this header; may change in any release.
 *
 * A load is a plan: a list of (source byte range of the data section ->
 * destination) entries. st_plan_execute() splits the entries into chunks and
 * runs them on a pool of threads: memcpy from the mapping (mmap backend,
 * memory handles) or pread straight into the destination (pread backend).
 * Slices and subsets are just plans; the engine counts the bytes it reads.
 * ========================================================================== */

typedef struct st_plan st_plan;

/** Creates an empty plan over file (borrowed: it must outlive the plan).
 *  allocator NULL: libc. Statuses: ST_ERR_NOMEM, ST_ERR_INVALID_ARGUMENT. */
ST_API st_status st_plan_new(const st_file *file, const st_allocator *allocator,
                             st_plan **out, st_error *err);

/** Frees a plan. NULL is a no-op. */
ST_API void st_plan_free(st_plan *plan);

/** Adds a copy of len bytes at offset of the data section into dst (borrowed
 *  until the plan is executed or freed). Statuses: ST_ERR_INVALID_ARGUMENT
 *  (range outside the data section, NULL dst with len > 0), ST_ERR_NOMEM. */
ST_API st_status st_plan_add_range(st_plan *plan, uint64_t offset, uint64_t len,
                                   void *dst, st_error *err);

/** Adds a whole tensor (dst_size >= its byte size). Statuses: those of
 *  st_plan_add_range, ST_ERR_BUFFER_TOO_SMALL. */
ST_API st_status st_plan_add_tensor(st_plan *plan, size_t index, void *dst,
                                    size_t dst_size, st_error *err);

/** Adds a slice of a tensor (the semantics of st_tensor_read_slice), as one
 *  entry per contiguous run, written row-major into dst. Statuses: those of
 *  st_slice_shape and st_plan_add_range. */
ST_API st_status st_plan_add_slice(st_plan *plan, size_t index,
                                   const st_range *ranges, size_t nranges,
                                   void *dst, size_t dst_size, st_error *err);

/** Number of entries and total bytes the plan will copy. */
ST_API size_t st_plan_entry_count(const st_plan *plan);
ST_API uint64_t st_plan_bytes(const st_plan *plan);

/* Flags for st_exec_options.flags; any other bit is refused. */
#define ST_EXEC_NO_PREFAULT 0x1u /* don't populate the destination's page
                                    tables (MADV_POPULATE_WRITE) ahead of
                                    each chunk's copy */
#define ST_EXEC_DIRECT 0x2u      /* pread backend: read with O_DIRECT,
                                    bypassing the page cache (cold reads of
                                    large files), through aligned bounce
                                    buffers; where the filesystem refuses
                                    O_DIRECT, buffered reads are used and
                                    st_exec_stats.direct says so */
#define ST_EXEC_HUGEPAGES 0x4u   /* the destinations are fresh memory that
                                    the plan overwrites: advise transparent
                                    huge pages (MADV_HUGEPAGE) on the 2 MiB-
                                    aligned part of every entry of 2 MiB or
                                    more before copying into it, so the kernel
                                    zeroes and maps 2 MiB at a time. Changes
                                    the advice of the caller's memory; where
                                    huge pages are off it does nothing */

#define ST_EXEC_ALL_FLAGS 0x7u  /* every ST_EXEC_* bit defined */

typedef struct st_exec_options {
  size_t struct_size;   /* sizeof(st_exec_options), set by _init; any other
                           value is refused */
  uint32_t threads;     /* 0: the number of online CPUs; at most 256 are
                           used */
  uint32_t flags;       /* ST_EXEC_* */
  uint64_t chunk_size;  /* bytes per work item; 0: 8 MiB; less than 64 KiB
                           counts as 64 KiB */
  uint64_t reserved[8]; /* zero (else refused) */
} st_exec_options;

/** Fills opts with the defaults. */
ST_API void st_exec_options_init(st_exec_options *opts);

typedef struct st_exec_stats {
  uint64_t bytes_copied;  /* bytes written to destinations */
  uint64_t bytes_read;    /* bytes read from the file or mapping (with
                             O_DIRECT: whole aligned blocks, so more) */
  uint64_t chunks;        /* work items run */
  uint32_t threads_used;
  uint32_t direct;        /* 1 when the reads went through O_DIRECT */
  uint64_t reserved[6];
} st_exec_stats;

/** Runs the plan: every entry's bytes land in its destination. opts NULL:
 *  defaults; stats may be NULL. Thread-safe with respect to other readers of
 *  the same file. The plan can be executed again. Statuses: ST_ERR_IO,
 *  ST_ERR_FILE_CHANGED, ST_ERR_NOMEM (threads), ST_ERR_INVALID_ARGUMENT
 *  (also for options with a wrong struct_size, an unknown flag bit or a
 *  non-zero reserved field). */
ST_API st_status st_plan_execute(const st_plan *plan,
                                 const st_exec_options *opts,
                                 st_exec_stats *stats, st_error *err);

/* ==========================================================================
 * Sniffing -- EXPERIMENTAL (ST_EXPERIMENTAL_API): what the first bytes of a
 * file say it is, for dispatchers that must choose a loader before opening.
 * ========================================================================== */

/** Looks at the first len bytes of a file of file_size bytes (head may be
 *  NULL when len is 0); no I/O. Returns 1 when they can begin a safetensors
 *  file: at least 9 bytes, N (the first 8) in 2..ST_MAX_HEADER_SIZE, and the
 *  header's first non-whitespace byte among those given is '{' (or none is
 *  given yet). Returns 0 otherwise, and then *what (when what is non-NULL)
 *  is the constant message st_open gives for such a file ("not a safetensors
 *  file: a zip archive (torch.save?)", "...: a pickle", "...: JSON text (an
 *  index?)", "...: text", "...: an empty file", ...), or NULL when the bytes
 *  are nothing it knows. A 1 is no verdict: only st_open validates. */
ST_API int st_sniff(const void *head, size_t len, uint64_t file_size,
                    const char **what);

/* ==========================================================================
 * Dequantization -- EXPERIMENTAL (ST_EXPERIMENTAL_API): the kernels that turn
 * a quantized group (docs/QUANT.md) into a dense row-major BF16, F16 or F32
 * matrix. Pure compute over caller memory: no I/O, no allocation, no
 * threads; callers split the rows across their own threads (the Python
 * binding does, with the GIL released). Every product is computed in float
 * and rounded once (to nearest even) to the output dtype.
 * ========================================================================== */

/* Element encodings, for st_dequant.element. */
#define ST_QUANT_INT_PACKED 1u /* each row: little-endian int32 words, value j
                                  at bit j*bits, LSB first (straddling words
                                  for 3, 5, 6, 7 bits), stored as
                                  q + 2^(bits-1); bits 1..8 (compressed-
                                  tensors pack-quantized) */
#define ST_QUANT_FP8_E4M3 2u   /* one byte per value, float8_e4m3fn */
#define ST_QUANT_FP8_E5M2 3u   /* one byte per value, float8_e5m2 */
#define ST_QUANT_FP4_E2M1 4u   /* two values per byte, the even one in the
                                  low nibble (cols must be even) */

/* Flags for st_dequant.flags; any other bit is refused. */
#define ST_DEQUANT_TRANSPOSED 0x1u /* the result is stacks of matrices of
                                      matrix_rows rows each, written
                                      transposed ([..., cols, matrix_rows]:
                                      gpt-oss experts); dst is then the
                                      whole result, of which the call writes
                                      the values of rows [row_begin,
                                      row_end) */

typedef struct st_dequant {
  size_t struct_size;       /* sizeof(st_dequant), set by st_dequant_init;
                               any other value is refused */
  uint32_t element;         /* ST_QUANT_* */
  uint32_t bits;            /* ST_QUANT_INT_PACKED: 1..8; otherwise 0 */
  st_dtype out_dtype;       /* ST_BF16, ST_F16 or ST_F32 */
  uint32_t flags;           /* ST_DEQUANT_* */
  uint64_t rows, cols;      /* the dense result's shape */
  uint64_t scale_rows;      /* rows that share a scale (1: per row) */
  uint64_t scale_cols;      /* columns that share a scale (a group, a block
                               width, or cols) */
  const void *q;            /* the quantized values, rows one after the
                               other (borrowed for the call) */
  size_t q_size;            /* bytes at q; must hold every row */
  const float *scale;       /* [ceil(rows / scale_rows)][ceil(cols /
                               scale_cols)] (borrowed): w = (q - zero) *
                               scale */
  size_t scale_count;       /* floats at scale; must be exactly that many */
  const float *zero;        /* NULL, or like scale: subtracted first */
  size_t zero_count;        /* floats at zero (0 when zero is NULL) */
  uint64_t matrix_rows;     /* ST_DEQUANT_TRANSPOSED: rows per matrix (it
                               divides rows); otherwise 0 */
  uint64_t reserved[7];     /* zero (else refused) */
} st_dequant;

/** Fills d with the defaults: every field zero, struct_size set. */
ST_API void st_dequant_init(st_dequant *d);

/** Writes rows [row_begin, row_end) of the dense result into dst (capacity
 *  dst_size bytes, (row_end - row_begin) * cols elements of out_dtype; the
 *  whole result with ST_DEQUANT_TRANSPOSED).
 *  Thread-safe: calls on disjoint row ranges may run at once. Statuses:
 *  ST_ERR_INVALID_ARGUMENT (a field out of range, sizes that disagree, a
 *  row range outside rows), ST_ERR_BUFFER_TOO_SMALL (dst_size). */
ST_API st_status st_dequantize(const st_dequant *d, uint64_t row_begin,
                               uint64_t row_end, void *dst, size_t dst_size,
                               st_error *err);

#endif /* ST_EXPERIMENTAL_API */

#ifdef __cplusplus
}
#endif

#endif /* SAFETENSORS_H */
